"""The DDIM inversion actor pool: each clip inverted once, for all of its variants."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np

from anyv2v_batch.backbones import load_backbone
from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.inversion import invert_batch
from anyv2v_batch.job import JobSpec
from anyv2v_batch.operators.actor_base import is_out_of_memory, isolate_failures, start_worker, worker_device
from anyv2v_batch.operators.work import ClipWork, one_line
from anyv2v_batch.pnp_edit import check_inversion_serves, plan_sampling

OOM_MESSAGE = "out of memory inverting this clip alone; use fewer frames, a smaller size or a bigger GPU"


class InversionPool:
    """map_batches actor: loads the backbone once; inverts the batch's clips together where they share a
    shape and settings, keeping only the timesteps their variants read."""

    def __init__(self, job: JobSpec, num_cpus: float = 1.0):
        start_worker(num_cpus)
        self.backbone = load_backbone(
            job.backbone, job.model, device=worker_device(job.device), dtype=job.dtype, variant=job.weights_variant
        )
        if job.compile:
            self.backbone.compile()

    def needed_timesteps(self, work: ClipWork) -> set[int]:
        needed: set[int] = set()
        for variant in work.pending():
            try:
                plan = plan_sampling(self.backbone.scheduler(), variant.settings)
                check_inversion_serves(work.inversion_settings.steps, plan.needed, self.backbone)
                needed |= set(plan.needed)
            except AnyV2VError as e:
                variant.error = str(e)
        return needed

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        works: list[ClipWork] = list(batch["work"])
        started = time.perf_counter()
        groups: dict[tuple, list[ClipWork]] = defaultdict(list)
        keep: dict[int, set[int]] = {}
        for work in works:
            keep[id(work)] = self.needed_timesteps(work)
            if work.pending():
                try:
                    self.backbone.check_clip(work.clip)
                except AnyV2VError as e:
                    work.error = str(e)
                    continue
                groups[(work.frames.shape, work.inversion_settings, work.clip.fps)].append(work)

        def run(group: list[ClipWork]) -> None:
            needed = set().union(*(keep[id(w)] for w in group))
            inversions = invert_batch(
                self.backbone, [w.frames for w in group], group[0].inversion_settings, fps=group[0].clip.fps,
                keep=needed,
            )  # fmt: skip
            for w, inv in zip(group, inversions, strict=True):
                w.inversion = inv

        def fail(work: ClipWork, e: BaseException) -> None:
            work.error = OOM_MESSAGE if is_out_of_memory(e) else one_line(e)

        for group in groups.values():
            isolate_failures(group, run, fail)
        seconds = (time.perf_counter() - started) / max(1, len(works))
        for work in works:
            work.frames = None  # the inversion keeps the first frame; the rest is not needed
            work.seconds["inversion"] = seconds
        return {"work": works}
