"""What every model-holding actor of the stage does on start: take its CPU share, quiet the libraries."""

from __future__ import annotations

import os


def start_worker(num_cpus: float) -> None:
    """Use this worker's CPU share for torch's threads: several processes with torch's default thread
    count on one machine oversubscribe its cores and run many times slower."""
    import torch

    from anyv2v_batch.loading import quiet_libraries

    threads = max(1, int(num_cpus))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    quiet_libraries()


def worker_device(device: str) -> str:
    """'auto' inside an actor: the GPU Ray assigned to it, else the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
