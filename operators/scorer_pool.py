"""The scorer actor pool: every finished variant of the batch's clips scored and judged (evaluate: in the job).

It sits after the sampler pool: the output frames, the source frames (fitted to the clip size, as the
backbone saw them) and the edited first frame are all still in the ClipWork. What is scored is the clip
as written: the output is encoded here (the encode stage reuses the bytes) and decoded again, so that
`anyv2v-batch score` on the written output computes the same numbers. A pair that cannot be
scored stays a good pair: it records why (`score_error`) and, when judged, fails its checks, so that
`route` sets it aside for a person to look at rather than passing it unseen.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import numpy as np

from anyv2v_batch.evaluation import EvaluateSettings
from anyv2v_batch.job import JobSpec
from anyv2v_batch.operators.actor_base import isolate_failures, prepare_models, start_worker, worker_device
from anyv2v_batch.operators.work import ClipWork, VariantWork, one_line
from anyv2v_batch.video_io import encode_mp4, read_video


def written_frames(work: ClipWork, variant: VariantWork) -> np.ndarray:
    """The output clip as a reader of the written `.mp4` sees it."""
    c = work.clip
    if variant.mp4 is None:
        variant.mp4 = encode_mp4(variant.frames, c.fps)
    frames = work.total or c.frames  # what `frames: all` came to
    return read_video(io.BytesIO(variant.mp4), frames, c.fps, c.width, c.height, name="output.mp4").frames


def judge(settings: EvaluateSettings, variant: VariantWork) -> None:
    """Fill the verdict of a scored (or unscorable) variant."""
    if not settings.judges:
        return
    if variant.score_error:
        variant.passed, variant.failed_checks = False, ["scoring"]
    else:
        variant.passed, variant.failed_checks = settings.judge(variant.scores)


class ScorerPool:
    """map_batches actor: loads the scorer once; scores the finished variants of its batch together."""

    def __init__(self, job: JobSpec, num_cpus: float = 1.0):
        from anyv2v_batch.scores import Scorer

        start_worker(num_cpus)
        prepare_models()
        self.settings = job.evaluate
        self.scorer = Scorer(
            job.evaluate.model, device=worker_device(job.device), dtype=job.evaluate.dtype,
            aesthetic=job.evaluate.aesthetic,
        )  # fmt: skip
        self.identity = json.dumps(self.scorer.identity, sort_keys=True)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        works: list[ClipWork] = list(batch["work"])
        started = time.perf_counter()
        pairs = []
        for work in works:
            for variant in work.variants:
                if variant.row is not None and work.error:  # `score`: the source could not be decoded
                    variant.score_error = variant.score_error or f"source: {work.error}"
                if variant.score_error:
                    judge(self.settings, variant)
                    continue
                made = variant.frames is not None or variant.mp4 is not None
                if made and variant.write and not (work.error or variant.error):
                    pairs.append((work, variant))

        def run(items: list[tuple[ClipWork, VariantWork]]) -> None:
            inputs = [(written_frames(w, v), w.frames, v.first_frame, v.settings.prompt) for w, v in items]
            windows = [[(x.start, x.end) for x in w.plan] if len(w.plan) > 1 else [] for w, _ in items]
            for (_, variant), scores in zip(items, self.scorer.score_many(inputs, windows), strict=True):
                variant.window_scores = scores.pop("window_edit_hold", [])
                variant.scores, variant.scorer_identity = scores, self.identity

        def fail(item: tuple[ClipWork, VariantWork], e: BaseException) -> None:
            item[1].score_error = one_line(e)

        if pairs:
            isolate_failures(pairs, run, fail)
        for _, variant in pairs:
            judge(self.settings, variant)  # an unscorable one fails "scoring"
        seconds = (time.perf_counter() - started) / max(1, len(pairs))
        for work in works:
            for variant in work.variants:
                variant.seconds["scorer"] = seconds
            work.frames = None  # not needed after scoring
        return {"work": works}
