"""The injected I2V sampler actor pool: every variant of a clip sampled from the clip's inversion."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from anyv2v_batch.backbones import load_backbone
from anyv2v_batch.job import JobSpec
from anyv2v_batch.operators.actor_base import start_worker, worker_device
from anyv2v_batch.operators.work import one_line
from anyv2v_batch.pnp_edit import edit


class SamplerPool:
    """map_batches actor: loads the backbone once; edits each pending variant."""

    def __init__(self, job: JobSpec, num_cpus: float = 1.0):
        start_worker(num_cpus)
        self.backbone = load_backbone(
            job.backbone, job.model, device=worker_device(job.device), dtype=job.dtype, variant=job.weights_variant
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        for work in batch["work"]:
            for variant in work.pending():
                started = time.perf_counter()
                try:
                    result = edit(self.backbone, work.inversion, variant.first_frame, variant.settings)
                    variant.frames = result.frames
                except Exception as e:  # noqa: BLE001 - a failed variant fails alone
                    variant.error = one_line(e)
                variant.seconds["sampler"] = time.perf_counter() - started
            work.inversion = None
        return {"work": list(batch["work"])}
