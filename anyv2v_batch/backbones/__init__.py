"""Image-to-video backbones, one module each, behind the `Backbone` interface (see base.py)."""

from __future__ import annotations

import importlib

import torch

from ..errors import AnyV2VError
from .base import Backbone, Branch, Conditioning

# name -> "module:class", imported on demand so a job only loads the networks it uses
BACKBONES: dict[str, str] = {
    "i2vgen-xl": "anyv2v_batch.backbones.i2vgen_xl:I2VGenXL",
    "consisti2v": "anyv2v_batch.backbones.consisti2v:ConsistI2V",
    "seine": "anyv2v_batch.backbones.seine:SEINE",
    "wan2.2-ti2v": "anyv2v_batch.backbones.wan_ti2v:WanTI2V",
}


def backbone_class(name: str) -> type[Backbone]:
    if name not in BACKBONES:
        raise AnyV2VError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    module, cls = BACKBONES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_backbone(
    name: str = "i2vgen-xl",
    model: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    variant: str | None = None,
) -> Backbone:
    """Load a backbone's weights once (hub id or local folder; None: the backbone's official weights)."""
    return backbone_class(name).from_pretrained(model, device=device, dtype=dtype, variant=variant)


__all__ = ["BACKBONES", "Backbone", "Branch", "Conditioning", "backbone_class", "load_backbone"]
