"""`anyv2v-batch verify`: scrub an output (or an inversions store) against the digests its rows record,
and repair what is damaged.

One streaming pass: each shard's Parquet file is read once, each tar streamed once with every member
hashed in chunks (no member is held whole in memory, except a stored inversion without a recorded
digest, whose own content digest is checked). What it finds, per shard:

- a member whose SHA-256 is not the one its row records (damaged), an ok row's member that is not there
  (missing), a member no ok row places there (extra), a member twice (duplicate);
- a Parquet file that cannot be read, a tar that cannot be read to its end, a tar without rows;
- anywhere under the output: temporary names left by a writer that died (`.<name>.<random>.tmp`), and
  pairs of an unfinished run waiting in `_parts/`.

`repair_output` remakes exactly the damaged pairs with the settings their rows record (checked against
the row's settings fingerprint, weights included, before any work), drops extra members, removes
leftovers and finishes unfinished runs; since a pair's bytes do not depend on what else a run holds,
the repaired files are byte-identical to a fresh run's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow.parquet as pq

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.integrity import CHUNK, DIGEST_SUFFIX, digest_column, member_digest_columns
from anyv2v_batch.operators.read_shards import split_member
from anyv2v_batch.operators.storage import filesystem, join, list_files
from anyv2v_batch.operators.work import pair_id
from anyv2v_batch.operators.write import PLACES, place_of, tar_url

MAX_LISTED = 200  # damaged pairs listed in the table (all are counted)


@dataclasses.dataclass(frozen=True)
class Problem:
    shard_id: str
    key: str  # "" for a problem of a whole file
    variant: str
    where: str  # the member or file, relative to the output
    what: str  # "damaged", "missing", "extra", "duplicate", "unreadable", "no rows", "leftover", "unfinished"
    detail: str = ""


@dataclasses.dataclass
class VerifyResult:
    output: str
    shards: int = 0
    rows: int = 0
    ok_rows: int = 0
    members: int = 0
    bytes: int = 0
    store: bool = False  # an inversions store (`.safetensors` entries), not an edit output
    unverified: int = 0  # members of rows written before digests: present, but nothing says what they should be
    seconds: float = 0.0
    problems: list[Problem] = dataclasses.field(default_factory=list)
    # the rows of the pairs with a problem (what a repair remakes them from)
    rows_by_pair: dict[tuple[str, str, str], dict[str, Any]] = dataclasses.field(default_factory=dict, repr=False)

    @property
    def clean(self) -> bool:
        return not self.problems

    def damaged_pairs(self) -> set[tuple[str, str, str]]:
        """(shard id, key, variant) of every pair whose files are damaged or missing."""
        return {(p.shard_id, p.key, p.variant) for p in self.problems if p.key and p.what in ("damaged", "missing")}

    def line(self) -> str:
        gb = self.bytes / 1e9
        head = (
            f"{self.output}: {self.shards} shards, {self.rows} rows ({self.ok_rows} ok), {self.members} members "
            f"({gb:.3g} GB) checked in {self.seconds:.1f} s"
        )
        if self.unverified:
            head += f"; {self.unverified} members have no recorded digest (written before digests)"
        if self.clean:
            return head + "; no problem found"
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[p.what] = counts.get(p.what, 0) + 1
        found = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
        pairs = len(self.damaged_pairs())
        return head + f"; PROBLEMS: {found} ({pairs} pairs to remake); `verify --repair` repairs them"

    def table(self) -> str:
        rows = [("shard", "key", "variant", "where", "problem")]
        for p in self.problems[:MAX_LISTED]:
            rows.append((p.shard_id, p.key, p.variant, p.where, p.what + (f": {p.detail}" if p.detail else "")))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"... and {len(self.problems) - MAX_LISTED} more")
        return "\n".join(lines)


def _relative(output: str, url: str) -> str:
    _, root = filesystem(output)
    _, path = filesystem(url)
    return posixpath.relpath(path, root) if path.startswith(root) else url


def shard_ids(output: str) -> list[str]:
    """Every shard an output has a Parquet file or a tar of."""
    ids = {posixpath.basename(u)[: -len(".parquet")] for u in list_files(join(output, "metadata"), ".parquet")}
    for place in PLACES:
        ids |= {
            posixpath.basename(u)[: -len(".tar")]
            for u in list_files(posixpath.dirname(tar_url(output, place, "x")), ".tar")
        }
    return sorted(ids)


def read_rows(output: str, shard_id: str) -> list[dict[str, Any]] | None:
    """A shard's rows, None when it has no Parquet file; raises when the file cannot be read."""
    fs, path = filesystem(join(output, "metadata", f"{shard_id}.parquet"))
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return pq.read_table(f).to_pylist()


def _stream_hashed(url: str) -> Iterator[tuple[str, int, str, bytes | None]]:
    """(member name, size, SHA-256, bytes or None) of a tar's file members in one streaming pass; bytes
    only of `.safetensors` members (their own digest is checked when the row records none)."""
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            if not member.isfile():
                yield member.name, -1, "", None
                continue
            handle = tar.extractfile(member)
            h, kept = hashlib.sha256(), [] if member.name.endswith(".safetensors") else None
            while chunk := handle.read(CHUNK):
                h.update(chunk)
                if kept is not None:
                    kept.append(chunk)
            yield member.name, member.size, h.hexdigest(), b"".join(kept) if kept is not None else None
            tar.members.clear()  # tarfile keeps every header it has read


def _leftovers(output: str, result: VerifyResult) -> None:
    """Temporary names of writers that died, and pairs of a run that has not finished, anywhere under it."""
    fs, root = filesystem(output)
    for path in sorted(fs.find(root)):
        name = posixpath.basename(path)
        if name.startswith(".") and name.endswith(".tmp"):
            rel = posixpath.relpath(path, root)
            result.problems.append(
                Problem("", "", "", rel, "leftover", "a temporary file of a write that never finished")
            )
    parts_root = join(output, "_parts")
    fs, parts = filesystem(parts_root)
    if fs.exists(parts):
        for folder in sorted(fs.ls(parts, detail=False)):
            sid = posixpath.basename(folder.rstrip("/"))
            n = len([p for p in fs.ls(folder, detail=False) if p.endswith(".tar")]) if fs.isdir(folder) else 0
            if n:
                result.problems.append(
                    Problem(sid, "", "", f"_parts/{sid}", "unfinished", f"{n} finished pairs of a run that did not end")
                )


def _content_problem(data: bytes) -> str:
    from anyv2v_batch.inversion import inversion_from_bytes

    try:
        inversion_from_bytes(data)
    except ValueError as e:
        return str(e)
    return ""


def verify_shard(output: str, shard_id: str, result: VerifyResult) -> None:
    problems = result.problems
    try:
        rows = read_rows(output, shard_id)
    except Exception as e:  # noqa: BLE001 - any failure to read it: the file is damaged
        detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        problems.append(Problem(shard_id, "", "", f"metadata/{shard_id}.parquet", "unreadable", detail))
        rows = None
        readable = False
    else:
        readable = True
    by_pair = {(r["key"], r["variant"]): r for r in rows or []}
    result.rows += len(by_pair)
    expected: dict[tuple[str, str], tuple[str, str, str]] = {}  # (place, member) -> (key, variant, digest)
    before = len(problems)
    for (key, variant), row in by_pair.items():
        result.store = result.store or "safetensors" + DIGEST_SUFFIX in row
        if row["status"] != "ok":
            continue
        result.ok_rows += 1
        for ext, digest in member_digest_columns(row).items():
            expected[(place_of(row), f"{key}.{variant}.{ext}")] = (key, variant, digest)
    seen: set[tuple[str, str]] = set()
    for place in PLACES:
        url = tar_url(output, place, shard_id)
        fs, path = filesystem(url)
        if not fs.exists(path):
            continue
        rel = _relative(output, url)
        if rows is None and readable:
            where = f"metadata/{shard_id}.parquet"
            problems.append(Problem(shard_id, "", "", where, "missing", f"{rel} has no rows"))
        try:
            for name, size, digest, data in _stream_hashed(url):
                key, rest = split_member(name)
                variant, _, ext = rest.partition(".")
                if size < 0:
                    problems.append(Problem(shard_id, key, variant, f"{rel}:{name}", "extra", "not a file"))
                    continue
                result.members += 1
                result.bytes += size
                result.store = result.store or ext == "safetensors"
                if rows is None:
                    continue  # no rows to check against: the shard's problem is already said
                if (place, name) in seen:
                    problems.append(Problem(shard_id, key, variant, f"{rel}:{name}", "duplicate"))
                    continue
                seen.add((place, name))
                row = by_pair.get((key, variant))
                if (place, name) in expected:
                    if expected[(place, name)][2] != digest:
                        what = f"its SHA-256 is not the {digest_column(ext)} its row records"
                        problems.append(Problem(shard_id, key, variant, f"{rel}:{name}", "damaged", what))
                elif (
                    row is not None
                    and row["status"] == "ok"
                    and place_of(row) == place
                    and not member_digest_columns(row)
                ):
                    result.unverified += 1  # a row written before digests
                    if data is not None and (why := _content_problem(data)):
                        problems.append(Problem(shard_id, key, variant, f"{rel}:{name}", "damaged", why))
                else:
                    why = "no ok row places it here" if row is None or row["status"] == "ok" else "its row is an error"
                    problems.append(Problem(shard_id, key, variant, f"{rel}:{name}", "extra", why))
        except (OSError, tarfile.TarError, EOFError) as e:
            detail = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            problems.append(Problem(shard_id, "", "", rel, "unreadable", detail))
    for (place, name), (key, variant, _) in sorted(expected.items()):
        if (place, name) not in seen:
            rel = _relative(output, tar_url(output, place, shard_id))
            problems.append(Problem(shard_id, key, variant, f"{rel}:{name}", "missing"))
    for p in problems[before:]:
        if (p.key, p.variant) in by_pair:
            result.rows_by_pair[(shard_id, p.key, p.variant)] = by_pair[(p.key, p.variant)]


def check_not_running(output: str) -> None:
    """Refuse to verify an output a live run is writing (its parts and tars change under the scrub)."""
    from anyv2v_batch.operators.lock import OutputLock

    held = OutputLock(output).holder()
    if held is not None:
        raise AnyV2VError(
            f"{output} is being written by a run (host {held.get('host')}, pid {held.get('pid')}); verify it after "
            "that run ends"
        )


def verify_output(
    output: str, log: Callable[[str], None] = lambda s: None, shards: set[str] | None = None
) -> VerifyResult:
    """Check every member of an output or inversions store against its row, once, streaming (`shards`:
    only these shards, and no look for leftovers)."""
    fs, path = filesystem(output)
    if not fs.exists(path) or not fs.isdir(path):
        raise AnyV2VError(f"{output!r} is not an output folder (nothing is there)")
    check_not_running(output)
    started = time.perf_counter()
    result = VerifyResult(output)
    ids = shard_ids(output)
    if not ids:
        raise AnyV2VError(f"{output!r} holds no metadata/*.parquet and no shards/*.tar: not a job's output")
    for sid in ids:
        if shards is None or sid in shards:
            verify_shard(output, sid, result)
            result.shards += 1
    if shards is None:
        _leftovers(output, result)
    result.seconds = time.perf_counter() - started
    log(result.line())
    return result


# ---- repair


def _unflatten(fields: dict[str, Any], prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if not name.startswith(prefix + "."):
            continue
        node = out
        *parents, leaf = name[len(prefix) + 1 :].split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def recorded_variant(name: str, model: str | None, fields: dict[str, Any]) -> dict[str, Any]:
    """A job file's variant entry that makes what a row's `settings_fields` record."""
    return {
        "name": name,
        "backbone": fields["backbone"],
        "model": model,
        "seed": fields["seed"],
        "edit_prompt": fields.get("edit_prompt", ""),
        "editor": {"name": fields["editor.name"], "options": _unflatten(fields, "editor.options")},
        **{s: _unflatten(fields, s) for s in ("clip", "inversion", "edit", "window")},
    }


@dataclasses.dataclass
class Remake:
    """The pairs to remake and what makes them: rows (or `.json` records) grouped by input shard."""

    rows: list[dict[str, Any]]  # each with shard_id, key, variant, source_shard, model, settings_fields, ...
    unrepairable: list[tuple[tuple[str, str, str], str]]


def pairs_to_remake(output: str, result: VerifyResult) -> Remake:
    """Each damaged pair with what made it: its row, or, where its shard's Parquet is unreadable, the
    settings in its `.json` member (which records the same fields; their fingerprint proves them)."""
    from anyv2v_batch.fingerprint import fingerprint

    rows, unrepairable = [], []
    for sid, key, variant in sorted(result.damaged_pairs()):
        row = result.rows_by_pair.get((sid, key, variant))
        if row is None or not row.get("settings_fields"):
            unrepairable.append(((sid, key, variant), "its row records no settings (written before `settings_fields`)"))
            continue
        rows.append(dict(row, shard_id=sid))
    for p in result.problems:
        if p.what != "unreadable" or not p.where.startswith("metadata/"):
            continue
        for place in PLACES:
            url = tar_url(output, place, p.shard_id)
            try:
                for name, record in _json_members(url):
                    fields = record.get("settings_fields")
                    pair = (p.shard_id, record.get("key", ""), record.get("variant", ""))
                    if not isinstance(fields, dict) or fingerprint(fields) != record.get("settings_fingerprint"):
                        unrepairable.append((pair, f"{name}: its settings record is damaged or incomplete"))
                        continue
                    rows.append({
                        "shard_id": p.shard_id, "key": pair[1], "variant": pair[2],
                        "source_shard": record.get("source_shard", ""), "model": record.get("model") or "",
                        "settings_fields": json.dumps(fields, sort_keys=True),
                        "settings_fingerprint": record["settings_fingerprint"], "evaluate_fingerprint": "",
                    })  # fmt: skip
            except (OSError, tarfile.TarError, EOFError):
                continue  # an unreadable tar too: what it held is lost with the rows
    return Remake(rows, unrepairable)


def _json_members(url: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, record) of a tar's readable `.json` members."""
    from anyv2v_batch.pipelines.report import stream_members

    fs, path = filesystem(url)
    if not fs.exists(path):
        return
    for name, data in stream_members(url, lambda n: n.endswith(".json")):
        try:
            yield name, json.loads(data)
        except ValueError:
            continue


def repair_jobs(output: str, remake: Remake, flags: dict[str, Any]) -> list[Any]:
    """Jobs that remake exactly the pairs in `remake`: one per set of variant settings that fit in one job
    (a variant name bound to one fingerprint), each limited to its pairs by `only_pairs`."""
    from anyv2v_batch.job import build_job

    passes: list[dict[str, Any]] = []  # {"variants": {name: (fingerprint, entry)}, "rows": [...]}
    scoring: dict[str, str] = {}
    for row in remake.rows:
        fields = json.loads(row["settings_fields"])
        entry = recorded_variant(row["variant"], row.get("model") or None, fields)
        fp = row["settings_fingerprint"]
        if row.get("evaluate_fingerprint"):
            scoring[row["evaluate_fingerprint"]] = row.get("scorer", "")
        target = next((p for p in passes if p["variants"].get(row["variant"], (fp,))[0] == fp), None)
        if target is None:
            target = {"variants": {}, "rows": [], "fields": {}}
            passes.append(target)
        target["variants"][row["variant"]] = (fp, entry)
        target["fields"][row["variant"]] = fields
        target["rows"].append(row)
    if len(scoring) > 1:
        raise AnyV2VError("the damaged pairs were scored by different scorers; repair them one scorer at a time")
    jobs = []
    for p in passes:
        any_fields = next(iter(p["fields"].values()))
        raw = {
            "input": sorted({r["source_shard"] for r in p["rows"]}),
            "output": output,
            "dtype": any_fields.get("dtype", "auto"),
            "share_source": any_fields.get("share_source", True),
            "accept_noncommercial_models": True,  # accepted by the run that made them
            "variants": [entry for _, entry in p["variants"].values()],
            **({"weights_variant": any_fields["weights_variant"]} if any_fields.get("weights_variant") else {}),
            **({"evaluate": _evaluate_record(next(iter(scoring.values())))} if scoring else {}),
        }
        job = build_job(raw, "the rows' recorded settings", flags)
        only = frozenset(f"{r['shard_id']}/{pair_id(r['key'], r['variant'])}" for r in p["rows"])
        jobs.append((dataclasses.replace(job, only_pairs=only), {n: fp for n, (fp, _) in p["variants"].items()}))
    return jobs


def _evaluate_record(scorer: str) -> dict[str, Any]:
    record = json.loads(scorer)
    return {k: record[k] for k in ("mode", "model", "aesthetic", "dtype", "thresholds") if record.get(k) is not None}


@dataclasses.dataclass
class RepairSummary:
    remade: int = 0
    dropped_entries: int = 0
    remade_entries: int = 0
    store: bool = False
    rewritten_shards: int = 0
    removed_leftovers: int = 0
    finished_runs: int = 0
    unrepairable: list[tuple[tuple[str, str, str], str]] = dataclasses.field(default_factory=list)
    rescore: list[str] = dataclasses.field(default_factory=list)  # shards whose recovered pairs lost their scores

    def line(self) -> str:
        remade = (
            f"{self.remade_entries} damaged inversions made again, "
            f"{self.dropped_entries - self.remade_entries} dropped, "
            if self.store
            else f"{self.remade} pairs remade, "
        )
        done = (
            f"repaired: {remade}"
            f"{self.rewritten_shards} shard tars rewritten, {self.removed_leftovers} leftover files removed, "
            f"{self.finished_runs} unfinished runs compacted"
        )
        if self.unrepairable:
            what = "inversions" if self.store else "pairs"
            done += f"; {len(self.unrepairable)} {what} could not be repaired (listed above)"
        return done


def repair_output(
    output: str, result: VerifyResult, flags: dict[str, Any] | None = None, log: Callable[[str], None] = lambda s: None
) -> RepairSummary:
    """Repair what `verify_output` found, under the output's lock: every check (settings, weights,
    inputs) before anything is changed."""
    from anyv2v_batch.fingerprint import changed_fields, job_fingerprints
    from anyv2v_batch.operators.lock import OutputLock
    from anyv2v_batch.operators.storage import remove
    from anyv2v_batch.operators.write import compact_shard, shards_with_parts
    from anyv2v_batch.pipelines.anyv2v_job import check_job, check_models, input_shards, with_window_limits

    store = result.store
    summary = RepairSummary(store=store)
    remake = Remake([], []) if store else pairs_to_remake(output, result)
    summary.unrepairable = remake.unrepairable
    jobs = []
    for job, fingerprints in repair_jobs(output, remake, flags or {}) if remake.rows else []:
        check_job(job)
        check_models(job)
        job = with_window_limits(job_fingerprints(job))
        for name, fp in fingerprints.items():
            now, recorded = (
                job.fingerprints[name],
                next(json.loads(r["settings_fields"]) for r in remake.rows if r["variant"] == name),
            )
            if now[0] != fp:
                raise AnyV2VError(
                    f"cannot remake variant {name!r} as it was made: {changed_fields(recorded, json.loads(now[1]))}; "
                    "restore those weights / settings, or rerun the job with --redo-changed"
                )
        jobs.append((job, input_shards(job)))  # the inputs must still be there
    if store:
        for job, fields in store_repair_jobs(output, result, summary.unrepairable, flags or {}):
            check_job(job)
            job = with_window_limits(job_fingerprints(job))
            now = job.weights_of(fields["backbone"], fields["model"])
            if now != fields["weights"]:
                raise AnyV2VError(
                    f"cannot make the damaged inversions again as they were made: the weights of "
                    f"{fields['model'] or fields['backbone']} are not the ones they were made with "
                    f"({fields['weights']} -> {now}); restore them, or leave the entries dropped with `invert` later"
                )
            jobs.append((job, input_shards(job)))
    for pair, why in summary.unrepairable:
        log(f"  cannot repair {'/'.join(pair)}: {why}")

    with OutputLock(output):
        for p in result.problems:
            if p.what == "leftover":
                remove(join(output, p.where))
                summary.removed_leftovers += 1
        unfinished = {p.shard_id for p in result.problems if p.what == "unfinished"}
        for sid in sorted(unfinished & shards_with_parts(output)):
            compact_shard(output, sid)
            summary.finished_runs += 1
        for p in result.problems:  # rows recovered from the `.json` members; the file itself is lost
            if p.where.startswith("metadata/") and p.what in ("unreadable", "missing"):
                remove(join(output, p.where))
                summary.rescore.append(p.shard_id)
            if p.what == "unreadable" and p.where.endswith(".tar") and not _opens(join(output, p.where)):
                remove(join(output, p.where))  # nothing in it could be read: every pair of it is remade
        if store:  # the damaged entries become error rows (their files go), then are made again
            summary.dropped_entries = _drop_entries(output, result)
            for sid in sorted(shards_with_parts(output)):
                compact_shard(output, sid)
        for job, shards in jobs:
            from anyv2v_batch.pipelines.anyv2v_job import _run_locked

            done = _run_locked(job, shards, output, log, "invert" if store else "edit", time.perf_counter())
            if store:
                summary.remade_entries += done.ok
            else:
                summary.remade += done.processed
        ran = {sid for _, shards in jobs for sid in shards}  # compacted by their run
        touched = {p.shard_id for p in result.problems if p.shard_id} - unfinished
        for sid in sorted(touched - ran):
            compact_shard(output, sid)  # rewrites the tars from the rows: extra and duplicate members go
            summary.rewritten_shards += 1
    for sid in sorted(set(summary.rescore)):
        log(f"  shard {sid}: its rows were lost and remade without scores; `anyv2v-batch score` scores them again")
    return summary


def store_repair_jobs(
    store: str, result: VerifyResult, unrepairable: list[tuple[tuple[str, str, str], str]], flags: dict[str, Any]
) -> list[tuple[Any, dict[str, Any]]]:
    """`invert` jobs that make exactly the damaged entries of a store again, as their rows record them
    (one job per set of settings): (job, the recorded fields). Entries whose rows record no settings
    (written before `settings_fields` was stored) are only dropped: the next `invert` makes them."""
    from anyv2v_batch.job import build_job

    groups: dict[str, dict[str, Any]] = {}
    for sid, key, inv_id in sorted(result.damaged_pairs()):
        row = result.rows_by_pair.get((sid, key, inv_id))
        if row is None or not row.get("settings_fields"):
            why = "its row records no settings: dropped, the next `invert` of its job makes it again"
            unrepairable.append(((sid, key, inv_id), why))
            continue
        fields = json.loads(row["settings_fields"])
        timesteps = tuple(int(t) for t in fields.pop("timesteps"))
        same = json.dumps(fields, sort_keys=True)
        group = groups.setdefault(same, {"fields": fields, "entries": {}, "inputs": set()})
        group["entries"][(sid, key, inv_id)] = timesteps
        group["inputs"].add(row["source_shard"])
    jobs = []
    for group in groups.values():
        f = group["fields"]
        inversion = _unflatten(f, "inversion")
        raw = {
            "input": sorted(group["inputs"]),
            "inversions": store,
            "dtype": f["dtype"],
            "accept_noncommercial_models": True,  # accepted by the run that made them
            # the edit plays no part: each entry keeps the timesteps it held (keep_timesteps)
            "variants": [{
                "name": "repair", "backbone": f["backbone"], "model": f["model"], "clip": _unflatten(f, "clip"),
                "inversion": inversion, "window": _unflatten(f, "window"), "edit": {"steps": inversion["steps"]},
            }],
            **({"weights_variant": f["weights_variant"]} if f.get("weights_variant") else {}),
        }  # fmt: skip
        job = build_job(raw, "the store rows' recorded settings", flags, mode="invert")
        jobs.append((dataclasses.replace(job, keep_timesteps=group["entries"]), f))
    return jobs


def _opens(url: str) -> bool:
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:"):
            return True
    except (OSError, tarfile.TarError, EOFError):
        return False


def _drop_entries(output: str, result: VerifyResult) -> int:
    """An inversions store: each damaged entry's row becomes an error row (a row-only part), so that
    compaction drops its file and the next `invert` of the job makes it again (it is not done)."""
    from anyv2v_batch.operators.encode import PairResult
    from anyv2v_batch.operators.storage import atomic_write
    from anyv2v_batch.operators.write import part_bytes, part_url

    n = 0
    for sid, key, variant in sorted(result.damaged_pairs()):
        row = result.rows_by_pair.get((sid, key, variant))
        if row is None:
            continue
        error = "stored inversion damaged; dropped by `verify --repair` (the next `invert` makes it again)"
        row = {**row, "status": "error", "error": error, "safetensors" + DIGEST_SUFFIX: None}
        pair = PairResult(row.get("source_shard", ""), sid, key, variant, "error", error, row, {})
        atomic_write(part_url(output, sid, key, variant), part_bytes(pair))
        n += 1
    return n


def mend_store(job: Any, shard_ids: set[str], log: Callable[[str], None]) -> RepairSummary | None:
    """After a run found stored inversions it could not use (damaged, or another clip's): verify the
    store's shards that hold them and make the damaged entries again, where the store is writable and no
    other job holds it. Entries that are only stale (made from other frames or settings, not damaged)
    are left for `invert` to judge."""
    from anyv2v_batch.operators.storage import check_writable

    store = job.inversions
    try:
        check_writable(store, "inversions store")
        check_not_running(store)
    except AnyV2VError as e:
        log(f"inversions store not repaired: {e}")
        return None
    result = verify_output(store, shards=shard_ids)
    if result.clean:
        return None
    log(f"inversions store: {result.line()}")
    flags: dict[str, Any] = {"device": job.device}
    if job.ray_address:
        flags["ray.address"] = job.ray_address
    for name, pool in job.pools.items():
        flags |= {f"pools.{name}.{k}": v for k, v in dataclasses.asdict(pool).items() if v is not None}
    summary = repair_output(store, result, flags, log)
    log(f"inversions store: {summary.line()}")
    return summary
