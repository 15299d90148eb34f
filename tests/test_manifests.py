"""Prove it without the weights: the VAE and text encoder we load (diffusers `AutoencoderKL`, transformers
`CLIPTextModel`), built at full size on the meta device, have exactly the state-dict keys and shapes that
the official code's full-size models have (fixtures/*-reference/MANIFEST-full.json), up to the naming
differences the loaders translate, written out below. (The UNets are checked in test_consisti2v_unet.py
and test_seine_unet.py.)

Known naming differences, each an explicit mapping from the manifest's name to ours:
- VAE attention: diffusers < 0.14 (the SEINE manifest) named the mid-block attention's projections
  query / key / value / proj_attn; diffusers now calls them to_q / to_k / to_v / to_out.0 and renames the
  old names when it loads a checkpoint (ModelMixin's `_convert_deprecated_attention_blocks`).
- text encoder: transformers 5's `CLIPTextModel` has no `text_model` submodule; it drops the `text_model.`
  prefix on load (conversion_mapping.py: `PrefixChange(prefix_to_remove="text_model")`) and adds it back on
  save.
- text encoder: `text_model.embeddings.position_ids` ([1, 77], arange) was a persistent buffer in the
  transformers the manifests come from (< 4.31); it is a non-persistent buffer now, so not in the state dict.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import SHARED
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel

torch.set_num_threads(1)

CONSISTI2V_MANIFEST = SHARED / "consisti2v-reference" / "MANIFEST-full.json"
SEINE_MANIFEST = SHARED / "seine-reference" / "MANIFEST-full.json"
TINY_SEINE = SHARED / "seine-reference" / "tiny-seine"

# The SEINE manifest records no VAE / text-encoder configs (its note: "SD-1.4's published configs"), so
# here are those: CompVis/stable-diffusion-v1-4 vae/config.json and text_encoder/config.json (the keys that
# decide the state dict, and the rest that the published files set).
SD14_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
SD14_TEXT_ENCODER_CONFIG = {  # CLIP ViT-L/14's text tower
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

# diffusers' renames of the old VAE attention parameters (see the module docstring)
VAE_ATTENTION_RENAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_OLD_VAE_ATTENTION = re.compile(r"^((?:en|de)coder\.mid_block\.attentions\.\d+)\.(query|key|value|proj_attn)\.")
# transformers 5: the `text_model.` prefix is gone, and position_ids is no longer persisted
TEXT_PREFIX = "text_model."
TEXT_DROPPED = {"text_model.embeddings.position_ids": [1, 77]}


def vae_name(name: str) -> str:
    return _OLD_VAE_ATTENTION.sub(lambda m: f"{m[1]}.{VAE_ATTENTION_RENAMES[m[2]]}.", name)


def text_name(name: str) -> str:
    assert name.startswith(TEXT_PREFIX), name
    return name[len(TEXT_PREFIX) :]


def load_manifest(path: Path) -> dict[str, dict]:
    """{"vae" | "text_encoder": {"shapes", "tensors", "parameters", "config"}}, whichever layout the file has
    (ConsistI2V: keys / n_tensors / n_params and *_config entries; SEINE: shapes / tensors / parameters)."""
    raw = json.loads(path.read_text())
    default = {"vae": SD14_VAE_CONFIG, "text_encoder": SD14_TEXT_ENCODER_CONFIG}
    out = {}
    for part in ("vae", "text_encoder"):
        entry = raw[part]
        out[part] = {
            "shapes": entry.get("shapes", entry.get("keys")),
            "tensors": entry.get("tensors", entry.get("n_tensors")),
            "parameters": entry.get("parameters", entry.get("n_params")),
            "config": raw.get(f"{part}_config", default[part]),
        }
    return out


def shapes_of(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def rename(shapes: dict[str, list[int]], mapping, dropped=()) -> dict[str, list[int]]:
    renamed = {mapping(k): v for k, v in shapes.items() if k not in dropped}
    assert len(renamed) == len(shapes) - len(dropped)  # the mapping is one to one
    return renamed


MANIFESTS = {"consisti2v": CONSISTI2V_MANIFEST, "seine": SEINE_MANIFEST}


@pytest.fixture(scope="module", params=sorted(MANIFESTS))
def manifest(request) -> tuple[str, dict]:
    return request.param, load_manifest(MANIFESTS[request.param])


def test_manifests_hold_what_these_tests_read(manifest):
    name, m = manifest
    for part, tensors in (("vae", 248), ("text_encoder", {"consisti2v": 373, "seine": 197}[name])):
        assert len(m[part]["shapes"]) == m[part]["tensors"] == tensors
        assert sum(torch.Size(s).numel() for s in m[part]["shapes"].values()) == m[part]["parameters"]
    # SD-2.1's text tower (ConsistI2V: 1024 wide, 23 layers) or SD-1.4's (SEINE: 768 wide, 12 layers)
    width = m["text_encoder"]["shapes"]["text_model.final_layer_norm.weight"]
    assert width == [m["text_encoder"]["config"]["hidden_size"]] == [{"consisti2v": 1024, "seine": 768}[name]]


def test_vae_matches_the_manifest(manifest):
    name, m = manifest
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(m["vae"]["config"])
    ours = shapes_of(vae)
    theirs = rename(m["vae"]["shapes"], vae_name)
    renamed = {k for k in m["vae"]["shapes"] if vae_name(k) != k}
    # SEINE's (old diffusers) names the 2 x 4 attention projections, weight and bias, the old way
    assert len(renamed) == {"consisti2v": 0, "seine": 16}[name]
    assert set(ours) == set(theirs)
    assert ours == theirs
    assert sum(v.numel() for v in vae.state_dict().values()) == m["vae"]["parameters"]


def test_text_encoder_matches_the_manifest(manifest):
    _, m = manifest
    with torch.device("meta"):
        text_encoder = CLIPTextModel(CLIPTextConfig(**m["text_encoder"]["config"]))
    ours = shapes_of(text_encoder)
    theirs = rename(m["text_encoder"]["shapes"], text_name, dropped=TEXT_DROPPED)
    assert {k: m["text_encoder"]["shapes"][k] for k in TEXT_DROPPED} == TEXT_DROPPED
    assert set(ours) == set(theirs)
    assert ours == theirs
    # position_ids is still there, as a buffer that the state dict leaves out
    buffers = dict(text_encoder.named_buffers())
    assert list(buffers["embeddings.position_ids"].shape) == TEXT_DROPPED["text_model.embeddings.position_ids"]
    dropped_numel = sum(torch.Size(s).numel() for s in TEXT_DROPPED.values())
    assert sum(v.numel() for v in text_encoder.state_dict().values()) + dropped_numel == m["text_encoder"]["parameters"]


# ---- the mappings above are the ones the loaders apply: the tiny SEINE fixture's .bin files carry the old
# names (query/key/value/proj_attn; text_model.*, position_ids); loaded, each tensor sits under the mapped name


def test_vae_loader_applies_the_attention_renames():
    old = torch.load(TINY_SEINE / "vae" / "diffusion_pytorch_model.bin", map_location="cpu", weights_only=True)
    assert any(vae_name(k) != k for k in old)  # the fixture has the old names
    loaded = AutoencoderKL.from_pretrained(TINY_SEINE, subfolder="vae").state_dict()
    assert set(loaded) == {vae_name(k) for k in old}
    assert all(torch.equal(loaded[vae_name(k)], v) for k, v in old.items())


def test_text_encoder_loader_applies_the_prefix_and_position_ids_changes():
    old = torch.load(TINY_SEINE / "text_encoder" / "pytorch_model.bin", map_location="cpu", weights_only=True)
    assert set(TEXT_DROPPED) <= set(old)
    loaded = CLIPTextModel.from_pretrained(TINY_SEINE, subfolder="text_encoder").state_dict()
    assert set(loaded) == {text_name(k) for k in old if k not in TEXT_DROPPED}
    assert all(torch.equal(loaded[text_name(k)], v) for k, v in old.items() if k not in TEXT_DROPPED)
    assert torch.equal(old["text_model.embeddings.position_ids"], torch.arange(77)[None])  # what the buffer holds


# Wan-AI/Wan2.2-TI2V-5B-Diffusers, as diffusers' scripts/convert_wan_to_diffusers.py writes it (transformer:
# the "Wan2.2-TI2V-5B" entry; VAE: convert_vae_22); the 48-entry latent tables do not shape the state dict
WAN_MANIFEST = Path(__file__).parent / "fixtures" / "wan-ti2v-reference" / "MANIFEST-full.json"
WAN_TRANSFORMER_CONFIG = {
    "patch_size": (1, 2, 2), "num_attention_heads": 24, "attention_head_dim": 128, "in_channels": 48,
    "out_channels": 48, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 14336, "num_layers": 30,
    "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
    "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
}  # fmt: skip
WAN_VAE_CONFIG = {
    "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
    "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0, "is_residual": True,
    "in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_temporal": 4, "scale_factor_spatial": 16,
}  # fmt: skip


def test_wan_transformer_and_vae_match_the_official_full_size_models():
    """The official TI2V-5B transformer (5.0 B parameters) and Wan2.2 VAE, key for key through our key map."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from anyv2v_batch import convert_wan

    manifest = json.loads(WAN_MANIFEST.read_text())
    with torch.device("meta"):
        ours = {
            "transformer": WanTransformer3DModel(**WAN_TRANSFORMER_CONFIG).state_dict(),
            "vae": AutoencoderKLWan(**WAN_VAE_CONFIG).state_dict(),
        }
    rename = {"transformer": convert_wan.transformer_state_dict, "vae": convert_wan.vae_state_dict}
    for part in ("transformer", "vae"):
        official = {k: torch.empty(0) for k in manifest[part]}
        mapped = {new: old for old, new in zip(official, rename[part](official), strict=True)}
        assert set(mapped) == set(ours[part]), part
        for new, old in mapped.items():
            assert list(ours[part][new].shape) == manifest[part][old], (part, new, old)
    params = sum(torch.Size(s).numel() for s in manifest["transformer"].values())
    assert 4.99e9 < params < 5.01e9
