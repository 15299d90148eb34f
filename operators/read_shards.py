"""Read WebDataset shards: one row per (sample, inversion group) that still has work to do.

A sample is the tar members sharing a key (the member path up to the first dot of its file name):
a video (.mp4, .webm, .mkv, .avi, .mov), optional .json / .txt metadata and optionally a ready
edited first frame (.edited.png / .edited.jpg). Members are grouped by key over the whole tar, so a
sample whose members are not adjacent is still read whole. Pairs already done are skipped here,
before any decoding.

Shards come from people we do not control: headers are read one at a time with bounded reads, every
member is checked against the job's `limits` from its header before it is read, unsafe keys never
become names, and damage to the tar costs only what lies after it (see `iter_samples`).
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from anyv2v_batch.job import JobSpec, Limits
from anyv2v_batch.operators.storage import filesystem, join
from anyv2v_batch.operators.work import (
    ClipWork,
    group_variants,
    inversion_id,
    one_line,
    pair_id,
    variant_for_sample,
)
from anyv2v_batch.settings import ClipSettings
from anyv2v_batch.windows import window_clip

VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov")


def split_member(name: str) -> tuple[str, str]:
    """'dir/clip.edited.png' -> ('dir/clip', 'edited.png')."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem) if folder else stem, ext.lower()


def unsafe_key_reason(key: str) -> str:
    """Why a key may not name an output file or tar member ("" if it may). tarfile decodes names with
    surrogateescape, so bytes that are not UTF-8 arrive as lone surrogates: not printable, like NUL
    and control characters."""
    if not key:
        return "it is empty"
    if key.startswith("/"):
        return "it is an absolute path"
    if ".." in key.split("/"):
        return "it has a '..' component"
    if not key.isprintable():
        return "it has NUL, control characters or bytes that are not UTF-8"
    return ""


def printable_key(key: str) -> str:
    """A key as printable UTF-8 text: non-UTF-8 bytes as \\xNN, other unprintable characters as \\xNN /
    \\uNNNN, backslashes doubled. Unsafe keys are recorded under this rendering."""
    out = []
    for ch in key:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == "\\":
            out.append("\\\\")
        elif not ch.isprintable():
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


@dataclass
class Sample:
    """One key of a shard: its members' bytes by extension, or why it cannot be used."""

    key: str  # the row's key: the members' key, or for an unsafe key a printable rendering (see iter_samples)
    files: dict[str, bytes] = field(default_factory=dict)
    error: str = ""


# tarfile reads a pax or GNU long-name header whole, at the size the header claims; no header or
# chunk we read is near this, so a bigger single read is a lying header, refused rather than read
MAX_SINGLE_READ = 16 * 1024**2
READ_CHUNK = 1024**2


class _CappedReads:
    """A file object whose single reads may not exceed MAX_SINGLE_READ (see above)."""

    def __init__(self, f: BinaryIO):
        self.f = f

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > MAX_SINGLE_READ:
            raise tarfile.ReadError(f"a header claims {n} bytes of header data (a lying or damaged header)")
        return self.f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.f.seek(offset, whence)

    def tell(self) -> int:
        return self.f.tell()


@dataclass
class _Group:
    members: list[tuple[str, tarfile.TarInfo]] = field(default_factory=list)
    count: int = 0  # members seen; over the cap, `members` is dropped and only this counts on


def _file_size(f: BinaryIO) -> int | None:
    try:
        end = f.seek(0, 2)
        f.seek(0)
        return end
    except (OSError, ValueError):
        return None


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """A member's bytes in bounded reads (its size was checked against the limits first)."""
    handle = tar.extractfile(member)
    chunks, left = [], member.size
    while left > 0:
        chunk = handle.read(min(READ_CHUNK, left))
        if not chunk:
            raise tarfile.ReadError(f"member {member.name!r} is cut short: {member.size - left} of {member.size} bytes")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _sample_problem(group: _Group, end: int | None, limits: Limits) -> str:
    """Why a sample cannot be read, from its headers alone ("" if it can)."""
    if group.count > limits.max_members_per_key:
        return f"has {group.count} members, more than limits.max_members_per_key ({limits.max_members_per_key})"
    for _, m in group.members:
        name = printable_key(m.name)
        if m.size > limits.max_member_bytes:
            return f"member {name!r} has {m.size} bytes, more than limits.max_member_bytes ({limits.max_member_bytes})"
        if end is not None and m.offset_data + m.size > end:
            return (
                f"member {name!r} claims {m.size} bytes but the shard ends {max(0, end - m.offset_data)} bytes "
                "after its start (a truncated tar or a lying header)"
            )
    total = sum(m.size for _, m in group.members)
    if total > limits.max_sample_bytes:
        return f"has {total} bytes in its members, more than limits.max_sample_bytes ({limits.max_sample_bytes})"
    return ""


@contextlib.contextmanager
def _open_tar(url: str, block_size: int | None = None) -> Iterator[tuple[tarfile.TarFile, int | None]]:
    """The shard as a tar read through capped reads, with the file's size (None if compressed: the end
    of the tar stream is then not the file's size). `block_size`: an object store's read-ahead."""
    fs, path = filesystem(url)
    with fs.open(path, "rb", **({"block_size": block_size} if block_size else {})) as raw:
        end = _file_size(raw)
        with tarfile.open(fileobj=_CappedReads(raw), mode="r:*") as tar:
            yield tar, end if isinstance(tar.fileobj, _CappedReads) else None


def _scan_headers(tar: tarfile.TarFile, limits: Limits) -> tuple[dict[str, _Group], str]:
    """Every header, one by one, grouped by key (tarfile seeks past each member's data), and the
    damage that ended the scan ("" if the tar ended with its end-of-archive marker)."""
    groups: dict[str, _Group] = {}
    count = 0
    try:
        while (member := tar.next()) is not None:
            count += 1
            if not member.isfile() or posixpath.basename(member.name).startswith("."):
                continue
            key, ext = split_member(member.name)
            group = groups.setdefault(key, _Group())
            group.count += 1
            if group.count <= limits.max_members_per_key:
                group.members.append((ext, member))
            else:
                group.members.clear()
            tar.members.clear()  # tarfile keeps every header; `groups` holds those we need
        tar.fileobj.seek(tar.offset)
        if tar.fileobj.read(tarfile.BLOCKSIZE) != tarfile.NUL * tarfile.BLOCKSIZE:
            # tarfile ends quietly at a short, empty or unparsable header block
            return groups, f"no end-of-archive marker at byte {tar.offset}: the tar is truncated or a header is damaged"
    except Exception as e:  # noqa: BLE001 - any damage ends the scan; what came before is kept
        return groups, f"the tar is damaged after {count} members: {one_line(e)}"
    return groups, ""


def _row_keys(groups: dict[str, _Group]) -> dict[str, tuple[str, str]]:
    """Key -> (the key its rows carry, why the key is unsafe or ""). An unsafe key is recorded under its
    printable rendering, made unique within the shard."""
    taken = {k for k in groups if not unsafe_key_reason(k)} | {""}  # "" is the shard's own rows
    out = {}
    for key in groups:
        reason = unsafe_key_reason(key)
        row_key = key
        if reason:
            row_key = rendered = printable_key(key)
            n = 1
            while row_key in taken:
                n += 1
                row_key = f"{rendered}#{n}"
            taken.add(row_key)
        out[key] = (row_key, reason)
    return out


def _overruns(group: _Group, end: int | None) -> bool:
    """A member of the sample runs past the end of the file (its row then records the damage)."""
    return end is not None and any(m.offset_data + m.size > end for _, m in group.members)


def iter_samples(url: str, limits: Limits | None = None) -> Iterator[Sample]:
    """Every sample of a tar shard, in first-appearance order.

    Headers are read one by one (never more than a header's worth at once), grouping members by key
    over the whole tar; then each sample's members are read, checked against `limits` from their
    headers first. A sample that breaks a limit, has an unsafe key or a member cut short becomes a
    Sample with an error (its bytes are not read). Damage to the tar itself (a truncated tar, a header
    that does not parse, a size running past the end, no end-of-archive marker) ends the header scan:
    the samples before it are yielded, then one Sample under the empty key recording the damage,
    unless it is already recorded as a sample's member running past the end. A shard whose first header
    does not parse raises (the caller records the whole shard)."""
    limits = limits or Limits()
    with _open_tar(url) as (tar, end):
        groups, damage = _scan_headers(tar, limits)
        overrun = False
        for key, (row_key, reason) in _row_keys(groups).items():
            group = groups[key]
            if reason:
                yield Sample(row_key, error=f"sample key '{printable_key(key)}' is unsafe: {reason}")
                continue
            problem = _sample_problem(group, end, limits)
            overrun = overrun or _overruns(group, end)
            if problem:
                yield Sample(key, error=f"sample {key!r} {problem}")
                continue
            try:
                yield Sample(key, {ext: _read_member(tar, member) for ext, member in group.members})
            except Exception as e:  # noqa: BLE001 - e.g. a compressed tar cut inside a member
                yield Sample(key, error=f"sample {key!r} cannot be read: {one_line(e)}")
        if damage and not overrun:
            yield Sample("", error=f"shard {url!r}: {damage}")


# an object store's read-ahead when only headers are read: a header costs one small ranged read
HEADER_SCAN_BLOCK = 64 * 1024


def sample_keys(url: str, limits: Limits | None = None) -> list[str]:
    """The keys of the Samples `iter_samples` yields for a shard, in order, from its headers alone (no
    member's data is read: tarfile seeks past it; on an object store each header is a small ranged
    read). A compressed shard is decompressed to find its headers. Raises where iter_samples does."""
    limits = limits or Limits()
    with _open_tar(url, HEADER_SCAN_BLOCK) as (tar, end):
        groups, damage = _scan_headers(tar, limits)
    rows = _row_keys(groups)
    keys = [row_key for row_key, _ in rows.values()]
    if damage and not any(_overruns(groups[k], end) for k, (_, reason) in rows.items() if not reason):
        keys.append("")
    return keys


def sample_metadata(key: str, files: dict[str, bytes]) -> dict[str, Any]:
    """The sample's .json (an object) plus its .txt as `txt` and, if no caption is given, `caption`."""
    meta: dict[str, Any] = {}
    if "json" in files:
        try:
            loaded = json.loads(files["json"].decode("utf-8"))
        except (ValueError, RecursionError) as e:  # also too deeply nested, or an int of 5000 digits
            raise ValueError(f"{key}.json is not valid JSON ({one_line(e)})") from None
        try:  # JSON may spell lone surrogates ("\\ud800"): no output file or Parquet row could hold them
            json.dumps(loaded, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{key}.json has text that is not valid Unicode (a lone surrogate)") from None
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
        self.by_key: dict[str, set[str]] | None = None
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

    def ids(self, key: str) -> frozenset[str]:
        """The inversion ids stored for a sample (its clip's, or its windows')."""
        if self.by_key is None:
            self.by_key = {}
            for name in self.members:
                if name.endswith(".safetensors"):
                    stem = name[: -len(".safetensors")]
                    k, _, inv = stem.rpartition(".")
                    self.by_key.setdefault(k, set()).add(inv)
        return frozenset(self.by_key.get(key, ()))

    def entries(self, key: str, wanted: Callable[[str], bool]) -> dict[str, bytes]:
        """The stored inversions of a sample whose ids `wanted` accepts, by id (the decode stage picks its
        clip's or its windows' once it knows the clip's length)."""
        out = {}
        for inv in self.ids(key):
            if wanted(inv):
                data = self.get(key, inv)
                if data is not None:
                    out[inv] = data
        return out

    def close(self) -> None:
        for handle in (self.tar, self.file):
            if handle is not None:
                handle.close()
        self.file = self.tar = None
        self.members = {}


def concrete(clip: ClipSettings) -> ClipSettings:
    """A clip of a given frame count as its inversion is named (see windows.window_clip)."""
    return window_clip(clip, clip.frames) if clip.frames != "all" else clip


def read_shard(row: dict[str, Any], job: JobSpec, mode: str = "edit") -> Iterator[dict[str, Any]]:
    """flat_map: a shard row {shard, shard_id, done} -> work rows {"work": ClipWork}.

    mode "edit": a (clip, group) has work while one of its variants is not done; stored inversions
    are attached for the inversion pool to check and reuse. mode "invert": while its inversion is not
    stored yet (`done` then holds inversion pair ids)."""
    shard, shard_id, done = row["shard"], row["shard_id"], set(row["done"])
    stored = StoredInversions(job.inversions, shard_id)
    started = time.perf_counter()
    try:
        for sample in iter_samples(shard, job.limits):
            key, files = sample.key, sample.files
            video_ext = next((e for e in VIDEO_EXTENSIONS if e in files), "")
            error = sample.error
            if not error and not video_ext:
                error = f"sample {key!r} has no video ({', '.join('.' + e for e in VIDEO_EXTENSIONS)})"
            try:
                meta = sample_metadata(key, files)
            except ValueError as e:
                meta, error = {"key": key}, error or str(e)
            video = files.pop(video_ext, None)
            for specs in group_variants(job):
                clip, inversion, backbone, model = specs[0].clip, specs[0].inversion, specs[0].backbone, specs[0].model
                weights = job.weights_of(backbone, model)
                window = specs[0].window
                inv_id = inversion_id(backbone, model, concrete(clip), inversion, weights)
                wanted_ids = None
                if mode == "invert":
                    if job.keep_timesteps is not None:  # a store repair: only its entries
                        wanted_ids = frozenset(i for s, k, i in job.keep_timesteps if (s, k) == (shard_id, key))
                        if not wanted_ids or (clip.frames != "all" and inv_id not in wanted_ids):
                            continue
                    if clip.frames != "all" and pair_id(key, inv_id) in done:
                        continue
                    todo: set[str] = set()
                else:
                    todo = {v.name for v in specs if wanted(job, shard_id, pair_id(key, v.name), done)}
                    if not todo:
                        continue
                    # a pair's bytes do not depend on the variants beside it: the done ones need not run again
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
                    backbone=backbone,
                    model=model,
                    weights=weights,
                    window_settings=window,
                    window_limits=job.window_limits.get((backbone, model, window)),
                )
                if not error and mode == "edit":  # the clip's inversion or its windows': decode picks
                    work.stored_entries = stored.entries(key, lambda _: True)
                elif not error:
                    work.stored_ids = stored.ids(key)
                    work.wanted_ids = wanted_ids
                work.seconds["read"] = time.perf_counter() - started
                yield {"work": work}
                started = time.perf_counter()
    except Exception as e:  # an unreadable shard: one error row per variant, under an empty key
        message = f"cannot read shard {shard!r}: {one_line(e)}"
        for work in shard_errors(shard, shard_id, job, message):
            yield {"work": work}
    finally:
        stored.close()


def pending_rows(row: dict[str, Any], job: JobSpec, mode: str = "edit") -> int:
    """How many status rows `read_shard` of a shard row {shard, shard_id, done} ends in, counted from
    the shard's headers (`sample_keys`): edit: one per (sample, variant) not done; invert: one per
    (sample, inversion group) not stored. An unreadable shard: its `shard_errors` rows."""
    done, groups = set(row["done"]), group_variants(job)
    try:
        keys = sample_keys(row["shard"], job.limits)
    except Exception:  # noqa: BLE001 - read_shard records such a shard as shard_errors
        return sum(len(specs) if mode == "edit" else 1 for specs in groups)
    if mode == "invert":
        ids = []
        for specs in groups:
            v = specs[0]
            weights = job.weights_of(v.backbone, v.model)
            ids.append(inversion_id(v.backbone, v.model, concrete(v.clip), v.inversion, weights))
        return sum(pair_id(key, inv_id) not in done for key in keys for inv_id in ids)
    sid = row["shard_id"]
    return sum(wanted(job, sid, pair_id(key, v.name), done) for key in keys for specs in groups for v in specs)


def wanted(job: JobSpec, shard_id: str, pid: str, done: set[str]) -> bool:
    """Whether a run makes this pair: it is not done (and, in a repair, it is one of the pairs repaired)."""
    return pid not in done and (job.only_pairs is None or f"{shard_id}/{pid}" in job.only_pairs)


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
