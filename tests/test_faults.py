"""Faults on a multi-node Ray cluster on this machine (a head and two worker nodes, `ray.cluster_utils`):
an actor killed mid-job, a node removed mid-job, the driver killed and the job rerun. In each case
every (clip, variant) ends in the output exactly once, with the same bytes as an undisturbed run.

No fault waits on the clock. Every job here edits its first frames with the `gate` editor, a plug-in
installed for these tests: it returns the sample's own `<key>.edited.png` (as `provided` does), but
first reports its arrival (key, pid, node) in a folder and waits there until the test lets it pass.
The test holds the job at a known point (one input shard past the editor, the first sample of the
other blocked in the editor actor), does the fault there, and then opens the gate."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TINY_MODEL, moving_clip, stop_shared_ray
from gate import PATIENCE_S, Gate, wait_until
from shards import mp4, png, read_tar, recolor, write_shard

from anyv2v_batch.job import load_job
from anyv2v_batch.operators.write import read_part

# two clips per shard are enough: each fault needs one shard past the editor and one held in it
CLIPS_PER_SHARD, SHARDS = 2, 2
EXPECTED_ROWS = sorted(
    (f"clip{s}{c}", v, "ok") for s in range(SHARDS) for c in range(CLIPS_PER_SHARD) for v in ("plain", "snow")
)


@pytest.fixture(scope="module")
def cluster(plugin_site):
    import ray
    from ray.cluster_utils import Cluster

    # the head runs no work, so whatever a test finds running is on a worker node it may remove; each
    # worker alone still fits every actor of the job
    stop_shared_ray()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=3) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    for s in range(SHARDS):
        members = []
        for c in range(CLIPS_PER_SHARD):
            key, clip = f"clip{s}{c}", moving_clip(10, 32, 32, seed=10 * s + c)
            members += [(f"{key}.mp4", mp4(clip)), (f"{key}.txt", f"a scene {c}".encode()),
                        (f"{key}.edited.png", png(recolor(clip[0])))]  # fmt: skip
        write_shard(root / "in" / f"{s:06d}.tar", members)
    return root


def job_yaml(root: Path, out: str, gate: Gate, address: str | None = None, shared: bool = True) -> Path:
    """`shared`: one model actor inverts and samples (share_model); the undisturbed run has separate pools,
    so every faulted run equal to it also shows that share_model changes no byte."""
    job = {
        "input": str(root / "in" / "*.tar"), "output": str(root / out), "model": str(TINY_MODEL), "device": "cpu",
        "clip": {"frames": 6, "width": 32, "height": 32}, "inversion": {"steps": 2}, "edit": {"steps": 2},
        "editor": {"name": "gate", "options": {"dir": str(gate.folder)}},
        "variants": [{"name": "plain", "prompt": "{caption}"}, {"name": "snow", "prompt": "{caption}, snow"}],
        "pools": {
            "decode": {"num_cpus": 0.5}, "encode": {"num_cpus": 0.5}, "editor": {"num_cpus": 0.5, "size": 1},
            "inversion": {"num_cpus": 0.5}, "sampler": {"num_cpus": 0.5},
        },
        "share_model": shared,
    }  # fmt: skip
    if address:
        job["ray"] = {"address": address}
    path = root / f"{out}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def outputs(root: Path, out: str) -> tuple[dict[str, bytes], list[tuple[str, str, str]]]:
    files = {}
    for shard in sorted((root / out / "shards").glob("*.tar")):
        files |= {f"{shard.name}/{name}": data for name, data in read_tar(shard).items()}
    rows = sorted((r["key"], r["variant"], r["status"]) for r in pq.read_table(root / out / "metadata").to_pylist())
    return files, rows


def share_rises(progress_file: Path, pool: str):
    """A condition: two of the run's progress snapshots with the same rows done, the later showing the
    pool busier."""
    first: dict[int, float] = {}

    def rose() -> bool:
        try:
            snapshot = json.loads(progress_file.read_text())
        except (OSError, ValueError):
            return False
        share = snapshot["busy_share"][pool]
        return share > first.setdefault(snapshot["done"], share) + 0.01

    return rose


def parts(root: Path, out: str) -> list[Path]:
    return list((root / out / "_parts").rglob("*.tar"))


def run_in_background(job_path: Path):
    from anyv2v_batch.pipelines.anyv2v_job import run_job

    result: dict = {}

    def target():
        try:
            result["summary"] = run_job(load_job(job_path))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            result["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def finish(thread: threading.Thread, result: dict) -> None:
    thread.join(timeout=PATIENCE_S)
    assert not thread.is_alive(), "the job did not finish"
    assert "error" not in result, result.get("error")


@pytest.fixture(scope="module")
def undisturbed(cluster, inputs, gate):
    from anyv2v_batch.pipelines.anyv2v_job import run_job

    gate.close()
    gate.open()
    summary = run_job(load_job(job_yaml(inputs, "base", gate, shared=False)))
    assert summary.ok == len(EXPECTED_ROWS)
    files, rows = outputs(inputs, "base")
    assert rows == EXPECTED_ROWS and len(files) == 3 * len(EXPECTED_ROWS)
    return files


# --- one test per fault -----------------------------------------------------------------------------


def test_an_actor_killed_mid_job_is_restarted_and_its_work_redone(inputs, gate, undisturbed):
    gate.close()
    thread, result = run_in_background(job_yaml(inputs, "killed-actor", gate))
    try:
        held = gate.hold_second_shard(thread.is_alive)
        os.kill(held["pid"], signal.SIGKILL)  # the editor actor, blocked on a sample it has not edited
    finally:
        gate.open()
    finish(thread, result)
    files, rows = outputs(inputs, "killed-actor")
    assert rows == EXPECTED_ROWS
    assert files == undisturbed
    redone_by = {a["pid"] for a in gate.arrivals().values() if a["key"] == held["key"]} - {held["pid"]}
    assert redone_by, "the held sample was not edited again by a restarted actor"


def test_a_node_removed_mid_job(cluster, inputs, gate, undisturbed):
    c, workers = cluster
    gate.close()
    thread, result = run_in_background(job_yaml(inputs, "lost-node", gate))
    try:
        held = gate.hold_second_shard(thread.is_alive)
        # the node of the editor actor blocked in the gate; never the head, which has no CPU for it
        victim = next(i for i, w in enumerate(workers) if w.node_id == held["node"])
        c.remove_node(workers[victim])
        workers[victim] = None
    finally:
        gate.open()
    try:
        finish(thread, result)
    finally:  # the next test gets two worker nodes again
        workers[:] = [w or c.add_node(num_cpus=3) for w in workers]
        c.wait_for_nodes()
    files, rows = outputs(inputs, "lost-node")
    assert rows == EXPECTED_ROWS
    assert files == undisturbed
    redone_on = {a["node"] for a in gate.arrivals().values() if a["key"] == held["key"]} - {held["node"]}
    assert redone_on, "the held sample was not edited again on another node"


def test_the_driver_killed_and_the_job_rerun(cluster, inputs, gate, undisturbed):
    c, _ = cluster
    gate.close()
    path = job_yaml(inputs, "killed-driver", gate, address=c.address)
    command = [sys.executable, "-m", "anyv2v_batch.cli", "run", str(path), "-q"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    alive = lambda: driver.poll() is None  # noqa: E731
    try:
        held = gate.hold_second_shard(alive)
        wait_until(lambda: parts(inputs, "killed-driver"), alive, "a pair of the first shard was written")
        # while the editor actor waits at the gate and no row finishes, the editor's busy share rises (its
        # running call counts); from finished rows alone it could only fall as the clock runs
        wait_until(share_rises(inputs / "killed-driver" / "_progress.json", "editor"), alive, "the share rose")
    finally:
        driver.kill()
        driver.wait()
        gate.open()
    left = parts(inputs, "killed-driver")
    assert not (inputs / "killed-driver" / "metadata").exists()
    assert held["key"] not in {read_part(str(p))[0]["key"] for p in left}  # the held clip was not done
    rerun = subprocess.run(command[:-1], capture_output=True, text=True, timeout=PATIENCE_S)
    assert rerun.returncode == 0, rerun.stderr
    done_before = int(re.search(r"(\d+) \(clip, variant\) pairs already done", rerun.stderr).group(1))
    assert len(left) <= done_before < len(EXPECTED_ROWS)  # the rerun resumed from the parts the driver left
    files, rows = outputs(inputs, "killed-driver")
    assert rows == EXPECTED_ROWS
    assert files == undisturbed
    assert json.loads(files["000000.tar/clip00.snow.json"])["prompt"] == "a scene 0, snow"
