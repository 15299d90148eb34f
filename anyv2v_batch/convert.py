"""One-time conversion of SEINE's published weights into a folder our SEINE backbone loads without pickles.

The official SEINE release is SD-1.4's folder plus `seine.pt`, a pickle (read with
`torch.load(weights_only=True)` at every start). `convert_seine` writes, once, the same model as
safetensors in the Stable Diffusion 1.4 layout:

    output/unet/          SEINEUNet config.json + diffusion_pytorch_model.safetensors (seine.pt's "ema")
    output/vae/           SD-1.4's AutoencoderKL, safetensors
    output/text_encoder/  SD-1.4's CLIPTextModel, safetensors
    output/tokenizer/     SD-1.4's tokenizer files, copied
    output/scheduler/     SD-1.4's scheduler_config.json, copied

`load_backbone("seine", output)` then reads no pickle at all. The folder is built in a temporary sibling
and renamed into place at the end, so `output` is either complete or absent; the inputs are only read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .backbones.seine_checkpoint import seine_checkpoint_path, unet_from_checkpoint
from .errors import AnyV2VError, first_line
from .loading import hub_offline, load_component, load_json

# what the copied tokenizer / scheduler folders may hold (text files; never a pickle)
_TEXT_SUFFIXES = {".json", ".txt", ".model"}


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _source_files(model: str, subfolder: str) -> list[Path]:
    """The files of `model`/`subfolder` (a local folder, or the hub snapshot: cache first)."""
    local = Path(model).expanduser()
    if local.is_dir():
        folder = local / subfolder
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(model, allow_patterns=[f"{subfolder}/*"])) / subfolder
        except Exception as e:  # noqa: BLE001 - the component loaded a moment ago: say what failed, in one line
            raise AnyV2VError(f"cannot fetch {subfolder}/ of {model!r} from the hub: {first_line(e)}") from None
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _TEXT_SUFFIXES) if folder.is_dir() else []
    if not files:
        raise AnyV2VError(f"{model!r} has no {subfolder}/ files to copy; pass a Stable Diffusion 1.4 folder or hub id")
    return files


def _created_parents(path: Path) -> list[Path]:
    """The missing ancestors of `path`, outermost first (to remove again if the conversion fails)."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing[::-1]


def convert_seine(
    checkpoint: str | os.PathLike | None,
    sd_model: str,
    output: str | os.PathLike,
    overwrite: bool = False,
) -> Path:
    """Write SEINE as a safetensors folder (SD-1.4 layout, unet/ = SEINEUNet) at `output`; return its path.

    checkpoint: the official `seine.pt` (a dict whose "ema" is the 3D UNet's state dict); None: the
    `seine.pt` inside `sd_model`, else from the hub (xinyuanc91/SEINE; cache first, HF_HUB_OFFLINE
    respected). sd_model: a local Stable Diffusion 1.4 folder or hub id, the source of unet/config.json
    (inflated to 3D), vae/, text_encoder/, tokenizer/ and scheduler/. An existing `output` is refused
    unless `overwrite`; it is replaced only once the new folder is complete.

    Raises AnyV2VError (one line, with the fix) for a missing or foreign checkpoint, a checkpoint that
    does not fit the config, missing SD-1.4 components, or an existing output.
    """
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    sd_model = str(sd_model)
    output = Path(output).expanduser().absolute()
    local_model = Path(sd_model).expanduser()
    if output.exists() and not overwrite:
        raise AnyV2VError(
            f"output {str(output)!r} already exists; choose another path or pass --overwrite (overwrite=True)"
        )
    if local_model.is_dir() and _is_within(local_model.resolve(), output.resolve()):
        raise AnyV2VError(
            f"output {str(output)!r} would replace the input model {sd_model!r}; choose a path outside it"
        )

    if checkpoint is None:
        try:
            ckpt = seine_checkpoint_path(sd_model)  # seine.pt in the folder, else the hub (cache first)
        except AnyV2VError:
            why = "HF_HUB_OFFLINE is set and it is not in the hub cache" if hub_offline() else "the download failed"
            raise AnyV2VError(
                f"no SEINE checkpoint given and no seine.pt in {sd_model!r} ({why}): pass the path of seine.pt, "
                "or download it first (`hf download xinyuanc91/SEINE seine.pt`)"
            ) from None
    else:
        ckpt = Path(checkpoint).expanduser()
        if not ckpt.is_file():
            raise AnyV2VError(
                f"SEINE checkpoint {str(checkpoint)!r} does not exist; pass the path of seine.pt "
                "(`hf download xinyuanc91/SEINE seine.pt`) or leave it out to use the one in the model folder"
            )
    if _is_within(ckpt.resolve(), output.resolve()):
        raise AnyV2VError(f"output {str(output)!r} would replace the checkpoint {str(ckpt)!r}; choose another path")

    # everything is read and checked before anything is written
    config_2d = load_json(sd_model, "unet", "config.json")
    unet = unet_from_checkpoint(ckpt, config_2d, sd_model)
    vae = load_component(AutoencoderKL, sd_model, "vae")
    text_encoder = load_component(CLIPTextModel, sd_model, "text_encoder")
    load_component(CLIPTokenizer, sd_model, "tokenizer")  # checks the tokenizer reads; its files are copied
    scheduler_config = load_json(sd_model, "scheduler", "scheduler_config.json")
    tokenizer_files = _source_files(sd_model, "tokenizer")

    new_parents = _created_parents(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        from .video_io import DIR_MODE

        tmp.chmod(DIR_MODE)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        text_encoder.save_pretrained(tmp / "text_encoder")  # transformers 5 writes safetensors only
        (tmp / "tokenizer").mkdir()
        for f in tokenizer_files:
            shutil.copyfile(f, tmp / "tokenizer" / f.name)
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler_config, indent=2) + "\n")
        if output.exists():  # overwrite: swap the complete new folder in, then drop the old one
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            os.replace(output, old)
            os.replace(tmp, output)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for parent in reversed(new_parents):
            try:
                parent.rmdir()  # only if still empty
            except OSError:
                break
        raise
    return output
