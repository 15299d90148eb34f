"""A clip longer than one window, edited with the tiny model: each window is exactly the one-clip edit of
its sub-clip with its chained first frame, `edit --frames all` writes the chain, and statistics matching
leaves window 1 alone and moves the later windows' latents towards it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, moving_clip
from PIL import Image
from test_cli import run_cli

from anyv2v_batch import EditSettings, InversionSettings, edit, invert
from anyv2v_batch.chain import ChainRequest, edit_chains
from anyv2v_batch.settings import WindowSettings
from anyv2v_batch.video_io import read_frame_folder, read_video, write_video
from anyv2v_batch.windows import plan_windows, window_seed

pytestmark = pytest.mark.slow  # whole sampling loops against the recordings

# chaining does not depend on the step count: the fewest that run a sampling loop
STEPS = ["--inversion-steps", "2", "--steps", "2", "--device", "cpu", "--model", str(TINY_MODEL)]
SIZE = ["--width", "32", "--height", "32"]
INVERSION = InversionSettings(steps=2)
SETTINGS = EditSettings(prompt="a red car", steps=2, seed=8888)
PLAN = plan_windows(40, 16, 1, 16)  # [0, 16) [15, 31) [24, 40)


@pytest.fixture(scope="module")
def case(tmp_path_factory, tiny_backbone):
    root = tmp_path_factory.mktemp("long")
    source = moving_clip(40, 32, 32)
    write_video(root / "src.mp4", source, 8)
    edited = source[0][..., ::-1].copy()
    Image.fromarray(edited).save(root / "edited.png")
    frames = read_video(root / "src.mp4", 40, 8, 32, 32).frames
    inversions = {}

    def inversion_of(w):  # each window's inversion once, for every chain below
        if w.start not in inversions:
            inversions[w.start] = invert(tiny_backbone, frames[w.start : w.end], INVERSION, fps=8)
        return inversions[w.start]

    def chain(window: WindowSettings = WindowSettings()):
        return edit_chains(tiny_backbone, PLAN, inversion_of, [ChainRequest(edited, SETTINGS)], window)[0]

    return root, frames, edited, inversion_of, chain, chain()


def test_each_window_is_the_one_clip_edit_of_its_sub_clip(case, tiny_backbone, capsys):
    root, frames, edited, inversion_of, _, result = case
    assert [len(w) for w in result.windows] == [16, 16, 16] and result.frames.shape == (40, 32, 32, 3)
    assert result.seeds == [8888, window_seed(8888, 1), window_seed(8888, 2)]
    # each frame once: frames [0, 16) from window 1, [16, 31) from window 2, [31, 40) from window 3
    assert np.array_equal(result.frames[:16], result.windows[0])
    assert np.array_equal(result.frames[16:31], result.windows[1][1:])
    assert np.array_equal(result.frames[31:], result.windows[2][7:])
    assert np.array_equal(result.windows[0], edit(tiny_backbone, inversion_of(PLAN[0]), edited, SETTINGS).frames)

    # window 2 by the one-clip command: its 16 source frames, window 1's output at frame 15 as the edited
    # first frame, the window's seed
    (root / "sub").mkdir()
    for i, frame in enumerate(frames[15:31]):
        Image.fromarray(frame).save(root / "sub" / f"{i:03d}.png")
    Image.fromarray(result.windows[0][15]).save(root / "chained.png")
    code, err = run_cli(
        ["edit", root / "sub", "--first-frame", root / "chained.png", "-o", root / "window2", "--prompt", "a red car",
         "--frames", "16", "--seed", str(window_seed(8888, 1)), *SIZE, *STEPS, "-q"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert np.array_equal(read_frame_folder(root / "window2", 16, 8, 32, 32).frames, result.windows[1])
    # the last window (pulled back to end with the clip) starts from window 2's output at frame 24
    third = dataclasses.replace(SETTINGS, seed=window_seed(8888, 2))
    expected = edit(tiny_backbone, inversion_of(PLAN[2]), result.windows[1][24 - 15], third).frames
    assert np.array_equal(result.windows[2], expected)


def test_edit_frames_all_writes_the_chain(case, capsys):
    root, *_, result = case
    code, err = run_cli(
        ["edit", root / "src.mp4", "--first-frame", root / "edited.png", "-o", root / "out", "--prompt", "a red car",
         "--frames", "all", "--window-max-frames", "16", *SIZE, *STEPS],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "40 frames in 3 windows of 16" in err and "seam steps" in err
    written = read_frame_folder(root / "out", 40, 8, 32, 32).frames
    assert np.array_equal(written, result.frames)
    # the whole clip fits one I2VGen-XL window by default (up to 128 frames): no windows, one edit
    code, err = run_cli(
        ["edit", root / "src.mp4", "--first-frame", root / "edited.png", "-o", root / "one", "--frames", "all",
         "--max-frames", "30", *SIZE, *STEPS],
        capsys,
    )  # fmt: skip
    assert code == 1 and "more than clip.max_frames 30" in err and not (root / "one").exists()


def test_statistics_matching_leaves_window_1_and_pulls_later_windows_to_it(case):
    *_, chain, result = case
    full, half = chain(WindowSettings(match_stats=1.0)), chain(WindowSettings(match_stats=0.5))
    for matched in (full, half):
        assert np.array_equal(matched.windows[0], result.windows[0])  # window 1 unchanged
        assert all(torch.equal(a, b) for a, b in zip(matched.stats[0], result.stats[0], strict=True))
        assert not np.array_equal(matched.frames[16:], result.frames[16:])
    reference_mean, reference_std = result.stats[0]
    for k in (1, 2):
        assert torch.allclose(full.stats[k][0], reference_mean, atol=1e-5)
        assert torch.allclose(full.stats[k][1], reference_std, atol=1e-4)
    # window 2 (same input as unmatched): half strength moves its channel means half way
    unmatched_gap = result.stats[1][0] - reference_mean
    assert torch.allclose(half.stats[1][0] - reference_mean, unmatched_gap / 2, atol=1e-5)
    assert chain(WindowSettings(match_stats=0.0)).frames.tobytes() == result.frames.tobytes()  # off: identical


@pytest.mark.parametrize("name", ["consisti2v", "seine"])
def test_every_backbone_chains_its_windows_exactly(name):
    """ConsistI2V (frame 0 a condition, exactly n_frames per window) and SEINE (DDPM: fresh noise from each
    window's seed): window 2 is the one-clip edit of its sub-clip from window 1's output."""
    from test_backbones_job import CONSISTI2V, SEINE

    from anyv2v_batch.backbones import backbone_class, load_backbone
    from anyv2v_batch.settings import backbone_defaults
    from anyv2v_batch.windows import plan_for, resolve_limits

    model, size, inversion = {
        "consisti2v": (CONSISTI2V, 32, InversionSettings(steps=5)),
        "seine": (SEINE, 64, InversionSettings(steps=10, save_steps=5)),
    }[name]
    backbone = load_backbone(name, str(model), device="cpu", dtype="float32")
    window = WindowSettings(frames=8, max_frames=8)
    plan = plan_for(15, resolve_limits(backbone_class(name).window_limits(str(model)), window, name), window)
    assert [(w.start, w.frames) for w in plan] == [(0, 8), (7, 8)]
    frames = moving_clip(15, size, size, seed=5)
    settings = dataclasses.replace(backbone_defaults(name)["edit"], prompt="a red car", steps=5, seed=7)
    inversions = {w.start: invert(backbone, frames[w.start : w.end], inversion, fps=8) for w in plan}
    [result] = edit_chains(
        backbone, plan, lambda w: inversions[w.start], [ChainRequest(frames[0][..., ::-1].copy(), settings)], window
    )
    assert result.frames.shape == (15, size, size, 3)
    second = dataclasses.replace(settings, seed=window_seed(7, 1))
    expected = edit(backbone, inversions[7], result.windows[0][7], second).frames
    assert np.array_equal(result.windows[1], expected)
    assert np.array_equal(result.frames[8:15], expected[1:])
