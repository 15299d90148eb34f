"""wan2.2-ti2v as a product backbone: loaded from a diffusers-layout folder, inverted and edited through
the public API exactly as the tensor-level loops compute, stored inversions keyed by grid points, the
settings it takes and refuses (before any model loads), its fingerprint."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from conftest import moving_clip
from wan_tiny import build_tiny_wan_folder

from anyv2v_batch import edit, invert, load_backbone
from anyv2v_batch.flow import grid_keys
from anyv2v_batch.flow_edit import FlowEditSettings
from anyv2v_batch.flow_edit import edit as flow_edit
from anyv2v_batch.flow_edit import invert as flow_invert
from anyv2v_batch.inversion import inversion_from_bytes, inversion_to_bytes
from anyv2v_batch.settings import backbone_defaults


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return build_tiny_wan_folder(tmp_path_factory.mktemp("wan") / "tiny-wan")


@pytest.fixture(scope="module")
def wan(wan_folder):
    return load_backbone("wan2.2-ti2v", str(wan_folder), device="cpu")


def settings(**edit):
    d = backbone_defaults("wan2.2-ti2v")
    return dataclasses.replace(d["inversion"], steps=8), dataclasses.replace(d["edit"], steps=4, **edit)


def test_the_api_edit_is_the_flow_loops_on_the_grid_keys(wan):
    frames, edited = moving_clip(9, 64, 64, seed=1), moving_clip(1, 64, 64, seed=2)[0]
    inv_s, edit_s = settings(prompt="a blue disc moves right")
    inversion = invert(wan, frames, inv_s, fps=24.0)
    assert inversion.timesteps == tuple(sorted(grid_keys(8)))  # the clean end (key 0) first
    result = edit(wan, inversion, edited, edit_s)
    # by hand: the 8-step inversion read at the 4-step edit's grid points (every other one)
    context = wan.encode_prompts([""])
    points = flow_invert(wan, wan.encode_video(frames), context, 8, 5.0, "euler")
    assert torch.equal(inversion.at(0)[0], points[8]) and torch.equal(inversion.at(grid_keys(8)[2])[0], points[2])
    by_hand = flow_edit(
        wan, points[0::2], wan.encode_image(edited), wan.encode_image(frames[0]),
        wan.encode_prompts(["a blue disc moves right"]), wan.encode_prompts([edit_s.negative_prompt]), context,
        FlowEditSettings(steps=4, shift=5.0, guidance=5.0, pnp_attn=0.5, pnp_feature=0.2),
    )  # fmt: skip
    assert torch.equal(result.latents, by_hand)
    assert result.frames.shape == (9, 64, 64, 3) and result.frames.dtype == np.uint8
    keys = grid_keys(4)
    assert result.timesteps == keys[:4]
    assert result.injected == {"attention": keys[:2], "feature": []}  # int(4 * 0.5), int(4 * 0.2)
    assert result.unet_batch_entries == 4 * 2 + 2


def test_a_stored_inversion_round_trips_and_a_finer_one_serves(wan):
    frames = moving_clip(5, 64, 64, seed=4)
    inv_s, edit_s = settings()
    inversion = invert(wan, frames, inv_s, fps=24.0)
    again, _ = inversion_from_bytes(inversion_to_bytes(inversion))
    assert again.timesteps == inversion.timesteps and torch.equal(again.latents, inversion.latents)
    assert again.settings == inv_s  # solver and shift included
    a = edit(wan, inversion, frames[0], edit_s, decode=False)
    b = edit(wan, again, frames[0], edit_s, decode=False)
    assert torch.equal(a.latents, b.latents)


REFUSALS = [
    (["--frames", 10], "wan2.2-ti2v needs a frame count of 4k + 1 (its VAE packs 4 frames per latent after the "
                       "first), got --frames 10; use --frames 9 or 13"),
    (["--width", 48], "wan2.2-ti2v needs --width and --height that are multiples of 32"),
    (["--pnp-spatial", 0.3], "--pnp-spatial is a U-Net injection; wan2.2-ti2v injects with --pnp-attn"),
    (["--inversion-solver", "ddim"], "wan2.2-ti2v is a flow-matching model: --inversion-solver euler or midpoint"),
    (["--inversion-steps", 6, "--steps", 4], "6 inversion steps do not visit it; use --inversion-steps 8"),
]  # fmt: skip


@pytest.mark.parametrize("flags,message", REFUSALS, ids=[str(f[0]) for f, _ in REFUSALS])
def test_settings_are_refused_before_any_model_loads(tmp_path, flags, message):
    """--model names nothing: every refusal comes from the settings alone, with nothing written."""
    source = tmp_path / "src.mp4"
    from anyv2v_batch.video_io import write_video

    write_video(source, moving_clip(9, 64, 64, seed=1), 24.0)
    base = ["edit", source, "-o", tmp_path / "out.mp4", "--backbone", "wan2.2-ti2v", "--model", tmp_path / "none",
            "--frames", 9, "--width", 64, "--height", 64, "--first-frame", tmp_path / "f.png"]  # fmt: skip
    (tmp_path / "f.png").write_bytes(b"")
    code, said = run_cli(base + flags)
    assert code == 1 and message in said[-1], said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "src.mp4"]


def test_dit_knobs_are_refused_on_a_unet_and_missing_weights_are_one_line(tmp_path):
    from anyv2v_batch.backbones import backbone_class
    from anyv2v_batch.errors import AnyV2VError
    from anyv2v_batch.pnp_edit import check_edit_settings

    d = backbone_defaults("i2vgen-xl")
    with pytest.raises(AnyV2VError, match="--pnp-attn applies to wan2.2-ti2v, not i2vgen-xl"):
        check_edit_settings(
            backbone_class("i2vgen-xl"), None, dataclasses.replace(d["edit"], pnp_attn=0.3), d["inversion"]
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(AnyV2VError) as e:
        load_backbone("wan2.2-ti2v", str(tmp_path / "empty"), device="cpu")
    assert "\n" not in str(e.value) and "transformer" in str(e.value)


def test_the_fingerprint_covers_the_dit_knobs_and_leaves_unet_fingerprints_alone():
    from anyv2v_batch.settings import recorded_fields

    _, edit_s = settings()
    assert recorded_fields(edit_s)["pnp_attn"] == 0.5
    assert recorded_fields(dataclasses.replace(edit_s, pnp_attn=0.7)) != recorded_fields(edit_s)
    assert recorded_fields(dataclasses.replace(edit_s, attn_injection="kv"))["attn_injection"] == "kv"
    unet = backbone_defaults("i2vgen-xl")
    assert not {"pnp_attn", "pnp_feature", "shift", "feature_blocks", "attn_injection"} & set(
        recorded_fields(unet["edit"])
    )
    assert not {"solver", "shift"} & set(recorded_fields(unet["inversion"]))
