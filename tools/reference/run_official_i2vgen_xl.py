"""Record the official AnyV2V I2VGen-XL code's outputs, stage by stage, for one case.

Runs in the reference environment (see tools/reference/README.md), never in ours:

    ANYV2V_REF=/path/to/AnyV2V/i2vgen-xl python run_official_i2vgen_xl.py MODEL_DIR CASE.json OUT_DIR

CASE.json holds every setting (see cases/*.json). The script synthesises the source clip at the
case's size, writes it and the edited first frame as PNGs, then runs the official encode, DDIM
inversion and PnP edit the way `run_group_ddim_inversion.py` / `run_group_pnp_edit.py` do (the edited
frame is LANCZOS-resized to the clip size first, as the official script does), recording every stage
in OUT_DIR/reference.safetensors and the settings plus tensor shapes in OUT_DIR/case.json.
"""

import glob
import json
import os
import shutil
import sys
import tempfile
import types

import numpy as np
import torch
from PIL import Image

REF = os.environ["ANYV2V_REF"]
import diffusers  # noqa: E402,F401  (before the torchvision stand-in)
import transformers  # noqa: E402,F401

# torchvision is imported by the official helpers but not used on this path, and the PyPI build does
# not import beside this torch: stand in for the two names they import.
_tv = types.ModuleType("torchvision")
_tv.transforms = types.ModuleType("torchvision.transforms")
_tv.io = types.ModuleType("torchvision.io")
_tv.io.read_video = _tv.io.write_video = None
sys.modules.update({"torchvision": _tv, "torchvision.transforms": _tv.transforms, "torchvision.io": _tv.io})
sys.path.insert(0, REF)

from diffusers import DDIMInverseScheduler, DDIMScheduler  # noqa: E402
from pipelines.pipeline_i2vgen_xl import I2VGenXLPipeline  # noqa: E402
from pnp_utils import (  # noqa: E402
    register_conv_injection,
    register_spatial_attention_pnp,
    register_temp_attention_pnp,
)
from safetensors.torch import save_file  # noqa: E402


def synth_video(n: int, width: int, height: int, seed: int) -> list[Image.Image]:
    """A red square moving right across a gradient, a green disc drifting left, light noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([40 + 150 * xx / width, 60 + 120 * yy / height, 90 + 60 * (xx + yy) / (height + width)], -1)
    frames = []
    for i in range(n):
        f = base.copy()
        x0, y0 = 2 + 2 * i, 4 + i
        f[y0 : y0 + height // 3, x0 : x0 + width // 4] = [220, 40, 40]
        cy, cx = height - 10 - i, width - 8 - 2 * i
        f[(yy - cy) ** 2 + (xx - cx) ** 2 < 16] = [30, 200, 60]
        f += rng.normal(0, 3, f.shape)
        frames.append(Image.fromarray(np.clip(f, 0, 255).astype(np.uint8)))
    return frames


def main(model_dir: str, case_path: str, out_dir: str) -> None:
    case = json.load(open(case_path))
    os.makedirs(f"{out_dir}/source", exist_ok=True)
    torch.manual_seed(case["seed"])
    W, H, N = case["width"], case["height"], case["n_frames"]
    frames = synth_video(N, W, H, case["seed"])
    ew, eh = case.get("edited_size", [W, H])
    edited = np.array(frames[0].resize((ew, eh), Image.BICUBIC)).astype(np.float32)
    edited = Image.fromarray(np.clip(edited[..., [2, 0, 1]] * 0.9 + 20, 0, 255).astype(np.uint8))
    for i, f in enumerate(frames):
        f.save(f"{out_dir}/source/{i:05d}.png")
    edited.save(f"{out_dir}/edited_first_frame.png")
    # as run_group_pnp_edit.py: the edited frame is resized to the clip size with LANCZOS
    edited_in = edited.resize((W, H), resample=Image.Resampling.LANCZOS)

    pipe = I2VGenXLPipeline.from_pretrained(model_dir, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    inv_sched = DDIMInverseScheduler.from_pretrained(model_dir, subfolder="scheduler")
    ddim_sched = DDIMScheduler.from_pretrained(model_dir, subfolder="scheduler")
    rec: dict[str, torch.Tensor] = {}

    orig_forward = pipe.unet.forward
    calls = []

    def spy(sample, timestep, **kw):
        kept = {k: v.detach().clone() for k, v in kw.items() if torch.is_tensor(v)}
        calls.append((int(timestep), sample.detach().clone(), kept))
        return orig_forward(sample, timestep, **kw)

    pipe.unet.forward = spy

    g = torch.Generator().manual_seed(case["seed"])
    pipe.scheduler = inv_sched
    video_latents_0 = pipe.encode_vae_video(frames, device="cpu", height=H, width=W)
    rec["video_latents_0"] = video_latents_0
    inv_dir = tempfile.mkdtemp()
    pipe.invert(
        prompt=case["inversion_prompt"],
        image=frames[0],
        height=H,
        width=W,
        num_frames=N,
        num_inference_steps=case["inversion_steps"],
        guidance_scale=case.get("inversion_guidance_scale", 1.0),
        negative_prompt=case.get("inversion_negative_prompt", ""),
        target_fps=case["fps"],
        latents=video_latents_0,
        generator=g,
        return_dict=False,
        output_dir=inv_dir,
    )
    _, _, inv_kw = calls[0]
    for k in ("encoder_hidden_states", "image_embeddings", "image_latents", "fps"):
        rec[f"inversion/{k}"] = inv_kw[k]
    inv_ts = sorted(int(os.path.basename(p)[13:-3]) for p in glob.glob(f"{inv_dir}/ddim_latents_*.pt"))
    for t in inv_ts:
        rec[f"inverted/{t}"] = torch.load(f"{inv_dir}/ddim_latents_{t}.pt")
    n_inv_calls = len(calls)

    ddim_sched.set_timesteps(case["steps"])
    init_t = int(ddim_sched.timesteps[case["init_t_index"]])
    latents = torch.load(f"{inv_dir}/ddim_latents_{init_t}.pt")

    def window(frac: float):
        k = int(case["steps"] * frac)
        return ddim_sched.timesteps[:k] if k >= 0 else []

    # the windows over the full schedule, taken before sample_with_pnp slices the scheduler's timesteps
    windows = {k: [int(t) for t in window(case[k])] for k in ("pnp_conv", "pnp_spatial_attn", "pnp_temporal_attn")}
    register_conv_injection(pipe, window(case["pnp_conv"]))
    register_spatial_attention_pnp(pipe, window(case["pnp_spatial_attn"]))
    register_temp_attention_pnp(pipe, window(case["pnp_temporal_attn"]))
    pipe.register_modules(scheduler=ddim_sched)
    out = pipe.sample_with_pnp(
        prompt=case["prompt"],
        image=edited_in,
        height=H,
        width=W,
        num_frames=N,
        num_inference_steps=case["steps"],
        guidance_scale=case["guidance_scale"],
        negative_prompt=case["negative_prompt"],
        target_fps=case["fps"],
        latents=latents,
        generator=torch.manual_seed(case["seed"]),
        return_dict=True,
        ddim_init_latents_t_idx=case["init_t_index"],
        ddim_inv_latents_path=inv_dir,
        ddim_inv_prompt=case["inversion_prompt"],
        ddim_inv_1st_frame=frames[0],
        output_type="latent",
    )
    edit_calls = calls[n_inv_calls:]
    _, _, kw = edit_calls[0]
    for k in ("encoder_hidden_states", "image_embeddings", "image_latents", "fps"):
        rec[f"edit/{k}"] = kw[k]
    n_branches = 3 if case["guidance_scale"] > 1 else 2
    for i, (t, sample, _) in enumerate(edit_calls):
        per = sample.shape[0] // n_branches
        rec[f"edit/unet_input/{i:03d}_t{t}"] = sample[(n_branches - 1) * per :]  # the editing branch
    rec["edit/final_latents"] = out.frames
    rec["edit/decoded_video"] = pipe.decode_latents(out.frames, decode_chunk_size=1)
    rec = {k: v.contiguous().float() if v.is_floating_point() else v.contiguous() for k, v in rec.items()}
    save_file(rec, f"{out_dir}/reference.safetensors")
    meta = dict(
        case,
        inversion_timesteps=inv_ts,
        edit_timesteps=[c[0] for c in edit_calls],
        # the injection windows (timesteps at which each kind is armed; a start index > 0 skips some)
        conv_injected=windows["pnp_conv"],
        spatial_injected=windows["pnp_spatial_attn"],
        temporal_injected=windows["pnp_temporal_attn"],
        tensors={k: list(v.shape) for k, v in rec.items()},
    )
    json.dump(meta, open(f"{out_dir}/case.json", "w"), indent=1)
    shutil.rmtree(inv_dir)
    print("ok", case["name"], len(rec), "tensors; edit timesteps", meta["edit_timesteps"])


if __name__ == "__main__":
    main(*sys.argv[1:4])
