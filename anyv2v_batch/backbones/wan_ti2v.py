"""Wan2.2-TI2V-5B as an image-to-video backbone: one flow-matching DiT (diffusers' `WanTransformer3DModel`),
the Wan2.2 VAE (`AutoencoderKLWan`, 48 latent channels, 4x16x16 compression) and umT5 prompts.

Conditioning is the official TI2V i2v path (Wan-Video/Wan2.2 `wan/textimage2video.py`): the first latent
frame is the clean image latent (the VAE posterior mean, normalised with the 48-channel tables), pinned
before sampling and after every step, and its tokens carry timestep 0 while every other token carries t.
Guidance is two branches, `uncond + g * (cond - uncond)`, with the official default negative prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..flow import UniPC, sampling_grid

# the official default negative prompt (Wan-Video/Wan2.2 wan/configs/shared_config.py)
DEFAULT_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
TEXT_LENGTH = 512  # umT5 slots; prompts are trimmed to their tokens, then zero-padded to this


@dataclass(frozen=True)
class WanDefaults:
    """The official TI2V defaults (wan/configs/wan_ti2v_5B.py)."""

    steps: int = 50
    shift: float = 5.0
    guidance: float = 5.0
    frames: int = 121
    fps: float = 24.0
    width: int = 1280
    height: int = 704


class WanTI2V:
    """The networks and the conditioning; the sampling and inversion loops live in `flow_edit.py`."""

    name = "wan2.2-ti2v"
    default_model = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    defaults = WanDefaults()
    patch = 2  # the transformer's spatial patch
    vae_scale_factor = 16
    vae_scale_factor_temporal = 4

    def __init__(self, transformer, vae, text_encoder=None, tokenizer=None, device="cpu", dtype=torch.float32):
        self.transformer = transformer.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.vae = vae.to(device=device).eval().requires_grad_(False)  # the VAE stays float32
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.dtype = dtype
        cfg = vae.config
        self.latents_mean = torch.tensor(cfg.latents_mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1, 1)
        self.latents_inv_std = 1.0 / torch.tensor(cfg.latents_std, dtype=torch.float32, device=self.device).view(
            1, -1, 1, 1, 1
        )

    # ---- pixels <-> latents
    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """[F, H, W, 3] uint8 -> normalised latents [1, 48, (F - 1) / 4 + 1, H / 16, W / 16] (posterior mean).

        Latent frame 0 depends on the first frame alone (the VAE is causal and encodes it as its own chunk),
        so it is the image latent the sampler pins."""
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        x = x.permute(3, 0, 1, 2).unsqueeze(0).float().div(255).sub(0.5).div(0.5)  # as TF.to_tensor, then [-1, 1]
        mean = self.vae.encode(x).latent_dist.mode()
        return ((mean.float() - self.latents_mean) * self.latents_inv_std).contiguous()

    def encode_image(self, image: np.ndarray) -> torch.Tensor:
        """[H, W, 3] uint8 -> the normalised latent of that one frame, [1, 48, 1, h, w]."""
        return self.encode_video(image[None])

    @torch.no_grad()
    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, 48, T, h, w] -> video [B, 3, 4(T - 1) + 1, H, W] in [-1, 1]."""
        z = latents.float() / self.latents_inv_std + self.latents_mean
        return self.vae.decode(z).sample.float().clamp(-1, 1)

    # ---- prompts
    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """umT5 embeddings trimmed to each prompt's tokens and zero-padded to 512 slots: [B, 512, D]."""
        if self.text_encoder is None or self.tokenizer is None:
            raise RuntimeError("this WanTI2V was built without a text encoder")
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=TEXT_LENGTH,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        hidden = self.text_encoder(ids, mask).last_hidden_state.float()
        return pad_prompts([h[: int(m.sum())] for h, m in zip(hidden, mask, strict=True)])

    # ---- the network
    def token_timesteps(self, latents: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """One timestep per token, [B, T * h/2 * w/2]: 0 on the first latent frame's tokens, t elsewhere."""
        b, _, frames, h, w = latents.shape
        per_frame = (h // self.patch) * (w // self.patch)
        ts = torch.full((b, frames * per_frame), float(t), device=latents.device)
        ts[:, :per_frame] = 0.0
        return ts

    @torch.no_grad()
    def velocity(self, latents: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        """The flow velocity at integer timestep t: latents [B, 48, T, h, w], context [B, 512, D] -> float32."""
        out = self.transformer(
            latents.to(self.dtype),
            timestep=self.token_timesteps(latents, t),
            encoder_hidden_states=context.to(self.dtype),
            return_dict=False,
        )[0]
        return out.float()


def pad_prompts(embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
    """[L_i, D] per prompt -> [B, 512, D], zero slots after each prompt's tokens (as the official model pads)."""
    out = embeddings[0].new_zeros(len(embeddings), TEXT_LENGTH, embeddings[0].shape[-1])
    for i, e in enumerate(embeddings):
        out[i, : e.shape[0]] = e
    return out


def pin_first_frame(latents: torch.Tensor, image_latent: torch.Tensor) -> torch.Tensor:
    """Latent frame 0 := the clean image latent (broadcast over the batch)."""
    out = latents.clone()
    out[:, :, :1] = image_latent
    return out


@torch.no_grad()
def generate(
    backbone: WanTI2V,
    noise: torch.Tensor,
    image_latent: torch.Tensor,
    context: torch.Tensor,
    negative_context: torch.Tensor,
    steps: int,
    shift: float,
    guidance: float,
    on_step=None,
) -> torch.Tensor:
    """Plain TI2V image-to-video sampling, the official loop: noise [1, 48, T, h, w] -> latents.

    Both guidance branches run as one batch of two. `on_step(i, t, sample, velocity)` sees every step."""
    sigmas, timesteps = sampling_grid(steps, shift)
    solver = UniPC(sigmas)
    x = pin_first_frame(noise.float(), image_latent)
    contexts = torch.cat([context, negative_context])
    for i, t in enumerate(timesteps.tolist()):
        cond, uncond = backbone.velocity(torch.cat([x, x]), t, contexts).chunk(2)
        v = uncond + guidance * (cond - uncond)
        if on_step is not None:
            on_step(i, t, x, cond, uncond)
        x = pin_first_frame(solver.step(v, x), image_latent)
    return x
