"""The AnyV2V edit: sample from the inverted latent, conditioned on the edited first frame, while the
source branch's features are injected.

Each UNet call is one batch [source, negative, editing] (without guidance: [source, editing]). The
source branch's latent at timestep t is the stored inverted latent at t (the source is never
denoised) and its prediction is discarded; it exists only to supply features for injection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .backbones.base import Backbone, Branch
from .errors import AnyV2VError
from .imaging import as_rgb_array, fit_frame
from .injection import BranchPlan, FeatureInjector
from .inversion import Inversion, missing_timestep_error, set_schedule
from .settings import EditSettings

INJECTION_KINDS = ("conv", "spatial", "temporal")


@dataclass
class EditResult:
    latents: torch.Tensor  # [1, C, F, h, w] float32 on the CPU
    frames: np.ndarray | None  # [F, H, W, 3] uint8, when decoded
    timesteps: list[int]  # the sampling timesteps that ran
    injected: dict[str, list[int]] = field(default_factory=dict)  # kind -> timesteps it fired at
    unet_batch_entries: int = 0  # sum of UNet batch sizes: a cost measure


def injection_windows(timesteps: list[int], settings: EditSettings) -> dict[str, set[int]]:
    """kind -> the timesteps at which it injects.

    Official: the first int(steps * fraction) timesteps of the *full* schedule (so a start index > 0
    drops injected steps). "from-start": as many steps, counted from the first step that runs.
    """
    start = 0 if settings.injection_window == "official" else settings.init_step
    fractions = {"conv": settings.pnp_conv, "spatial": settings.pnp_spatial, "temporal": settings.pnp_temporal}
    return {k: set(timesteps[start : start + int(settings.steps * f)]) for k, f in fractions.items()}


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[1, 3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8 (as diffusers' postprocess rounds)."""
    x = ((video[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


def prepare_first_frame(frame, width: int, height: int) -> np.ndarray:
    """The edited first frame at the clip size (LANCZOS, as the official script resizes it)."""
    return fit_frame(as_rgb_array(frame), width, height, "stretch")


@dataclass(frozen=True)
class SamplingPlan:
    """Which timesteps an edit runs, where it injects, and how long it needs the source branch."""

    timesteps: list[int]  # the full sampling schedule
    run: list[int]  # the steps that run: timesteps[init_step:]
    windows: dict[str, set[int]]  # kind -> timesteps at which it injects
    last_source_step: int  # index into `run` of the last step with the source branch; -1: none

    @property
    def needed(self) -> list[int]:
        """The inverted latents the edit reads: the start, and the source branch's steps."""
        return sorted(set(self.run[:1] + self.run[: self.last_source_step + 1]), reverse=True)


def plan_sampling(scheduler, settings: EditSettings, inject: bool = True, trim_source: bool = True) -> SamplingPlan:
    """Set `scheduler`'s timesteps for `settings` and plan the edit (see `edit` for the flags)."""
    timesteps = set_schedule(scheduler, settings.steps, "--steps")
    run = timesteps[settings.init_step :]
    windows = injection_windows(timesteps, settings) if inject else {k: set() for k in INJECTION_KINDS}
    injecting = [i for i, t in enumerate(run) if any(t in w for w in windows.values())]
    if not inject:
        last = -1
    elif trim_source:
        last = injecting[-1] if injecting else -1
    else:
        last = len(run) - 1
    return SamplingPlan(timesteps, run, windows, last)


def check_inversion_serves(inversion_steps: int, needed: list[int], backbone: Backbone) -> None:
    """Refuse, before any work, an edit whose timesteps an inversion of `inversion_steps` lacks."""
    have = set(set_schedule(backbone.scheduler(inverse=True), inversion_steps, "--inversion-steps"))
    for t in needed:
        if t not in have:
            raise missing_timestep_error(t, inversion_steps)


def edit_branches(inversion: Inversion, first_frame: np.ndarray, settings: EditSettings) -> list[Branch]:
    """[source, negative, editing] (without guidance: [source, editing]).

    source: the inversion prompt and the *source* first frame; negative: the negative prompt, a zero
    image embedding and the edited frame's latent; editing: the prompt and the edited frame.
    """
    branches = [Branch(inversion.settings.prompt, inversion.source_first_frame)]
    if settings.uses_guidance:
        branches.append(Branch(settings.negative_prompt, first_frame, image_embedding=False))
    branches.append(Branch(settings.prompt, first_frame))
    return branches


@torch.inference_mode()
def edit(
    backbone: Backbone,
    inversion: Inversion,
    edited_first_frame,
    settings: EditSettings,
    *,
    decode: bool = True,
    inject: bool = True,
    trim_source: bool = True,
    positions: dict[str, tuple[str, ...]] | None = None,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> EditResult:
    """Edit the inverted clip so that it starts from `edited_first_frame`.

    inject=False: plain I2V sampling from the inverted latent (no source branch at all).
    trim_source: drop the source branch from the batch after the last step that injects anything
      (the official code computes it at every step and discards it; outputs are unchanged).
    on_step(i, t, latent): called with the editing branch's latent entering each UNet call.
    """
    settings.validate()
    if inversion.backbone != backbone.name:
        raise AnyV2VError(f"the inversion was made with {inversion.backbone}, not {backbone.name}; invert again")
    width, height = inversion.size
    frame = prepare_first_frame(edited_first_frame, width, height)
    scheduler = backbone.scheduler()
    plan = plan_sampling(scheduler, settings, inject=inject, trim_source=trim_source)
    run, windows, last_source_step = plan.run, plan.windows, plan.last_source_step
    for t in plan.needed:
        inversion.at(t)  # fail before any work if the inversion lacks a needed timestep

    all_branches = edit_branches(inversion, frame, settings)
    n = len(all_branches) - 1  # branches that are sampled: [negative,] editing
    cond_all = backbone.condition(all_branches, inversion.num_frames, inversion.fps)
    cond_plain = {k: v[1:] for k, v in cond_all.items()}

    generator = torch.Generator("cpu").manual_seed(settings.seed)
    x = inversion.at(run[0]).to(backbone.device)
    if settings.random_ratio > 0:
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        x = noise * settings.random_ratio + x * (1 - settings.random_ratio)

    positions = backbone.injection_positions if positions is None else positions
    entries = 0
    with FeatureInjector(backbone.unet, positions) as injector:
        injector.configure(BranchPlan.one_source(n + 1))
        for i, t in enumerate(run):
            if on_step is not None:
                on_step(i, t, x)
            with_source = i <= last_source_step
            if with_source:
                batch = torch.cat([inversion.at(t).to(x.device), *[x] * n])
                injector.set_step(t, [k for k, w in windows.items() if t in w])
                out = backbone.predict(batch, t, cond_all)[1:]
            else:
                injector.set_step(t, ())
                out = backbone.predict(torch.cat([x] * n), t, cond_plain)
            entries += out.shape[0] + with_source
            if settings.uses_guidance:
                neg, pos = out.chunk(2)
                out = neg + settings.guidance_scale * (pos - neg)
            x = scheduler.step(out, t, x, eta=settings.eta, generator=generator).prev_sample
        fired = injector.fired

    latents = x.to("cpu", torch.float32)
    frames = to_uint8_frames(backbone.decode_video(x)) if decode else None
    injected = {k: sorted({t for kind, t in fired if kind == k}, reverse=True) for k in INJECTION_KINDS}
    return EditResult(latents, frames, run, injected, entries)
