"""The model organism's training script (tools/organism/): a few steps of each stage write a folder that
loads as the real weights do, with the VAE's scaling set from its latents and the UNet's checkpoint whole."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_MODEL

from anyv2v_batch.organism import WORLD_CLIP

ROOT = Path(__file__).resolve().parents[1]


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "organism" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_a_smoke_run_writes_a_model_that_loads_like_real_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from anyv2v_batch.backbones.i2vgen_xl import I2VGenXL
    from anyv2v_batch.world import make_clip

    train = load_tool("train_i2vgen_xl")
    out = tmp_path / "organism"
    threads = torch.get_num_threads()
    argv = ["train", "--out", str(out), "--starter", str(TINY_MODEL), "--smoke", "--threads", str(threads)]
    monkeypatch.setattr(sys, "argv", argv)
    train.main()

    backbone = I2VGenXL.from_pretrained(str(out), device="cpu", dtype="float32")
    assert list(backbone.unet.config.block_out_channels) == train.UNET["block_out_channels"]
    trained = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(trained[k], v) for k, v in backbone.unet.state_dict().items())
    assert json.loads((out / "unet" / "trained_steps.json").read_text()) == {"steps": 3}
    # the scaling factor makes the world's latents unit-variance, as the schedule assumes
    clip = make_clip(123, frames=8)
    latents = backbone.encode_video(clip.frames)
    assert 0.6 < float(latents.std()) < 1.6
    rows = (out / "training.csv").read_text().splitlines()
    assert rows[0] == "step,stage,loss,seconds" and {r.split(",")[1] for r in rows[1:]} == {"vae", "unet"}


@pytest.mark.slow
def test_a_wan_smoke_run_writes_a_model_that_loads_like_real_weights(tmp_path, monkeypatch):
    """tools/organism/train_wan.py: the folder loads as `--backbone wan2.2-ti2v --model` loads real weights;
    the transformer is the last checkpoint, the VAE's tables normalise the world's latents, and the
    tokenizer knows every word of the world's captions."""
    from safetensors.torch import load_file

    from anyv2v_batch.backbones.wan_ti2v import WanTI2V
    from anyv2v_batch.world import make_clip

    train = load_tool("train_wan")
    out = tmp_path / "wan-organism"
    argv = ["train", "--out", str(out), "--smoke", "--threads", str(torch.get_num_threads())]
    monkeypatch.setattr(sys, "argv", argv)
    train.main()

    backbone = WanTI2V.from_pretrained(str(out), device="cpu", dtype="float32")
    assert backbone.transformer.config.num_layers == train.TRANSFORMER["num_layers"]
    trained = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(trained[k], v) for k, v in backbone.transformer.state_dict().items())
    clip = make_clip(123, frames=train.FRAMES, width=train.SIZE, height=train.SIZE)
    latents = backbone.encode_video(clip.frames)  # [1, Z, 3, 8, 8]
    assert latents.shape == (1, train.Z, 3, train.SIZE // 16, train.SIZE // 16)
    assert 0.5 < float(latents.std()) < 2.0 and abs(float(latents.mean())) < 0.5
    captions = [make_clip(seed).caption for seed in range(50)]
    ids = backbone.tokenizer(captions).input_ids
    assert backbone.tokenizer.unk_token_id not in {i for row in ids for i in row}
    rows = (out / "training.csv").read_text().splitlines()
    assert rows[0] == "step,stage,loss,seconds" and {r.split(",")[1] for r in rows[1:]} == {"vae", "transformer"}

    # --resume: the DiT goes on from its checkpoint (its step count beside it), from the cached pool
    monkeypatch.setattr(sys, "argv", [*argv, "--resume"])
    train.main()
    resumed = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert json.loads((out / "transformer" / "trained_steps.json").read_text()) == {"steps": 6}
    assert any(not torch.equal(resumed[k], trained[k]) for k in trained)
    steps = [int(r.split(",")[0]) for r in (out / "training.csv").read_text().splitlines() if ",transformer," in r]
    assert steps == sorted(set(steps)) and steps[-1] == 5
    assert (out / "commands.txt").read_text().count("--resume") == 1


# measured on 96 held-out frames: the trained CLIP 96/96, the random tiny CLIP 54/96 (a coin: 0.5 +- 0.05);
# here 48 frames, thresholds with a margin either side
WINS_TRAINED, WINS_RANDOM = 0.9, 0.75


def caption_wins(folder: Path, clips: int = 48) -> float:
    """Share of held-out world frames whose CLIP image embedding is closer to their own caption than to
    another clip's (one of a different colour), as the scorer embeds them."""
    from anyv2v_batch.scores import Scorer
    from anyv2v_batch.world import make_clip

    scorer = Scorer(str(folder), device="cpu")
    wins = 0
    for i in range(clips):
        clip = make_clip(2 * 10**9 + i)
        other = next(
            c for c in (make_clip(3 * 10**9 + i * 50 + j) for j in range(50))
            if {s.colour for s in c.shapes}.isdisjoint(s.colour for s in clip.shapes)
        )  # fmt: skip
        image = scorer.embed_images([clip.frames[4]])[0]
        wins += float(image @ scorer.embed_text(clip.caption)) > float(image @ scorer.embed_text(other.caption))
    return wins / clips


def test_the_world_clip_tells_a_frames_caption_from_another(tiny_clip):
    """The CLIP trained on the world (tools/organism/train_clip.py) prefers a frame's own caption; the
    random tiny CLIP does not (so a CLIP score on the world means something only with the trained one)."""
    assert caption_wins(WORLD_CLIP) >= WINS_TRAINED
    assert caption_wins(tiny_clip) <= WINS_RANDOM


def test_the_organism_unet_has_every_place_anyv2v_injects():
    """The organism is the real architecture at a tiny size: every module AnyV2V hooks exists in it (a
    UNet of one layer per block has no up-block layer 2, where the official positions are)."""
    from diffusers import I2VGenXLUNet

    from anyv2v_batch.backbones.i2vgen_xl import I2VGenXL

    train = load_tool("train_i2vgen_xl")
    with torch.device("meta"):
        names = {name for name, _ in I2VGenXLUNet(**train.UNET).named_modules()}
    wanted = {path for paths in I2VGenXL.injection_positions.values() for path in paths}
    assert wanted and wanted <= names, sorted(wanted - names)[:3]
