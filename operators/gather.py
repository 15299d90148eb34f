"""Gather: the windows of a long clip, inverted as separate work items, joined again into one clip row
for the sampler pool (anyv2v_batch/windows.py).

One actor holds the windows that came back from the inversion pool until all of a clip's have; rows
of one-window clips pass straight through. If that actor is lost, the clips it was gathering get no row
in this run: they are pending pairs, which a rerun makes (`run` resumes)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from anyv2v_batch.operators.actor_base import start_worker
from anyv2v_batch.operators.work import ClipWork, clip_group_id


class WindowGather:
    """map_batches actor (a pool of one): passes on each clip once all its windows have arrived."""

    def __init__(self, job: Any = None, num_cpus: float = 1.0):
        start_worker(num_cpus)
        self.waiting: dict[tuple[str, str, str], dict[int, ClipWork]] = {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        out = []
        for work in batch["work"]:
            if work.window is None:
                out.append(work)
                continue
            key = (work.shard_id, work.key, clip_group_id(work))
            parts = self.waiting.setdefault(key, {})
            parts[work.window.index] = work
            if len(parts) == len(work.plan):
                del self.waiting[key]
                out.append(join_windows([parts[i] for i in range(len(parts))]))
        return {"work": out}


def join_windows(parts: list[ClipWork]) -> ClipWork:
    """One clip row from its window rows, in plan order: window 1's variants (with their edited first
    frames), every window's inversion, and the source frames each window adds (when kept for scoring)."""
    work = parts[0]
    failed = next((p for p in parts if p.error), None)
    if failed is not None and not work.error:
        work.error = (
            f"window {failed.window.index + 1} (frames {failed.window.start}-{failed.window.end - 1}): {failed.error}"
        )
    work.windows = [p.inversion for p in parts] if not work.error else []
    if all(p.frames is not None for p in parts) and not work.error:
        work.frames = np.concatenate([p.frames[p.window.written_from - p.window.start :] for p in parts])
    else:
        work.frames = None
    sources = [p.inversion_source for p in parts]
    work.inversion_source = (
        sources[0] if len(set(sources)) == 1 else "; ".join(f"window {i + 1}: {s}" for i, s in enumerate(sources))
    )
    shas = "".join(p.source.get("frames_sha256", "") for p in parts)
    work.source["frames_sha256"] = hashlib.sha256(shas.encode()).hexdigest()  # of the windows' hashes
    for stage in ("decode", "inversion"):
        work.seconds[stage] = sum(p.seconds.get(stage, 0.0) for p in parts)
    work.window, work.inversion, work.stored_inversion = None, None, None
    return work
