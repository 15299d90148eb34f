"""Official Wan2.2 state dicts -> diffusers' `WanTransformer3DModel` and `AutoencoderKLWan`.

Plain key renames (no tensor is reshaped or split); every official key must map, and the result must
load with `strict=True`, so a missed or a stray key fails loudly. The renames are read from the two
codebases' module trees (Wan-Video/Wan2.2 `wan/modules/model.py`, `vae2_2.py`; diffusers 0.42
`transformer_wan.py`, `autoencoder_kl_wan.py`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from .errors import AnyV2VError

# transformer: (official pattern, diffusers replacement), applied in order, first match wins per rule
_TRANSFORMER_RULES: tuple[tuple[str, str], ...] = (
    (r"^text_embedding\.0\.", "condition_embedder.text_embedder.linear_1."),
    (r"^text_embedding\.2\.", "condition_embedder.text_embedder.linear_2."),
    (r"^time_embedding\.0\.", "condition_embedder.time_embedder.linear_1."),
    (r"^time_embedding\.2\.", "condition_embedder.time_embedder.linear_2."),
    (r"^time_projection\.1\.", "condition_embedder.time_proj."),
    (r"^head\.modulation$", "scale_shift_table"),
    (r"^head\.head\.", "proj_out."),
    (r"^blocks\.(\d+)\.modulation$", r"blocks.\1.scale_shift_table"),
    # official block order is norm1, norm3 (affine, before cross-attention), norm2; diffusers numbers
    # them in order, and only the affine one has weights
    (r"^blocks\.(\d+)\.norm3\.", r"blocks.\1.norm2."),
    (r"^blocks\.(\d+)\.self_attn\.", r"blocks.\1.attn1."),
    (r"^blocks\.(\d+)\.cross_attn\.", r"blocks.\1.attn2."),
    (r"\.attn([12])\.q\.", r".attn\1.to_q."),
    (r"\.attn([12])\.k\.", r".attn\1.to_k."),
    (r"\.attn([12])\.v\.", r".attn\1.to_v."),
    (r"\.attn([12])\.o\.", r".attn\1.to_out.0."),
    (r"^blocks\.(\d+)\.ffn\.0\.", r"blocks.\1.ffn.net.0.proj."),
    (r"^blocks\.(\d+)\.ffn\.2\.", r"blocks.\1.ffn.net.2."),
)

# VAE: resnets' inner Sequential positions -> names
_RESIDUAL = {"0": "norm1", "2": "conv1", "3": "norm2", "6": "conv2"}


def _vae_key(key: str) -> str:
    top = {"conv1.": "quant_conv.", "conv2.": "post_quant_conv."}
    for old, new in top.items():
        if key.startswith(old):
            return new + key[len(old) :]
    part, rest = key.split(".", 1)  # encoder | decoder
    rules = (
        (r"^conv1\.", "conv_in."),
        (r"^head\.0\.", "norm_out."),
        (r"^head\.2\.", "conv_out."),
        (r"^middle\.1\.", "mid_block.attentions.0."),
        (r"^middle\.0\.", "mid_block.resnets.0."),
        (r"^middle\.2\.", "mid_block.resnets.1."),
        # a stage's list holds its resnets, then (if any) its resampler; the leaf name says which
        (
            r"^(?:downsamples|upsamples)\.(\d+)\.(?:downsamples|upsamples)\.\d+\.(resample|time_conv)\.",
            (r"down_blocks.\1.downsampler.\2." if part == "encoder" else r"up_blocks.\1.upsampler.\2."),
        ),
        (
            r"^(?:downsamples|upsamples)\.(\d+)\.(?:downsamples|upsamples)\.(\d+)\.",
            (r"down_blocks.\1.resnets.\2." if part == "encoder" else r"up_blocks.\1.resnets.\2."),
        ),
    )
    for pattern, replacement in rules:
        new, n = re.subn(pattern, replacement, rest)
        if n:
            rest = new
            break
    else:
        raise AnyV2VError(f"the Wan VAE key {key!r} has no diffusers name (is this a Wan2.2 VAE?)")
    rest = re.sub(r"\.residual\.(\d)\.", lambda m: "." + _RESIDUAL[m.group(1)] + ".", rest)
    rest = rest.replace(".shortcut.", ".conv_shortcut.")
    return f"{part}.{rest}"


def _transformer_key(key: str) -> str:
    new = key
    for pattern, replacement in _TRANSFORMER_RULES:
        new = re.sub(pattern, replacement, new)
    return new


def transformer_state_dict(official: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official `WanModel` state dict under diffusers' `WanTransformer3DModel` names."""
    return _renamed(official, _transformer_key)


def vae_state_dict(official: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official Wan2.2 `WanVAE_` state dict under diffusers' `AutoencoderKLWan` names."""
    return _renamed(official, _vae_key)


def _renamed(official: Mapping[str, torch.Tensor], rename) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        new = rename(key)
        if new in out:
            raise AnyV2VError(f"two official keys map to {new!r}")
        out[new] = value
    return out


def transformer_config(official: Mapping) -> dict:
    """diffusers `WanTransformer3DModel` config from the official `WanModel` arguments (TI2V)."""
    heads = official["num_heads"]
    return dict(
        patch_size=tuple(official.get("patch_size", (1, 2, 2))),
        num_attention_heads=heads,
        attention_head_dim=official["dim"] // heads,
        in_channels=official["in_dim"],
        out_channels=official["out_dim"],
        text_dim=official["text_dim"],
        freq_dim=official["freq_dim"],
        ffn_dim=official["ffn_dim"],
        num_layers=official["num_layers"],
        cross_attn_norm=official.get("cross_attn_norm", True),
        qk_norm="rms_norm_across_heads" if official.get("qk_norm", True) else None,
        eps=official["eps"],
    )


def vae_config(official: Mapping, latents_mean: list[float], latents_std: list[float]) -> dict:
    """diffusers `AutoencoderKLWan` config (the Wan2.2 residual layout) from the official `WanVAE_` arguments."""
    return dict(
        base_dim=official["dim"],
        decoder_base_dim=official["dec_dim"],
        z_dim=official["z_dim"],
        dim_mult=list(official["dim_mult"]),
        num_res_blocks=official["num_res_blocks"],
        attn_scales=list(official["attn_scales"]),
        temperal_downsample=list(official["temperal_downsample"]),
        latents_mean=list(latents_mean),
        latents_std=list(latents_std),
        is_residual=True,
        in_channels=12,
        out_channels=12,
        patch_size=2,
        scale_factor_temporal=4,
        scale_factor_spatial=16,
    )
