"""The paper's ablation on the model organism: does each part of AnyV2V keep the edit on the source's
motion?

    python tools/organism/ablation.py --model OUT [--clips 8] [--steps 25] [--guidance 9]
    python tools/organism/ablation.py --backbone wan2.2-ti2v --model OUT [--size 128] [--frames 9]

For held-out world clips (one shape, moving or bouncing), the shape is recoloured in the first frame (a
perfect first-frame edit, what the `provided` editor would be given); the clip is inverted and edited
with AnyV2V, then again with its parts taken away one after another, as the paper's ablation does
(its Table 4 / Figure 6):

    full AnyV2V                    pnp conv 0.2, spatial 0.2, temporal 0.5 (the official defaults)
    - temporal injection           temporal 0
    - spatial and conv injection   no injection at all
    - inverted noise               no injection, the start latent fresh noise (random_ratio 1)

(on the Wan DiT, its own injections: self-attention Q/K for 0.5 of the steps, then feed-forward
features for 0.2, then fresh noise in place of the inversion), and once as a deliberately failed edit:
the first frame of another clip (its own shape recoloured). Everything else at the backbone's defaults.
Each output is measured against the source: the share of frames 1..F-1 where the new colour is found
at all (the edit held), the distance in pixels between its centre and the shape's true centre (the edit
follows the source's motion), and the scorer's motion fidelity (optical flow against the source's) and
edit hold (the world CLIP: output frames against the edited first frame). Printed as a markdown table,
then each removal against the row above it clip by clip (paired: the spread between clips cancels).
The paper's finding, for comparison: each removal makes the output follow the source less.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from anyv2v_batch.world import follows, make_clip, recoloured, unused_colour  # noqa: E402

HELD_OUT = 5 * 10**8
SETTINGS = {
    "full AnyV2V": {},
    "- temporal injection": {"pnp_temporal": 0.0},
    "- spatial and conv injection": {"pnp_temporal": 0.0, "pnp_spatial": 0.0, "pnp_conv": 0.0},
    "- inverted noise": {"pnp_temporal": 0.0, "pnp_spatial": 0.0, "pnp_conv": 0.0, "random_ratio": 1.0},
}
FRESH_NOISE = "fresh_noise"  # not an edit setting: the inversion's latents replaced by seeded noise
FLOW_SETTINGS = {  # the DiT's injections (flow_edit.py): one 3-D attention, feed-forward features
    "full AnyV2V": {},
    "- attention injection": {"pnp_attn": 0.0},
    "- attention and feature injection": {"pnp_attn": 0.0, "pnp_feature": 0.0},
    "- inverted noise": {"pnp_attn": 0.0, "pnp_feature": 0.0, FRESH_NOISE: True},
}
WRONG_FRAME = "(failed edit: another clip's first frame)"
COLUMNS = ("held", "centre_error", "motion_fidelity", "edit_hold")


def held_out_clip(i: int, frames: int = 8, size: int = 32):
    """The i-th held-out clip: one shape, moving or bouncing (a shape the recolour can be followed on)."""
    motion = "moves" if i % 2 else "bounces"
    return make_clip(HELD_OUT + i, frames=frames, width=size, height=size, motion=motion, shapes=1)


def without_inversion(inversion, seed: int):
    """The inversion with its latents replaced by fresh noise (seeded): an edit from it starts as plain
    sampling does (the U-Nets' random_ratio 1; the DiT has no such knob)."""
    import dataclasses

    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(inversion.latents.shape, generator=generator, dtype=inversion.latents.dtype)
    return dataclasses.replace(inversion, latents=noise)


def measure(
    backbone, scorer, clips: list, steps: int, guidance: float, settings: dict | None = None, wrong_frame: bool = True
) -> dict:
    """{setting: {column: [value per clip]}}: each clip's shape 0 recoloured in its first frame, edited
    with each setting (and once from another clip's edited first frame), measured against the source.
    Everything else at the backbone's official defaults."""
    import dataclasses

    from anyv2v_batch import edit, invert
    from anyv2v_batch.settings import backbone_defaults

    defaults = backbone_defaults(backbone.name)
    settings = (FLOW_SETTINGS if backbone.flow else SETTINGS) if settings is None else settings
    table: dict[str, dict[str, list[float]]] = {}
    for i, clip in enumerate(clips):
        colour = unused_colour(clip)
        edited = recoloured(clip, 0, colour)
        other = clips[(i + 1) % len(clips)]
        runs = {name: (edited, change) for name, change in settings.items()}
        if wrong_frame and len(clips) > 1:
            runs[WRONG_FRAME] = (recoloured(other, 0, unused_colour(other)), {})
        inversion = invert(backbone, clip.frames, dataclasses.replace(defaults["inversion"], steps=steps))
        prompt = clip.caption.replace(clip.shapes[0].colour, colour, 1)
        for name, (first, change) in runs.items():
            change = dict(change)
            start = without_inversion(inversion, seed=i) if change.pop(FRESH_NOISE, False) else inversion
            edit_settings = dataclasses.replace(
                defaults["edit"], prompt=prompt, steps=steps, guidance_scale=guidance, **change
            )
            out = edit(backbone, start, first, edit_settings).frames
            held, error = follows(out, colour, clip.centres[0], first=edited)
            scores = scorer.score(out, clip.frames, edited, prompt) if scorer else {}
            row = table.setdefault(name, {c: [] for c in COLUMNS})
            row["held"].append(held)
            row["centre_error"].append(error)
            row["motion_fidelity"].append(scores.get("score_motion_fidelity", float("nan")))
            row["edit_hold"].append(scores.get("score_edit_hold", float("nan")))
    return table


def markdown(table: dict, clips: int, steps: int, guidance: float) -> str:
    lines = [
        f"| {clips} held-out clips, {steps} steps, guidance {guidance:g} | edit held (share of frames) | "
        "centre error (px) | motion fidelity | edit hold |",
        "|---|---|---|---|---|",
    ]
    for name, row in table.items():
        cells = " | ".join(f"{np.nanmean(row[c]):.2f}" if not np.all(np.isnan(row[c])) else "-" for c in COLUMNS)
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def paired(table: dict, column: str = "centre_error") -> str:
    """Each ablation against the row above it, clip by clip (the same clips, seeds and first frames): the
    mean change of `column` with its standard error, and on how many clips it rose. Differences between
    clips (a slow clip has a small error whatever is removed) cancel here; they do not in the means."""
    names = [n for n in table if n != WRONG_FRAME]
    lines = [f"| removed (against the row above) | mean change of {column} | standard error | clips where it rose |",
             "|---|---|---|---|"]  # fmt: skip
    for above, name in itertools.pairwise(names):
        delta = np.asarray(table[name][column], float) - np.asarray(table[above][column], float)
        delta = delta[~np.isnan(delta)]
        if len(delta) == 0:
            continue
        spread = delta.std(ddof=1) / np.sqrt(len(delta)) if len(delta) > 1 else float("nan")
        lines.append(f"| {name} | {delta.mean():+.2f} | {spread:.2f} | {(delta > 0).sum()} of {len(delta)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--backbone", default="i2vgen-xl")
    parser.add_argument("--clip-model", default=None, help="the world CLIP (default: the package's)")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="frame width and height (the Wan organism: 128)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=9.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from anyv2v_batch.backbones import backbone_class
    from anyv2v_batch.organism import WORLD_CLIP
    from anyv2v_batch.scores import Scorer

    backbone = backbone_class(args.backbone).from_pretrained(args.model, device="cpu", dtype="float32")
    scorer = Scorer(args.clip_model or str(WORLD_CLIP))
    clips = [held_out_clip(i, args.frames, args.size) for i in range(args.clips)]
    table = measure(backbone, scorer, clips, args.steps, args.guidance)
    print(markdown(table, args.clips, args.steps, args.guidance))
    print()
    print(paired(table))
    print()
    print(paired(table, "motion_fidelity"))


if __name__ == "__main__":
    main()
