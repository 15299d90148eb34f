"""Print the relative error of every stage for every reference case, and the CPU seconds.

    python tools/reference/report.py

The same computation the tests assert on (tests/reference_stages.py), as a table for notes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

from conftest import CASE_DIRS, TINY_MODEL, ReferenceCase  # noqa: E402
from reference_stages import stage_errors  # noqa: E402

from anyv2v_batch import load_backbone  # noqa: E402
from anyv2v_batch.loading import quiet_libraries  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    quiet_libraries()
    backbone = load_backbone("i2vgen-xl", str(TINY_MODEL), device="cpu", dtype="float32")
    results = {name: stage_errors(backbone, ReferenceCase(path)) for name, path in sorted(CASE_DIRS.items())}
    names = list(results)
    stages = list(next(iter(results.values()))["errors"])
    print("| stage | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for stage in stages:
        print(f"| {stage} | " + " | ".join(f"{results[n]['errors'][stage]:.1e}" for n in names) + " |")
    for what in ("inversion", "edit"):
        print(f"| CPU seconds, {what} | " + " | ".join(f"{results[n]['seconds'][what]:.2f}" for n in names) + " |")


if __name__ == "__main__":
    main()
