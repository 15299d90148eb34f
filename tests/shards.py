"""Building real WebDataset shards for tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from anyv2v_batch.video_io import encode_mp4, encode_png


def write_shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar with the members in the given order (so tests can interleave samples)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def mp4(clip: np.ndarray, fps: float = 8) -> bytes:
    return encode_mp4(clip, fps)


def png(frame: np.ndarray) -> bytes:
    return encode_png(frame)


def recolor(frame: np.ndarray) -> np.ndarray:
    """A stand-in for an edited first frame: channels rotated, brightened."""
    return np.clip(frame[..., [2, 0, 1]].astype(np.float32) * 0.9 + 20, 0, 255).astype(np.uint8)


def read_tar(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def image(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
