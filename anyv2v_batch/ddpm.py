"""Ancestral DDPM sampling as SEINE's official AnyV2V edit runs it, with replayable noise.

The official edit uses diffusers 0.15's `DDPMScheduler`: timesteps `arange(N) * (1000 // N)` reversed,
with no `steps_offset` (50 steps: 980, 960, ..., 0; current diffusers adds the offset and would run
981 ... 1), the "fixed_small" posterior variance, and fresh Gaussian noise at every step with t > 0.
The noise comes from the variant's seeded generator, or from `variance_noise` when a caller replays
recorded noise (the reference test does).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch


def beta_schedule(config: dict) -> torch.Tensor:
    """The betas of a diffusers scheduler config ("linear" or "scaled_linear"), float32 like diffusers'."""
    n, start, end = config["num_train_timesteps"], config["beta_start"], config["beta_end"]
    kind = config.get("beta_schedule", "linear")
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float32)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    raise ValueError(f"unsupported beta_schedule {kind!r}")


@dataclass
class StepOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class DDPMSampler:
    """A DDPM sampler with the interface our loops use (`set_timesteps`, `timesteps`, `step`)."""

    def __init__(self, config: dict):
        # diffusers' DDPMScheduler defaults; SD-1.4's scheduler config leaves clip_sample unset, so the
        # official edit clips the predicted x0 to [-1, 1] at every step
        config = {"num_train_timesteps": 1000, "prediction_type": "epsilon", "clip_sample": True, **config}
        if config["prediction_type"] != "epsilon":
            raise ValueError("DDPMSampler supports epsilon prediction only")
        self.config = SimpleNamespace(**config)
        self.alphas_cumprod = torch.cumprod(1.0 - beta_schedule(config), dim=0)  # [1000]
        self.one = torch.tensor(1.0)
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0, dtype=torch.int64)

    def set_timesteps(self, num_inference_steps: int) -> None:
        n = self.config.num_train_timesteps
        if num_inference_steps > n:
            raise ValueError(f"{num_inference_steps} steps exceed the {n} training timesteps")
        self.num_inference_steps = num_inference_steps
        ratio = n // num_inference_steps
        self.timesteps = torch.arange(num_inference_steps - 1, -1, -1, dtype=torch.int64) * ratio

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float | None = None,  # unused: DDPM is always stochastic (accepted for DDIM's call signature)
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
    ) -> StepOutput:
        t = int(timestep)
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        alpha_t = self.alphas_cumprod[t]
        alpha_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.one
        beta_t, beta_prev = 1 - alpha_t, 1 - alpha_prev
        step_alpha = alpha_t / alpha_prev
        step_beta = 1 - step_alpha

        x0 = (sample - beta_t**0.5 * model_output) / alpha_t**0.5
        if self.config.clip_sample:
            limit = getattr(self.config, "clip_sample_range", 1.0)
            x0 = x0.clamp(-limit, limit)
        # the posterior mean of x_{t-1} given x_t and x0 (DDPM eq. 7)
        mean = (alpha_prev**0.5 * step_beta / beta_t) * x0 + (step_alpha**0.5 * beta_prev / beta_t) * sample
        if t == 0:
            return StepOutput(mean, x0)
        if variance_noise is None:
            variance_noise = torch.randn(model_output.shape, generator=generator, dtype=model_output.dtype)
        variance = torch.clamp(beta_prev / beta_t * step_beta, min=1e-20)  # "fixed_small"
        return StepOutput(mean + variance**0.5 * variance_noise.to(sample.device, sample.dtype), x0)
