"""The GPU pools' own behaviour, run in-process: batching, and failures (out of memory above all)
isolated to the sample that causes them. A CUDA out-of-memory error cannot happen on a CPU, so these
tests make the backbone raise the very exception CUDA raises when a call is too large."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, moving_clip

from anyv2v_batch.job import build_job
from anyv2v_batch.operators.actor_base import isolate_failures
from anyv2v_batch.operators.inversion_pool import OOM_MESSAGE as INVERSION_OOM
from anyv2v_batch.operators.inversion_pool import InversionPool
from anyv2v_batch.operators.sampler_pool import OOM_MESSAGE as SAMPLER_OOM
from anyv2v_batch.operators.sampler_pool import SamplerPool
from anyv2v_batch.operators.work import ClipWork, variant_for_sample

JOB = build_job({
    "input": "x.tar", "output": "o", "model": str(TINY_MODEL), "device": "cpu",
    "clip": {"frames": 6, "width": 32, "height": 32}, "inversion": {"steps": 4}, "edit": {"steps": 2},
    "variants": [{"name": "a", "prompt": "a car"}, {"name": "b", "prompt": "a dog", "edit": {"guidance_scale": 5.0}}],
})  # fmt: skip


def clip_work(key: str, seed: int) -> ClipWork:
    spec = JOB.variants[0]
    frames = moving_clip(6, 32, 32, seed=seed)
    work = ClipWork("x.tar", "x", key, {"key": key}, {}, None, "mp4", spec.clip, spec.inversion,
                    [variant_for_sample(v, key, {}) for v in JOB.variants], frames=frames,
                    backbone=spec.backbone, model=spec.model)  # fmt: skip
    for v in work.variants:
        v.first_frame = frames[0][..., ::-1].copy()
    return work


@pytest.fixture(scope="module")
def pools():
    return InversionPool(JOB, num_cpus=2), SamplerPool(JOB, num_cpus=2)


def oom_above(limit: int, backbone):
    """Make `backbone.predict` raise CUDA's out-of-memory error for batches above `limit` entries."""
    real = backbone.predict

    def predict(latents, t, cond):
        if latents.shape[0] > limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(latents, t, cond)

    return predict


@pytest.mark.slow
def test_a_batch_of_clips_equals_the_clips_alone(pools):
    inversion_pool, sampler_pool = pools
    together = [clip_work("k0", 0), clip_work("k1", 1)]
    sampler_pool(inversion_pool({"work": np.array(together, dtype=object)}))
    alone = []
    for i in range(2):
        w = clip_work(f"k{i}", i)
        sampler_pool(inversion_pool({"work": np.array([w], dtype=object)}))
        alone.append(w)
    for a, b in zip(together, alone, strict=True):
        for va, vb in zip(a.variants, b.variants, strict=True):
            assert not va.error and va.frames.shape == (6, 32, 32, 3)
            assert np.array_equal(va.frames, vb.frames)  # bit for bit: no pair's numbers depend on its company


def oom_while_inverting(clip: np.ndarray, backbone):
    """Make the inversion of `clip` (and only it) raise CUDA's out-of-memory error: `predict` raises while
    the clip last encoded is that one (every clip runs in calls of its own)."""
    real_encode, real_predict, current = backbone.encode_video, backbone.predict, {}

    def encode_video(frames):
        current["too_big"] = np.array_equal(frames, clip)
        return real_encode(frames)

    def predict(latents, t, cond):
        if current.get("too_big"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_predict(latents, t, cond)

    return encode_video, predict


@pytest.mark.slow
def test_out_of_memory_retries_alone_then_fails_only_what_does_not_fit(pools, monkeypatch):
    inversion_pool, sampler_pool = pools
    works = [clip_work("k0", 0), clip_work("k1", 1), clip_work("k2", 2)]
    (inverter,) = inversion_pool.backbones.values()
    (sampler,) = sampler_pool.backbones.values()
    encode, predict = oom_while_inverting(works[1].frames, inverter)
    monkeypatch.setattr(inverter, "encode_video", encode)
    monkeypatch.setattr(inverter, "predict", predict)
    inversion_pool({"work": np.array(works, dtype=object)})  # the batch fails on k1; alone, k0 and k2 fit
    assert [w.error for w in works] == ["", INVERSION_OOM, ""]
    assert works[0].inversion is not None and works[2].inversion is not None
    monkeypatch.undo()
    works = [works[0], works[2]]
    monkeypatch.setattr(sampler, "predict", oom_above(1, sampler))
    sampler_pool({"work": np.array(works, dtype=object)})
    # variant a (guidance 9) runs [negative, editing] = 2 entries per call, too big even alone;
    # variant b with guidance 5 likewise; so every variant fails alone, with the memory message
    assert all(v.error == SAMPLER_OOM for w in works for v in w.variants)
    works = [clip_work("k3", 3)]
    monkeypatch.setattr(inverter, "predict", oom_above(0, inverter))
    inversion_pool({"work": np.array(works, dtype=object)})
    assert works[0].error == INVERSION_OOM


def test_isolate_failures_runs_items_alone_after_a_failure():
    ran, failed = [], []

    def run(items):
        if len(items) > 1 or items[0] == "bad":
            raise RuntimeError("no")
        ran.append(items[0])

    isolate_failures(["a", "bad", "c"], run, lambda item, e: failed.append(item))
    assert ran == ["a", "c"] and failed == ["bad"]
