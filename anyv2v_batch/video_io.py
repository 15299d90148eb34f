"""Video in (decord, PyAV when decord fails) and out (PyAV), frame folders, images; every write is atomic.

A clip is a numpy uint8 array [F, H, W, 3]. Reading resamples in time to the requested fps
(sample-and-hold: output frame k shows the source frame on screen at time k / fps), keeps the first
`frames` frames and fits them to width x height. Writing goes to a temporary name beside the target
and is renamed into place, so a target is either complete or absent.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import AnyV2VError, first_line
from .imaging import ResizeMode, fit_frame
from .video_decode import Decoder, VideoFile, clip_seconds, decoders_to_try, frame_indices, open_video
from .video_decode import sample_indices as sample_indices  # re-exported: callers and tests use it from here


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; done once, at import
    os.umask(mask)
    return mask


# mkstemp / mkdtemp create private files; finished outputs get the permissions a plain open() would
FILE_MODE = 0o666 & ~_umask()
DIR_MODE = 0o777 & ~_umask()

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DECODE_CHUNK = 4  # frames decord decodes per call


@dataclass
class Clip:
    frames: np.ndarray  # [F, H, W, 3] uint8
    fps: float  # the rate the frames are meant to play at (the fps condition)
    source_fps: float | None = None  # the file's own rate (None for frame folders)
    source_size: tuple[int, int] | None = None  # (width, height) before fitting
    source_frames: int | None = None  # frame count of the source
    decoder: str | None = None  # which decoder read the video ("decord" or "pyav"; None for frame folders)


def read_video(
    source: str | os.PathLike | BinaryIO,
    frames: int,
    fps: float,
    width: int,
    height: int,
    resize: ResizeMode = "stretch",
    name: str | None = None,
    decoder: Decoder = "auto",
    start: int = 0,
) -> Clip:
    """Decode a video file (a path or a binary file object) into a clip: output frames [start, start +
    frames) at `fps` (only those frames are decoded: a window of a long source never holds the rest).

    `decoder="auto"` reads with decord and falls back to PyAV when decord cannot open the file or decode
    its frames; "decord" or "pyav" uses that one only. Either gives the same frames (see video_decode)."""
    label = name or str(source if not hasattr(source, "read") else getattr(source, "name", "video"))
    tried = decoders_to_try(decoder)
    if hasattr(source, "read"):
        data = source.read()

        def opened_source() -> str | BinaryIO:
            return io.BytesIO(data)  # each decoder reads its own stream of the bytes

    else:
        path = Path(source)
        if not path.exists():
            raise AnyV2VError(f"source video {label!r} does not exist")
        data = b"" if path.stat().st_size == 0 else None

        def opened_source() -> str | BinaryIO:
            return str(path)

    if data == b"":
        raise AnyV2VError(f"source video {label!r} is empty (0 bytes)")
    failures: list[str] = []
    opened = False
    for which in tried:
        try:
            video = open_video(opened_source(), which)
        except Exception as e:  # decord raises bare DECORDError / RuntimeError / AssertionError, PyAV av.FFmpegError
            failures.append(f"{which}: {first_line(e, 160)}")
            continue
        opened = True
        # the file itself, not the decoder: no fallback
        indices = _indices_or_refuse(video, start + frames, fps, label)[start:]
        # decord seeks: a few frames at a time, each fitted at once, so that a window of a long, large source
        # never sits in memory at the source size (PyAV decodes from the start: all in one pass)
        step = DECODE_CHUNK if video.decoder == "decord" else max(1, len(indices))
        fitted, src_w, src_h = [], 0, 0
        try:
            for i in range(0, len(indices), step):
                raw = video.frames(indices[i : i + step])
                src_h, src_w = raw.shape[1:3]
                fitted.extend(fit_frame(f, width, height, resize) for f in raw)
                del raw
        except Exception as e:
            failures.append(f"{which}: {first_line(e, 160)}")
            continue
        return Clip(np.stack(fitted), fps, video.fps, (src_w, src_h), video.num_frames, video.decoder)
    problem = "frames are corrupt" if opened else "not a readable video"
    raise AnyV2VError(f"cannot decode {label!r}: {problem} ({'; '.join(failures)})")


@dataclass
class VideoLength:
    frames: int  # output frames at the asked fps the source fills (at most the limit asked for)
    seconds: float  # how long the source plays
    source_frames: int
    source_fps: float


def video_length(source: bytes, fps: float, limit: int, name: str = "video") -> VideoLength:
    """How many frames at `fps` a video file fills, counted from its frame index alone (no frame is
    decoded), up to `limit`; with the same decoders as `read_video`."""
    if not source:
        raise AnyV2VError(f"source video {name!r} is empty (0 bytes)")
    failures: list[str] = []
    for which in decoders_to_try("auto"):
        try:
            video = open_video(io.BytesIO(source), which)
        except Exception as e:  # noqa: BLE001 - decord raises bare errors; PyAV av.FFmpegError
            failures.append(f"{which}: {first_line(e, 160)}")
            continue
        if not video.fps > 0:
            raise AnyV2VError(f"{name!r} has no frame rate; re-encode it (e.g. ffmpeg -r 24) and try again")
        indices = frame_indices(video.timestamps, video.fps, fps, limit)
        count = next((k for k, i in enumerate(indices) if i >= video.num_frames), len(indices))
        seconds = clip_seconds(video.timestamps, video.num_frames, video.fps)
        return VideoLength(count, seconds, video.num_frames, float(video.fps))
    raise AnyV2VError(f"cannot decode {name!r}: not a readable video ({'; '.join(failures)})")


def _indices_or_refuse(video: VideoFile, frames: int, fps: float, label: str) -> list[int]:
    """The source frames to decode, or the one-line error of a file without a frame rate or too short."""
    source_fps = video.fps
    if not source_fps > 0:
        raise AnyV2VError(f"{label!r} has no frame rate; re-encode it (e.g. ffmpeg -r 24) and try again")
    indices = frame_indices(video.timestamps, source_fps, fps, frames)
    if not video.num_frames or indices[-1] >= video.num_frames:
        have = clip_seconds(video.timestamps, video.num_frames, source_fps)
        need = (frames - 1) / fps + 1 / source_fps
        raise AnyV2VError(
            f"{label!r} is too short: {video.num_frames} frames at {source_fps:g} fps ({have:.2f} s), but --frames "
            f"{frames} at --fps {fps:g} needs {need:.2f} s; use fewer --frames or a lower --fps"
        )
    return indices


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 goes to /dev/null for the block (what C++ libraries print, not Python)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@dataclass
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open a video file and decode its first frame: a quick check that `read_video` can read it (with
    the same decoders: decord, else PyAV).

    Raises AnyV2VError whose message is only the reason (the caller names the file)."""
    import decord

    path = Path(path)
    if path.stat().st_size == 0:
        raise AnyV2VError("empty (0 bytes)")
    decord.logging.set_level(decord.logging.QUIET)  # FFmpeg's own lines would break one-line reports
    failures: list[str] = []
    for which in decoders_to_try("auto"):
        try:
            with _native_stderr_silenced():  # decord's C++ logs the error it then raises
                video = open_video(str(path), which)
                count, fps = video.num_frames, float(video.fps)
                if count < 1:
                    raise AnyV2VError("no frames")
                if not fps > 0:
                    raise AnyV2VError("no frame rate; re-encode it (e.g. ffmpeg -r 24)")
                height, width = video.frames([0])[0].shape[:2]
        except AnyV2VError:
            raise
        except Exception as e:  # decord raises bare DECORDError / RuntimeError / AssertionError
            failures.append(f"{which}: {first_line(e, 160).replace(str(path), path.name).split('...')[0]}")
            continue
        return VideoInfo(count, fps, int(width), int(height))
    raise AnyV2VError(f"not a readable video ({'; '.join(failures)})")


def _frame_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def read_frame_folder(
    folder: str | os.PathLike,
    frames: int,
    fps: float,
    width: int,
    height: int,
    resize: ResizeMode = "stretch",
    start: int = 0,
) -> Clip:
    """Images [start, start + frames) of a folder in name order, taken as they are (no resampling in time)."""
    folder = Path(folder)
    paths = _frame_paths(folder)
    if len(paths) < start + frames:
        raise AnyV2VError(
            f"frame folder {str(folder)!r} holds {len(paths)} images, fewer than --frames {start + frames}; "
            "add frames or lower --frames"
        )
    raw = [read_image(p) for p in paths[start : start + frames]]
    size = raw[0].shape[1], raw[0].shape[0]
    fitted = np.stack([fit_frame(f, width, height, resize) for f in raw])
    return Clip(fitted, fps, None, size, len(paths))


def read_source(
    source: str | os.PathLike,
    frames: int,
    fps: float,
    width: int,
    height: int,
    resize: ResizeMode = "stretch",
    start: int = 0,
) -> Clip:
    """A video file or a folder of frames: output frames [start, start + frames)."""
    path = Path(source)
    if path.is_dir():
        return read_frame_folder(path, frames, fps, width, height, resize, start)
    if not path.exists():
        raise AnyV2VError(f"source {str(path)!r} does not exist")
    return read_video(path, frames, fps, width, height, resize, start=start)


def source_length(source: str | os.PathLike, fps: float, limit: int) -> VideoLength:
    """How many frames (at most `limit`) a video file fills at `fps`, or a folder holds."""
    path = Path(source)
    if path.is_dir():
        count = len(_frame_paths(path))
        return VideoLength(min(count, limit), count / fps, count, fps)
    if not path.exists():
        raise AnyV2VError(f"source {str(path)!r} does not exist")
    return video_length(path.read_bytes(), fps, limit, path.name)


# an image over this many pixels is refused before its pixels are decoded (a PNG of a few KB can
# claim gigapixels; PIL only warns below twice its own limit). A job sets it with limits.max_image_pixels
MAX_IMAGE_PIXELS = 50_000_000


def read_image(
    source: str | os.PathLike | bytes | BinaryIO,
    name: str | None = None,
    max_pixels: int = MAX_IMAGE_PIXELS,
    mode: str = "RGB",
) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3]; refused from its header if over `max_pixels`.

    mode: a PIL mode to convert to ("L": [H, W]), or "RGB+A": RGBA [H, W, 4] when the file carries
    transparency (an alpha band or a transparent colour), RGB otherwise."""
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, (str, os.PathLike)) and not Path(source).exists():
        raise AnyV2VError(f"image {label!r} does not exist")
    try:
        with warnings.catch_warnings():  # PIL warns of big images at open; the size is judged here instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        with img:
            width, height = img.size  # from the header: nothing is decoded yet
            if width * height > max_pixels:
                raise AnyV2VError(
                    f"image {label!r} is {width}x{height} ({width * height} pixels), more than the limit of "
                    f"{max_pixels} (limits.max_image_pixels)"
                )
            if mode == "RGB+A":
                mode = "RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB"
            return np.asarray(img.convert(mode))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise AnyV2VError(f"cannot read image {label!r}: not a readable image ({first_line(e, 160)})") from None


# ---- writing


def encode_mp4(frames: np.ndarray, fps: float, crf: int = 18) -> bytes:
    """H.264 (yuv420p) MP4 bytes; the same frames always give the same bytes."""
    import av

    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise AnyV2VError(f"H.264 (yuv420p) needs an even width and height, got {frames.shape[2]}x{frames.shape[1]}")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=_fps_fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        # x264's macroblock-tree rate control gives different bytes from call to call within one process
        # (it reads state left by earlier encodes); without it the same frames always give the same file
        stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "mbtree=0"}
        rate = _fps_fraction(fps)
        stream.codec_context.time_base = 1 / rate
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(rgb_to_yuv420p(frame), format="yuv420p")
            video_frame.pts, video_frame.time_base = i, 1 / rate
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def rgb_to_yuv420p(frame: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> planar YUV 4:2:0 [H * 3 / 2, W] (BT.601, limited range), in numpy.

    Converting here rather than in FFmpeg's swscale keeps encoding deterministic: swscale picks SIMD or
    C code by the input buffer's alignment, and the two round differently."""
    rgb = frame.astype(np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    h, w = frame.shape[:2]

    def subsample(c: np.ndarray) -> np.ndarray:  # the mean of each 2 x 2 block
        return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    planes = [y, subsample(u).reshape(h // 4, w), subsample(v).reshape(h // 4, w)]
    return np.clip(np.round(np.concatenate(planes)), 0, 255).astype(np.uint8)


def encode_png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG")
    return buffer.getvalue()


def check_writable_path(path: str | os.PathLike, what: str = "output") -> None:
    """Refuse, before any work, a path that cannot be written: a temporary file is made (and removed) in
    the nearest existing folder above it, where the real write makes its folders and temporary file."""
    path = Path(path).expanduser().absolute()
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise AnyV2VError(f"cannot write the {what} {str(path)!r}: {str(folder)!r} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".anyv2v-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise AnyV2VError(
            f"cannot write the {what} {str(path)!r}: {str(folder)!r} is not writable ({e.strerror or e}); "
            "choose another location"
        ) from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600; outputs get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float) -> None:
    """An MP4 file (H.264, yuv420p) or, for any other target, a folder of lossless PNGs 00000.png, ..."""
    path = Path(path)
    if path.suffix.lower() == ".mp4":
        atomic_write_bytes(path, encode_mp4(frames, fps))
    else:
        write_frame_folder(path, frames)


def write_frame_folder(folder: str | os.PathLike, frames: np.ndarray) -> None:
    """PNG frames written into a temporary folder, then renamed into place (replacing an old one)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        tmp.chmod(DIR_MODE)
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(tmp / f"{i:05d}.png")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fps_fraction(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
