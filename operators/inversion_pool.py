"""The DDIM inversion actor pool: each clip inverted once, for all of its variants."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.inversion import inversion_from_bytes, invert_batch
from anyv2v_batch.job import JobSpec
from anyv2v_batch.operators.actor_base import is_out_of_memory, isolate_failures, load_job_backbones, start_worker
from anyv2v_batch.operators.work import UNUSABLE, ClipWork, one_line, work_inversion_id
from anyv2v_batch.pnp_edit import check_inversion_serves, plan_sampling
from anyv2v_batch.windows import window_clip

OOM_MESSAGE = "out of memory inverting this clip alone; use fewer frames, a smaller size or a bigger GPU"


class InversionPool:
    """map_batches actor: loads the backbone once; inverts the batch's clips together where they share a
    shape and settings, keeping only the timesteps their variants read."""

    def __init__(self, job: JobSpec, num_cpus: float = 1.0, keep_all: bool = False, backbones: dict | None = None):
        start_worker(num_cpus)
        self.job, self.keep_all = job, keep_all
        self.keep_frames = job.evaluate.enabled and not keep_all  # the scorer compares output and source
        # `backbones`: models already loaded in this actor (operators/model_pool.py shares them with sampling)
        self.backbones = backbones if backbones is not None else load_job_backbones(job, compile=job.compile)

    def backbone(self, work: ClipWork):
        return self.backbones[(work.backbone, work.model)]

    def needed_timesteps(self, work: ClipWork) -> set[int]:
        needed: set[int] = set()
        for variant in work.pending():
            try:
                backbone = self.backbone(work)
                plan = plan_sampling(backbone, variant.settings, work.inversion_settings)
                check_inversion_serves(work.inversion_settings, plan.needed, backbone.schedule)
                needed |= set(plan.needed)
            except AnyV2VError as e:
                variant.error = str(e)
        return needed

    def reuse_stored(self, work: ClipWork, keep: set[int]) -> bool:
        """Use the clip's stored inversion if it is intact and was made from these frames with these
        settings; else say why not (the clip is then inverted again)."""
        if work.stored_inversion is None:
            work.inversion_source = "computed"
            return False
        try:
            inversion, meta = inversion_from_bytes(work.stored_inversion)
            expected = {
                "backbone": work.backbone,
                "model": str(work.model),
                "inversion_id": work_inversion_id(work),
                "frames_sha256": work.source.get("frames_sha256"),
            }
            wrong = [k for k, v in expected.items() if meta.get(k) != v]
            if wrong or inversion.settings != work.inversion_settings or inversion.fps != float(work.clip.fps):
                raise ValueError(f"made from other {', '.join(wrong) or 'settings'}")
            f = self.backbone(work).vae_scale_factor
            c = work.clip
            if tuple(inversion.latents.shape[2:]) != (work.frames_here, c.height // f, c.width // f):
                raise ValueError("latents of another shape")
        except ValueError as e:
            work.inversion_source = f"recomputed: {UNUSABLE} ({e})"
            return False
        missing = sorted(keep - set(inversion.timesteps))
        if missing:  # an intact entry that its job made for other edits: not damage
            work.inversion_source = f"recomputed: stored inversion has no latent at timestep {missing[0]}"
            return False
        work.inversion = inversion if self.keep_all else inversion.keep(keep)
        work.inversion_source = "stored"
        return True

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        works: list[ClipWork] = list(batch["work"])
        started = time.perf_counter()
        groups: dict[tuple, list[ClipWork]] = defaultdict(list)
        keep: dict[int, set[int] | None] = {}
        repair = self.job.keep_timesteps
        for work in works:
            if repair is not None:  # a store repair: each entry keeps exactly what it held
                keep[id(work)] = set(repair.get((work.shard_id, work.key, work_inversion_id(work)), ()))
                if work.error or not keep[id(work)]:
                    continue
            else:
                keep[id(work)] = self.needed_timesteps(work)
                if work.error or (not work.pending() and not self.keep_all):
                    continue
            if self.reuse_stored(work, keep[id(work)]):
                continue
            if self.keep_all and repair is None:
                keep[id(work)] = None
            try:
                self.backbone(work).check_clip(window_clip(work.clip, work.frames_here))
            except AnyV2VError as e:
                work.error = str(e)
                continue
            key = (work.backbone, work.model, work.frames.shape, work.inversion_settings, work.clip.fps)
            groups[key].append(work)

        def run(group: list[ClipWork]) -> None:
            wanted = [keep[id(w)] for w in group]
            needed = None if any(k is None for k in wanted) else set().union(*wanted)
            inversions = invert_batch(
                self.backbone(group[0]), [w.frames for w in group], group[0].inversion_settings, fps=group[0].clip.fps,
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
            if not self.keep_frames:  # the inversion keeps the first frame; the rest only the scorer needs
                work.frames = None
            work.seconds["inversion"] = seconds
        return {"work": works}
