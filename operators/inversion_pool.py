"""The DDIM inversion actor pool: each clip inverted once, for all of its variants."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from anyv2v_batch.backbones import load_backbone
from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.inversion import invert
from anyv2v_batch.job import JobSpec
from anyv2v_batch.operators.actor_base import start_worker, worker_device
from anyv2v_batch.operators.work import one_line
from anyv2v_batch.pnp_edit import check_inversion_serves, plan_sampling


class InversionPool:
    """map_batches actor: loads the backbone once; inverts, keeping only the timesteps the variants read."""

    def __init__(self, job: JobSpec, num_cpus: float = 1.0):
        start_worker(num_cpus)
        self.backbone = load_backbone(
            job.backbone, job.model, device=worker_device(job.device), dtype=job.dtype, variant=job.weights_variant
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        for work in batch["work"]:
            started = time.perf_counter()
            needed: set[int] = set()
            for variant in work.pending():
                try:
                    plan = plan_sampling(self.backbone.scheduler(), variant.settings)
                    check_inversion_serves(work.inversion_settings.steps, plan.needed, self.backbone)
                    needed |= set(plan.needed)
                except AnyV2VError as e:
                    variant.error = str(e)
            if work.pending():
                try:
                    self.backbone.check_clip(work.clip)
                    work.inversion = invert(
                        self.backbone, work.frames, work.inversion_settings, fps=work.clip.fps, keep=needed
                    )
                except Exception as e:  # noqa: BLE001 - a failed clip fails its variants only
                    work.error = one_line(e)
            work.frames = None  # the inversion keeps the first frame; the rest is not needed
            work.seconds["inversion"] = time.perf_counter() - started
        return {"work": list(batch["work"])}
