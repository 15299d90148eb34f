"""Two video decoders behind one interface: decord (the fast path) and PyAV (the fallback).

Both give the same thing for a file: its frame index (count, average fps, presentation timestamps) and
upright RGB uint8 frames by index, in presentation order. They agree frame for frame where both work
(tests/test_decoders.py measures it):

- Colour: PyAV's default swscale conversion to rgb24 (bilinear flags, the frame's own colour matrix and
  range, BT.709 and full range included) gives what decord's `scale` filter gives, measured: both take
  swscale's unscaled YUV -> RGB path for 8-bit 4:2:0 with an even height, 4:2:2 and 4:4:4, so those
  frames are bit-identical. Where swscale falls back to its general scaler (4:2:0 with an odd height,
  more than 8 bits per sample), decord's FFmpeg 4.1 and PyAV's FFmpeg interpolate chroma differently:
  up to 5 levels on smooth content (tests/test_decoders.py), up to 75 at a saturated colour edge.
- Rotation: frames come upright, as a player shows them. decord (FFmpeg 4.1) applies an MP4 / MOV
  display matrix or `rotate` tag by multiples of 90 degrees and ignores other angles and any rotation
  stored in Matroska / WebM, which its FFmpeg does not read; the PyAV path does exactly the same.
- Time: both index frames from the stream's packets (timestamp = (pts - stream start) x time base,
  sorted), so they see the same count and timestamps, and `frame_indices` turns them into the source
  frame on screen at each output time.

decord 0.6 fails on some valid files: frames 1 to 4, 6, 8, 12, 16, 24, 48 or 72 px wide (upright), where
FFmpeg pads the rgb24 rows to a multiple of the width and decord takes them for compact rows ("Check
failed: from_size == to_size"). `video_io.read_video` falls back to PyAV then.
"""

from __future__ import annotations

import math
from typing import BinaryIO, Literal, Protocol

import numpy as np

Decoder = Literal["auto", "decord", "pyav"]
DECODERS: tuple[str, ...] = ("decord", "pyav")  # the order "auto" tries them in

# Timestamps are taken as exact to 1 ms: Matroska / WebM store milliseconds, and decord hands them over as
# float32. A file whose timestamps all lie within this of the grid i / average fps is constant-rate.
TIME_TOLERANCE = 1e-3


class VideoFile(Protocol):
    """An opened video file: its frame index, and its frames by index."""

    decoder: str  # "decord" or "pyav"
    num_frames: int
    fps: float  # the stream's average frame rate (0 or NaN when the file has none)
    timestamps: np.ndarray | None  # [num_frames] presentation times in seconds, or None when unusable

    def frames(self, indices: list[int]) -> np.ndarray:
        """Upright RGB uint8 frames [len(indices), H, W, 3]."""
        ...


def open_video(source: str | BinaryIO, decoder: str) -> VideoFile:
    """Open with one decoder ("decord" or "pyav"); raises whatever that decoder raises."""
    return {"decord": DecordVideo, "pyav": PyAVVideo}[decoder](source)


def sample_indices(num_source: int, source_fps: float, fps: float, frames: int) -> list[int]:
    """Source frame indices for `frames` output frames at `fps` from a constant-rate source (sample-and-hold)."""
    return [math.floor(k * source_fps / fps + 1e-6) for k in range(frames)]


def frame_indices(timestamps: np.ndarray | None, source_fps: float, fps: float, frames: int) -> list[int]:
    """The source frame on screen at each output time k / fps; an index >= len(timestamps) is past the end.

    A constant-rate file (or one without usable timestamps) gets the index arithmetic of `sample_indices`,
    exactly as before timestamps were read; a variable-rate file is resampled by its timestamps, the last
    frame being held for 1 / average fps."""
    if timestamps is None or is_constant_rate(timestamps, source_fps):
        return sample_indices(0 if timestamps is None else len(timestamps), source_fps, fps, frames)
    starts = timestamps - timestamps[0]
    end = starts[-1] + 1 / source_fps
    indices = []
    for k in range(frames):
        if k / fps >= end - 1e-6:
            indices.append(len(starts))  # past the end: the caller says the file is too short
        else:  # the last frame that has started by k / fps
            indices.append(int(np.searchsorted(starts, k / fps + TIME_TOLERANCE, side="right")) - 1)
    return indices


def is_constant_rate(timestamps: np.ndarray, source_fps: float) -> bool:
    grid = np.arange(len(timestamps)) / source_fps
    return bool(np.all(np.abs(timestamps - timestamps[0] - grid) <= TIME_TOLERANCE))


def clip_seconds(timestamps: np.ndarray | None, num_frames: int, source_fps: float) -> float:
    """How long the source plays: its last frame's start plus 1 / average fps."""
    if timestamps is None or not len(timestamps) or is_constant_rate(timestamps, source_fps):
        return num_frames / source_fps
    return float(timestamps[-1] - timestamps[0]) + 1 / source_fps


def _usable(timestamps: np.ndarray) -> np.ndarray | None:
    """Timestamps if every frame has one and they increase; packets without pts make them meaningless."""
    ok = len(timestamps) and np.all(np.isfinite(timestamps)) and np.all(np.abs(timestamps) < 1e9)
    return timestamps if ok and np.all(np.diff(timestamps) > 0) else None


class DecordVideo:
    """decord's VideoReader on one thread: it indexes the packets when it opens the file."""

    decoder = "decord"

    def __init__(self, source: str | BinaryIO) -> None:
        import decord

        self._reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1)
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps())
        starts = self._reader.get_frame_timestamp(list(range(self.num_frames)))[:, 0] if self.num_frames else []
        self.timestamps = _usable(np.asarray(starts, np.float64))

    def frames(self, indices: list[int]) -> np.ndarray:
        return self._reader.get_batch(indices).asnumpy()


class PyAVVideo:
    """PyAV: one pass over the best video stream's packets indexes the file; frames() decodes from the start
    up to the last frame asked for (a second pass: no packet is held in memory between the two)."""

    decoder = "pyav"

    def __init__(self, source: str | BinaryIO) -> None:
        self._source = source
        with self._open() as container:
            stream = container.streams.best("video")
            if stream is None:
                raise ValueError("no video stream")
            # decord rotates only what FFmpeg 4.1 reports: display matrices in the MP4 / MOV family
            self._rotates = "mov" in container.format.name.split(",")
            self.fps = float(stream.average_rate) if stream.average_rate else 0.0
            pts = [p.pts for p in container.demux(stream) if p.size]  # the last, empty packet only flushes
            self.num_frames = len(pts)
            if None in pts:
                self.timestamps = None
            else:
                start = stream.start_time or 0
                seconds = [float((t - start) * stream.time_base) for t in sorted(pts)]
                # float32, as decord hands them over: the same file gives the same numbers to both decoders
                self.timestamps = _usable(np.array(seconds, np.float32).astype(np.float64))

    def _open(self):
        import av

        if hasattr(self._source, "seek"):
            self._source.seek(0)
        return av.open(self._source, mode="r")

    def frames(self, indices: list[int]) -> np.ndarray:
        wanted, last = set(indices), max(indices)
        got: dict[int, np.ndarray] = {}
        position = 0  # frames come out of the decoder in presentation order
        with self._open() as container:
            stream = container.streams.best("video")
            stream.codec_context.thread_count = 1
            for packet in container.demux(stream):
                for frame in packet.decode():
                    if position in wanted:
                        got[position] = self._upright_rgb(frame)
                    position += 1
                if position > last:
                    break
        if position <= last:
            raise ValueError(f"only {position} of {self.num_frames} frames decode")
        return np.stack([got[i] for i in indices])

    def _upright_rgb(self, frame) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24")  # swscale, bilinear flags, the frame's colour matrix and range
        rotation = frame.rotation if self._rotates else 0  # degrees counter-clockwise, as a player turns it
        if rotation % 90:
            return rgb  # decord leaves angles that are not multiples of 90 degrees alone
        return np.ascontiguousarray(np.rot90(rgb, (rotation // 90) % 4))


def decoders_to_try(decoder: str) -> tuple[str, ...]:
    """The decoders a `decoder` setting tries, in order."""
    if decoder == "auto":
        return DECODERS
    if decoder in DECODERS:
        return (decoder,)
    raise ValueError(f"unknown video decoder {decoder!r}; use one of auto, {', '.join(DECODERS)}")
