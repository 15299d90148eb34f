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
    """A Ray actor (no CPU, on the driver's node): per run and pool, seconds of finished calls plus the
    time the running ones have run so far. A call of an actor that died mid-call counts until the run
    ends. One board serves every run of a driver (an actor is a process: one per run would cost each run
    a worker start)."""

    def __init__(self) -> None:
        self.finished: dict[tuple[str, str], float] = {}  # (run, pool) -> seconds
        self.running: dict[str, tuple[str, str, float]] = {}  # call token -> (run, pool, started)

    def start(self, run: str, pool: str, token: str) -> None:
        self.running[token] = (run, pool, time.monotonic())

    def end(self, token: str) -> None:
        run, pool, started = self.running.pop(token, ("", "", 0.0))
        if pool:
            self.finished[(run, pool)] = self.finished.get((run, pool), 0.0) + time.monotonic() - started

    def seconds(self, run: str) -> dict[str, float]:
        now = time.monotonic()
        out = {pool: s for (r, pool), s in self.finished.items() if r == run}
        for r, pool, started in self.running.values():
            if r == run:
                out[pool] = out.get(pool, 0.0) + now - started
        return out

    def forget(self, run: str) -> None:
        """A finished run's numbers go (its calls that never ended too)."""
        self.finished = {k: v for k, v in self.finished.items() if k[0] != run}
        self.running = {t: v for t, v in self.running.items() if v[0] != run}


def timed(stage: type, pool: str) -> type:
    """`stage` (a map_batches class) reporting each call to a board, given as `busy_board` = (board, run
    id) (None: no reports). A subclass of the same name, so Ray's actors keep theirs."""

    class Timed(stage):
        def __init__(self, *args: Any, busy_board: Any = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._busy_board = busy_board

        def __call__(self, batch: Any) -> Any:
            if self._busy_board is None:
                return super().__call__(batch)
            board, run = self._busy_board
            token = uuid.uuid4().hex
            board.start.remote(run, pool, token)
            try:
                return super().__call__(batch)
            finally:
                board.end.remote(token)

    Timed.__name__ = Timed.__qualname__ = stage.__name__
    return Timed


_BOARDS: dict[str, Any] = {}  # this driver's connection (node id / job id) -> its board


def start_board() -> tuple[Any, str]:
    """(the driver's board, a new run id): the board an actor on this node, started on first use and
    kept while the driver is connected; it goes when the driver does."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    context = ray.get_runtime_context()
    # a node id is new with every Ray start: a handle from an earlier instance is never reused
    connection = f"{context.get_node_id()}/{context.get_job_id()}"
    if connection not in _BOARDS:
        here = NodeAffinitySchedulingStrategy(node_id=context.get_node_id(), soft=True)
        _BOARDS.clear()  # boards of earlier connections went with them
        _BOARDS[connection] = ray.remote(BusyBoard).options(num_cpus=0, scheduling_strategy=here).remote()
    return _BOARDS[connection], uuid.uuid4().hex


def board_seconds(busy_board: tuple[Any, str], timeout: float = 2.0) -> dict[str, float] | None:
    """The run's seconds, or None when the board does not answer in time (the line then uses rows)."""
    import ray

    board, run = busy_board
    try:
        return ray.get(board.seconds.remote(run), timeout=timeout)
    except Exception:  # noqa: BLE001 - a progress line never fails a job
        return None


def forget_run(busy_board: tuple[Any, str]) -> None:
    board, run = busy_board
    board.forget.remote(run)
