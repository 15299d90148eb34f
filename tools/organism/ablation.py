"""The paper's ablation on the model organism: does each part of AnyV2V keep the edit on the source's
motion?

    python tools/organism/ablation.py --model OUT [--clips 8] [--steps 25]

For held-out world clips, shape 0 is recoloured in the first frame (a perfect first-frame edit, what the
`provided` editor would be given); the clip is DDIM-inverted and edited with AnyV2V, then again with its
parts taken away one after another, as the paper's ablation does (its Table 4 / Figure 6):

    full AnyV2V            pnp conv 0.2, spatial 0.2, temporal 0.5 (the official defaults)
    - temporal injection   temporal 0
    - spatial and conv     no injection at all
    - inverted noise       no injection, the start latent fresh noise (random_ratio 1)

Each output is measured against the source: the share of frames where the new colour is found at all
(the edit held), and the distance in pixels between the new colour's centre and shape 0's true centre
in frames 1..F-1 (the edit follows the source's motion). Printed as a markdown table. The paper's
finding, for comparison: each removal makes the output follow the source less.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from anyv2v_batch.world import COLOURS, centroid, make_clip, recoloured  # noqa: E402

HELD_OUT = 5 * 10**8
SETTINGS = {
    "full AnyV2V": {},
    "- temporal injection": {"pnp_temporal": 0.0},
    "- spatial and conv injection": {"pnp_temporal": 0.0, "pnp_spatial": 0.0, "pnp_conv": 0.0},
    "- inverted noise": {"pnp_temporal": 0.0, "pnp_spatial": 0.0, "pnp_conv": 0.0, "random_ratio": 1.0},
}


def follows(clip, colour: str, frames: np.ndarray) -> tuple[float, list[float]]:
    """(share of frames 1.. where the colour is found, centre errors in pixels against shape 0's truth)."""
    found, errors = 0, []
    for f in range(1, len(frames)):
        at = centroid(frames[f], colour, tolerance=80)
        if at is None:
            continue
        found += 1
        errors.append(float(np.hypot(at[0] - clip.centres[0, f, 0], at[1] - clip.centres[0, f, 1])))
    return found / (len(frames) - 1), errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from anyv2v_batch import EditSettings, InversionSettings, edit, invert
    from anyv2v_batch.backbones.i2vgen_xl import I2VGenXL

    backbone = I2VGenXL.from_pretrained(args.model, device="cpu", dtype="float32")
    held: dict[str, list[float]] = {name: [] for name in SETTINGS}
    errors: dict[str, list[float]] = {name: [] for name in SETTINGS}
    still: list[float] = []
    for i in range(args.clips):
        clip = make_clip(HELD_OUT + i, frames=args.frames, motion="moves" if i % 2 else "bounces", shapes=1)
        target = next(c for c in COLOURS if c != clip.shapes[0].colour)
        edited = recoloured(clip, 0, target)
        inversion = invert(backbone, clip.frames, InversionSettings(steps=args.steps))
        for name, change in SETTINGS.items():
            settings = EditSettings(prompt=clip.caption.replace(clip.shapes[0].colour, target), steps=args.steps,
                                    guidance_scale=args.guidance, negative_prompt="", **change)  # fmt: skip
            out = edit(backbone, inversion, edited, settings).frames
            share, e = follows(clip, target, out)
            held[name].append(share)
            errors[name] += e
        still += follows(clip, target, np.repeat(edited[None], args.frames, axis=0))[1]
        print(f"clip {i}: {clip.caption}", flush=True)
    print(f"\n| {args.clips} held-out clips, {args.steps} steps | edit held (share of frames) | centre error (px) |")
    print("|---|---|---|")
    for name in SETTINGS:
        print(f"| {name} | {np.mean(held[name]):.2f} | {np.mean(errors[name]) if errors[name] else float('nan'):.2f} |")
    print(f"| (a still clip of the edited frame) | 1.00 | {np.mean(still):.2f} |")


if __name__ == "__main__":
    main()
