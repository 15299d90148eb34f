"""Loading model components from a hub id or a local folder, with one-line errors.

`from_pretrained` does the work (it honours HF_HUB_OFFLINE and the hub cache); this module only turns
its many failure modes into a message that says what is missing and how to get it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import AnyV2VError, first_line


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _is_hub_id(model: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model) is not None


def _missing(model: str, what: str, detail: str = "") -> AnyV2VError:
    if Path(model).expanduser().is_dir():
        fix = f"the folder must hold the diffusers layout ({what} is missing or unreadable)"
    elif not _is_hub_id(model):
        return AnyV2VError(f"model folder {model!r} does not exist; pass --model with an existing folder or a hub id")
    elif hub_offline():
        fix = (
            f"HF_HUB_OFFLINE is set and {what} is not in the hub cache; download it first "
            f"(`hf download {model}`) or pass --model with a local folder"
        )
    else:
        fix = f"check the hub id and your network, or pass --model with a local folder ({detail})"
    return AnyV2VError(f"cannot load {what} of model {model!r}: {fix}")


def load_component(cls: type, model: str, subfolder: str | None, **kwargs: Any) -> Any:
    """`cls.from_pretrained(model, subfolder=...)` with weight problems as `AnyV2VError`.

    subfolder None: a whole pipeline, or a model stored at the top of the folder / repo."""
    model = str(Path(model).expanduser()) if Path(model).expanduser().is_dir() else model
    if subfolder is not None:
        kwargs["subfolder"] = subfolder
    try:
        return cls.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as e:
        raise _missing(model, f"the {subfolder}" if subfolder else "the weights", first_line(e, 200)) from e


def load_json(model: str, subfolder: str, filename: str) -> dict:
    """A config file of a model folder or hub repo."""
    local = Path(model).expanduser()
    try:
        if local.is_dir():
            path = local / subfolder / filename
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, filename, subfolder=subfolder))
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise _missing(model, f"{subfolder}/{filename}", first_line(e, 200)) from e


@dataclass(frozen=True)
class LoadTarget:
    """What every backbone's `from_pretrained` resolves first: the weights (hub id or folder), the device,
    the dtype and the weights variant (as keyword arguments for `from_pretrained`)."""

    model: str
    device: torch.device
    dtype: torch.dtype
    variant_kw: dict[str, str]


def load_target(
    model: str | None,
    default_model: str,
    device: str | torch.device | None,
    dtype: str | torch.dtype | None,
    variant: str | None,
) -> LoadTarget:
    """None model: the default weights; device / dtype as `resolve_device` / `resolve_dtype` say."""
    dev = resolve_device(device)
    kw = {"variant": variant} if variant else {}
    return LoadTarget(model or default_model, dev, resolve_dtype(dtype, dev), kw)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' / None -> cuda if available, else cpu; anything else is checked."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise AnyV2VError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AnyV2VError(f"--device {device} asked for CUDA, but no CUDA GPU is available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise AnyV2VError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return dev


_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """'auto' / None -> float16 on CUDA, float32 on CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise AnyV2VError(f"--dtype {dtype!r} is not supported; use auto, float32, float16 or bfloat16")
    if device.type == "cpu" and _DTYPES[dtype] == torch.float16:
        raise AnyV2VError("--dtype float16 is not supported on the CPU; use float32 (or bfloat16)")
    return _DTYPES[dtype]


def quiet_libraries() -> None:
    """Silence the libraries' info logs and download/loading progress bars (ours report progress)."""
    import warnings

    import diffusers
    import huggingface_hub
    import transformers

    for module in ("diffusers", "transformers", "huggingface_hub", "torch"):
        warnings.filterwarnings("ignore", module=module)
    huggingface_hub.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    huggingface_hub.utils.disable_progress_bars()


def weights_identity(model: str) -> str:
    """What identifies the weights a model id names, cheaply: for a local folder (or file) a digest of every file's
    path, size and first and last MiB (any retraining or swap changes it; hashing gigabytes whole would
    cost minutes per run); for a hub id the id itself (pin a local folder to have its content checked)."""
    import hashlib

    folder = Path(model).expanduser()
    if folder.is_file():  # one weights file (e.g. an aesthetic head): the same digest over that file
        files, kind = [folder], "file"
    elif folder.is_dir():
        files, kind = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")), "folder"
    else:
        return f"hub:{model}"
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        name = path.name if kind == "file" else path.relative_to(folder).as_posix()
        digest.update(f"{name}\0{size}\0".encode())
        with path.open("rb") as f:
            if size <= 2 << 20:
                digest.update(f.read())
            else:
                digest.update(f.read(1 << 20))
                f.seek(-(1 << 20), os.SEEK_END)
                digest.update(f.read())
    return f"{kind}:{digest.hexdigest()[:16]}"
