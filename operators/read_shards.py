"""Read WebDataset shards: one row per (sample, inversion group) that still has work to do.

A sample is the tar members sharing a key (the member path up to the first dot of its file name):
a video (.mp4, .webm, .mkv, .avi, .mov), optional .json / .txt metadata and optionally a ready
edited first frame (.edited.png / .edited.jpg). Members are grouped by key over the whole tar, so a
sample whose members are not adjacent is still read whole. Pairs already done are skipped here,
before any decoding.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
import time
from collections.abc import Iterator
from typing import Any

from anyv2v_batch.job import JobSpec
from anyv2v_batch.operators.storage import filesystem, join
from anyv2v_batch.operators.work import (
    ClipWork,
    group_variants,
    inversion_id,
    one_line,
    pair_id,
    variant_for_sample,
)

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov")


def split_member(name: str) -> tuple[str, str]:
    """'dir/clip.edited.png' -> ('dir/clip', 'edited.png')."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, ext.lower()


def iter_samples(url: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for every sample of a tar shard, in first-appearance order."""
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:*") as tar:
        groups: dict[str, list[tuple[str, tarfile.TarInfo]]] = {}
        for member in tar.getmembers():  # headers only: data is read per sample below
            if not member.isfile() or posixpath.basename(member.name).startswith("."):
                continue
            key, ext = split_member(member.name)
            groups.setdefault(key, []).append((ext, member))
        for key, items in groups.items():
            yield key, {ext: tar.extractfile(member).read() for ext, member in items}


def sample_metadata(key: str, files: dict[str, bytes]) -> dict[str, Any]:
    """The sample's .json (an object) plus its .txt as `txt` and, if no caption is given, `caption`."""
    meta: dict[str, Any] = {}
    if "json" in files:
        try:
            loaded = json.loads(files["json"].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{key}.json is not valid JSON ({e})") from None
        meta.update(loaded if isinstance(loaded, dict) else {"json": loaded})
    if "txt" in files:
        text = files["txt"].decode("utf-8", errors="replace").strip()
        meta["txt"] = text
        meta.setdefault("caption", text)
    meta.setdefault("key", key)
    return meta


class StoredInversions:
    """The stored inversions of one input shard (`<inversions>/shards/<shard>.tar`), read member by
    member on demand: an entry is `<key>.<inversion id>.safetensors`."""

    def __init__(self, root: str | None, shard_id: str):
        self.file = self.tar = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if root is None:
            return
        fs, path = filesystem(join(root, "shards", f"{shard_id}.tar"))
        if not fs.exists(path):
            return
        try:
            self.file = fs.open(path, "rb")
            self.tar = tarfile.open(fileobj=self.file, mode="r:")
            self.members = {m.name: m for m in self.tar.getmembers() if m.isfile()}
        except (OSError, tarfile.TarError):  # an unreadable store is no store: everything is recomputed
            self.close()

    def get(self, key: str, inversion: str) -> bytes | None:
        member = self.members.get(f"{key}.{inversion}.safetensors")
        try:
            return self.tar.extractfile(member).read() if member is not None else None
        except (OSError, tarfile.TarError):
            return None

    def close(self) -> None:
        for handle in (self.tar, self.file):
            if handle is not None:
                handle.close()
        self.file = self.tar = None
        self.members = {}


def read_shard(row: dict[str, Any], job: JobSpec, mode: str = "edit") -> Iterator[dict[str, Any]]:
    """flat_map: a shard row {shard, shard_id, done} -> work rows {"work": ClipWork}.

    mode "edit": a (clip, group) has work while one of its variants is not done; stored inversions
    are attached for the inversion pool to check and reuse. mode "invert": while its inversion is not
    stored yet (`done` then holds inversion pair ids)."""
    shard, shard_id, done = row["shard"], row["shard_id"], set(row["done"])
    stored = StoredInversions(job.inversions if mode == "edit" else None, shard_id)
    started = time.perf_counter()
    try:
        for key, files in iter_samples(shard):
            video_ext = next((e for e in VIDEO_EXTENSIONS if e in files), "")
            error = "" if video_ext else f"sample {key!r} has no video ({', '.join('.' + e for e in VIDEO_EXTENSIONS)})"
            try:
                meta = sample_metadata(key, files)
            except ValueError as e:
                meta, error = {"key": key}, error or str(e)
            video = files.pop(video_ext, None)
            for specs in group_variants(job):
                clip, inversion, backbone, model = specs[0].clip, specs[0].inversion, specs[0].backbone, specs[0].model
                weights = job.weights_of(backbone, model)
                inv_id = inversion_id(backbone, model, clip, inversion, weights)
                if mode == "invert":
                    if pair_id(key, inv_id) in done:
                        continue
                    todo: set[str] = set()
                else:
                    todo = {v.name for v in specs if pair_id(key, v.name) not in done}
                    if not todo:
                        continue
                    if not job.share_source:  # variants run alone: the done ones need not run again
                        specs = [v for v in specs if v.name in todo]
                variants = [variant_for_sample(spec, key, meta) for spec in specs]
                for v in variants:
                    v.write = v.name in todo
                work = ClipWork(
                    shard=shard,
                    shard_id=shard_id,
                    key=key,
                    meta=meta,
                    files={k: v for k, v in files.items() if k not in ("json", "txt")},
                    video=video,
                    video_ext=video_ext,
                    clip=clip,
                    inversion_settings=inversion,
                    variants=variants,
                    error=error,
                    stored_inversion=stored.get(key, inv_id),
                    backbone=backbone,
                    model=model,
                    weights=weights,
                )
                work.seconds["read"] = time.perf_counter() - started
                yield {"work": work}
                started = time.perf_counter()
    except Exception as e:  # an unreadable shard: one error row per variant, under an empty key
        message = f"cannot read shard {shard!r}: {one_line(e)}"
        for work in shard_errors(shard, shard_id, job, message):
            yield {"work": work}
    finally:
        stored.close()


def shard_errors(shard: str, shard_id: str, job: JobSpec, message: str) -> list[ClipWork]:
    """One error row per variant (grouped as the clips would be), under an empty key."""
    return [
        ClipWork(
            shard=shard,
            shard_id=shard_id,
            key="",
            meta={},
            files={},
            video=None,
            video_ext="",
            clip=specs[0].clip,
            inversion_settings=specs[0].inversion,
            variants=[variant_for_sample(s, "", {}) for s in specs],
            error=message,
            backbone=specs[0].backbone,
            model=specs[0].model,
        )
        for specs in group_variants(job)
    ]
