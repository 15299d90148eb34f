"""Progress while a job runs: one line on the terminal and `<output>/_progress.json`.

The driver hands every status row (operators/write.py `write_part`) to `JobProgress.add`. A row is
`error` (status error), `filtered` (status ok, `passed` False, and failing pairs are routed aside:
`routes_failures`) or `ok`; the three add up to `done`. A missing `passed` is not filtered.
Busy shares are the pools' utilisation so far (pipelines/balance.py), from the seconds the rows
carry under each pool's name: per row, but inversion seconds once per clip (a clip's variants share
one inversion, and each of their rows repeats its seconds).

The line is redrawn in place on a terminal (carriage return, cut to the terminal's width) and
written as a plain line every `every` seconds otherwise (a cluster log, `ray job logs`), plus once
at the end. The JSON file is rewritten atomically at the start, at most every `json_every` seconds
and at the end with the final state, so a scheduler or a person can watch a job from its bucket.
Time comes from `clock`, so tests drive it by hand.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

from anyv2v_batch.operators.storage import atomic_write, join
from anyv2v_batch.pipelines.balance import utilisation

PROGRESS_FILE = "_progress.json"  # beside _lock.json: a run's bookkeeping, never an output or an input


@dataclass
class ProgressDisplay:
    """Where and how often the line is shown: `stream` None prints nothing (the JSON is still written);
    `tty` None asks the stream."""

    stream: TextIO | None = None
    every: float = 30.0
    tty: bool | None = None
    width: int | None = None  # a terminal's width (None: asked at each redraw)
    clock: Callable[[], float] = time.time


def duration(seconds: float) -> str:
    """45s, 3m20s, 2h05m."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


class JobProgress:
    """Counts, rate, ETA and busy shares of a run, shown as a line and kept in `<output>/_progress.json`.

    `total` is the number of status rows the run will produce (counted before work starts);
    `output` None writes no file."""

    def __init__(
        self,
        total: int,
        output: str | None,
        pool_sizes: dict[str, int],
        unit: str = "pairs",
        done_before: int = 0,
        display: ProgressDisplay | None = None,
        json_every: float = 5.0,
        redraw_every: float = 1.0,
        routes_failures: bool = True,
        live_busy: Callable[[], dict[str, float] | None] | None = None,
    ):
        self.display = display or ProgressDisplay()
        self.clock = self.display.clock
        self.total, self.unit, self.done_before = total, unit, done_before
        self.pool_sizes = dict(pool_sizes)
        self.url = join(output, PROGRESS_FILE) if output is not None else None
        self.json_every, self.redraw_every = json_every, redraw_every
        self.routes_failures = routes_failures  # False (scores flagged, not routed): such rows stay ok
        stream = self.display.stream
        self.tty = self.display.tty if self.display.tty is not None else bool(stream and stream.isatty())
        self.ok = self.error = self.filtered = 0
        self.busy = dict.fromkeys(pool_sizes, 0.0)
        # the pools' busy seconds with their running calls (operators/busy.py), asked at each report: the
        # shares move while actors work, not only when rows finish
        self.live_busy, self.live = live_busy, {}
        self._clips: set[tuple] = set()  # clips whose inversion seconds are counted
        self.state, self.failure = "running", ""
        self.started = self.clock()
        self.finished: float | None = None
        self._last_line = self._last_json = self.started
        self._json_problem = ""
        self._lock = threading.Lock()

    @property
    def done(self) -> int:
        return self.ok + self.error + self.filtered

    # ---- feeding

    def start(self) -> None:
        """Write the first JSON (total known, nothing done) and, on a terminal, draw the line."""
        with self._lock:
            now = self.clock()
            self._write_json(now)
            if self.tty:
                self._draw(now)

    def add(self, row: dict[str, Any]) -> None:
        """One status row of write_part: counts and busy seconds, then the line / JSON if due."""
        with self._lock:
            if row["status"] == "error":
                self.error += 1
            elif row.get("passed") is False and self.routes_failures:
                self.filtered += 1
            else:
                self.ok += 1
            # `invert` counts a clip once before work, and each window of a long clip once it is planned
            self.total = max(self.total, self.done)
            seconds = json.loads(row["seconds"]) if isinstance(row["seconds"], str) else row["seconds"]
            for pool in self.busy:
                if pool != "inversion":
                    self.busy[pool] += seconds.get(pool, 0.0)
            clip = (row["shard_id"], row["key"], row["group"])
            if "inversion" in self.busy and clip not in self._clips:
                self._clips.add(clip)
                self.busy["inversion"] += seconds.get("inversion", 0.0)
            self._report(self.clock())

    def tick(self) -> None:
        """Show the line / write the JSON if due although no row came (a long clip, models loading)."""
        live = self.live_busy() if self.live_busy is not None else None  # asked outside the lock
        with self._lock:
            self.live = live if live is not None else self.live
            if self.finished is None:
                self._report(self.clock())

    def finish(self, state: str = "finished", failure: str = "") -> None:
        """The final state ("finished" or "failed", with why): the last line and the last JSON."""
        with self._lock:
            now = self.clock()
            self.state, self.failure, self.finished = state, failure, now
            self._write_json(now)
            if self.tty:
                self._draw(now)
                self._emit("\n")
            else:
                self._emit(self.line(now) + "\n")

    @contextlib.contextmanager
    def ticking(self, interval: float = 1.0) -> Iterator[None]:
        """A thread calling `tick` every `interval` real seconds while the block runs."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(interval):
                self.tick()

        thread = threading.Thread(target=loop, name="job-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """start, tick while the block runs, then finish: "finished", or "failed" with why if it raised."""
        from anyv2v_batch.operators.work import one_line

        self.start()
        try:
            with self.ticking():
                yield
        except BaseException as e:
            self.finish("failed", one_line(e) if isinstance(e, Exception) else type(e).__name__)
            raise
        self.finish()

    # ---- numbers

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.started)

    def rate(self, now: float) -> float:
        """Rows per second since the run started."""
        elapsed = self.elapsed(now)
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta(self, now: float) -> float | None:
        """Seconds left at the rate so far (None while nothing is done)."""
        left = max(0, self.total - self.done)
        if left == 0:
            return 0.0
        return left * self.elapsed(now) / self.done if self.done else None  # left / rate

    def busy_seconds(self) -> dict[str, float]:
        """Each pool's busy seconds: from the finished rows, or the board's where it knows more."""
        return {pool: max(seconds, self.live.get(pool, 0.0)) for pool, seconds in self.busy.items()}

    def busy_share(self, now: float) -> dict[str, float]:
        return utilisation(self.busy_seconds(), self.elapsed(now), self.pool_sizes)

    def snapshot(self, now: float) -> dict[str, Any]:
        """What `_progress.json` holds."""
        return {
            "state": self.state,
            "failure": self.failure,
            "unit": self.unit,
            "started_at": _timestamp(self.started),
            "updated_at": _timestamp(now),
            "finished_at": _timestamp(self.finished) if self.finished is not None else None,
            "elapsed_seconds": self.elapsed(now),
            "total": self.total,
            "done": self.done,
            "ok": self.ok,
            "error": self.error,
            "filtered": self.filtered,
            "done_before": self.done_before,
            "rate": self.rate(now),
            "eta_seconds": self.eta(now),
            "busy_share": self.busy_share(now),
            "pool_sizes": self.pool_sizes,
        }

    def line(self, now: float) -> str:
        """progress: 6/14 pairs (42%), 4 ok, 1 error, 1 filtered; 1080 pairs/h, ETA 26s; busy ...; 20s"""
        percent = 100 * self.done // self.total if self.total else 100
        rate = self.rate(now)
        speed = f"{rate:.1f} {self.unit}/s" if rate >= 1 else f"{rate * 3600:.0f} {self.unit}/h"
        eta = self.eta(now)
        busy = ", ".join(f"{name} {share:.0%}" for name, share in self.busy_share(now).items())
        return (
            f"progress: {self.done}/{self.total} {self.unit} ({percent}%), {self.ok} ok, {self.error} error, "
            f"{self.filtered} filtered; {speed}, ETA {duration(eta) if eta is not None else '?'}; busy {busy}; "
            f"{duration(self.elapsed(now))}" + (f"; {self.state}" if self.state != "running" else "")
        )

    # ---- output

    def _report(self, now: float) -> None:
        if self.tty:
            if now - self._last_line >= self.redraw_every:
                self._draw(now)
        elif now - self._last_line >= self.display.every:
            self._last_line = now
            self._emit(self.line(now) + "\n")
        if now - self._last_json >= self.json_every:
            self._write_json(now)

    def _draw(self, now: float) -> None:
        """The line in place: back to the line's start, cut to the terminal, the rest of a longer
        earlier line blanked."""
        self._last_line = now
        width = (self.display.width or shutil.get_terminal_size((120, 24)).columns) - 1
        self._emit("\r" + self.line(now)[:width].ljust(width))

    def _emit(self, text: str) -> None:
        stream = self.display.stream
        if stream is not None:
            stream.write(text)
            stream.flush()

    def _write_json(self, now: float) -> None:
        self._last_json = now
        if self.url is None:
            return
        try:
            atomic_write(self.url, json.dumps(self.snapshot(now), indent=1).encode())
        except Exception as e:  # noqa: BLE001 - watching a job must never fail it; said once
            if not self._json_problem:
                self._json_problem = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                self._emit(f"progress: cannot write {self.url}: {self._json_problem}\n")
