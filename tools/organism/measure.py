"""Measure what a model organism learnt: does generation from a first frame move the world's shapes as
the world moves them?

    python tools/organism/measure.py --model OUT [--clips 16] [--steps 25] [--guidance 3]
    python tools/organism/measure.py --backbone wan2.2-ti2v --model OUT --size 128 --frames 9 --guidance 5

For held-out clips of the world (seeds never drawn in training), sample a clip from its first frame and
caption with the backbone's own conditioning and scheduler (I2VGen-XL: DDIM, v-prediction,
classifier-free guidance as the backbone's negative branch does it; Wan: the official TI2V loop, UniPC
on the shifted flow grid, the first latent frame pinned, the official negative prompt), then find each
shape by its colour in every frame and compare its centre with the ground truth. Printed: the mean
centre error in pixels over frames 1..F-1, beside two baselines: a still clip (every shape stays where
frame 0 has it) and the true motion (0 by definition), and the share of shapes found at all. A model
that learnt the motion beats "still".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from anyv2v_batch.world import centroid, make_clip  # noqa: E402

HELD_OUT = 10**8  # training draws seeds below 10**7 + steps


@torch.no_grad()
def generate(backbone, first_frame: np.ndarray, caption: str, frames: int, steps: int, guidance: float, seed: int):
    """A clip [F, H, W, 3] uint8 sampled from noise, conditioned on the first frame and caption."""
    from anyv2v_batch.backbones.base import Branch
    from anyv2v_batch.pnp_edit import to_uint8_frames

    if backbone.flow:
        return generate_flow(backbone, first_frame, caption, frames, steps, guidance, seed)
    cond = backbone.condition(
        [Branch("", first_frame, image_embedding=False), Branch(caption, first_frame)], frames, 8.0
    )
    scheduler = backbone.scheduler()
    scheduler.set_timesteps(steps)
    h, w = first_frame.shape[0] // backbone.vae_scale_factor, first_frame.shape[1] // backbone.vae_scale_factor
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, backbone.unet.config.in_channels, frames, h, w, generator=generator)
    for t in scheduler.timesteps:
        neg, pos = backbone.predict(torch.cat([latents, latents]), int(t), cond).chunk(2)
        latents = scheduler.step(neg + guidance * (pos - neg), t, latents).prev_sample
    return to_uint8_frames(backbone.decode_video(latents))


@torch.no_grad()
def generate_flow(backbone, first_frame: np.ndarray, caption: str, frames: int, steps: int, guidance: float, seed: int):
    from anyv2v_batch.backbones.wan_ti2v import generate as ti2v_generate
    from anyv2v_batch.flow import DEFAULT_SHIFT
    from anyv2v_batch.pnp_edit import to_uint8_frames
    from anyv2v_batch.settings import WAN_NEGATIVE_PROMPT

    image_latent = backbone.encode_image(first_frame)
    shape = list(image_latent.shape)
    shape[2] = (frames - 1) // backbone.vae_scale_factor_temporal + 1
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    context, negative = backbone.encode_prompts([caption, WAN_NEGATIVE_PROMPT]).chunk(2)
    latents = ti2v_generate(backbone, noise, image_latent, context, negative, steps, DEFAULT_SHIFT, guidance)
    return to_uint8_frames(backbone.decode_video(latents))


def centre_errors(clip, frames: np.ndarray) -> tuple[list[float], int, int]:
    """Distances (pixels) between each shape's found centre and its true one, frames 1.., and how many
    (shape, frame) were looked for and found."""
    errors, looked, found = [], 0, 0
    for s, shape in enumerate(clip.shapes):
        for f in range(1, len(frames)):
            looked += 1
            at = centroid(frames[f], shape.colour, tolerance=80)
            if at is None:
                continue
            found += 1
            truth = clip.centres[s, f]
            errors.append(abs(at[0] - truth[0]) if shape.kind == "stripe" else float(np.hypot(*(np.array(at) - truth))))
    return errors, looked, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--backbone", default="i2vgen-xl")
    parser.add_argument("--size", type=int, default=32, help="frame width and height (the Wan organism: 128)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--motion", default=None, help="only clips of this motion (moves, bounces, pan)")
    parser.add_argument("--shapes", type=int, default=None, help="only clips of this many shapes")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from anyv2v_batch.backbones import backbone_class

    backbone = backbone_class(args.backbone).from_pretrained(args.model, device="cpu", dtype="float32")
    model_err, still_err, looked, found = [], [], 0, 0
    for i in range(args.clips):
        clip = make_clip(
            HELD_OUT + i, frames=args.frames, width=args.size, height=args.size, motion=args.motion, shapes=args.shapes
        )
        out = generate(backbone, clip.frames[0], clip.caption, args.frames, args.steps, args.guidance, seed=i)
        e, n, k = centre_errors(clip, out)
        model_err += e
        looked, found = looked + n, found + k
        still = np.repeat(clip.frames[:1], args.frames, axis=0)
        still_err += centre_errors(clip, still)[0]
        print(f"{i:3d} {clip.caption[:50]:50s} model {np.mean(e) if e else float('nan'):6.2f} px", flush=True)
    print(
        f"mean centre error, frames 1..{args.frames - 1}: model {np.mean(model_err):.2f} px "
        f"({found}/{looked} shapes found), still {np.mean(still_err):.2f} px"
    )


if __name__ == "__main__":
    main()
