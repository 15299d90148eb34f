"""Engine speed: seconds, peak memory and UNet evaluations for inversion and edit.

CPU, the tiny fixture model (what CI machines can run):
    python benchmarks/bench_engine.py

GPU, the full-size I2VGen-XL architecture with random weights (speed does not depend on the values):
    python benchmarks/bench_engine.py --full-size --device cuda --dtype float16 --size 512 --frames 16

Prints one row per stage. "UNet batch entries" sums the batch size of every UNet call (a call on
[source, negative, editing] counts 3), the unit the cost scales with.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
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
                hidden_size=1024,
                intermediate_size=4096,
                num_attention_heads=16,
                num_hidden_layers=24,
                projection_dim=1024,
                hidden_act="gelu",
                vocab_size=49408,
                max_position_embeddings=77,
            )
        )
        vision = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_attention_heads=16,
                num_hidden_layers=32,
                patch_size=14,
                image_size=224,
                projection_dim=1024,
                hidden_act="gelu",
            )
        )
    tokenizer = CLIPTokenizer.from_pretrained(TINY / "tokenizer")  # ids only; speed does not depend on them
    scheduler_config = json.loads((TINY / "scheduler" / "scheduler_config.json").read_text())
    clip = {
        "crop_size": {"height": 224, "width": 224},
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
    }
    return I2VGenXL(
        unet.to(dtype),
        vae.float(),
        text.to(dtype),
        tokenizer,
        vision.to(dtype),
        clip,
        scheduler_config,
        vae_dtype=torch.float32,
    )


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


def synthetic_clip(frames: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    base = np.stack([xx * 200 / size, yy * 200 / size, 0 * xx + 120], -1)
    return np.stack([np.clip(base + rng.normal(0, 8, base.shape), 0, 255) for _ in range(frames)]).astype(np.uint8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-size", action="store_true", help="full-size random-weight I2VGen-XL")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--inversion-steps", type=int, nargs="+", default=[100, 500])
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: 10 for 100, else 50)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from anyv2v_batch import EditSettings, InversionSettings, edit, invert, load_backbone
    from anyv2v_batch.loading import quiet_libraries
    from anyv2v_batch.pnp_edit import plan_sampling

    quiet_libraries()
    dtype = getattr(torch, args.dtype)
    if args.full_size:
        backbone = full_size_backbone(args.device, dtype)
        model = "I2VGen-XL full size, random weights"
    else:
        backbone = load_backbone("i2vgen-xl", str(TINY), device=args.device, dtype=dtype)
        model = "tiny fixture I2VGen-XL"
    counter = UNetCounter(backbone.unet)
    clip = synthetic_clip(args.frames, args.size)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"# {model}; {args.frames} frames at {args.size}x{args.size}; {args.device} ({device_name}), "
        f"{args.dtype}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    )
    print("| stage | steps | seconds | s / step | UNet calls | UNet batch entries | peak memory GiB |")
    print("|---|---|---|---|---|---|---|")

    def timed(fn, *fn_args, **fn_kwargs):
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        c0, e0, t0 = counter.calls, counter.entries, time.perf_counter()
        out = fn(*fn_args, **fn_kwargs)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0, counter.calls - c0, counter.entries - e0

    for inv_steps in args.inversion_steps:
        steps = args.steps or (10 if inv_steps == 100 else 50)
        settings = EditSettings(prompt="a robot", steps=steps)
        needed = plan_sampling(backbone.scheduler(), settings).needed
        inversion, s, calls, entries = timed(
            invert, backbone, clip, InversionSettings(steps=inv_steps), fps=8, keep=needed
        )
        print(
            f"| inversion | {inv_steps} | {s:.2f} | {s / inv_steps:.4f} | {calls} | {entries} | "
            f"{peak_memory_gib(args.device):.2f} |"
        )
        result, s, calls, entries = timed(edit, backbone, inversion, clip[0], settings)
        print(
            f"| edit (incl. decode) | {steps} | {s:.2f} | {s / steps:.4f} | {calls} | {entries} | "
            f"{peak_memory_gib(args.device):.2f} |"
        )
        assert result.frames.shape == clip.shape
    sys.stdout.flush()


if __name__ == "__main__":
    main()
