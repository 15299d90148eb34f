"""Flow-matching grids and the sampler (rectified flow: x_sigma = (1 - sigma) x0 + sigma noise,
the model predicts the velocity v = noise - x0).

The grid is the official Wan2.2 one: `sigma = shift-map(linspace(0.999, 0, N + 1)[:-1])` with a final 0,
and integer model timesteps `int(sigma * 1000)` (diffusers' default UniPC grid starts at 1 - 1e-6 and
ends elsewhere; see ../shared/notes/wan-ti2v.md). `UniPC` is the official `FlowUniPCMultistepScheduler`'s
update (order 2, B(h) = e^h - 1, x0 prediction, corrector on, first order at the last step), written as
one small stateful stepper over that grid. `FlowSchedule` plans edits and stored inversions on grid keys;
the inversion and the injected sampling loops are `flow_edit.py`'s.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import AnyV2VError
from .schedule import Schedule

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SHIFT = 5.0  # Wan2.2 TI2V's official `sample_shift`: where a setting leaves the shift unset


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sampling_grid(steps: int, shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas [steps + 1] float32 ending in 0, model timesteps [steps] int64), the official way."""
    # the official scheduler's sigma_max / sigma_min: its training grid's ends in float32
    train = 1.0 - torch.from_numpy(np.linspace(1, 1 / NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS)[::-1].copy()).float()
    sigma_max, sigma_min = train[0].item(), train[-1].item()
    sigmas = shift_sigmas(np.linspace(sigma_max, sigma_min, steps + 1)[:-1], shift)
    timesteps = torch.from_numpy(sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)  # truncated, as official
    return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32)), timesteps


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    """log-SNR of a flow sigma: log((1 - sigma) / sigma)."""
    return torch.log(1 - sigma) - torch.log(sigma)


class UniPC:
    """The official flow UniPC (bh2, order 2, predicting x0, with the corrector) over `sigmas`.

    Call `step(velocity, sample)` once per grid point, in order; it returns the sample at the next
    sigma. The update is elementwise with scalar coefficients, so any entries pinned by the caller
    between steps (Wan's first latent frame) never leak into the others.
    """

    def __init__(self, sigmas: torch.Tensor) -> None:
        self.sigmas = sigmas
        self.index = 0
        self.x0_preds: list[torch.Tensor] = []  # the last two x0 predictions
        self.last_sample: torch.Tensor | None = None
        self.order = 1

    def step(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        i, sigmas = self.index, self.sigmas
        x0 = sample - sigmas[i] * velocity
        if i > 0 and self.last_sample is not None:  # UniC: correct the sample the model was just run on
            sample = self._update(self.last_sample, i - 1, i, self.x0_preds, self.order, x0)
        self.x0_preds = (self.x0_preds + [x0])[-2:]
        steps = len(sigmas) - 1
        self.order = min(2, steps - i, len(self.x0_preds))  # warm up, and first order at the last step
        self.last_sample = sample
        self.index += 1
        return self._update(sample, i, i + 1, self.x0_preds, self.order, None)  # UniP

    def _update(self, x, s, t, x0s, order, x0_t):
        """From x at sigma[s] to sigma[t] using the x0 predictions `x0s` (last = at s); with `x0_t`
        (the prediction at t) this is the corrector, else the predictor."""
        sigma_s, sigma_t = self.sigmas[s], self.sigmas[t]
        alpha_t = 1 - sigma_t
        h = _lambda(sigma_t) - _lambda(sigma_s)
        m0 = x0s[-1]
        hh = -h
        h_phi_1 = torch.expm1(hh)
        b_h = torch.expm1(hh)
        base = sigma_t / sigma_s * x - alpha_t * h_phi_1 * m0
        d1 = None
        rk = None
        if order == 2:  # the previous prediction, one grid point earlier
            rk = (_lambda(self.sigmas[s - 1]) - _lambda(sigma_s)) / h
            d1 = (x0s[-2] - m0) / rk
        if x0_t is None:
            return base if d1 is None else base - alpha_t * b_h * 0.5 * d1
        # corrector coefficients: solve R rho = b (order 1: rho = 0.5)
        h_phi_k = h_phi_1 / hh - 1
        b = [h_phi_k / b_h]
        if order == 2:
            b.append((h_phi_k / hh - 0.5) * 2 / b_h)
            R = torch.stack([torch.ones(2), torch.stack([rk, torch.tensor(1.0)])])
            rho = torch.linalg.solve(R, torch.stack(b))
        else:
            rho = torch.tensor([0.5])
        corr = rho[-1] * (x0_t - m0)
        if d1 is not None:
            corr = rho[0] * d1 + corr
        return base - alpha_t * b_h * corr


def grid_keys(steps: int) -> list[int]:
    """Integer keys of a `steps`-step grid's points, noisiest first (`steps + 1` keys, the last 0).

    A key is the point's place on the unshifted grid, `linspace(0.999, 0, steps + 1)`, in millionths: it
    does not depend on the shift, and a grid with k times the steps holds every point of the coarser one
    under the same keys. Stored inversions are keyed by it, so a 100-step inversion serves a 50-step edit
    (with the same shift)."""
    return [round(u * 1e6) for u in np.linspace(0.999, 0, steps + 1)]


class FlowSchedule(Schedule):
    """`schedule.Schedule` for flow-matching backbones, over grid keys instead of DDIM timesteps: the edit
    reads the inversion at the key of each step and starts from the first one's (the inherited rules)."""

    def __init__(self, config: dict | None = None):
        super().__init__(config or {})

    @classmethod
    def from_model(cls, model: str) -> FlowSchedule:
        return cls()  # the grid is the official one whatever the weights' scheduler config says

    def scheduler(self, inverse: bool = False):
        raise TypeError("a flow-matching backbone has no DDIM scheduler: flow_edit.py steps its own grid")

    def timesteps(self, steps: int, inverse: bool = False) -> list[int]:
        keys = grid_keys(steps)
        return sorted(keys) if inverse else keys[:-1]

    def missing_error(self, t: int, inversion_settings) -> AnyV2VError:
        return AnyV2VError(
            f"the inversion's grid does not hold the edit's point {t / 1e6:.6f} (of linspace(0.999, 0)): "
            f"{inversion_settings.steps} inversion steps do not visit it; the inversion's step count must "
            "be a multiple of --steps"
        )
