"""First-frame editors on tiny random models built here: InstructPix2Pix, any diffusers pipeline,
neural style transfer, provided frames; the registry and the commands that use them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, moving_clip
from PIL import Image

from anyv2v_batch import AnyV2VError
from anyv2v_batch.cli import main
from anyv2v_batch.editors import SampleContext, available_editors, editor_class, load_editor
from anyv2v_batch.editors.vgg19 import LAYER_NAMES, VGG19Features
from anyv2v_batch.video_io import encode_png, read_image, write_video

FRAME = moving_clip(1, 32, 32)[0]


@pytest.fixture(scope="session")
def tiny_pix2pix(tmp_path_factory):
    """An InstructPix2Pix pipeline folder: an 8-channel-input UNet, a tiny VAE and CLIP text encoder."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(TINY_MODEL / "tokenizer")
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                          layers_per_block=1),
        text_encoder=CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                                  num_hidden_layers=2, vocab_size=len(tokenizer), bos_token_id=0,
                                                  eos_token_id=1, pad_token_id=1)),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(sample_size=16, in_channels=8, out_channels=4, block_out_channels=(8, 16),
                                  layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                  norm_num_groups=4, attention_head_dim=4),
        scheduler=EulerAncestralDiscreteScheduler(beta_schedule="scaled_linear"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("pix2pix")
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def vgg_weights(tmp_path_factory):
    """A VGG-19 checkpoint in the standard layout, random weights (the method, not the values, is tested)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    state = VGG19Features().state_dict()
    state["classifier.0.weight"] = torch.zeros(1)  # the real checkpoint also holds the classifier
    torch.save(state, path)
    return path


def test_instruct_pix2pix(tiny_pix2pix):
    editor = load_editor("instruct-pix2pix", device="cpu", dtype="float32")
    opts = {"model": str(tiny_pix2pix), "instruction": "turn into a robot", "steps": 3}
    a = editor.edit(FRAME, opts, SampleContext("k", seed=1))
    assert a.shape == FRAME.shape and a.dtype == np.uint8
    assert np.array_equal(a, editor.edit(FRAME, opts, SampleContext("k", seed=1)))  # seeded
    assert not np.array_equal(a, editor.edit(FRAME, opts | {"instruction": "make it snow"}, SampleContext("k", seed=1)))
    assert len(editor.pipelines) == 1  # loaded once
    with pytest.raises(AnyV2VError, match="needs an instruction"):
        editor.edit(FRAME, {"model": str(tiny_pix2pix)}, SampleContext("k"))
    with pytest.raises(AnyV2VError, match="cannot load the weights of model 'nobody/none': HF_HUB_OFFLINE is set"):
        editor.edit(FRAME, {"model": "nobody/none", "instruction": "x"}, SampleContext("k"))


def test_any_diffusers_pipeline(tiny_pix2pix):
    editor = load_editor("diffusers", device="cpu", dtype="float32")
    out = editor.edit(
        FRAME, {"model": str(tiny_pix2pix), "instruction": "x", "num_inference_steps": 2}, SampleContext()
    )
    assert out.shape == FRAME.shape
    with pytest.raises(AnyV2VError, match="needs the option model"):
        editor.edit(FRAME, {}, SampleContext())
    with pytest.raises(AnyV2VError, match="does not take no_such_knob"):
        editor.edit(FRAME, {"model": str(tiny_pix2pix), "no_such_knob": 1}, SampleContext())


def test_style_transfer_lowers_its_loss_keeps_the_size_and_is_deterministic(vgg_weights, tmp_path):
    style = tmp_path / "style.png"
    Image.fromarray(moving_clip(1, 48, 40, seed=7)[0][..., ::-1].copy()).save(style)
    editor = load_editor("style-transfer", device="cpu", dtype="float32")
    opts = {"weights": str(vgg_weights), "style": str(style), "steps": 15}
    out = editor.edit(FRAME, opts, SampleContext("k"))
    losses = list(editor.last_losses)
    assert out.shape == FRAME.shape and out.dtype == np.uint8
    assert losses[-1] < 0.5 * losses[0]
    assert np.array_equal(out, editor.edit(FRAME, opts, SampleContext("k")))
    assert len(LAYER_NAMES) == 37 and LAYER_NAMES[22] == "relu4_2"


def test_style_transfer_errors(vgg_weights, tmp_path):
    editor = load_editor("style-transfer", device="cpu", dtype="float32")
    with pytest.raises(AnyV2VError, match="needs a style image"):
        editor.edit(FRAME, {"weights": str(vgg_weights)}, SampleContext("k"))
    with pytest.raises(AnyV2VError, match="does not exist"):
        editor.edit(FRAME, {"weights": str(tmp_path / "none.pth"), "style": "x"}, SampleContext("k"))
    with pytest.raises(AnyV2VError, match="HF_HUB_OFFLINE is set"):  # the test session is offline
        editor.network(None)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(AnyV2VError, match="cannot load VGG-19 weights"):
        editor.network(str(tmp_path / "bad.pth"))


def test_provided_frames_from_option_sample_or_metadata(tmp_path):
    editor = load_editor("provided", device="cpu")
    edited = np.full((32, 32, 3), 7, np.uint8)
    (tmp_path / "e.png").write_bytes(encode_png(edited))
    assert np.array_equal(editor.edit(FRAME, {"image": str(tmp_path / "e.png")}, SampleContext()), edited)
    assert np.array_equal(editor.edit(FRAME, {}, SampleContext("k", files={"edited.png": encode_png(edited)})), edited)
    meta = {"edited_first_frame": str(tmp_path / "e.png")}  # a metadata path: only under allowed_roots
    assert np.array_equal(editor.edit(FRAME, {"allowed_roots": [str(tmp_path)]}, SampleContext("k", meta=meta)), edited)
    with pytest.raises(AnyV2VError, match="not under the editor option allowed_roots"):
        editor.edit(FRAME, {}, SampleContext("k", meta=meta))
    with pytest.raises(AnyV2VError, match="has no edited first frame"):
        editor.edit(FRAME, {}, SampleContext("k"))


def test_registry_lists_the_built_ins():
    names = [i.name for i in available_editors()]
    assert names[:4] == ["provided", "instruct-pix2pix", "style-transfer", "diffusers"]
    assert editor_class("style-transfer").needs_gpu and not editor_class("provided").needs_gpu
    with pytest.raises(AnyV2VError, match="unknown editor 'brush'"):
        editor_class("brush")


def run_cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


@pytest.mark.slow
def test_edit_frame_and_edit_with_an_editor(tiny_pix2pix, vgg_weights, tmp_path, capsys):
    write_video(tmp_path / "src.mp4", moving_clip(12, 32, 32), 8)
    Image.fromarray(FRAME).save(tmp_path / "style.png")
    common = ["--width", 32, "--height", 32, "--device", "cpu", "-q"]
    code, _, err = run_cli(
        [
            "edit-frame",
            tmp_path / "src.mp4",
            "-o",
            tmp_path / "f.png",
            "--editor",
            "style-transfer",
            "--editor-option",
            f"weights={vgg_weights}",
            "--editor-option",
            f"style={tmp_path / 'style.png'}",
            "--editor-option",
            "steps=3",
            *common,
        ],
        capsys,
    )
    assert code == 0, err
    assert read_image(tmp_path / "f.png").shape == (32, 32, 3)
    code, _, err = run_cli(["edit", tmp_path / "src.mp4", "-o", tmp_path / "out", "--editor", "instruct-pix2pix",
                            "--edit-prompt", "make it snow", "--editor-option", f"model={tiny_pix2pix}",
                            "--editor-option", "steps=2", "--model", TINY_MODEL, "--frames", 6,
                            "--inversion-steps", 10, "--steps", 5, *common], capsys)  # fmt: skip
    assert code == 0, err
    assert len(list((tmp_path / "out").iterdir())) == 6
    code, _, err = run_cli(["edit", tmp_path / "src.mp4", "-o", tmp_path / "o2", "--editor", "provided", *common],
                           capsys)  # fmt: skip
    assert code == 1 and "--first-frame is required with --editor provided" in err
    code, out, _ = run_cli(["editors"], capsys)
    assert code == 0 and "style-transfer [built-in]" in out and "    weights:" in out
