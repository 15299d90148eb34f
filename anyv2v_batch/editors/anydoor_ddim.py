"""ldm's DDIM sampler as AnyDoor runs it (`cldm/ddim_hacked.py`, eta 0), with its exact numbers.

Timesteps are ldm's "uniform" ones, `range(0, T, T // S) + 1`: 31 steps for S = 30 (the official
length check is commented out), which diffusers' DDIMScheduler cannot produce. The schedule is ldm's
"linear" one built in float64 and cast to float32 (the model's `alphas_cumprod` buffer); the previous
alphas go through float64 and back to float32, as `make_ddim_sampling_parameters` does; the update is
the official one, term by term, in float32.
"""

from __future__ import annotations

import numpy as np
import torch


def ldm_alphas_cumprod(beta_start: float, beta_end: float, num_train_timesteps: int) -> torch.Tensor:
    """ldm's "linear" schedule in float64, its cumulative product cast to float32 (the model's buffer)."""
    betas = (torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float64) ** 2).numpy()
    return torch.tensor(np.cumprod(1.0 - betas, axis=0), dtype=torch.float32)


def ddim_timesteps(steps: int, num_train_timesteps: int = 1000) -> np.ndarray:
    """ldm's "uniform" DDIM steps, ascending: range(0, T, T // steps) + 1 (31 steps for 30 at T = 1000)."""
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"steps must be 1 ... {num_train_timesteps}, got {steps}")
    return np.asarray(list(range(0, num_train_timesteps, num_train_timesteps // steps))) + 1


class LdmDDIM:
    """The deterministic (eta 0) DDIM of `steps` nominal steps over a float32 `alphas_cumprod`."""

    def __init__(self, alphas_cumprod: torch.Tensor, steps: int) -> None:
        ascending = ddim_timesteps(steps, len(alphas_cumprod))
        self.alphas = alphas_cumprod[ascending]
        self.alphas_prev = np.asarray([alphas_cumprod[0].item(), *alphas_cumprod[ascending[:-1]].tolist()])
        self.sqrt_one_minus_alphas = torch.sqrt(1.0 - self.alphas)
        self.timesteps = [int(t) for t in np.flip(ascending)]  # run order: 991, 958, ... 1 for S = 30

    def __len__(self) -> int:
        return len(self.timesteps)

    @staticmethod
    def guide(eps_cond: torch.Tensor, eps_uncond: torch.Tensor | None, scale: float) -> torch.Tensor:
        """Classifier-free guidance u + s (c - u); the conditional prediction alone at scale 1."""
        if eps_uncond is None or scale == 1.0:
            return eps_cond
        return eps_uncond + scale * (eps_cond - eps_uncond)

    def step(self, i: int, x: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
        """The latent after run step i (of timestep self.timesteps[i]) given the guided noise e_t."""
        index = len(self) - i - 1
        a_t, a_prev, sigma_t, sqrt_one_minus_at = (
            torch.full((x.shape[0], 1, 1, 1), float(v), device=x.device)
            for v in (self.alphas[index], self.alphas_prev[index], 0.0, self.sqrt_one_minus_alphas[index])
        )
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * e_t
        return a_prev.sqrt() * pred_x0 + dir_xt  # + sigma_t * noise, which is 0 at eta 0
