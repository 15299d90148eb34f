"""The tiny Wan2.2 TI2V model the official code was recorded with (tests/fixtures/wan-ti2v-reference),
loaded into diffusers' classes through our key map, and its recorded cases."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from conftest import FIXTURES
from safetensors.torch import load_file

ROOT = FIXTURES / "wan-ti2v-reference"
CASES = sorted(p for p in ROOT.glob("case-*") if p.is_dir())


@cache
def official_config() -> dict:
    return json.loads((ROOT / "official-config.json").read_text())


def official_weights() -> tuple[dict, dict]:
    return load_file(str(ROOT / "official-transformer.safetensors")), load_file(str(ROOT / "official-vae.safetensors"))


def tiny_modules():
    """(transformer, vae) in diffusers' classes, weights through the official -> diffusers key map."""
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    from anyv2v_batch import convert_wan

    cfg = official_config()
    transformer_sd, vae_sd = official_weights()
    transformer = WanTransformer3DModel(**convert_wan.transformer_config(cfg["model"]))
    transformer.load_state_dict(convert_wan.transformer_state_dict(transformer_sd), strict=True)
    vae = AutoencoderKLWan(**convert_wan.vae_config(cfg["vae"], cfg["latents_mean"], cfg["latents_std"]))
    vae.load_state_dict(convert_wan.vae_state_dict(vae_sd), strict=True)
    return transformer, vae


@cache
def tiny_wan():
    """The tiny WanTI2V (float32, CPU, no text encoder: the cases carry their prompt embeddings)."""
    from anyv2v_batch.backbones.wan_ti2v import WanTI2V

    return WanTI2V(*tiny_modules())


def load_case(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((path / "case.json").read_text()), load_file(str(path / "tensors.safetensors"))


WORDS = "a an the red green blue yellow white black disc square stripe moves bounces left right up down slowly on"


def tiny_tokenizer():
    """A word-level fast tokenizer over the world's words, ending each prompt with </s> as umT5's does."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(WORDS.split())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def build_tiny_wan_folder(folder: Path) -> Path:
    """The tiny recorded model as a product would load it: the diffusers layout (transformer/, vae/,
    text_encoder/ a tiny umT5, tokenizer/ a word-level fast tokenizer), safetensors throughout."""
    from transformers import UMT5Config, UMT5EncoderModel

    transformer, vae = tiny_modules()
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    tokenizer = tiny_tokenizer()
    tokenizer.save_pretrained(folder / "tokenizer")
    torch.manual_seed(3)
    config = UMT5Config(
        vocab_size=len(tokenizer), d_model=official_config()["model"]["text_dim"], d_kv=8, d_ff=32, num_layers=1,
        num_heads=2, relative_attention_num_buckets=8, relative_attention_max_distance=16,
    )  # fmt: skip
    UMT5EncoderModel(config).save_pretrained(folder / "text_encoder")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "WanImageToVideoPipeline"}))
    return folder
