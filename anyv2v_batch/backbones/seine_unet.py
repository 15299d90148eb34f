"""SEINE's 3D UNet (Stable Diffusion 1.4 inflated to video), as AnyV2V's `seine/` code runs it.

A port of the official network (AnyV2V `seine/models/unet.py`, `unet_blocks.py`, `attention.py`,
`resnet.py`) onto plain PyTorch and diffusers 0.42 building blocks, with the official parameter names, so
the published `seine.pt` ("ema" state dict) loads with `strict=True`. Inference only.

The network, in the layout it uses between blocks ([B, C, F, h, w]):
- every convolution is a 2D convolution applied to each frame ("inflated");
- the ResNets' GroupNorms see the whole 5D tensor, so their statistics span all frames of a sample;
- each transformer block runs spatial self-attention (`attn1`, tokens of one frame), text
  cross-attention (`attn2`) and temporal self-attention (`attn_temp`, the frames at one position, with
  rotary positions on the first 32 channels of each head plus a learned relative-position bias);
- the input has 9 channels: [noisy latent 4, mask 1, masked-video latent 4].

Injection points: plug-and-play editing overwrites the outputs of the submodules listed in
`CONV_POSITIONS`, `SPATIAL_POSITIONS`, `TEMPORAL_POSITIONS` and `CROSS_POSITIONS` (see there). Every
one of them has its batch branch-major on the leading axis, so branch b is the b-th equal slice.
"""

from __future__ import annotations

import inspect
import math
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

# ---------------------------------------------------------------------------------------------------
# Configurations

# CompVis/stable-diffusion-v1-4 unet/config.json (the keys SEINE's inflation reads)
SD14_UNET_CONFIG_2D: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}

_DOWN_3D = ["CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"]
_UP_3D = ["UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"]

# What the official inflation (`from_pretrained_2d(..., use_concat=True)`) makes of SD-1.4's config:
# the block types become 3D, `use_first_frame` False, 9 input channels. This is the published model
# (830 tensors, 909 M parameters) and SEINEUNet's default configuration.
SEINE_FULL_CONFIG: dict[str, Any] = {
    **SD14_UNET_CONFIG_2D,
    "down_block_types": list(_DOWN_3D),
    "up_block_types": list(_UP_3D),
    "use_first_frame": False,
    "in_channels": 9,
}

# ---------------------------------------------------------------------------------------------------
# Injection points (module paths). AnyV2V's pnp_utils.py copies, for the source branch into the
# other branches:
# - conv: the residual branch of up_blocks[1].resnets[1] right after `conv2` (before the shortcut add);
# - spatial: `attn1`'s query and key straight out of `to_q` / `to_k`, before the head split;
# - temporal: `attn_temp`'s query and key straight out of `to_q` / `to_k`, before the scaling, the head
#   split and the rotary positions (those act on every branch alike, so copying earlier is the same);
# - cross (optional, off by default): `attn2`'s query (`to_q` of the image tokens) and key (`to_k` of
#   the text; the source's text keys then stand in for the others'), values stay each branch's own.
# Decoder transformer blocks 4-11: every up-block attention but the first one of the lowest resolution.

_ATTENTION_BLOCKS = ((1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2))


def _qk(attention: str) -> tuple[str, ...]:
    return tuple(
        f"up_blocks.{b}.attentions.{i}.transformer_blocks.0.{attention}.{proj}"
        for b, i in _ATTENTION_BLOCKS
        for proj in ("to_q", "to_k")
    )


# conv2's output [B, C, F, h, w]
CONV_POSITIONS: tuple[str, ...] = ("up_blocks.1.resnets.1.conv2",)
# to_q / to_k outputs [B * F, h * w, C]
SPATIAL_POSITIONS: tuple[str, ...] = _qk("attn1")
# to_q / to_k outputs [B * h * w, F, C]
TEMPORAL_POSITIONS: tuple[str, ...] = _qk("attn_temp")
# to_q [B * F, h * w, C] and to_k [B * F, 77, C] outputs
CROSS_POSITIONS: tuple[str, ...] = _qk("attn2")

INJECTION_POSITIONS: dict[str, tuple[str, ...]] = {
    "conv": CONV_POSITIONS,
    "spatial": SPATIAL_POSITIONS,
    "temporal": TEMPORAL_POSITIONS,
    "cross": CROSS_POSITIONS,
}

# ---------------------------------------------------------------------------------------------------
# Checkpoint


def load_seine_checkpoint(path) -> dict[str, torch.Tensor]:
    """The "ema" state dict of a SEINE checkpoint (`seine.pt`, a pickle), unpickled safely.

    `weights_only=True` admits tensors and plain containers only; `argparse.Namespace` is allowed too,
    a plain attribute bag that training scripts of this family store as "args" next to "ema".
    """
    import argparse

    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise ValueError(f"{path} is not a SEINE checkpoint that loads safely (weights only): {e}") from e
    if not isinstance(checkpoint, Mapping) or "ema" not in checkpoint:
        found = sorted(map(str, checkpoint)) if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise ValueError(f"{path} is not a SEINE checkpoint: expected a dict with an 'ema' state dict, found {found}")
    ema = checkpoint["ema"]
    if not isinstance(ema, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ema.items()
    ):
        raise ValueError(f"{path}: 'ema' is not a state dict (names to tensors)")
    return dict(ema)


# ---------------------------------------------------------------------------------------------------
# Building blocks


class InflatedConv3d(nn.Conv2d):
    """A 2D convolution applied to every frame: [B, C, F, H, W] -> [B, C', F, H', W']."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[2]
        x = x.transpose(1, 2).flatten(0, 1)  # [B * F, C, H, W]
        x = super().forward(x)  # [B * F, C', H', W']
        return x.unflatten(0, (-1, frames)).transpose(1, 2)  # [B, C', F, H', W']


class ResnetBlock3D(nn.Module):
    """SD's ResNet block on video; GroupNorm statistics span all frames of a sample (as official)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, groups: int, eps: float, scale: float):
        super().__init__()
        self.output_scale_factor = scale
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps, affine=True)
        self.conv1 = InflatedConv3d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps, affine=True)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = InflatedConv3d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.nonlinearity = nn.SiLU()
        self.conv_shortcut = None
        if in_channels != out_channels:
            self.conv_shortcut = InflatedConv3d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        # x [B, Cin, F, h, w], temb [B, T]
        h = self.conv1(self.nonlinearity(self.norm1(x)))  # [B, C, F, h, w]
        h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None, None]
        h = self.conv2(self.dropout(self.nonlinearity(self.norm2(h))))  # injection point "conv" (before the add)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.output_scale_factor


class Downsample3D(nn.Module):
    def __init__(self, channels: int, padding: int):
        super().__init__()
        if padding < 1:
            raise ValueError("downsample_padding must be >= 1 (the official code has no padding-0 path)")
        self.conv = InflatedConv3d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # [B, C, F, h/2, w/2]


class Upsample3D(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = InflatedConv3d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        # nearest 2x per frame, or to the skip connection's size when the input is not a multiple of 2^k
        dtype = x.dtype
        if dtype == torch.bfloat16:  # nearest upsampling lacks bf16 kernels on some builds
            x = x.float()
        if size is None:
            x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        else:
            x = F.interpolate(x, size=(x.shape[2], *size), mode="nearest")
        return self.conv(x.to(dtype))  # [B, C, F, 2h, 2w]


class RotaryEmbedding(nn.Module):
    """Rotary positions over frames, as rotary-embedding-torch 0.3.5's `RotaryEmbedding(32)` with its
    defaults ('lang' frequencies, theta 10000) and `rotate_queries_or_keys` compute them: the first
    2 * len(freqs) channels of each head, in interleaved pairs, turn by angle position * freq."""

    def __init__(self, dim: int = 32, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))  # [dim / 2]
        # a (frozen) parameter: the official checkpoint stores it as `...attn_temp.rotary_emb.freqs`
        self.freqs = nn.Parameter(freqs, requires_grad=False)

    @property
    def dim(self) -> int:
        return 2 * self.freqs.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [N, heads, F, d] with d >= dim; positions 0 .. F-1 along the frame axis
        frames = x.shape[-2]
        positions = torch.arange(frames, device=x.device, dtype=x.dtype).to(self.freqs.dtype)
        angles = (positions[:, None] * self.freqs[None, :]).repeat_interleave(2, dim=-1).to(x.dtype)  # [F, dim]
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        x1, x2 = rot.unflatten(-1, (-1, 2)).unbind(-1)  # pairs (x1, x2) -> (-x2, x1)
        rot_half = torch.stack((-x2, x1), dim=-1).flatten(-2)
        return torch.cat((rot * angles.cos() + rot_half * angles.sin(), rest), dim=-1)


class RelativePositionBias(nn.Module):
    """T5-style bucketed relative frame-position bias, one learned scalar per bucket and head."""

    def __init__(self, heads: int, num_buckets: int = 32, max_distance: int = 32):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def _bucket(self, relative_position: torch.Tensor) -> torch.Tensor:
        half = self.num_buckets // 2
        n = -relative_position
        bucket = (n < 0).long() * half  # query after key / before key: two halves
        n = n.abs()
        max_exact = half // 2
        # log-spaced buckets beyond max_exact (clamped so the unused n < max_exact lanes stay finite)
        large = (
            max_exact
            + (
                torch.log(n.clamp(min=max_exact).float() / max_exact)
                / math.log(self.max_distance / max_exact)
                * (half - max_exact)
            ).long()
        )
        large = large.clamp(max=half - 1)
        return bucket + torch.where(n < max_exact, n, large)

    def forward(self, frames: int, device: torch.device) -> torch.Tensor:
        pos = torch.arange(frames, dtype=torch.long, device=device)
        relative = pos[None, :] - pos[:, None]  # [F_query, F_key]: key - query
        bias = self.relative_attention_bias(self._bucket(relative))  # [F, F, heads]
        return bias.permute(2, 0, 1)  # [heads, F, F]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)  # [N, L, heads * d] -> [N, heads, L, d]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).flatten(2)  # [N, heads, L, d] -> [N, L, heads * d]


class SEINEAttnProcessor:
    """Spatial self-attention and text cross-attention (SDPA): softmax(Q K^T / sqrt(d)) V."""

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # hidden_states [N, L, C] (N = B * F frames, L = h * w tokens); encoder_hidden_states [N, 77, D] or None
        if attention_mask is not None:
            raise ValueError("SEINE's attention takes no mask")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.to_q(hidden_states)  # [N, L, heads * d]   (injection point: spatial / cross)
        key = attn.to_k(context)  # [N, L | 77, heads * d]   (injection point: spatial / cross)
        value = attn.to_v(context)
        q, k, v = (_split_heads(t, attn.heads) for t in (query, key, value))
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)  # [N, heads, L, d]
        return attn.to_out[1](attn.to_out[0](_merge_heads(out)))  # [N, L, C]


class SEINETemporalAttnProcessor:
    """Temporal self-attention: softmax(rot(Q) rot(K)^T / sqrt(d) + relative-position bias) V."""

    def __call__(
        self,
        attn: TemporalAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # hidden_states [N, F, C] (N = B * h * w positions, F frames)
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("SEINE's temporal attention is self-attention without a mask")
        frames = hidden_states.shape[1]
        query = attn.to_q(hidden_states)  # [N, F, heads * d]   (injection point: temporal)
        key = attn.to_k(hidden_states)  # [N, F, heads * d]   (injection point: temporal)
        value = attn.to_v(hidden_states)
        q, k, v = (_split_heads(t, attn.heads) for t in (query, key, value))  # [N, heads, F, d]
        q, k = attn.rotary_emb(q), attn.rotary_emb(k)
        bias = attn.time_rel_pos_bias(frames, hidden_states.device).to(q.dtype)  # [heads, F, F]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)  # [N, heads, F, d]
        return attn.to_out[1](attn.to_out[0](_merge_heads(out)))  # [N, F, C]


class TemporalAttention(Attention):
    """diffusers' Attention (to_q/to_k/to_v/to_out) plus the relative-position bias and rotary frequencies."""

    def __init__(self, dim: int, heads: int, dim_head: int):
        super().__init__(
            query_dim=dim, heads=heads, dim_head=dim_head, bias=False, processor=SEINETemporalAttnProcessor()
        )
        self.time_rel_pos_bias = RelativePositionBias(heads, num_buckets=32, max_distance=32)
        self.rotary_emb = RotaryEmbedding(32)  # the official code hard-codes 32 rotated channels per head
        if dim_head < self.rotary_emb.dim:
            raise ValueError(f"temporal attention needs a head width >= {self.rotary_emb.dim}, got {dim_head}")

    def set_processor(self, processor) -> None:
        # the rotary positions and the relative-position bias live in this processor only: a generic one
        # (xformers, diffusers' defaults) would silently drop them
        if not isinstance(processor, SEINETemporalAttnProcessor):
            raise ValueError(f"SEINE's temporal attention needs SEINETemporalAttnProcessor, got {type(processor)}")
        super().set_processor(processor)


class BasicTransformerBlock(nn.Module):
    """Spatial self-attention, text cross-attention, temporal self-attention, GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, dim_head: int, cross_attention_dim: int):
        super().__init__()
        self.attn1 = Attention(dim, heads=heads, dim_head=dim_head, bias=False, processor=SEINEAttnProcessor())
        self.norm1 = nn.LayerNorm(dim)
        self.attn2 = Attention(
            dim,
            cross_attention_dim=cross_attention_dim,
            heads=heads,
            dim_head=dim_head,
            bias=False,
            processor=SEINEAttnProcessor(),
        )
        self.norm2 = nn.LayerNorm(dim)
        self.attn_temp = TemporalAttention(dim, heads, dim_head)
        self.norm_temp = nn.LayerNorm(dim)
        nn.init.zeros_(self.attn_temp.to_out[0].weight)  # as the official init: a fresh temporal layer is a no-op
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, frames: int) -> torch.Tensor:
        # x [B * F, h * w, C]; context [B * F, 77, D]
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), encoder_hidden_states=context) + x
        tokens = x.shape[1]
        # [(B F), hw, C] -> [(B hw), F, C]: batch stays the outer factor, so branches stay leading slices
        x = x.unflatten(0, (-1, frames)).transpose(1, 2).flatten(0, 1)
        x = self.attn_temp(self.norm_temp(x)) + x
        x = x.unflatten(0, (-1, tokens)).transpose(1, 2).flatten(0, 1)  # back to [B * F, h * w, C]
        return self.ff(self.norm3(x)) + x


class Transformer3DModel(nn.Module):
    """Per-frame GroupNorm + 1x1 projection around one BasicTransformerBlock, with a residual."""

    def __init__(self, heads: int, channels: int, groups: int, cross_attention_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim)]
        )
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        # x [B, C, F, h, w]; encoder_hidden_states [B, 77, D]
        frames, height, width = x.shape[2:]
        x = x.transpose(1, 2).flatten(0, 1)  # [B * F, C, h, w]
        context = encoder_hidden_states.repeat_interleave(frames, dim=0)  # [B * F, 77, D]: each frame sees its text
        residual = x
        h = self.proj_in(self.norm(x))
        h = h.flatten(2).transpose(1, 2)  # [B * F, h * w, C]
        for block in self.transformer_blocks:
            h = block(h, context, frames)
        h = h.transpose(1, 2).unflatten(2, (height, width))  # [B * F, C, h, w]
        h = self.proj_out(h) + residual
        return h.unflatten(0, (-1, frames)).transpose(1, 2)  # [B, C, F, h, w]


class DownBlock3D(nn.Module):
    """ResNets (each followed by a transformer when `attention`), then an optional strided conv."""

    def __init__(self, cin, cout, *, layers, heads, attention, downsample, padding, temb, groups, eps, cross_dim):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock3D(cin if i == 0 else cout, cout, temb, groups, eps, 1.0) for i in range(layers)]
        )
        self.attentions = None
        if attention:
            self.attentions = nn.ModuleList([Transformer3DModel(heads, cout, groups, cross_dim) for _ in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample3D(cout, padding)]) if downsample else None

    def forward(self, x, temb, encoder_hidden_states):
        skips = ()
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, encoder_hidden_states)
            skips += (x,)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips += (x,)
        return x, skips


class UpBlock3D(nn.Module):
    """ResNets on [x, skip] concatenations (each followed by a transformer when `attention`), then 2x up."""

    def __init__(self, cin, cprev, cout, *, layers, heads, attention, upsample, temb, groups, eps, cross_dim):
        super().__init__()
        self.resnets = nn.ModuleList()
        for i in range(layers):
            # input: the previous layer's output + the skip (the last skip comes from the stage below)
            channels = (cprev if i == 0 else cout) + (cin if i == layers - 1 else cout)
            self.resnets.append(ResnetBlock3D(channels, cout, temb, groups, eps, 1.0))
        self.attentions = None
        if attention:
            self.attentions = nn.ModuleList([Transformer3DModel(heads, cout, groups, cross_dim) for _ in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample3D(cout)]) if upsample else None

    def forward(self, x, skips, temb, encoder_hidden_states, upsample_size=None):
        for i, resnet in enumerate(self.resnets):
            x = torch.cat([x, skips[-1 - i]], dim=1)  # the deepest remaining skip first
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, encoder_hidden_states)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class UNetMidBlock3DCrossAttn(nn.Module):
    def __init__(self, channels, *, heads, scale, temb, groups, eps, cross_dim):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock3D(channels, channels, temb, groups, eps, scale) for _ in range(2)])
        self.attentions = nn.ModuleList([Transformer3DModel(heads, channels, groups, cross_dim)])

    def forward(self, x, temb, encoder_hidden_states):
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, encoder_hidden_states)
        return self.resnets[1](x, temb)


# ---------------------------------------------------------------------------------------------------
# The UNet

# options the official constructor takes that SEINE leaves at these values (others are not ported)
_FIXED_OPTIONS = {
    "mid_block_type": "UNetMidBlock3DCrossAttn",
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "use_linear_projection": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "upcast_attention": False,
    "resnet_time_scale_shift": "default",
    "use_first_frame": False,
    "use_relative_position": False,
}


class SEINEUNet(ModelMixin, ConfigMixin):
    """SEINE's video UNet: `forward(sample [B, 9, F, h, w], timestep, encoder_hidden_states [B, 77, D])`
    -> noise prediction [B, 4, F, h, w]. Parameter names are the official ones (`seine.pt`'s "ema")."""

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = 64,
        in_channels: int = 9,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: Sequence[str] = tuple(_DOWN_3D),
        mid_block_type: str = "UNetMidBlock3DCrossAttn",
        up_block_types: Sequence[str] = tuple(_UP_3D),
        only_cross_attention: bool = False,
        block_out_channels: Sequence[int] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int = 768,
        attention_head_dim: int | Sequence[int] = 8,  # the number of heads, as SD-1.x configs mean it
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        use_first_frame: bool = False,
        use_relative_position: bool = False,
    ):
        super().__init__()
        given = locals()
        unsupported = {k: given[k] for k, v in _FIXED_OPTIONS.items() if given[k] != v}
        if act_fn not in ("silu", "swish"):
            unsupported["act_fn"] = act_fn
        if unsupported:
            raise NotImplementedError(f"SEINEUNet ports SEINE's configuration only; unsupported: {unsupported}")
        n = len(block_out_channels)
        if len(down_block_types) != n or len(up_block_types) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        for kind in (*down_block_types, *up_block_types):
            if kind not in ("CrossAttnDownBlock3D", "DownBlock3D", "CrossAttnUpBlock3D", "UpBlock3D"):
                raise ValueError(f"unknown block type {kind!r} (a 2D config? use SEINEUNet.from_config_2d)")
        heads = [attention_head_dim] * n if isinstance(attention_head_dim, int) else list(attention_head_dim)
        common = dict(
            temb=block_out_channels[0] * 4, groups=norm_num_groups, eps=norm_eps, cross_dim=cross_attention_dim
        )

        self.conv_in = InflatedConv3d(in_channels, block_out_channels[0], kernel_size=3, padding=(1, 1))
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], common["temb"])

        self.down_blocks = nn.ModuleList()
        cout = block_out_channels[0]
        for i, kind in enumerate(down_block_types):
            cin, cout = cout, block_out_channels[i]
            self.down_blocks.append(
                DownBlock3D(
                    cin,
                    cout,
                    layers=layers_per_block,
                    heads=heads[i],
                    attention=kind == "CrossAttnDownBlock3D",
                    downsample=i < n - 1,
                    padding=downsample_padding,
                    **common,
                )
            )

        self.mid_block = UNetMidBlock3DCrossAttn(
            block_out_channels[-1], heads=heads[-1], scale=mid_block_scale_factor, **common
        )

        self.up_blocks = nn.ModuleList()
        self.num_upsamplers = n - 1
        rev_channels, rev_heads = list(reversed(block_out_channels)), list(reversed(heads))
        cout = rev_channels[0]
        for i, kind in enumerate(up_block_types):
            cprev, cout = cout, rev_channels[i]
            self.up_blocks.append(
                UpBlock3D(
                    rev_channels[min(i + 1, n - 1)],
                    cprev,
                    cout,
                    layers=layers_per_block + 1,
                    heads=rev_heads[i],
                    attention=kind == "CrossAttnUpBlock3D",
                    upsample=i < n - 1,
                    **common,
                )
            )

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = InflatedConv3d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    @classmethod
    def from_config_2d(cls, config_2d: Mapping[str, Any]) -> SEINEUNet:
        """The 3D UNet SEINE's `from_pretrained_2d(..., use_concat=True)` builds from a 2D SD-1.x UNet
        config (randomly initialised; load `seine.pt`'s "ema" into it). Keys the 3D model does not take
        are ignored, as the official `from_config` ignores them."""
        known = set(inspect.signature(cls.__init__).parameters) - {"self"}
        config = {k: v for k, v in config_2d.items() if k in known}
        config.update(
            down_block_types=list(_DOWN_3D), up_block_types=list(_UP_3D), use_first_frame=False, in_channels=9
        )
        return cls.from_config(config)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
    ) -> torch.Tensor:
        """sample [B, 9, F, h, w] = [noisy latent 4, mask 1, masked-video latent 4] on channels,
        timestep int or 0-d / [B] tensor, encoder_hidden_states [B, 77, D] -> noise [B, 4, F, h, w]."""
        batch, _, _, height, width = sample.shape
        if encoder_hidden_states.shape[0] != batch:
            raise ValueError(f"encoder_hidden_states has batch {encoder_hidden_states.shape[0]}, sample has {batch}")
        # a size that is not a multiple of 2^(number of upsamplers) upsamples to the skip's size instead of 2x
        factor = 2**self.num_upsamplers
        forward_upsample_size = height % factor != 0 or width % factor != 0

        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        timesteps = timestep
        if not torch.is_tensor(timesteps):
            dtype = torch.float64 if isinstance(timestep, float) else torch.int64
            timesteps = torch.tensor([timesteps], dtype=dtype, device=sample.device)
        elif timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.to(sample.device).expand(batch)  # [B]
        # sinusoidal features come in float32; the embedding MLP runs in the model's dtype
        t_emb = self.time_proj(timesteps).to(dtype=self.time_embedding.linear_1.weight.dtype)  # [B, C0]
        emb = self.time_embedding(t_emb)  # [B, 4 * C0]

        x = self.conv_in(sample)  # [B, C0, F, h, w]
        skips = (x,)
        for block in self.down_blocks:
            x, block_skips = block(x, emb, encoder_hidden_states)
            skips += block_skips
        x = self.mid_block(x, emb, encoder_hidden_states)

        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            upsample_size = None
            if i < len(self.up_blocks) - 1 and forward_upsample_size:
                upsample_size = skips[-1].shape[-2:]  # (h, w) of the next stage's skips
            x = block(x, block_skips, emb, encoder_hidden_states, upsample_size)

        return self.conv_out(self.conv_act(self.conv_norm_out(x)))  # [B, 4, F, h, w]


__all__ = [
    "CONV_POSITIONS",
    "CROSS_POSITIONS",
    "INJECTION_POSITIONS",
    "SD14_UNET_CONFIG_2D",
    "SEINE_FULL_CONFIG",
    "SPATIAL_POSITIONS",
    "TEMPORAL_POSITIONS",
    "SEINEUNet",
    "load_seine_checkpoint",
]
