"""The injected I2V sampler actor pool: every variant of the batch's clips sampled from their inversions.

All variants that share a schedule and latent shape are stepped together, each clip's variants
sharing its source branch (every call's shape is fixed by one pair, so no output depends on its
company). If that fails (out of GPU memory, above all), each variant is retried alone, and one that
still fails fails alone.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np

from anyv2v_batch.chain import ChainRequest, edit_chains
from anyv2v_batch.job import JobSpec
from anyv2v_batch.operators.actor_base import (
    fault_point,
    is_out_of_memory,
    isolate_failures,
    load_job_backbones,
    start_worker,
)
from anyv2v_batch.operators.work import ClipWork, VariantWork, one_line
from anyv2v_batch.pnp_edit import EditRequest, batch_key, edit_batch

OOM_MESSAGE = "out of memory sampling this clip alone; use fewer frames, a smaller size or a bigger GPU"


class SamplerPool:
    """map_batches actor: loads the backbone once; edits the pending variants of its batch together."""

    def __init__(self, job: JobSpec, num_cpus: float = 1.0, backbones: dict | None = None):
        start_worker(num_cpus)
        self.share_source = job.share_source
        # `backbones`: models already loaded in this actor (operators/model_pool.py shares them with inversion)
        self.backbones = backbones if backbones is not None else load_job_backbones(job, compile=job.compile)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        works: list[ClipWork] = list(batch["work"])
        started = time.perf_counter()
        by_key: dict[tuple, list[tuple[ClipWork, VariantWork]]] = defaultdict(list)
        for work in works:
            if work.windows:
                self.sample_chain(work)
                continue
            for variant in work.pending():
                request = EditRequest(work.inversion, variant.first_frame, variant.settings)
                by_key[(work.backbone, work.model, *batch_key(request))].append((work, variant))

        def run(pairs: list[tuple[ClipWork, VariantWork]]) -> None:
            requests = [EditRequest(w.inversion, v.first_frame, v.settings) for w, v in pairs]
            backbone = self.backbones[(pairs[0][0].backbone, pairs[0][0].model)]
            for (_, variant), result in zip(pairs, edit_batch(backbone, requests), strict=True):
                variant.frames = result.frames

        def fail(pair: tuple[ClipWork, VariantWork], e: BaseException) -> None:
            pair[1].error = OOM_MESSAGE if is_out_of_memory(e) else one_line(e)

        for pairs in by_key.values():
            if self.share_source:
                isolate_failures(pairs, run, fail)
            else:  # every variant with a source branch of its own (the same bytes, more calls)
                for pair in pairs:
                    isolate_failures([pair], run, fail)
        seconds = (time.perf_counter() - started) / max(1, sum(len(w.variants) for w in works))
        for work in works:
            for variant in work.variants:
                variant.seconds["sampler"] = seconds
            work.inversion, work.windows = None, []
        return {"work": works}

    def sample_chain(self, work: ClipWork) -> None:
        """A clip of several windows: its variants sampled window after window (chain.py), together (sharing
        the source branch) unless the job runs each variant alone."""
        backbone = self.backbones[(work.backbone, work.model)]

        def run(variants: list[VariantWork]) -> None:
            requests = [ChainRequest(v.first_frame, v.settings) for v in variants]
            results = edit_chains(
                backbone, work.plan, lambda w: work.windows[w.index], requests, work.window_settings,
                on_window=lambda w: fault_point(f"{work.key}.window{w.index + 1}"),
            )  # fmt: skip
            for variant, result in zip(variants, results, strict=True):
                variant.frames, variant.window_seeds, variant.seam_steps = (
                    result.frames,
                    result.seeds,
                    result.seam_steps,
                )

        def fail(variant: VariantWork, e: BaseException) -> None:
            variant.error = OOM_MESSAGE if is_out_of_memory(e) else one_line(e)

        pending = work.pending()
        if self.share_source:
            isolate_failures(pending, run, fail)
        else:
            for variant in pending:
                isolate_failures([variant], run, fail)
