"""anyv2v-batch: AnyV2V video editing as a batch data-pipeline stage.

The engine: load a backbone once, invert a clip, edit it from the inversion as often as needed.

    from anyv2v_batch import load_backbone, invert, edit, EditSettings
    backbone = load_backbone("i2vgen-xl", device="cuda")
    inversion = invert(backbone, frames)                      # frames: [F, H, W, 3] uint8
    result = edit(backbone, inversion, edited_first_frame, EditSettings(prompt="..."))
    result.frames                                             # [F, H, W, 3] uint8

Names are imported on first use, so the command line starts without loading torch for `--help`.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "BACKBONES": "backbones",
    "Backbone": "backbones",
    "load_backbone": "backbones",
    "EditResult": "pnp_edit",
    "edit": "pnp_edit",
    "AnyV2VError": "errors",
    "Inversion": "inversion",
    "invert": "inversion",
    "OFFICIAL_NEGATIVE_PROMPT": "settings",
    "ClipSettings": "settings",
    "EditSettings": "settings",
    "InversionSettings": "settings",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
