"""The ConsistI2V UNet port against the official network: the recorded DDIM inversion of the ConsistI2V
reference fixture (a chain of 100 UNet calls), batch independence, the injection positions, the full-size
state-dict layout (MANIFEST-full.json) and latent sizes that are not multiples of 8."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import SHARED, rel_err
from diffusers import DDIMInverseScheduler
from safetensors.torch import load_file

from anyv2v_batch.backbones.consisti2v_unet import (
    CONSISTI2V_FULL_CONFIG,
    CONV_POSITIONS,
    NUM_NEIGHBOURS,
    SPATIAL_POSITIONS,
    TEMPORAL_POSITIONS,
    ConsistI2VUNet,
)

torch.set_num_threads(1)

REF_DIR = SHARED / "consisti2v-reference"
TINY = REF_DIR / "tiny-consisti2v"
REF_T = 901  # the edit's first timestep in case-a


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(REF_DIR / "case-a" / "reference.safetensors")


@pytest.fixture(scope="module")
def unet() -> ConsistI2VUNet:
    return ConsistI2VUNet.from_pretrained(TINY, subfolder="unet")


def _edit_inputs(ref):
    """The first UNet call of the official edit: batch [source, negative, editing]."""
    edited = ref[f"edit/unet_input/000_t{REF_T}"]
    latents = torch.cat([ref[f"inverted/{REF_T}"][:, :, 1:], edited, edited])  # [3, 4, 7, 16, 16]
    return latents, ref["edit/encoder_hidden_states"], ref["edit/first_frame_latents"], ref["edit/frame_stride"]


def test_loads_the_official_checkpoint_without_missing_or_unexpected_keys():
    model, info = ConsistI2VUNet.from_pretrained(TINY, subfolder="unet", output_loading_info=True)
    assert json.loads((TINY / "unet" / "config.json").read_text())["_class_name"] == "VideoLDMUNet3DConditionModel"
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    official = load_file(TINY / "unet" / "diffusion_pytorch_model.safetensors")
    mine = model.state_dict()
    assert mine.keys() == official.keys()
    assert all(torch.equal(mine[k], official[k]) for k in official)
    assert model.config.n_frames == 8 and not model.training


@pytest.mark.slow
def test_ddim_inversion_matches_the_official_stage_by_stage(unet, ref):
    """diffusers' DDIMInverseScheduler steps like AnyV2V's vendored one (leading spacing, set_alpha_to_one), so the
    official inversion (100 steps, cfg 1) is one UNet call per stored stage."""
    sched = DDIMInverseScheduler.from_pretrained(TINY, subfolder="scheduler")
    sched.set_timesteps(100)
    assert sched.timesteps.tolist() == list(range(1, 1000, 10))
    x = ref["video_latents_0"][:, :, 1:]
    first = ref["inversion/first_frame_latents"]
    assert torch.equal(first, ref["inverted/1"][:, :, :1])  # stored frame 0 is the condition itself
    text, stride = ref["inversion/encoder_hidden_states"], ref["inversion/frame_stride"]
    errors = {}
    with torch.no_grad():
        for t in sched.timesteps:
            eps = unet(x, t, text, first, stride.reshape(1))
            x = sched.step(eps, t, x).prev_sample
            errors[int(t)] = rel_err(x, ref[f"inverted/{int(t)}"][:, :, 1:])
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 1e-4, f"worst stage t={worst}: {errors[worst]:.3g}"
    assert errors[1] <= 1e-5


def test_batched_call_equals_single_calls(unet, ref):
    latents, text, first, stride = _edit_inputs(ref)
    with torch.no_grad():
        batched = unet(latents, REF_T, text, first, stride)
        assert batched.shape == (3, 4, 7, 16, 16)
        for i in range(3):
            single = unet(latents[i : i + 1], REF_T, text[i : i + 1], first[i : i + 1], stride)
            assert rel_err(batched[i : i + 1], single) <= 1e-5, i


def test_timestep_and_stride_accept_scalars_and_per_video_tensors(unet, ref):
    latents, text, first, _ = _edit_inputs(ref)
    with torch.no_grad():
        base = unet(latents, REF_T, text, first, 3)
        for t, s in ((torch.tensor(REF_T), torch.tensor(3)), (torch.full((3,), REF_T), torch.full((3,), 3))):
            assert torch.equal(unet(latents, t, text, first, s), base)
        per_video = unet(latents, torch.tensor([REF_T, 1, REF_T]), text, first, torch.tensor([3, 3, 5]))
    assert torch.equal(per_video[0], base[0])
    assert not torch.allclose(per_video[1], base[1]) and not torch.allclose(per_video[2], base[2])


def _capture(unet, paths, run):
    outputs, handles = {}, []
    for path in paths:
        handles.append(
            unet.get_submodule(path).register_forward_hook(lambda m, i, o, p=path: outputs.__setitem__(p, o))
        )
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return outputs


def test_injection_positions_expose_batch_major_q_k_and_conv_features(unet, ref):
    latents, text, first, stride = _edit_inputs(ref)
    latents, text, first = latents[[0, 0, 2]], text[[0, 0, 2]], first[[0, 0, 2]]  # branches 0 and 1 identical
    frames = latents.shape[2] + 1
    assert CONV_POSITIONS == ("up_blocks.1.resnets.1.conv2",)
    assert len(SPATIAL_POSITIONS) == len(TEMPORAL_POSITIONS) == 16
    paths = CONV_POSITIONS + SPATIAL_POSITIONS + TEMPORAL_POSITIONS
    with torch.no_grad():
        out = _capture(unet, paths, lambda: unet(latents, REF_T, text, first, stride))
    for path in paths:
        third = out[path].shape[0] // 3
        a, b, c = out[path].split(third)
        assert torch.equal(a, b) and not torch.allclose(a, c), path  # branch b = b-th third of the leading axis
    conv = out[CONV_POSITIONS[0]]
    assert conv.shape[0] == 3 * frames and conv.ndim == 4  # [(B F), C, h, w], F incl. the first frame
    for q_path, k_path in zip(SPATIAL_POSITIONS[::2], SPATIAL_POSITIONS[1::2], strict=True):
        q, k = out[q_path], out[k_path]
        assert q.shape[0] == 3 * frames and k.shape[1] == 2 * q.shape[1]  # frame tokens + frame-0 tokens
    for q_path, k_path in zip(TEMPORAL_POSITIONS[::2], TEMPORAL_POSITIONS[1::2], strict=True):
        q, k = out[q_path], out[k_path]  # [(B h w), F, inner], [(B h w), F + 8, inner]
        assert q.shape[1] == frames and k.shape[1] == frames + NUM_NEIGHBOURS and q.shape[0] == k.shape[0]


@pytest.mark.parametrize("kind", ["conv", "spatial", "temporal"])
def test_overwriting_hooked_outputs_changes_only_the_other_branches(unet, ref, kind):
    """Forward hooks that copy the source third over the others (what PnP injection does) take effect downstream."""
    paths = {"conv": CONV_POSITIONS, "spatial": SPATIAL_POSITIONS, "temporal": TEMPORAL_POSITIONS}[kind]
    latents, text, first, stride = _edit_inputs(ref)

    def inject(module, inputs, output):
        third = output.shape[0] // 3
        output = output.clone()
        output[third : 2 * third] = output[:third]
        output[2 * third :] = output[:third]
        return output

    with torch.no_grad():
        plain = unet(latents, REF_T, text, first, stride)
        handles = [unet.get_submodule(p).register_forward_hook(inject) for p in paths]
        try:
            injected = unet(latents, REF_T, text, first, stride)
        finally:
            for h in handles:
                h.remove()
    assert torch.equal(injected[0], plain[0])
    assert rel_err(injected[2], plain[2]) > 1e-4


def test_full_size_model_matches_the_manifest_state_dict_layout():
    manifest = json.loads((REF_DIR / "MANIFEST-full.json").read_text())
    assert manifest["unet_config"] == CONSISTI2V_FULL_CONFIG
    with torch.device("meta"):
        model = ConsistI2VUNet.from_config(CONSISTI2V_FULL_CONFIG)
    layout = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert layout == manifest["unet"]["keys"]
    assert list(layout) == list(manifest["unet"]["keys"])  # same order too
    assert sum(v.numel() for v in model.state_dict().values()) == manifest["unet"]["n_params"]
    assert model.config.n_frames == 16


def _tiny_config(**overrides) -> dict:
    config = json.loads((TINY / "unet" / "config.json").read_text())
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return config | overrides


@pytest.mark.parametrize(
    ("size", "options"),
    [((10, 14), {}), ((12, 20), {"use_linear_projection": False, "augment_temporal_attention": False})],
)
def test_latent_sizes_that_are_not_multiples_of_8(size, options):
    torch.manual_seed(0)
    model = ConsistI2VUNet.from_config(_tiny_config(**options)).eval()
    h, w = size
    sample, first = torch.randn(2, 4, 5, h, w), torch.randn(2, 4, 1, h, w)
    text = torch.randn(2, 77, 32)
    with torch.no_grad():
        out = model(sample, 500, text, first, 3)
        assert out.shape == (2, 4, 5, h, w) and torch.isfinite(out).all()
        single = model(sample[1:], 500, text[1:], first[1:], 3)
    assert rel_err(out[1:], single) <= 1e-5


def test_alpha_is_clamped_to_the_unit_interval_without_touching_the_parameter(unet, ref):
    latents, text, first, stride = _edit_inputs(ref)
    tempo = unet.up_blocks[1].tempo_attns[0]
    with torch.no_grad():
        stored = tempo.alpha.clone()
        tempo.alpha.fill_(1.0)
        at_one = unet(latents[:1], REF_T, text[:1], first[:1], stride)
        tempo.alpha.fill_(1.7)
        above = unet(latents[:1], REF_T, text[:1], first[:1], stride)
        assert tempo.alpha.item() == pytest.approx(1.7)
        tempo.alpha.copy_(stored)
    assert torch.equal(above, at_one)


def test_reduced_precision_runs_in_that_dtype(ref):
    model = ConsistI2VUNet.from_pretrained(TINY, subfolder="unet", torch_dtype=torch.bfloat16)
    latents, text, first, stride = _edit_inputs(ref)
    with torch.no_grad():
        out = model(latents[:1].bfloat16(), REF_T, text[:1].bfloat16(), first[:1].bfloat16(), stride)
        reference = ConsistI2VUNet.from_pretrained(TINY, subfolder="unet")(latents[:1], REF_T, text[:1], first[:1], 3)
    rotary = model.up_blocks[1].tempo_attns[0].transformer_blocks[0].attn1.rotary_emb
    assert out.dtype == rotary.freqs.dtype == torch.bfloat16
    assert rel_err(out.float(), reference) < 0.1
