"""Decode: video bytes -> frames at the clip's fps, frame count and size (CPU tasks).

A clip longer than one model window (anyv2v_batch/windows.py) leaves as one row per window, each
holding only its own frames: the windows are inverted as separate work items across the inversion
pool, and `operators/gather.py` joins them again before sampling. Only a window's frames are decoded
at a time, so a long source never sits in memory whole.
"""

from __future__ import annotations

import functools
import hashlib
import io
import time
from collections.abc import Iterator
from typing import Any

from anyv2v_batch.operators.work import ClipWork, one_line, work_inversion_id
from anyv2v_batch.settings import WindowSettings
from anyv2v_batch.video_io import read_video, video_length
from anyv2v_batch.windows import WindowLimits, clip_total, plan_for, resolve_limits


@functools.lru_cache(maxsize=64)
def window_limits(backbone: str, model: str | None, settings: WindowSettings) -> WindowLimits:
    """The windows a (backbone, model) takes with these settings (read from its configs once per process)."""
    from anyv2v_batch.backbones import backbone_class

    return resolve_limits(backbone_class(backbone).window_limits(model), settings, backbone)


def decode_clip(row: dict[str, Any], split: bool = True) -> Iterator[dict[str, Any]]:
    """flat_map: fills `work.frames` and `work.source` (a failure becomes the clip's error); a clip of
    several windows becomes one row per window (`work.window`), unless not `split` (scoring: the whole
    clip in one row)."""
    work: ClipWork = row["work"]
    started = time.perf_counter()
    rows = [work]
    if not work.error and work.pending():
        try:
            rows = _decode(work, split)
        except Exception as e:  # noqa: BLE001 - per-sample isolation
            work.error, rows = one_line(e), [work]
    work.video = None  # the bytes are not needed downstream
    seconds = (time.perf_counter() - started) / max(1, len(rows))
    for part in rows:
        part.seconds["decode"] = seconds
        part.stored_entries = {}
        yield {"work": part}


def decode_whole(row: dict[str, Any]) -> dict[str, Any]:
    """map: the whole clip in one row, whatever its window plan (what the scorer compares outputs with)."""
    return next(decode_clip(row, split=False))


def _decode(work: ClipWork, split: bool = True) -> list[ClipWork]:
    c, name = work.clip, f"{work.key}.{work.video_ext}"
    limits = work.window_limits or window_limits(work.backbone, work.model, work.window_settings)
    total, truncated, seconds = c.frames, False, None
    if total == "all" or total > limits.max_frames:  # counted from the file's index: no frame decoded
        length = video_length(work.video, c.fps, c.max_frames + 1, name)
        total, truncated = clip_total(c, length.frames, length.seconds)
        seconds = length.seconds
    work.plan = plan_for(total, limits, work.window_settings)
    work.total, work.truncated = total, truncated
    parts = [work] if len(work.plan) == 1 or not split else [work.for_window(w) for w in work.plan]
    for part in parts:
        start = part.window.start if part.window is not None else 0
        clip = read_video(
            io.BytesIO(work.video), part.frames_here, c.fps, c.width, c.height, c.resize, name=name, start=start
        )
        part.frames = clip.frames
        part.source = {
            "frames_sha256": hashlib.sha256(clip.frames.tobytes()).hexdigest(),
            "fps": clip.source_fps,
            "frames": clip.source_frames,
            "width": clip.source_size[0],
            "height": clip.source_size[1],
            "decoder": clip.decoder,  # decord, or PyAV where decord could not read the file
            "seconds": seconds if seconds is not None else clip.source_frames / clip.source_fps,
        }
        part.stored_inversion = work.stored_entries.get(work_inversion_id(part), part.stored_inversion)
    if work.stored_ids:  # `invert`: windows already in the store are not made again
        parts = [p for p in parts if work_inversion_id(p) not in work.stored_ids]
    if work.wanted_ids is not None:  # a store repair: only its entries
        parts = [p for p in parts if work_inversion_id(p) in work.wanted_ids]
    return parts
