"""InstantID (Wang et al., 2024) on diffusers' core classes, following instantX-research/InstantID @ 2145b67f.

- SDXL: `UNet2DConditionModel`, `AutoencoderKL`, both CLIP text encoders (diffusers' SDXL `encode_prompt`).
- IdentityNet: a `ControlNetModel` on the 5-keypoint image whose cross-attention context is the 16 face
  tokens, not the text (the official pipeline's `encoder_hidden_states=prompt_image_emb`).
- Face adapter: the official `ip-adapter.bin` ({"image_proj": Resampler, "ip_adapter": to_k_ip / to_v_ip})
  through diffusers' IP-Adapter loading, which builds the same Perceiver resampler
  (`IPAdapterPlusImageProjection`) and decoupled cross-attention (`IPAdapterAttnProcessor2_0`).
- `generate` is the official `__call__` for one image: Euler, CFG with the negative face tokens made from
  a zero embedding, IdentityNet residuals x `identitynet_scale`, time ids from the keypoint image size.
`draw_kps` and `resize_img` redo the official functions with the same OpenCV / PIL calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import AnyV2VError
from ..loading import load_component

KPS_COLORS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
KPS_LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))  # eyes and mouth corners to the nose


def draw_kps(width: int, height: int, kps: np.ndarray) -> np.ndarray:
    """The IdentityNet condition: ellipses from each keypoint to the nose at 60 % intensity, then a
    filled circle of radius 10 per keypoint; uint8 [height, width, 3] RGB (official `draw_kps`)."""
    import cv2

    kps = np.asarray(kps, dtype=np.float64).reshape(5, 2)
    canvas = np.zeros([height, width, 3])  # float64, as the official draws before scaling by 0.6
    for a, b in KPS_LIMBS:
        x, y = kps[[a, b], 0], kps[[a, b], 1]
        length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(x)), int(np.mean(y))), (int(length / 2), 4), int(angle), 0, 360, 1)
        canvas = cv2.fillConvexPoly(canvas.copy(), polygon, KPS_COLORS[a])
    canvas = (canvas * 0.6).astype(np.uint8)
    for (x, y), color in zip(kps, KPS_COLORS, strict=True):
        canvas = cv2.circle(canvas.copy(), (int(x), int(y)), 10, color, -1)
    return canvas


def resize_img(image: Image.Image, max_side: int = 1280, min_side: int = 1024, base: int = 64) -> Image.Image:
    """The official `resize_img`: the short side to `min_side`, then the long side to `max_side` (so the
    long side always ends at `max_side`), then both down to multiples of `base`; PIL bilinear."""
    w, h = image.size
    ratio = min_side / min(h, w)
    w, h = round(ratio * w), round(ratio * h)
    ratio = max_side / max(h, w)
    size = ((round(ratio * w) // base) * base, (round(ratio * h) // base) * base)
    if min(size) < base:
        raise AnyV2VError(f"a {image.size[0]}x{image.size[1]} image is too narrow for max_side {max_side}")
    image = image.resize([round(ratio * w), round(ratio * h)], Image.BILINEAR)
    return image.resize(list(size), Image.BILINEAR)


def load_adapter_state(path: str) -> dict[str, dict[str, torch.Tensor]]:
    """An official-format face adapter: `ip-adapter.bin` (read with weights_only=True, never an arbitrary
    unpickle) or a .safetensors with `image_proj.` / `ip_adapter.` key prefixes."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise AnyV2VError(f"face adapter {path!r} does not exist (InstantID's ip-adapter.bin)")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            flat = load_file(str(file))
            state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
            for key, value in flat.items():
                part, _, rest = key.partition(".")
                if part in state:
                    state[part][rest] = value
        else:
            state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: one line
        why = "it holds more than tensors" if "weights_only" in str(e).lower() or "unpickl" in str(e).lower() else ""
        first = why or (str(e).strip().splitlines() or [""])[0][:160]
        raise AnyV2VError(f"cannot read the face adapter {path!r}: {type(e).__name__}: {first}") from None
    if not isinstance(state, dict) or not state.get("image_proj") or not state.get("ip_adapter"):
        raise AnyV2VError(f"face adapter {path!r} is not InstantID's format (image_proj + ip_adapter state dicts)")
    if "latents" not in state["image_proj"]:
        raise AnyV2VError(f"face adapter {path!r}: image_proj is not a Perceiver resampler (no 'latents')")
    return state


@dataclass
class InstantIDModel:
    pipe: Any  # diffusers StableDiffusionXLPipeline: text encoders, tokenizers, unet (with the adapter), vae
    identitynet: Any  # diffusers ControlNetModel
    scheduler: Any  # EulerDiscreteScheduler from the base model's config

    @classmethod
    def load(cls, model: str, identitynet: str, adapter: str, device: torch.device, dtype: torch.dtype):
        from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLPipeline

        state = load_adapter_state(adapter)  # the cheapest file first: a wrong path fails before SDXL loads
        control = load_component(ControlNetModel, identitynet, None, torch_dtype=dtype)
        pipe = load_component(StableDiffusionXLPipeline, model, None, torch_dtype=dtype, add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        try:
            pipe.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)
        except (KeyError, RuntimeError, ValueError) as e:
            raise AnyV2VError(f"face adapter {adapter!r} does not fit the UNet of {model!r}: {str(e)[:160]}") from None
        scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        return cls(pipe.to(device), control.to(device).eval(), scheduler)

    @property
    def face_projection(self) -> torch.nn.Module:
        """The Resampler (diffusers' IPAdapterPlusImageProjection) that turns an embedding into 16 tokens."""
        return self.pipe.unet.encoder_hid_proj.image_projection_layers[0]

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1)


@torch.no_grad()
def generate(
    model: InstantIDModel,
    prompt: str,
    negative_prompt: str | None,
    face_embedding: np.ndarray,
    kps_image: np.ndarray,
    steps: int = 30,
    guidance_scale: float = 5.0,
    identitynet_scale: float = 0.8,
    ip_adapter_scale: float = 0.8,
    generator: torch.Generator | None = None,
    latents: torch.Tensor | None = None,
    record: dict[str, Any] | None = None,
) -> np.ndarray:
    """One image (uint8 [H, W, 3]) at the keypoint image's size, as the official pipeline's `__call__`.
    `latents`: the starting noise already scaled by the scheduler's init sigma (else drawn from
    `generator`); `record`: filled with every stage (tests compare them with the official run)."""
    from diffusers.utils.torch_utils import randn_tensor

    pipe, unet, scheduler = model.pipe, model.pipe.unet, model.scheduler
    device, dtype = unet.device, unet.dtype
    record = record if record is not None else {}
    cfg = guidance_scale > 1 and unet.config.time_cond_proj_dim is None
    height, width = kps_image.shape[:2]
    factor = model.vae_scale_factor
    if height % factor or width % factor:
        raise AnyV2VError(f"the keypoint image {width}x{height} is not a multiple of the VAE's factor {factor}")

    # 3.1 text: both CLIP encoders; a None negative prompt is zeros (force_zeros_for_empty_prompt)
    embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
        prompt, None, device, 1, cfg, negative_prompt
    )  # fmt: skip
    # 3.2 face tokens; the unconditional branch's come from an all-zero embedding
    face = torch.as_tensor(np.asarray(face_embedding, dtype=np.float32)).reshape(1, -1, 512)
    face = torch.cat([torch.zeros_like(face), face]) if cfg else face
    face = face.to(device, dtype)
    face_tokens = model.face_projection(face)  # [B, 16, cross_attention_dim]
    # 4. the keypoint image in [0, 1], once per CFG branch
    control = torch.from_numpy(kps_image.astype(np.float32) / 255.0).permute(2, 0, 1)[None].to(device, dtype)
    control = torch.cat([control] * 2) if cfg else control
    # 5.-6. Euler timesteps and the starting noise
    scheduler.set_timesteps(steps, device=device)
    shape = (1, unet.config.in_channels, height // factor, width // factor)
    if latents is None:
        latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype) * scheduler.init_noise_sigma
    latents = latents.to(device, dtype)
    # 7.2 SDXL micro-conditions: original = target = the keypoint image size, crop (0, 0)
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=embeds.dtype, device=device)
    if cfg:
        embeds, pooled = torch.cat([negative_embeds, embeds]), torch.cat([negative_pooled, pooled])
        time_ids = torch.cat([time_ids, time_ids])
    record.update(
        prompt_embeds=embeds, pooled_prompt_embeds=pooled, face_tokens=face_tokens, add_time_ids=time_ids,
        timesteps=scheduler.timesteps, latents_init=latents, control_image=control,
    )  # fmt: skip
    pipe.set_ip_adapter_scale(ip_adapter_scale)
    added = {"text_embeds": pooled, "time_ids": time_ids}
    # the UNet's adapter projects the embedding itself (the same module as face_tokens above)
    unet_added = {**added, "image_embeds": [face[:, None]]}
    for i, t in enumerate(scheduler.timesteps):
        record[f"latent_in.{i}"] = latents
        model_input = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
        down, mid = model.identitynet(
            model_input, t, encoder_hidden_states=face_tokens, controlnet_cond=control,
            conditioning_scale=identitynet_scale, guess_mode=False, added_cond_kwargs=added, return_dict=False,
        )  # fmt: skip
        noise_pred = unet(
            model_input, t, encoder_hidden_states=embeds, down_block_additional_residuals=down,
            mid_block_additional_residual=mid, added_cond_kwargs=unet_added, return_dict=False,
        )[0]  # fmt: skip
        if cfg:
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + guidance_scale * (cond - uncond)
        record[f"noise_pred.{i}"] = noise_pred
        latents = scheduler.step(noise_pred, t, latents, generator=generator, return_dict=False)[0]
    record["latent"] = latents
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast  # SDXL's VAE overflows in float16
    if upcast:
        vae.to(torch.float32)
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
    if upcast:
        vae.to(torch.float16)
    image = (image / 2 + 0.5).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy()
    out = (image * 255).round().astype(np.uint8)
    record["image"] = out
    return out
