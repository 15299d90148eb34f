"""Feature injection: the mechanism, its windows, and invariants of the edit that do not need a reference."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from conftest import rel_err

from anyv2v_batch import AnyV2VError, EditSettings, Inversion, InversionSettings, edit, invert
from anyv2v_batch.backbones.i2vgen_xl import I2VGenXL
from anyv2v_batch.injection import BranchPlan, FeatureInjector
from anyv2v_batch.pnp_edit import injection_windows


def test_branch_plan_copies_the_source_slice_over_the_others():
    x = torch.arange(3 * 2 * 4, dtype=torch.float32).reshape(6, 4)  # 3 branches x 2 rows
    original = x.clone()
    BranchPlan.one_source(3).apply(x)
    assert torch.equal(x[0:2], original[0:2])
    assert torch.equal(x[2:4], original[0:2]) and torch.equal(x[4:6], original[0:2])
    y = original.clone()
    BranchPlan(3, ((1, (2,)),)).apply(y)  # one source, one target, first branch untouched
    assert torch.equal(y[0:2], original[0:2]) and torch.equal(y[4:6], original[2:4])


def test_official_positions_exist_and_are_counted_right(tiny_backbone):
    pos = I2VGenXL.injection_positions
    assert pos["conv"] == ("up_blocks.1.resnets.1.conv2",)
    assert len(pos["spatial"]) == len(pos["temporal"]) == 16  # 8 attention blocks x (Q, K)
    modules = dict(tiny_backbone.unet.named_modules())
    assert all(p in modules for paths in pos.values() for p in paths)
    assert not any(p.endswith("to_v") for paths in pos.values() for p in paths)
    with pytest.raises(ValueError, match="not found"):
        FeatureInjector(tiny_backbone.unet, {"conv": ("up_blocks.9.resnets.0.conv2",)})


@pytest.mark.slow
def test_hooks_are_gone_after_the_block(tiny_backbone, case_a):
    inv = case_a.reference_inversion()
    settings = case_a.edit_settings()
    before = edit(tiny_backbone, inv, case_a.edited, settings, decode=False).latents
    with FeatureInjector(tiny_backbone.unet, I2VGenXL.injection_positions) as injector:
        injector.set_step(0, {k: BranchPlan.one_source(2) for k in ("conv", "spatial", "temporal")})
    assert all(not m._forward_hooks for m in tiny_backbone.unet.modules())
    after = edit(tiny_backbone, inv, case_a.edited, settings, decode=False).latents
    assert torch.equal(before, after)


@pytest.mark.slow
def test_fractions_zero_equal_plain_sampling_from_the_inverted_latent(tiny_backbone, case_a):
    inv = case_a.reference_inversion()
    zero = case_a.edit_settings(pnp_conv=0.0, pnp_spatial=0.0, pnp_temporal=0.0)
    plain = edit(tiny_backbone, inv, case_a.edited, zero, inject=False, decode=False)
    # the official way: the source branch rides along at every step and is thrown away
    kept = edit(tiny_backbone, inv, case_a.edited, zero, trim_source=False, decode=False)
    assert kept.injected == {"conv": [], "spatial": [], "temporal": [], "cross": []}
    assert rel_err(kept.latents, plain.latents) < 1e-5
    assert kept.unet_batch_entries == 3 * 10 and plain.unet_batch_entries == 2 * 10
    # and a real edit is far from it, so the comparison above can fail
    assert (
        rel_err(edit(tiny_backbone, inv, case_a.edited, case_a.edit_settings(), decode=False).latents, plain.latents)
        > 0.01
    )


@pytest.mark.slow
def test_dropping_the_source_branch_after_the_last_injection_changes_nothing(tiny_backbone, case_a):
    inv = case_a.reference_inversion()
    trimmed = edit(tiny_backbone, inv, case_a.edited, case_a.edit_settings(), decode=False)
    full = edit(tiny_backbone, inv, case_a.edited, case_a.edit_settings(), trim_source=False, decode=False)
    assert rel_err(trimmed.latents, full.latents) < 1e-5
    # temporal injection ends after 5 of 10 steps: 5 calls of 3 plus 5 calls of 2
    assert trimmed.unet_batch_entries == 5 * 3 + 5 * 2 and full.unet_batch_entries == 30


@pytest.mark.slow
def test_unedited_frame_full_injection_reproduces_the_ddim_reconstruction(tiny_backbone, case_a):
    """With the source frame, the inversion prompt, guidance 1 and every fraction 1, the editing branch
    gets exactly the source branch's inputs, so injection must be a no-op: the edit is the plain DDIM
    reconstruction. The inverted latents are made self-consistent (the reconstruction's own
    trajectory), which makes the equality exact and catches a source latent taken at the wrong step."""
    frames = case_a.frames
    rough = invert(tiny_backbone, frames, InversionSettings(steps=20), fps=8)
    settings = EditSettings(guidance_scale=1.0, steps=10, pnp_conv=1.0, pnp_spatial=1.0, pnp_temporal=1.0)
    trajectory: dict[int, torch.Tensor] = {}
    recon = edit(
        tiny_backbone,
        rough,
        frames[0],
        settings,
        inject=False,
        decode=False,
        on_step=lambda i, t, x: trajectory.__setitem__(t, x[0].clone()),
    )
    ts = tuple(sorted(trajectory))
    consistent = Inversion(
        "i2vgen-xl", ts, torch.stack([trajectory[t] for t in ts]), frames[0], 8.0, InversionSettings(steps=10)
    )
    full = edit(tiny_backbone, consistent, frames[0], settings, decode=False)
    assert full.injected["conv"] == list(reversed(ts))  # injection did run, at every step
    assert rel_err(full.latents, recon.latents) < 1e-5
    # the same with an edited frame is not a reconstruction
    edited = edit(tiny_backbone, consistent, case_a.edited, settings, decode=False)
    assert rel_err(edited.latents, recon.latents) > 0.05


def test_injection_windows_official_and_from_start():
    ts = [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]
    s = EditSettings(steps=10, init_step=2, pnp_conv=0.3, pnp_spatial=0.0, pnp_temporal=1.0)
    official = injection_windows(ts, s)
    assert official["conv"] == {901, 801, 701} and official["spatial"] == set() and official["temporal"] == set(ts)
    from_start = injection_windows(ts, EditSettings(**{**s.__dict__, "injection_window": "from-start"}))
    assert from_start["conv"] == {701, 601, 501}
    # int(steps * f) as the official code computes it, float rounding included
    assert len(injection_windows(ts, EditSettings(steps=10, pnp_conv=0.7))["conv"]) == 7


def test_from_start_window_fires_on_the_steps_that_run(tiny_backbone, case_a):
    inv = case_a.reference_inversion()
    s = case_a.edit_settings(init_step=2, injection_window="from-start")
    result = edit(tiny_backbone, inv, case_a.edited, s, decode=False)
    assert result.injected == {
        "conv": [701, 601], "spatial": [701, 601], "temporal": [701, 601, 501, 401, 301], "cross": [],
    }  # fmt: skip


def test_inversion_value_pickles_and_slims(tiny_backbone, case_a):
    inv = case_a.reference_inversion()
    back = pickle.loads(pickle.dumps(inv))
    assert back.timesteps == inv.timesteps and torch.equal(back.latents, inv.latents)
    assert np.array_equal(back.source_first_frame, inv.source_first_frame)
    slim = inv.keep([901, 801, 701])
    assert slim.timesteps == (701, 801, 901) and torch.equal(slim.at(801), inv.at(801))
    with pytest.raises(AnyV2VError, match="no latent at timestep 601"):
        slim.at(601)
    # sampling from the slim inversion needs exactly what it holds: fine from step 2 with no injection past it
    r1 = edit(tiny_backbone, inv, case_a.edited, case_a.edit_settings(init_step=8), decode=False)
    r2 = edit(tiny_backbone, inv.keep([101]), case_a.edited, case_a.edit_settings(init_step=8), decode=False)
    assert torch.equal(r1.latents, r2.latents)


def test_schedules_the_inversion_cannot_serve_are_refused_before_work(tiny_backbone, case_a):
    inv = invert(tiny_backbone, case_a.frames[:4], InversionSettings(steps=30), fps=8)  # t = 1, 34, 67, ...
    with pytest.raises(AnyV2VError, match="no latent at timestep 901"):
        edit(tiny_backbone, inv, case_a.edited, EditSettings(steps=10))
    with pytest.raises(AnyV2VError, match="beyond the model's last timestep 999"):
        invert(tiny_backbone, case_a.frames[:4], InversionSettings(steps=1000), fps=8)


@pytest.mark.slow
def test_variants_share_one_source_branch_and_clips_share_calls(tiny_backbone, case_a):
    """[source, neg1, edit1, edit2 (guidance 1), neg3, edit3] for one clip plus a second clip, all in the
    same UNet calls: every result equals its edit alone, at fewer batch entries."""
    from anyv2v_batch.pnp_edit import EditRequest, edit_batch

    inv = case_a.reference_inversion()
    other = Inversion("i2vgen-xl", inv.timesteps, inv.latents.flip(-1).contiguous(), case_a.frames[3], 8.0,
                      inv.settings)  # fmt: skip
    steps = 5  # of the 100-step inversion's grid; what runs together does not depend on the step count
    variants = [
        (inv, case_a.edited, case_a.edit_settings(steps=steps)),
        (inv, case_a.frames[0],
         case_a.edit_settings(steps=steps, guidance_scale=1.0, pnp_conv=0.5, prompt="a cat", seed=3)),
        (inv, case_a.edited[::-1],
         case_a.edit_settings(steps=steps, guidance_scale=5.0, pnp_temporal=0.0, eta=0.5, seed=4)),
        (other, case_a.edited, case_a.edit_settings(steps=steps, pnp_spatial=0.6)),
    ]  # fmt: skip
    alone = [edit(tiny_backbone, i, f, s, decode=False) for i, f, s in variants]
    together = edit_batch(tiny_backbone, [EditRequest(i, f, s) for i, f, s in variants], decode=False)
    for a, b in zip(alone, together, strict=True):
        assert torch.equal(b.latents, a.latents)  # bit for bit: every call's shape is fixed by its pair alone
        assert b.injected == a.injected
    assert sum(r.unet_batch_entries for r in together) < sum(r.unet_batch_entries for r in alone)
    assert rel_err(together[0].latents, together[3].latents) > 0.01  # different clips stay different


@pytest.mark.slow
def test_clips_inverted_together_equal_each_alone(tiny_backbone, case_a):
    from anyv2v_batch.inversion import invert_batch

    clips = [case_a.frames[:6], case_a.frames[2:8][::-1]]
    for settings in (InversionSettings(steps=4), InversionSettings(steps=4, guidance_scale=3.0, prompt="a car")):
        together = invert_batch(tiny_backbone, clips, settings, fps=8)
        for clip, inv in zip(clips, together, strict=True):
            alone = invert(tiny_backbone, clip, settings, fps=8)
            assert inv.timesteps == alone.timesteps
            assert torch.equal(inv.latents, alone.latents)
            assert np.array_equal(inv.source_first_frame, clip[0])


def test_cross_attention_injection_is_refused_where_a_backbone_has_none(tiny_backbone):
    from anyv2v_batch import EditSettings, InversionSettings
    from anyv2v_batch.errors import AnyV2VError
    from anyv2v_batch.pnp_edit import plan_sampling

    with pytest.raises(AnyV2VError, match="--pnp-cross: i2vgen-xl has no cross-attention injection"):
        plan_sampling(tiny_backbone, EditSettings(pnp_cross=0.1), InversionSettings())
    assert plan_sampling(tiny_backbone, EditSettings(), InversionSettings()).windows["cross"] == set()
