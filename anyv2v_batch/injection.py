"""Plug-and-play feature injection through forward hooks.

The source branch runs in a UNet call of its own, which records its outputs at the chosen modules;
each edit's call ([negative, editing], or [editing]) then has those outputs replaced by the recorded
source features. Positions are data: module paths per kind, e.g. a ResNet's `conv2` (its residual
features before the skip add) or an attention's `to_q` / `to_k` (Q and K of self-attention; V stays
the branch's own). Every layout the UNets use puts the batch first and branch-major ([B * F, ...] or
[B * h * w, F, ...]), so "branch i" is the i-th equal slice of the leading axis, and the source's
output (one branch) is exactly one such slice.

Separate calls, not one batch [source, negative, editing]: a pair's numbers must not depend on which
other variants or clips share its calls (CPU and GPU kernels round differently for another batch
size), so every call has a shape fixed by the pair alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BranchPlan:
    """How a UNet batch splits into branches, and which branch's features overwrite which (for
    injecting within one batched call)."""

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


def overwrite_branches(output: torch.Tensor, source: torch.Tensor, keep: int = 0) -> None:
    """Every branch slice of `output` [k * N, ...] becomes `source` [N, ...], in place; `keep` > 0 keeps
    the branch's own first `keep` entries of axis 1 (a DiT's first-frame tokens)."""
    branches = output.unflatten(0, (-1, source.shape[0]))
    if keep:
        branches, source = branches[:, :, keep:], source[:, keep:]
    branches.copy_(source.unsqueeze(0).expand_as(branches))


class FeatureInjector:
    """Forward hooks that record the source branch's features and inject them into the edit's call.

    with FeatureInjector(unet, positions) as injector:
        for t in timesteps:
            injector.record(t, {"conv", "spatial"})   # the source branch's call keeps these kinds' outputs
            unet(source ...)
            injector.inject(t, {"conv", "spatial"})   # the edit's call takes them (every branch of it)
            unet(edit ...)
            injector.pass_through()

    Or, within one batched call: `set_step(t, {kind: BranchPlan})`.
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
        self._mode = "off"  # "off", "record", "inject", "plans"
        self._kinds: frozenset[str] = frozenset()
        # position index -> the source's outputs there, in call order (a module may run more than once)
        self._recorded: dict[int, list[torch.Tensor]] = {}
        self._cursor: dict[int, int] = {}
        # kind -> leading entries of axis 1 that keep each branch's own values when injecting
        self.kept_tokens: dict[str, int] = {}

    def __enter__(self) -> FeatureInjector:
        for index, (kind, module) in enumerate(self._targets):
            self._handles.append(module.register_forward_hook(self._hook(kind, index)))
        return self

    def __exit__(self, *exc) -> None:
        self._flush()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._recorded.clear()

    def set_step(self, t: int, plans: Mapping[str, BranchPlan]) -> None:
        """The kinds that inject at timestep t within one batched call, each with its plan."""
        self._flush()
        self.t, self.plans = int(t), {k: p for k, p in plans.items() if p.copies}
        self._mode, self._kinds = "plans", frozenset(self.plans)

    def record(self, t: int, kinds: Iterable[str]) -> None:
        """The next UNet call is the source branch alone: keep its outputs at these kinds' positions."""
        self._flush()
        self.t, self._mode, self._kinds = int(t), "record", frozenset(kinds)
        self._recorded.clear()

    def inject(self, t: int, kinds: Iterable[str]) -> None:
        """The next UNet call's branches take the recorded source outputs at these kinds' positions
        (recorded at the same timestep; the record is kept for the next edit's call)."""
        kinds = frozenset(kinds)
        if kinds and self.t != int(t):
            raise RuntimeError(f"injecting at timestep {t} features recorded at {self.t}")
        self._flush()
        self._mode, self._kinds = "inject", kinds
        self._cursor.clear()

    def pass_through(self) -> None:
        """The hooks do nothing until the next record / inject."""
        self._flush()
        self._mode, self._kinds = "off", frozenset()

    def _flush(self) -> None:
        if self.t is not None:
            self.fired |= {(kind, self.t) for kind in self._fired_now}
        self._fired_now.clear()

    def _hook(self, kind: str, index: int):
        # `kind in self._kinds` first: where nothing injects, a compiled UNet guards on nothing else, so
        # the calls without injection share one compiled graph whatever mode they are in
        def hook(module: torch.nn.Module, args, output: torch.Tensor) -> torch.Tensor:
            if kind not in self._kinds:
                return output
            if self._mode == "plans":
                self.plans[kind].apply(output)
                self._fired_now.add(kind)
            elif self._mode == "record":
                self._recorded.setdefault(index, []).append(output.detach().clone())
            elif self._mode == "inject":
                n = self._cursor.get(index, 0)
                self._cursor[index] = n + 1
                overwrite_branches(output, self._recorded[index][n], self.kept_tokens.get(kind, 0))
                self._fired_now.add(kind)
            return output

        return hook
