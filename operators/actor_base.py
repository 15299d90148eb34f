"""What every model-holding actor of the stage shares: its CPU share, its device, and how it survives
running out of GPU memory."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

_threads = 1  # this worker's CPU share, for torch's threads


def start_worker(num_cpus: float) -> None:
    """Use this worker's CPU share for torch's threads: several processes with torch's default thread
    count on one machine oversubscribe its cores and run many times slower. Imports nothing: an actor
    that loads no model (the `provided` editor, the window gather) never pays for torch's libraries."""
    global _threads
    _threads = max(1, int(num_cpus))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(_threads)


def prepare_models() -> None:
    """Before a worker loads models: torch on the worker's CPU share, the libraries' logs quiet."""
    import torch

    from anyv2v_batch.loading import quiet_libraries

    torch.set_num_threads(_threads)
    quiet_libraries()


def worker_device(device: str) -> str:
    """'auto' inside an actor: the GPU Ray assigned to it, else the CPU."""
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def is_out_of_memory(e: BaseException) -> bool:
    import torch

    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(e).lower()


def free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def isolate_failures(
    items: Sequence[T], run: Callable[[Sequence[T]], None], fail: Callable[[T, BaseException], None]
) -> None:
    """run(items) together; if that fails (out of memory above all), run each item alone, so that an
    item that fails alone fails alone: fail(item, error)."""
    try:
        run(items)
        return
    except Exception as e:  # noqa: BLE001
        free_memory()
        if len(items) == 1:
            fail(items[0], e)
            return
    for item in items:
        try:
            run([item])
        except Exception as e:  # noqa: BLE001
            if is_out_of_memory(e):
                free_memory()
            fail(item, e)


def load_job_backbones(job, compile: bool = False) -> dict:
    """Every (backbone, model) the job's variants use, loaded once per actor: {(name, model): Backbone}.
    Loaded up front, so missing weights fail the actor at start and its memory use is known."""
    from anyv2v_batch.backbones import load_backbone

    prepare_models()
    device = worker_device(job.device)
    loaded = {}
    for name, model in job.models():
        backbone = load_backbone(name, model, device=device, dtype=job.dtype, variant=job.weights_variant)
        if compile:
            backbone.compile()
        loaded[(name, model)] = backbone
    return loaded


FAULT_POINTS = "ANYV2V_BATCH_FAULT_POINTS"


def fault_point(name: str) -> None:
    """Where the fault tests hold a job (a no-op unless $ANYV2V_BATCH_FAULT_POINTS names a folder): the
    actor reports `<name>.arrived` there and waits until the test writes `<name>.go` (or kills it)."""
    folder = os.environ.get(FAULT_POINTS)
    if not folder:
        return
    import time
    from pathlib import Path

    (Path(folder) / f"{name}.arrived").write_text(str(os.getpid()))
    while not (Path(folder) / f"{name}.go").exists():
        time.sleep(0.05)  # a barrier: released by the test, never by the clock
