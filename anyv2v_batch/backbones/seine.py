"""SEINE (Vchitect/SEINE) as the official AnyV2V code runs it; the network is in seine_unet.py.

What differs from I2VGen-XL:
- the UNet input has 9 channels: [noisy latent 4, mask 1, masked-video latent 4], where the "video" is
  the first frame followed by blank frames, the mask is 0 on frame 0 and 1 elsewhere, and the masked
  video's latent is the VAE latent of each of those frames (the blank frames encode a zero image);
- text: the CLIP ViT-L/14 text encoder's last hidden state (Stable Diffusion 1.4's); no image embedding;
- the scheduler is SD-1.4's with betas linear 0.0001 .. 0.02; the inversion is a DDIM inversion over that
  schedule (the TokenFlow-style loop of the official code equals diffusers' DDIMInverseScheduler) whose
  latents are saved only on a coarser grid (250 steps by default);
- the edit samples with ancestral DDPM (ddpm.py), 50 steps from t = 980, but starts from the NOISIEST
  SAVED inverted latent (t = 997 by default), and its source branch reads the inversion at t + 1.

Weights: a folder in the Stable Diffusion 1.4 layout (vae/, text_encoder/, tokenizer/, scheduler/) whose
unet/ is either SEINE's converted 3D UNet (`anyv2v-batch convert-seine`, safetensors) or SD-1.4's own 2D
UNet with the official `seine.pt` beside it (read with `torch.load(weights_only=True)`). Without a
folder: SD-1.4 from the hub and `seine.pt` from xinyuanc91/SEINE.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer

from ..loading import load_component, load_json, load_target
from ..schedule import Schedule, SEINESchedule
from .base import Backbone, Branch, Conditioning
from .common import FrameByFrameVAE, encode_prompts, frames_to_pixels, load_sd_parts, unique_rows, vae_encode
from .seine_checkpoint import seine_checkpoint_path, unet_from_checkpoint
from .seine_unet import INJECTION_POSITIONS, SEINEUNet


def load_seine_unet(model: str, dtype: torch.dtype) -> SEINEUNet:
    """The 3D UNet: converted (unet/ holds SEINEUNet) or inflated from unet/'s 2D config + seine.pt."""
    config = load_json(model, "unet", "config.json")
    if config.get("_class_name") == SEINEUNet.__name__:
        return load_component(SEINEUNet, model, "unet", torch_dtype=dtype)
    return unet_from_checkpoint(seine_checkpoint_path(model), config, model).to(dtype)


class SEINE(FrameByFrameVAE, Backbone):
    name: ClassVar[str] = "seine"
    default_model: ClassVar[str] = "CompVis/stable-diffusion-v1-4"
    injection_positions: ClassVar[dict[str, tuple[str, ...]]] = dict(INJECTION_POSITIONS)
    schedule_class: ClassVar[type[Schedule]] = SEINESchedule

    def __init__(
        self,
        unet: SEINEUNet,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler_config: dict,
        vae_dtype: torch.dtype | None = None,
    ):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet.eval(), vae.eval(), text_encoder.eval(), tokenizer
        self.device, self.dtype = unet.device, unet.dtype
        self.vae_dtype = vae_dtype or vae.dtype
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.schedule = self.schedule_class(scheduler_config)
        self.scheduler_config = self.schedule.config
        self._blank_latents: dict[tuple[int, int], torch.Tensor] = {}

    @torch.inference_mode()
    def blank_latent(self, height: int, width: int) -> torch.Tensor:
        """The VAE latent [C, h, w] of a masked-out (all-zero) frame, once per size.

        Computed in float64: on a constant image the encoder's normalisations work on near-zero
        variances, and float32 is 7e-4 off there (the official float32 run happened to land within 1e-6
        of the exact value; ours, through current kernels, does not)."""
        key = (height, width)
        if key not in self._blank_latents:
            import copy

            vae64 = copy.deepcopy(self.vae).to(torch.float64)
            zeros = torch.zeros(1, 3, height, width, device=self.device, dtype=torch.float64)
            self._blank_latents[key] = vae_encode(vae64, zeros)[0].float()
            del vae64
        return self._blank_latents[key]

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        variant: str | None = None,
    ) -> SEINE:
        target = load_target(model, cls.default_model, device, dtype, variant)
        parts = load_sd_parts(target)
        unet = load_seine_unet(target.model, target.dtype).to(target.device)
        return cls(
            unet, parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["scheduler_config"], parts["vae_dtype"]
        )

    # ---- conditioning
    @torch.inference_mode()
    def condition(self, branches: Sequence[Branch], num_frames: int, fps: float) -> Conditioning:
        prompts, prompt_row = unique_rows([b.prompt for b in branches], key=lambda p: p)
        frames, frame_row = unique_rows([b.first_frame for b in branches])
        text = encode_prompts(self.tokenizer, self.text_encoder, prompts)  # [P, 77, D]
        height, width = frames[0].shape[:2]
        first = vae_encode(self.vae, frames_to_pixels(frames, self.device, self.vae_dtype))[
            :, :, None
        ]  # [K, C, 1, h, w]
        # masked-out frames are zeros in [-1, 1] (mid grey)
        rest = self.blank_latent(height, width)[None, :, None].expand(len(frames), -1, num_frames - 1, -1, -1)
        masked = torch.cat([first, rest], dim=2)  # [K, C, F, h, w]
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        mask = torch.ones(1, 1, num_frames, h, w, device=self.device)
        mask[:, :, 0] = 0.0  # frame 0 is given, the rest is generated
        return {
            "encoder_hidden_states": text[prompt_row].to(self.dtype),  # [N, 77, D]
            "mask": mask.expand(len(branches), -1, -1, -1, -1),  # [N, 1, F, h, w]
            "masked_latents": masked[frame_row],  # [N, C, F, h, w]
        }

    @torch.inference_mode()
    def predict(self, latents: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        # latents [B, 4, F, h, w] -> noise prediction [B, 4, F, h, w]
        x = torch.cat([latents.float(), cond["mask"].float(), cond["masked_latents"]], dim=1)
        out = self.unet(
            x.to(self.device, self.dtype), torch.tensor(t, device=self.device), cond["encoder_hidden_states"]
        )
        return out.float()
