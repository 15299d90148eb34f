"""AnyDoor's networks on diffusers / transformers classes, and its own DDIM sampler.

AnyDoor (ali-vilab/AnyDoor @ 44ca2b2a) is a ControlNet-guided Stable Diffusion 2.1-base whose
cross-attention context is not text but 257 DINOv2 ViT-g/14 tokens of the subject ("ID extractor",
projected 1536 -> 1024). Where it differs from the stock classes:

- The ID extractor interpolates the 518-px position embeddings to a 224-px input with
  `scale_factor = (224 // 14 + 0.1) / 37` (bicubic), transformers' Dinov2 with `size = 224 // 14`:
  different numbers, so the loaded Dinov2Model gets AnyDoor's interpolation (`with_anydoor_interpolation`).
- Its ControlNet replaces the first block's output by the hint embedding, where diffusers' ControlNet
  adds `conv_in(sample)`: a converted `ControlNetModel` has `conv_in` zeroed (convert_anydoor.py).
- Its DDIM runs on ldm's timesteps `range(0, 1000, 1000 // S) + 1`: 31 steps for S = 30, which
  diffusers' DDIMScheduler cannot produce; `AnyDoorModel.sample` is that loop (anydoor_ddim.py) with
  classifier-free guidance `u + s (c - u)`, the unconditional tokens those of an all-zero reference
  image and the same hint on both branches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Dinov2Model
from transformers.models.dinov2.modeling_dinov2 import Dinov2Embeddings

from .anydoor_ddim import LdmDDIM, ldm_alphas_cumprod

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SCHEDULER_DEFAULTS = {"beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000}


class AnyDoorDinov2Embeddings(Dinov2Embeddings):
    """Dinov2 embeddings with the position-embedding interpolation of AnyDoor's vendored DINOv2."""

    def interpolate_pos_encoding(self, embeddings: torch.Tensor, height: int, width: int) -> torch.Tensor:
        num_patches = embeddings.shape[1] - 1
        num_positions = self.position_embeddings.shape[1] - 1
        if num_patches == num_positions and height == width:
            return self.position_embeddings
        pos = self.position_embeddings.float()
        side = math.sqrt(num_positions)
        dim = embeddings.shape[-1]
        # +0.1 "to avoid floating point error", then scale_factor (not size): AnyDoor's exact numbers
        rows, cols = height // self.patch_size + 0.1, width // self.patch_size + 0.1
        grid = pos[:, 1:].reshape(1, int(side), int(side), dim).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(grid, scale_factor=(rows / side, cols / side), mode="bicubic")
        if grid.shape[-2:] != (int(rows), int(cols)):
            raise ValueError(f"interpolated position grid {tuple(grid.shape[-2:])} for a {height}x{width} input")
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat((pos[:, :1], grid), dim=1).to(embeddings.dtype)


def with_anydoor_interpolation(dino: Dinov2Model) -> Dinov2Model:
    """The same model (same weights) with AnyDoor's position-embedding interpolation.

    Only the embeddings' class changes (it adds no state), so the model loads and saves as a stock
    Dinov2Model, including transformers' own key conversions."""
    if not isinstance(dino.embeddings, Dinov2Embeddings):
        raise TypeError(f"not a Dinov2Model: its embeddings are {type(dino.embeddings).__name__}")
    dino.embeddings.__class__ = AnyDoorDinov2Embeddings
    return dino


class AnyDoorImageEncoder(nn.Module):
    """The ID extractor: ImageNet-normalised [0, 1] image -> projected normed DINOv2 tokens (CLS first)."""

    def __init__(self, dino: Dinov2Model, projector: nn.Linear) -> None:
        super().__init__()
        self.dino = dino
        self.projector = projector
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).reshape(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pixels = (image.to(self.mean.device) - self.mean) / self.std
        # AnyDoor concatenates x_norm_clstoken and x_norm_patchtokens: the whole normed last hidden state
        tokens = self.dino(pixel_values=pixels.to(self.dino.dtype)).last_hidden_state
        return self.projector(tokens.to(self.projector.weight.dtype))


StepHook = Callable[[int, int, torch.Tensor, torch.Tensor, torch.Tensor | None], None]


class AnyDoorModel:
    """The loaded AnyDoor networks and its sampler (a converted folder, see convert_anydoor.py)."""

    def __init__(self, unet, controlnet, vae, encoder: AnyDoorImageEncoder, scheduler: dict[str, Any]) -> None:
        self.unet, self.controlnet, self.vae, self.encoder = unet, controlnet, vae, encoder
        self.scheduler = {**SCHEDULER_DEFAULTS, **scheduler}
        self.alphas_cumprod = ldm_alphas_cumprod(
            self.scheduler["beta_start"], self.scheduler["beta_end"], self.scheduler["num_train_timesteps"]
        )

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def latent_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @classmethod
    def load(cls, model: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> AnyDoorModel:
        """From a converted folder or hub repo: unet/ controlnet/ vae/ dino/ projector.safetensors scheduler/."""
        from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
        from safetensors.torch import load_file

        from ..loading import load_component, load_json

        unet = load_component(UNet2DConditionModel, model, "unet", torch_dtype=dtype)
        controlnet = load_component(ControlNetModel, model, "controlnet", torch_dtype=dtype)
        vae = load_component(AutoencoderKL, model, "vae", torch_dtype=dtype)
        dino = with_anydoor_interpolation(load_component(Dinov2Model, model, "dino", dtype=dtype))
        projector_state = load_file(_model_file(model, "projector.safetensors"))
        out_dim, in_dim = projector_state["weight"].shape
        projector = nn.Linear(in_dim, out_dim)
        projector.load_state_dict(projector_state)
        encoder = AnyDoorImageEncoder(dino, projector.to(dtype))
        scheduler = load_json(model, "scheduler", "scheduler_config.json")
        for net in (unet, controlnet, vae, encoder):
            net.to(device).eval().requires_grad_(False)
        return cls(unet, controlnet, vae, encoder, scheduler)

    @torch.no_grad()
    def encode_subject(self, ref: torch.Tensor) -> torch.Tensor:
        """ref [B, 3, 224, 224] in [0, 1] -> context tokens [B, 257, C]."""
        return self.encoder(ref.to(self.device))

    @torch.no_grad()
    def uncond_tokens(self) -> torch.Tensor:
        """The unconditional context: the tokens of an all-zero (black, unnormalised) reference image."""
        return self.encode_subject(torch.zeros(1, 3, 224, 224))

    @torch.no_grad()
    def eps(
        self, x: torch.Tensor, t: int, hint: torch.Tensor, context: torch.Tensor, control_strength: float
    ) -> torch.Tensor:
        """ControlLDM.apply_model: control residuals x strength added to the UNet's skips and middle."""
        timestep = torch.full((x.shape[0],), t, dtype=torch.long, device=self.device)
        x, hint, context = x.to(self.dtype), hint.to(self.device, self.dtype), context.to(self.dtype)
        down, mid = self.controlnet(
            x, timestep, encoder_hidden_states=context, controlnet_cond=hint,
            conditioning_scale=control_strength, return_dict=False,
        )  # fmt: skip
        out = self.unet(
            x, timestep, encoder_hidden_states=context,
            down_block_additional_residuals=down, mid_block_additional_residual=mid,
        ).sample  # fmt: skip
        return out.float()

    @torch.no_grad()
    def sample(
        self,
        x_T: torch.Tensor,
        hint: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        steps: int = 30,
        guidance_scale: float = 4.5,
        control_strength: float = 1.0,
        on_step: StepHook | None = None,
    ) -> torch.Tensor:
        """AnyDoor's DDIM (ldm `DDIMSampler.sample`, eta 0) from x_T; on_step(i, t, x_in, eps_c, eps_u)."""
        ddim = LdmDDIM(self.alphas_cumprod, steps)
        x = x_T.to(self.device, torch.float32)
        for i, t in enumerate(ddim.timesteps):
            eps_cond = self.eps(x, t, hint, cond, control_strength)
            # at scale 1 the official sampler runs the conditional branch only
            eps_uncond = None if guidance_scale == 1.0 else self.eps(x, t, hint, uncond, control_strength)
            if on_step is not None:
                on_step(i, t, x, eps_cond, eps_uncond)
            x = ddim.step(i, x, ddim.guide(eps_cond, eps_uncond, guidance_scale))
        return x

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """ldm decode_first_stage: (1 / scale_factor) * z through the VAE decoder, [-1, 1]-ish float32."""
        z = (1.0 / self.vae.config.scaling_factor) * latent.to(self.device, torch.float32)
        return self.vae.decode(z.to(self.dtype)).sample.float()


def _model_file(model: str, filename: str) -> str:
    local = Path(model).expanduser()
    if local.is_dir():
        path = local / filename
        if not path.is_file():
            from ..errors import AnyV2VError

            raise AnyV2VError(
                f"{model!r} has no {filename}; convert AnyDoor's checkpoint with `anyv2v-batch convert-anydoor`"
            )
        return str(path)
    from huggingface_hub import hf_hub_download

    return hf_hub_download(model, filename)
