"""The synthetic world (anyv2v_batch/world.py): its clips are what their ground truth says."""

from __future__ import annotations

import io

import numpy as np
import pytest

from anyv2v_batch.video_io import encode_mp4, read_video
from anyv2v_batch.world import BACKGROUNDS, COLOURS, DIRECTIONS, centroid, coverage, make_clip, recoloured_clip


def inside(clip, s: int, f: int) -> bool:
    shape, (x, y) = clip.shapes[s], clip.centres[s, f]
    h, w = clip.frames.shape[1:3]
    reach = shape.size + 1
    return reach <= x <= w - reach and (shape.kind == "stripe" or reach <= y <= h - reach)


def test_a_clip_is_a_function_of_its_seed():
    a, b = make_clip(7), make_clip(7)
    assert np.array_equal(a.frames, b.frames) and a.record() == b.record()
    assert not np.array_equal(make_clip(8).frames, a.frames)
    assert a.frames.dtype == np.uint8 and a.frames.shape == (9, 32, 32, 3)
    assert make_clip(7, frames=16, width=64, height=48).frames.shape == (16, 48, 64, 3)


def weighted_centre(frame: np.ndarray, background: tuple[int, int, int], colour: tuple[int, int, int]):
    """The centre of a shape's coverage on a plain background: each pixel weighted by how far it is from
    the background towards the shape's colour (the renderer's blend, inverted)."""
    bg, fg = np.array(background, float), np.array(colour, float)
    alpha = np.clip(((frame - bg) @ (fg - bg)) / ((fg - bg) @ (fg - bg)), 0, 1)
    ys, xs = np.mgrid[0 : frame.shape[0], 0 : frame.shape[1]] + 0.5
    return (alpha * xs).sum() / alpha.sum(), (alpha * ys).sum() / alpha.sum()


@pytest.mark.parametrize("motion", ["moves", "bounces", "pan"])
def test_each_shape_is_drawn_where_its_ground_truth_says(motion):
    """One solid shape on a plain background: the centre of its coverage is its recorded centre in every
    frame where it is whole (x only for a stripe, which spans the frame's height)."""
    checked = 0
    for seed in range(60):
        clip = make_clip(seed, frames=12, motion=motion, shapes=1)
        shape = clip.shapes[0]
        if shape.texture != "solid" or len(clip.background) != 1:
            continue
        for f in range(12):
            if inside(clip, 0, f):
                x, y = weighted_centre(clip.frames[f], BACKGROUNDS[clip.background[0]], COLOURS[shape.colour])
                error = abs(x - clip.centres[0, f, 0]) if shape.kind == "stripe" else np.hypot(
                    x - clip.centres[0, f, 0], y - clip.centres[0, f, 1])  # fmt: skip
                assert error < 0.05, (seed, f, error)
                checked += 1
    assert checked > 60


def test_motions_move_as_named():
    for seed in range(30):
        clip = make_clip(seed, frames=40, motion="bounces", shapes=1)
        shape, track = clip.shapes[0], clip.centres[0]
        assert (track >= shape.size - 1e-9).all() and (track[:, 0] <= 32 - shape.size + 1e-9).all()
        steps = np.diff(track, axis=0)
        assert np.allclose(np.linalg.norm(steps, axis=1).max(), np.hypot(*shape.velocity), atol=1e-9)
        assert (np.sign(steps) != np.sign(steps[0])).any(), seed  # it bounced off an edge in 40 frames
    for seed in range(30):
        clip = make_clip(seed, motion="moves")
        direction = clip.caption.rsplit(" ", 1)[1]
        unit = np.array(DIRECTIONS[direction])
        for s, shape in enumerate(clip.shapes):
            step = clip.centres[s, 1] - clip.centres[s, 0]
            assert np.allclose(step, shape.velocity) and step @ unit >= 0
            assert np.allclose(np.diff(clip.centres[s], axis=0), step)  # constant velocity
    for seed in range(30):
        clip = make_clip(seed, motion="pan")
        direction = clip.caption.split("pans ")[1].split(" ")[0]
        # the camera pans one way: every shape (and the scene) moves the other way, together
        for s, shape in enumerate(clip.shapes):
            steps = np.diff(clip.centres[s], axis=0)
            expected = np.array(clip.pan) * ([1, 0] if shape.kind == "stripe" else [1, 1])  # a stripe spans y
            assert np.allclose(steps, expected)
        assert np.array(clip.pan) @ np.array(DIRECTIONS[direction]) < 0


def test_a_two_tone_background_pans_with_the_scene():
    clips = (make_clip(s, frames=10, motion="pan", shapes=1) for s in range(200))
    clip = next(c for c in clips if len(c.background) == 2 and c.pan[0] != 0 and c.shapes[0].kind != "stripe")
    row = 1 if clip.centres[0, 0, 1] > 16 else 30  # a row the shape does not cross
    left, right = (np.array(BACKGROUNDS[b], float) for b in clip.background)

    def boundaries(frame: np.ndarray) -> np.ndarray:
        """Where the row changes between the two colours, to a fraction of a pixel."""
        share = (frame[row] - left) @ (right - left) / ((right - left) @ (right - left))  # 0 left .. 1 right
        return np.flatnonzero(np.abs(np.diff(np.round(share))) > 0.5) + 1.0

    start = boundaries(clip.frames[0])
    assert len(start) >= 1
    for f in range(1, 10):
        moved = boundaries(clip.frames[f])
        expected = (start + f * clip.pan[0]) % 32
        for e in expected:
            if 1 < e < 31:
                assert np.min(np.abs(moved - e)) <= 1.0, (f, moved, expected)


def test_captions_name_the_shapes_colours_and_motion():
    for seed in range(30):
        clip = make_clip(seed)
        for shape in clip.shapes:
            assert shape.colour in clip.caption and shape.kind in clip.caption
        word = {"moves": "move", "bounces": "bounce", "pan": "pans"}[clip.motion]
        assert word in clip.caption


def test_a_recoloured_clip_changes_exactly_one_shape():
    clip = make_clip(3, shapes=2, motion="moves")
    target = next(c for c in COLOURS if c not in {s.colour for s in clip.shapes})
    edited = recoloured_clip(clip, 0, target)
    changed = np.any(edited != clip.frames, axis=-1)
    assert changed.any()
    for f in range(len(clip.frames)):
        if inside(clip, 0, f) and clip.shapes[0].texture == "solid":
            x, y = centroid(edited[f], target)
            assert np.hypot(x - clip.centres[0, f, 0], y - clip.centres[0, f, 1]) < 1.0
    # nothing but shape 0's pixels changed: where it covers nothing, the frames are equal
    for f in range(len(clip.frames)):
        covered = coverage(clip.shapes[0], tuple(clip.centres[0, f]), 32, 32) > 0
        assert not changed[f][~covered].any() and changed[f][covered].mean() > 0.5


def test_the_truth_survives_the_video_codec():
    """Written as H.264 and read back as a job reads it: centres within a pixel."""
    clip = make_clip(11, frames=12, motion="moves", shapes=1)
    decoded = read_video(io.BytesIO(encode_mp4(clip.frames, 8)), 12, 8, 32, 32).frames
    for f in range(12):
        if inside(clip, 0, f):
            x, y = centroid(decoded[f], clip.shapes[0].colour, tolerance=80)
            assert np.hypot(x - clip.centres[0, f, 0], y - clip.centres[0, f, 1]) < 1.0
