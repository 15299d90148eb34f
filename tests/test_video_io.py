"""Real video files in (decord) and out (PyAV), frame folders, atomic writes."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from anyv2v_batch import AnyV2VError
from anyv2v_batch.video_io import (
    encode_mp4,
    read_frame_folder,
    read_image,
    read_source,
    read_video,
    sample_indices,
    write_video,
)


def numbered_clip(n: int, width: int = 64, height: int = 48) -> np.ndarray:
    """Frame k has mean brightness about 8 k + 40: which frame was read is visible after lossy coding."""
    yy, xx = np.mgrid[0:height, 0:width]
    texture = (xx + yy) % 16
    return np.stack([np.repeat((40 + 8 * k + texture)[..., None], 3, -1) for k in range(n)]).astype(np.uint8)


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_sample_and_hold_indices():
    assert sample_indices(100, 30.0, 8.0, 6) == [0, 3, 7, 11, 15, 18]
    assert sample_indices(100, 24.0, 8.0, 4) == [0, 3, 6, 9]
    assert sample_indices(100, 8.0, 8.0, 3) == [0, 1, 2]
    assert sample_indices(100, 4.0, 8.0, 4) == [0, 0, 1, 1]  # upsampling holds frames


def test_mp4_round_trip_resamples_in_time(tmp_path):
    clip = numbered_clip(30)
    path = tmp_path / "src.mp4"
    write_video(path, clip, 24)
    got = read_video(path, frames=6, fps=8, width=64, height=48)
    assert got.frames.shape == (6, 48, 64, 3) and got.frames.dtype == np.uint8
    assert got.source_fps == pytest.approx(24) and got.source_frames == 30
    expected = clip[[0, 3, 6, 9, 12, 15]].astype(float)
    assert np.abs(got.frames.mean(axis=(1, 2, 3)) - expected.mean(axis=(1, 2, 3))).max() < 2.0
    assert np.abs(got.frames.astype(float) - expected).mean() < 3.0  # H.264 at crf 18 is near-lossless


def test_mp4_is_h264_yuv420p_and_deterministic(tmp_path):
    import av

    clip = numbered_clip(8)
    # the same bytes every time in one process (x264's mb-tree rate control would not give them), and
    # whatever the input buffer's alignment
    shifted = np.zeros(clip.size + 3, np.uint8)[3:].reshape(clip.shape)
    shifted[:] = clip
    assert len({encode_mp4(c, 8) for c in [clip] * 8 + [shifted] * 2}) == 1
    path = tmp_path / "out.mp4"
    write_video(path, clip, 8)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 8 and stream.frames == 8


def test_output_files_get_normal_permissions_and_no_temporaries(tmp_path):
    write_video(tmp_path / "a.mp4", numbered_clip(4), 8)
    write_video(tmp_path / "frames", numbered_clip(4), 8)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.mp4").stat().st_mode) == 0o666 & ~mask
    assert leftovers(tmp_path) == []


def test_png_folder_is_lossless_and_replaced_whole(tmp_path):
    clip = numbered_clip(5)
    out = tmp_path / "frames"
    write_video(out, clip, 8)
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(5)]
    assert np.array_equal(read_frame_folder(out, 5, 8, 64, 48).frames, clip)
    write_video(out, clip[:2], 8)  # an overwrite replaces the folder, no stale frames stay
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png"]
    assert leftovers(tmp_path) == []


def test_a_failed_write_leaves_nothing(tmp_path):
    odd = np.zeros((3, 33, 33, 3), np.uint8)  # yuv420p cannot hold odd sizes
    with pytest.raises(AnyV2VError, match="even width and height"):
        write_video(tmp_path / "bad.mp4", odd, 8)
    # a folder write that fails on its third frame: the two frames already written disappear with it
    frames = [np.zeros((8, 8, 3), np.uint8)] * 2 + [np.zeros((8, 8, 3), np.complex64)]
    with pytest.raises(TypeError):
        write_video(tmp_path / "frames", frames, 8)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"", "empty"), (b"\x00\x01garbage" * 200, "cannot decode")],
    ids=["missing", "empty", "garbage"],
)
def test_bad_video_files_get_one_line_errors(tmp_path, content, message):
    path = tmp_path / "v.mp4"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AnyV2VError, match=message) as err:
        read_video(path, 4, 8, 64, 48)
    assert "\n" not in str(err.value)


def test_truncated_video_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "cut.mp4"
    data = encode_mp4(numbered_clip(30), 24)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AnyV2VError):
        read_video(path, 16, 8, 64, 48)


def test_too_short_video_says_how_long_it_is(tmp_path):
    path = tmp_path / "short.mp4"
    write_video(path, numbered_clip(10), 24)
    with pytest.raises(AnyV2VError, match=r"too short: 10 frames at 24 fps.*needs 1\.92 s"):
        read_video(path, 16, 8, 64, 48)


def test_frame_folder_takes_images_in_name_order(tmp_path):
    from PIL import Image

    clip = numbered_clip(4)
    for i, f in enumerate(clip):
        Image.fromarray(f).save(tmp_path / f"f{i:03d}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    got = read_source(tmp_path, 3, 12, 64, 48)
    assert np.array_equal(got.frames, clip[:3]) and got.fps == 12 and got.source_fps is None
    with pytest.raises(AnyV2VError, match="holds 4 images, fewer than --frames 5"):
        read_source(tmp_path, 5, 8, 64, 48)


def test_sources_are_fitted_to_the_clip_size(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, numbered_clip(8, 96, 48), 8)
    for mode in ("stretch", "crop", "pad"):
        assert read_video(path, 4, 8, 32, 32, mode).frames.shape == (4, 32, 32, 3)


def test_bad_images(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("not an image")
    with pytest.raises(AnyV2VError, match="cannot read image"):
        read_image(bad)
    with pytest.raises(AnyV2VError, match="does not exist"):
        read_image(tmp_path / "none.png")
