"""One-time conversion of AnyDoor's checkpoint into a folder the `anydoor` editor loads without pickles.

AnyDoor publishes `epoch=1-step=8687.ckpt`, a PyTorch-Lightning pickle whose `state_dict` holds the
whole ControlLDM: `model.diffusion_model.*` (UNet), `control_model.*` (ControlNet), `first_stage_model.*`
(VAE), `cond_stage_model.model.*` (DINOv2 ViT-g/14), `cond_stage_model.projector.*` and ldm's schedule
buffers. It is read with `torch.load(weights_only=True)` (memory-mapped) or from a .safetensors copy,
and written once as

    output/unet/ controlnet/ vae/     diffusers folders (safetensors)
    output/dino/                      transformers Dinov2Model folder (AnyDoor's interpolation at load)
    output/projector.safetensors      the Linear(1536, 1024) after DINOv2
    output/scheduler/                 the ldm schedule (beta_start, beta_end, num_train_timesteps)

Configs come from an ldm YAML (`--config`, e.g. AnyDoor's configs/anydoor.yaml) or AnyDoor's own
(SD 2.1-base + ViT-g/14); DINOv2's size is read from the tensors. Every tensor of the checkpoint must
land in the folder (the schedule buffers are checked against the config instead): a leftover or
missing key is an error, not a silent skip. The ControlNet's `conv_in` is zeroed, because AnyDoor's
ControlNet starts from the hint embedding alone where diffusers adds `conv_in(sample)` to it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import AnyV2VError, first_line

UNET_PREFIX = "model.diffusion_model."
CONTROL_PREFIX = "control_model."
VAE_PREFIX = "first_stage_model."
DINO_PREFIX = "cond_stage_model.model."
PROJECTOR_PREFIX = "cond_stage_model.projector."
# ldm's registered schedule buffers (LatentDiffusion.register_schedule): derived from the config, checked
SCHEDULE_BUFFERS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "scale_factor",
}  # fmt: skip

# AnyDoor's configs/anydoor.yaml (@ 44ca2b2a), the parts that shape the networks
ANYDOOR_CONFIG: dict[str, Any] = {
    "model": {
        "params": {
            "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
            "unet_config": {"params": {
                "in_channels": 4, "out_channels": 4, "model_channels": 320, "attention_resolutions": [4, 2, 1],
                "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_head_channels": 64,
                "use_linear_in_transformer": True, "transformer_depth": 1, "context_dim": 1024,
            }},
            "first_stage_config": {"params": {"ddconfig": {
                "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
            }}},
        }
    }
}  # fmt: skip
DINO_HEADS = {384: 6, 768: 12, 1024: 16, 1536: 24}  # DINOv2 ViT-S/B/L/g: 64 channels per head


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a .ckpt (weights only, memory-mapped where possible) or .safetensors file."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # an old (non-zip) pickle cannot be memory-mapped
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - the weights-only unpickler fails in many ways on a foreign file
        raise AnyV2VError(
            f"{path} is not a checkpoint that loads safely (weights only): {type(e).__name__} {first_line(e)}; "
            "pass AnyDoor's epoch=1-step=8687.ckpt, a copy holding only its state_dict (e.g. bdsqlsz/AnyDoor-Pruned), "
            "or the state_dict as .safetensors"
        ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict) or not any(str(k).startswith(UNET_PREFIX) for k in state):
        raise AnyV2VError(f"{path} has no AnyDoor state dict ({UNET_PREFIX}* keys); pass AnyDoor's checkpoint")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def unet_config(ldm: dict[str, Any]) -> dict[str, Any]:
    """diffusers UNet2DConditionModel config from ldm's UNetModel params (legacy False: heads = ch / 64)."""
    p = ldm["model"]["params"]["unet_config"]["params"]
    channels = [p["model_channels"] * m for m in p["channel_mult"]]
    down, up, resolution = [], [], 1
    for i in range(len(channels)):
        down.append("CrossAttnDownBlock2D" if resolution in p["attention_resolutions"] else "DownBlock2D")
        resolution *= 2 if i < len(channels) - 1 else 1
    for _ in channels:
        up.append("CrossAttnUpBlock2D" if resolution in p["attention_resolutions"] else "UpBlock2D")
        resolution //= 2
    if p.get("num_head_channels", -1) not in (-1, None):
        heads = [c // p["num_head_channels"] for c in channels]
    else:
        heads = p["num_heads"]
    return {
        "sample_size": 64, "in_channels": p["in_channels"], "out_channels": p.get("out_channels", p["in_channels"]),
        "down_block_types": down, "up_block_types": up, "block_out_channels": channels,
        "layers_per_block": p["num_res_blocks"], "cross_attention_dim": p["context_dim"],
        "attention_head_dim": heads, "use_linear_projection": bool(p.get("use_linear_in_transformer", False)),
        "transformer_layers_per_block": p.get("transformer_depth", 1),
    }  # fmt: skip


def controlnet_config(ldm: dict[str, Any], control: dict[str, torch.Tensor]) -> dict[str, Any]:
    """diffusers ControlNetModel config: the UNet's, plus the hint block's channels read from its convs."""
    unet = unet_config(ldm)
    convs = sorted(int(m.group(1)) for k in control if (m := re.fullmatch(r"input_hint_block\.(\d+)\.weight", k)))
    if len(convs) < 3:
        raise AnyV2VError("the checkpoint's control_model has no input_hint_block convolutions")
    hint_in = control[f"input_hint_block.{convs[0]}.weight"].shape[1]
    # conv, then (conv, stride-2 conv) per level, then the zero conv: the levels start at every other conv
    embedding = tuple(control[f"input_hint_block.{convs[i]}.weight"].shape[0] for i in range(0, len(convs) - 1, 2))
    keep = ("in_channels", "down_block_types", "block_out_channels", "layers_per_block", "cross_attention_dim",
            "attention_head_dim", "use_linear_projection", "transformer_layers_per_block")  # fmt: skip
    return {
        **{k: unet[k] for k in keep},
        "conditioning_channels": hint_in,
        "conditioning_embedding_out_channels": embedding,
    }


def vae_config(ldm: dict[str, Any]) -> dict[str, Any]:
    params = ldm["model"]["params"]
    d = params["first_stage_config"]["params"]["ddconfig"]
    channels = [d["ch"] * m for m in d["ch_mult"]]
    return {
        "sample_size": d.get("resolution", 256), "in_channels": d["in_channels"], "out_channels": d["out_ch"],
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels), "block_out_channels": channels,
        "latent_channels": d["z_channels"], "layers_per_block": d["num_res_blocks"],
        "scaling_factor": params.get("scale_factor", 0.18215),
    }  # fmt: skip


def dino_config(dino: dict[str, torch.Tensor], heads: int | None) -> dict[str, Any]:
    """Dinov2Config read from the vendored DINOv2's tensors (heads: given, else DINOv2's 64 per head)."""
    hidden = dino["cls_token"].shape[-1]
    patch = dino["patch_embed.proj.weight"].shape[-1]
    grid = round((dino["pos_embed"].shape[1] - 1) ** 0.5)
    layers = len({_block_index(k) for k in dino if k.startswith("blocks.")})
    swiglu = any(k.endswith("mlp.w12.weight") for k in dino)
    heads = heads or DINO_HEADS.get(hidden)
    if heads is None:
        raise AnyV2VError(f"DINOv2 width {hidden} is not ViT-S/B/L/g: give the number of attention heads")
    mlp_ratio = 4
    first_mlp = next(v for k, v in dino.items() if k.endswith(("mlp.w12.weight", "mlp.fc1.weight")))
    expected = (int(hidden * mlp_ratio * 2 / 3) + 7) // 8 * 8 * 2 if swiglu else int(hidden * mlp_ratio)
    if first_mlp.shape[0] != expected:
        raise AnyV2VError(f"DINOv2 MLP width {first_mlp.shape[0]} is not the mlp_ratio 4 of width {hidden}")
    return {
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads, "patch_size": patch,
        "image_size": grid * patch, "mlp_ratio": mlp_ratio, "use_swiglu_ffn": swiglu, "layerscale_value": 1.0,
        "layer_norm_eps": 1e-6, "hidden_act": "gelu",
    }  # fmt: skip


def _block_index(key: str) -> int:
    # blocks.N.* or, with FSDP block chunks, blocks.C.N.* (N the global index)
    m = re.match(r"blocks\.(\d+)\.(\d+)\.", key) or re.match(r"blocks\.(\d+)\.", key)
    return int(m.group(m.lastindex))


def convert_dino(dino: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Vendored DINOv2 keys -> transformers Dinov2Model keys (qkv split, SwiGLU w12 split)."""
    out: dict[str, torch.Tensor] = {}
    top = {
        "cls_token": "embeddings.cls_token", "mask_token": "embeddings.mask_token",
        "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight", "norm.bias": "layernorm.bias",
    }  # fmt: skip
    per_block = {
        "norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj", "ls1.gamma": "layer_scale1.lambda1",
        "ls2.gamma": "layer_scale2.lambda1", "mlp.w3": "mlp.down_proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    }  # fmt: skip
    for key, value in dino.items():
        if key in top:
            out[top[key]] = value
            continue
        if not key.startswith("blocks."):
            out[key] = value  # unknown: reported as unexpected when loaded strictly
            continue
        i = _block_index(key)
        name = re.sub(r"^blocks\.(\d+\.)?\d+\.", "", key)
        stem, _, kind = name.rpartition(".")
        prefix = f"encoder.layer.{i}."
        if stem == "attn.qkv":
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}attention.{part}.{kind}"] = chunk
        elif stem == "mlp.w12":  # SwiGLU: the first half gates (silu), the second is multiplied in
            gate, up = value.chunk(2, dim=0)
            out[f"{prefix}mlp.gate_proj.{kind}"], out[f"{prefix}mlp.up_proj.{kind}"] = gate, up
        elif name in per_block or stem in per_block:
            out[prefix + (per_block[name] if name in per_block else f"{per_block[stem]}.{kind}")] = value
        else:
            out[key] = value
    return out


def _strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or resized:
        raise AnyV2VError(
            f"the checkpoint's {what} does not fit its config: {len(missing)} missing {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}, {len(resized)} of another shape {resized[:3]}"
        )
    model.load_state_dict(state, strict=True, assign=True)


def _subdict(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _check_schedule(state: dict[str, torch.Tensor], ldm: dict[str, Any]) -> dict[str, Any]:
    from .editors.anydoor_ddim import ldm_alphas_cumprod

    params = ldm["model"]["params"]
    scheduler = {
        "beta_start": params.get("linear_start", 0.00085), "beta_end": params.get("linear_end", 0.012),
        "num_train_timesteps": params.get("timesteps", 1000),
    }  # fmt: skip
    if "alphas_cumprod" in state:
        ours = ldm_alphas_cumprod(**scheduler)
        theirs = state["alphas_cumprod"].float()
        if theirs.shape != ours.shape or not torch.allclose(theirs, ours, rtol=1e-6, atol=0):
            raise AnyV2VError(
                "the checkpoint's alphas_cumprod is not the schedule of its config "
                f"(linear {scheduler['beta_start']} ... {scheduler['beta_end']}); pass the config it was trained with"
            )
    return scheduler


def convert_state_dict(
    state: dict[str, torch.Tensor], ldm: dict[str, Any] | None = None, dino_heads: int | None = None
) -> dict[str, Any]:
    """AnyDoor's state dict -> {"unet", "controlnet", "vae", "dino", "projector", "scheduler"} (models in
    float32 with the checkpoint's values; strict: every key used, every parameter filled)."""
    from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_controlnet_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )
    from transformers import Dinov2Config, Dinov2Model

    ldm = ldm or ANYDOOR_CONFIG
    # the official config builds DINOv2 in code (ViT-g/14); a config may name the heads of another size
    dino_params = ldm["model"]["params"].get("cond_stage_config", {}).get("params") or {}
    dino_heads = dino_heads or dino_params.get("num_heads")
    prefixes = (UNET_PREFIX, CONTROL_PREFIX, VAE_PREFIX, DINO_PREFIX, PROJECTOR_PREFIX)
    stray = [k for k in state if not k.startswith(prefixes) and k not in SCHEDULE_BUFFERS]
    if stray:
        raise AnyV2VError(f"the checkpoint has {len(stray)} keys that are not AnyDoor's: {stray[:3]}")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    scheduler = _check_schedule(state, ldm)

    unet_cfg, vae_cfg = unet_config(ldm), vae_config(ldm)
    control = _subdict(state, CONTROL_PREFIX)
    control_cfg = controlnet_config(ldm, control)
    unet_sd = convert_ldm_unet_checkpoint(state, unet_cfg)
    control_sd = convert_controlnet_checkpoint(control, control_cfg)
    vae_sd = convert_ldm_vae_checkpoint(state, vae_cfg)
    dino_sd = convert_dino(_subdict(state, DINO_PREFIX))
    projector = _subdict(state, PROJECTOR_PREFIX)
    if set(projector) != {"weight", "bias"}:
        raise AnyV2VError(f"the checkpoint's projector has keys {sorted(projector)}, not weight and bias")

    # every tensor of the checkpoint must be the storage of some converted tensor (views keep it)
    used = {v.data_ptr() for sd in (unet_sd, control_sd, vae_sd, dino_sd, projector) for v in sd.values()}
    leftover = [k for k, v in state.items() if k not in SCHEDULE_BUFFERS and v.data_ptr() not in used]
    if leftover:
        raise AnyV2VError(f"{len(leftover)} checkpoint tensors have no place in the converted model: {leftover[:3]}")
    # AnyDoor's ControlNet replaces the first block by the hint embedding; diffusers adds conv_in(sample)
    control_sd["conv_in.weight"] = torch.zeros_like(control_sd["conv_in.weight"])
    control_sd["conv_in.bias"] = torch.zeros_like(control_sd["conv_in.bias"])

    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        controlnet = ControlNetModel(**control_cfg)
        vae = AutoencoderKL(**vae_cfg)
        dino = Dinov2Model(Dinov2Config(**dino_config(_subdict(state, DINO_PREFIX), dino_heads)))
    for model, sd, what in ((unet, unet_sd, "UNet"), (controlnet, control_sd, "ControlNet"), (vae, vae_sd, "VAE"),
                            (dino, dino_sd, "DINOv2")):  # fmt: skip
        _strict(model, {k: v.contiguous() for k, v in sd.items()}, what)
    return {
        "unet": unet.eval(), "controlnet": controlnet.eval(), "vae": vae.eval(), "dino": dino.eval(),
        "projector": {k: v.contiguous() for k, v in projector.items()}, "scheduler": scheduler,
    }  # fmt: skip


def read_config(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """An ldm YAML (OmegaConf files are plain YAML) or None for AnyDoor's own."""
    if path is None:
        return None
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text())
        config["model"]["params"]["unet_config"]["params"]  # noqa: B018 - the part every conversion needs
    except (OSError, yaml.YAMLError, KeyError, TypeError) as e:
        raise AnyV2VError(f"config {str(path)!r} is not an ldm model config ({first_line(e)})") from None
    return config


def _write(parts: dict[str, Any], folder: Path) -> None:
    from safetensors.torch import save_file

    for name in ("unet", "controlnet", "vae", "dino"):
        parts[name].save_pretrained(folder / name, safe_serialization=True)
    save_file(parts["projector"], str(folder / "projector.safetensors"))
    (folder / "scheduler").mkdir()
    config = {"_class_name": "AnyDoorLDMSchedule", **parts["scheduler"]}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config, indent=2) + "\n")


def convert_anydoor(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    config: str | os.PathLike | None = None,
    dino_heads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write AnyDoor's checkpoint as a safetensors folder at `output`; return its path.

    Refuses (AnyV2VError, one line, before reading the checkpoint) a missing checkpoint, an existing
    output without `overwrite`, or an output folder that cannot be written. The folder is built in a
    temporary sibling and renamed into place, so `output` is either complete or absent.
    """
    from .video_io import DIR_MODE, check_writable_path

    ckpt = Path(checkpoint).expanduser()
    output = Path(output).expanduser().absolute()
    if not ckpt.is_file():
        raise AnyV2VError(f"checkpoint {str(checkpoint)!r} does not exist; pass AnyDoor's epoch=1-step=8687.ckpt")
    if output.exists() and not overwrite:
        raise AnyV2VError(f"output {str(output)!r} already exists; choose another path or pass --overwrite")
    if output == ckpt.resolve() or output in ckpt.resolve().parents:
        raise AnyV2VError(f"output {str(output)!r} would replace the checkpoint; choose another path")
    check_writable_path(output)
    ldm = read_config(config)

    parts = convert_state_dict(load_checkpoint(ckpt), ldm, dino_heads)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        tmp.chmod(DIR_MODE)
        _write(parts, tmp)
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            os.replace(output, old)
            os.replace(tmp, output)
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
        else:
            os.replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output
