"""`anyv2v-batch demo`: a newcomer's first run, offline and on a CPU, through the same code as a real job.

    world clips -> folder (mp4, edited first frame, captions) -> pack -> shards -> run (the model organism,
    scored) -> output shards + Parquet -> report

The clips come from the synthetic world (`anyv2v_batch.world`); each one's first frame is edited by
recolouring one shape (a perfect first-frame edit, given to the `provided` editor), and the job propagates
that edit with AnyV2V on the model organism (`anyv2v_batch.organism`): the new colour should follow the
shape wherever the source moves it. Everything the demo writes lies under its output folder, with the job
file, so that each step can be rerun by hand (`anyv2v-batch run OUT/job.yaml`, `anyv2v-batch report ...`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from anyv2v_batch.errors import AnyV2VError

SEED = 7 * 10**8  # world seeds far from every one the organism was trained on (tools/organism/)
FRAMES, SIZE, FPS = 8, 32, 8.0
# (motion, shapes) of the demo's clips in turn: each kind of motion the world has, one shape (the organism's
# last training was on one-shape clips: tools/organism/, benchmarks/RESULTS.md)
KINDS = (("moves", 1), ("bounces", 1), ("pan", 1))


@dataclasses.dataclass
class DemoSummary:
    folder: Path
    clips: int
    ok: int
    errors: int
    seconds: float
    report: Path

    def line(self) -> str:
        return (
            f"demo: {self.clips} world clips edited ({self.ok} ok, {self.errors} errors) in {self.seconds:.0f} s; "
            f"open {self.report / 'index.html'}"
        )


def demo_job(folder: Path, model: str, clip_model: str) -> dict[str, Any]:
    """The demo's job, as a job file holds it: the organism, 32x32 clips of 8 frames, scored."""
    return {
        "input": str(folder / "shards" / "000000.tar"),
        "output": str(folder / "output"),
        "backbone": "i2vgen-xl",
        "model": model,
        "device": "cpu",
        "clip": {"frames": FRAMES, "fps": FPS, "width": SIZE, "height": SIZE},
        "inversion": {"steps": 25},
        "edit": {"steps": 25, "prompt": "{caption}"},
        "editor": "provided",
        "variants": [{"name": "recolour"}],
        "evaluate": {"mode": "score", "model": clip_model},
        "pools": {name: {"num_cpus": 0.5} for name in ("decode", "editor", "inversion", "sampler", "encode")},
    }


def write_world_folder(folder: Path, clips: int, seed: int = SEED) -> list[dict[str, Any]]:
    """`clips` world clips as `pack` reads a folder: `<key>.mp4`, `<key>.edited.png` (shape 0 recoloured
    in the first frame) and `captions.json` (the edited caption, the source's, and the ground truth)."""
    from anyv2v_batch.video_io import atomic_write_bytes, encode_mp4, encode_png
    from anyv2v_batch.world import make_clip, recoloured, unused_colour

    folder.mkdir(parents=True, exist_ok=True)
    records = {}
    for i in range(clips):
        motion, shapes = KINDS[i % len(KINDS)]
        clip = make_clip(seed + i, frames=FRAMES, width=SIZE, height=SIZE, motion=motion, shapes=shapes)
        colour = unused_colour(clip)
        key = f"world{i:03d}"
        atomic_write_bytes(folder / f"{key}.mp4", encode_mp4(clip.frames, FPS))
        atomic_write_bytes(folder / f"{key}.edited.png", encode_png(recoloured(clip, 0, colour)))
        old = clip.shapes[0].colour
        records[key] = {
            "caption": clip.caption.replace(old, colour, 1),  # the prompt: what the edited clip shows
            "source_caption": clip.caption,
            "edit": f"the {old} {clip.shapes[0].kind} becomes {colour}",
            "new_colour": colour,
            "world": clip.record(),
        }
    atomic_write_bytes(folder / "captions.json", json.dumps(records, indent=1).encode())
    return list(records.values())


def check_demo_folder(folder: Path) -> None:
    """Refused before any work: a folder that holds anything (the demo never writes over a user's files)."""
    from anyv2v_batch.video_io import check_writable_path

    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise AnyV2VError(f"demo folder {str(folder)!r} is not empty; name a new or empty folder with -o")
    check_writable_path(folder / "job.yaml", "demo folder")


def run_demo(folder: Path, clips: int = 2, log: Callable[[str], None] = lambda m: None, display=None) -> DemoSummary:
    """Write world clips, pack them, run the job on the model organism with the scorer, write the report."""
    import yaml

    from anyv2v_batch.job import load_job
    from anyv2v_batch.organism import I2VGEN_XL_WORLD, WORLD_CLIP, organism_model
    from anyv2v_batch.pack import pack_folder
    from anyv2v_batch.pipelines.anyv2v_job import run_job
    from anyv2v_batch.pipelines.report import write_report

    if not 1 <= clips <= 64:
        raise AnyV2VError(f"--clips must be 1 to 64, got {clips}")
    folder = folder.absolute()
    check_demo_folder(folder)
    job_fields = demo_job(folder, organism_model(I2VGEN_XL_WORLD), organism_model(WORLD_CLIP))
    started = time.perf_counter()
    write_world_folder(folder / "videos", clips)
    packed = pack_folder(folder / "videos", folder / "shards", captions=folder / "videos" / "captions.json")
    log(packed.line())
    job_file = folder / "job.yaml"
    header = "# The demo's job: `anyv2v-batch run` reruns it (nothing left to do), or edit it and run it elsewhere.\n"
    job_file.write_text(header + yaml.safe_dump(job_fields, sort_keys=False))
    summary = run_job(load_job(job_file), log=log, display=display)
    log(summary.line())
    report = folder / "report"
    log(write_report(str(folder / "output"), str(report), 200, 0, log=log).line())
    return DemoSummary(folder, clips, summary.ok, summary.errors, time.perf_counter() - started, report)
