"""A backbone's noise schedules, and which inverted latents its sampler reads, from its scheduler config.

This is everything a sampling plan needs and nothing that needs weights: a job or a command checks,
before any model loads, that an inversion with its settings stores every timestep its edit will read
(`Schedule.from_model` reads only `scheduler/scheduler_config.json`). Backbones hold one and the
sampling loops (`inversion.py`, `pnp_edit.py`) ask it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import AnyV2VError


def set_schedule(scheduler: Any, steps: int, flag: str) -> list[int]:
    """`scheduler.set_timesteps(steps)`, refusing schedules that leave the model's timestep range."""
    last = scheduler.config.num_train_timesteps - 1
    try:
        scheduler.set_timesteps(steps)
    except ValueError:
        raise AnyV2VError(f"{flag} {steps} is more than the model's {last + 1} training timesteps") from None
    timesteps = [int(t) for t in scheduler.timesteps.tolist()]
    if max(timesteps) > last:
        # leading spacing plus steps_offset 1 puts the last step of a 1000-step schedule at t = 1000
        raise AnyV2VError(
            f"{flag} {steps} reaches timestep {max(timesteps)}, beyond the model's last timestep {last}; "
            f"use at most {last} steps"
        )
    return timesteps


def missing_timestep_error(t: int, inversion_steps: int, save_steps: int | None = None) -> AnyV2VError:
    if save_steps is not None:
        return AnyV2VError(
            f"the inversion stores no latent at timestep {t}: {inversion_steps} inversion steps saved on a "
            f"{save_steps}-step grid do not hold it; pick --inversion-steps and --inversion-save-steps whose "
            "timesteps include every one the edit reads (the official 500 and 250 serve 50 sampling steps)"
        )
    return AnyV2VError(
        f"the inversion holds no latent at timestep {t}: {inversion_steps} inversion steps do not visit it; "
        "pick --inversion-steps so that they include every sampling timestep (e.g. 500, 250, 100 or 50 "
        "for 50 sampling steps)"
    )


class Schedule:
    """DDIM sampling and DDIM inversion over one scheduler config; the source branch reads the inversion
    at the sampling timestep and the edit starts from the first timestep that runs (I2VGen-XL and
    ConsistI2V; SEINE differs, below)."""

    def __init__(self, config: dict):
        self.config = dict(config)
        self._timesteps: dict[tuple[int, bool], list[int]] = {}
        self._planners: dict[bool, Any] = {}

    @classmethod
    def from_model(cls, model: str) -> Schedule:
        """From a model folder or hub id's `scheduler/scheduler_config.json` alone (no weights)."""
        from .loading import load_json

        return cls(load_json(model, "scheduler", "scheduler_config.json"))

    @property
    def num_train_timesteps(self) -> int:
        return int(self.config.get("num_train_timesteps", 1000))

    def scheduler(self, inverse: bool = False):
        """A fresh sampling (or inversion) scheduler; the loops own its state."""
        from diffusers import DDIMInverseScheduler, DDIMScheduler

        return (DDIMInverseScheduler if inverse else DDIMScheduler).from_config(self.config)

    def timesteps(self, steps: int, inverse: bool = False) -> list[int]:
        """The timesteps of a `steps`-step sampling (or inversion) schedule (computed once per count)."""
        key = (steps, inverse)
        if key not in self._timesteps:
            flag = "--inversion-steps" if inverse else "--steps"
            if inverse not in self._planners:  # one scheduler per direction, reused only for planning
                self._planners[inverse] = self.scheduler(inverse)
            self._timesteps[key] = set_schedule(self._planners[inverse], steps, flag)
        return list(self._timesteps[key])

    def source_timestep(self, t: int) -> int:
        """The stored inversion timestep the source branch reads at sampling timestep t."""
        return t

    def start_timestep(self, run: Sequence[int], inversion_settings, from_first_step: bool = True) -> int:
        """The stored inversion timestep the edit starts from, given the timesteps that run
        (from_first_step: the run is the whole schedule)."""
        return run[0]

    def missing_error(self, t: int, inversion_settings) -> AnyV2VError:
        """The refusal of an edit that reads timestep t where an inversion with these settings stores none."""
        return missing_timestep_error(t, inversion_settings.steps, inversion_settings.save_steps)

    def stored_timesteps(self, inversion_settings) -> list[int]:
        """The timesteps an inversion with these settings stores (ascending)."""
        visited = self.timesteps(inversion_settings.steps, inverse=True)
        if inversion_settings.save_steps is None:
            return visited
        try:
            grid = set(self.timesteps(inversion_settings.save_steps, inverse=True))
        except AnyV2VError as e:
            raise AnyV2VError(str(e).replace("--inversion-steps", "--inversion-save-steps", 1)) from None
        return [t for t in visited if t in grid]


# SEINE's official configs override SD-1.4's scaled-linear betas (configs/*.yaml `beta_*`)
SEINE_BETAS = {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear"}


class SEINESchedule(Schedule):
    """SEINE as its official AnyV2V code runs: DDIM inversion without x0 clipping, saved on a coarser
    grid; ancestral DDPM sampling (diffusers 0.15 semantics) whose source branch reads the inversion at
    t + 1 and which starts from the noisiest saved latent."""

    def __init__(self, config: dict):
        super().__init__({**config, **SEINE_BETAS})

    def scheduler(self, inverse: bool = False):
        if inverse:  # the official inversion is a plain DDIM update: no x0 clipping
            from diffusers import DDIMInverseScheduler

            return DDIMInverseScheduler.from_config(self.config, clip_sample=False)
        from .ddpm import DDPMSampler

        return DDPMSampler(self.config)

    def source_timestep(self, t: int) -> int:
        return t + 1  # run_pnp_edit.py: `load_ddim_latents_at_t(t + 1)` with the DDPM sampler

    def start_timestep(self, run: Sequence[int], inversion_settings, from_first_step: bool = True) -> int:
        if not from_first_step:  # a later start (not in the official code): the inversion at that step
            return self.source_timestep(run[0])
        return max(self.stored_timesteps(inversion_settings))  # the noisiest saved latent, as the official
