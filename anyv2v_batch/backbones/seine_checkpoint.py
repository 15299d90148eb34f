"""SEINE's official checkpoint: where `seine.pt` is, and the 3D UNet it fills (SD-1.4's 2D config inflated).

Read by the backbone when a folder has SD-1.4's 2D UNet with `seine.pt` beside it, and by
`convert.convert_seine`, which writes that UNet once as safetensors.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import AnyV2VError, first_line
from ..loading import hub_offline
from .seine_unet import SEINEUNet, load_seine_checkpoint

CHECKPOINT_REPO, CHECKPOINT_FILE = "xinyuanc91/SEINE", "seine.pt"


def seine_checkpoint_path(model: str) -> Path:
    """`seine.pt` in the model folder, or from the hub (cache first; HF_HUB_OFFLINE respected)."""
    local = Path(model).expanduser() / CHECKPOINT_FILE
    if local.is_file():
        return local
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(CHECKPOINT_REPO, CHECKPOINT_FILE))
    except Exception as e:  # noqa: BLE001 - any failure means "not available": one line below
        how = "it is not in the hub cache and HF_HUB_OFFLINE is set" if hub_offline() else type(e).__name__
        raise AnyV2VError(
            f"cannot find SEINE's {CHECKPOINT_FILE} ({how}): put it in {model!r}, or download it "
            f"(`hf download {CHECKPOINT_REPO} {CHECKPOINT_FILE}`), or pass --model with a folder made by "
            "`anyv2v-batch convert-seine`"
        ) from None


def _misfit(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """What keeps `given` from loading strictly into a model whose state dict is `expected`; "" if nothing."""

    def some(names: list[str]) -> str:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    resized = [
        f"{k} {list(given[k].shape)} != {list(v.shape)}"
        for k, v in expected.items()
        if k in given and given[k].shape != v.shape
    ]
    parts = [
        f"{len(names)} {what}: {some(names)}"
        for what, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", resized))
        if names
    ]
    return "; ".join(parts)


def unet_from_checkpoint(checkpoint: Path, config_2d: dict, sd_model: str):
    """SEINEUNet from SD-1.4's 2D config, filled strictly from the checkpoint's "ema" state dict."""
    try:
        state = load_seine_checkpoint(checkpoint)
    except OSError as e:
        raise AnyV2VError(f"cannot read the SEINE checkpoint {str(checkpoint)!r}: {first_line(e)}") from None
    except ValueError as e:
        raise AnyV2VError(
            f"{first_line(e)}; pass the official {CHECKPOINT_FILE} (`hf download {CHECKPOINT_REPO} {CHECKPOINT_FILE}`)"
        ) from None
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler fails in many ways on a foreign file
        raise AnyV2VError(
            f"{checkpoint} is not a SEINE checkpoint that loads safely (weights only): {type(e).__name__} "
            f"{first_line(e)}; pass the official {CHECKPOINT_FILE} (`hf download {CHECKPOINT_REPO} {CHECKPOINT_FILE}`)"
        ) from None
    try:
        # built on the meta device, then given (uninitialised) memory: no random init of ~900 M parameters
        with torch.device("meta"):
            unet = SEINEUNet.from_config_2d(config_2d)
    except (ValueError, TypeError, NotImplementedError) as e:
        raise AnyV2VError(
            f"{sd_model}/unet/config.json is not a Stable Diffusion 1.x UNet config SEINE inflates: {first_line(e)}"
        ) from None
    problem = _misfit(unet.state_dict(), state)
    if problem:
        raise AnyV2VError(
            f"{checkpoint} does not fit the SEINE UNet built from {sd_model}/unet/config.json ({problem}); "
            "pass SEINE's checkpoint with the Stable Diffusion 1.4 model it was trained on"
        )
    floating = {v.dtype for v in state.values() if v.is_floating_point()}
    dtype = floating.pop() if len(floating) == 1 else torch.float32  # keep the checkpoint's precision
    unet = unet.to_empty(device="cpu")
    if dtype != torch.float32:
        unet = unet.to(dtype)
    try:
        # strict: every parameter is overwritten (a missing one raises), so no uninitialised memory survives
        unet.load_state_dict(state, strict=True)
    except RuntimeError as e:  # not expected after _misfit; kept so no unfitting checkpoint passes silently
        raise AnyV2VError(f"{checkpoint} does not fit the SEINE UNet: {first_line(e)}") from None
    return unet.eval()
