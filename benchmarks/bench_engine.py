"""Engine speed: seconds, peak memory and UNet evaluations for inversion and edit.

CPU, the tiny fixture model (what CI machines can run):
    python benchmarks/bench_engine.py

GPU, the full-size I2VGen-XL architecture with random weights (speed does not depend on the values),
official defaults (500 inversion steps, 50 sampling steps, 512x512x16), float16 and bfloat16, 1-4
clips per UNet call, with and without torch.compile:
    python benchmarks/bench_engine.py --full-size --device cuda --size 512 --frames 16 \\
        --inversion-steps 500 --dtypes float16 bfloat16 --batches 1 2 3 4 --compile both

Prints one row per configuration. Per clip: seconds of inversion, seconds of sampling from the stored
inversion (decode included), their sum (the whole edit), seconds per inversion step and per sampling
step; peak memory; "UNet entries" sums the batch sizes of every UNet call per clip (a call on
[source, negative, editing] counts 3).
"""

from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "anyv2v-reference" / "tiny-i2vgen-xl"


def full_size_backbone(device: str, dtype: torch.dtype):
    """I2VGen-XL at its real sizes (UNet 320/640/1280/1280, cross-attention 1024; OpenCLIP ViT-H text
    and vision towers; the SD VAE) with random weights, built without any download."""
    import json

    from diffusers import AutoencoderKL, I2VGenXLUNet
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTokenizer,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from anyv2v_batch.backbones.i2vgen_xl import I2VGenXL

    torch.manual_seed(0)
    with torch.device(device):
        unet = I2VGenXLUNet()  # the class defaults are the released model's configuration
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
            scaling_factor=0.18215,
        )
        text = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                projection_dim=1024, hidden_act="gelu", vocab_size=49408, max_position_embeddings=77,
            )
        )  # fmt: skip
        vision = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu",
            )
        )  # fmt: skip
    tokenizer = CLIPTokenizer.from_pretrained(TINY / "tokenizer")  # ids only; speed does not depend on them
    scheduler_config = json.loads((TINY / "scheduler" / "scheduler_config.json").read_text())
    clip = {"crop_size": {"height": 224, "width": 224}, "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711]}  # fmt: skip
    return I2VGenXL(unet.to(dtype), vae.float(), text.to(dtype), tokenizer, vision.to(dtype), clip,
                    scheduler_config, vae_dtype=torch.float32)  # fmt: skip


class UNetCounter:
    def __init__(self, unet: torch.nn.Module):
        self.calls = self.entries = 0
        unet.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1
        self.entries += args[0].shape[0]


def peak_memory_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def synthetic_clip(frames: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 200 / size, yy * 200 / size, 0 * xx + 120], -1)
    return np.stack([np.clip(base + rng.normal(0, 8, base.shape), 0, 255) for _ in range(frames)]).astype(np.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-size", action="store_true", help="full-size random-weight I2VGen-XL")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "float16", "bfloat16"])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--inversion-steps", type=int, nargs="+", default=[100, 500])
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: 10 for 100, else 50)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2], help="clips per UNet call")
    p.add_argument("--compile", choices=["no", "yes", "both"], default="no")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from anyv2v_batch import EditSettings, InversionSettings, load_backbone
    from anyv2v_batch.inversion import invert_batch
    from anyv2v_batch.loading import quiet_libraries
    from anyv2v_batch.pnp_edit import EditRequest, edit_batch, plan_sampling

    quiet_libraries()
    cuda = args.device.startswith("cuda")
    device_name = torch.cuda.get_device_name() if cuda else (platform.processor() or "cpu")
    model = "I2VGen-XL full size, random weights" if args.full_size else "tiny fixture I2VGen-XL"
    print(f"# {model}; {args.frames} frames at {args.size}x{args.size}; {args.device} ({device_name}); "
          f"torch {torch.__version__}; {torch.get_num_threads()} CPU threads")  # fmt: skip
    print("| dtype | compile | clips / call | inversion steps | sampling steps | inversion s / clip | "
          "sampling s / clip | whole edit s / clip | s / inversion step | s / sampling step | "
          "UNet entries / clip | peak memory GiB |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    compiles = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for compiled in compiles:
            if args.full_size:
                backbone = full_size_backbone(args.device, dtype)
            else:
                backbone = load_backbone("i2vgen-xl", str(TINY), device=args.device, dtype=dtype)
            if compiled:
                backbone.compile()
            counter = UNetCounter(backbone.unet)
            for inv_steps in args.inversion_steps:
                steps = args.steps or (10 if inv_steps == 100 else 50)
                settings = EditSettings(prompt="a robot", steps=steps)
                needed = plan_sampling(backbone, settings, InversionSettings(steps=inv_steps)).needed
                for batch in args.batches:
                    clips = [synthetic_clip(args.frames, args.size, seed) for seed in range(batch)]
                    if compiled:  # compile outside the timing
                        inv = invert_batch(backbone, clips, InversionSettings(steps=2), fps=8)
                        warm = EditSettings(prompt="a robot", steps=2, pnp_conv=0.5, pnp_spatial=0.5, pnp_temporal=0.5)
                        edit_batch(backbone, [EditRequest(i, c[0], warm) for i, c in zip(inv, clips, strict=True)])
                    if cuda:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                    entries0, t0 = counter.entries, time.perf_counter()
                    inversions = invert_batch(backbone, clips, InversionSettings(steps=inv_steps), fps=8, keep=needed)
                    if cuda:
                        torch.cuda.synchronize()
                    t1 = time.perf_counter()
                    requests = [EditRequest(i, c[0], settings) for i, c in zip(inversions, clips, strict=True)]
                    results = edit_batch(backbone, requests)
                    if cuda:
                        torch.cuda.synchronize()
                    t2 = time.perf_counter()
                    assert all(r.frames.shape == clips[0].shape for r in results)
                    inv_s, samp_s = (t1 - t0) / batch, (t2 - t1) / batch
                    print(f"| {dtype_name} | {'yes' if compiled else 'no'} | {batch} | {inv_steps} | {steps} | "
                          f"{inv_s:.2f} | {samp_s:.2f} | {inv_s + samp_s:.2f} | {(t1 - t0) / inv_steps:.4f} | "
                          f"{(t2 - t1) / steps:.4f} | {(counter.entries - entries0) / batch:.0f} | "
                          f"{peak_memory_gib(args.device):.2f} |", flush=True)  # fmt: skip
            del backbone
            if cuda:
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
