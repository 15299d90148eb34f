"""Pieces the Stable-Diffusion-family backbones share: pixels, the VAE, the CLIP text encoder."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextModel, CLIPTokenizer

from ..loading import LoadTarget, load_component, load_json


def frames_to_pixels(frames: Sequence[np.ndarray], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """uint8 frames [H, W, 3] -> [N, 3, H, W] in [-1, 1] (ToTensor, then Normalize(0.5, 0.5))."""
    pixels = torch.from_numpy(np.stack([np.asarray(f, dtype=np.float32) / 255.0 for f in frames]))
    return (2.0 * pixels.permute(0, 3, 1, 2) - 1.0).to(device, dtype)


@torch.inference_mode()
def vae_encode(vae: AutoencoderKL, pixels: torch.Tensor, chunk: int = 8) -> torch.Tensor:
    """[N, 3, H, W] -> latents [N, C, h, w] float32, scaled. The posterior mean where the official code
    draws a sample: trained VAEs' posteriors are near-deterministic, and ours is reproducible."""
    parts = [vae.encode(pixels[i : i + chunk]).latent_dist.mode() for i in range(0, pixels.shape[0], chunk)]
    return torch.cat(parts).float() * vae.config.scaling_factor


@torch.inference_mode()
def vae_decode_video(vae: AutoencoderKL, latents: torch.Tensor, dtype: torch.dtype, chunk: int = 8) -> torch.Tensor:
    """Latents [B, C, F, h, w] -> video [B, 3, F, H, W] float32 in [-1, 1], frame by frame."""
    b, c, f, h, w = latents.shape
    flat = (latents / vae.config.scaling_factor).permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
    flat = flat.to(vae.device, dtype)
    images = torch.cat([vae.decode(flat[i : i + chunk]).sample.float() for i in range(0, flat.shape[0], chunk)])
    return images.reshape(b, f, *images.shape[1:]).permute(0, 2, 1, 3, 4)


@torch.inference_mode()
def encode_prompts(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: Sequence[str]) -> torch.Tensor:
    """Prompts -> [N, 77, D]: the CLIP text encoder's last hidden state (final layer norm included),
    padded to the tokenizer's max length, no attention mask (ConsistI2V's and SEINE's encoding)."""
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(text_encoder.device)).last_hidden_state


def unique_rows(values: Sequence, key=id) -> tuple[list, list[int]]:
    """Distinct values in first-appearance order, and each input's index among them (to encode once)."""
    distinct: dict = {}
    for v in values:
        distinct.setdefault(key(v), v)
    order = list(distinct)
    return list(distinct.values()), [order.index(key(v)) for v in values]


def load_sd_parts(target: LoadTarget) -> dict:
    """A Stable-Diffusion-layout folder's VAE, CLIP text encoder, tokenizer and scheduler config, on the
    device: {"vae", "vae_dtype", "text_encoder", "tokenizer", "scheduler_config", "device", "dtype"}.
    The VAE stays in float32 under half precision where its config asks (`force_upcast`, default on:
    the SD VAEs overflow in float16 at 512 px)."""
    model, dev, dt, kw = target.model, target.device, target.dtype, target.variant_kw
    vae = load_component(AutoencoderKL, model, "vae", torch_dtype=dt, **kw)
    vae_dtype = torch.float32 if vae.config.get("force_upcast", True) and dt != torch.float32 else dt
    return {
        "vae": vae.to(dev, vae_dtype),
        "vae_dtype": vae_dtype,
        "text_encoder": load_component(CLIPTextModel, model, "text_encoder", dtype=dt, **kw).to(dev),
        "tokenizer": load_component(CLIPTokenizer, model, "tokenizer"),
        "scheduler_config": load_json(model, "scheduler", "scheduler_config.json"),
        "device": dev,
        "dtype": dt,
    }


class FrameByFrameVAE:
    """encode_video / decode_video for backbones whose VAE sees each frame at the clip size as it is
    (ConsistI2V, SEINE: the official Resize / CenterCrop are identities there). Needs `vae`, `device`,
    `vae_dtype`."""

    vae: AutoencoderKL
    device: torch.device
    vae_dtype: torch.dtype

    @torch.inference_mode()
    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        # frames [F, H, W, 3] uint8 -> latents [1, C, F, h, w]
        latents = vae_encode(self.vae, frames_to_pixels(list(frames), self.device, self.vae_dtype))  # [F, C, h, w]
        return latents.permute(1, 0, 2, 3).unsqueeze(0)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        return vae_decode_video(self.vae, latents, self.vae_dtype)
