"""Our ConsistI2V path against the official AnyV2V code's outputs (tests/fixtures/consisti2v-reference),
stage by stage in float32: conditioning, VAE encoding, every stored inverted latent, the latent entering
every sampling call, the final latents, the decoded video. Each stage starts from the reference's input.
"""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES, SHARED, ReferenceCase, rel_err

from anyv2v_batch import EditSettings, Inversion, InversionSettings, edit, invert
from anyv2v_batch.inversion import inversion_branches
from anyv2v_batch.pnp_edit import edit_branches, prepare_first_frame

pytestmark = pytest.mark.slow  # whole sampling loops against the recordings

TOLERANCE = 1e-4
ROOT = SHARED / "consisti2v-reference"
# case-a: the shared fixture; further cases recorded the same way (tools/reference/consisti2v/)
CASES = [ROOT / "case-a"] + sorted(p for p in (FIXTURES / "consisti2v-cases").glob("case-*") if p.is_dir())


class Case(ReferenceCase):
    """A recorded case (case.json, reference.safetensors, source/, edited_first_frame.png) with this
    backbone's settings."""

    def inversion_settings(self) -> InversionSettings:
        c = self.case
        return InversionSettings(
            steps=c["inversion_steps"],
            prompt=c["inversion_prompt"],
            guidance_scale=c["inversion_cfg_txt"],
            negative_prompt=c["inversion_negative_prompt"],
        )

    def edit_settings(self, **overrides) -> EditSettings:
        c = self.case
        values = dict(
            prompt=c["prompt"],
            negative_prompt=c["negative_prompt"],
            steps=c["steps"],
            guidance_scale=c["cfg_txt"],
            pnp_conv=c["pnp_conv"],
            pnp_spatial=c["pnp_spatial_attn"],
            pnp_temporal=c["pnp_temporal_attn"],
            init_step=c["init_t_index"],
            seed=c["seed"],
            random_ratio=c["blend_ratio"],
        )
        return EditSettings(**(values | overrides))

    def inversion(self) -> Inversion:
        ts = tuple(self.case["inversion_timesteps"])
        return Inversion(
            backbone="consisti2v",
            timesteps=ts,
            latents=torch.stack([self.ref[f"inverted/{t}"][0] for t in ts]),
            source_first_frame=self.frames[0],
            fps=8.0,
            settings=self.inversion_settings(),
        )


@pytest.fixture(scope="module")
def backbone():
    from anyv2v_batch import load_backbone

    return load_backbone("consisti2v", str(ROOT / "tiny-consisti2v"), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def case() -> Case:
    return Case(ROOT / "case-a")


@pytest.fixture(scope="module", params=CASES, ids=lambda p: p.name)
def stages(request, backbone):
    case = Case(request.param)
    return (case, *stage_errors(backbone, case))


def stage_errors(backbone, case: Case):
    """Every stage's relative error against the reference case, and what the edit did."""
    c, ref = case.case, case.ref
    n = c["n_frames"]
    errors = {}
    cond = backbone.condition(inversion_branches(case.frames[0], case.inversion_settings()), n, 8.0)
    errors["inversion/encoder_hidden_states"] = rel_err(
        cond["encoder_hidden_states"], ref["inversion/encoder_hidden_states"]
    )
    errors["inversion/first_frame_latents"] = rel_err(cond["first_frame_latents"], ref["inversion/first_frame_latents"])
    assert float(cond["frame_stride"][0]) == float(ref["inversion/frame_stride"])
    edited = prepare_first_frame(case.edited, c["width"], c["height"])
    cond = backbone.condition(edit_branches(backbone, case.inversion(), edited, case.edit_settings()), n, 8.0)
    errors["edit/encoder_hidden_states"] = rel_err(cond["encoder_hidden_states"], ref["edit/encoder_hidden_states"])
    errors["edit/first_frame_latents"] = rel_err(cond["first_frame_latents"], ref["edit/first_frame_latents"])
    errors["video_latents_0"] = rel_err(backbone.encode_video(case.frames), ref["video_latents_0"])

    inverted = {}
    invert(
        backbone, case.frames, case.inversion_settings(), latents=ref["video_latents_0"],
        on_step=lambda i, t, x: inverted.__setitem__(t, x.clone()),
    )  # fmt: skip
    assert sorted(inverted) == c["inversion_unet_timesteps"]
    errors["inverted (worst timestep)"] = max(rel_err(x, ref[f"inverted/{t}"]) for t, x in inverted.items())

    entering = {}
    result = edit(
        backbone, case.inversion(), case.edited, case.edit_settings(), decode=False,
        on_step=lambda i, t, x: entering.__setitem__((i, t), x.clone()),
    )  # fmt: skip
    assert [t for _, t in sorted(entering)] == c["edit_timesteps"]
    errors["edit/unet_input (worst call)"] = max(
        rel_err(x, ref[f"edit/unet_input/{i:03d}_t{t}"]) for (i, t), x in entering.items()
    )
    errors["edit/final_latents"] = rel_err(result.latents, ref["edit/final_latents"])
    decoded = backbone.decode_video(ref["edit/final_latents"])  # [-1, 1]; the official output is clamped to [0, 1]
    errors["edit/decoded_video"] = rel_err((decoded / 2 + 0.5).clamp(0, 1), ref["edit/decoded_video"])
    return errors, result


def test_every_stage_matches_the_official_code(stages):
    case, errors, _ = stages
    bad = {k: v for k, v in errors.items() if not v <= TOLERANCE}
    assert not bad, f"{case.case['name']}: stages off by more than {TOLERANCE}: {bad}"


def test_injection_fires_in_the_official_windows_of_the_full_schedule(stages):
    case, _, result = stages
    c = case.case
    run = set(result.timesteps)
    for kind in ("conv", "spatial", "temporal"):
        assert result.injected[kind] == sorted(run & set(c[f"{kind}_injected"]), reverse=True), kind


def test_output_frame_0_is_the_edited_frame_latent(stages):
    """The official output puts the edited first frame's latent in front of the sampled frames."""
    case, _, result = stages
    # up to the posterior noise of the reference's .sample()
    assert rel_err(result.latents[:, :, 0], case.ref["edit/first_frame_latents"][2, :, 0][None]) <= 1e-5


def _moved(backbone, case, **overrides) -> float:
    """Relative change of the final latents' sampled frames (1..F-1) against the official edit."""
    result = edit(backbone, case.inversion(), case.edited, case.edit_settings(**overrides), decode=False)
    return rel_err(result.latents[:, :, 1:], case.ref["edit/final_latents"][:, :, 1:])


@pytest.mark.parametrize("kind", ["pnp_conv", "pnp_spatial", "pnp_temporal"])
def test_each_injection_kind_matters_on_the_fixture(backbone, case, kind):
    """Switching one kind off moves the final latents by > 1% (the fixture README: 11.3 / 2.4 / 1.9%)."""
    assert _moved(backbone, case, **{kind: 0.0}) > 0.01


def test_source_frame_fix_is_an_option_that_changes_the_output(backbone, case):
    """The official source branch sees the edited frame; the fix conditions it on the source frame
    (the fixture README measures 3.4% on case-a)."""
    moved = _moved(backbone, case, fix_source_frame=True)
    assert 0.01 < moved < 0.1, moved
    inversion, edited = case.inversion(), prepare_first_frame(case.edited, 32, 32)
    fixed = edit_branches(backbone, inversion, edited, case.edit_settings(fix_source_frame=True))
    official = edit_branches(backbone, inversion, edited, case.edit_settings())
    assert fixed[0].first_frame is inversion.source_first_frame and official[0].first_frame is edited


def test_end_to_end_from_frames(backbone, case):
    """Our own encoding -> inversion -> edit -> decode, chained, within tolerance of the official output."""
    c = case.case
    inversion = invert(backbone, case.frames, case.inversion_settings())
    assert inversion.latents.shape[1:] == (4, 8, 16, 16)  # stored with the clean first-frame latent in front
    result = edit(backbone, inversion, case.edited, case.edit_settings())
    assert rel_err(result.latents, case.ref["edit/final_latents"]) <= TOLERANCE
    expected = (case.ref["edit/decoded_video"][0] * 255).round().permute(1, 2, 3, 0)
    assert (expected - result.frames).abs().max() <= 1
    assert result.frames.shape == (c["n_frames"], c["height"], c["width"], 3)


def test_frame_count_is_the_unets_own(backbone, case):
    from anyv2v_batch.errors import AnyV2VError

    with pytest.raises(AnyV2VError, match="consisti2v runs exactly 8 frames.*--frames 8"):
        invert(backbone, case.frames[:6], case.inversion_settings())
