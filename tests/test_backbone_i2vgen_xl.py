"""The I2VGen-XL backbone's own contracts: conditioning layout, reduced precision plumbing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, rel_err

from anyv2v_batch import edit, load_backbone
from anyv2v_batch.backbones.base import Branch


def test_condition_orders_branches_and_zeroes_the_negative_image_embedding(tiny_backbone, case_a):
    src, ed = case_a.frames[0], case_a.edited
    cond = tiny_backbone.condition(
        [Branch("", src), Branch("ugly", ed, image_embedding=False), Branch("a robot", ed)], 8, 8
    )
    assert cond["encoder_hidden_states"].shape == (3, 77, 32)
    assert cond["image_latents"].shape == (3, 4, 8, 16, 16)
    assert torch.equal(cond["image_embeddings"][1], torch.zeros(1, 32))
    assert torch.equal(cond["image_latents"][1], cond["image_latents"][2])  # the same edited frame
    assert not torch.equal(cond["image_latents"][0], cond["image_latents"][2])
    mask = cond["image_latents"][0, :, 1:]  # frames 1..7 carry k / 7
    assert torch.allclose(mask[:, :, 0, 0], torch.arange(1, 8).float().div(7).expand(4, 7))
    alone = tiny_backbone.condition([Branch("a robot", ed)], 8, 8)
    assert torch.equal(alone["encoder_hidden_states"][0], cond["encoder_hidden_states"][2])


@pytest.mark.slow
def test_bfloat16_runs_in_bfloat16_with_a_float32_vae(case_a):
    bb = load_backbone("i2vgen-xl", str(TINY_MODEL), device="cpu", dtype="bfloat16")
    assert bb.unet.dtype == bb.text_encoder.dtype == bb.image_encoder.dtype == torch.bfloat16
    assert bb.vae_dtype == torch.float32  # the VAE config asks for force_upcast
    result = edit(bb, case_a.reference_inversion(), case_a.edited, case_a.edit_settings())
    assert result.latents.dtype == torch.float32 and np.isfinite(result.latents.numpy()).all()
    err = rel_err(result.latents, case_a.ref["edit/final_latents"])
    assert 1e-4 < err < 0.3  # really reduced precision, and still the same edit


def two_level_model(folder):
    """The tiny I2VGen-XL with a two-level UNet of the same class (one ResNet per down block): dynamo
    traces a graph in a third of the time. Its injection positions follow the official naming."""
    import json

    from diffusers import I2VGenXLUNet

    folder.mkdir()
    for part in TINY_MODEL.iterdir():
        if part.name != "unet":
            (folder / part.name).symlink_to(part)
    config = json.loads((TINY_MODEL / "unet" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")} | {
        "block_out_channels": [16, 32],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock3D", "DownBlock3D"],
        "up_block_types": ["UpBlock3D", "CrossAttnUpBlock3D"],
    }
    torch.manual_seed(0)
    I2VGenXLUNet(**config).save_pretrained(folder / "unet")

    def qk(kind: str) -> tuple[str, ...]:
        return tuple(f"up_blocks.1.{kind}.{i}.transformer_blocks.0.attn1.{p}" for i in (0, 1) for p in ("to_q", "to_k"))

    positions = {
        "conv": ("up_blocks.1.resnets.1.conv2",),
        "spatial": qk("attentions"),
        "temporal": qk("temp_attentions"),
    }
    return folder, positions


@pytest.mark.slow
def test_compiled_unet_keeps_the_hooks_and_the_outputs(case_a, tmp_path):
    """torch.compile (dynamo tracing; the default inductor backend only changes the kernels) with the
    injection hooks switching on and off between calls: outputs equal the eager ones."""
    model, positions = two_level_model(tmp_path / "model")
    bb = load_backbone("i2vgen-xl", str(model), device="cpu", dtype="float32")
    # 4 steps, injecting in the first 2: the source branch's call recording, the edit's call injecting,
    # then the edit's call without injection; each compiled once and then reused
    settings = case_a.edit_settings(steps=4, pnp_conv=0.5, pnp_spatial=0.5, pnp_temporal=0.5)
    inversion = case_a.reference_inversion()
    eager = edit(bb, inversion, case_a.edited, settings, decode=False, positions=positions)
    bb.compile(backend="eager")
    compiled = edit(bb, inversion, case_a.edited, settings, decode=False, positions=positions)
    assert compiled.injected == eager.injected and eager.injected["conv"] == [751, 501]
    assert eager.timesteps == [751, 501, 251, 1]
    assert rel_err(compiled.latents, eager.latents) < 1e-6
    # and the injection is seen: without it the edit is another one
    plain = edit(bb, inversion, case_a.edited, settings, decode=False, inject=False, positions=positions)
    assert rel_err(plain.latents, eager.latents) > 1e-3
