"""Our SEINE path against the official AnyV2V code's outputs (tests/fixtures/seine-reference), stage by
stage in float32: conditioning (text, mask, masked-video latents), VAE encoding, every saved inverted
latent, the start latent, the latent entering every sampling call (and the source branch's), the final
latents and the decoded video. The DDPM sampler's noise is the reference's, replayed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FIXTURES, SHARED, ReferenceCase, rel_err

from anyv2v_batch import EditSettings, Inversion, InversionSettings, edit, invert
from anyv2v_batch.inversion import inversion_branches
from anyv2v_batch.pnp_edit import edit_branches, plan_sampling, prepare_first_frame, to_uint8_batch

TOLERANCE = 1e-4
ROOT = SHARED / "seine-reference"
# case-a: the shared fixture; further cases recorded the same way (tools/reference/seine/)
CASES = [ROOT / "case-a"] + sorted(p for p in (FIXTURES / "seine-cases").glob("case-*") if p.is_dir())


class Case(ReferenceCase):
    """A recorded case (case.json, reference.safetensors, source/, edited_first_frame.png) with this
    backbone's settings."""

    def inversion_settings(self) -> InversionSettings:
        c = self.case
        return InversionSettings(steps=c["inversion_steps"], prompt=c["inversion_prompt"], save_steps=c["n_save_steps"])

    def edit_settings(self, **overrides) -> EditSettings:
        c = self.case
        values = dict(
            prompt=c["prompt"],
            negative_prompt=c["negative_prompt"],
            steps=c["steps"],
            guidance_scale=c["cfg_scale"],
            pnp_conv=c["pnp_conv"],
            pnp_spatial=c["pnp_spatial_attn"],
            pnp_temporal=c["pnp_temporal_attn"],
            pnp_cross=c["pnp_cross_attn"],
            seed=c["seed"],
        )
        return EditSettings(**(values | overrides))

    def inversion(self) -> Inversion:
        ts = tuple(self.case["inversion_saved_timesteps"])
        return Inversion(
            backbone="seine",
            timesteps=ts,
            latents=torch.stack([self.ref[f"inverted/{t}"][0] for t in ts]),
            source_first_frame=self.frames[0],
            fps=8.0,
            settings=self.inversion_settings(),
        )

    def noise(self, i: int) -> torch.Tensor:
        return self.ref[f"edit/ddpm_noise/{i:03d}"]


@pytest.fixture(scope="module")
def backbone():
    from anyv2v_batch import load_backbone

    return load_backbone("seine", str(ROOT / "tiny-seine"), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def case() -> Case:
    return Case(ROOT / "case-a")


@pytest.fixture(scope="module", params=CASES, ids=lambda p: p.name)
def stages(request, backbone):
    case = Case(request.param)
    return (case, *stage_errors(backbone, case))


def _edit(backbone, case, **overrides):
    return edit(
        backbone, case.inversion(), case.edited, case.edit_settings(**overrides), decode=False,
        variance_noise=case.noise,
    )  # fmt: skip


def stage_errors(backbone, case: Case):
    """Every stage's relative error against the reference case, and what the edit did."""
    c, ref = case.case, case.ref
    n = c["n_frames"]
    errors = {}
    first_call = ref["inversion/unet_input_first"]  # [1, 9, F, h, w] = [latent, mask, masked source video]
    cond = backbone.condition(inversion_branches(case.frames[0], case.inversion_settings()), n, 8.0)
    errors["inversion/encoder_hidden_states"] = rel_err(
        cond["encoder_hidden_states"], ref["inversion/encoder_hidden_states"]
    )
    assert torch.equal(cond["mask"], first_call[:, 4:5])
    errors["inversion/masked_latents"] = rel_err(cond["masked_latents"], first_call[:, 5:])

    edited = prepare_first_frame(case.edited, c["width"], c["height"])
    cond = backbone.condition(edit_branches(backbone, case.inversion(), edited, case.edit_settings()), n, 8.0)
    text = ref["edit/encoder_hidden_states"]  # official order [inversion prompt, prompt, negative]
    errors["edit/encoder_hidden_states"] = rel_err(cond["encoder_hidden_states"], text[[0, 2, 1]])
    t0 = c["edit_timesteps"][0]
    source_call, edited_call = ref[f"edit/source_input/000_t{t0}"], ref[f"edit/unet_input/000_t{t0}"]
    errors["edit/masked_latents (source)"] = rel_err(cond["masked_latents"][:1], source_call[:, 5:])
    errors["edit/masked_latents (edited)"] = rel_err(cond["masked_latents"][-1:], edited_call[:, 5:])
    errors["video_latents_0"] = rel_err(backbone.encode_video(case.frames), ref["video_latents_0"])

    inverted = {}
    inversion = invert(
        backbone, case.frames, case.inversion_settings(), latents=ref["video_latents_0"],
        on_step=lambda i, t, x: inverted.__setitem__(t, x.clone()),
    )  # fmt: skip
    assert list(inversion.timesteps) == c["inversion_saved_timesteps"]  # saved on the coarser grid only
    errors["inverted (worst saved timestep)"] = max(
        rel_err(inverted[t], ref[f"inverted/{t}"]) for t in c["inversion_saved_timesteps"]
    )

    plan = plan_sampling(backbone, case.edit_settings(), case.inversion_settings())
    assert plan.run == c["edit_timesteps"] and plan.start == c["x_T_from"]
    assert plan.source == [t + 1 for t in plan.run]
    for i, t in enumerate(plan.run):  # the source branch reads the inversion at t + 1
        assert torch.equal(ref[f"edit/source_input/{i:03d}_t{t}"][:, :4], ref[f"inverted/{t + 1}"])

    entering = {}
    result = edit(
        backbone, case.inversion(), case.edited, case.edit_settings(), decode=False, variance_noise=case.noise,
        on_step=lambda i, t, x: entering.__setitem__((i, t), x.clone()),
    )  # fmt: skip
    assert [t for _, t in sorted(entering)] == c["edit_timesteps"]
    assert torch.equal(entering[(0, plan.run[0])], ref["edit/x_T"])
    errors["edit/unet_input (worst call)"] = max(
        rel_err(x, ref[f"edit/unet_input/{i:03d}_t{t}"][:, :4]) for (i, t), x in entering.items()
    )
    errors["edit/final_latents"] = rel_err(result.latents, ref["edit/final_latents"])
    decoded = backbone.decode_video(ref["edit/final_latents"])  # [1, 3, F, H, W] in [-1, 1]
    # the official output is uint8 (rounded as ours is): compare the frames as the numbers they are
    ours = torch.from_numpy(to_uint8_batch(decoded)[0]).float()
    errors["edit/decoded_video"] = rel_err(ours, ref["edit/decoded_video"][0].float())
    return errors, result, decoded


def test_every_stage_matches_the_official_code(stages):
    case, errors, _, _ = stages
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE}
    assert not bad, f"{case.case['name']}: stages off by more than {TOLERANCE}: {bad}"


def test_decoded_frames_equal_the_official_uint8_frames(stages):
    case, _, _, decoded = stages
    ours = torch.from_numpy(to_uint8_batch(decoded)[0]).int()
    assert (ours - case.ref["edit/decoded_video"][0].int()).abs().max() <= 1


def test_injection_fires_in_the_official_windows(stages):
    case, _, result, _ = stages
    for kind in ("conv", "spatial", "temporal"):
        assert result.injected[kind] == case.case[f"{kind}_injected"], kind
    assert result.injected["cross"] == case.case.get("cross_injected", [])


@pytest.mark.parametrize("kind", ["pnp_conv", "pnp_spatial", "pnp_temporal", "pnp_cross"])
def test_each_injection_kind_matters_on_the_fixture(backbone, kind):
    """Switching one kind off moves the final latents by > 1%. On case-b (fractions 0.8 / 0.9 / 1.0 and
    cross 0.6): 2.0 / 3.5 / 2.0 / 1.9%. (case-a's README: conv 1.09, spatial 1.55, temporal 0.98%.)"""
    case = Case(FIXTURES / "seine-cases" / "case-b")
    assert case.edit_settings().pnp_cross > 0
    moved = rel_err(_edit(backbone, case, **{kind: 0.0}).latents, case.ref["edit/final_latents"])
    assert moved > 0.01, moved


def test_cross_attention_injection_is_available(backbone, case):
    result = _edit(backbone, case, pnp_cross=0.3)
    assert result.injected["cross"] == case.case["edit_timesteps"][:3]
    assert rel_err(result.latents, case.ref["edit/final_latents"]) > 1e-3


def test_normal_runs_draw_the_noise_from_the_seeded_generator(backbone, case):
    """Without replay, the DDPM noise comes from the edit's seed: same seed same output, new seed differs."""
    settings = case.edit_settings(pnp_conv=0.0, pnp_spatial=0.0, pnp_temporal=0.0)
    a = edit(backbone, case.inversion(), case.edited, settings, decode=False).latents
    b = edit(backbone, case.inversion(), case.edited, settings, decode=False).latents
    c = edit(backbone, case.inversion(), case.edited, EditSettings(**{**settings.__dict__, "seed": 2}), decode=False)
    assert torch.equal(a, b) and rel_err(c.latents, a) > 1e-3


@pytest.mark.slow
def test_end_to_end_from_frames(backbone, case):
    """Our own encoding -> inversion -> edit (reference noise) -> decode, within tolerance."""
    inversion = invert(backbone, case.frames, case.inversion_settings())
    result = edit(backbone, inversion, case.edited, case.edit_settings(), variance_noise=case.noise)
    assert rel_err(result.latents, case.ref["edit/final_latents"]) <= TOLERANCE
    assert np.abs(result.frames.astype(int) - case.ref["edit/decoded_video"][0].numpy().astype(int)).max() <= 1
