"""The official AnyV2V I2VGen-XL code, timed at its own defaults, for a side-by-side with ours.

Runs in the official code's environment, never in ours (its diffusers 0.26.3 beside the torch of the
machine; `benchmarks/prepare_official.sh` gathers the wheels and the code, `benchmarks/gpu.sh official`
runs this and ours on the same card):

    ANYV2V_OFFICIAL=.official/i2vgen-xl PYTHONPATH=/tmp/official-site \\
        python benchmarks/bench_official_i2vgen_xl.py --device cuda --json benchmarks/out/official.json

What it times is what `run_group_ddim_inversion.py` then `run_group_pnp_edit.py` do for one clip
(TIGER-AI-Lab/AnyV2V @ bc540be), float16 as they load it, at their defaults: 16 frames at 512x512, the
VAE encode and a 500-step DDIM inversion with guidance 1 and an empty prompt (each inverted latent saved
to disk as the official code does), then the PnP edit: conv / spatial / temporal injection over the first
0.2 / 0.2 / 0.5 of 50 DDIM steps from the inverted latent at the first step, guidance 9, and the VAE
decode. The models are the full-size I2VGen-XL architecture with random weights (the UNet's class
defaults are the released configuration; OpenCLIP ViT-H text and vision towers; the SD VAE), built
without any download; the tokenizer and scheduler configs come from the shared tiny fixture.

--smoke: the same calls on a CPU on the tiny fixture model (32x32, 8 frames, 10 inversion and 5 sampling
steps, float32): checks the path end to end, measures nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the shared fixtures' place and the full-size builders (imports only torch and numpy at module level, so it
# loads in the official code's environment too; the builders use whichever diffusers is imported)
import bench_engine as bench  # noqa: E402


def official_modules():
    """The official pipeline and injection helpers, from the folder $ANYV2V_OFFICIAL names."""
    import diffusers  # noqa: F401  (before the torchvision stand-in)
    import transformers  # noqa: F401

    # the official helpers import torchvision but this path uses none of it (and the machine's torchvision
    # may not import beside the pinned libraries): stand in for the names they import
    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.io = types.ModuleType("torchvision.io")
    tv.io.read_video = tv.io.write_video = None
    sys.modules.update({"torchvision": tv, "torchvision.transforms": tv.transforms, "torchvision.io": tv.io})
    sys.path.insert(0, os.environ["ANYV2V_OFFICIAL"])
    from pipelines.pipeline_i2vgen_xl import I2VGenXLPipeline
    from pnp_utils import register_conv_injection, register_spatial_attention_pnp, register_temp_attention_pnp

    return I2VGenXLPipeline, (register_conv_injection, register_spatial_attention_pnp, register_temp_attention_pnp)


def full_size_pipeline(pipeline_cls, device: str, dtype: torch.dtype):
    """The official pipeline on the full-size modules (bench_engine.i2vgen_xl_modules), the tiny fixture's
    tokenizer and scheduler config, all in `dtype` as the official scripts load them."""
    from diffusers import DDIMScheduler
    from transformers import CLIPImageProcessor

    unet, vae, text, vision = bench.i2vgen_xl_modules(device)
    pipe = pipeline_cls(vae=vae, text_encoder=text, tokenizer=bench.tiny_tokenizer("i2vgen-xl"), image_encoder=vision,
                        feature_extractor=CLIPImageProcessor(**bench.CLIP_PREPROCESS), unet=unet,
                        scheduler=DDIMScheduler.from_config(bench.scheduler_config("i2vgen-xl")))  # fmt: skip
    return pipe.to(device=device, dtype=dtype)


def synthetic_frames(n: int, size: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 200 / size, yy * 200 / size, 0 * xx + 120], -1)
    return [Image.fromarray(np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)) for _ in range(n)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="the tiny fixture model on the CPU (checks the path)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    pipeline_cls, (conv, spatial, temporal) = official_modules()
    if args.smoke:
        device, dtype, frames, size, inversion_steps, steps = "cpu", torch.float32, 8, 32, 10, 5
        pipe = pipeline_cls.from_pretrained(str(bench.TINY["i2vgen-xl"]), torch_dtype=dtype)
    else:
        device, dtype, frames, size, inversion_steps, steps = args.device, torch.float16, 16, 512, 500, 50
        pipe = full_size_pipeline(pipeline_cls, device, dtype)
    pipe.set_progress_bar_config(disable=True)
    config = pipe.scheduler.config
    cuda = device.startswith("cuda")

    def now() -> float:
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    video = synthetic_frames(frames, size)
    edited = video[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # any edited first frame: speed does not care
    inversion_dir = tempfile.mkdtemp()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = now()
    pipe.scheduler = DDIMInverseScheduler.from_config(config)
    latents_0 = pipe.encode_vae_video(video, device=device, height=size, width=size)
    pipe.invert(prompt="", image=video[0], height=size, width=size, num_frames=frames,
                num_inference_steps=inversion_steps, guidance_scale=1.0, negative_prompt="", target_fps=8,
                latents=latents_0, generator=torch.Generator().manual_seed(0), return_dict=False,
                output_dir=inversion_dir)  # fmt: skip
    t1 = now()
    ddim = DDIMScheduler.from_config(config)
    ddim.set_timesteps(steps)

    def window(fraction: float):
        return ddim.timesteps[: int(steps * fraction)]

    conv(pipe, window(0.2))
    spatial(pipe, window(0.2))
    temporal(pipe, window(0.5))
    pipe.register_modules(scheduler=ddim)
    latents = torch.load(f"{inversion_dir}/ddim_latents_{int(ddim.timesteps[0])}.pt", weights_only=True)
    out = pipe.sample_with_pnp(prompt="a robot", image=edited, height=size, width=size, num_frames=frames,
                               num_inference_steps=steps, guidance_scale=9.0,
                               negative_prompt="Distorted, discontinuous, Ugly, blurry, low resolution, motionless, "
                                               "static, disfigured, disconnected limbs, Ugly faces, incomplete arms",
                               target_fps=8, latents=latents.to(device), generator=torch.manual_seed(0),
                               return_dict=True, ddim_init_latents_t_idx=0, ddim_inv_latents_path=inversion_dir,
                               ddim_inv_prompt="", ddim_inv_1st_frame=video[0])  # fmt: skip
    t2 = now()
    assert len(out.frames[0]) == frames
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    row = {"code": "official AnyV2V i2vgen-xl @ bc540be", "device": torch.cuda.get_device_name() if cuda else "cpu",
           "torch": torch.__version__, "frames": frames, "size": size, "dtype": str(dtype).replace("torch.", ""),
           "inversion_steps": inversion_steps, "steps": steps, "inversion_s": t1 - t0, "sampling_s": t2 - t1,
           "whole_s": t2 - t0, "peak_gib": peak}  # fmt: skip
    print("| code | frames x size | dtype | inversion steps | sampling steps | inversion s | sampling s | whole edit s "
          "| peak memory GiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {row['code']} | {frames}x{size}x{size} | {row['dtype']} | {inversion_steps} | {steps} | "
          f"{row['inversion_s']:.2f} | {row['sampling_s']:.2f} | {row['whole_s']:.2f} | {peak:.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
