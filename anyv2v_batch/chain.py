"""The chained edit of a clip longer than one window (the plan and its rules: windows.py).

Sampling is sequential along a chain: window k's edited first frame is window k - 1's output. The
windows' inversions are independent, so `inversion_of(window)` may compute each on demand (the
one-clip command) or hand over inversions made elsewhere (the batch job's inversion pool).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .backbones.base import Backbone
from .inversion import Inversion
from .pnp_edit import EditRequest, edit_batch, to_uint8_frames
from .settings import EditSettings, WindowSettings
from .windows import Window, assemble, chained_first_frame, latent_stats, match_stats, seam_steps, window_seed


@dataclass
class ChainRequest:
    """One edit of a long clip: its edited first frame and settings (the seed is window 1's)."""

    first_frame: np.ndarray
    settings: EditSettings


@dataclass
class ChainResult:
    frames: np.ndarray  # the clip [N, H, W, 3] uint8, each frame once
    windows: list[np.ndarray] = field(default_factory=list)  # each window's own output [W, H, W, 3]
    seeds: list[int] = field(default_factory=list)  # each window's seed
    seam_steps: list[float] = field(default_factory=list)  # windows.seam_steps, one per window k > 1
    stats: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # each window's latent mean, std


@torch.inference_mode()
def edit_chains(
    backbone: Backbone,
    plan: tuple[Window, ...],
    inversion_of: Callable[[Window], Inversion],
    requests: list[ChainRequest],
    window: WindowSettings = WindowSettings(),
    together: bool = True,
    on_window: Callable[[Window], None] | None = None,
) -> list[ChainResult]:
    """Edit one clip along its window plan, for each request (the variants of one clip).

    together: each window's edits of all requests share UNet calls (and the source branch), as
    `edit_batch` does; else each request runs alone (bit-identical to the one-clip command per window).
    on_window(window) is called before each window is sampled."""
    outputs: list[list[np.ndarray]] = [[] for _ in requests]
    seeds: list[list[int]] = [[] for _ in requests]
    stats: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in requests]
    for w in plan:
        if on_window is not None:
            on_window(w)
        inversion = inversion_of(w)
        edits = []
        for j, r in enumerate(requests):
            first = r.first_frame if w.index == 0 else chained_first_frame(outputs[j][-1], plan[w.index - 1], w)
            seed = window_seed(r.settings.seed, w.index)
            seeds[j].append(seed)
            edits.append(EditRequest(inversion, first, dataclasses.replace(r.settings, seed=seed)))
        matching = window.match_stats > 0 and w.index > 0
        groups = [list(range(len(edits)))] if together else [[j] for j in range(len(edits))]
        for group in groups:
            results = edit_batch(backbone, [edits[j] for j in group], decode=not matching)
            for j, result in zip(group, results, strict=True):
                latents, frames = result.latents, result.frames
                if matching:  # window 1 is never touched: its statistics are the reference
                    latents = match_stats(latents, stats[j][0], window.match_stats)
                    frames = to_uint8_frames(backbone.decode_video(latents.to(backbone.device)))
                stats[j].append(latent_stats(latents))
                outputs[j].append(frames)
    results = []
    for j in range(len(requests)):
        clip = assemble(outputs[j], plan, window.blend)
        results.append(ChainResult(clip, outputs[j], seeds[j], seam_steps(clip, plan), stats[j]))
    return results
