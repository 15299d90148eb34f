"""What the inversion and the injected sampler need from an image-to-video model.

A backbone owns its networks and its conditioning; the sampling loops (`inversion.py`, `edit.py`) and
the feature injection (`injection.py`) are shared. Injection positions are data: for each kind, the
module paths (relative to `backbone.unet`) whose outputs are copied from the source branch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from ..errors import AnyV2VError
from ..schedule import Schedule
from ..settings import ClipSettings, EditSettings, InversionSettings
from ..windows import WindowLimits

# UNet keyword tensors, batch first, one entry per branch.
Conditioning = dict[str, torch.Tensor]


@dataclass(frozen=True, eq=False)
class Branch:
    """What one branch of a UNet batch is conditioned on."""

    prompt: str
    first_frame: np.ndarray  # [H, W, 3] uint8 at the clip size
    image_embedding: bool = True  # False: a zero image embedding (the official negative branch)


def cat_conditioning(parts: Sequence[Conditioning]) -> Conditioning:
    """Concatenate conditionings along the batch axis (branch order is kept)."""
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


class Backbone(ABC):
    """An I2V diffusion model as AnyV2V uses it.

    The defaults below are I2VGen-XL's (the sampler denoises every frame, DDIM, the source branch reads
    the inversion at the sampling timestep); ConsistI2V and SEINE override what differs.
    """

    name: ClassVar[str]
    default_model: ClassVar[str]
    # kind ("conv", "spatial", "temporal") -> module paths under `unet` whose outputs get injected
    injection_positions: ClassVar[Mapping[str, tuple[str, ...]]]
    # the official code conditions the source branch on the edited first frame (ConsistI2V's bug)
    source_branch_on_edited_frame: ClassVar[bool] = False
    # the noise schedules and which inverted latents the sampler reads (checked from configs before work)
    schedule_class: ClassVar[type[Schedule]] = Schedule
    # a flow-matching model: inverted and sampled by flow_edit.py's loops, not the DDIM ones
    flow: ClassVar[bool] = False

    schedule: Schedule

    unet: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    vae_scale_factor: int

    @abstractmethod
    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """[F, H, W, 3] uint8 -> latents [1, C, F, h, w] (float32, on `device`)."""

    @abstractmethod
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, F, h, w] -> video [B, 3, F, H, W], float32 in [-1, 1]."""

    @abstractmethod
    def condition(self, branches: Sequence[Branch], num_frames: int, fps: float) -> Conditioning:
        """The UNet conditioning of each branch, concatenated in order."""

    @abstractmethod
    def predict(self, latents: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        """One UNet evaluation: latents [B, C, F, h, w] at timestep t -> model output, float32."""

    def scheduler(self, inverse: bool = False):
        """A fresh sampling (or inversion) scheduler; the loops own its state."""
        return self.schedule.scheduler(inverse)

    # ---- how the sampling loops treat this model (defaults: I2VGen-XL)
    def sampled_part(self, latents: torch.Tensor) -> torch.Tensor:
        """The frames the sampler denoises, from video latents [B, C, F, h, w] (all of them by default)."""
        return latents

    def full_video(self, sampled: torch.Tensor, cond: Conditioning, row: int) -> torch.Tensor:
        """Video latents from sampled latents [1, C, F', h, w] and conditioning row `row` (inverse of
        `sampled_part`: ConsistI2V puts the conditioning first-frame latent back in front)."""
        return sampled

    def compile(self, **options) -> None:
        """torch.compile the UNet in place (module paths, hence injection positions, stay valid).

        The first calls compile (minutes on a GPU for a full-size UNet); a new batch size or a new set of
        injecting kinds compiles once more. Outputs are unchanged up to float rounding."""
        self.unet.compile(**options)

    # clips longer than one window (windows.py): the trained clip length, and the longest clip run as one window
    window_frames: ClassVar[int] = 16
    max_window_frames: ClassVar[int] = 16

    @classmethod
    def window_limits(cls, model: str | None) -> WindowLimits:
        """The windows this model takes (from its configs alone, before any weights load)."""
        return WindowLimits(cls.window_frames, cls.max_window_frames)

    @classmethod
    def check_settings(cls, model: str | None, clip: ClipSettings) -> None:
        """Reject, from configs alone (no weights loaded), clip settings this model cannot run."""
        return None  # I2VGen-XL and SEINE: any frame count; sizes are checked by ClipSettings

    @classmethod
    def check_knobs(cls, edit: EditSettings, inversion: InversionSettings) -> None:
        """Reject, before any work, settings that belong to another kind of backbone (the DiT's knobs)."""
        dit = {"pnp_attn": edit.pnp_attn, "pnp_feature": edit.pnp_feature, "shift": edit.shift,
               "feature_blocks": edit.feature_blocks, "attn_injection": edit.attn_injection != "qk"}  # fmt: skip
        for name, value in dit.items():
            if value:
                raise AnyV2VError(f"--{name.replace('_', '-')} applies to wan2.2-ti2v, not {cls.name}; leave it unset")
        cls.check_inversion(inversion)

    @classmethod
    def check_inversion(cls, inversion: InversionSettings) -> None:
        """Reject an inversion of another kind of backbone (the U-Nets invert with DDIM, without a shift)."""
        if inversion.shift:
            raise AnyV2VError(f"--inversion-shift applies to wan2.2-ti2v, not {cls.name}; leave it unset")
        if inversion.solver != "ddim":
            raise AnyV2VError(
                f"--inversion-solver {inversion.solver} applies to wan2.2-ti2v; {cls.name} inverts with ddim"
            )

    def check_clip(self, clip: ClipSettings) -> None:
        """Reject geometries this model cannot run, before any work."""
        f = self.vae_scale_factor
        if clip.width % f or clip.height % f:
            raise AnyV2VError(
                f"{self.name} needs --width and --height divisible by {f}, got {clip.width}x{clip.height}"
            )
