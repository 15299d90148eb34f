"""Our Wan2.2 TI2V path against the official code (Wan-Video/Wan2.2 @ 42bf4cf, `WanTI2V.i2v`) recorded on
a tiny random model (tools/reference/wan/): the official -> diffusers key map, the sigma grid and the
UniPC solver, and whole generations (image latent, every step's model input and both guidance branches,
the final latent, the decoded frames)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import rel_err
from wan_tiny import CASES, ROOT, load_case, official_weights, tiny_modules, tiny_wan

from anyv2v_batch import convert_wan
from anyv2v_batch.backbones.wan_ti2v import generate, pad_prompts
from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.flow import UniPC, sampling_grid

TOLERANCE = 1e-4
UINT8_LEVEL = 2 / 255  # one uint8 level in [-1, 1]


def test_every_official_key_maps_to_one_diffusers_key():
    transformer_sd, vae_sd = official_weights()
    transformer, vae = tiny_modules()  # strict loads: nothing missing, nothing unexpected
    for official, mapped, module in [
        (transformer_sd, convert_wan.transformer_state_dict(transformer_sd), transformer),
        (vae_sd, convert_wan.vae_state_dict(vae_sd), vae),
    ]:
        assert len(mapped) == len(official) == len(module.state_dict())
        for key, value in module.state_dict().items():
            assert torch.equal(value, mapped[key])
    # the affine cross-attention norm is official norm3, diffusers norm2
    assert torch.equal(transformer.blocks[1].norm2.weight, transformer_sd["blocks.1.norm3.weight"])
    with pytest.raises(AnyV2VError, match="has no diffusers name"):
        convert_wan.vae_state_dict({"encoder.extra.0.weight": torch.zeros(1)})


def test_the_sigma_grid_and_the_solver_are_the_official_ones_bit_for_bit():
    grids = json.loads((ROOT / "official-grid.json").read_text())
    for key in ["50-5.0", "40-3.0", "4-3.0"]:
        steps, shift = key.split("-")
        sigmas, timesteps = sampling_grid(int(steps), float(shift))
        assert torch.equal(sigmas, torch.tensor(grids[key]["sigmas"]))
        assert timesteps.tolist() == grids[key]["timesteps"]
    run = grids["solver"]
    solver = UniPC(sampling_grid(run["steps"], run["shift"])[0])
    x = torch.tensor(run["samples"][0])
    for v, expected in zip(run["velocities"], run["samples"][1:], strict=True):
        x = solver.step(torch.tensor(v), x)
        assert torch.equal(x, torch.tensor(expected))


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_generation_equals_the_official_code_at_every_step(path):
    case, ref = load_case(path)
    wan = tiny_wan()
    image_latent = wan.encode_image(ref["image"].numpy())
    assert rel_err(image_latent[0], ref["image_latent"]) <= TOLERANCE
    seen = []

    def on_step(i, t, x, cond, uncond):
        seen.append(i)
        assert t == int(ref[f"step{i}.timestep"][0, -1])
        assert rel_err(x[0], ref[f"step{i}.input"]) <= TOLERANCE
        assert rel_err(cond[0], ref[f"step{i}.cond"]) <= TOLERANCE
        assert rel_err(uncond[0], ref[f"step{i}.uncond"]) <= TOLERANCE

    final = generate(
        wan,
        ref["noise"][None],
        image_latent,
        pad_prompts([ref["prompt_embeds"]]),
        pad_prompts([ref["negative_embeds"]]),
        case["steps"],
        case["shift"],
        case["guidance"],
        on_step,
    )
    assert seen == list(range(case["steps"]))
    assert rel_err(final[0], ref["final_latent"]) <= TOLERANCE
    video = wan.decode_video(final)[0]
    assert video.shape == ref["video"].shape
    assert (video - ref["video"].float()).abs().max() <= UINT8_LEVEL
    # per-token timesteps: 0 on the first latent frame's tokens, t elsewhere (as recorded)
    ts = wan.token_timesteps(final, 500)
    recorded = ref["step1.timestep"]
    assert torch.equal(ts == 0, recorded == 0)
