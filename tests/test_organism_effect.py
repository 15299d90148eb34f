"""The method's effect, measured on the model organism (the package's trained tiny I2VGen-XL): an AnyV2V
edit of a world clip (a shape recoloured in the first frame) moves as the source moves -- the scorer's
motion fidelity, optical flow against the source's -- and it does so through the source's inversion: from
fresh noise instead (the paper's last ablation step) the motion is lost; and a route threshold on motion
fidelity (the job's own threshold parsing and verdict) keeps every good edit and sends every such failed
one aside.

Measured with tools/organism/ablation.py (benchmarks/RESULTS.md, "the model organism"); the thresholds sit
between the measured values with a margin. They fail on a pipeline that ignores the inverted noise (the
fresh-noise edit then moves like the full one) or loses the source's motion.
"""

from __future__ import annotations

import pytest
import torch
from test_organism import load_tool

from anyv2v_batch.evaluation import EvaluateSettings, parse_thresholds
from anyv2v_batch.organism import I2VGEN_XL_WORLD, WORLD_CLIP

CLIPS, STEPS, GUIDANCE = 2, 10, 9.0
# measured on these two clips at these settings: motion fidelity 0.695 and 0.383 from the source's inversion,
# 0.172 and 0.216 from fresh noise; the thresholds sit between, about 0.08 from each
MIN_MOTION_FIDELITY = MAX_FRESH_NOISE_FIDELITY = ROUTE_THRESHOLD = 0.3
FULL, NO_NOISE = "full AnyV2V", "- inverted noise"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def table() -> dict:
    """{setting: {column: [value per clip]}} for the held-out clips, as tools/organism/ablation.py measures."""
    from anyv2v_batch.backbones.i2vgen_xl import I2VGenXL
    from anyv2v_batch.scores import Scorer

    ablation = load_tool("ablation")
    backbone = I2VGenXL.from_pretrained(str(I2VGEN_XL_WORLD), device="cpu", dtype="float32")
    scorer = Scorer(str(WORLD_CLIP))
    clips = [ablation.held_out_clip(i) for i in range(CLIPS)]
    settings = {name: ablation.SETTINGS[name] for name in (FULL, NO_NOISE)}
    with torch.inference_mode():
        return ablation.measure(backbone, scorer, clips, STEPS, GUIDANCE, settings, wrong_frame=False)


def test_the_edit_follows_the_source_motion_through_the_inverted_noise(table):
    """The output moves as the source moves (optical flow against the source's), on every clip; started
    from fresh noise instead of the source's inversion, it does not (the paper's last ablation step)."""
    full, fresh = table[FULL]["motion_fidelity"], table[NO_NOISE]["motion_fidelity"]
    assert min(full) >= MIN_MOTION_FIDELITY, full
    assert max(fresh) <= MAX_FRESH_NOISE_FIDELITY, fresh


def test_a_route_threshold_sends_failed_edits_aside_and_keeps_good_ones(table):
    """route mode's verdict (the job's own threshold parsing and judging) on the measured scores: every
    good edit passes, every edit that lost the source's inversion fails."""
    settings = EvaluateSettings(mode="route", thresholds=parse_thresholds({"motion_fidelity": ROUTE_THRESHOLD}))
    good = [settings.judge({"score_motion_fidelity": v}) for v in table[FULL]["motion_fidelity"]]
    failed = [settings.judge({"score_motion_fidelity": v}) for v in table[NO_NOISE]["motion_fidelity"]]
    assert all(passed for passed, _ in good), good
    assert all(checks == ["motion_fidelity.min"] for passed, checks in failed), failed
