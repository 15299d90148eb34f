"""Sizing the GPU pools so that neither waits for the other.

A clip costs the inversion pool `inversion_steps` UNet batch entries (twice that with inversion
guidance), and the sampler pool, per variant, `steps` calls of 3 entries ([source, negative, editing];
2 without guidance), less the source entries after the last injecting step, with the source shared by
a clip's variants. Official defaults with V variants: 500 against about 125 V (3 x 50 V untrimmed),
so the inversion pool should hold about 500 / (500 + 125 V) of the GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

from anyv2v_batch.job import JobSpec
from anyv2v_batch.settings import EditSettings


def source_steps(settings: EditSettings) -> int:
    """Steps (of those that run) that still need the source branch: up to the last injecting one."""
    run = settings.steps - settings.init_step
    start = 0 if settings.injection_window == "official" else settings.init_step
    last = -1
    for fraction in (settings.pnp_conv, settings.pnp_spatial, settings.pnp_temporal):
        width = int(settings.steps * fraction)
        if width:
            last = max(last, start + width - 1 - settings.init_step)  # index into the run
    return min(run, last + 1) if last >= 0 else 0


@dataclass
class ClipCost:
    """UNet batch entries one source clip costs each pool (the unit GPU time scales with)."""

    inversion: int
    sampler: int
    editor_calls: int


def clip_cost(job: JobSpec) -> ClipCost:
    groups: dict[tuple, list] = {}
    for v in job.variants:
        groups.setdefault((v.clip, v.inversion), []).append(v)
    inversion = sampler = 0
    for (_, inv), variants in groups.items():
        inversion += inv.steps * (2 if inv.guidance_scale > 1 else 1)
        sampler += max(source_steps(v.edit) for v in variants)  # one source branch per clip
        sampler += sum((v.edit.steps - v.edit.init_step) * (2 if v.edit.uses_guidance else 1) for v in variants)
    return ClipCost(inversion, sampler, len(job.variants))


def split_gpus(job: JobSpec, slots: int) -> tuple[int, int]:
    """(inversion actors, sampler actors) out of `slots` GPU actors, proportional to their cost."""
    if slots < 2:
        return 1, 1
    cost = clip_cost(job)
    inversion = round(slots * cost.inversion / (cost.inversion + cost.sampler))
    inversion = min(max(1, inversion), slots - 1)
    return inversion, slots - inversion


def utilisation(busy_seconds: dict[str, float], wall_seconds: float, sizes: dict[str, int]) -> dict[str, float]:
    """Share of each pool's actor time spent working."""
    return {
        name: busy_seconds.get(name, 0.0) / (wall_seconds * sizes[name]) if wall_seconds > 0 and sizes[name] else 0.0
        for name in sizes
    }
