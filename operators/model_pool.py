"""Inversion and sampling in one actor (`share_model: true`): one copy of the models per actor.

Each batch is inverted, then sampled, by the same stages as the two separate pools (inversion_pool.py,
sampler_pool.py) on the same loaded backbones, so the rows are the same bytes; each stage still reports
its own calls to the progress line's board, under its own pool's name."""

from __future__ import annotations

from typing import Any

import numpy as np

from anyv2v_batch.job import JobSpec
from anyv2v_batch.operators.actor_base import load_job_backbones, start_worker
from anyv2v_batch.operators.busy import timed
from anyv2v_batch.operators.inversion_pool import InversionPool
from anyv2v_batch.operators.sampler_pool import SamplerPool


class ModelPool:
    """map_batches actor: loads the backbones once, then inverts and samples each batch."""

    def __init__(self, job: JobSpec, num_cpus: float = 1.0, busy_board: Any = None):
        start_worker(num_cpus)
        backbones = load_job_backbones(job, compile=job.compile)
        self.invert = timed(InversionPool, "inversion")(job, num_cpus, busy_board=busy_board, backbones=backbones)
        self.sample = timed(SamplerPool, "sampler")(job, num_cpus, busy_board=busy_board, backbones=backbones)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        return self.sample(self.invert(batch))
