"""Faults on a multi-node Ray cluster on this machine (a head and two worker nodes, `ray.cluster_utils`):
an actor killed mid-job, a node removed mid-job, the driver killed and the job rerun. In each case
every (clip, variant) ends in the output exactly once, with the same bytes as an undisturbed run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TINY_MODEL, moving_clip
from shards import mp4, png, read_tar, recolor, write_shard

from anyv2v_batch.job import load_job

CLIPS_PER_SHARD, SHARDS = 4, 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
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


def job_yaml(root: Path, out: str, address: str | None = None) -> Path:
    job = {
        "input": str(root / "in" / "*.tar"), "output": str(root / out), "model": str(TINY_MODEL), "device": "cpu",
        "clip": {"frames": 6, "width": 32, "height": 32}, "inversion": {"steps": 25}, "edit": {"steps": 5},
        "variants": [{"name": "plain", "prompt": "{caption}"}, {"name": "snow", "prompt": "{caption}, snow"}],
        "pools": {
            "decode": {"num_cpus": 0.5}, "encode": {"num_cpus": 0.5}, "editor": {"num_cpus": 0.5},
            "inversion": {"num_cpus": 0.5, "size": 2}, "sampler": {"num_cpus": 0.5, "size": 2},
        },
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


EXPECTED_ROWS = sorted(
    (f"clip{s}{c}", v, "ok") for s in range(SHARDS) for c in range(CLIPS_PER_SHARD) for v in ("plain", "snow")
)


@pytest.fixture(scope="module")
def undisturbed(cluster, inputs):
    from anyv2v_batch.pipelines.anyv2v_job import run_job

    summary = run_job(load_job(job_yaml(inputs, "base")))
    assert summary.ok == len(EXPECTED_ROWS)
    files, rows = outputs(inputs, "base")
    assert rows == EXPECTED_ROWS and len(files) == 3 * len(EXPECTED_ROWS)
    return files


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


def wait_for_parts(root: Path, out: str, alive=lambda: True, timeout: float = 240) -> None:
    """Until the job has written its first pair (and so is well under way)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list((root / out / "_parts").rglob("*.tar")):
            return
        assert alive(), "the job ended before it was disturbed"
        time.sleep(0.1)
    raise AssertionError("the job made no progress")


def pids_of(class_fragment: str) -> list[int]:
    """Processes of live Ray actors of a class (Ray titles an actor's process `ray::<class>...`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and title.startswith("ray::") and class_fragment in title:
            pids.append(int(proc.name))
    return pids


def test_an_actor_killed_mid_job_is_restarted_and_its_work_redone(inputs, undisturbed):
    thread, result = run_in_background(job_yaml(inputs, "killed-actor"))
    wait_for_parts(inputs, "killed-actor", lambda: thread.is_alive() or result)
    # a sampler actor (or, if sampling already drained, an inversion actor) of the running job
    victims = pids_of("SamplerPool") or pids_of("InversionPool")
    assert victims and thread.is_alive()
    os.kill(victims[0], signal.SIGKILL)
    thread.join(timeout=600)
    assert "error" not in result, result.get("error")
    files, rows = outputs(inputs, "killed-actor")
    assert rows == EXPECTED_ROWS
    assert files == undisturbed


def test_a_node_removed_mid_job(cluster, inputs, undisturbed):
    import ray

    c, workers = cluster
    driver_node = ray.get_runtime_context().get_node_id()
    victim = next(i for i, w in enumerate(workers) if w.node_id != driver_node)  # not the driver's own node
    thread, result = run_in_background(job_yaml(inputs, "lost-node"))
    wait_for_parts(inputs, "lost-node", lambda: thread.is_alive() or result)
    c.remove_node(workers[victim])
    try:
        thread.join(timeout=600)
        assert "error" not in result, result.get("error")
        files, rows = outputs(inputs, "lost-node")
        assert rows == EXPECTED_ROWS
        assert files == undisturbed
    finally:
        workers[victim] = c.add_node(num_cpus=2)
        c.wait_for_nodes()


def test_the_driver_killed_and_the_job_rerun(cluster, inputs, undisturbed):
    c, _ = cluster
    path = job_yaml(inputs, "killed-driver", address=c.address)
    command = [sys.executable, "-m", "anyv2v_batch.cli", "run", str(path), "-q"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_parts(inputs, "killed-driver", lambda: driver.poll() is None)
    finally:
        driver.kill()
        driver.wait()
    parts = list((inputs / "killed-driver" / "_parts").rglob("*.tar"))
    assert 1 <= len(parts) < len(EXPECTED_ROWS) and not (inputs / "killed-driver" / "metadata").exists()
    rerun = subprocess.run(command[:-1], capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    done_before = int(re.search(r"(\d+) \(clip, variant\) pairs already done", rerun.stderr).group(1))
    assert done_before >= 1  # the rerun resumed from the parts the killed driver left
    files, rows = outputs(inputs, "killed-driver")
    assert rows == EXPECTED_ROWS
    assert files == undisturbed
    assert json.loads(files["000000.tar/clip00.snow.json"])["prompt"] == "a scene 0, snow"
