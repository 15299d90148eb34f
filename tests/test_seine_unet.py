"""SEINEUNet against the official AnyV2V SEINE run (fixtures/seine-reference): the network, its injection
points, its configuration, its checkpoint loading. Float32 on the CPU."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch
from conftest import SHARED
from diffusers.models.attention_processor import AttnProcessor2_0
from safetensors.torch import load_file

from anyv2v_batch.backbones.seine_unet import (
    CONV_POSITIONS,
    CROSS_POSITIONS,
    INJECTION_POSITIONS,
    SD14_UNET_CONFIG_2D,
    SEINE_FULL_CONFIG,
    SPATIAL_POSITIONS,
    TEMPORAL_POSITIONS,
    SEINEUNet,
    load_seine_checkpoint,
)

torch.set_num_threads(1)

FIXTURE = SHARED / "seine-reference"
TINY = FIXTURE / "tiny-seine"
CASE = FIXTURE / "case-a"


def public_config(model) -> dict:
    return {k: v for k, v in model.config.items() if not k.startswith("_")}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def unet() -> SEINEUNet:
    model = SEINEUNet.from_config_2d(json.loads((TINY / "unet" / "config.json").read_text())).eval()
    model.load_state_dict(load_seine_checkpoint(TINY / "seine.pt"), strict=True)
    return model


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    return load_file(CASE / "reference.safetensors")


@pytest.fixture(scope="module")
def case() -> dict:
    return json.loads((CASE / "case.json").read_text())


# ---- the inversion (run_ddim_inversion.py's loop, TokenFlow style)


def alphas_cumprod() -> torch.Tensor:
    # SD-1.4's scheduler config with the betas AnyV2V overrides: linear 0.0001 .. 0.02 over 1000 steps
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32)
    return torch.cumprod(1.0 - betas, dim=0)


def inversion_timesteps(steps: int) -> list[int]:
    # DDIM "leading" spacing with steps_offset 1, ascending: 100 steps -> 1, 11, ..., 991
    return [i * (1000 // steps) + 1 for i in range(steps)]


def invert(unet, x, cond, text, steps, saved):
    """x [1, 4, F, h, w] -> {t: x at t} for t in saved. alpha_prev is the previous timestep's
    alpha-bar (alphas_cumprod[0], the scheduler's final_alpha_cumprod, first)."""
    ac, out = alphas_cumprod(), {}
    timesteps = inversion_timesteps(steps)
    for i, t in enumerate(timesteps):
        a, a_prev = ac[t], ac[timesteps[i - 1]] if i > 0 else ac[0]
        eps = unet(torch.cat([x, cond], dim=1), t, text)
        pred_x0 = (x - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
        x = a**0.5 * pred_x0 + (1 - a) ** 0.5 * eps
        if t in saved:
            out[t] = x
    return out


@torch.no_grad()
@pytest.mark.slow
def test_first_inversion_call(unet, ref):
    first = ref["inversion/unet_input_first"]  # [1, 9, 8, 8, 8]: latent, mask, masked source
    assert torch.equal(first[:, :4], ref["video_latents_0"])
    x = invert(unet, first[:, :4], first[:, 4:], ref["inversion/encoder_hidden_states"], 100, {1})[1]
    assert rel(x, ref["inverted/1"]) < 1e-5


@torch.no_grad()
@pytest.mark.slow
def test_inversion_chain(unet, ref, case):
    saved = case["inversion_saved_timesteps"]  # 1, 21, ..., 981: the 50-step grid inside the 100-step one
    assert saved == inversion_timesteps(case["n_save_steps"])
    first = ref["inversion/unet_input_first"]
    out = invert(unet, first[:, :4], first[:, 4:], ref["inversion/encoder_hidden_states"], 100, set(saved))
    errors = {t: rel(out[t], ref[f"inverted/{t}"]) for t in saved}
    assert max(errors.values()) < 1e-5, errors


# ---- the edit calls


def edit_calls(ref, case):
    for i, t in enumerate(case["edit_timesteps"]):
        yield t, ref[f"edit/source_input/{i:03d}_t{t}"], ref[f"edit/unet_input/{i:03d}_t{t}"]


@torch.no_grad()
def test_edit_batch_rows_equal_single_calls(unet, ref, case):
    text = ref["edit/encoder_hidden_states"]  # [3, 77, 32]: inversion prompt, prompt, negative
    for t, source, cond in edit_calls(ref, case):
        batch = unet(torch.cat([source, cond, cond]), torch.tensor(t), text)
        for row, x in enumerate((source, cond, cond)):
            assert rel(batch[row : row + 1], unet(x, t, text[row : row + 1])) < 1e-5


def official_edit(unet, ref, case, kinds, monkeypatch):
    """The official PnP edit loop (DDPM, cfg on [source, cond, uncond]) with the source branch's
    features copied into the other two at the given positions, replaying the recorded DDPM noise."""
    import diffusers.schedulers.scheduling_ddpm as ddpm_module
    from diffusers import DDPMScheduler

    noise = iter(ref[k] for k in sorted(k for k in ref if k.startswith("edit/ddpm_noise/")))
    monkeypatch.setattr(ddpm_module, "randn_tensor", lambda *a, **k: next(noise))
    scheduler = DDPMScheduler.from_pretrained(
        TINY, subfolder="scheduler", beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
    )
    scheduler.set_timesteps(timesteps=case["edit_timesteps"])  # 900 .. 0 (diffusers 0.15 had no offset)
    fires = {"conv": case["conv_injected"], "spatial": case["spatial_injected"], "temporal": case["temporal_injected"]}
    active: set[str] = set()

    def hook(kind):
        def copy_source(module, args, output):
            if kind in active:
                branches = output.unflatten(0, (3, -1))  # branch-major leading axis
                branches[1] = branches[0]
                branches[2] = branches[0]
            return output

        return copy_source

    modules = dict(unet.named_modules())
    handles = [modules[p].register_forward_hook(hook(k)) for k in kinds for p in INJECTION_POSITIONS[k]]
    text, x, inputs = ref["edit/encoder_hidden_states"], ref["edit/x_T"].clone(), []
    try:
        for t, source, cond in edit_calls(ref, case):
            inputs.append((x, cond[:, :4]))
            active.clear()
            active.update(k for k in kinds if t in fires[k])
            branch = torch.cat([x, cond[:, 4:]], dim=1)
            _, eps_cond, eps_uncond = unet(torch.cat([source, branch, branch]), torch.tensor(t), text).chunk(3)
            x = scheduler.step(eps_uncond + case["cfg_scale"] * (eps_cond - eps_uncond), t, x).prev_sample
    finally:
        for h in handles:
            h.remove()
    return x, inputs


@torch.no_grad()
def test_edit_with_injection_reproduces_the_official_edit(unet, ref, case, monkeypatch):
    x, inputs = official_edit(unet, ref, case, ("conv", "spatial", "temporal"), monkeypatch)
    assert max(rel(ours, theirs) for ours, theirs in inputs) < 1e-5  # the latent fed to every call
    assert rel(x, ref["edit/final_latents"]) < 1e-5


@pytest.mark.parametrize("dropped", ["conv", "spatial", "temporal"])
@torch.no_grad()
def test_each_injection_kind_matters(unet, ref, case, monkeypatch, dropped):
    kinds = tuple(k for k in ("conv", "spatial", "temporal") if k != dropped)
    x, _ = official_edit(unet, ref, case, kinds, monkeypatch)
    assert rel(x, ref["edit/final_latents"]) > 1e-3  # the fixture's README: 0.98% .. 1.55%


@torch.no_grad()
def test_injection_positions_are_branch_major(unet, ref):
    """Every position's output, batched over 3 branches, holds branch b in the b-th slice."""
    positions = CONV_POSITIONS + SPATIAL_POSITIONS + TEMPORAL_POSITIONS + CROSS_POSITIONS
    assert len(positions) == 1 + 16 * 3 and len(set(positions)) == len(positions)
    modules = dict(unet.named_modules())
    seen: dict[str, torch.Tensor] = {}
    handles = [modules[p].register_forward_hook(lambda m, a, o, p=p: seen.__setitem__(p, o.clone())) for p in positions]
    try:
        x = ref["inversion/unet_input_first"]
        inputs = [x, x.flip(2), x * 0.5]
        text = ref["edit/encoder_hidden_states"]
        unet(torch.cat(inputs), 500, text)
        batched = dict(seen)
        for b, xb in enumerate(inputs):
            unet(xb, 500, text[b : b + 1])
            for p in positions:
                assert rel(batched[p].unflatten(0, (3, -1))[b], seen[p]) < 1e-5
    finally:
        for h in handles:
            h.remove()
    # up_blocks.1 works at 1/4 of the latent's 8 x 8
    assert batched[CONV_POSITIONS[0]].shape == (3, 32, 8, 2, 2)  # [B, C, F, h, w]
    assert batched[SPATIAL_POSITIONS[0]].shape == (3 * 8, 4, 32)  # [B * F, h * w, C]
    assert batched[TEMPORAL_POSITIONS[0]].shape == (3 * 4, 8, 32)  # [B * h * w, F, C]
    assert batched[CROSS_POSITIONS[1]].shape == (3 * 8, 77, 32)  # to_k of the text: [B * F, 77, C]


@torch.no_grad()
def test_timestep_forms_agree(unet, ref):
    x = torch.cat([ref["inversion/unet_input_first"]] * 2)
    text = torch.cat([ref["inversion/encoder_hidden_states"]] * 2)
    out = unet(x, 41, text)
    assert torch.equal(unet(x, torch.tensor(41), text), out)
    assert torch.equal(unet(x, torch.tensor([41, 41]), text), out)
    assert out.shape == (2, 4, 8, 8, 8)


@torch.no_grad()
def test_bfloat16_runs_close_to_float32(unet, ref):
    low = copy.deepcopy(unet).to(torch.bfloat16)
    x, text = ref["inversion/unet_input_first"], ref["inversion/encoder_hidden_states"]
    out = low(x.bfloat16(), torch.tensor(500), text.bfloat16())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel(out.float(), unet(x, 500, text)) < 0.05


@torch.no_grad()
def test_sizes_that_are_not_multiples_of_eight(unet, ref):
    x = torch.randn(1, 9, 3, 6, 10, generator=torch.Generator().manual_seed(0))
    assert unet(x, 1, ref["inversion/encoder_hidden_states"]).shape == (1, 4, 3, 6, 10)


# ---- configuration, checkpoints, save / load


def test_full_model_matches_the_manifest():
    manifest = json.loads((FIXTURE / "MANIFEST-full.json").read_text())["unet_ema"]
    with torch.device("meta"):
        model = SEINEUNet.from_config(SEINE_FULL_CONFIG)
        inflated = SEINEUNet.from_config_2d(SD14_UNET_CONFIG_2D)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(shapes) == manifest["tensors"] == 830
    assert shapes == manifest["shapes"]
    assert sum(v.numel() for v in model.state_dict().values()) == manifest["parameters"]
    assert public_config(inflated) == public_config(model)
    assert inflated.config.in_channels == 9 and inflated.config.cross_attention_dim == 768


def test_from_config_2d_inflates_as_the_official_code():
    model = SEINEUNet.from_config_2d({**json.loads((TINY / "unet" / "config.json").read_text()), "foo": 1})
    assert model.config.in_channels == 9 and model.config.use_first_frame is False
    assert list(model.config.down_block_types) == ["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"]
    assert list(model.config.up_block_types) == ["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3
    sd = load_seine_checkpoint(TINY / "seine.pt")
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    with pytest.raises(NotImplementedError, match="use_linear_projection"):
        SEINEUNet.from_config_2d({**SD14_UNET_CONFIG_2D, "use_linear_projection": True})
    with pytest.raises(ValueError, match="temporal attention needs"):  # no generic processor drops the rotary
        model.mid_block.attentions[0].transformer_blocks[0].attn_temp.set_processor(AttnProcessor2_0())


@torch.no_grad()
def test_save_pretrained_round_trip(unet, ref, tmp_path):
    unet.save_pretrained(tmp_path / "unet")  # the converted layout: unet/config.json + safetensors
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = SEINEUNet.from_pretrained(tmp_path, subfolder="unet").eval()
    assert public_config(loaded) == public_config(unet)
    theirs = loaded.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in unet.state_dict().items())
    x, text = ref["inversion/unet_input_first"], ref["inversion/encoder_hidden_states"]
    expected = unet(x, 21, text)
    # diffusers keeps the weights in the safetensors file's memory map, at addresses that are not
    # 64-byte aligned, and the CPU GEMM kernels then round differently in the last bit
    assert rel(loaded(x, 21, text), expected) < 1e-6
    for p in loaded.parameters():
        p.data = p.data.clone()  # aligned copies of the same bits: the same output, bit for bit
    assert torch.equal(loaded(x, 21, text), expected)


class NotATensor:
    def __init__(self):
        self.payload = "arbitrary object"


def test_load_seine_checkpoint_accepts_ema_and_plain_args(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"ema": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-4)}, path)
    assert torch.equal(load_seine_checkpoint(path)["w"], torch.ones(2))


def test_load_seine_checkpoint_rejects_what_is_not_a_checkpoint(tmp_path):
    no_ema = tmp_path / "no_ema.pt"
    torch.save({"model": {"w": torch.ones(2)}}, no_ema)
    with pytest.raises(ValueError, match="'ema'"):
        load_seine_checkpoint(no_ema)
    custom = tmp_path / "custom.pt"
    torch.save({"ema": {"w": torch.ones(2)}, "extra": NotATensor()}, custom)
    with pytest.raises(ValueError, match="weights only"):
        load_seine_checkpoint(custom)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError):
        load_seine_checkpoint(garbage)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.ones(2), tensor)
    with pytest.raises(ValueError, match="'ema'"):
        load_seine_checkpoint(tensor)
