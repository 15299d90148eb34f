"""A long clip beside a short one in a Ray job (`frames: all`): `invert` stores each window's inversion,
a run killed in the middle of the long clip's chain leaves no trace of it, and the rerun makes every
pair once, the long clip exactly as the chained edit of the same windows (from its first window: a
chain is not resumed mid-way, its stored window inversions are reused)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from cli_runner import run_cli
from conftest import TINY_MODEL, moving_clip
from shards import mp4, png, read_tar, recolor, write_shard

from anyv2v_batch import EditSettings, InversionSettings, edit, invert
from anyv2v_batch.chain import ChainRequest, edit_chains
from anyv2v_batch.cli import main
from anyv2v_batch.operators.actor_base import FAULT_POINTS
from anyv2v_batch.operators.work import derive_seed
from anyv2v_batch.pnp_edit import prepare_first_frame
from anyv2v_batch.scores import Scorer
from anyv2v_batch.video_io import encode_mp4, read_video
from anyv2v_batch.windows import plan_windows, window_seed

PATIENCE_S = 900  # a deadline for a test that has failed, never a pace the test relies on
LENGTHS = {"long": 40, "short": 12}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_clip):
    root = tmp_path_factory.mktemp("long-job")
    clips = {key: moving_clip(n, 32, 32, seed=n) for key, n in LENGTHS.items()}
    members = []
    for key, clip in clips.items():
        members += [(f"{key}.mp4", mp4(clip)), (f"{key}.txt", b"a car"), (f"{key}.edited.png", png(recolor(clip[0])))]
    write_shard(root / "shards" / "000000.tar", members)
    job = {
        "input": str(root / "shards" / "000000.tar"),
        "output": str(root / "out"),
        "inversions": str(root / "inversions"),
        "model": str(TINY_MODEL),
        "device": "cpu",
        "clip": {"frames": "all", "fps": 8, "width": 32, "height": 32},
        "window": {"max_frames": 16},
        "inversion": {"steps": 2},  # windows, resume and scores do not depend on the steps
        "edit": {"steps": 2},
        "share_source": False,
        "evaluate": {"mode": "score", "model": str(tiny_clip)},
        "variants": [{"name": "red", "prompt": "a red car"}],
        "pools": {p: {"num_cpus": 0.5} for p in ("decode", "editor", "inversion", "sampler", "scorer", "encode")},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    return root, clips


def run(argv) -> int:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
        raise SystemExit(0)
    return e.value.code


def kill_tree(process: subprocess.Popen) -> None:
    """The driver and everything it started (its local Ray)."""
    try:
        tree = psutil.Process(process.pid)
        victims = [*tree.children(recursive=True), tree]
    except psutil.NoSuchProcess:
        victims = []
    for p in victims:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()


def expected_outputs(root: Path, clips: dict[str, np.ndarray], tiny_backbone) -> dict[str, np.ndarray]:
    """What the job must make, by the engine alone: the long clip chained over its windows, the short one
    edited whole. On one thread, as the job's actors (torch's CPU kernels round by their thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _expected_outputs(root, clips, tiny_backbone)
    finally:
        torch.set_num_threads(threads)


def _expected_outputs(root: Path, clips: dict[str, np.ndarray], tiny_backbone) -> dict[str, np.ndarray]:
    out = {}
    for key, n in LENGTHS.items():
        source = root / f"{key}-source.mp4"
        source.write_bytes(mp4(clips[key]))
        frames = read_video(source, n, 8, 32, 32).frames
        edited = prepare_first_frame(recolor(clips[key][0]), 32, 32)
        settings = EditSettings(prompt="a red car", steps=2, seed=derive_seed(8888, key, "red"))
        plan = plan_windows(n, 16, 1, 16)
        if len(plan) == 1:
            inversion = invert(tiny_backbone, frames, InversionSettings(steps=2))
            out[key] = edit(tiny_backbone, inversion, edited, settings).frames
            continue
        chain = edit_chains(
            tiny_backbone, plan,
            lambda w, frames=frames: invert(tiny_backbone, frames[w.start : w.end], InversionSettings(steps=2)),
            [ChainRequest(edited, settings)],
        )  # fmt: skip
        out[key] = chain[0].frames
    return out


def test_a_long_clip_beside_a_short_one_killed_mid_chain_and_rerun(ray_local, inputs, tiny_backbone, tiny_clip):
    root, clips = inputs
    job = root / "job.yaml"

    # 1. `invert`: every window of the long clip is its own stored inversion
    assert run(["invert", job, "-q"]) == 0
    stored = read_tar(root / "inversions" / "shards" / "000000.tar")
    names = sorted(n for n in stored if n.endswith(".safetensors"))
    assert [n.split(".")[0] for n in names].count("long") == 3 and [n.split(".")[0] for n in names].count("short") == 1
    assert sum("-at15." in n for n in names) == 1 and sum("-at24." in n for n in names) == 1

    # 2. a run killed while the long clip's chain is at its second window
    gate = root / "gate"
    gate.mkdir()
    (gate / "long.window1.go").write_text("")
    env = {**os.environ, FAULT_POINTS: str(gate), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "anyv2v_batch.cli", "run", str(job), "--set", "ray.num_cpus=2", "-q"]
    driver = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + PATIENCE_S
    try:
        while not (gate / "long.window2.arrived").exists():
            assert driver.poll() is None, driver.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the chain never reached its second window"
            time.sleep(0.1)
    finally:
        kill_tree(driver)
    assert not (root / "out" / "metadata").exists()

    # 3. the rerun makes each pair once; the long clip from its first window, from the stored inversions
    assert run(["run", job, "-q"]) == 0
    rows = {r["key"]: r for r in pq.read_table(root / "out" / "metadata").to_pylist()}
    assert sorted(rows) == ["long", "short"] and all(r["status"] == "ok" for r in rows.values())
    assert len(pq.read_table(root / "out" / "metadata")) == 2
    long, short = rows["long"], rows["short"]
    assert (long["frames"], long["windows"], json.loads(long["window_plan"])) == (40, 3, [[0, 16], [15, 16], [24, 16]])
    assert (short["frames"], short["windows"], json.loads(short["window_plan"])) == (12, 1, [[0, 12]])
    assert (long["source_seconds"], long["output_seconds"], long["truncated"]) == (5.0, 5.0, False)
    assert (short["source_seconds"], short["output_seconds"]) == (1.5, 1.5)
    seed = derive_seed(8888, "long", "red")
    assert long["window_seeds"] == [seed, window_seed(seed, 1), window_seed(seed, 2)]
    assert len(long["seam_steps"]) == 2 and long["seam_step_max"] == pytest.approx(max(long["seam_steps"]))
    assert short["seam_steps"] == [] and short["seam_step_max"] is None
    assert long["inversion_source"] == "stored" and short["inversion_source"] == "stored"
    record = json.loads(long["settings"])
    assert record["clip"]["frames"] == "all" and [w["start"] for w in record["windows"]] == [0, 15, 24]

    written = read_tar(root / "out" / "shards" / "000000.tar")
    expected = expected_outputs(root, clips, tiny_backbone)
    for key in LENGTHS:
        assert len(expected[key]) == LENGTHS[key]
        assert written[f"{key}.red.mp4"] == encode_mp4(expected[key], 8), key  # the same frames, bit for bit

    # scored as written, the whole clip against the whole source; the edit hold of each window too
    scorer = Scorer(str(tiny_clip), device="cpu")
    source = read_video(root / "long-source.mp4", 40, 8, 32, 32).frames
    output = read_video(io.BytesIO(written["long.red.mp4"]), 40, 8, 32, 32).frames
    edited = prepare_first_frame(recolor(clips["long"][0]), 32, 32)
    windows = [[(0, 16), (15, 31), (24, 40)]]
    scores = scorer.score_many([(output, source, edited, "a red car")], windows)[0]
    assert long["score_error"] == "" and long["score_edit_hold"] == pytest.approx(scores["score_edit_hold"], abs=1e-6)
    assert long["window_edit_hold"] == pytest.approx(scores["window_edit_hold"], abs=1e-6)
    for (a, b), hold in zip(windows[0], scores["window_edit_hold"], strict=True):  # a window's own edit hold
        alone = scorer.score(output[a:b], source[a:b], edited, "a red car")["score_edit_hold"]
        assert hold == pytest.approx(alone, abs=1e-6)
    assert short["window_edit_hold"] == [] and short["score_edit_hold"] is not None

    # 4. a damaged window entry of the store: `verify --repair` makes that window's inversion again, alone,
    # from its row's settings, to the bytes `invert` first wrote (windows, timesteps and all)
    store = root / "inversions" / "shards" / "000000.tar"
    intact = store.read_bytes()
    middle = next(n for n in names if n.startswith("long.") and "-at15." in n)
    data = bytearray(intact)
    data[intact.index(middle.encode()) + 512 + 1000] ^= 1  # inside the entry (past its tar header)
    store.write_bytes(bytes(data))
    assert run(["verify", "--inversions", root / "inversions", "-q"]) == 1
    code, said = run_cli(["verify", "--inversions", root / "inversions", "--repair", "-q"])
    assert code == 0 and any("repaired: 1 damaged inversions made again, 0 dropped" in line for line in said), said
    assert store.read_bytes() == intact
