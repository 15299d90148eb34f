"""Paths and URLs through fsspec: expanding input patterns, atomic writes, listing.

Local paths and any fsspec URL (s3://, gs://, http(s)://, memory://) work alike. Writes are atomic:
locally a temporary file renamed into place; on object stores a single PUT, or a multipart upload,
which S3 and GCS publish only when it completes: all-or-nothing either way.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.video_io import FILE_MODE, atomic_write_bytes, check_writable_path


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of a URL, with no cached listing of the path or its parents: other
    processes (Ray workers, another run) write the same store, and s3fs / gcsfs would otherwise answer
    `ls` and `exists` from what this process saw last."""
    try:
        fs, path = url_to_fs(url)
    except (ImportError, ValueError) as e:
        raise AnyV2VError(f"cannot open {url!r}: {str(e).splitlines()[0][:200]}") from None
    fs.invalidate_cache(path)
    return fs, path


def join(root: str, *parts: str) -> str:
    return posixpath.join(root.rstrip("/"), *parts)


def expand_inputs(patterns: tuple[str, ...] | list[str]) -> list[str]:
    """Shard URLs from paths, brace patterns ({000..099}) and globs, in a stable order, each once."""
    import braceexpand

    urls: list[str] = []
    for pattern in patterns:
        for item in braceexpand.braceexpand(pattern):
            fs, path = filesystem(item)
            if any(c in path for c in "*?["):
                found = sorted(fs.glob(path))
                if not found:
                    raise AnyV2VError(f"input pattern {item!r} matches no file")
                urls += [fs.unstrip_protocol(p) if not isinstance(fs, LocalFileSystem) else p for p in found]
            else:
                if not fs.exists(path):
                    raise AnyV2VError(f"input shard {item!r} does not exist")
                urls.append(item)
    return list(dict.fromkeys(urls))


def shard_id(url: str) -> str:
    """The output name of an input shard: its file name without the .tar / .tar.gz extension."""
    name = posixpath.basename(url.rstrip("/"))
    for ext in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def check_writable(url: str, what: str = "output") -> None:
    """Refuse, before any work, an output folder / URL that cannot be written: locally a temporary file
    in the nearest existing folder, on an object store a probe object written and deleted."""
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        if Path(path).exists() and not Path(path).is_dir():
            raise AnyV2VError(f"cannot write the {what} {url!r}: it is a file, not a folder")
        check_writable_path(Path(path) / "_probe", f"{what} folder")
        return
    import uuid

    probe = join(path, f"_probe-{uuid.uuid4().hex}")
    try:
        fs.pipe_file(probe, b"")
        fs.rm(probe)
    except Exception as e:  # noqa: BLE001 - any store failure: one line
        detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise AnyV2VError(f"cannot write the {what} {url!r} ({detail}); check the URL and its credentials") from None


def atomic_write(url: str, data: bytes, content_type: str | None = None) -> None:
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        atomic_write_bytes(path, data)  # temporary file + rename
    else:  # one PUT: appears whole or not at all
        fs.pipe_file(path, data, **_content_type(fs, content_type), **_checksum(fs))


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    return set(fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,))


def _content_type(fs: fsspec.AbstractFileSystem, content_type: str | None) -> dict[str, str]:
    """The store's argument for an object's Content-Type: a page served from a bucket needs it (stores
    default to binary/octet-stream, which browsers download instead of showing)."""
    if content_type is None:
        return {}
    if {"s3", "s3a"} & _protocols(fs):
        return {"ContentType": content_type}
    if {"gs", "gcs"} & _protocols(fs):
        return {"content_type": content_type}
    return {}


def _checksum(fs: fsspec.AbstractFileSystem) -> dict[str, str]:
    """S3: every PUT and multipart part carries its SHA-256, which the server checks before it stores
    the object (and keeps, for `head_object(ChecksumMode="ENABLED")`): bytes damaged on the way are
    refused. Other stores keep their client's default (not tested here: no GCS server runs here)."""
    return {"ChecksumAlgorithm": "SHA256"} if {"s3", "s3a"} & _protocols(fs) else {}


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def list_files(url: str, suffix: str) -> list[str]:
    """Files directly under a folder URL ending in `suffix`, sorted (empty if the folder is absent)."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    names = [p for p in fs.ls(path, detail=False) if p.endswith(suffix) and not posixpath.basename(p).startswith(".")]
    return sorted(names if isinstance(fs, LocalFileSystem) else [fs.unstrip_protocol(p) for p in names])


def remove_if_empty(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path) and fs.isdir(path) and not fs.ls(path, detail=False):
        fs.rmdir(path)


def remove(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@contextlib.contextmanager
def atomic_output(url: str) -> Iterator[BinaryIO]:
    """A file to stream into; it appears at `url` only when the block ends without an error."""
    fs, path = filesystem(url)
    local = isinstance(fs, LocalFileSystem)
    folder = Path(path).parent if local else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{posixpath.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if local:
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, path)
        else:
            fs.put_file(tmp, path, **_checksum(fs))
    finally:
        Path(tmp).unlink(missing_ok=True)
