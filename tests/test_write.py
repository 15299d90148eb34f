"""Parts, compaction and resume state, on a local folder and on an fsspec memory:// filesystem."""

from __future__ import annotations

import io
import tarfile

import pyarrow.parquet as pq
import pytest

from anyv2v_batch.operators.encode import PairResult
from anyv2v_batch.operators.storage import atomic_write, expand_inputs, list_files, read_bytes, shard_id
from anyv2v_batch.operators.write import compact_shard, completed_pairs, part_url, read_metadata, write_part


def pair(key: str, variant: str, status: str = "ok", payload: bytes = b"video") -> dict:
    files = {"json": b"{}", "mp4": payload, "png": b"png"} if status == "ok" else {}
    row = {"key": key, "variant": variant, "status": status, "error": "" if status == "ok" else "boom", "x": 1.0}
    return {"pair": PairResult("in/s.tar", "s", key, variant, status, row["error"], row, files)}


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.fixture(params=["local", "memory"])
def output(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path / "out")
        return
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"memory://{tmp_path.name}"
    yield root
    fs.rm(root.replace("memory://", "/"), recursive=True)


def test_parts_compact_into_sorted_shards_and_one_row_per_pair(output):
    for p in [pair("b", "v1"), pair("a", "v2"), pair("a", "v1"), pair("c", "v1", "error")]:
        write_part(p, output)
    assert completed_pairs(output, "s") and len(completed_pairs(output, "s")) == 3  # resumable before compaction
    counts = compact_shard(output, "s")
    assert counts == {"rows": 4, "ok": 3, "error": 1, "filtered": 0}
    tar = members(read_bytes(f"{output}/shards/s.tar"))
    assert list(tar) == [
        f"{k}.{v}.{e}" for k, v in [("a", "v1"), ("a", "v2"), ("b", "v1")] for e in ("json", "mp4", "png")
    ]
    rows = read_metadata(output, "s")
    assert [(r["key"], r["variant"], r["status"]) for r in rows] == [
        ("a", "v1", "ok"), ("a", "v2", "ok"), ("b", "v1", "ok"), ("c", "v1", "error")]  # fmt: skip
    assert list_files(f"{output}/_parts/s", ".tar") == []


def test_a_retried_pair_replaces_its_row_and_compaction_is_idempotent(output):
    write_part(pair("a", "v1"), output)
    write_part(pair("c", "v1", "error"), output)
    compact_shard(output, "s")
    first = read_bytes(f"{output}/shards/s.tar")
    assert len(completed_pairs(output, "s")) == 1  # the error is not done: a rerun retries it
    write_part(pair("c", "v1", "ok", b"fixed"), output)
    compact_shard(output, "s")
    rows = read_metadata(output, "s")
    assert [(r["key"], r["status"]) for r in rows] == [("a", "ok"), ("c", "ok")]
    tar = members(read_bytes(f"{output}/shards/s.tar"))
    assert tar["c.v1.mp4"] == b"fixed" and tar["a.v1.mp4"] == b"video"  # the old pair carried over
    again = read_bytes(f"{output}/shards/s.tar")
    compact_shard(output, "s")  # nothing new: same bytes
    assert read_bytes(f"{output}/shards/s.tar") == again and first != again


def test_writing_the_same_pair_twice_keeps_one(output):
    write_part(pair("a", "v1", payload=b"one"), output)
    write_part(pair("a", "v1", payload=b"two"), output)
    assert len(list_files(f"{output}/_parts/s", ".tar")) == 1
    assert part_url(output, "s", "a", "v1").endswith(".tar")
    compact_shard(output, "s")
    assert members(read_bytes(f"{output}/shards/s.tar"))["a.v1.mp4"] == b"two"


def test_metadata_is_a_parquet_table(tmp_path):
    out = str(tmp_path / "out")
    write_part(pair("a", "v1"), out)
    compact_shard(out, "s")
    assert pq.read_table(tmp_path / "out" / "metadata").num_rows == 1


def test_expand_inputs_and_shard_ids(tmp_path):
    for i in range(3):
        atomic_write(str(tmp_path / f"{i:03d}.tar"), b"x")
    assert expand_inputs([str(tmp_path / "{000..001}.tar")]) == [str(tmp_path / "000.tar"), str(tmp_path / "001.tar")]
    assert expand_inputs([str(tmp_path / "*.tar"), str(tmp_path / "000.tar")])[-1] == str(tmp_path / "002.tar")
    assert shard_id("s3://b/x/000123.tar") == "000123" and shard_id("a/b.tar.gz") == "b"


def test_one_run_per_output_and_dead_runs_locks_are_taken_over(tmp_path):
    import json
    import subprocess
    import sys
    import time

    from anyv2v_batch import AnyV2VError
    from anyv2v_batch.operators.lock import OutputLock

    out = str(tmp_path / "out")
    with OutputLock(out):
        with pytest.raises(AnyV2VError, match=r"being written by another run \(pid \d+"):
            OutputLock(out).__enter__()
    assert not (tmp_path / "out" / "_lock.json").exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = OutputLock(out)
    (tmp_path / "out" / "_lock.json").write_text(json.dumps({**lock.mine, "pid": int(dead.stdout)}))
    with lock:  # its process is gone: taken over
        assert json.loads((tmp_path / "out" / "_lock.json").read_text())["pid"] == lock.mine["pid"]
    (tmp_path / "out" / "_lock.json").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": 0}))
    with OutputLock(out):  # not refreshed for too long: taken over
        pass
    with OutputLock(out, heartbeat=0.05) as held:  # a live run keeps refreshing its lock
        deadline = time.time() + 60  # waits for the event (a beat), not for a time
        while json.loads((tmp_path / "out" / "_lock.json").read_text())["refreshed"] == held.mine["started"]:
            assert time.time() < deadline, "the lock was never refreshed"
            time.sleep(0.01)
        assert json.loads((tmp_path / "out" / "_lock.json").read_text())["refreshed"] > held.mine["started"]
    (tmp_path / "out" / "_lock.json").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": time.time()}))
    with pytest.raises(AnyV2VError):
        OutputLock(out).__enter__()
