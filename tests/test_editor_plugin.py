"""A third-party editor installed as a package with an entry point: listed, and used in a job, where
its failure on one sample fails that sample alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY_MODEL, moving_clip, stop_shared_ray
from gate import install_plugin
from shards import image, mp4, read_tar, write_shard

from anyv2v_batch.job import build_job
from anyv2v_batch.video_io import read_video

PLUGIN = """
import numpy as np
from anyv2v_batch.editors.base import FirstFrameEditor


class FlipEditor(FirstFrameEditor):
    name = "flip"
    description = "mirror the frame left to right"
    options = {"fail": "metadata field that makes it fail (for tests)"}

    def edit(self, frame, options, sample):
        if sample.meta.get("fail"):
            raise RuntimeError("cannot flip this one")
        return np.ascontiguousarray(frame[:, ::-1])
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """This module's flip editor (and a broken entry point), installed; overrides conftest's gate editor."""
    entry_points = {"flip": "anyv2v_flip_editor:FlipEditor", "broken": "anyv2v_flip_editor:NoSuchEditor"}
    return install_plugin(tmp_path_factory, "anyv2v_flip_editor", PLUGIN, entry_points)


def test_plugin_is_listed_and_a_broken_one_does_not_break_the_list(plugin_site):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-m", "anyv2v_batch.cli", "editors"], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "flip [anyv2v-flip-editor]: mirror the frame left to right" in out.stdout
    assert "broken [anyv2v-flip-editor]: cannot be loaded: AttributeError" in out.stdout
    assert "provided [built-in]" in out.stdout


def test_plugin_runs_in_a_job_and_fails_one_sample_only(plugin_site, tmp_path):
    import ray

    from anyv2v_batch.pipelines.anyv2v_job import run_job

    clips = {k: moving_clip(10, 32, 32, seed=i) for i, k in enumerate("abc")}
    members = []
    for key, clip in clips.items():
        members += [(f"{key}.mp4", mp4(clip)), (f"{key}.json", json.dumps({"fail": key == "b"}).encode())]
    write_shard(tmp_path / "in" / "000.tar", members)
    job = build_job({
        "input": str(tmp_path / "in" / "000.tar"), "output": str(tmp_path / "out"), "model": str(TINY_MODEL),
        "device": "cpu", "editor": "flip", "clip": {"frames": 6, "width": 32, "height": 32},
        "inversion": {"steps": 2}, "edit": {"steps": 2, "prompt": "mirrored"},
        "pools": {p: {"num_cpus": 0.5} for p in ("decode", "editor", "inversion", "sampler", "encode")},
        "share_model": True,  # one model actor: one load (the same bytes as separate pools)
    })  # fmt: skip
    sys.path.insert(0, str(plugin_site))  # the driver resolves the editor by name too
    stop_shared_ray()  # the plug-in's path goes into this instance's runtime environment
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": str(plugin_site)}})  # fmt: skip
    try:
        summary = run_job(job)
    finally:
        ray.shutdown()
        sys.path.remove(str(plugin_site))
    assert (summary.ok, summary.errors) == (2, 1)
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "metadata").to_pylist()}
    assert rows["b"]["status"] == "error" and rows["b"]["error"] == "editor flip: RuntimeError: cannot flip this one"
    assert rows["a"]["status"] == rows["c"]["status"] == "ok" and rows["a"]["editor"] == "flip"
    out = read_tar(tmp_path / "out" / "shards" / "000.tar")
    source_first = read_video_bytes(members[0][1])
    assert np.array_equal(image(out["a.edit.png"]), source_first[:, ::-1])


def read_video_bytes(data: bytes) -> np.ndarray:
    import io

    return read_video(io.BytesIO(data), 1, 8, 32, 32).frames[0]
