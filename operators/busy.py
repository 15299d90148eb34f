"""How long each GPU pool's actors have worked so far, the calls still running included.

A row's stage seconds reach the driver only when the row is written, so a progress line fed by rows
alone shows a pool at 0% busy while its actors work on a long clip (models loading, a 500-step
inversion, a chain of windows). Each pool actor tells a small board when a call starts and ends (fire
and forget: the actor never waits on it); the progress line asks the board. Durations are measured on
the board's clock, so actors on other machines need no synchronised clocks.
"""

from __future__ import annotations

import time
import uuid
from typing import Any


class BusyBoard:
    """A Ray actor (no CPU, on the driver's node): per pool, seconds of finished calls plus the time the
    running ones have run so far. A call of an actor that died mid-call counts until the run ends."""

    def __init__(self) -> None:
        self.finished: dict[str, float] = {}
        self.running: dict[str, tuple[str, float]] = {}  # call token -> (pool, started)

    def start(self, pool: str, token: str) -> None:
        self.running[token] = (pool, time.monotonic())

    def end(self, token: str) -> None:
        pool, started = self.running.pop(token, ("", 0.0))
        if pool:
            self.finished[pool] = self.finished.get(pool, 0.0) + time.monotonic() - started

    def seconds(self) -> dict[str, float]:
        now, out = time.monotonic(), dict(self.finished)
        for pool, started in self.running.values():
            out[pool] = out.get(pool, 0.0) + now - started
        return out


def timed(stage: type, pool: str) -> type:
    """`stage` (a map_batches class) reporting each call to the run's board, given as `busy_board` (None:
    no reports). A subclass of the same name, so Ray's actors keep theirs (MapBatches(EditorPool))."""

    class Timed(stage):
        def __init__(self, *args: Any, busy_board: Any = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._busy_board = busy_board

        def __call__(self, batch: Any) -> Any:
            if self._busy_board is None:
                return super().__call__(batch)
            token = uuid.uuid4().hex
            self._busy_board.start.remote(pool, token)
            try:
                return super().__call__(batch)
            finally:
                self._busy_board.end.remote(token)

    Timed.__name__ = Timed.__qualname__ = stage.__name__
    return Timed


def start_board() -> Any:
    """The run's board, an actor on this (the driver's) node: it goes when the driver does."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(BusyBoard).options(num_cpus=0, scheduling_strategy=here).remote()


def board_seconds(board: Any, timeout: float = 2.0) -> dict[str, float] | None:
    """The board's seconds, or None when it does not answer in time (the line then uses rows alone)."""
    import ray

    try:
        return ray.get(board.seconds.remote(), timeout=timeout)
    except Exception:  # noqa: BLE001 - a progress line never fails a job
        return None
