"""The first-frame editor actor pool: each variant's edited first frame, at the clip size."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from anyv2v_batch.editors import FirstFrameEditor, SampleContext, editor_class, load_editor
from anyv2v_batch.imaging import prepare_first_frame
from anyv2v_batch.job import JobSpec
from anyv2v_batch.operators.actor_base import prepare_models, start_worker, worker_device
from anyv2v_batch.operators.work import one_line


class EditorPool:
    """map_batches actor: loads each editor the job uses once, then edits frame after frame."""

    def __init__(self, job: JobSpec, num_cpus: float = 1.0):
        start_worker(num_cpus)
        self.job = job
        self.editors: dict[str, FirstFrameEditor] = {}

    def editor(self, name: str) -> FirstFrameEditor:
        if name not in self.editors:
            if editor_class(name).needs_gpu:  # an editor with models (not `provided`)
                prepare_models()
            self.editors[name] = load_editor(
                name, device=worker_device(self.job.device), dtype=self.job.dtype,
                accept_noncommercial_models=self.job.accept_noncommercial_models,
            )  # fmt: skip
        return self.editors[name]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        for work in batch["work"]:
            if work.window is not None and work.window.index > 0:
                continue  # a later window of a long clip starts from the earlier window's output
            for variant in work.pending():
                started = time.perf_counter()
                try:
                    options = dict(variant.editor.options)
                    if variant.edit_prompt:
                        options["instruction"] = variant.edit_prompt
                    context = SampleContext(
                        work.key,
                        work.meta,
                        work.files,
                        seed=variant.settings.seed,
                        max_image_pixels=self.job.limits.max_image_pixels,
                    )
                    edited = self.editor(variant.editor.name).edit(work.frames[0], options, context)
                    variant.first_frame = prepare_first_frame(edited, work.clip.width, work.clip.height)
                except Exception as e:  # noqa: BLE001 - an editor failure fails this variant only
                    variant.error = f"editor {variant.editor.name}: {one_line(e)}"
                variant.seconds["editor"] = time.perf_counter() - started
            work.files = {}
        return {"work": list(batch["work"])}
