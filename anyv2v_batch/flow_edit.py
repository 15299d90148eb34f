"""AnyV2V on a flow-matching DiT (Wan2.2 TI2V): inversion of the source, and sampling from it with the
edited first frame while the source branch's attention and features are injected.

Inversion runs the sampling grid backwards from the clean source latents (sigma 0) to the noisiest
point, with the source's first latent frame pinned (its tokens at t = 0, as in sampling), either Euler
(one model call per step) or RF-Solver's midpoint step (two). It keeps the latent at every grid point.

The edit starts from the inverted latent at the first grid point with the edited first frame pinned.
At each step the source branch (the inverted latent at that grid point, the source's first frame, the
inversion prompt) runs in a call of its own, recording at the modules that inject this step; the edit's
call ([conditional, negative]) then takes the recorded outputs:

- "attention": the self-attention's Q and K (`attn1.norm_q` / `attn1.norm_k`, after the per-token RMS
  norm and before RoPE, which both branches share), in every block, for the first `pnp_attn` of the
  steps. One 3-D attention carries what AnyV2V's spatial and temporal attentions carried, so there is one
  fraction; it defaults to AnyV2V's temporal one (0.5), the one that keeps the source's motion. With
  `attn_first_frame` (default) the first frame's tokens take the source's Q/K too, so the whole attention
  map is the source's while the values (the edited frame's content) stay the edit's own.
- "feature": the feed-forward output of the `feature_blocks` (default: the middle third of the blocks),
  for the first `pnp_feature` of the steps (AnyV2V's conv-feature fraction, 0.2), never on first-frame
  tokens (they carry the edit). The feed-forward is the DiT's per-token feature transform, the closest
  thing to the ResNet features AnyV2V injects; the middle blocks hold layout rather than the input's
  patch statistics or the output's appearance.

With `attn_injection="kv"` the attention window shares K/V instead (`kv_sharing.SharedKV`): the edit's
queries attend over its own keys and values and the source branch's, in every block.

Text cross-attention (`attn2`) is never touched. Nothing patches `forward`: forward hooks only
(`injection.FeatureInjector`, `kv_sharing.SharedKV`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .backbones.wan_ti2v import WanTI2V, pin_first_frame
from .flow import DEFAULT_SHIFT, UniPC, sampling_grid
from .injection import FeatureInjector
from .kv_sharing import SharedKV

SOLVERS = ("euler", "midpoint")


def grid_timestep(timesteps: torch.Tensor, i: int) -> int:
    """The model timestep at grid point i (the final point, sigma 0, is t = 0)."""
    return int(timesteps[i]) if i < len(timesteps) else 0


@torch.no_grad()
def invert(
    backbone: WanTI2V,
    source: torch.Tensor,
    context: torch.Tensor,
    steps: int,
    shift: float,
    solver: str = "euler",
    guidance: float = 1.0,
    negative_context: torch.Tensor | None = None,
) -> torch.Tensor:
    """Source latents [1, 48, T, h, w] -> the latent at every grid point, [steps + 1, 48, T, h, w]
    (index i at sigma_i; index `steps` is the source itself). Guidance > 1 needs `negative_context`."""
    if solver not in SOLVERS:
        raise ValueError(f"inversion solver must be one of {SOLVERS}, got {solver!r}")
    sigmas, timesteps = sampling_grid(steps, shift)
    first = source[:, :, :1]

    def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
        if guidance == 1.0 or negative_context is None:
            return backbone.velocity(x, t, context)
        cond, uncond = backbone.velocity(torch.cat([x, x]), t, torch.cat([context, negative_context])).chunk(2)
        return uncond + guidance * (cond - uncond)

    x = source.float()
    out = [x[0]]
    for i in range(steps - 1, -1, -1):  # from sigma_{i+1} up to sigma_i
        s_from, s_to = float(sigmas[i + 1]), float(sigmas[i])
        v = velocity(x, grid_timestep(timesteps, i + 1))
        if solver == "midpoint":
            mid = pin_first_frame(x + (s_to - s_from) / 2 * v, first)
            v = velocity(mid, (s_from + s_to) / 2 * 1000)
        x = pin_first_frame(x + (s_to - s_from) * v, first)
        out.append(x[0])
    return torch.stack(out[::-1])


@dataclass(frozen=True)
class FlowEditSettings:
    """The injected sampling (official Wan2.2 TI2V defaults for the sampler itself)."""

    steps: int = 50
    shift: float = DEFAULT_SHIFT
    guidance: float = 5.0
    pnp_attn: float = 0.5
    pnp_feature: float = 0.2
    attn_first_frame: bool = True
    feature_blocks: tuple[int, ...] | None = None  # None: the middle third of the blocks
    attn_injection: str = "qk"  # "qk": the source's Q/K replace the edit's; "kv": K/V shared

    def blocks(self, num_blocks: int) -> tuple[int, ...]:
        if self.feature_blocks is not None:
            return tuple(self.feature_blocks)
        third = num_blocks // 3
        return tuple(range(third, num_blocks - third)) if third else tuple(range(num_blocks))

    def injected_steps(self) -> dict[str, range]:
        """kind -> the step indices it injects at (the first int(steps * fraction), as AnyV2V counts)."""
        return {
            "attention": range(int(self.steps * self.pnp_attn)),
            "feature": range(int(self.steps * self.pnp_feature)),
        }


def injection_positions(backbone: WanTI2V, settings: FlowEditSettings) -> dict[str, tuple[str, ...]]:
    n = len(backbone.transformer.blocks)
    qk = settings.attn_injection == "qk"
    return {
        "attention": tuple(f"blocks.{i}.attn1.{norm}" for i in range(n) for norm in ("norm_q", "norm_k")) if qk else (),
        "feature": tuple(f"blocks.{i}.ffn" for i in settings.blocks(n)),
    }


@torch.no_grad()
def edit(
    backbone: WanTI2V,
    inverted: torch.Tensor | Callable[[int], torch.Tensor],
    edited_first: torch.Tensor,
    source_first: torch.Tensor,
    context: torch.Tensor,
    negative_context: torch.Tensor,
    source_context: torch.Tensor,
    settings: FlowEditSettings,
    on_step: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
    injector_out: list | None = None,
) -> torch.Tensor:
    """Injected sampling: `inverted` [steps + 1, 48, T, h, w] from `invert` on the same grid, the edited
    and the source first-frame latents [1, 48, 1, h, w], contexts [1, 512, D] -> edited latents [1, ...].

    `on_step(i, t, edit_sample, source_velocity)` sees every step (the source velocity is None where
    nothing injects: the source call is skipped). `injector_out` receives the (kind, step index) pairs
    that injected. `inverted[i]` is the inversion at step i's grid point (only the first `steps` are read),
    or `inverted(i)` gives it [1, ...] (read at the first step and where the source branch runs)."""
    if not callable(inverted):
        if inverted.shape[0] < settings.steps:
            raise ValueError(f"the inversion holds {inverted.shape[0]} grid points, the edit needs {settings.steps}")
        stack = inverted
        inverted = lambda i: stack[i : i + 1]  # noqa: E731
    sigmas, timesteps = sampling_grid(settings.steps, settings.shift)
    solver = UniPC(sigmas)
    windows = settings.injected_steps()
    start = inverted(0).float()
    h, w = start.shape[-2:]
    first_tokens = (h // backbone.patch) * (w // backbone.patch)
    x = pin_first_frame(start, edited_first)
    edit_contexts = torch.cat([context, negative_context])
    sharing = settings.attn_injection == "kv"
    blocks = range(len(backbone.transformer.blocks))
    with FeatureInjector(backbone.transformer, injection_positions(backbone, settings)) as injector, \
            SharedKV(backbone.transformer, blocks if sharing else ()) as kv:  # fmt: skip
        injector.kept_tokens = {"feature": first_tokens, "attention": 0 if settings.attn_first_frame else first_tokens}
        for i, t in enumerate(timesteps.tolist()):
            kinds = {kind for kind, steps in windows.items() if i in steps}
            hooked = kinds - {"attention"} if sharing else kinds  # what FeatureInjector carries
            source_v = None
            if kinds:  # the injector counts steps by index: (kind, i) in `fired`
                injector.record(i, hooked)
                if sharing and "attention" in kinds:
                    kv.record()
                source = pin_first_frame(inverted(i).float(), source_first)
                source_v = backbone.velocity(source, t, source_context)
            injector.inject(i, hooked)
            if sharing and "attention" in kinds:
                kv.share(i)
            cond, uncond = backbone.velocity(torch.cat([x, x]), t, edit_contexts).chunk(2)
            injector.pass_through()
            kv.off()
            if on_step is not None:
                on_step(i, t, x, source_v)
            v = uncond + settings.guidance * (cond - uncond)
            x = pin_first_frame(solver.step(v, x), edited_first)
        if injector_out is not None:
            injector_out.append(set(injector.fired) | {("attention", step) for step in kv.fired})
    return x
