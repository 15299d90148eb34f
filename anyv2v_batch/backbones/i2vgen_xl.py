"""I2VGen-XL (ali-vilab/i2vgen-xl) on diffusers' `I2VGenXLUNet`, with our own conditioning.

Conditioning reproduces the official AnyV2V pipeline (diffusers 0.26.3's I2VGen-XL pipeline, modified):
- text: CLIP text encoder, penultimate hidden layer followed by the final layer norm ("clip_skip 1");
- image embedding: the first frame center-cropped wide to a W x W square, bilinear-resized to the CLIP
  crop size, CLIP-normalised, through the vision tower's projection; zeros for the negative branch;
- image latents: the first frame's VAE latent as frame 0, then constant k / (F - 1) planes as a
  frame-position mask for frames k = 1 .. F - 1;
- fps: the fps micro-condition.

One deliberate difference: the VAE posterior's mean is used where the official code draws a sample
(`latent_dist.sample()` from the global RNG); trained VAEs have a near-zero posterior variance, so the
two agree to the posterior's standard deviation, and ours is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from diffusers import AutoencoderKL, I2VGenXLUNet
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from ..imaging import center_crop_wide, to_pil
from ..loading import load_component, load_json, load_target
from .base import Backbone, Branch, Conditioning
from .common import vae_decode_video, vae_encode

# decoder blocks 4-11: every up-block attention but the first one of the lowest resolution
_ATTENTION_BLOCKS = [(1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2)]


def _qk(prefix: str) -> tuple[str, ...]:
    return tuple(
        f"up_blocks.{b}.{prefix}.{i}.transformer_blocks.0.attn1.{proj}"
        for b, i in _ATTENTION_BLOCKS
        for proj in ("to_q", "to_k")
    )


class I2VGenXL(Backbone):
    name: ClassVar[str] = "i2vgen-xl"
    default_model: ClassVar[str] = "ali-vilab/i2vgen-xl"
    # its temporal attention has no position embedding: one window takes any length. The official demo
    # edits up to 128 frames (16 s at 8 fps) at 512 x 512 on a 48 GB GPU
    max_window_frames: ClassVar[int] = 128
    injection_positions: ClassVar[dict[str, tuple[str, ...]]] = {
        # the output of conv2 of the second ResNet of decoder stage 1, before the skip connection
        "conv": ("up_blocks.1.resnets.1.conv2",),
        # Q and K (not V) of the spatial and temporal self-attention
        "spatial": _qk("attentions"),
        "temporal": _qk("temp_attentions"),
    }

    def __init__(
        self,
        unet: I2VGenXLUNet,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        image_encoder: CLIPVisionModelWithProjection,
        clip_preprocess: dict,
        scheduler_config: dict,
        vae_dtype: torch.dtype | None = None,
        decode_chunk_size: int = 8,
        encode_chunk_size: int = 8,
    ):
        self.unet, self.vae = unet.eval(), vae.eval()
        self.text_encoder, self.image_encoder, self.tokenizer = text_encoder.eval(), image_encoder.eval(), tokenizer
        self.device, self.dtype = unet.device, unet.dtype
        self.vae_dtype = vae_dtype or vae.dtype
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        crop = clip_preprocess["crop_size"]
        self.clip_size = (crop["width"], crop["height"]) if isinstance(crop, dict) else (crop, crop)
        self.clip_mean = np.asarray(clip_preprocess["image_mean"], dtype=np.float32)
        self.clip_std = np.asarray(clip_preprocess["image_std"], dtype=np.float32)
        self.schedule = self.schedule_class(scheduler_config)
        self.scheduler_config = self.schedule.config
        self.decode_chunk_size, self.encode_chunk_size = decode_chunk_size, encode_chunk_size

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        variant: str | None = None,
    ) -> I2VGenXL:
        """Load from a hub id or a local folder in the diffusers layout.

        float32 on the CPU; float16 / bfloat16 on CUDA. The VAE runs in float32 whenever its config asks
        for `force_upcast` (the SD VAE overflows in float16 at 512 px).
        """
        target = load_target(model, cls.default_model, device, dtype, variant)
        model, dev, dt, kw = target.model, target.device, target.dtype, target.variant_kw
        unet = load_component(I2VGenXLUNet, model, "unet", torch_dtype=dt, **kw)
        vae = load_component(AutoencoderKL, model, "vae", torch_dtype=dt, **kw)
        vae_dtype = torch.float32 if vae.config.get("force_upcast", False) and dt != torch.float32 else dt
        text_encoder = load_component(CLIPTextModel, model, "text_encoder", dtype=dt, **kw)
        image_encoder = load_component(CLIPVisionModelWithProjection, model, "image_encoder", dtype=dt, **kw)
        tokenizer = load_component(CLIPTokenizer, model, "tokenizer")
        clip_preprocess = load_json(model, "feature_extractor", "preprocessor_config.json")
        scheduler_config = load_json(model, "scheduler", "scheduler_config.json")
        return cls(
            unet.to(dev),
            vae.to(dev, vae_dtype),
            text_encoder.to(dev),
            tokenizer,
            image_encoder.to(dev),
            clip_preprocess,
            scheduler_config,
            vae_dtype=vae_dtype,
        )

    # ---- VAE
    def _frames_to_pixels(self, frames: Sequence[np.ndarray], width: int, height: int) -> torch.Tensor:
        """uint8 frames -> [N, 3, H, W] in [-1, 1], after the official (identity at W x H) crop."""
        arrays = [np.asarray(center_crop_wide(to_pil(f), width, height), dtype=np.float32) / 255.0 for f in frames]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
        return (2.0 * pixels - 1.0).to(self.device, self.vae_dtype)

    @torch.inference_mode()
    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        # frames [F, H, W, 3] -> latents [1, C, F, h, w]
        height, width = frames.shape[1:3]
        pixels = self._frames_to_pixels(list(frames), width, height)
        latents = vae_encode(self.vae, pixels, self.encode_chunk_size)  # [F, C, h, w]
        return latents.permute(1, 0, 2, 3).unsqueeze(0)

    def decode_video(self, latents: torch.Tensor) -> torch.Tensor:
        return vae_decode_video(self.vae, latents, self.vae_dtype, self.decode_chunk_size)

    # ---- conditioning
    @torch.inference_mode()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> [N, 77, D]: penultimate CLIP layer, then the final layer norm."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        hidden = self.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        # transformers 5 flattened CLIPTextModel.text_model away; 4.x still has it
        final_norm = getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm
        return final_norm(hidden)

    def clip_pixels(self, frame: np.ndarray) -> torch.Tensor:
        """The CLIP vision input of a frame at the clip size W x H: [1, 3, S, S]."""
        height, width = frame.shape[:2]
        square = center_crop_wide(to_pil(frame), width, width)
        square = square.resize(self.clip_size, resample=2)  # PIL BILINEAR, as the official code
        x = np.asarray(square, dtype=np.float32) / 255.0
        x = (x - self.clip_mean) / self.clip_std
        return torch.from_numpy(x).permute(2, 0, 1).unsqueeze(0)

    @torch.inference_mode()
    def encode_images(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """First frames -> CLIP image embeddings [N, 1, D]."""
        pixels = torch.cat([self.clip_pixels(f) for f in frames]).to(self.device, self.image_encoder.dtype)
        return self.image_encoder(pixels).image_embeds.unsqueeze(1)

    @torch.inference_mode()
    def image_latents(self, frames: Sequence[np.ndarray], num_frames: int) -> torch.Tensor:
        """First frames -> [N, C, F, h, w]: the VAE latent, then the frame-position mask k / (F - 1)."""
        height, width = frames[0].shape[:2]
        pixels = self._frames_to_pixels(frames, width, height)
        first = vae_encode(self.vae, pixels, self.encode_chunk_size).unsqueeze(2)  # [N, C, 1, h, w]
        mask = [torch.ones_like(first) * ((k + 1) / (num_frames - 1)) for k in range(num_frames - 1)]
        return torch.cat([first, *mask], dim=2)

    @torch.inference_mode()
    def condition(self, branches: Sequence[Branch], num_frames: int, fps: float) -> Conditioning:
        prompts = list(dict.fromkeys(b.prompt for b in branches))
        text = self.encode_prompts(prompts)
        # the same frame object (e.g. the edited frame of the negative and editing branch) is encoded once
        frames = list({id(b.first_frame): b.first_frame for b in branches}.values())
        index = {id(f): i for i, f in enumerate(frames)}
        latents = self.image_latents(frames, num_frames)
        embedded = [f for f in frames if any(b.image_embedding and b.first_frame is f for b in branches)]
        emb_index = {id(f): i for i, f in enumerate(embedded)}
        embeds = self.encode_images(embedded) if embedded else None
        zero = torch.zeros(1, 1, self.image_encoder.config.projection_dim, device=self.device, dtype=self.dtype)
        return {
            "encoder_hidden_states": torch.stack([text[prompts.index(b.prompt)] for b in branches]).to(self.dtype),
            "image_embeddings": torch.cat(
                [embeds[emb_index[id(b.first_frame)]][None] if b.image_embedding else zero for b in branches]
            ).to(self.dtype),
            "image_latents": torch.stack([latents[index[id(b.first_frame)]] for b in branches]).to(self.dtype),
            "fps": torch.tensor([fps] * len(branches), device=self.device),
        }

    # ---- the network
    @torch.inference_mode()
    def predict(self, latents: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        out = self.unet(
            latents.to(self.device, self.dtype),
            torch.tensor(t, device=self.device),
            encoder_hidden_states=cond["encoder_hidden_states"],
            fps=cond["fps"],
            image_latents=cond["image_latents"],
            image_embeddings=cond["image_embeddings"],
            return_dict=False,
        )[0]
        return out.float()
