"""The AnyV2V batch job on Ray Data:

    shards -> read -> decode -> editor pool -> inversion pool -> sampler pool -> (scorer pool) -> encode
           -> parts -> (per shard) compact -> shards/*.tar (+ filtered/shards/*.tar) + metadata/*.parquet

Pairs already done in the output are skipped when the shards are read, so rerunning a job resumes it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.evaluation import EvaluateSettings
from anyv2v_batch.job import JobSpec, PoolSpec

if TYPE_CHECKING:
    from anyv2v_batch.pipelines.progress import ProgressDisplay

GPU_POOLS = ("editor", "inversion", "sampler", "scorer")
SCORER_GPU_SHARE = 0.1  # of one GPU, per scorer actor: scoring costs a few % of sampling (benchmarks/)


@dataclass
class JobSummary:
    output: str
    unit: str
    shards: int
    pairs_done_before: int
    processed: int
    ok: int
    errors: int
    seconds: float
    error_examples: list[str]
    pool_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    utilisation: dict[str, float] = dataclasses.field(default_factory=dict)
    filtered: int = 0  # ok pairs routed aside by the thresholds (counted in ok)
    failed_checks: int = 0  # ok pairs whose verdict is "failed" (flag or route)
    # shards of the inversions store whose entries were damaged or another clip's (verify.mend_store)
    unusable_store_shards: set[str] = dataclasses.field(default_factory=set)

    def line(self) -> str:
        judged = (
            f" ({self.failed_checks} failed the thresholds, {self.filtered} filtered)" if self.failed_checks else ""
        )
        return (
            f"{self.processed} {self.unit} processed: {self.ok} ok{judged}, {self.errors} errors; "
            f"{self.pairs_done_before} already done; {self.shards} shards -> {self.output} in {self.seconds:.1f} s"
        )

    def utilisation_line(self) -> str:
        if not self.utilisation:
            return "pool utilisation: no actors ran (nothing to do)"
        parts = [f"{n} {self.utilisation[n]:.0%} of {self.pool_sizes[n]}" for n in GPU_POOLS if n in self.utilisation]
        return "pool utilisation (busy share of actor time): " + ", ".join(parts)


def input_shards(job: JobSpec) -> dict[str, str]:
    """Output shard name -> input shard URL, for every input (checked to exist, names unique)."""
    from anyv2v_batch.operators.storage import expand_inputs, shard_id

    by_id: dict[str, str] = {}
    for url in expand_inputs(job.input):
        sid = shard_id(url)
        if sid in by_id:
            raise AnyV2VError(
                f"input shards {by_id[sid]!r} and {url!r} would both write output shard {sid!r}; "
                "give shards unique file names"
            )
        by_id[sid] = url
    return by_id


def plan_shards(shards: dict[str, str], job: JobSpec, output: str, mode: str = "edit") -> list[dict[str, Any]]:
    """The work items: each input shard with its output name and the pairs it has done already.

    mode "edit": a pair is done when it is ok *and* was made with the variant's current settings. Pairs
    made with other settings refuse the run (one line naming the variant and the changed fields) unless
    `job.redo_changed`, which recomputes them (compaction then replaces their outputs)."""
    from anyv2v_batch.operators.write import finished_rows

    items, changed, rescore = [], {}, []
    for sid, url in shards.items():
        done = []
        for pid, row in finished_rows(output, sid).items():
            if row["status"] != "ok":
                continue
            if job.only_pairs is not None:  # a repair: the rest is left as it is, whatever its settings
                if f"{sid}/{pid}" not in job.only_pairs:
                    done.append(pid)
                continue
            current = job.fingerprints.get(row["variant"]) if mode == "edit" else None
            if current is not None and row.get("settings_fingerprint") != current[0]:
                changed.setdefault(row["variant"], []).append(row)
                if job.redo_changed:
                    continue
            elif current is not None and row.get("evaluate_fingerprint", "") != job.scoring[0]:
                rescore.append(row)
                if job.redo_changed:
                    continue
            done.append(pid)
        items.append({"shard": url, "shard_id": sid, "done": sorted(done)})
    if changed and not job.redo_changed:
        raise changed_settings_error(job, output, changed)
    if rescore and not job.redo_changed:
        raise changed_scoring_error(job, output, rescore)
    return items


def changed_scoring_error(job: JobSpec, output: str, rows: list[dict[str, Any]]) -> AnyV2VError:
    """Outputs already there whose scores or verdicts came from other evaluate settings."""
    from anyv2v_batch.fingerprint import changed_fields, flat

    def fields(record: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        flat("evaluate", json.loads(record) if record else {"mode": "off"}, out)
        return out

    what = changed_fields(fields(rows[0].get("scorer") or ""), fields(job.scoring[1]))
    if not job.evaluate.enabled:  # the outputs there are scored: a run that scores nothing would mix
        fix = "rerun with the evaluate settings that scored them (--evaluate, the same evaluate: section)"
    else:
        fix = f"rescore them with `anyv2v-batch score {output}` and this job's evaluate settings first"
    return AnyV2VError(
        f"{len(rows)} outputs in {output} were scored with other evaluate settings ({what}); {fix}, or rerun "
        "with --redo-changed to recompute them"
    )


def changed_settings_error(job: JobSpec, output: str, changed: dict[str, list[dict[str, Any]]]) -> AnyV2VError:
    from anyv2v_batch.fingerprint import changed_fields

    name = sorted(changed)[0]
    rows = changed[name]
    new = json.loads(job.fingerprints[name][1])
    old_fields = rows[0].get("settings_fields")
    if old_fields:
        what = f"with other settings ({changed_fields(json.loads(old_fields), new)})"
    else:
        what = "by an older anyv2v-batch that recorded no settings fingerprint"
    others = f"; so do variants {', '.join(repr(n) for n in sorted(changed)[1:])}" if len(changed) > 1 else ""
    return AnyV2VError(
        f"variant {name!r} has {len(rows)} outputs in {output} made {what}{others}; rerun with --redo-changed to "
        "recompute and replace them, or give the variant a new name"
    )


def check_job(job: JobSpec) -> None:
    """What can be checked from the job alone: editor names, outputs that are inputs."""
    from anyv2v_batch.editors import check_licence, editor_class

    for v in job.variants:
        try:
            cls = editor_class(v.editor.name)
            check_licence(cls, job.accept_noncommercial_models)
            # as the editor pool passes them: the variant's edit_prompt is the instruction
            cls.check_options({**v.editor.options, **({"instruction": v.edit_prompt} if v.edit_prompt else {})})
        except AnyV2VError as e:
            raise AnyV2VError(f"variant {v.name!r}: {e}") from None
    for what, where in (("output", job.output), ("inversions store", job.inversions)):
        if where and any(where.rstrip("/") == pattern.rstrip("/") for pattern in job.input):
            raise AnyV2VError(f"{what} is the same as an input; choose another location")


def check_models(job: JobSpec) -> None:
    """What the models' configs decide, before any weights load: each variant's backbone limits and
    whether its inversion stores every latent its edit reads."""
    from anyv2v_batch.backbones import backbone_class
    from anyv2v_batch.evaluation import check_scorer
    from anyv2v_batch.operators.decode import window_limits
    from anyv2v_batch.pnp_edit import check_edit_settings

    check_scorer(job.evaluate, job.device)

    for v in job.variants:
        try:
            backbone_cls = backbone_class(v.backbone)
            backbone_cls.check_settings(v.model, v.clip)
            check_edit_settings(backbone_cls, v.model, v.edit, v.inversion)
            window_limits(v.backbone, v.model, v.window)  # window settings the backbone cannot run
        except AnyV2VError as e:
            raise AnyV2VError(f"variant {v.name!r}: {e}") from None


def check_share_model(job: JobSpec) -> None:
    """`share_model`: one actor inverts and samples each batch, so no stage can join a long clip's windows
    between the two (the gather stage of separate pools)."""
    if job.share_model and may_window(job):
        raise AnyV2VError(
            "share_model: true cannot run long clips (a clip longer than one window, or clip.frames: all): "
            "set clip.frames to at most one window, or share_model: false"
        )


def with_window_limits(job: JobSpec) -> JobSpec:
    """The job with each variant's window limits, read from the models' configs here in the driver (the
    decode tasks then import no backbone)."""
    from anyv2v_batch.operators.decode import window_limits

    limits = {(v.backbone, v.model, v.window): window_limits(v.backbone, v.model, v.window) for v in job.variants}
    return dataclasses.replace(job, window_limits=limits)


def may_window(job: JobSpec) -> bool:
    """Whether a clip of the job can have several windows (then the gather stage joins them)."""
    from anyv2v_batch.operators.decode import window_limits

    for v in job.variants:
        if v.clip.frames == "all" or v.clip.frames > window_limits(v.backbone, v.model, v.window).max_frames:
            return True
    return False


def init_ray(job: JobSpec) -> None:
    """Connect to the job's cluster (or RAY_ADDRESS), or start an embedded local instance."""

    import ray
    from ray.data import DataContext

    ray_console(debug=os.environ.get("ANYV2V_DEBUG", "") not in ("", "0"))
    if not ray.is_initialized():
        address = job.ray_address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING"}
        if address:
            ray.init(address=address, **kwargs)
        else:  # an embedded local instance of its own (never another job's instance on this machine)
            ray.init(address="local", num_cpus=job.ray_num_cpus, **kwargs)
    context = DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    # rows carry Python work objects: pickled inside Arrow blocks on purpose (say so, skip the warning)
    context.enable_fallback_to_arrow_object_ext_type = True


# Ray's loggers whose warnings are notices, not problems of the job: that token authentication is on (a
# local instance's default) and that Ray Data's progress bars are off (the job prints its own line)
RAY_NOTICE_LOGGERS = ("ray._private.authentication.authentication_token_setup", "ray.data")


def ray_console(debug: bool) -> None:
    """The console shows the project's lines: Ray's notices only with `--debug` (ANYV2V_DEBUG=1); Ray's
    errors always. Not silenced: the C++ core worker's one line that actor constructor arguments live in
    the object store (Ray Data puts them there); its only switch, RAY_BACKEND_LOG_LEVEL, makes every Ray
    process print a line saying it was set."""
    import logging

    for name in RAY_NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if debug else logging.ERROR)


def resolve_pools(job: JobSpec, resources: dict[str, float] | None = None, mode: str = "edit") -> dict[str, PoolSpec]:
    """Every pool's size and resources: the job's values, the rest from the cluster (`resources`:
    {"CPU": n, "GPU": n}, by default the connected cluster's). With `share_model` (mode "edit") the
    sampler's actors also invert: "inversion" is then the sampler's pool, for the progress line's shares.

    With GPUs, the GPU actors the job leaves unsized split the GPUs between inversion and sampling in
    proportion to their cost per clip (pipelines/balance.py). On CPUs only, the actors and tasks share
    the CPUs so that all of them can run at once."""
    from anyv2v_batch.editors import editor_class
    from anyv2v_batch.pipelines.balance import split_gpus

    if resources is None:
        import ray

        resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 1.0), resources.get("GPU", 0.0)
    wants_gpu = {
        "editor": any(editor_class(v.editor.name).needs_gpu for v in job.variants),
        "inversion": True,
        "sampler": True,
        "scorer": True,
    }
    use_gpus = gpus > 0 and job.device != "cpu"
    scoring_on_gpu = use_gpus and job.evaluate.enabled and job.pool("scorer").num_gpus != 0
    # scorers share GPUs: each inversion / sampler actor leaves a tenth of its GPU to them
    model_share = 1.0 - SCORER_GPU_SHARE if scoring_on_gpu and job.pool("scorer").num_gpus is None else 1.0
    defaults = {"editor": 1.0, "inversion": model_share, "sampler": model_share, "scorer": SCORER_GPU_SHARE}
    pools = {}
    for name in ("decode", *GPU_POOLS, "encode"):
        pool = job.pool(name)
        if name in GPU_POOLS and pool.num_gpus is None:
            pool = dataclasses.replace(pool, num_gpus=defaults[name] if use_gpus and wants_gpu[name] else 0.0)
        if name not in GPU_POOLS:
            pool = dataclasses.replace(pool, num_gpus=0.0)
        pools[name] = pool
    if not job.evaluate.enabled:
        del pools["scorer"]
    shared = job.share_model and mode == "edit"
    if shared:  # no actors of its own: sized and placed as the sampler's, below
        del pools["inversion"]
    if use_gpus:
        sized = [n for n in GPU_POOLS if n in pools and n != "scorer" and (pools[n].size or n == "editor")]
        free = gpus - sum((pools[n].size or 1) * math.ceil(pools[n].num_gpus) for n in sized)
        unsized = [n for n in ("inversion", "sampler") if n in pools and pools[n].size is None]
        share = pools.get("inversion", pools["sampler"]).num_gpus
        scorer = pools.get("scorer")
        if scorer is not None and scorer.num_gpus and max(share, pools["sampler"].num_gpus) + scorer.num_gpus > 1:
            # the model actors leave no room on their GPUs: keep whole GPUs for the scorers
            free -= math.ceil((scorer.size or 1) * scorer.num_gpus)
            if free < 2 and len(unsized) == 2:
                raise AnyV2VError(
                    f"the inversion and sampler actors take whole GPUs and leave none of the {gpus:g} for the scorer; "
                    "set pools.scorer.num_gpus: 0 (score on CPUs) or leave pools.*.num_gpus unset"
                )
        if unsized == ["inversion", "sampler"] and share == pools["sampler"].num_gpus > 0:
            # actors of more than half a GPU take one GPU each (Ray packs fractions per GPU)
            slots = int(free // share) if share <= 0.5 else int(free)
            if slots < 2 and share > 0.5:  # one GPU for both pools: each actor takes half of it (two model
                # copies on one card; share_model holds one)
                for n in unsized:
                    pools[n] = dataclasses.replace(pools[n], num_gpus=share / 2)
                slots = 2
            sizes = dict(zip(unsized, split_gpus(job, slots), strict=True))
        else:
            sizes = {n: max(1, int(free // max(pools[n].num_gpus, 1e-9)) // len(unsized)) for n in unsized}
        for n, size in sizes.items():
            pools[n] = dataclasses.replace(pools[n], size=size)
    pools = {n: dataclasses.replace(p, size=p.size or 1) for n, p in pools.items()}
    # CPU-only: actors that sit on a CPU each must fit beside the others and the decode/encode tasks
    on_cpu = [n for n in GPU_POOLS if n in pools and not pools[n].num_gpus]
    demand = sum(pools[n].num_cpus * pools[n].size for n in on_cpu) + pools["decode"].num_cpus
    if on_cpu and demand > cpus and not job.ray_address:
        share = max(0.1, cpus / (sum(pools[n].size for n in on_cpu) + 1))
        for n in (*on_cpu, "decode", "encode"):
            pools[n] = dataclasses.replace(pools[n], num_cpus=min(pools[n].num_cpus, share))
    if shared:
        pools["inversion"] = pools["sampler"]
    return pools


def build_dataset(
    job: JobSpec, items: list[dict[str, Any]], pools: dict[str, PoolSpec], mode: str = "edit", busy_board: Any = None
):
    """The streaming pipeline. mode "edit": every stage; "invert": read, decode, inversion, store.
    `busy_board` (operators/busy.py): where the GPU pools' actors report their calls, for the progress line."""
    import ray.data
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    from anyv2v_batch.operators.busy import timed
    from anyv2v_batch.operators.decode import decode_clip
    from anyv2v_batch.operators.editor_pool import EditorPool
    from anyv2v_batch.operators.encode import encode_inversions, encode_pairs
    from anyv2v_batch.operators.gather import WindowGather
    from anyv2v_batch.operators.inversion_pool import InversionPool
    from anyv2v_batch.operators.model_pool import ModelPool
    from anyv2v_batch.operators.read_shards import read_shard
    from anyv2v_batch.operators.sampler_pool import SamplerPool
    from anyv2v_batch.operators.scorer_pool import ScorerPool
    from anyv2v_batch.operators.write import write_part

    def actors(ds, cls, name: str, in_flight: int | None = None, report: bool = True, **kwargs):
        """`report`: wrap `cls` to report its calls to the board (False: it reports its own stages)."""
        pool = pools[name]
        return ds.map_batches(
            timed(cls, name) if report else cls,
            compute=ActorPoolStrategy(size=pool.size, max_tasks_in_flight_per_actor=in_flight),
            batch_size=pool.batch_size,
            num_gpus=pool.num_gpus,
            num_cpus=pool.num_cpus,
            fn_constructor_kwargs={"job": job, "num_cpus": pool.num_cpus, "busy_board": busy_board, **kwargs},
        )

    decode, encode = pools["decode"], pools["encode"]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.flat_map(read_shard, fn_kwargs={"job": job, "mode": mode}, num_cpus=decode.num_cpus)
    ds = ds.flat_map(decode_clip, num_cpus=decode.num_cpus, compute=TaskPoolStrategy(size=decode.size))
    if mode == "edit":
        ds = actors(ds, EditorPool, "editor")
        if job.share_model:  # one actor inverts and samples (no long clips: check_share_model)
            ds = actors(ds, ModelPool, "sampler", report=False)
        else:
            ds = actors(ds, InversionPool, "inversion")
            windows = may_window(job)
            if windows:  # a long clip's windows, inverted as separate rows, joined again
                ds = ds.map_batches(
                    WindowGather, compute=ActorPoolStrategy(size=1), batch_size=1, num_cpus=0,
                    fn_constructor_kwargs={"num_cpus": 1},
                )  # fmt: skip
            # a chain holds its sampler for all its windows: then no clip may queue behind it on that actor
            # (Ray Data's default queues several tasks per actor); each goes to the first actor that is free
            ds = actors(ds, SamplerPool, "sampler", in_flight=1 if windows else None)
        if job.evaluate.enabled:
            ds = actors(ds, ScorerPool, "scorer")
        ds = ds.flat_map(encode_pairs, fn_kwargs={"job": job}, num_cpus=encode.num_cpus)
    else:
        ds = actors(ds, InversionPool, "inversion", keep_all=job.store_all_timesteps)
        ds = ds.flat_map(encode_inversions, fn_kwargs={"job": job}, num_cpus=encode.num_cpus)
    return ds.map(
        write_part, fn_kwargs={"output": job_output(job, mode)}, num_cpus=encode.num_cpus,
        compute=TaskPoolStrategy(encode.size),
    )  # fmt: skip


def job_output(job: JobSpec, mode: str) -> str:
    """Where a job writes: its output, or for `invert` its inversions store."""
    if mode == "edit":
        return job.output
    if not job.inversions:
        raise AnyV2VError("invert writes to the job's `inversions` store: set it in the job file or --inversions")
    return job.inversions


def run_job(
    job: JobSpec,
    log: Callable[[str], None] = lambda s: None,
    mode: str = "edit",
    display: ProgressDisplay | None = None,
) -> JobSummary:
    """Run (or resume) a job to completion and compact its output.

    mode "invert": only invert the clips, into the job's `inversions` store, for later runs to reuse.
    `display`: where the progress line goes (default: nowhere; `<output>/_progress.json` is always kept)."""
    from anyv2v_batch.fingerprint import job_fingerprints
    from anyv2v_batch.operators.lock import OutputLock
    from anyv2v_batch.operators.storage import check_writable

    started = time.perf_counter()
    if mode == "invert":  # inversions are not scored
        job = dataclasses.replace(job, evaluate=EvaluateSettings())
    check_job(job)
    check_models(job)
    if mode == "edit":
        check_share_model(job)
    output = job_output(job, mode)
    shards = input_shards(job)  # bad inputs fail here, before anything is written
    check_writable(output, "output" if mode == "edit" else "inversions store")
    job = with_window_limits(job_fingerprints(job))
    with OutputLock(output):
        return _run_locked(job, shards, output, log, mode, started, display)


def pending_total(items: list[dict[str, Any]], job: JobSpec, mode: str) -> int:
    """The status rows the run will produce, from the shards' tar headers (read_shards.pending_rows),
    the shards scanned side by side (on an object store each header is a round trip)."""
    from concurrent.futures import ThreadPoolExecutor

    from anyv2v_batch.operators.read_shards import pending_rows

    with ThreadPoolExecutor(max_workers=max(1, min(16, len(items)))) as pool:
        return sum(pool.map(lambda item: pending_rows(item, job, mode), items))


def _run_locked(
    job: JobSpec,
    shards: dict[str, str],
    output: str,
    log: Callable[[str], None],
    mode: str,
    started: float,
    display: ProgressDisplay | None = None,
) -> JobSummary:
    import ray

    from anyv2v_batch.operators.busy import board_seconds, forget_run, start_board
    from anyv2v_batch.operators.storage import join, remove_if_empty
    from anyv2v_batch.operators.work import UNUSABLE
    from anyv2v_batch.operators.write import compact_shard, shards_with_parts
    from anyv2v_batch.pipelines.balance import utilisation
    from anyv2v_batch.pipelines.progress import JobProgress

    items = plan_shards(shards, job, output, mode)
    done_before = sum(len(i["done"]) for i in items)
    unit = "(clip, variant) pairs" if mode == "edit" else "clip inversions"
    total = pending_total(items, job, mode)
    log(f"{len(items)} input shards; {done_before} {unit} already done in {output}; {total} to do")
    wanted = {i["shard_id"] for i in items}
    if total == 0:  # every pair is done: no pipeline, no actors (a finished job reruns in seconds)
        for sid in sorted(shards_with_parts(output) & wanted):  # a killed run's finished pairs
            compact_shard(output, sid)
        remove_if_empty(join(output, "_parts"))
        progress = JobProgress(
            0, output, {}, unit="pairs" if mode == "edit" else "inversions", done_before=done_before, display=display
        )
        with progress.running():
            pass
        return JobSummary(output, unit, len(items), done_before, 0, 0, 0, time.perf_counter() - started, [])
    init_ray(job)
    pools = resolve_pools(job, mode=mode)
    sizes = {n: pools[n].size for n in GPU_POOLS if n in pools and (mode == "edit" or n == "inversion")}
    board = start_board()
    progress = JobProgress(
        total, output, sizes, unit="pairs" if mode == "edit" else "inversions", done_before=done_before,
        display=display, routes_failures=job.evaluate.mode == "route", live_busy=lambda: board_seconds(board),
    )  # fmt: skip
    examples: list[str] = []
    failed_checks = 0
    unusable: set[str] = set()
    with progress.running():
        streamed = time.perf_counter()
        for row in build_dataset(job, items, pools, mode, busy_board=board).iter_rows():
            progress.add(row)
            failed_checks += row.get("passed") is False
            if UNUSABLE in row.get("inversion_source", ""):
                unusable.add(row["shard_id"])
            if row["status"] == "error" and len(examples) < 5:
                examples.append(f"{row['key']}.{row['variant']}: {row['error']}")
        wall = time.perf_counter() - streamed
        compact = ray.remote(compact_shard).options(num_cpus=pools["encode"].num_cpus)
        ray.get([compact.remote(output, sid) for sid in sorted(shards_with_parts(output) & wanted)])
        remove_if_empty(join(output, "_parts"))
    forget_run(board)
    return JobSummary(
        output=output,
        unit=unit,
        shards=len(items),
        pairs_done_before=done_before,
        processed=progress.done,
        ok=progress.ok + progress.filtered,  # status ok; filtered pairs are ok pairs routed aside
        errors=progress.error,
        filtered=progress.filtered,
        failed_checks=failed_checks,
        seconds=time.perf_counter() - started,
        error_examples=examples,
        pool_sizes=sizes,
        utilisation=utilisation(progress.busy_seconds(), wall, sizes),
        unusable_store_shards=unusable,
    )
