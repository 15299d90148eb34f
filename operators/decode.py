"""Decode: video bytes -> frames at the clip's fps, frame count and size (CPU tasks)."""

from __future__ import annotations

import hashlib
import io
import time
from typing import Any

from anyv2v_batch.operators.work import one_line
from anyv2v_batch.video_io import read_video


def decode_clip(row: dict[str, Any]) -> dict[str, Any]:
    """map: fills `work.frames` and `work.source`; a failure becomes the clip's error."""
    work = row["work"]
    started = time.perf_counter()
    if not work.error and work.pending():
        c = work.clip
        try:
            clip = read_video(
                io.BytesIO(work.video),
                c.frames,
                c.fps,
                c.width,
                c.height,
                c.resize,
                name=f"{work.key}.{work.video_ext}",
            )
            work.frames = clip.frames
            work.source = {
                "frames_sha256": hashlib.sha256(clip.frames.tobytes()).hexdigest(),
                "fps": clip.source_fps,
                "frames": clip.source_frames,
                "width": clip.source_size[0],
                "height": clip.source_size[1],
                "decoder": clip.decoder,  # decord, or PyAV where decord could not read the file
            }
        except Exception as e:  # noqa: BLE001 - per-sample isolation
            work.error = one_line(e)
    work.video = None  # the bytes are not needed downstream
    work.seconds["decode"] = time.perf_counter() - started
    return {"work": work}
