"""What the organism's trainers share: the training log and the VAE's reconstruction loss."""

from __future__ import annotations

import csv
from pathlib import Path

import torch


def log_row(path: Path, row: list) -> None:
    with path.open("a", newline="") as f:
        csv.writer(f).writerow(row)


def drop_rows(path: Path, stage: str, from_step: int = 0) -> None:
    """Drop `stage`'s rows from `from_step` on: an earlier run's (a stage trained anew), or those past the
    checkpoint a run resumes from (not kept, so a resumed run's steps follow on without repeats)."""
    rows = path.read_text().splitlines() if path.exists() else []
    kept = [r for r in rows if f",{stage}," not in r or int(r.split(",")[0]) < from_step]
    path.write_text("\n".join(kept or ["step,stage,loss,seconds"]) + "\n")


def away_from_background(x: torch.Tensor) -> torch.Tensor:
    """[N, 3, ...] -> [N, 1, ...], 1 where a pixel is far from its sample's median colour (a shape)."""
    background = x.flatten(2).median(dim=-1).values.view(*x.shape[:2], *[1] * (x.dim() - 2))
    return ((x - background).abs().amax(1, keepdim=True) > 0.1).float()


def vae_loss(vae, x: torch.Tensor) -> torch.Tensor:
    """Encode, sample, decode; L1 + L2 with the shapes' pixels weighted 10x, plus a small KL.

    The shapes are a small share of the pixels: without the weight the VAE learns the backgrounds and
    smears the shapes' colours (a colour is what the organism's tests measure by)."""
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample
    weight = 1.0 + 9.0 * away_from_background(x)
    error = (recon - x).abs() + (recon - x).square()
    return (weight * error).sum() / (weight.sum() * 3) + 1e-6 * posterior.kl().mean()
