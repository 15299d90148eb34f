"""`anyv2v-batch score OUT`: score (or rescore) an existing output in place, without making any clip again.

    output shards -> pairs whose scores are not the current settings' -> written clip + source clip
                  -> scorer pool -> row-only parts -> (per shard) compact: new columns, files re-routed

Per shard and atomic like a run's compaction, and resumable: an interrupted run or score is finished
first (its parts are complete), and pairs already scored with the current settings are skipped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.job import JobSpec, PoolSpec
from anyv2v_batch.pipelines.anyv2v_job import JobSummary, init_ray


def check_output(output: str) -> list[str]:
    """The output's shard names; refuses what is not an anyv2v-batch output."""
    from anyv2v_batch.operators.storage import join, list_files

    tables = list_files(join(output, "metadata"), ".parquet")
    if not tables:
        raise AnyV2VError(
            f"{output} is not an anyv2v-batch output (no metadata/*.parquet); give the folder `run` wrote"
        )
    return [t.rstrip("/").rsplit("/", 1)[-1][: -len(".parquet")] for t in tables]


def source_map(rows: list[dict[str, Any]], sources: tuple[str, ...]) -> dict[str, str]:
    """Each row's source shard -> where to read it now: itself, or the `--sources` shard of the same file
    name (sources moved since the run). Refuses a source that cannot be found, before any work."""
    from anyv2v_batch.operators.storage import expand_inputs, filesystem, shard_id

    moved = {shard_id(url): url for url in expand_inputs(sources)} if sources else {}
    out = {}
    for source in sorted({r["source_shard"] for r in rows}):
        url = moved.get(shard_id(source), source)
        fs, path = filesystem(url)
        if not fs.exists(path):
            hint = "" if sources else "; give where the source shards are now with --sources"
            raise AnyV2VError(f"source shard {url!r} of the output's clips does not exist{hint}")
        out[source] = url
    return out


def plan(output: str, shards: list[str], current: str) -> tuple[list[dict[str, Any]], int]:
    """Per shard, the ok rows whose scores are not from the current evaluate settings or failed; and how
    many ok rows are already scored with them."""
    from anyv2v_batch.operators.write import read_metadata

    items, done = [], 0
    for sid in shards:
        rows = [r for r in read_metadata(output, sid) if r["status"] == "ok"]
        # rows scored with other settings, and rows that could not be scored (a source that could not be
        # read, the scorer out of memory): tried again
        todo = [r for r in rows if (r.get("evaluate_fingerprint") or "") != current or r.get("score_error")]
        done += len(rows) - len(todo)
        if todo:
            items.append({"shard_id": sid, "rows": todo})
    return items, done


def scorer_pools(job: JobSpec) -> dict[str, PoolSpec]:
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    use_gpus = gpus > 0 and job.device != "cpu"
    scorer = job.pool("scorer")
    if scorer.num_gpus is None:
        scorer = dataclasses.replace(scorer, num_gpus=1.0 if use_gpus else 0.0)
    if scorer.size is None:
        scorer = dataclasses.replace(scorer, size=max(1, int(gpus // scorer.num_gpus)) if scorer.num_gpus else 1)
    decode = job.pool("decode")
    if not scorer.num_gpus and scorer.num_cpus * scorer.size + decode.num_cpus > cpus and not job.ray_address:
        share = max(0.1, cpus / (scorer.size + 1))
        scorer = dataclasses.replace(scorer, num_cpus=min(scorer.num_cpus, share))
        decode = dataclasses.replace(decode, num_cpus=min(decode.num_cpus, share))
    encode = dataclasses.replace(job.pool("encode"), num_cpus=decode.num_cpus)
    return {"scorer": scorer, "decode": decode, "encode": encode}


def run_score(
    job: JobSpec,
    log: Callable[[str], None] = lambda s: None,
    sources: tuple[str, ...] = (),
    display=None,
    name: str = "edited",
) -> JobSummary:
    """Score every ok pair of `job.output` whose scores are not the job's evaluate settings', in place; or,
    with `job.input` (clips edited by another tool), score those against `sources` into `job.output`,
    under the variant `name`."""
    from anyv2v_batch.evaluation import check_scorer
    from anyv2v_batch.operators.lock import OutputLock
    from anyv2v_batch.operators.storage import check_writable
    from anyv2v_batch.scores import scoring_identity

    started = time.perf_counter()
    if not job.evaluate.enabled:
        raise AnyV2VError("score needs scoring switched on: --evaluate (or --set evaluate.mode=score, flag or route)")
    output = job.output
    check_scorer(job.evaluate, job.device)
    if job.input:
        return run_score_edited(job, log, sources, display, started, name)
    shards = check_output(output)
    check_writable(output, "output")
    job = dataclasses.replace(job, scoring=scoring_identity(job.evaluate))
    with OutputLock(output):
        return _score_locked(job, shards, sources, log, started, display)


def source_index(sources: tuple[str, ...], job: JobSpec) -> dict[str, str]:
    """key -> the source shard holding it, from the shards' tar headers (no video is read here)."""
    from anyv2v_batch.operators.read_shards import sample_keys
    from anyv2v_batch.operators.storage import expand_inputs

    index: dict[str, str] = {}
    for url in expand_inputs(sources):
        for key in sample_keys(url, job.limits):
            if key in index:
                raise AnyV2VError(f"source clip {key!r} is in both {index[key]!r} and {url!r}; keys must be unique")
            if key:
                index[key] = url
    return index


def run_score_edited(
    job: JobSpec, log, sources: tuple[str, ...], display, started: float, name: str = "edited"
) -> JobSummary:
    """`score OUT --input EDITED --sources SOURCES`: clips edited by another tool (a plain WebDataset of
    `<key>.mp4`, an optional `<key>.edited.png` and a prompt in `.json` / `.txt`) scored against their
    sources, into a new output of the usual layout (their clips in shards/ or filtered/shards/, a row each)."""
    from anyv2v_batch.operators.lock import OutputLock
    from anyv2v_batch.operators.read_shards import sample_keys
    from anyv2v_batch.operators.storage import check_writable
    from anyv2v_batch.operators.work import pair_id
    from anyv2v_batch.operators.write import finished_rows
    from anyv2v_batch.pipelines.anyv2v_job import input_shards
    from anyv2v_batch.pipelines.progress import JobProgress
    from anyv2v_batch.scores import scoring_identity

    if not sources:
        raise AnyV2VError("scoring clips made by another tool needs their source clips: give --sources SHARDS")
    if job.output.rstrip("/") in {i.rstrip("/") for i in (*job.input, *sources)}:
        raise AnyV2VError("the output is the same as an input; choose another location")
    shards = input_shards(job)  # edited shards: exist, names unique
    index = source_index(sources, job)
    check_writable(job.output, "output")
    job = dataclasses.replace(job, scoring=scoring_identity(job.evaluate))
    with OutputLock(job.output):
        items, done, total = [], 0, 0
        for sid, url in shards.items():
            rows = finished_rows(job.output, sid)
            current = sorted(
                p for p, r in rows.items() if r["status"] == "ok" and r.get("evaluate_fingerprint") == job.scoring[0]
            )
            done += len(current)
            total += sum(pair_id(key, name) not in set(current) for key in sample_keys(url, job.limits))
            items.append({"shard": url, "shard_id": sid, "done": current, "sources": index})
        log(f"{len(items)} shards of edited clips; {done} already scored with these settings in {job.output}")
        progress = JobProgress(
            total, job.output, {"scorer": 1}, unit="clips scored", done_before=done, display=display,
            routes_failures=job.evaluate.mode == "route",
        )  # fmt: skip
        with progress.running():
            from anyv2v_batch.operators.rescore import external_parts, read_edited_samples

            failed_checks = _scoring_dataset(job, items, read_edited_samples, external_parts, progress, name=name)
    return JobSummary(
        output=job.output, unit="edited clips scored", shards=len(items), pairs_done_before=done,
        processed=progress.done, ok=progress.ok + progress.filtered, errors=progress.error,
        seconds=time.perf_counter() - started, error_examples=[], filtered=progress.filtered,
        failed_checks=failed_checks,
    )  # fmt: skip


def _score_locked(
    job: JobSpec, shards: list[str], sources: tuple[str, ...], log, started: float, display
) -> JobSummary:
    from anyv2v_batch.operators.write import compact_shard, shards_with_parts
    from anyv2v_batch.pipelines.progress import JobProgress

    output = job.output
    for sid in sorted(shards_with_parts(output)):  # an interrupted run or score: its parts are complete
        compact_shard(output, sid)
    items, done = plan(output, shards, job.scoring[0])
    todo = sum(len(i["rows"]) for i in items)
    log(f"{len(shards)} shards; {todo} pairs to score, {done} already scored with these settings in {output}")
    where = source_map([r for i in items for r in i["rows"]], sources)
    failed_checks = 0
    progress = JobProgress(
        todo, output, {"scorer": 1}, unit="pairs scored", done_before=done, display=display,
        routes_failures=job.evaluate.mode == "route",
    )  # fmt: skip
    with progress.running():
        if items:
            from anyv2v_batch.operators.rescore import read_pairs_to_score, rescored_parts

            rows = [{**i, "rows": [json.dumps(r, default=list) for r in i["rows"]], "sources": where} for i in items]
            failed_checks = _scoring_dataset(job, rows, read_pairs_to_score, rescored_parts, progress)
    return JobSummary(
        output=output,
        unit="(clip, variant) pairs scored",
        shards=len(shards),
        pairs_done_before=done,
        processed=progress.done,
        ok=progress.done,
        errors=0,
        seconds=time.perf_counter() - started,
        error_examples=[],
        filtered=progress.filtered,
        failed_checks=failed_checks,
    )


def _scoring_dataset(job: JobSpec, items: list[dict[str, Any]], read, to_parts, progress, **read_kwargs) -> int:
    """Items -> `read` (ClipWork per clip) -> decode the sources -> scorer pool -> `to_parts` -> parts,
    then each touched shard compacted; returns how many pairs failed their checks."""
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    from anyv2v_batch.operators.decode import decode_whole
    from anyv2v_batch.operators.scorer_pool import ScorerPool
    from anyv2v_batch.operators.storage import join, remove_if_empty
    from anyv2v_batch.operators.write import compact_shard, write_part

    init_ray(job)
    pools = scorer_pools(job)
    progress.pool_sizes = {"scorer": pools["scorer"].size}  # known once Ray is up
    scorer, decode, encode = pools["scorer"], pools["decode"], pools["encode"]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.flat_map(read, fn_kwargs={"job": job, **read_kwargs}, num_cpus=decode.num_cpus)
    ds = ds.map(decode_whole, num_cpus=decode.num_cpus, compute=TaskPoolStrategy(size=decode.size))
    ds = ds.map_batches(
        ScorerPool, compute=ActorPoolStrategy(size=scorer.size), batch_size=scorer.batch_size,
        num_gpus=scorer.num_gpus, num_cpus=scorer.num_cpus,
        fn_constructor_kwargs={"job": job, "num_cpus": scorer.num_cpus},
    )  # fmt: skip
    ds = ds.flat_map(to_parts, fn_kwargs={"job": job}, num_cpus=encode.num_cpus)
    ds = ds.map(write_part, fn_kwargs={"output": job.output}, num_cpus=encode.num_cpus)
    failed_checks = 0
    for row in ds.iter_rows():
        progress.add(row)
        failed_checks += row.get("passed") is False
    compact = ray.remote(compact_shard).options(num_cpus=encode.num_cpus)
    ray.get([compact.remote(job.output, i["shard_id"]) for i in items])
    remove_if_empty(join(job.output, "_parts"))
    return failed_checks
