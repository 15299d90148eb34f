"""The AnyV2V edit: sample from the inverted latent, conditioned on the edited first frame, while the
source branch's features are injected.

Per step, the source branch runs in a UNet call of its own, then each edit's [negative, editing]
(without guidance: [editing]) in one of its own, taking the source's recorded features. The source
branch's latent at timestep t is the stored inverted latent at t (the source is never denoised) and
its prediction is discarded; it exists only to supply features for injection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .backbones.base import Backbone, Branch
from .errors import AnyV2VError
from .imaging import prepare_first_frame
from .injection import FeatureInjector
from .inversion import Inversion
from .schedule import Schedule, set_schedule
from .settings import EditSettings, InversionSettings

UNET_KINDS = ("conv", "spatial", "temporal", "cross")
DIT_KINDS = ("attention", "feature")  # flow_edit.py: self-attention Q/K and feed-forward outputs
INJECTION_KINDS = UNET_KINDS + DIT_KINDS


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
    fractions = {
        "conv": settings.pnp_conv,
        "spatial": settings.pnp_spatial,
        "temporal": settings.pnp_temporal,
        "cross": settings.pnp_cross,
        "attention": settings.pnp_attn,
        "feature": settings.pnp_feature,
    }
    return {k: set(timesteps[start : start + int(settings.steps * f)]) for k, f in fractions.items()}


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[1, 3, F, H, W] in [-1, 1] -> [F, H, W, 3] uint8 (as diffusers' postprocess rounds)."""
    x = ((video[0].float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).cpu().numpy()


@dataclass(frozen=True)
class SamplingPlan:
    """Which timesteps an edit runs, where it injects, and which stored inversion latents it reads."""

    timesteps: list[int]  # the full sampling schedule
    run: list[int]  # the steps that run: timesteps[init_step:]
    windows: dict[str, set[int]]  # kind -> timesteps at which it injects
    last_source_step: int  # index into `run` of the last step with the source branch; -1: none
    start: int  # the stored inversion timestep the edit starts from
    source: list[int]  # the stored inversion timestep the source branch reads at each step of `run`

    @property
    def needed(self) -> list[int]:
        """The inverted latents the edit reads: the start, and the source branch's steps."""
        return sorted({self.start, *self.source[: self.last_source_step + 1]}, reverse=True)


def plan_sampling(
    backbone: Backbone,
    settings: EditSettings,
    inversion_settings: InversionSettings,
    inject: bool = True,
    trim_source: bool = True,
    scheduler=None,
) -> SamplingPlan:
    """Plan the edit (see `edit` for the flags); sets the timesteps of `scheduler` if one is given."""
    check_injection_kinds(type(backbone), settings)
    type(backbone).check_knobs(settings, inversion_settings)
    return plan_schedule(backbone.schedule, settings, inversion_settings, inject, trim_source, scheduler)


def check_injection_kinds(backbone_cls: type[Backbone], settings: EditSettings) -> None:
    if settings.pnp_cross > 0 and "cross" not in backbone_cls.injection_positions:
        raise AnyV2VError(f"--pnp-cross: {backbone_cls.name} has no cross-attention injection; leave it at 0")


def plan_schedule(
    schedule: Schedule,
    settings: EditSettings,
    inversion_settings: InversionSettings,
    inject: bool = True,
    trim_source: bool = True,
    scheduler=None,
) -> SamplingPlan:
    """The sampling plan from the schedule alone (no weights needed)."""
    if scheduler is None:
        timesteps = schedule.timesteps(settings.steps)
    else:
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
    start = schedule.start_timestep(run, inversion_settings, settings.init_step == 0)
    return SamplingPlan(timesteps, run, windows, last, start, [schedule.source_timestep(t) for t in run])


def check_inversion_serves(inversion_settings: InversionSettings, needed: list[int], schedule: Schedule) -> None:
    """Refuse, before any work, an edit whose timesteps an inversion with these settings does not store."""
    have = set(schedule.stored_timesteps(inversion_settings))
    for t in needed:
        if t not in have:
            raise schedule.missing_error(t, inversion_settings)


def check_edit_settings(
    backbone_cls: type[Backbone], model: str | None, settings: EditSettings, inversion_settings: InversionSettings
) -> None:
    """Everything about an edit's steps that can be refused before any model loads: the injection kinds
    the backbone has, and whether the inversion stores every latent the edit reads (the model's
    scheduler config is all that is read)."""
    check_injection_kinds(backbone_cls, settings)
    backbone_cls.check_knobs(settings, inversion_settings)
    try:
        schedule = backbone_cls.schedule_class.from_model(model or backbone_cls.default_model)
    except AnyV2VError:
        return  # no config to plan from (weights missing): loading the model says what is missing, in one line
    check_step_plan(schedule, settings, inversion_settings)


def check_step_plan(schedule: Schedule, settings: EditSettings, inversion_settings: InversionSettings) -> None:
    """Refuse settings whose inversion does not store every latent the edit reads, from the schedule
    alone (before any model loads or clip is decoded), naming step counts that work."""
    try:
        plan = plan_schedule(schedule, settings, inversion_settings)
        check_inversion_serves(inversion_settings, plan.needed, schedule)
    except AnyV2VError as e:
        fix = working_inversion_steps(schedule, settings, inversion_settings)
        raise AnyV2VError(f"{str(e).split('; ')[0]}; {fix}") from None


def working_inversion_steps(schedule: Schedule, settings: EditSettings, inversion_settings: InversionSettings) -> str:
    """A fix for an inversion that does not serve an edit, as a phrase: the nearest inversion step count
    that does, and on a saved grid (SEINE) a save-step count whose grid holds what the edit reads."""
    import dataclasses

    def serves(inv: InversionSettings) -> bool:
        try:
            plan = plan_schedule(schedule, settings, inv)
            check_inversion_serves(inv, plan.needed, schedule)
        except AnyV2VError:
            return False
        return True

    def nearest(counts: list[int], current: int) -> int:
        above = [n for n in counts if n >= current]
        return above[0] if above else counts[-1]

    limit = schedule.num_train_timesteps
    inv = inversion_settings
    steps = [n for n in range(1, limit + 1) if serves(dataclasses.replace(inv, steps=n))]
    if steps:
        pick = nearest(steps, inv.steps)
        others = [n for n in (settings.steps, 500) if n in steps and n != pick]
        also = f" (or {' or '.join(str(n) for n in others)})" if others else ""
        return f"use --inversion-steps {pick}{also} for --steps {settings.steps}"
    if inv.save_steps is not None:
        # the grid must hold every latent the source branch reads (the start is the grid's noisiest one)
        plan = plan_schedule(schedule, settings, inv)
        reads = set(plan.source[: plan.last_source_step + 1])
        for save in sorted(range(1, limit + 1), key=lambda n: (abs(n - inv.save_steps), n)):
            try:
                if not reads <= set(schedule.timesteps(save, inverse=True)):
                    continue
            except AnyV2VError:
                continue
            steps = [n for n in range(1, limit + 1) if serves(dataclasses.replace(inv, steps=n, save_steps=save))]
            if steps:
                pick = nearest(steps, inv.steps)
                return f"use --inversion-steps {pick} --inversion-save-steps {save} for --steps {settings.steps}"
    return f"no inversion step count serves --steps {settings.steps} with --init-step {settings.init_step}"


def source_frame(backbone: Backbone, inversion: Inversion, edited_frame: np.ndarray, settings: EditSettings):
    """The first frame the source branch is conditioned on: the source's own, except where the official
    code uses the edited one (ConsistI2V) and the fix is not asked for."""
    if backbone.source_branch_on_edited_frame and not settings.fix_source_frame:
        return edited_frame
    return inversion.source_first_frame


def edit_branches(
    backbone: Backbone, inversion: Inversion, first_frame: np.ndarray, settings: EditSettings
) -> list[Branch]:
    """[source, negative, editing] (without guidance: [source, editing]).

    source: the inversion prompt and the source first frame (see `source_frame`); negative: the negative
    prompt, a zero image embedding and the edited frame's latent; editing: the prompt and the edited frame.
    """
    branches = [Branch(inversion.settings.prompt, source_frame(backbone, inversion, first_frame, settings))]
    if settings.uses_guidance:
        branches.append(Branch(settings.negative_prompt, first_frame, image_embedding=False))
    branches.append(Branch(settings.prompt, first_frame))
    return branches


@dataclass
class EditRequest:
    """One edit of one inverted clip: its edited first frame and settings."""

    inversion: Inversion
    first_frame: np.ndarray  # the edited first frame (fitted to the clip size)
    settings: EditSettings


def batch_key(request: EditRequest) -> tuple:
    """Requests with equal keys can share UNet calls: one schedule, one latent shape."""
    return (request.settings.steps, request.settings.init_step, tuple(request.inversion.latents.shape[1:]))


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
    variance_noise: Callable[[int], torch.Tensor] | None = None,
) -> EditResult:
    """Edit the inverted clip so that it starts from `edited_first_frame`.

    inject=False: plain I2V sampling from the inverted latent (no source branch at all).
    trim_source: drop the source branch from the batch after the last step that injects anything
      (the official code computes it at every step and discards it; outputs are unchanged).
    on_step(i, t, latent): called with the editing branch's latent entering each UNet call.
    """
    step_hook = None if on_step is None else (lambda r, i, t, x: on_step(i, t, x))
    request = EditRequest(inversion, edited_first_frame, settings)
    return edit_batch(
        backbone, [request], decode=decode, inject=inject, trim_source=trim_source, positions=positions,
        on_step=step_hook, variance_noise=None if variance_noise is None else (lambda r, i: variance_noise(i)),
    )[0]  # fmt: skip


@torch.inference_mode()
def edit_batch(
    backbone: Backbone,
    requests: list[EditRequest],
    *,
    decode: bool = True,
    inject: bool = True,
    trim_source: bool = True,
    positions: dict[str, tuple[str, ...]] | None = None,
    on_step: Callable[[int, int, int, torch.Tensor], None] | None = None,
    variance_noise: Callable[[int, int], torch.Tensor] | None = None,
) -> list[EditResult]:
    """Several edits stepped together; each result is bit-identical to its edit alone.

    Requests of one clip (the same `Inversion` object) share its source branch, so a clip with V
    variants costs 1 + 2V batch entries per step instead of 3V. Every UNet call has a shape fixed by one
    pair alone: per step, each source branch in a call of its own (recording the features its edits
    inject), then each edit's [negative, editing] in a call of its own; conditioning and decoding are
    per pair too. So no pair's numbers depend on which other variants or clips run beside it.
    All requests need the same schedule and latent shape (group them by `batch_key`).
    on_step(request, i, t, latent) is called with each editing latent entering each UNet call.
    variance_noise(request, i): the noise a stochastic sampler (SEINE's DDPM) adds at step i, instead of
    a draw from the request's seeded generator (to replay a recorded run).
    """
    for r in requests:
        r.settings.validate()
        if r.inversion.backbone != backbone.name:
            raise AnyV2VError(f"the inversion was made with {r.inversion.backbone}, not {backbone.name}; invert again")
    if len({batch_key(r) for r in requests}) != 1:
        raise ValueError("edit_batch needs one schedule and one latent shape; group requests by batch_key")
    scheduler = None if backbone.flow else backbone.scheduler()  # flow: the official grid, no scheduler
    plans = [
        plan_sampling(backbone, r.settings, r.inversion.settings, inject, trim_source, scheduler) for r in requests
    ]
    for r, plan in zip(requests, plans, strict=True):
        for t in plan.needed:
            r.inversion.at(t)  # fail before any work if an inversion lacks a needed timestep
    run = plans[0].run
    frames = [prepare_first_frame(r.first_frame, *r.inversion.size) for r in requests]
    if backbone.flow:
        sources: dict[int, tuple] = {}  # per clip (the same `Inversion` object): its source branch's inputs, once
        return [
            _edit_flow(backbone, r, frames[j], plans[j], decode, j, on_step, sources) for j, r in enumerate(requests)
        ]

    # source branches in first-appearance order: one per clip (the same `Inversion` object), carried
    # while any of its edits injects; per edit where it is conditioned on the edited frame (ConsistI2V)
    sources: list[tuple[Inversion, np.ndarray]] = []
    source_of: list[int] = []
    for j, r in enumerate(requests):
        frame = source_frame(backbone, r.inversion, frames[j], r.settings)
        index = next((i for i, (c, f) in enumerate(sources) if c is r.inversion and f is frame), None)
        if index is None:
            sources.append((r.inversion, frame))
            index = len(sources) - 1
        source_of.append(index)
    members = [[j for j, c in enumerate(source_of) if c == i] for i in range(len(sources))]
    last_source = [max(plans[j].last_source_step for j in m) for m in members]

    # conditioning: each source branch alone; each edit's own branches [(negative,) editing] alone
    source_cond = [backbone.condition([Branch(c.settings.prompt, f)], c.num_frames, c.fps) for c, f in sources]
    own_cond = [
        backbone.condition(edit_branches(backbone, r.inversion, frames[j], r.settings)[1:], r.inversion.num_frames,
                           r.inversion.fps)
        for j, r in enumerate(requests)
    ]  # fmt: skip
    own_rows = [2 if r.settings.uses_guidance else 1 for r in requests]

    generators = [torch.Generator("cpu").manual_seed(r.settings.seed) for r in requests]
    xs = []
    for r, g, plan in zip(requests, generators, plans, strict=True):
        x = r.inversion.at(plan.start).to(backbone.device)
        if r.settings.random_ratio > 0:
            noise = torch.randn(x.shape, generator=g).to(x.device)
            x = noise * r.settings.random_ratio + x * (1 - r.settings.random_ratio)
        xs.append(backbone.sampled_part(x))

    positions = backbone.injection_positions if positions is None else positions
    entries = [0] * len(requests)
    with FeatureInjector(backbone.unet, positions) as injector:
        for i, t in enumerate(run):
            for c, (clip, _) in enumerate(sources):
                with_source = i <= last_source[c]
                # the kinds each edit of this clip injects at t
                kinds = {
                    j: {k for k in INJECTION_KINDS if with_source and t in plans[j].windows[k]} for j in members[c]
                }
                if with_source:  # the source latent is the stored inversion's: its features need no history
                    injector.record(t, set().union(*kinds.values()))
                    latent = backbone.sampled_part(clip.at(plans[members[c][0]].source[i])).to(xs[0].device)
                    backbone.predict(latent, t, source_cond[c])
                    entries[members[c][0]] += 1
                for j in members[c]:
                    r = requests[j]
                    if on_step is not None:
                        on_step(j, i, t, xs[j])
                    injector.inject(t, kinds[j])
                    out = backbone.predict(torch.cat([xs[j]] * own_rows[j]), t, own_cond[j])
                    entries[j] += own_rows[j]
                    if r.settings.uses_guidance:
                        neg, pos = out[0:1], out[1:2]
                        v = neg + r.settings.guidance_scale * (pos - neg)
                    else:
                        v = out[0:1]
                    noise = variance_noise(j, i) if variance_noise is not None and t > 0 else None  # none at t = 0
                    step = scheduler.step(v, t, xs[j], eta=r.settings.eta, generator=generators[j],
                                          variance_noise=noise)  # fmt: skip
                    xs[j] = step.prev_sample
                injector.pass_through()
        fired = injector.fired

    results = []
    for j in range(len(requests)):
        latents = backbone.full_video(xs[j], own_cond[j], own_rows[j] - 1)
        with_source = run[: last_source[source_of[j]] + 1]
        injected = {k: [t for t in with_source if t in plans[j].windows[k] and (k, t) in fired] for k in UNET_KINDS}
        frames_out = to_uint8_frames(backbone.decode_video(latents)) if decode else None
        results.append(EditResult(latents.to("cpu", torch.float32), frames_out, run, injected, entries[j]))
    return results


def _edit_flow(backbone, request: EditRequest, frame: np.ndarray, plan: SamplingPlan, decode: bool, j: int,
               on_step, sources: dict[int, tuple]) -> EditResult:  # fmt: skip
    """A flow-matching backbone's edit (flow_edit.edit) from an `Inversion` keyed by grid keys. `sources`
    holds each clip's source-branch context and first-frame latent, encoded by its first edit."""
    from .flow import DEFAULT_SHIFT
    from .flow_edit import FlowEditSettings
    from .flow_edit import edit as flow_edit

    s, inv = request.settings, request.inversion
    injecting = plan.last_source_step >= 0
    flow_settings = FlowEditSettings(
        steps=s.steps, shift=s.shift or DEFAULT_SHIFT, guidance=s.guidance_scale,
        pnp_attn=s.pnp_attn if injecting else 0.0, pnp_feature=s.pnp_feature if injecting else 0.0,
        attn_first_frame=s.attn_first_frame, feature_blocks=s.feature_blocks, attn_injection=s.attn_injection,
    )  # fmt: skip

    def inverted(i: int) -> torch.Tensor:  # step i reads the inversion at its grid key
        return inv.at(plan.run[i]).to(backbone.device)

    context = backbone.condition([Branch(s.prompt, frame)], 0, inv.fps)["context"]
    negative = backbone.condition([Branch(s.negative_prompt, frame)], 0, inv.fps)["context"]
    if id(inv) not in sources:
        source_branch = [Branch(inv.settings.prompt, inv.source_first_frame)]
        sources[id(inv)] = (backbone.condition(source_branch, 0, inv.fps)["context"],
                            backbone.encode_image(inv.source_first_frame))  # fmt: skip
    source_context, source_first = sources[id(inv)]
    source_calls: list[bool] = []  # per step: did the source branch run

    def step(i, t, x, source_v):
        source_calls.append(source_v is not None)
        if on_step is not None:
            on_step(j, i, plan.run[i], x)

    fired: list = []
    latents = flow_edit(
        backbone, inverted, backbone.encode_image(frame), source_first, context, negative, source_context,
        flow_settings, on_step=step, injector_out=fired,
    )  # fmt: skip
    injected = {k: [plan.run[i] for i in range(len(plan.run)) if (k, i) in fired[0]] for k in DIT_KINDS}
    frames_out = to_uint8_frames(backbone.decode_video(latents)) if decode else None
    entries = 2 * len(source_calls) + sum(source_calls)
    return EditResult(latents.to("cpu", torch.float32), frames_out, list(plan.run), injected, entries)


def to_uint8_batch(video: torch.Tensor) -> list[np.ndarray]:
    """[B, 3, F, H, W] in [-1, 1] -> B arrays [F, H, W, 3] uint8."""
    return [to_uint8_frames(video[b : b + 1]) for b in range(video.shape[0])]
