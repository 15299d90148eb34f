"""Print the relative error of every stage for every ConsistI2V and SEINE reference case.

    python tools/reference/report_backbones.py

The same computation the tests assert on (tests/test_reference_consisti2v.py, test_reference_seine.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))

import test_reference_consisti2v as consisti2v  # noqa: E402
import test_reference_seine as seine  # noqa: E402

from anyv2v_batch import load_backbone  # noqa: E402
from anyv2v_batch.loading import quiet_libraries  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    quiet_libraries()
    for name, module, model in (
        ("consisti2v", consisti2v, "tiny-consisti2v"),
        ("seine", seine, "tiny-seine"),
    ):
        backbone = load_backbone(name, str(module.ROOT / model), device="cpu", dtype="float32")
        results = {path.name: module.stage_errors(backbone, module.Case(path))[0] for path in module.CASES}
        names = list(results)
        print(f"\n{name}\n\n| stage | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for stage in results[names[0]]:
            print(f"| {stage} | " + " | ".join(f"{results[n].get(stage, float('nan')):.1e}" for n in names) + " |")


if __name__ == "__main__":
    main()
