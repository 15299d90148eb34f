"""The whole batch stage on a local Ray instance: clips per hour with 1 and 2 workers per GPU pool.

    python benchmarks/bench_job.py                      # tiny fixture model, CPU, synthetic shards
    python benchmarks/bench_job.py --clips 16 --workers 1 2 4
    python benchmarks/bench_job.py --evaluate            # with the scorer pool (a tiny random CLIP)

Per configuration: wall seconds, clips and (clip, variant) outputs per hour, mean seconds per clip in
each stage, and each GPU pool's utilisation (busy share of its actors' time). On a CPU the "GPU"
pools share the cores, so more workers mostly add contention; on a GPU machine set --device cuda and
pass --model with real weights (or use bench_engine.py for the model alone).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
TINY = (
    Path(os.environ.get("ANYV2V_SHARED_FIXTURES") or ROOT.parent / "shared" / "fixtures")
    / "anyv2v-reference"
    / "tiny-i2vgen-xl"
)  # the shared recordings' tiny model (../shared/fixtures beside the checkout)
STAGES = ("read", "decode", "editor", "inversion", "sampler", "scorer", "encode")


def make_shards(
    folder: Path, clips: int, shards: int, size: int, frames: int = 24, long: int = 0, long_frames: int = 0
):
    """Synthetic shards: `clips` clips of `frames` frames, the first `long` of them `long_frames` long
    (spread over the shards: the long clips come first in the first shards)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from shards import mp4, png, recolor, write_shard

    rng = np.random.default_rng(0)
    per = -(-clips // shards)
    for s in range(shards):
        members = []
        for c in range(s * per, min(clips, (s + 1) * per)):
            n = long_frames if c < long else frames
            base = rng.integers(0, 255, (1, size, size, 3)).astype(np.float32)
            clip = np.clip(base + rng.normal(0, 10, (n, size, size, 3)), 0, 255).astype(np.uint8)
            members += [(f"clip{c:04d}.mp4", mp4(clip)), (f"clip{c:04d}.txt", b"a car"),
                        (f"clip{c:04d}.edited.png", png(recolor(clip[0])))]  # fmt: skip
        write_shard(folder / f"{s:06d}.tar", members)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--variants", type=int, default=1)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="actors per GPU pool")
    p.add_argument("--model", default=str(TINY))
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--inversion-steps", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--cpus", type=float, default=None, help="CPUs of the local Ray instance")
    p.add_argument("--long", type=int, default=0, help="how many of the clips are long (frames: all, windows)")
    p.add_argument("--long-frames", type=int, default=64, help="frames of a long clip (windows of --frames)")
    p.add_argument("--evaluate", action="store_true", help="score every output (scorer pool)")
    p.add_argument("--evaluate-model", default=None, help="CLIP model (default: a tiny random one built here)")
    args = p.parse_args()

    import ray

    from anyv2v_batch.job import build_job
    from anyv2v_batch.pipelines.anyv2v_job import run_job

    work = Path(tempfile.mkdtemp(prefix="anyv2v-bench-"))
    if args.long:  # short clips are exactly one window; long ones are chained windows of that length
        make_shards(work / "in", args.clips, args.shards, args.size, args.frames, args.long, args.long_frames)
        clip, window = {"frames": "all"}, {"max_frames": args.frames, "frames": args.frames}
    else:
        make_shards(work / "in", args.clips, args.shards, args.size)
        clip, window = {"frames": args.frames}, {}
    evaluate = {}
    if args.evaluate:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import build_tiny_clip

        model = args.evaluate_model or str(build_tiny_clip((work / "tiny-clip").resolve()))
        evaluate = {"mode": "score", "model": model}
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING")
    cpus = ray.cluster_resources().get("CPU", 1)
    print(
        f"# {args.clips} clips x {args.variants} variants, {args.frames} frames at {args.size}x{args.size}"
        + (f" ({args.long} of them {args.long_frames} frames, in windows of {args.frames})" if args.long else "")
        + ", "
        f"{args.inversion_steps} inversion / {args.steps} sampling steps; {args.device}; Ray with {cpus:g} CPUs"
    )
    header = " | ".join(f"{s} s/clip" for s in STAGES)
    print(f"| workers per pool | wall s | clips / hour | outputs / hour | {header} | utilisation |")
    print("|---|---|---|---|" + "---|" * len(STAGES) + "---|")
    for workers in args.workers:
        share = max(0.1, cpus / (2 * workers + 2))
        job = build_job({
            "input": str(work / "in" / "*.tar"), "output": str(work / f"out-{workers}"), "model": args.model,
            "device": args.device, "clip": {**clip, "width": args.size, "height": args.size}, "window": window,
            "inversion": {"steps": args.inversion_steps}, "edit": {"steps": args.steps, "prompt": "{caption}"},
            "variants": [{"name": f"v{i}", "seed": i} for i in range(args.variants)],
            "pools": {
                "decode": {"num_cpus": share}, "encode": {"num_cpus": share}, "editor": {"num_cpus": share},
                "inversion": {"size": workers, "num_cpus": share}, "sampler": {"size": workers, "num_cpus": share},
                "scorer": {"num_cpus": share},
            },
            "evaluate": evaluate,
        })  # fmt: skip
        started = time.perf_counter()
        summary = run_job(job)
        wall = time.perf_counter() - started
        rows = pq.read_table(work / f"out-{workers}" / "metadata").to_pylist()
        clips = {(r["shard_id"], r["key"]) for r in rows}
        per_stage = []
        for stage in STAGES:
            if stage in ("read", "decode", "inversion"):  # once per clip, repeated on each variant's row
                per_clip = {(r["shard_id"], r["key"]): r[f"seconds_{stage}"] for r in rows}
                per_stage.append(sum(per_clip.values()) / len(clips))
            else:
                per_stage.append(sum(r[f"seconds_{stage}"] for r in rows) / len(clips))
        util = ", ".join(f"{k} {v:.0%}" for k, v in summary.utilisation.items())
        print(f"| {workers} | {wall:.1f} | {len(clips) * 3600 / wall:.0f} | {len(rows) * 3600 / wall:.0f} | "
              + " | ".join(f"{s:.2f}" for s in per_stage) + f" | {util} |", flush=True)  # fmt: skip
        assert summary.errors == 0, json.dumps(summary.error_examples)
        if args.evaluate:
            model_seconds = sum(per_stage[STAGES.index(s)] for s in ("inversion", "sampler"))
            share = per_stage[STAGES.index("scorer")] / model_seconds
            print(f"  scorer / (inversion + sampler) seconds per clip: {share:.2%}")
    ray.shutdown()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
