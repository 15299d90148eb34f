"""What `anyv2v-batch verify` costs per GB of output: a synthetic output (random member bytes, real
layout: parts written and compacted into shard tars and Parquet files, digests in the rows), scrubbed.

    python benchmarks/bench_verify.py --gb 1 --shards 4 --member-mib 4 [--folder /tmp/verify-bench]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time


def build(folder: str, gb: float, shards: int, member_mib: float) -> int:
    from anyv2v_batch.integrity import member_digests
    from anyv2v_batch.operators.encode import PairResult
    from anyv2v_batch.operators.write import compact_shard, write_part

    size = int(member_mib * 2**20)
    pairs = max(shards, int(gb * 1e9 // size))
    for i in range(pairs):
        sid, key = f"{i % shards:06d}", f"clip{i:06d}"
        files = {"mp4": os.urandom(size), "png": os.urandom(4096), "json": b"{}"}
        row = {"key": key, "variant": "v", "status": "ok", "error": "", "shard_id": sid, **member_digests(files)}
        write_part({"pair": PairResult("in.tar", sid, key, "v", "ok", "", row, files)}, folder)
    for s in range(shards):
        compact_shard(folder, f"{s:06d}")
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--member-mib", type=float, default=4.0)
    parser.add_argument("--folder", default=None)
    args = parser.parse_args()
    folder = args.folder or tempfile.mkdtemp(prefix="verify-bench-")
    try:
        pairs = build(folder, args.gb, args.shards, args.member_mib)
        from anyv2v_batch.pipelines.verify import verify_output

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started, cpu = time.perf_counter(), time.process_time()
        result = verify_output(folder)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        gb = result.bytes / 1e9
        print("| pairs | members | GB | wall s | CPU s | s per GB | peak RSS growth MiB | problems |")
        print("|---|---|---|---|---|---|---|---|")
        print(
            f"| {pairs} | {result.members} | {gb:.2f} | {wall:.1f} | {cpu:.1f} | {wall / gb:.1f} | "
            f"{(peak - rss) / 1024:.0f} | {len(result.problems)} |"
        )
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
