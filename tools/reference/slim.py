"""Keep of a recording only what the tests compare, so the tracked tree stays small enough to travel to a
GPU machine (under 48 MiB in all).

The recorders save every step of the official run. The tests compare:

- I2VGen-XL cases (`run_official_i2vgen_xl.py` -> `tests/fixtures/i2vgen-xl-cases/case-*`): our inversion at
  the first, a middle and the last inversion timestep, and the edit from the recorded inverted latents, which
  reads them at the sampling timesteps. So the inverted latents are kept at the sampling schedule's timesteps
  and at those three; the rest (450 of case-d's 500) go. Every other tensor stays.
- AnyDoor cases (`anydoor/record_anydoor.py` -> `tests/fixtures/anydoor-reference/case-*`): the networks and
  the update at the first, middle and last step (the recorder keeps the networks' outputs only there), so a
  step's input is kept at those steps and the one after each.

The committed fixtures are the recorders' outputs put through this script; it is idempotent and writes the
same tensors, bit for bit, for every key it keeps.

    python tools/reference/slim.py tests/fixtures/i2vgen-xl-cases/case-* tests/fixtures/anydoor-reference/case-*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def kept_inversion_timesteps(inversion: list[int], sampling: list[int]) -> list[int]:
    """The inverted latents a slim I2VGen-XL recording keeps: every sampling timestep the inversion holds,
    and the inversion's first, middle and last."""
    ends = {inversion[0], inversion[len(inversion) // 2], inversion[-1]}
    return sorted(ends | (set(sampling) & set(inversion)))


def kept_anydoor_steps(steps_run: int) -> list[int]:
    """The steps whose input a slim AnyDoor recording keeps: first, middle, last, and the step after each."""
    recorded = {0, steps_run // 2, steps_run - 1}
    return sorted({i for r in recorded for i in (r, r + 1) if i < steps_run})


def slim_i2vgen_case(folder: Path) -> tuple[int, int]:
    case = json.loads((folder / "case.json").read_text())
    ref = load_file(str(folder / "reference.safetensors"))
    kept = kept_inversion_timesteps(case["inversion_timesteps"], case["edit_timesteps"])
    slim = {k: v for k, v in ref.items() if not k.startswith("inverted/") or int(k.split("/")[1]) in kept}
    case["inverted_timesteps"] = kept  # the inverted latents kept (inversion_timesteps: every one it made)
    case["tensors"] = {k: list(v.shape) for k, v in slim.items()}
    save_file(slim, str(folder / "reference.safetensors"))
    (folder / "case.json").write_text(json.dumps(case, indent=1))
    return len(ref), len(slim)


def slim_anydoor_case(folder: Path) -> tuple[int, int]:
    stages = load_file(str(folder / "stages.safetensors"))
    kept = kept_anydoor_steps(len(stages["timesteps"]))
    slim = {k: v for k, v in stages.items() if not k.startswith("x_in.") or int(k.split(".")[1]) in kept}
    save_file(slim, str(folder / "stages.safetensors"))
    return len(stages), len(slim)


def main(folders: list[str]) -> None:
    for name in folders:
        folder = Path(name)
        if (folder / "reference.safetensors").is_file():
            before, after = slim_i2vgen_case(folder)
        elif (folder / "stages.safetensors").is_file():
            before, after = slim_anydoor_case(folder)
        else:
            raise SystemExit(f"{folder}: neither an I2VGen-XL case nor an AnyDoor case")
        print(f"{folder}: {before} -> {after} tensors")


if __name__ == "__main__":
    main(sys.argv[1:])
