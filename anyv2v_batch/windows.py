"""Clips longer than one model window: the window plan, and what joins the windows' outputs.

A clip of N frames is edited in one window while N <= the window limit (`window.max_frames`, per
backbone). Otherwise it is edited in consecutive windows of W frames that overlap by O >= 1 frames,
the last one aligned to the clip's end:

    N = 40, W = 16, O = 1:   [0, 16)  [15, 31)  [24, 40)

Window 1 is an ordinary AnyV2V edit with the edited first frame. Window k > 1 is an ordinary AnyV2V
edit of its own source frames (its own inversion, conditioned on its own first source frame) whose
edited first frame is window k - 1's output frame at the same source time, so every window is exactly
what the one-clip edit computes for that sub-clip, that first frame and its seed (`window_seed`).
Overlapping frames are written once, from the earlier window (`blend: earlier`) or crossfaded
(`blend: linear`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import AnyV2VError
from .settings import ClipSettings, WindowSettings

if TYPE_CHECKING:  # planning windows needs no torch (the decode tasks plan them)
    import torch


@dataclass(frozen=True)
class Window:
    """Frames [start, start + frames) of the clip; the output takes frames [written_from, end) from it."""

    index: int
    start: int
    frames: int
    written_from: int  # the first frame no earlier window wrote

    @property
    def end(self) -> int:
        return self.start + self.frames


@dataclass(frozen=True)
class WindowLimits:
    """What a backbone takes: chained windows of `frames`, one window up to `max_frames`; `exact`: it runs
    exactly `frames` frames (ConsistI2V's UNet bakes in its frame count); `step`: every window has
    step * k + 1 frames (Wan2.2's VAE packs 4 frames per latent after the first)."""

    frames: int
    max_frames: int
    exact: bool = False
    step: int = 1


def plan_windows(total: int, frames: int, overlap: int, max_frames: int) -> tuple[Window, ...]:
    """The windows of a clip of `total` frames (a pure function: the same numbers, the same plan)."""
    if total < 1 or frames < 2 or not 1 <= overlap < frames:
        raise ValueError(f"no window plan for {total} frames in windows of {frames} overlapping by {overlap}")
    if total <= max_frames:
        return (Window(0, 0, total, 0),)
    if total < frames:
        raise ValueError(f"{total} frames are fewer than one window of {frames}")
    stride = frames - overlap
    starts = list(range(0, total - frames + 1, stride))
    if starts[-1] + frames < total:
        starts.append(total - frames)  # the last window ends with the clip: it overlaps its neighbour more
    windows, written = [], 0
    for i, start in enumerate(starts):
        windows.append(Window(i, start, frames, written))
        written = start + frames
    return tuple(windows)


def resolve_limits(limits: WindowLimits, settings: WindowSettings, backbone: str) -> WindowLimits:
    """The backbone's limits with the job's window settings over them; refused when they cannot run."""
    frames = settings.frames or limits.frames
    # an explicit window length is honoured: a longer clip is chained in windows of it, unless the job
    # also says how long a clip may be and still be edited whole
    most = settings.max_frames or (frames if settings.frames else max(limits.max_frames, frames))
    if limits.exact and frames != limits.frames:
        raise AnyV2VError(
            f"{backbone} runs windows of exactly {limits.frames} frames; leave --window-frames unset or use "
            f"{limits.frames}"
        )
    if limits.exact:
        most = limits.frames
    if settings.overlap >= frames:
        raise AnyV2VError(f"--window-overlap {settings.overlap} must be below the window length {frames}")
    if frames > most:
        raise AnyV2VError(f"--window-frames {frames} is longer than --window-max-frames {most}; lower one of them")
    step = limits.step
    for value, flag in ((frames, "--window-frames"), (most, "--window-max-frames")):
        if (value - 1) % step:
            low = value - (value - 1) % step
            raise AnyV2VError(
                f"{backbone} runs windows of {step}k + 1 frames; {flag} {value} is not one: use {low} or {low + step}"
            )
    return WindowLimits(frames, most, limits.exact, step)


def plan_for(total: int, limits: WindowLimits, settings: WindowSettings) -> tuple[Window, ...]:
    """The plan of a clip of `total` frames, or the one-line error of a clip that no window fits."""
    if limits.exact and total < limits.frames:
        raise AnyV2VError(f"the clip has {total} frames, fewer than the {limits.frames} the model runs")
    step = limits.step
    if total <= limits.max_frames and (total - 1) % step:
        # one window cannot hold it (not step * k + 1 frames): two windows of the longest length that fits,
        # the second aligned to the clip's end, so no frame is dropped
        frames = total - (total - 1) % step
        if frames < step + 1:
            raise AnyV2VError(f"the clip has {total} frames; the model needs at least {step + 1}")
        return plan_windows(total, frames, min(settings.overlap, frames - 1), frames)
    return plan_windows(total, limits.frames, settings.overlap, limits.max_frames)


def window_seed(seed: int, index: int) -> int:
    """Window 1 uses the edit's seed; window k > 1 its own, derived from it (a valid torch seed)."""
    if index == 0:
        return seed
    digest = hashlib.sha256(f"{seed}\0window\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def window_clip(clip: ClipSettings, frames: int) -> ClipSettings:
    """The clip settings of `frames` concrete frames (what one window or one-window clip inverts)."""
    defaults = ClipSettings()
    return dataclasses.replace(clip, frames=frames, max_frames=defaults.max_frames, too_long=defaults.too_long)


def chained_first_frame(previous: np.ndarray, before: Window, window: Window) -> np.ndarray:
    """Window `window`'s edited first frame: the earlier window's output at the same source frame."""
    return previous[window.start - before.start]


def assemble(outputs: list[np.ndarray], plan: tuple[Window, ...], blend: str = "earlier") -> np.ndarray:
    """The clip from its windows' outputs [W, H, W, 3]: each frame once (see the module docstring)."""
    total = plan[-1].end
    clip = np.empty((total, *outputs[0].shape[1:]), dtype=np.uint8)
    for window, frames in zip(plan, outputs, strict=True):
        clip[window.written_from : window.end] = frames[window.written_from - window.start :]
        if blend == "linear" and window.index > 0:
            shared = window.written_from - window.start  # frames [start, written_from) are also the earlier's
            for j in range(shared):
                weight = (j + 1) / (shared + 1)  # rising towards the later window
                earlier = clip[window.start + j].astype(np.float64)
                mixed = (1 - weight) * earlier + weight * frames[j].astype(np.float64)
                clip[window.start + j] = np.clip(np.round(mixed), 0, 255).astype(np.uint8)
    return clip


def latent_stats(latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of video latents [1, C, F, h, w]."""
    flat = latents.float().transpose(0, 1).reshape(latents.shape[1], -1)
    return flat.mean(dim=1), flat.std(dim=1)


def match_stats(latents: torch.Tensor, reference: tuple[torch.Tensor, torch.Tensor], strength: float) -> torch.Tensor:
    """Move each channel's mean and std of `latents` towards `reference` by `strength` (0: unchanged,
    1: equal): the counter-measure to colour drift along a chain (AdaIN on the latents)."""
    mean, std = latent_stats(latents)
    ref_mean, ref_std = (r.to(latents.device) for r in reference)
    shape = (1, -1, *([1] * (latents.dim() - 2)))
    x = latents.float()
    matched = (x - mean.view(shape)) / std.clamp_min(1e-8).view(shape) * ref_std.view(shape) + ref_mean.view(shape)
    return (x + strength * (matched - x)).to(latents.dtype)


def seam_steps(clip: np.ndarray, plan: tuple[Window, ...]) -> list[float]:
    """For each window k > 1: the change from the last frame before it to its first new frame (mean absolute
    difference), against the median frame-to-frame change inside the windows. About 1 for a seamless join."""
    if len(plan) < 2:
        return []
    x = clip.astype(np.float32)
    changes = np.abs(np.diff(x, axis=0)).mean(axis=(1, 2, 3))  # changes[i]: frame i -> i + 1
    seams = {w.written_from - 1 for w in plan[1:]}
    inside = np.array([c for i, c in enumerate(changes) if i not in seams])
    typical = float(np.median(inside)) if len(inside) else 0.0
    steps = []
    for w in plan[1:]:
        change = float(changes[w.written_from - 1])
        steps.append(change / typical if typical > 0 else (0.0 if change == 0 else float("inf")))
    return steps


def clip_total(clip: ClipSettings, counted: int, seconds: float) -> tuple[int, bool]:
    """(frames the clip has, whether the source was cut to `clip.max_frames`). `counted`: the frames the
    source fills at the clip's fps, counted up to at least max_frames + 1 (video_io.video_length)."""
    if clip.frames != "all":
        return int(clip.frames), False
    if counted < 2:
        raise AnyV2VError(f"the source fills {counted} frame at {clip.fps:g} fps; a clip needs at least 2")
    if counted <= clip.max_frames:
        return counted, False
    if clip.too_long == "truncate":
        return clip.max_frames, True
    raise AnyV2VError(
        f"the source is {seconds:.2f} s long: more than clip.max_frames {clip.max_frames} frames at {clip.fps:g} "
        "fps; raise clip.max_frames (--max-frames) or set clip.too_long: truncate (--too-long truncate)"
    )
