"""ConsistI2V's VideoLDM UNet (TIGER-Lab/ConsistI2V, as vendored by AnyV2V) as plain PyTorch on diffusers blocks.

Reproduces the official `VideoLDMUNet3DConditionModel` (AnyV2V bc540be `consisti2v/models/`) and loads its
checkpoint directly: module and parameter names equal the official state dict, so
`ConsistI2VUNet.from_pretrained(folder_or_hub_id, subfolder="unet")` reads `unet/` as the official code does.

The network, per video of F frames (the clean first-frame latent in front of the F - 1 noisy frames):
- frames are folded into the batch, `[(B F), C, h, w]`, for every 2-D layer; the timestep and the frame stride are
  both embedded through the sinusoidal `time_proj`, the stride then through `frame_stride_embedding`, and summed;
- every encoder/decoder layer is ResnetBlock2D -> `conv3ds[i]` (temporal ResNet) -> `attentions[i]` (spatial
  transformer) -> `tempo_attns[i]` (temporal transformer); the mid block has no temporal transformer;
- spatial self-attention: the keys/values of each frame are its own tokens followed by frame 0's tokens;
- temporal transformer: per pixel over frames, self-attention whose keys/values add frame 0's 8 spatial neighbours
  (3x3 window minus the centre, replicate padding), rotary positions on the first half of the channels before the
  head split (neighbours at position 0); then text cross-attention with rotated queries and unrotated keys;
- temporal ResNets and temporal transformers blend `alpha * input + (1 - alpha) * output` with alpha clamped to
  [0, 1]; the official code clamps the stored parameter in place on every call, we clamp functionally (same
  numbers; a checkpoint whose alphas lie outside [0, 1] keeps its stored values here);
- the output's frame 0 (the condition) is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

# PnP injection positions (decoder blocks 4-11: every up-block transformer but the first of the lowest resolution)
_INJECTED_TRANSFORMERS = ((1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2))
# the output of conv2 of the second ResNet of decoder stage 1, before its shortcut add; layout [(B F), C, h, w]
CONV_POSITIONS: tuple[str, ...] = ("up_blocks.1.resnets.1.conv2",)
# spatial self-attention Q and first-frame-augmented K: [(B F), h*w, inner] and [(B F), 2*h*w, inner]
SPATIAL_POSITIONS: tuple[str, ...] = tuple(
    f"up_blocks.{b}.attentions.{i}.transformer_blocks.0.attn1.{proj}"
    for b, i in _INJECTED_TRANSFORMERS
    for proj in ("to_q", "to_k")
)
# temporal self-attention Q and neighbour-augmented K before rotary: [(B h w), F, inner] and [(B h w), F + 8, inner]
TEMPORAL_POSITIONS: tuple[str, ...] = tuple(
    f"up_blocks.{b}.tempo_attns.{i}.transformer_blocks.0.attn1.{proj}"
    for b, i in _INJECTED_TRANSFORMERS
    for proj in ("to_q", "to_k")
)

# The full-size model (TIGER-Lab/ConsistI2V): the SD-2.1-base UNet config plus ConsistI2V's inference options
# (`configs/inference/inference.yaml`), as `tools/reference/consisti2v/build_manifest_consisti2v.py` builds it for
# `../shared/fixtures/consisti2v-reference/MANIFEST-full.json`. The hub's own `unet/config.json` could not be read here.
CONSISTI2V_FULL_CONFIG: dict = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1024,
    "attention_head_dim": [5, 10, 20, 20],  # head COUNTS (SD convention); head dim 64
    "dual_cross_attention": False,
    "use_linear_projection": True,
    "only_cross_attention": False,
    "num_class_embeds": None,
    "upcast_attention": False,
    "use_temporal": True,
    "n_frames": 16,
    "n_temp_heads": 8,
    "first_frame_condition_mode": "concat",
    "augment_temporal_attention": True,
    "temp_pos_embedding": "rotary",
    "use_frame_stride_condition": True,
}

# the 3x3 window positions (row-major) that are a pixel's neighbours: all but the centre
_NEIGHBOUR_INDEX = (0, 1, 2, 3, 5, 6, 7, 8)
NUM_NEIGHBOURS = len(_NEIGHBOUR_INDEX)


@dataclass
class _VideoContext:
    """What every block needs besides the hidden states, for one UNet call."""

    num_frames: int  # F, incl. the first frame
    text_per_frame: torch.Tensor  # [(B F), L, D]: the video's text repeated for each frame (spatial cross-attention)
    text_per_video: torch.Tensor  # [B, L, D] (temporal cross-attention)


def _multi_head_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int) -> torch.Tensor:
    """[N, Lq, inner] x [N, Lk, inner] -> [N, Lq, inner], `heads` heads split from the channels, SDPA."""
    n, _, inner = query.shape
    head_dim = inner // heads
    query = query.reshape(n, -1, heads, head_dim).transpose(1, 2)  # [N, heads, Lq, d]
    key = key.reshape(n, -1, heads, head_dim).transpose(1, 2)  # [N, heads, Lk, d]
    value = value.reshape(n, -1, heads, head_dim).transpose(1, 2)
    out = F.scaled_dot_product_attention(query, key, value)  # [N, heads, Lq, d]
    return out.transpose(1, 2).reshape(n, -1, inner)


def _blend(alpha: nn.Parameter, block_input: torch.Tensor, block_output: torch.Tensor) -> torch.Tensor:
    """alpha * input + (1 - alpha) * output, alpha clamped to [0, 1] (the official clamps the parameter in place)."""
    alpha = alpha.clamp(0, 1)
    return alpha * block_input + (1 - alpha) * block_output


# ---------------------------------------------------------------------------------------------------------------------
# temporal ResNet


class TemporalResnet(nn.Module):
    """ConsistI2V's TemporalResnetBlock: GroupNorm -> SiLU -> Conv3d(3,1,1) twice, residual, clamped alpha blend.

    Quirks of the official block kept here: GroupNorm(32, eps 1e-6) whatever the UNet's norm config; the norms
    see frames one by one ([(B F), C, h, w]); `time_emb_proj` (temb 512 -> C) exists but the block is always
    called without a time embedding, so it is unused.
    """

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-6, temb_channels: int = 512):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels, eps=eps)
        self.conv1 = nn.Conv3d(channels, channels, kernel_size=(3, 1, 1), padding=(1, 0, 0))
        self.time_emb_proj = nn.Linear(temb_channels, channels)  # unused (see above); in the state dict
        self.norm2 = nn.GroupNorm(groups, channels, eps=eps)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv3d(channels, channels, kernel_size=(3, 1, 1), padding=(1, 0, 0))
        self.nonlinearity = nn.SiLU()
        self.alpha = nn.Parameter(torch.ones(1))

    @staticmethod
    def _conv_over_frames(conv: nn.Conv3d, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        bf, c, h, w = x.shape
        video = x.reshape(bf // num_frames, num_frames, c, h, w).transpose(1, 2)  # [B, C, F, h, w]
        out = conv(video)
        return out.transpose(1, 2).reshape(bf, -1, h, w)  # [(B F), C, h, w]

    def forward(self, hidden_states: torch.Tensor, num_frames: int) -> torch.Tensor:
        # hidden_states [(B F), C, h, w]
        h = self._conv_over_frames(self.conv1, self.nonlinearity(self.norm1(hidden_states)), num_frames)
        h = self.dropout(self.nonlinearity(self.norm2(h)))
        h = self._conv_over_frames(self.conv2, h, num_frames)
        return _blend(self.alpha, hidden_states, hidden_states + h)


# ---------------------------------------------------------------------------------------------------------------------
# spatial (first-frame) attention


class FirstFrameAttnProcessor:
    """Spatial self-attention of each frame over its own tokens followed by frame 0's tokens.

    `to_k`/`to_v` see the concatenated sequence once, so a hook on `to_k` gets the whole augmented K.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        num_frames: int | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None or num_frames is None:
            raise ValueError("first-frame self-attention takes only the frame tokens and num_frames")
        bf, n, c = hidden_states.shape  # [(B F), h*w, C]
        first = hidden_states.reshape(bf // num_frames, num_frames, n, c)[:, :1]  # [B, 1, h*w, C]
        first = first.expand(-1, num_frames, -1, -1).reshape(bf, n, c)  # [(B F), h*w, C]
        keys_in = torch.cat([hidden_states, first], dim=1)  # [(B F), 2*h*w, C]
        query = attn.to_q(hidden_states)  # [(B F), h*w, inner]
        key = attn.to_k(keys_in)  # [(B F), 2*h*w, inner]
        value = attn.to_v(keys_in)
        out = _multi_head_attention(query, key, value, attn.heads)
        return attn.to_out[1](attn.to_out[0](out))


class SpatialTransformerBlock(nn.Module):
    """Self-attention with first-frame keys, text cross-attention, GEGLU feed-forward (pre-norm, residual)."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_attention_dim: int, upcast_attention: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(
            query_dim=dim,
            heads=heads,
            dim_head=head_dim,
            upcast_attention=upcast_attention,
            processor=FirstFrameAttnProcessor(),
        )
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(
            query_dim=dim,
            cross_attention_dim=cross_attention_dim,
            heads=heads,
            dim_head=head_dim,
            upcast_attention=upcast_attention,
            processor=AttnProcessor2_0(),
        )
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, hidden_states: torch.Tensor, ctx: _VideoContext, height: int, width: int) -> torch.Tensor:
        # hidden_states [(B F), h*w, D]
        hidden_states = self.attn1(self.norm1(hidden_states), num_frames=ctx.num_frames) + hidden_states
        hidden_states = self.attn2(self.norm2(hidden_states), encoder_hidden_states=ctx.text_per_frame) + hidden_states
        return self.ff(self.norm3(hidden_states)) + hidden_states


# ---------------------------------------------------------------------------------------------------------------------
# temporal attention


class RotaryEmbedding(nn.Module):
    """lucidrains' rotary embedding as ConsistI2V uses it: `freqs` = theta^(-2i/dim), i < dim/2 (a non-trainable
    parameter, so in the state dict); interleaved pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin) on the first
    `dim` channels, the rest untouched."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.freqs = nn.Parameter(freqs, requires_grad=False)  # [dim / 2]

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # x [N, S, C >= dim], positions [S]
        angles = positions.to(self.freqs.dtype)[:, None] * self.freqs[None, :]  # [S, dim/2]
        angles = angles.repeat_interleave(2, dim=-1).to(x.dtype)  # [S, dim]: f0 f0 f1 f1 ...
        rot_dim = angles.shape[-1]
        x_rot, x_pass = x[..., :rot_dim], x[..., rot_dim:]
        x1, x2 = x_rot.unflatten(-1, (-1, 2)).unbind(-1)
        x_swapped = torch.stack((-x2, x1), dim=-1).flatten(-2)  # (-x1, x0) per pair
        return torch.cat([x_rot * angles.cos() + x_swapped * angles.sin(), x_pass], dim=-1)


class RelativePositionBias(nn.Module):
    """LaVie's T5-style relative position bias table. The official model creates it but never uses it (its call is
    commented out); kept only so the checkpoint's `rotary_bias.relative_attention_bias.weight` loads."""

    def __init__(self, heads: int, num_buckets: int = 32):
        super().__init__()
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)


class RotaryTemporalAttnProcessor:
    """Attention over frames with rotary positions applied after `to_q`/`to_k` (on the whole inner dim, before the
    head split, so only the first inner_dim/2 channels rotate).

    Self-attention: `encoder_hidden_states` is the key/value token sequence ([(B h w), F + 8, D] with the
    neighbours) and `key_positions` its rotary positions. Text cross-attention: `encoder_hidden_states` is
    [B, L, D_text], one text per video shared by `queries_per_context` consecutive query rows (the pixels); keys
    are not rotated, except, as in the official code, when L happens to equal F.
    """

    def __call__(
        self,
        attn: TemporalAttention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        key_positions: torch.Tensor | None = None,
        queries_per_context: int = 1,
    ) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("the temporal attention takes no mask")
        rows, num_frames, _ = hidden_states.shape  # [(B h w), F, D]
        keys_in = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.to_q(hidden_states)  # [(B h w), F, inner]
        key = attn.to_k(keys_in)  # [(B h w), S, inner] or [B, L, inner]
        value = attn.to_v(keys_in)
        frame_positions = torch.arange(num_frames, device=query.device, dtype=query.dtype)
        query = attn.rotary_emb.rotate(query, frame_positions)
        if key_positions is not None:
            key = attn.rotary_emb.rotate(key, key_positions)
        elif key.shape[1] == num_frames:  # official: equal lengths mean self-attention, keys rotated 0..F-1
            key = attn.rotary_emb.rotate(key, frame_positions)
        if queries_per_context > 1:
            # every pixel of a video attends to the same text: fold the pixels into the query sequence
            query = query.reshape(key.shape[0], queries_per_context * num_frames, -1)  # [B, h*w*F, inner]
        out = _multi_head_attention(query, key, value, attn.heads).reshape(rows, num_frames, -1)
        return attn.to_out[1](attn.to_out[0](out))


class TemporalAttention(Attention):
    """diffusers Attention plus the official TemporalConditionalAttention's `rotary_bias` (unused) and
    `rotary_emb` (rotary over inner_dim // 2 channels)."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, cross_attention_dim: int | None = None, **kwargs):
        super().__init__(
            query_dim=query_dim,
            cross_attention_dim=cross_attention_dim,
            heads=heads,
            dim_head=dim_head,
            processor=RotaryTemporalAttnProcessor(),
            **kwargs,
        )
        self.rotary_bias = RelativePositionBias(heads)
        self.rotary_emb = RotaryEmbedding(self.inner_dim // 2)


def _first_frame_neighbours(first_frame: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, h*w, D] frame-0 tokens -> [(B h w), 8, D]: each pixel's 3x3 neighbours (replicate padding, no centre)."""
    b, _, d = first_frame.shape
    grid = first_frame.transpose(1, 2).reshape(b, d, height, width)  # [B, D, h, w]
    padded = F.pad(grid, (1, 1, 1, 1), mode="replicate")  # [B, D, h+2, w+2]
    windows = padded.unfold(2, 3, 1).unfold(3, 3, 1).reshape(b, d, height, width, 9)  # [B, D, h, w, 3*3]
    neighbours = windows[..., list(_NEIGHBOUR_INDEX)]  # [B, D, h, w, 8]
    return neighbours.permute(0, 2, 3, 4, 1).reshape(b * height * width, NUM_NEIGHBOURS, d)


class TemporalTransformerBlock(nn.Module):
    """Per pixel over frames: neighbour-augmented rotary self-attention, text cross-attention, GEGLU feed-forward."""

    def __init__(
        self, dim: int, heads: int, head_dim: int, cross_attention_dim: int, upcast_attention: bool, augment: bool
    ):
        super().__init__()
        self.augment_with_neighbours = augment
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = TemporalAttention(dim, heads, head_dim, upcast_attention=upcast_attention)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = TemporalAttention(
            dim, heads, head_dim, cross_attention_dim=cross_attention_dim, upcast_attention=upcast_attention
        )
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, hidden_states: torch.Tensor, ctx: _VideoContext, height: int, width: int) -> torch.Tensor:
        # hidden_states [(B F), h*w, D]
        bf, hw, d = hidden_states.shape
        f = ctx.num_frames
        b = bf // f

        def to_pixels(x: torch.Tensor) -> torch.Tensor:  # [(B F), h*w, D] -> [(B h w), F, D]
            return x.reshape(b, f, hw, -1).transpose(1, 2).reshape(b * hw, f, -1)

        def to_frames(x: torch.Tensor) -> torch.Tensor:  # [(B h w), F, D] -> [(B F), h*w, D]
            return x.reshape(b, hw, f, -1).transpose(1, 2).reshape(bf, hw, -1)

        normed = self.norm1(hidden_states)
        tokens = to_pixels(normed)
        if self.augment_with_neighbours:
            neighbours = _first_frame_neighbours(normed.reshape(b, f, hw, d)[:, 0], height, width)
            keys_in = torch.cat([tokens, neighbours], dim=1)  # [(B h w), F + 8, D]
            frame_positions = torch.arange(f, device=tokens.device, dtype=tokens.dtype)
            key_positions = torch.cat([frame_positions, frame_positions.new_zeros(NUM_NEIGHBOURS)])  # neighbours at 0
            out = self.attn1(tokens, encoder_hidden_states=keys_in, key_positions=key_positions)
        else:
            out = self.attn1(tokens)
        hidden_states = to_frames(out) + hidden_states

        tokens = to_pixels(self.norm2(hidden_states))
        out = self.attn2(tokens, encoder_hidden_states=ctx.text_per_video, queries_per_context=hw)
        hidden_states = to_frames(out) + hidden_states
        return self.ff(self.norm3(hidden_states)) + hidden_states


# ---------------------------------------------------------------------------------------------------------------------
# transformer wrapper (GroupNorm, projection in, blocks, projection out, residual)


class VideoTransformer2D(nn.Module):
    """The official Transformer2DConditionModel for continuous input: spatial (first-frame attention) or
    temporal (`temporal=True`: temporal blocks and the clamped `alpha` blend of input and output)."""

    def __init__(
        self,
        heads: int,
        head_dim: int,
        in_channels: int,
        num_layers: int,
        cross_attention_dim: int,
        norm_num_groups: int,
        use_linear_projection: bool,
        upcast_attention: bool,
        temporal: bool = False,
        augment_temporal_attention: bool = False,
    ):
        super().__init__()
        inner_dim = heads * head_dim
        self.use_linear_projection = use_linear_projection
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6)
        if use_linear_projection:
            self.proj_in = nn.Linear(in_channels, inner_dim)
        else:
            self.proj_in = nn.Conv2d(in_channels, inner_dim, kernel_size=1)
        if temporal:
            blocks = [
                TemporalTransformerBlock(
                    inner_dim, heads, head_dim, cross_attention_dim, upcast_attention, augment_temporal_attention
                )
                for _ in range(num_layers)
            ]
        else:
            blocks = [
                SpatialTransformerBlock(inner_dim, heads, head_dim, cross_attention_dim, upcast_attention)
                for _ in range(num_layers)
            ]
        self.transformer_blocks = nn.ModuleList(blocks)
        if use_linear_projection:
            self.proj_out = nn.Linear(inner_dim, in_channels)
        else:
            self.proj_out = nn.Conv2d(inner_dim, in_channels, kernel_size=1)
        self.alpha = nn.Parameter(torch.ones(1)) if temporal else None

    def forward(self, hidden_states: torch.Tensor, ctx: _VideoContext) -> torch.Tensor:
        # hidden_states [(B F), C, h, w]
        bf, _, height, width = hidden_states.shape
        residual = hidden_states
        x = self.norm(hidden_states)
        if self.use_linear_projection:
            x = self.proj_in(x.permute(0, 2, 3, 1).reshape(bf, height * width, -1))  # [(B F), h*w, inner]
        else:
            x = self.proj_in(x)
            x = x.permute(0, 2, 3, 1).reshape(bf, height * width, -1)
        for block in self.transformer_blocks:
            x = block(x, ctx, height, width)
        if self.use_linear_projection:
            x = self.proj_out(x).reshape(bf, height, width, -1).permute(0, 3, 1, 2).contiguous()
        else:
            x = self.proj_out(x.reshape(bf, height, width, -1).permute(0, 3, 1, 2).contiguous())
        out = x + residual  # [(B F), C, h, w]
        if self.alpha is not None:
            out = _blend(self.alpha, residual, out)
        return out


# ---------------------------------------------------------------------------------------------------------------------
# UNet blocks


@dataclass
class _BlockOptions:
    temb_channels: int
    resnet_eps: float
    resnet_act_fn: str
    resnet_groups: int
    resnet_time_scale_shift: str
    dropout: float
    n_temp_heads: int
    use_linear_projection: bool
    upcast_attention: bool
    augment_temporal_attention: bool

    def resnet(self, in_channels: int, out_channels: int, output_scale_factor: float = 1.0) -> ResnetBlock2D:
        return ResnetBlock2D(
            in_channels=in_channels,
            out_channels=out_channels,
            temb_channels=self.temb_channels,
            eps=self.resnet_eps,
            groups=self.resnet_groups,
            dropout=self.dropout,
            time_embedding_norm=self.resnet_time_scale_shift,
            non_linearity=self.resnet_act_fn,
            output_scale_factor=output_scale_factor,
        )

    def spatial(self, channels: int, heads: int, layers: int, cross_attention_dim: int) -> VideoTransformer2D:
        return VideoTransformer2D(
            heads,
            channels // heads,
            channels,
            layers,
            cross_attention_dim,
            self.resnet_groups,
            self.use_linear_projection,
            self.upcast_attention,
        )

    def temporal(self, channels: int, layers: int, cross_attention_dim: int) -> VideoTransformer2D:
        heads = self.n_temp_heads
        return VideoTransformer2D(
            heads,
            channels // heads,
            channels,
            layers,
            cross_attention_dim,
            self.resnet_groups,
            self.use_linear_projection,
            self.upcast_attention,
            temporal=True,
            augment_temporal_attention=self.augment_temporal_attention,
        )


class VideoDownBlock(nn.Module):
    """Encoder stage: per layer ResNet -> temporal ResNet [-> spatial -> temporal transformer]; then downsample."""

    def __init__(
        self,
        opts: _BlockOptions,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        add_downsample: bool,
        downsample_padding: int,
        with_attention: bool,
        heads: int = 1,
        transformer_layers: int = 1,
        cross_attention_dim: int = 1280,
    ):
        super().__init__()
        if with_attention:
            self.attentions = nn.ModuleList(
                [opts.spatial(out_channels, heads, transformer_layers, cross_attention_dim) for _ in range(num_layers)]
            )
        self.resnets = nn.ModuleList(
            [opts.resnet(in_channels if i == 0 else out_channels, out_channels) for i in range(num_layers)]
        )
        self.downsamplers = (
            nn.ModuleList(
                [
                    # name "op" (as the official): stored as `conv` only, without the `Conv2d_0` alias
                    Downsample2D(
                        out_channels, use_conv=True, out_channels=out_channels, padding=downsample_padding, name="op"
                    )
                ]
            )
            if add_downsample
            else None
        )
        self.conv3ds = nn.ModuleList([TemporalResnet(out_channels) for _ in range(num_layers)])
        if with_attention:
            self.tempo_attns = nn.ModuleList(
                [opts.temporal(out_channels, transformer_layers, cross_attention_dim) for _ in range(num_layers)]
            )
        self.with_attention = with_attention

    def forward(
        self, hidden_states: torch.Tensor, temb: torch.Tensor, ctx: _VideoContext
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips = ()
        for i, resnet in enumerate(self.resnets):
            hidden_states = self.conv3ds[i](resnet(hidden_states, temb), ctx.num_frames)
            if self.with_attention:
                hidden_states = self.tempo_attns[i](self.attentions[i](hidden_states, ctx), ctx)
            skips += (hidden_states,)
        if self.downsamplers is not None:
            hidden_states = self.downsamplers[0](hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class VideoUpBlock(nn.Module):
    """Decoder stage: per layer concat skip -> ResNet -> temporal ResNet [-> spatial -> temporal transformer];
    then upsample."""

    def __init__(
        self,
        opts: _BlockOptions,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        num_layers: int,
        add_upsample: bool,
        with_attention: bool,
        heads: int = 1,
        transformer_layers: int = 1,
        cross_attention_dim: int = 1280,
    ):
        super().__init__()
        if with_attention:
            self.attentions = nn.ModuleList(
                [opts.spatial(out_channels, heads, transformer_layers, cross_attention_dim) for _ in range(num_layers)]
            )
        resnets = []
        for i in range(num_layers):
            skip_channels = in_channels if i == num_layers - 1 else out_channels
            resnet_in = prev_output_channels if i == 0 else out_channels
            resnets.append(opts.resnet(resnet_in + skip_channels, out_channels))
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = (
            nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
            if add_upsample
            else None
        )
        self.conv3ds = nn.ModuleList([TemporalResnet(out_channels) for _ in range(num_layers)])
        if with_attention:
            self.tempo_attns = nn.ModuleList(
                [opts.temporal(out_channels, transformer_layers, cross_attention_dim) for _ in range(num_layers)]
            )
        self.with_attention = with_attention

    def forward(
        self,
        hidden_states: torch.Tensor,
        skips: tuple[torch.Tensor, ...],
        temb: torch.Tensor,
        ctx: _VideoContext,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        for i, resnet in enumerate(self.resnets):
            hidden_states = torch.cat([hidden_states, skips[-1 - i]], dim=1)
            hidden_states = self.conv3ds[i](resnet(hidden_states, temb), ctx.num_frames)
            if self.with_attention:
                hidden_states = self.tempo_attns[i](self.attentions[i](hidden_states, ctx), ctx)
        if self.upsamplers is not None:
            hidden_states = self.upsamplers[0](hidden_states, upsample_size)
        return hidden_states


class VideoMidBlock(nn.Module):
    """ResNet -> temporal ResNet, then per layer spatial transformer -> ResNet -> temporal ResNet (no temporal
    transformer in the middle)."""

    def __init__(
        self,
        opts: _BlockOptions,
        channels: int,
        heads: int,
        transformer_layers: int,
        cross_attention_dim: int,
        output_scale_factor: float,
        num_layers: int = 1,
    ):
        super().__init__()
        self.attentions = nn.ModuleList(
            [opts.spatial(channels, heads, transformer_layers, cross_attention_dim) for _ in range(num_layers)]
        )
        self.resnets = nn.ModuleList(
            [opts.resnet(channels, channels, output_scale_factor) for _ in range(num_layers + 1)]
        )
        self.conv3ds = nn.ModuleList([TemporalResnet(channels) for _ in range(num_layers + 1)])

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, ctx: _VideoContext) -> torch.Tensor:
        hidden_states = self.conv3ds[0](self.resnets[0](hidden_states, temb), ctx.num_frames)
        for attn, resnet, conv3d in zip(self.attentions, self.resnets[1:], self.conv3ds[1:], strict=True):
            hidden_states = conv3d(resnet(attn(hidden_states, ctx), temb), ctx.num_frames)
        return hidden_states


# ---------------------------------------------------------------------------------------------------------------------
# the UNet


def _per_block(value, n: int, name: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise ValueError(f"{name} must have one entry per block ({n}), got {value!r}")
    return values


def _per_row(value, batch: int, num_frames: int, device: torch.device) -> torch.Tensor:
    """int / float / 0-d / [1] / [B] -> [(B F)], one value per frame row (the official embeds it per frame row)."""
    if not torch.is_tensor(value):
        value = torch.tensor([value], dtype=torch.float64 if isinstance(value, float) else torch.int64)
    value = value.to(device).reshape(-1)
    if value.numel() == 1:
        value = value.expand(batch)
    elif value.numel() != batch:
        raise ValueError(f"expected a scalar or {batch} values, got shape {tuple(value.shape)}")
    return value.repeat_interleave(num_frames)


def _unsupported(name: str, value, default) -> None:
    if value != default:
        raise NotImplementedError(f"ConsistI2VUNet: {name}={value!r} is not supported (ConsistI2V uses {default!r})")


class ConsistI2VUNet(ModelMixin, ConfigMixin):
    """ConsistI2V's VideoLDM UNet; loads the official `unet/` (config and weights) unchanged.

    `forward(sample [B, C, F-1, h, w], timestep, encoder_hidden_states [B, L, D], first_frame_latents
    [B, C, 1, h, w], frame_stride) -> [B, C_out, F-1, h, w]`. F (incl. the first frame) is taken from the input;
    the checkpoint was trained for `config.n_frames`, which callers should check.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 4,
        out_channels: int = 4,
        center_input_sample: bool = False,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        mid_block_type: str | None = "UNetMidBlock2DCrossAttn",
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        only_cross_attention: bool | tuple[bool, ...] = False,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1280,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        encoder_hid_dim: int | None = None,
        encoder_hid_dim_type: str | None = None,
        attention_head_dim: int | tuple[int, ...] = 8,
        num_attention_heads: int | tuple[int, ...] | None = None,
        dual_cross_attention: bool = False,
        use_linear_projection: bool = False,
        class_embed_type: str | None = None,
        addition_embed_type: str | None = None,
        addition_time_embed_dim: int | None = None,
        num_class_embeds: int | None = None,
        upcast_attention: bool = False,
        resnet_time_scale_shift: str = "default",
        resnet_skip_time_act: bool = False,  # accepted and ignored, as by the official blocks
        resnet_out_scale_factor: float = 1.0,  # accepted and ignored, as by the official blocks
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        time_embedding_act_fn: str | None = None,
        timestep_post_act: str | None = None,
        time_cond_proj_dim: int | None = None,
        conv_in_kernel: int = 3,
        conv_out_kernel: int = 3,
        projection_class_embeddings_input_dim: int | None = None,
        attention_type: str = "default",
        class_embeddings_concat: bool = False,
        mid_block_only_cross_attention: bool | None = None,
        cross_attention_norm: str | None = None,  # accepted and ignored, as by the official blocks
        addition_embed_type_num_heads: int = 64,
        # ConsistI2V
        use_temporal: bool = True,
        n_frames: int = 8,
        n_temp_heads: int = 8,
        first_frame_condition_mode: str = "none",
        augment_temporal_attention: bool = False,
        temp_pos_embedding: str = "sinusoidal",
        use_frame_stride_condition: bool = False,
    ):
        super().__init__()
        for name, value, default in (
            ("num_attention_heads", num_attention_heads, None),  # the official raises too
            ("mid_block_type", mid_block_type, "UNetMidBlock2DCrossAttn"),
            (
                "only_cross_attention",
                any(_per_block(only_cross_attention, len(down_block_types), "only_cross_attention")),
                False,
            ),
            ("dual_cross_attention", dual_cross_attention, False),
            ("encoder_hid_dim", encoder_hid_dim, None),
            ("encoder_hid_dim_type", encoder_hid_dim_type, None),
            ("class_embed_type", class_embed_type, None),
            ("num_class_embeds", num_class_embeds, None),
            ("addition_embed_type", addition_embed_type, None),
            ("time_embedding_type", time_embedding_type, "positional"),
            ("time_cond_proj_dim", time_cond_proj_dim, None),
            ("attention_type", attention_type, "default"),
            ("class_embeddings_concat", class_embeddings_concat, False),
            ("use_temporal", use_temporal, True),
            ("first_frame_condition_mode", first_frame_condition_mode, "concat"),
            ("temp_pos_embedding", temp_pos_embedding, "rotary"),
            ("norm_num_groups", norm_num_groups is not None, True),
        ):
            _unsupported(name, value, default)
        n_blocks = len(down_block_types)
        if len(up_block_types) != n_blocks or len(block_out_channels) != n_blocks:
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        heads = _per_block(attention_head_dim, n_blocks, "attention_head_dim")  # head COUNTS (SD convention)
        cross_dims = _per_block(cross_attention_dim, n_blocks, "cross_attention_dim")
        layers = _per_block(layers_per_block, n_blocks, "layers_per_block")
        transformer_layers = _per_block(transformer_layers_per_block, n_blocks, "transformer_layers_per_block")

        self.conv_in = nn.Conv2d(
            in_channels, block_out_channels[0], kernel_size=conv_in_kernel, padding=(conv_in_kernel - 1) // 2
        )
        time_embed_dim = time_embedding_dim or block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(
            block_out_channels[0], time_embed_dim, act_fn=act_fn, post_act_fn=timestep_post_act
        )
        if use_frame_stride_condition:
            # the frame stride is embedded like a timestep (same sinusoidal time_proj), then its own MLP
            self.frame_stride_embedding = TimestepEmbedding(
                block_out_channels[0], time_embed_dim, act_fn=act_fn, post_act_fn=timestep_post_act
            )
            nn.init.zeros_(self.frame_stride_embedding.linear_2.weight)  # zero-initialised as in the official
            nn.init.zeros_(self.frame_stride_embedding.linear_2.bias)
        self.time_embed_act = None if time_embedding_act_fn is None else get_activation(time_embedding_act_fn)

        opts = _BlockOptions(
            temb_channels=time_embed_dim,
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
            resnet_time_scale_shift=resnet_time_scale_shift,
            dropout=dropout,
            n_temp_heads=n_temp_heads,
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            augment_temporal_attention=augment_temporal_attention,
        )
        # registered before mid_block, as in the official (state-dict order)
        self.down_blocks = nn.ModuleList([])
        self.up_blocks = nn.ModuleList([])

        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            block_type = block_type.removeprefix("UNetRes")
            if block_type not in ("CrossAttnDownBlock2D", "DownBlock2D"):
                raise ValueError(f"{block_type} does not exist.")
            input_channel, output_channel = output_channel, block_out_channels[i]
            self.down_blocks.append(
                VideoDownBlock(
                    opts,
                    input_channel,
                    output_channel,
                    layers[i],
                    add_downsample=i < n_blocks - 1,
                    downsample_padding=downsample_padding,
                    with_attention=block_type == "CrossAttnDownBlock2D",
                    heads=heads[i],
                    transformer_layers=transformer_layers[i],
                    cross_attention_dim=cross_dims[i],
                )
            )

        self.mid_block = VideoMidBlock(
            opts, block_out_channels[-1], heads[-1], transformer_layers[-1], cross_dims[-1], mid_block_scale_factor
        )

        reversed_channels = list(reversed(block_out_channels))
        output_channel = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            block_type = block_type.removeprefix("UNetRes")
            if block_type not in ("CrossAttnUpBlock2D", "UpBlock2D"):
                raise ValueError(f"{block_type} does not exist.")
            prev_output_channel, output_channel = output_channel, reversed_channels[i]
            input_channel = reversed_channels[min(i + 1, n_blocks - 1)]
            j = n_blocks - 1 - i  # the matching encoder stage
            self.up_blocks.append(
                VideoUpBlock(
                    opts,
                    input_channel,
                    prev_output_channel,
                    output_channel,
                    layers[j] + 1,
                    add_upsample=i < n_blocks - 1,
                    with_attention=block_type == "CrossAttnUpBlock2D",
                    heads=heads[j],
                    transformer_layers=transformer_layers[j],
                    cross_attention_dim=cross_dims[j],
                )
            )
        self.num_upsamplers = n_blocks - 1

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=norm_eps)
        self.conv_act = get_activation(act_fn)
        self.conv_out = nn.Conv2d(
            block_out_channels[0], out_channels, kernel_size=conv_out_kernel, padding=(conv_out_kernel - 1) // 2
        )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        first_frame_latents: torch.Tensor,
        frame_stride: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """sample [B, C, F-1, h, w] (noisy frames), timestep (scalar or [B]), encoder_hidden_states [B, L, D] (one
        text per video), first_frame_latents [B, C, 1, h, w], frame_stride (scalar or [B]) -> [B, C_out, F-1, h, w].
        """
        if sample.ndim != 5 or first_frame_latents.ndim != 5 or first_frame_latents.shape[2] != 1:
            raise ValueError("expected sample [B, C, F-1, h, w] and first_frame_latents [B, C, 1, h, w]")
        batch, channels, _, height, width = sample.shape
        video = torch.cat([first_frame_latents.to(sample.dtype), sample], dim=2)  # [B, C, F, h, w]
        num_frames = video.shape[2]
        x = video.transpose(1, 2).reshape(batch * num_frames, channels, height, width)  # [(B F), C, h, w]
        if self.config.center_input_sample:
            x = 2 * x - 1.0

        # time (and frame stride) embedding, one row per frame as in the official: [(B F), T]
        t_emb = self.time_proj(_per_row(timestep, batch, num_frames, x.device)).to(x.dtype)
        emb = self.time_embedding(t_emb)
        if self.config.use_frame_stride_condition:
            if frame_stride is None:
                raise ValueError("this UNet is conditioned on the frame stride: pass frame_stride")
            fs_emb = self.time_proj(_per_row(frame_stride, batch, num_frames, x.device)).to(x.dtype)
            emb = emb + self.frame_stride_embedding(fs_emb)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)

        ctx = _VideoContext(
            num_frames=num_frames,
            text_per_frame=encoder_hidden_states.repeat_interleave(num_frames, dim=0),  # [(B F), L, D]
            text_per_video=encoder_hidden_states,  # [B, L, D]
        )

        # latent sizes that are not multiples of 2**num_upsamplers: force each upsample to the skip's size
        forward_upsample_size = any(s % (2**self.num_upsamplers) != 0 for s in (height, width))

        x = self.conv_in(x)
        skips: tuple[torch.Tensor, ...] = (x,)
        for block in self.down_blocks:
            x, block_skips = block(x, emb, ctx)
            skips += block_skips

        x = self.mid_block(x, emb, ctx)

        for i, block in enumerate(self.up_blocks):
            n = len(block.resnets)
            block_skips, skips = skips[-n:], skips[:-n]
            is_final = i == len(self.up_blocks) - 1
            upsample_size = skips[-1].shape[2:] if forward_upsample_size and not is_final else None
            x = block(x, block_skips, emb, ctx, upsample_size)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))  # [(B F), C_out, h, w]
        out = x.reshape(batch, num_frames, -1, height, width).transpose(1, 2)  # [B, C_out, F, h, w]
        return out[:, :, 1:]  # drop the first-frame condition
