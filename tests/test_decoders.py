"""Both video decoders on a matrix of real files (encoded here with PyAV): sizes decord 0.6 fails on, 4:4:4,
odd sizes, VP9 in WebM, phone rotation, variable frame rate. Every file decodes through `read_video` to the
same frames whichever decoder reads it, close to the frames that were encoded, at the right times.

`python tests/test_decoders.py` prints the matrix: which decoder `auto` used and the differences."""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pytest

from anyv2v_batch import AnyV2VError
from anyv2v_batch.video_decode import TIME_TOLERANCE, frame_indices, open_video, sample_indices
from anyv2v_batch.video_io import read_video


def marked_clip(n: int, width: int, height: int) -> np.ndarray:
    """Smooth colour ramps, not symmetric (a wrong rotation or flip shows), frame k's blue level 40 + 12 k (which
    frame was read shows after lossy coding)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 30 + 190 * xx / max(width - 1, 1)
    green = 200 - 150 * yy / max(height - 1, 1)
    frames = [np.stack([red, green, np.full_like(xx, 40 + 12 * k)], -1) for k in range(n)]
    return np.round(np.stack(frames)).astype(np.uint8)


def frame_numbers(frames: np.ndarray) -> list[int]:
    """Which marked frame each decoded frame is."""
    return [round((float(f[..., 2].mean()) - 40) / 12) for f in frames]


def encode(
    frames: np.ndarray,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    container: str = "mp4",
    fps: float = 8,
    pts_ms: list[int] | None = None,
    rotation: int | None = None,
    colour: str | None = None,
) -> bytes:
    """A real video file; `pts_ms` gives variable-rate timestamps in milliseconds, `rotation` a display matrix
    turning the picture counter-clockwise (a phone held upright records -90), `colour` "bt709" or "full"
    (BT.601, full range) converts and tags the frames that way instead of BT.601 limited range."""
    import av
    from av.video.reformatter import ColorRange, Colorspace

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        rate = Fraction(fps).limit_denominator(1001)
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "8"} if codec == "libx264" else {"crf": "8", "b": "0"}
        time_base = Fraction(1, 1000) if pts_ms else 1 / rate
        stream.codec_context.time_base = time_base
        if rotation is not None:
            stream.set_display_rotation(rotation)
        matrix, full = (Colorspace.ITU709, False) if colour == "bt709" else (Colorspace.ITU601, colour == "full")
        if colour:
            stream.codec_context.colorspace = 1 if colour == "bt709" else 6  # AVCOL_SPC_BT709 / SMPTE170M
            stream.codec_context.color_range = ColorRange.JPEG if full else ColorRange.MPEG
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(
                format=pix_fmt, dst_colorspace=matrix, dst_color_range=ColorRange.JPEG if full else ColorRange.MPEG
            )
            video_frame.pts, video_frame.time_base = (pts_ms[i] if pts_ms else i), time_base
            for packet in stream.encode(video_frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buffer.getvalue()


VFR_PTS_MS = [0, 40, 80, 200, 240, 500, 540, 580, 900, 1000, 1040, 1300]


@dataclass(frozen=True)
class Case:
    """One file kind: how it is made, which decoder `auto` must end up with, and the bounds that hold."""

    id: str
    width: int
    height: int
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    container: str = "mp4"
    rotation: int | None = None
    pts_ms: tuple[int, ...] | None = None
    colour: str | None = None
    auto: str = "decord"  # the decoder that reads it in auto mode
    between: int = 0  # max abs difference decord vs PyAV (0: bit-identical)
    to_encoded: float = 6.0  # mean abs difference to the encoded frames
    to_encoded_max: int = 24

    def file(self) -> bytes:
        pts = list(self.pts_ms) if self.pts_ms else None
        frames = marked_clip(len(pts) if pts else 10, self.width, self.height)
        return encode(frames, self.codec, self.pix_fmt, self.container, 8, pts, self.rotation, self.colour)

    def expected(self, indices: list[int]) -> np.ndarray:
        """The encoded frames at `indices`, as a player shows them (turned upright)."""
        frames = marked_clip(max(indices) + 1, self.width, self.height)[indices]
        return np.rot90(frames, (self.rotation or 0) // 90 % 4, axes=(1, 2))


H264_420 = [Case(f"h264-yuv420p-{w}x32", w, 32, auto="pyav") for w in (16, 24, 48, 72)]  # decord 0.6 fails
CASES = [
    *H264_420,
    Case("h264-yuv420p-96x64", 96, 64),
    Case("h264-yuv444p-64x48", 64, 48, pix_fmt="yuv444p"),
    Case("h264-yuv444p-45x33", 45, 33, pix_fmt="yuv444p"),
    Case("h264-yuv444p-24x33", 24, 33, pix_fmt="yuv444p", auto="pyav"),
    Case("h264-yuv420p-bt709-64x48", 64, 48, colour="bt709"),
    Case("h264-yuv420p-full-range-64x48", 64, 48, colour="full"),
    Case("h264-yuv420p-bt709-24x32", 24, 32, colour="bt709", auto="pyav"),
    Case("vp9-yuv420p-64x48-webm", 64, 48, codec="libvpx-vp9", container="webm"),
    # 4:2:0 with an odd height: swscale's general scaler, whose chroma interpolation changed after FFmpeg 4.1
    Case("vp9-yuv420p-45x33-webm", 45, 33, codec="libvpx-vp9", container="webm", between=8),
    Case("h264-yuv420p10le-64x48", 64, 48, pix_fmt="yuv420p10le", between=8),  # general scaler too
    Case("vp9-yuv444p-64x48-webm", 64, 48, codec="libvpx-vp9", pix_fmt="yuv444p", container="webm"),
    Case("h264-rotated-64x40", 64, 40, rotation=-90),  # a phone held upright; upright it is 40 wide
    Case("h264-rotated-64x48", 64, 48, rotation=90, auto="pyav"),  # upright 48 wide: decord fails
    Case("h264-rotated-180-64x40", 64, 40, rotation=180),
    Case("h264-vfr-64x48", 64, 48, pts_ms=tuple(VFR_PTS_MS)),
    Case("vp9-vfr-64x48-webm", 64, 48, codec="libvpx-vp9", container="webm", pts_ms=tuple(VFR_PTS_MS)),
]

FRAMES, FPS = 6, 8  # 0.625 s of output from every file (the VFR ones are resampled to 10 fps, below)


def read_both(case: Case, path) -> dict[str, np.ndarray | str]:
    """The raw (unfitted) frames each decoder gives, or its one-line error."""
    out: dict[str, np.ndarray | str] = {}
    for decoder in ("decord", "pyav"):
        try:
            video = open_video(str(path), decoder)
            indices = frame_indices(video.timestamps, video.fps, FPS, FRAMES)
            out[decoder] = video.frames(indices)
        except Exception as e:  # noqa: BLE001 - recorded, the test says which must work
            out[decoder] = str(e).splitlines()[0] if str(e) else type(e).__name__
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_file_kind_decodes_to_the_same_frames_with_either_decoder(tmp_path, case: Case):
    path = tmp_path / f"v.{case.container}"
    path.write_bytes(case.file())
    height, width = (case.width, case.height) if (case.rotation or 0) % 180 else (case.height, case.width)
    if case.colour:  # the file really is tagged so (else this case would test BT.601 limited range again)
        import av

        with av.open(str(path)) as container:
            frame = next(container.decode(video=0))
            assert (frame.colorspace, frame.color_range) == ((1, 1) if case.colour == "bt709" else (6, 2))
    clip = read_video(path, FRAMES, FPS, width, height)  # at its own size, so fitting changes nothing
    assert clip.decoder == case.auto
    if case.pts_ms:
        # sample-and-hold by timestamps: output time k / 8 shows the last frame that started by then
        times = np.array(case.pts_ms) / 1000
        indices = [int(np.searchsorted(times, k / FPS + 1e-9, "right")) - 1 for k in range(FRAMES)]
    else:
        indices = sample_indices(10, 8, FPS, FRAMES)
    assert frame_numbers(clip.frames) == indices
    expected = case.expected(indices).astype(int)
    assert clip.frames.shape == expected.shape
    error = np.abs(clip.frames.astype(int) - expected)
    assert error.mean() < case.to_encoded and error.max() <= case.to_encoded_max

    both = read_both(case, path)
    assert isinstance(both["pyav"], np.ndarray), both["pyav"]
    assert np.array_equal(both["pyav"], clip.frames) or case.auto == "decord"
    if case.auto == "pyav":  # decord cannot read it: the reason the fallback exists
        assert isinstance(both["decord"], str)
        with pytest.raises(AnyV2VError, match="cannot decode .*frames are corrupt .*decord: .*from_size == to_size"):
            read_video(path, FRAMES, FPS, width, height, decoder="decord")
    else:
        assert np.array_equal(both["decord"], clip.frames)
        between = np.abs(both["decord"].astype(int) - both["pyav"].astype(int)).max()
        assert between <= case.between
        forced = read_video(path, FRAMES, FPS, width, height, decoder="pyav")  # the public function, forced
        assert forced.decoder == "pyav" and np.abs(forced.frames.astype(int) - clip.frames).max() <= case.between
        assert forced.source_fps == clip.source_fps
        assert forced.source_frames == clip.source_frames and forced.source_size == clip.source_size


@pytest.mark.parametrize("pix_fmt", ["yuv420p", "yuv444p"])
def test_decoders_agree_bit_for_bit_at_the_widths_around_those_decord_fails_on(tmp_path, pix_fmt):
    """PyAV's conversion has nothing width-specific: next to each width decord 0.6 cannot read, both agree."""
    for width in (10, 14, 18, 20, 22, 26, 28, 46, 50, 70, 74):
        path = tmp_path / f"{width}.mp4"
        path.write_bytes(encode(marked_clip(3, width, 32), pix_fmt=pix_fmt))
        frames = [read_video(path, 3, 8, width, 32, decoder=d).frames for d in ("decord", "pyav")]
        assert np.array_equal(*frames), width


def test_rotation_stored_in_webm_is_ignored_by_both_decoders(tmp_path):
    """decord's FFmpeg 4.1 does not read a Matroska / WebM rotation; the PyAV path leaves it alone too."""
    source = marked_clip(10, 64, 40)
    path = tmp_path / "turned.webm"
    path.write_bytes(encode(source, "libvpx-vp9", container="webm", rotation=90))
    import av

    with av.open(str(path)) as container:  # the rotation is in the file, PyAV's FFmpeg sees it
        assert next(container.decode(video=0)).rotation == 90
    frames = {d: read_video(path, FRAMES, FPS, 64, 40, decoder=d).frames for d in ("decord", "pyav")}
    assert np.array_equal(frames["decord"], frames["pyav"]) and frames["pyav"].shape == (FRAMES, 40, 64, 3)
    assert np.abs(frames["pyav"].astype(int) - source[:FRAMES]).mean() < 6


def test_odd_height_yuv420p_differs_between_decoders_by_a_few_levels_only(tmp_path):
    """The one place the decoders are not bit-identical, measured: it is chroma interpolation, not a shift."""
    case = next(c for c in CASES if c.id == "vp9-yuv420p-45x33-webm")
    path = tmp_path / "v.webm"
    path.write_bytes(case.file())
    both = read_both(case, path)
    diff = np.abs(both["decord"].astype(int) - both["pyav"].astype(int))
    assert 0 < diff.max() <= case.between and diff.mean() < 2.5
    assert frame_numbers(both["decord"]) == frame_numbers(both["pyav"])


def test_constant_rate_files_keep_the_average_fps_indices():
    """Timestamps on a constant-rate grid, exact (MP4) or rounded to milliseconds (WebM), give exactly the old
    index arithmetic for any pair of rates."""
    for source_fps in (24, 25, 30, 30000 / 1001, 60, 12.5):
        exact = np.arange(300) / source_fps
        for timestamps in (exact, np.round(exact, 3), np.floor(exact * 1000) / 1000):
            for fps in (8, 10, 7.5, 24, 29.97, 60):
                frames = int(299 * fps / source_fps)
                old = sample_indices(300, source_fps, fps, frames)
                assert frame_indices(timestamps, source_fps, fps, frames) == old


def test_variable_rate_files_resample_by_timestamps():
    times = np.array(VFR_PTS_MS) / 1000
    # at 10 fps: 0.2 s is exactly frame 3's start; 0.6 s to 0.8 s hold frame 7 through the gap
    assert frame_indices(times, 9.2, 10, 14) == [0, 2, 3, 4, 4, 5, 7, 7, 7, 8, 9, 10, 10, 11]
    # average-fps arithmetic would have said [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, ...]
    # past the end (last start + 1 / average fps = 1.4087 s): an index beyond the last frame
    assert frame_indices(times, 9.2, 10, 16)[-2:] == [11, 12]
    assert frame_indices(times + 5.0, 9.2, 10, 3) == [0, 2, 3]  # a stream that does not start at 0
    # a timestamp a rounding step late still counts as on screen at its nominal time
    assert frame_indices(np.array([0, 0.1 + TIME_TOLERANCE / 2, 0.5]), 3, 10, 2) == [0, 1]


def test_variable_rate_too_short_is_measured_in_time(tmp_path):
    path = tmp_path / "vfr.mp4"
    path.write_bytes(encode(marked_clip(12, 64, 48), pts_ms=VFR_PTS_MS))
    for decoder in ("decord", "pyav"):
        with pytest.raises(AnyV2VError, match=r"too short: 12 frames at 9\.\d+ fps \(1\.40 s\)") as err:
            read_video(path, 16, 10, 64, 48, decoder=decoder)
        assert "\n" not in str(err.value)
        assert read_video(path, 14, 10, 64, 48, decoder=decoder).frames.shape == (14, 48, 64, 3)


@pytest.mark.parametrize("decoder", ["auto", "decord", "pyav"])
def test_unreadable_files_keep_their_one_line_errors_with_every_decoder(tmp_path, decoder):
    garbage, short, cut = tmp_path / "g.mp4", tmp_path / "s.mp4", tmp_path / "c.mp4"
    garbage.write_bytes(b"\x00\x01garbage" * 200)
    short.write_bytes(encode(marked_clip(10, 64, 48), fps=24))
    data = encode(marked_clip(10, 64, 48))
    cut.write_bytes(data[: len(data) // 2])
    (tmp_path / "e.mp4").write_bytes(b"")
    expected = {
        garbage: "cannot decode .*not a readable video",
        short: r"too short: 10 frames at 24 fps \(0\.42 s\).*needs 0\.67 s",
        cut: "cannot decode",
        tmp_path / "e.mp4": "empty",
        tmp_path / "none.mp4": "does not exist",
    }
    for path, message in expected.items():
        with pytest.raises(AnyV2VError, match=message) as err:
            read_video(path, 6, 8, 64, 48, decoder=decoder)
        assert "\n" not in str(err.value)
    with pytest.raises(AnyV2VError, match="not a readable video") as err:
        read_video(io.BytesIO(b"\x00\x01garbage" * 200), 6, 8, 64, 48, decoder=decoder)
    if decoder == "auto":  # both were tried, both reasons are given
        assert "decord: " in str(err.value) and "; pyav: " in str(err.value)
        with pytest.raises(ValueError, match="unknown video decoder 'ffmpeg'"):
            read_video(short, 6, 8, 64, 48, decoder="ffmpeg")


def test_a_job_decodes_a_sample_decord_cannot_read():
    from anyv2v_batch.job import EditorSpec
    from anyv2v_batch.operators.decode import decode_clip
    from anyv2v_batch.operators.work import ClipWork, VariantWork
    from anyv2v_batch.settings import ClipSettings, EditSettings, InversionSettings

    source = marked_clip(10, 24, 32)
    work = ClipWork(
        shard="s.tar",
        shard_id="s",
        key="narrow",
        meta={},
        files={},
        video=encode(source),
        video_ext="mp4",
        clip=ClipSettings(frames=4, fps=8, width=24, height=32),
        inversion_settings=InversionSettings(),
        variants=[VariantWork("v", EditSettings(), EditorSpec())],
    )
    work = next(decode_clip({"work": work}))["work"]
    assert work.error == ""
    assert work.frames.shape == (4, 32, 24, 3) and frame_numbers(work.frames) == [0, 1, 2, 3]
    assert np.abs(work.frames.astype(int) - source[:4]).mean() < 6
    assert work.source["decoder"] == "pyav" and work.source["frames"] == 10 and work.source["fps"] == 8


def decoder_matrix(tmp) -> list[str]:
    """Per file kind: the decoder `auto` used, max |decord - PyAV|, max and mean |decoded - encoded|."""
    rows = [
        "| file | auto reads with | decord | max abs decord vs PyAV | max / mean abs to encoded |",
        "|---|---|---|---|---|",
    ]
    for case in CASES:
        path = tmp / f"{case.id}.{case.container}"
        path.write_bytes(case.file())
        both = read_both(case, path)
        clip = read_video(path, FRAMES, FPS, *both["pyav"].shape[2:0:-1])
        indices = [int(n) for n in frame_numbers(clip.frames)]
        error = np.abs(clip.frames.astype(int) - case.expected(indices).astype(int))
        ok = isinstance(both["decord"], np.ndarray)
        between = np.abs(both["decord"].astype(int) - both["pyav"].astype(int)).max() if ok else "-"
        status = "reads" if ok else f"fails ({both['decord'].split('Check failed: ')[-1][:60]})"
        rows.append(f"| {case.id} | {clip.decoder} | {status} | {between} | {error.max()} / {error.mean():.2f} |")
    return rows


if __name__ == "__main__":
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        print("\n".join(decoder_matrix(Path(tmp))))
