"""The job on an object store: a real S3-compatible server (moto's) on 127.0.0.1, started and stopped here.

Inputs, output and stored inversions all on s3://; the output lock as a conditional create that two
racing runs cannot both win; a second run on a busy output refused in one line; a driver killed
mid-job and the job rerun. Every result is compared byte for byte with a local-disk run of the job.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MODEL, moving_clip, stop_shared_ray
from gate import wait_until
from s3_server import S3Server
from shards import mp4, png, read_tar, recolor, write_shard

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.job import load_job

BUCKET = "anyv2v"
CLIPS_PER_SHARD, SHARDS = 2, 2
EXPECTED_ROWS = sorted(
    (f"clip{s}{c}", v, "ok") for s in range(SHARDS) for c in range(CLIPS_PER_SHARD) for v in ("plain", "snow")
)


@pytest.fixture(scope="module")
def s3():
    import s3fs

    server = S3Server()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in server.env().items():
            mp.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # no client made before the endpoint was set
        try:
            s3fs.S3FileSystem().mkdir(BUCKET)
            yield server
        finally:
            s3fs.S3FileSystem.clear_instance_cache()  # none pointing at a stopped server
            server.stop()


@pytest.fixture(scope="module")
def ray_address(s3, plugin_site):
    import ray

    stop_shared_ray()
    # started after the S3 variables (and the gate editor's path) are set: its workers inherit them, and so
    # do drivers started later
    # "local": a new instance of our own, never one another process on this machine started
    # 3 logical CPUs: with the editor actor held at the gate and a shard-reading task streaming, the half-CPU
    # encode and write tasks of the finished pairs still find a slot
    context = ray.init(address="local", num_cpus=3, include_dashboard=False, logging_level="WARNING")
    yield context.address_info["address"]
    ray.shutdown()


def objects(prefix: str) -> dict[str, bytes]:
    """Every object under s3://BUCKET/prefix, read with plain boto3 (no fsspec caches)."""
    import boto3

    client = boto3.client("s3")
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix.rstrip("/") + "/"):
        for item in page.get("Contents", []):
            found[item["Key"]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
    return found


@pytest.fixture(scope="module")
def inputs(s3, tmp_path_factory):
    import s3fs

    root = tmp_path_factory.mktemp("object-store")
    for s in range(SHARDS):
        members = []
        for c in range(CLIPS_PER_SHARD):
            key, clip = f"clip{s}{c}", moving_clip(10, 32, 32, seed=10 * s + c)
            members += [(f"{key}.mp4", mp4(clip)), (f"{key}.txt", f"a scene {c}".encode()),
                        (f"{key}.edited.png", png(recolor(clip[0])))]  # fmt: skip
        shard = write_shard(root / "in" / f"{s:06d}.tar", members)
        s3fs.S3FileSystem().put_file(str(shard), f"{BUCKET}/in/{shard.name}")
    return root


def job_yaml(
    root: Path, output: str, address: str, inversions: str | None = None, gate=None, shared: bool = True
) -> Path:
    """`shared`: one model actor inverts and samples (share_model; the local reference runs separate pools,
    so every S3 output equal to it also shows that share_model changes no byte)."""
    job = {
        "input": f"s3://{BUCKET}/in/*.tar", "output": output, "model": str(TINY_MODEL), "device": "cpu",
        "clip": {"frames": 6, "width": 32, "height": 32}, "inversion": {"steps": 2}, "edit": {"steps": 2},
        "variants": [{"name": "plain", "prompt": "{caption}"}, {"name": "snow", "prompt": "{caption}, snow"}],
        "pools": {p: {"num_cpus": 0.5} for p in ("decode", "editor", "inversion", "sampler", "encode")},
        "ray": {"address": address},
        "share_model": shared,
    }  # fmt: skip
    if inversions:
        job["inversions"] = inversions
    if gate is not None:  # first frames as `provided` gives them, each held at the test's gate
        job["editor"] = {"name": "gate", "options": {"dir": str(gate.folder)}}
    path = root / f"{re.sub(r'[^a-z0-9]+', '-', output)}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def s3_outputs(prefix: str) -> tuple[dict[str, bytes], list[tuple[str, str, str]], list[dict]]:
    """(shard members, sorted (key, variant, status), metadata rows) of an output on the server;
    also checks that a finished run left nothing else behind (no parts, no lock)."""
    import io

    import pyarrow.parquet as pq

    stored = objects(f"{prefix}")
    names = {k[len(prefix) + 1 :] for k in stored}
    assert all(n.startswith(("shards/", "metadata/")) or n == "_progress.json" for n in names), sorted(names)
    progress = json.loads(stored[f"{prefix}/_progress.json"])  # the last run's, written to the bucket
    assert progress["state"] == "finished" and progress["done"] == progress["total"], progress
    files, rows = {}, []
    for name, data in sorted(stored.items()):
        short = name[len(prefix) + 1 :]
        if short.startswith("shards/"):
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                files |= {f"{Path(short).name}/{m.name}": tar.extractfile(m).read() for m in tar.getmembers()}
        elif short.startswith("metadata/"):
            rows += pq.read_table(io.BytesIO(data)).to_pylist()
    return files, sorted((r["key"], r["variant"], r["status"]) for r in rows), rows


@pytest.fixture(scope="module")
def reference(ray_address, inputs):
    """The same job (inputs on S3) written to local disk: what every S3 run must reproduce."""
    import pyarrow.parquet as pq

    from anyv2v_batch.pipelines.anyv2v_job import run_job

    out = inputs / "local-out"
    assert run_job(load_job(job_yaml(inputs, str(out), ray_address, shared=False))).ok == len(EXPECTED_ROWS)
    files = {}
    for shard in sorted((out / "shards").glob("*.tar")):
        files |= {f"{shard.name}/{name}": data for name, data in read_tar(shard).items()}
    rows = sorted((r["key"], r["variant"], r["status"]) for r in pq.read_table(out / "metadata").to_pylist())
    assert rows == EXPECTED_ROWS and len(files) == 3 * len(EXPECTED_ROWS)
    return files


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "anyv2v_batch.cli", *args]


def test_the_server_honours_conditional_writes(s3):
    """What the lock relies on, asked of the store itself: If-None-Match: * and If-Match: <ETag>."""
    import s3fs

    fs = s3fs.S3FileSystem()
    path = f"{BUCKET}/probe/lock"
    fs.pipe_file(path, b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(path, b"second", mode="create")
    tag = fs.info(path, refresh=True)["ETag"]
    fs.pipe_file(path, b"third", IfMatch=tag)
    with pytest.raises(OSError, match="pre-condition"):
        fs.pipe_file(path, b"fourth", IfMatch=tag)  # the ETag changed with "third"
    assert objects("probe") == {"probe/lock": b"third"}


def test_atomic_writes_and_listing_on_s3(s3, tmp_path):
    from anyv2v_batch.operators.storage import atomic_output, atomic_write, expand_inputs, list_files, read_bytes

    root = f"s3://{BUCKET}/storage"
    with pytest.raises(RuntimeError), atomic_output(f"{root}/a.tar") as f:
        f.write(b"half")
        raise RuntimeError("the writer failed")
    assert objects("storage") == {}  # nothing appears for a failed block
    with atomic_output(f"{root}/a.tar") as f:
        f.write(b"whole")
    atomic_write(f"{root}/b.tar", b"bee")
    assert list_files(root, ".tar") == [f"{root}/a.tar", f"{root}/b.tar"]  # full URLs (unstrip_protocol)
    assert [read_bytes(u) for u in list_files(root, ".tar")] == [b"whole", b"bee"]
    # a write by another process shows in this process's next listing (no stale listing cache)
    code = f"from anyv2v_batch.operators.storage import atomic_write; atomic_write('{root}/c.tar', b'sea')"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert list_files(root, ".tar") == [f"{root}/a.tar", f"{root}/b.tar", f"{root}/c.tar"]
    assert expand_inputs([f"{root}/*.tar"]) == [f"{root}/a.tar", f"{root}/b.tar", f"{root}/c.tar"]


def race(monkeypatch, contenders: list, gate=lambda kwargs: True) -> list:
    """Enter each lock in its own thread, every thread held just before its first lock write that
    `gate` picks until all are there (a barrier: the worst interleaving, made certain). Returns each
    one's lock or its error."""
    import s3fs

    from anyv2v_batch.operators.lock import OutputLock

    barrier, gated = threading.Barrier(len(contenders), timeout=120), threading.local()
    pipe_file = s3fs.S3FileSystem.pipe_file

    def held_pipe_file(self, path, *args, **kwargs):
        if path.endswith("_lock.json") and gate(kwargs) and not getattr(gated, "done", False):
            gated.done = True
            barrier.wait()
        return pipe_file(self, path, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "pipe_file", held_pipe_file)
    results: list = [None] * len(contenders)

    def enter(i: int) -> None:
        try:
            results[i] = contenders[i].__enter__()
        except (AnyV2VError, threading.BrokenBarrierError) as e:
            results[i] = e

    threads = [threading.Thread(target=enter, args=(i,)) for i in range(len(contenders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    monkeypatch.setattr(s3fs.S3FileSystem, "pipe_file", pipe_file)
    for r in results:
        if isinstance(r, OutputLock):
            r.__exit__(None, None, None)
    return results


def test_two_runs_racing_for_one_s3_output_lock_exactly_one_wins(s3, monkeypatch):
    from anyv2v_batch.operators.lock import OutputLock

    output = f"s3://{BUCKET}/racing"
    results = race(monkeypatch, [OutputLock(output), OutputLock(output)])
    winners = [r for r in results if isinstance(r, OutputLock)]
    losers = [r for r in results if isinstance(r, AnyV2VError)]
    assert len(winners) == 1 and len(losers) == 1, results
    assert str(losers[0]).startswith("output is being written by another run")
    assert objects("racing") == {}  # the winner released it


def test_two_runs_taking_over_one_stale_s3_lock_exactly_one_wins(s3, monkeypatch):
    import json

    import s3fs

    from anyv2v_batch.operators.lock import OutputLock

    output = f"s3://{BUCKET}/stale"
    dead = {"host": "elsewhere", "pid": 1, "started": 0, "refreshed": 0}  # not refreshed for decades
    s3fs.S3FileSystem().pipe_file(f"{BUCKET}/stale/_lock.json", json.dumps(dead).encode())
    first, second = OutputLock(output), OutputLock(output)
    second.mine["started"] += 1e-3  # two runs, told apart by their lock's content
    # held at the takeover's write (not at the first, conditional create, which fails on the stale lock)
    results = race(monkeypatch, [first, second], gate=lambda kwargs: kwargs.get("mode") != "create")
    winners = [r for r in results if isinstance(r, OutputLock)]
    assert len(winners) == 1, results
    assert [str(r) for r in results if not isinstance(r, OutputLock)][0].startswith(
        "output is being written by another run"
    )


def test_invert_then_a_run_on_s3_refuses_a_second_run_and_survives_its_driver_killed(ray_address, inputs, reference,
                                                                                   gate):  # fmt: skip
    """`invert` into an s3:// store; a `run` reusing it into an s3:// output, held at a known point (not after
    a guessed delay: the first shard's pairs pass the gate, the other shard's first sample is held there);
    while it holds the output, a second run on it exits non-zero with one line; once a pair is on S3 the
    driver is killed, and the rerun takes over the dead run's lock, resumes from its parts and ends with
    the local reference's bytes, every pair from the stored inversions."""
    from anyv2v_batch.cli import main

    store, output = f"s3://{BUCKET}/inversions", f"s3://{BUCKET}/killed"
    with pytest.raises(SystemExit) as e:
        main(["invert", str(job_yaml(inputs, output, ray_address, inversions=store)), "-q"])
        raise SystemExit(0)  # main returns on success, exits on failure
    assert e.value.code == 0
    stored = objects("inversions")
    assert sorted(k for k in stored if k.startswith("inversions/shards/")) == [
        f"inversions/shards/{s:06d}.tar" for s in range(SHARDS)
    ]
    assert not any("_parts" in k or "_lock" in k for k in stored)
    inverted = json.loads(stored["inversions/_progress.json"])  # invert's progress: in the store
    clips = SHARDS * CLIPS_PER_SHARD
    assert (inverted["state"], inverted["unit"], inverted["total"], inverted["done"]) == ("finished", "inversions",
                                                                                         clips, clips)  # fmt: skip

    gate.close()
    path = job_yaml(inputs, output, ray_address, inversions=store, gate=gate)
    driver = subprocess.Popen(cli("run", str(path), "-q"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    alive = lambda: driver.poll() is None  # noqa: E731
    try:
        gate.hold_second_shard(alive)  # the driver took the output's lock before any work
        second = subprocess.run(cli("run", str(path)), capture_output=True, text=True, timeout=600)
        assert alive(), "the held run ended"
        wait_until(lambda: any(k.endswith(".tar") for k in objects("killed/_parts")), alive, "a pair was written")
    finally:
        driver.kill()
        driver.wait()
        gate.open()
    assert second.returncode == 1
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: output is being written by another run"), second.stderr
    left = objects("killed")
    parts = [k for k in left if k.startswith("killed/_parts/") and k.endswith(".tar")]
    assert 1 <= len(parts) < len(EXPECTED_ROWS) and not any(k.startswith("killed/metadata/") for k in left)
    assert "killed/_lock.json" in left  # the dead run's lock, taken over below
    rerun = subprocess.run(cli("run", str(path)), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    done_before = int(re.search(r"(\d+) \(clip, variant\) pairs already done", rerun.stderr).group(1))
    assert 1 <= done_before < len(EXPECTED_ROWS)  # resumed from the parts the killed driver left
    files, rows, metadata = s3_outputs("killed")
    assert rows == EXPECTED_ROWS
    assert {r["inversion_source"] for r in metadata} == {"stored"}
    # the same videos and first frames as the local run; the settings record names the gate editor
    assert set(files) == set(reference)
    assert {k: v for k, v in files.items() if not k.endswith(".json")} == {
        k: v for k, v in reference.items() if not k.endswith(".json")
    }
    record = json.loads(files["000000.tar/clip00.snow.json"])
    assert record["editor"]["name"] == "gate" and record["prompt"] == "a scene 0, snow"


def test_verify_and_repair_on_s3_with_checksummed_puts(ray_address, inputs, reference, gate, capsys):
    """The killed-and-rerun output (equal to the local reference): every object was PUT with its SHA-256;
    a damaged Parquet file and a damaged member are named by `verify` and repaired to the same bytes."""
    import base64
    import hashlib
    import io

    import boto3

    from anyv2v_batch.cli import main
    from anyv2v_batch.pipelines.verify import verify_output

    client = boto3.client("s3")
    gate.open()  # a remade pair passes the gate editor that made it
    stored = {k: v for k, v in objects("killed").items() if k.startswith(("killed/shards/", "killed/metadata/"))}
    assert len(stored) == 2 * SHARDS
    for key, data in stored.items():
        head = client.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
        assert head.get("ChecksumSHA256") == base64.b64encode(hashlib.sha256(data).digest()).decode(), key
    # moto keeps the checksum but does not refuse a PUT whose bytes do not match it (AWS S3 does): said in
    # the README; here only that what we send is the SHA-256 of what we mean to store

    parquet = "killed/metadata/000000.parquet"
    client.put_object(Bucket=BUCKET, Key=parquet, Body=stored[parquet][:100] + b"\0" * 64 + stored[parquet][164:])
    tar_key = "killed/shards/000001.tar"
    with tarfile.open(fileobj=io.BytesIO(stored[tar_key])) as tar:
        offset = next(m.offset_data for m in tar.getmembers() if m.name == "clip10.snow.mp4")
    data = bytearray(stored[tar_key])
    data[offset + 200] ^= 0x40
    client.put_object(Bucket=BUCKET, Key=tar_key, Body=bytes(data))

    output = f"s3://{BUCKET}/killed"
    problems = {(p.shard_id, p.key, p.variant, p.what) for p in verify_output(output).problems}
    assert problems == {("000000", "", "", "unreadable"), ("000001", "clip10", "snow", "damaged")}, problems
    try:
        # on a given cluster the pools are the user's to fit (as for `run`): the job's own half CPUs here
        fit = [
            a
            for p in ("decode", "editor", "inversion", "sampler", "encode")
            for a in ("--set", f"pools.{p}.num_cpus=0.5")
        ] + ["--set", "share_model=true"]
        main(["verify", output, "--repair", "--address", ray_address, "-q", *fit])
    except SystemExit as e:
        pytest.fail(f"verify --repair exited {e.code}: {capsys.readouterr()}")
    _, rows, _ = s3_outputs("killed")
    assert rows == EXPECTED_ROWS
    shards = {k: v for k, v in objects("killed").items() if k.startswith("killed/shards/")}
    assert shards == {k: v for k, v in stored.items() if k.startswith("killed/shards/")}  # as before the damage
    assert verify_output(output).clean
