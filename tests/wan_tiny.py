"""The tiny Wan2.2 TI2V model the official code was recorded with (tests/fixtures/wan-ti2v-reference),
loaded into diffusers' classes through our key map, and its recorded cases."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from conftest import FIXTURES
from safetensors.torch import load_file

ROOT = FIXTURES / "wan-ti2v-reference"
CASES = sorted(p for p in ROOT.glob("case-*") if p.is_dir())


@cache
def official_config() -> dict:
    return json.loads((ROOT / "official-config.json").read_text())


def official_weights() -> tuple[dict, dict]:
    return load_file(str(ROOT / "official-transformer.safetensors")), load_file(str(ROOT / "official-vae.safetensors"))


def tiny_modules():
    """(transformer, vae) in diffusers' classes, weights through the official -> diffusers key map."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from anyv2v_batch import convert_wan

    cfg = official_config()
    transformer_sd, vae_sd = official_weights()
    transformer = WanTransformer3DModel(**convert_wan.transformer_config(cfg["model"]))
    transformer.load_state_dict(convert_wan.transformer_state_dict(transformer_sd), strict=True)
    vae = AutoencoderKLWan(**convert_wan.vae_config(cfg["vae"], cfg["latents_mean"], cfg["latents_std"]))
    vae.load_state_dict(convert_wan.vae_state_dict(vae_sd), strict=True)
    return transformer, vae


@cache
def tiny_wan():
    """The tiny WanTI2V (float32, CPU, no text encoder: the cases carry their prompt embeddings)."""
    from anyv2v_batch.backbones.wan_ti2v import WanTI2V

    return WanTI2V(*tiny_modules())


def load_case(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((path / "case.json").read_text()), load_file(str(path / "tensors.safetensors"))
