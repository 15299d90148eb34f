"""Copy a trained organism folder into the package (`anyv2v_batch/organism/<name>/`), its weights in float16.

    python tools/organism/export.py --trained OUT [--name i2vgen-xl-world | wan2.2-ti2v-world]

float16 halves what the tracked tree carries (the lean-suite limit is 48 MiB); the backbone loads the
weights in the dtype a job asks for (float32 on a CPU), so only their rounding (about 5e-4 relative)
differs from the trained float32 values, and every test measures the exported folder. Config files,
the tokenizer and `training.csv` are copied as they are; each stage's step count and the commands that
trained it (`commands.txt`, one line a run) go into `training.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parents[1] / "anyv2v_batch" / "organism"


def stage_steps(log: Path) -> dict[str, int]:
    """{stage: steps trained} from a training.csv (step,stage,loss,seconds; resumed runs append)."""
    steps: dict[str, int] = {}
    for row in log.read_text().splitlines()[1:] if log.exists() else []:
        step, stage = row.split(",")[:2]
        steps[stage] = max(steps.get(stage, 0), int(step) + 1)
    return steps


def export(trained: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    left = shutil.ignore_patterns("*.tmp", "trained_steps.json", "commands.txt", "latent-pool.safetensors")
    shutil.copytree(trained, tmp, ignore=left)
    for weights in tmp.rglob("*.safetensors"):
        tensors = load_file(str(weights))
        half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
        save_file({k: v.contiguous() for k, v in half.items()}, str(weights))
    record = {"steps": stage_steps(trained / "training.csv"), "weights": "float16"}
    for denoiser in ("unet", "transformer"):  # the checkpoint's own count (the log has a row every few steps)
        checkpoint = trained / denoiser / "trained_steps.json"
        if checkpoint.exists():
            record["steps"][denoiser] = json.loads(checkpoint.read_text())["steps"]
    commands = trained / "commands.txt"
    if commands.exists():
        record["commands"] = commands.read_text().splitlines()
    (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trained", type=Path, required=True)
    parser.add_argument("--name", default="i2vgen-xl-world")
    args = parser.parse_args()
    torch.set_num_threads(1)
    export(args.trained, PACKAGE / args.name)
    print(f"exported {args.trained} -> {PACKAGE / args.name}", file=sys.stderr)


if __name__ == "__main__":
    main()
