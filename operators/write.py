"""Write: exactly one output per (clip, variant), durable as soon as it is made, compacted per shard.

Layout under the output folder / URL:

    shards/<shard>.tar            WebDataset: <key>.<variant>.mp4 / .png / .json for every ok pair
    filtered/shards/<shard>.tar   the same for ok pairs that failed the thresholds (evaluate mode route)
    metadata/<shard>.parquet      one row per (clip, variant): settings, timings, status, error
    _parts/<shard>/<pair>.tar     a pair finished by a run that has not been compacted yet

Each finished pair is written at once as its own part (named by the pair, so a redo overwrites it
rather than adding a copy). After the run, each shard's parts are merged with what the shard already
holds (a part wins over an older row of the same pair) into a new shard tar and Parquet file, written
to temporary names and renamed; only then are the parts removed. A run that dies at any point leaves
parts or finished shards, never half files, and the next run picks up from them. Shard tars are
written in (key, variant) order with fixed member metadata, so the same results give the same bytes.
"""

from __future__ import annotations

import io
import json
import tarfile
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from anyv2v_batch.evaluation import SCORE_COLUMNS
from anyv2v_batch.integrity import digest_column
from anyv2v_batch.operators.encode import PairResult
from anyv2v_batch.operators.read_shards import printable_key, split_member, unsafe_key_reason
from anyv2v_batch.operators.storage import atomic_output, atomic_write, filesystem, join, list_files, remove
from anyv2v_batch.operators.work import pair_id

ROW_SUFFIX = "row.json"  # the metadata row inside a part; never copied into a shard


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # keys are checked when shards are read (read_shards.unsafe_key_reason); this is the last line
    # against a tar-slip member (absolute, '..', unprintable) in anything we write
    reason = unsafe_key_reason(name)
    if reason:
        raise ValueError(f"refusing to write tar member '{printable_key(name)}': {reason}")
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def part_bytes(pair: PairResult) -> bytes:
    buffer = io.BytesIO()
    base = f"{pair.key}.{pair.variant}"
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for ext in sorted(pair.files):
            _add(tar, f"{base}.{ext}", pair.files[ext])
        # named by the pair, not the key: an error row's key may be a rendering of an unsafe key
        _add(tar, f"{pair_id(pair.key, pair.variant)}.{ROW_SUFFIX}", json.dumps(pair.row, sort_keys=True).encode())
    return buffer.getvalue()


def part_url(output: str, shard_id: str, key: str, variant: str) -> str:
    return join(output, "_parts", shard_id, f"{pair_id(key, variant)}.tar")


def write_part(row: dict[str, Any], output: str) -> dict[str, Any]:
    """map: persist one finished pair; returns a small status row."""
    pair: PairResult = row["pair"]
    atomic_write(part_url(output, pair.shard_id, pair.key, pair.variant), part_bytes(pair))
    return {
        "shard_id": pair.shard_id, "key": pair.key, "variant": pair.variant, "status": pair.status,
        "error": pair.error, "group": pair.group, "seconds": json.dumps(pair.seconds),
        "passed": pair.row.get("passed"), "inversion_source": pair.row.get("inversion_source") or "",
    }  # fmt: skip


def read_part(url: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(metadata row, {member name: bytes}) of a part."""
    fs, path = filesystem(url)
    row, files = None, {}
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            if member.name.endswith("." + ROW_SUFFIX):
                row = json.loads(data)
            else:
                files[member.name] = data
    if row is None:
        raise ValueError(f"part {url} has no metadata row")
    return row, files


def read_metadata(output: str, shard_id: str) -> list[dict[str, Any]]:
    url = join(output, "metadata", f"{shard_id}.parquet")
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    with fs.open(path, "rb") as f:
        return pq.read_table(f).to_pylist()


def shards_with_parts(output: str) -> set[str]:
    """Shards that have pairs waiting to be compacted."""
    fs, path = filesystem(join(output, "_parts"))
    if not fs.exists(path):
        return set()
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False) if fs.isdir(p)}


def finished_rows(output: str, shard_id: str) -> dict[str, dict[str, Any]]:
    """Pair id -> the newest row of every pair a shard has: its compacted metadata, overridden by the
    parts of a run that has not been compacted."""
    rows = {pair_id(r["key"], r["variant"]): r for r in read_metadata(output, shard_id)}
    for url in list_files(join(output, "_parts", shard_id), ".tar"):
        try:
            row, _ = read_part(url)
        except Exception:  # noqa: BLE001 - an unreadable part is redone
            continue
        rows[pair_id(row["key"], row["variant"])] = row
    return rows


def completed_pairs(output: str, shard_id: str) -> set[str]:
    """Pair ids already ok for a shard: in its compacted metadata or in a part of an interrupted run."""
    return {pid for pid, row in finished_rows(output, shard_id).items() if row["status"] == "ok"}


ROW_TYPES = {
    **{c: pa.float32() for c in SCORE_COLUMNS},
    "passed": pa.bool_(),
    "failed_checks": pa.list_(pa.string()),
    "window_seeds": pa.list_(pa.int64()),
    "seam_steps": pa.list_(pa.float32()),
    "seam_step_max": pa.float32(),
    "window_edit_hold": pa.list_(pa.float32()),
    **{digest_column(ext): pa.string() for ext in ("json", "mp4", "png", "safetensors")},
}  # columns that may be null in every row of a shard, typed so that all shards share one schema


def rows_table(rows: list[dict[str, Any]]) -> pa.Table:
    """The rows as a table with every column any row has (older rows lack newer columns: null there)."""
    names = list(dict.fromkeys(k for r in rows for k in r))
    columns = {}
    for name in names:
        values = [r.get(name) for r in rows]
        columns[name] = pa.array(values, type=ROW_TYPES.get(name))
    return pa.table(columns) if names else pa.table({})


def tar_url(output: str, place: str, shard_id: str) -> str:
    """Where a shard's ok pairs go: `shards/` or, routed aside by the thresholds, `filtered/shards/`."""
    return join(output, *PLACES[place], f"{shard_id}.tar")


PLACES = {"shards": ("shards",), "filtered": ("filtered", "shards")}


def place_of(row: dict[str, Any]) -> str | None:
    """The tar an ok row's files belong in (older rows have no `routed`: shards/)."""
    return (row.get("routed") or "shards") if row["status"] == "ok" else None


class _ShardFiles:
    """The files of every pair in a shard's current tars, read member by member on demand."""

    def __init__(self, output: str, shard_id: str):
        self.handles, self.where = [], {}
        for place in PLACES:
            fs, path = filesystem(tar_url(output, place, shard_id))
            if not fs.exists(path):
                continue
            f = fs.open(path, "rb")
            tar = tarfile.open(fileobj=f, mode="r:")
            self.handles.append((f, tar))
            for m in tar.getmembers():
                key, ext = split_member(m.name)
                pair = (key, ext.split(".")[0])
                if self.where.setdefault(pair, (place, tar, []))[0] == place:  # in both (a cut move): the first
                    self.where[pair][2].append(m)

    def place(self, pair: tuple[str, str]) -> str | None:
        return self.where[pair][0] if pair in self.where else None

    def files(self, pair: tuple[str, str]) -> dict[str, bytes]:
        _, tar, members = self.where.get(pair, (None, None, []))
        return {m.name: tar.extractfile(m).read() for m in members}

    def close(self) -> None:
        for f, tar in self.handles:
            tar.close()
            f.close()


def _write_tars(output: str, shard_id: str, contents: dict[str, list[tuple[str, str]]], fetch) -> None:
    """Each place's tar with exactly these pairs, in order; a filtered tar that would be empty is removed.
    The current tars are opened afresh for each tar written: on an object store a handle opened before a
    tar was replaced would read the old object's bytes, which the store no longer serves."""
    for place, pairs in contents.items():
        url = tar_url(output, place, shard_id)
        if place != "shards" and not pairs:
            remove(url)
            continue
        current = _ShardFiles(output, shard_id)
        try:
            with atomic_output(url) as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as out:
                for pair in sorted(pairs):
                    files = fetch(pair, current)
                    for name in sorted(files):
                        _add(out, name, files[name])
        finally:
            current.close()


def compact_shard(output: str, shard_id: str) -> dict[str, int]:
    """Merge a shard's parts into its tars and Parquet file. Idempotent; returns row counts.

    A part holds a pair's row and files, or only a row (`anyv2v-batch score`: new scores and verdict for
    files already in a tar). Ok pairs go to `shards/` or, when routed aside, `filtered/shards/`. When a
    pair moves between the two, both tars are first written with the moved pairs in both places and only
    then without them, so that a compaction cut at any point leaves every pair's files in some tar (and
    its part or old row saying where they belong) for the next run to finish."""
    parts = list_files(join(output, "_parts", shard_id), ".tar")
    rows = {(r["key"], r["variant"]): (r, None) for r in read_metadata(output, shard_id)}
    for url in parts:
        try:
            row, _ = read_part(url)
        except Exception:  # noqa: BLE001 - a torn part (should not happen: parts are atomic) is redone
            continue
        rows[(row["key"], row["variant"])] = (row, url)
    wanted: dict[str, list[tuple[str, str]]] = {place: [] for place in PLACES}
    for pair, (row, _) in rows.items():
        if place_of(row):
            wanted[place_of(row)].append(pair)

    def fetch(pair: tuple[str, str], current: _ShardFiles) -> dict[str, bytes]:
        url = rows[pair][1]
        files = read_part(url)[1] if url is not None else {}
        return files or current.files(pair)  # a row-only part: the files stay as they are

    current = _ShardFiles(output, shard_id)
    try:
        places = {pair: current.place(pair) for pair in rows}
    finally:
        current.close()
    moving = {p for place, pairs in wanted.items() for p in pairs if places[p] not in (None, place)}
    if moving:  # first: every moved pair in both tars
        both = {
            place: sorted(set(pairs) | {p for p in moving if places[p] == place}) for place, pairs in wanted.items()
        }
        _write_tars(output, shard_id, both, fetch)
    _write_tars(output, shard_id, wanted, fetch)
    ordered = [row for _, (row, _) in sorted(rows.items())]
    buffer = io.BytesIO()
    pq.write_table(rows_table(ordered), buffer)
    atomic_write(join(output, "metadata", f"{shard_id}.parquet"), buffer.getvalue())
    for url in parts:
        remove(url)
    remove(join(output, "_parts", shard_id))
    ok = sum(r["status"] == "ok" for r in ordered)
    filtered = sum(place_of(r) == "filtered" for r in ordered)
    return {"rows": len(ordered), "ok": ok, "error": len(ordered) - ok, "filtered": filtered}
