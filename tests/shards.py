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


# ---- hostile shards: tars made wrong on purpose


def tar_bytes(members: list[tuple[str | tarfile.TarInfo, bytes]], format: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar in memory. A member given as a TarInfo keeps its own headers (e.g. a PAX path with a NUL);
    names may hold surrogate-escaped bytes (written as the raw, non-UTF-8 bytes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=format, encoding="utf-8", errors="surrogateescape") as tar:
        for name, data in members:
            info = name if isinstance(name, tarfile.TarInfo) else tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def header_offsets(data: bytes) -> dict[str, int]:
    """Member name -> offset of its (last, ustar) header block in the tar bytes."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m.offset_data - tarfile.BLOCKSIZE for m in tar.getmembers()}


def patch_size(data: bytes, header: int, size: int) -> bytes:
    """The tar with the header block at `header` claiming `size` bytes (checksum fixed, so it parses)."""
    block = bytearray(data[header : header + tarfile.BLOCKSIZE])
    block[124:136] = b"%011o\0" % size
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return data[:header] + bytes(block) + data[header + tarfile.BLOCKSIZE :]


def bomb_png(width: int, height: int) -> bytes:
    """A valid black 1-bit PNG of width x height: a few KB that decode to width * height pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, compress = b"\0" * (1 + (width + 7) // 8), zlib.compressobj(9)
    idat = b"".join(compress.compress(row) for _ in range(height)) + compress.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
