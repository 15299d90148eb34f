"""Plug-and-play feature injection through forward hooks.

The UNet runs a batch of branches (for one edit: [source, negative, editing]); at the chosen modules
and timesteps the source branch's output replaces the other branches' outputs. Positions are data:
module paths per kind, e.g. a ResNet's `conv2` (its residual features before the skip add) or an
attention's `to_q` / `to_k` (Q and K of self-attention; V stays the branch's own). Every layout the
UNets use puts the batch first and branch-major ([B * F, ...] or [B * h * w, F, ...]), so "branch i"
is the i-th equal slice of the leading axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BranchPlan:
    """How a UNet batch splits into branches, and which branch's features overwrite which."""

    num_branches: int
    copies: tuple[tuple[int, tuple[int, ...]], ...]  # (source branch, target branches)

    @classmethod
    def one_source(cls, num_branches: int, source: int = 0) -> BranchPlan:
        return cls(num_branches, ((source, tuple(i for i in range(num_branches) if i != source)),))

    def apply(self, output: torch.Tensor) -> None:
        """Copy source slices over target slices of `output`, in place."""
        # [num_branches * per_branch, ...] viewed as [num_branches, per_branch, ...]: the copies land in output
        branches = output.unflatten(0, (self.num_branches, -1))
        for source, targets in self.copies:
            for target in targets:
                branches[target] = branches[source]


class FeatureInjector:
    """Forward hooks that inject source-branch features, switched per sampling step.

    with FeatureInjector(unet, positions) as injector:
        for t in timesteps:
            injector.set_step(t, {"conv": plan, "spatial": plan})  # kinds injecting at t, and how
            unet(...)
    """

    def __init__(self, unet: torch.nn.Module, positions: Mapping[str, Sequence[str]]):
        modules = dict(unet.named_modules())
        missing = [p for paths in positions.values() for p in paths if p not in modules]
        if missing:
            raise ValueError(f"injection positions not found in the UNet: {', '.join(missing)}")
        self._targets = [(kind, modules[p]) for kind, paths in positions.items() for p in paths]
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self.plans: Mapping[str, BranchPlan] = {}
        self.t: int | None = None
        self.fired: set[tuple[str, int]] = set()  # (kind, timestep) pairs that injected, for checks
        # kinds that fired during the current step; the hooks do not read `t`, so a compiled UNet
        # is not recompiled for every timestep
        self._fired_now: set[str] = set()

    def __enter__(self) -> FeatureInjector:
        for kind, module in self._targets:
            self._handles.append(module.register_forward_hook(self._hook(kind)))
        return self

    def __exit__(self, *exc) -> None:
        self._flush()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def set_step(self, t: int, plans: Mapping[str, BranchPlan]) -> None:
        """The kinds that inject at timestep t, each with its plan (kinds not given do nothing)."""
        self._flush()
        self.t, self.plans = int(t), {k: p for k, p in plans.items() if p.copies}

    def _flush(self) -> None:
        self.fired |= {(kind, self.t) for kind in self._fired_now}
        self._fired_now.clear()

    def _hook(self, kind: str):
        def hook(module: torch.nn.Module, args, output: torch.Tensor) -> torch.Tensor:
            plan = self.plans.get(kind)
            if plan is not None:
                plan.apply(output)
                self._fired_now.add(kind)
            return output

        return hook
