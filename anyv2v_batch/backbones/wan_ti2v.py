"""Wan2.2-TI2V-5B as an image-to-video backbone: one flow-matching DiT (diffusers' `WanTransformer3DModel`),
the Wan2.2 VAE (`AutoencoderKLWan`, 48 latent channels, 4x16x16 compression) and umT5 prompts.

Conditioning is the official TI2V i2v path (Wan-Video/Wan2.2 `wan/textimage2video.py`): the first latent
frame is the clean image latent (the VAE posterior mean, normalised with the 48-channel tables), pinned
before sampling and after every step, and its tokens carry timestep 0 while every other token carries t.
Guidance is two branches, `uncond + g * (cond - uncond)`, with the official default negative prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch

from ..errors import AnyV2VError
from ..flow import DEFAULT_SHIFT, FlowSchedule, UniPC, sampling_grid
from ..loading import load_component, load_target
from ..settings import ClipSettings, EditSettings, InversionSettings
from ..windows import WindowLimits
from .base import Backbone, Branch, Conditioning

TEXT_LENGTH = 512  # umT5 slots; prompts are trimmed to their tokens, then zero-padded to this


class WanTI2V(Backbone):
    """The networks and the conditioning; the sampling and inversion loops live in `flow_edit.py` (the
    DDIM loops of the U-Nets do not apply: `flow` says so to `invert_batch` / `edit_batch`)."""

    name = "wan2.2-ti2v"
    default_model = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    flow: ClassVar[bool] = True
    schedule_class = FlowSchedule
    injection_positions: ClassVar[dict] = {}  # per edit: flow_edit.injection_positions (they depend on its blocks)
    patch = 2  # the transformer's spatial patch
    vae_scale_factor = 16
    vae_scale_factor_temporal = 4
    size_multiple = 32  # patch 2 x VAE stride 16
    window_frames: ClassVar[int] = 121
    max_window_frames: ClassVar[int] = 121

    def __init__(self, transformer, vae, text_encoder=None, tokenizer=None, device="cpu", dtype=torch.float32):
        self.schedule = FlowSchedule()
        self.transformer = cast_keeping_fp32(transformer, dtype).to(device).eval().requires_grad_(False)
        self.unet = self.transformer  # what the shared code (compile, hooks) calls the denoiser
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

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        variant: str | None = None,
    ) -> WanTI2V:
        """From a hub id or a local folder in the diffusers layout (transformer/, vae/, text_encoder/,
        tokenizer/). The transformer and umT5 in `dtype` (bfloat16 on a GPU: the official precision;
        float32 on the CPU); the VAE in float32, as the official code runs it."""
        from diffusers import AutoencoderKLWan, WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        target = load_target(model, cls.default_model, device, dtype, variant)
        dt = torch.bfloat16 if target.device.type == "cuda" and dtype in (None, "auto") else target.dtype
        kw = target.variant_kw
        transformer = load_component(WanTransformer3DModel, target.model, "transformer", torch_dtype=dt, **kw)
        vae = load_component(AutoencoderKLWan, target.model, "vae", torch_dtype=torch.float32, **kw)
        text_encoder = load_component(UMT5EncoderModel, target.model, "text_encoder", dtype=dt, **kw)
        tokenizer = load_component(AutoTokenizer, target.model, "tokenizer")
        return cls(transformer, vae, text_encoder.to(target.device).eval(), tokenizer, target.device, dt)

    @classmethod
    def window_limits(cls, model: str | None) -> WindowLimits:
        return WindowLimits(cls.window_frames, cls.max_window_frames, step=cls.vae_scale_factor_temporal)

    # ---- what can be refused before any work
    def check_clip(self, clip: ClipSettings) -> None:
        self.check_geometry(clip)

    @classmethod
    def check_settings(cls, model: str | None, clip: ClipSettings) -> None:
        cls.check_geometry(clip)

    @classmethod
    def check_geometry(cls, clip: ClipSettings) -> None:
        m = cls.size_multiple
        if clip.width % m or clip.height % m:
            raise AnyV2VError(
                f"{cls.name} needs --width and --height that are multiples of {m} (its patch of 2 latent "
                f"pixels of 16), got {clip.width}x{clip.height}; e.g. 1280x704 or 832x480"
            )
        if isinstance(clip.frames, int) and (clip.frames - 1) % cls.vae_scale_factor_temporal:
            n, step = clip.frames, cls.vae_scale_factor_temporal
            lower = n - (n - 1) % step
            raise AnyV2VError(
                f"{cls.name} needs a frame count of 4k + 1 (its VAE packs 4 frames per latent after the first), "
                f"got --frames {n}; use --frames {lower} or {lower + step}"
            )

    @classmethod
    def check_knobs(cls, edit: EditSettings, inversion: InversionSettings) -> None:
        unet_knobs = {"pnp_conv": edit.pnp_conv, "pnp_spatial": edit.pnp_spatial, "pnp_temporal": edit.pnp_temporal,
                      "pnp_cross": edit.pnp_cross}  # fmt: skip
        for name, value in unet_knobs.items():
            if value:
                flag = name.replace("_", "-")
                raise AnyV2VError(
                    f"--{flag} is a U-Net injection; {cls.name} injects with --pnp-attn and --pnp-feature "
                    f"(set --{flag} 0)"
                )
        cls.check_inversion(inversion)
        if (edit.shift or DEFAULT_SHIFT) != (inversion.shift or DEFAULT_SHIFT):
            raise AnyV2VError(
                f"the edit's grid (--shift {edit.shift}) is not the inversion's (--inversion-shift {inversion.shift}); "
                "use one shift for both"
            )
        unsupported = {"eta": edit.eta > 0, "init_step": edit.init_step > 0, "random_ratio": edit.random_ratio > 0}
        for name, bad in unsupported.items():
            if bad:
                flag = name.replace("_", "-")
                raise AnyV2VError(f"--{flag} is not supported with {cls.name}; leave it at 0")

    @classmethod
    def check_inversion(cls, inversion: InversionSettings) -> None:
        if inversion.solver == "ddim":
            raise AnyV2VError(f"{cls.name} is a flow-matching model: --inversion-solver euler or midpoint, not ddim")

    # ---- the Backbone interface (the shared code's view)
    def condition(self, branches: Sequence[Branch], num_frames: int, fps: float) -> Conditioning:
        return {"context": self.encode_prompts([b.prompt for b in branches])}

    def predict(self, latents: torch.Tensor, t: int, cond: Conditioning) -> torch.Tensor:
        return self.velocity(latents, t, cond["context"])

    # ---- pixels <-> latents
    @torch.no_grad()
    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        """[F, H, W, 3] uint8 -> normalised latents [1, 48, (F - 1) / 4 + 1, H / 16, W / 16] (posterior mean).

        Latent frame 0 depends on the first frame alone (the VAE is causal and encodes it as its own chunk),
        so it is the image latent the sampler pins."""
        x = torch.from_numpy(np.array(frames, dtype=np.uint8)).to(self.device)  # a copy: inputs stay read-only
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
    def token_timesteps(self, latents: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """One timestep per token, [B, T * h/2 * w/2]: 0 on the first latent frame's tokens, t elsewhere
        (t a number, or [B]: one per clip, as training draws them)."""
        b, _, frames, h, w = latents.shape
        per_frame = (h // self.patch) * (w // self.patch)
        per_clip = torch.as_tensor(t, dtype=torch.float32, device=latents.device).reshape(-1, 1)
        ts = per_clip.expand(b, frames * per_frame).clone()
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


def cast_keeping_fp32(transformer: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`dtype`, except the modules diffusers keeps in float32 (`_keep_in_fp32_modules`: RoPE, the time
    embedding, the modulation tables, the norms), as `from_pretrained(torch_dtype=...)` loads them and as
    the official code computes them."""
    keep = tuple(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    for name, param in transformer.named_parameters():  # buffers (RoPE's tables) stay as they are
        kept = any(part in keep for part in name.split("."))
        param.data = param.data.to(torch.float32 if kept else dtype)
    return transformer


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
