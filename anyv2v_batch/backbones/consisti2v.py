"""ConsistI2V (TIGER-Lab/ConsistI2V) as the official AnyV2V code runs it; the network is in consisti2v_unet.py.

What differs from I2VGen-XL:
- the UNet sees the first frame's clean latent as frame 0 (concatenated on the frame axis) and denoises
  frames 1..F-1 only: the sampler works on F-1 frames, an inversion stores [first-frame latent, F-1
  inverted frames] (as the official code does), and the edit's output gets the edited frame's latent back
  as frame 0 (so the output's frame 0 is the VAE round trip of the edited frame);
- conditioning: the CLIP text encoder's last hidden state, the first frame's VAE latent, and the frame
  stride (3) embedded like a timestep; no image embedding, no fps;
- the official edit conditions the source branch on the EDITED first frame (its source first frame is
  loaded and never used); that is reproduced by default, `EditSettings.fix_source_frame` fixes it;
- the UNet bakes in its frame count (`n_frames`: 16 in the released model): clips must have exactly that.

As for I2VGen-XL, the VAE posterior mean replaces the official `latent_dist.sample()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer

from ..errors import AnyV2VError
from ..loading import load_component, load_json, load_target
from ..settings import ClipSettings
from ..windows import WindowLimits
from .base import Backbone, Branch, Conditioning
from .common import FrameByFrameVAE, encode_prompts, frames_to_pixels, load_sd_parts, unique_rows, vae_encode
from .consisti2v_unet import CONV_POSITIONS, SPATIAL_POSITIONS, TEMPORAL_POSITIONS, ConsistI2VUNet

FRAME_STRIDE = 3  # the official default (configs/pipeline_256/*.yaml `frame_stride`)


class ConsistI2V(FrameByFrameVAE, Backbone):
    name: ClassVar[str] = "consisti2v"
    default_model: ClassVar[str] = "TIGER-Lab/ConsistI2V"
    injection_positions: ClassVar[dict[str, tuple[str, ...]]] = {
        "conv": CONV_POSITIONS,
        "spatial": SPATIAL_POSITIONS,
        "temporal": TEMPORAL_POSITIONS,
    }
    source_branch_on_edited_frame: ClassVar[bool] = True

    def __init__(
        self,
        unet: ConsistI2VUNet,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler_config: dict,
        vae_dtype: torch.dtype | None = None,
        frame_stride: int = FRAME_STRIDE,
    ):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet.eval(), vae.eval(), text_encoder.eval(), tokenizer
        self.device, self.dtype = unet.device, unet.dtype
        self.vae_dtype = vae_dtype or vae.dtype
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.schedule = self.schedule_class(scheduler_config)
        self.scheduler_config = self.schedule.config
        self.frame_stride = frame_stride

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        variant: str | None = None,
    ) -> ConsistI2V:
        """Load from the hub id or a local folder in its layout (unet/, vae/, text_encoder/, tokenizer/,
        scheduler/). The VAE runs in float32 under half precision (the SD-2.1 VAE's `force_upcast`)."""
        target = load_target(model, cls.default_model, device, dtype, variant)
        parts = load_sd_parts(target)
        unet = load_component(ConsistI2VUNet, target.model, "unet", torch_dtype=target.dtype, **target.variant_kw)
        unet = unet.to(target.device)
        return cls(
            unet, parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["scheduler_config"], parts["vae_dtype"]
        )

    @classmethod
    def window_limits(cls, model: str | None) -> WindowLimits:
        n = load_json(model or cls.default_model, "unet", "config.json")["n_frames"]
        return WindowLimits(n, n, exact=True)  # a longer clip runs in chained windows of n frames

    @classmethod
    def check_settings(cls, model: str | None, clip: ClipSettings) -> None:
        n = load_json(model or cls.default_model, "unet", "config.json")["n_frames"]
        if clip.frames != "all" and clip.frames < n:
            raise AnyV2VError(
                f"consisti2v runs exactly {n} frames (its UNet was trained with n_frames {n}), got --frames "
                f"{clip.frames}; use --frames {n} or more (a longer clip runs in windows of {n}), or --frames all"
            )

    def check_clip(self, clip: ClipSettings) -> None:
        super().check_clip(clip)
        self._check_frames(self.unet.config.n_frames, clip)

    @staticmethod
    def _check_frames(n: int, clip: ClipSettings) -> None:
        if clip.frames != n:
            raise AnyV2VError(
                f"consisti2v runs exactly {n} frames (its UNet was trained with n_frames {n}), got --frames "
                f"{clip.frames}; use --frames {n}"
            )

    # ---- frames: frame 0 is a condition, the sampler works on frames 1..F-1
    def sampled_part(self, latents: torch.Tensor) -> torch.Tensor:
        return latents[:, :, 1:]

    def full_video(self, sampled: torch.Tensor, cond: Conditioning, row: int) -> torch.Tensor:
        first = cond["first_frame_latents"][row : row + 1].to(sampled.device, sampled.dtype)
        return torch.cat([first, sampled], dim=2)

    # ---- conditioning
    @torch.inference_mode()
    def condition(self, branches: Sequence[Branch], num_frames: int, fps: float) -> Conditioning:
        prompts, prompt_row = unique_rows([b.prompt for b in branches], key=lambda p: p)
        frames, frame_row = unique_rows([b.first_frame for b in branches])
        text = encode_prompts(self.tokenizer, self.text_encoder, prompts)  # [P, 77, D]
        first = vae_encode(self.vae, frames_to_pixels(frames, self.device, self.vae_dtype)).unsqueeze(2)
        return {
            "encoder_hidden_states": text[prompt_row].to(self.dtype),  # [N, 77, D]
            "first_frame_latents": first[frame_row],  # [N, C, 1, h, w] float32 (also the output's frame 0)
            "frame_stride": torch.full((len(branches),), self.frame_stride, device=self.device),
        }

    @torch.inference_mode()
    def predict(self, latents: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        # latents [B, C, F-1, h, w] -> noise prediction [B, C, F-1, h, w]
        out = self.unet(
            latents.to(self.device, self.dtype),
            torch.tensor(t, device=self.device),
            encoder_hidden_states=cond["encoder_hidden_states"],
            first_frame_latents=cond["first_frame_latents"].to(self.dtype),
            frame_stride=cond["frame_stride"],
        )
        return out.float()
