"""Progress while a job runs: the total from the shards' tar headers (local and s3://), and the line and
`_progress.json` for scripted status rows under a hand-driven clock (no sleeps, no timing).

The whole-job checks (the file at the end of a real run, the log's lines) are in test_batch_job.py and
test_hostile_shards.py, on the jobs those files run anyway."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from s3_server import S3Server
from shards import header_offsets, patch_size, tar_bytes

from anyv2v_batch.job import build_job
from anyv2v_batch.operators import read_shards
from anyv2v_batch.operators.read_shards import iter_samples, pending_rows, read_shard, sample_keys
from anyv2v_batch.operators.work import group_variants, inversion_id, pair_id
from anyv2v_batch.pipelines.progress import PROGRESS_FILE, JobProgress, ProgressDisplay

# three variants in two inversion groups (c decodes another frame count): edit makes 3 rows per
# sample, invert 2
JOB = build_job({
    "input": "x.tar", "output": "o", "limits": {"max_members_per_key": 4},
    "variants": [{"name": "a", "prompt": "{caption}!"}, {"name": "b", "edit": {"steps": 7}},
                 {"name": "c", "clip": {"frames": 8}}],
})  # fmt: skip
BIG = 4 * 1024**2  # a member the header scan must seek past, never read


def directory(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def shard_files(root: Path) -> dict[str, Path]:
    """Shards covering every way read_shard decides what a sample is and which rows it makes."""
    root.mkdir(parents=True, exist_ok=True)
    nul = tarfile.TarInfo("x.mp4")
    nul.pax_headers = {"path": "nul\x00key.mp4"}
    mixed = [
        ("a.mp4", b"v" * 1000), ("b.mp4", b"v"), ("a.json", b'{"caption": "x"}'), ("b.txt", b"t"),  # interleaved
        ("a.edited.png", b"p"), ("meta-only.json", b"{}"),  # a key without a video: error rows
        (directory("d"), b""), ("d/._hidden.mp4", b"junk"), ("d/clip.mp4", b"v"),  # no rows for dirs, hidden files
        ("../up.mp4", b"v"), ("/abs.mp4", b"v"), (nul, b"v"), ("bad\udcffkey.mp4", b"v"),  # unsafe keys
        ("bad\\xffkey.mp4", b"v"),  # a safe key equal to the unsafe one's rendering: that one becomes #2
        ("big.mp4", b"\0" * BIG), ("big.txt", b"b"),
        *[(f"many.{i}.bin", b"m") for i in range(6)],  # over max_members_per_key: one error sample
        ("bad.json", b"{oops"), ("bad.mp4", b"v"),  # metadata that does not parse
    ]  # fmt: skip
    data = tar_bytes(mixed)
    offsets = header_offsets(data)
    files = {
        "mixed": data,
        "cut-in-header": data[: offsets["big.mp4"] + 200],  # ends inside a header: a damage row under ""
        "cut-in-data": data[: offsets["big.mp4"] + 512 + 4096],  # ends inside big.mp4: big's row says so
        "lying-size": patch_size(data, offsets["b.mp4"], 10**12),  # a header claiming a terabyte
        "no-end-marker": data[: offsets["big.mp4"]],
        "not-a-tar": b"not a tar at all" * 64,
        "empty-tar": tar_bytes([]),
        "gzipped": gzip.compress(tar_bytes(mixed[:6]), mtime=0),
    }
    paths = {}
    for name, blob in files.items():
        paths[name] = root / f"{name}.tar"
        paths[name].write_bytes(blob)
    return paths


def total_of(url: str, mode: str, done: list[str] | None = None) -> int:
    return pending_rows({"shard": url, "shard_id": "s", "done": done or []}, JOB, mode)


def rows_made(url: str, done: list[str], mode: str) -> int:
    """The true count: the status rows the work read_shard yields ends in (encode.py: edit, one per
    variant to write; invert, one per clip work)."""
    works = [w["work"] for w in read_shard({"shard": url, "shard_id": "s", "done": done}, JOB, mode)]
    return len(works) if mode == "invert" else sum(v.write for w in works for v in w.variants)


def some_done(url: str, mode: str) -> list[str]:
    """Pairs of a finished earlier run: every pair of the first sample, one of the second."""
    keys = [s.key for s in iter_samples(url, JOB.limits)][:2]
    if mode == "invert":
        first = group_variants(JOB)[0][0]
        return [pair_id(k, inversion_id(first.backbone, first.model, first.clip, first.inversion)) for k in keys]
    return [pair_id(keys[0], v.name) for v in JOB.variants] + [pair_id(k, "b") for k in keys[1:]]


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory) -> dict[str, Path]:
    return shard_files(tmp_path_factory.mktemp("shards"))


def test_the_keys_from_headers_are_the_samples_read_shard_reads(local_shards):
    keys = sample_keys(str(local_shards["mixed"]), JOB.limits)
    assert keys == [s.key for s in iter_samples(str(local_shards["mixed"]), JOB.limits)]
    assert keys == ["a", "b", "meta-only", "d/clip", "../up", "/abs", "nul\\x00key", "bad\\xffkey#2", "bad\\xffkey",
                    "big", "many", "bad"]  # fmt: skip
    for name, path in local_shards.items():
        if name != "not-a-tar":
            assert sample_keys(str(path), JOB.limits) == [s.key for s in iter_samples(str(path), JOB.limits)], name
    assert sample_keys(str(local_shards["cut-in-header"]), JOB.limits)[-1] == ""  # the damage row
    assert "" not in sample_keys(str(local_shards["cut-in-data"]), JOB.limits)  # recorded as big's row
    with pytest.raises(tarfile.TarError):
        sample_keys(str(local_shards["not-a-tar"]))


@pytest.mark.parametrize("mode", ["edit", "invert"])
def test_the_total_equals_the_rows_the_job_makes_minus_those_done(local_shards, mode):
    per_sample = 3 if mode == "edit" else 2
    for name, path in local_shards.items():
        url = str(path)
        fresh = total_of(url, mode)
        assert fresh == rows_made(url, [], mode), name
        done = some_done(url, mode) if name not in ("not-a-tar", "empty-tar") else []
        resumed = total_of(url, mode, done)
        assert resumed == rows_made(url, done, mode), name
        assert resumed == fresh - len(done), name
    assert total_of(str(local_shards["mixed"]), mode) == 12 * per_sample
    # an unreadable shard: one error row per variant (edit) or per inversion group (invert)
    assert total_of(str(local_shards["not-a-tar"]), mode) == per_sample


@pytest.fixture
def bytes_read(monkeypatch) -> list[int]:
    """Bytes tarfile reads from a shard (every read goes through _CappedReads)."""
    reads: list[int] = []
    original = read_shards._CappedReads.read

    def counted(self, n=-1):
        data = original(self, n)
        reads.append(len(data))
        return data

    monkeypatch.setattr(read_shards._CappedReads, "read", counted)
    return reads


def test_the_header_scan_seeks_past_member_data(local_shards, bytes_read):
    path = str(local_shards["mixed"])
    sample_keys(path, JOB.limits)
    scanned = sum(bytes_read)
    bytes_read.clear()
    list(iter_samples(path, JOB.limits))
    assert scanned < 64 * 1024 < BIG <= sum(bytes_read)  # the counter sees data reads; the scan makes none


# ---- the same on an object store (moto's S3 server on 127.0.0.1)

BUCKET = "progress"


@pytest.fixture(scope="module")
def s3_shards(local_shards):
    import s3fs

    server = S3Server()
    with pytest.MonkeyPatch.context() as mp:
        for name, value in server.env().items():
            mp.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            fs = s3fs.S3FileSystem()
            fs.mkdir(BUCKET)
            for name, path in local_shards.items():
                fs.put_file(str(path), f"{BUCKET}/{name}.tar")
            yield {name: f"s3://{BUCKET}/{name}.tar" for name in local_shards}
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
            server.stop()


def test_the_total_on_s3_equals_the_local_one_and_fetches_headers_only(local_shards, s3_shards, monkeypatch):
    import s3fs.core

    fetched: list[int] = []
    original = s3fs.core.S3File._fetch_range

    def counted(self, start, end):
        data = original(self, start, end)
        fetched.append(len(data))
        return data

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counted)
    for name, url in s3_shards.items():
        for mode in ("edit", "invert"):
            assert total_of(url, mode) == total_of(str(local_shards[name]), mode), (name, mode)
    fetched.clear()
    assert len(sample_keys(s3_shards["mixed"], JOB.limits)) == 12
    assert sum(fetched) < 1024**2 < BIG  # small ranged reads around the headers, never big.mp4's data


# ---- the progress object under a scripted clock

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def status(key: str, variant: str = "a", state: str = "ok", passed: bool | None = None, **seconds: float) -> dict:
    row = {"shard_id": "s", "key": key, "variant": variant, "status": state, "error": "", "group": "g",
           "seconds": json.dumps(seconds)}  # fmt: skip
    if passed is not None:
        row["passed"] = passed
    return row


def make(tmp_path: Path, total: int, tty: bool, every: float = 30.0, **kwargs) -> tuple[JobProgress, io.StringIO, Any]:
    clock, stream = Clock(), io.StringIO()
    display = ProgressDisplay(stream=stream, every=every, tty=tty, width=kwargs.pop("width", None), clock=clock)
    progress = JobProgress(total, str(tmp_path), {"editor": 1, "inversion": 2, "sampler": 1}, display=display, **kwargs)
    return progress, stream, clock


def read_json(tmp_path: Path) -> dict:
    return json.loads((tmp_path / PROGRESS_FILE).read_text())


def test_counts_rate_eta_and_busy_shares_are_exact(tmp_path):
    progress, stream, clock = make(tmp_path, total=8, tty=False, done_before=3)
    progress.start()
    first = read_json(tmp_path)
    assert (first["state"], first["total"], first["done"], first["eta_seconds"]) == ("running", 8, 0, None)
    script = [
        (10, status("k0", "a", editor=1, inversion=8, sampler=4)),
        (20, status("k0", "b", passed=False, editor=1, inversion=8, sampler=4)),  # the clip's inversion: once
        (30, status("k1", "a", "error", read=0.1)),
        (40, status("k2", "a", passed=True, editor=0, inversion=16, sampler=0)),
    ]
    for t, row in script:
        clock.t = T0 + t
        progress.add(row)
    assert read_json(tmp_path) == {
        "state": "running", "failure": "", "unit": "pairs", "started_at": "2027-01-15T08:00:00.000+00:00",
        "updated_at": "2027-01-15T08:00:40.000+00:00", "finished_at": None, "elapsed_seconds": 40.0,
        "total": 8, "done": 4, "ok": 2, "error": 1, "filtered": 1, "done_before": 3, "rate": 0.1,
        "eta_seconds": 40.0, "busy_share": {"editor": 0.05, "inversion": 0.3, "sampler": 0.2},
        "pool_sizes": {"editor": 1, "inversion": 2, "sampler": 1},
    }  # fmt: skip
    # one plain line so far, when 30 s had passed: 3 done in 30 s, 5 left
    assert stream.getvalue() == (
        "progress: 3/8 pairs (37%), 1 ok, 1 error, 1 filtered; 360 pairs/h, ETA 50s; "
        "busy editor 7%, inversion 13%, sampler 27%; 30s\n"
    )
    clock.t = T0 + 60  # no row for 20 s: the tick still logs (and the JSON moves on)
    progress.tick()
    assert stream.getvalue().splitlines()[-1] == (
        "progress: 4/8 pairs (50%), 2 ok, 1 error, 1 filtered; 240 pairs/h, ETA 1m00s; "
        "busy editor 3%, inversion 20%, sampler 13%; 1m00s"
    )
    assert read_json(tmp_path)["updated_at"] == "2027-01-15T08:01:00.000+00:00"
    for i in range(4):
        clock.t = T0 + 61 + i
        progress.add(status(f"m{i}", editor=1))
    clock.t = T0 + 3725
    progress.finish()
    end = read_json(tmp_path)
    assert (end["state"], end["done"], end["total"], end["ok"], end["eta_seconds"]) == ("finished", 8, 8, 6, 0.0)
    assert end["finished_at"] == end["updated_at"] == "2027-01-15T09:02:05.000+00:00"
    assert end["rate"] == 8 / 3725 and end["busy_share"]["editor"] == 6 / 3725
    assert stream.getvalue().splitlines()[-1].startswith("progress: 8/8 pairs (100%), 6 ok, 1 error, 1 filtered; 8 ")
    assert stream.getvalue().endswith("; 1h02m; finished\n")


def test_the_json_is_rewritten_at_most_every_few_seconds(tmp_path):
    progress, _, clock = make(tmp_path, total=100, tty=False, json_every=5.0)
    progress.start()
    written = []
    for t in range(1, 21):  # a row a second
        clock.t = T0 + t
        progress.add(status(f"k{t}"))
        written.append(read_json(tmp_path)["done"])
    assert written == [0] * 4 + [5] * 5 + [10] * 5 + [15] * 5 + [20]  # at 5, 10, 15, 20 s


def test_a_failed_run_says_so_and_a_quiet_run_prints_nothing(tmp_path):
    clock = Clock()
    progress = JobProgress(4, str(tmp_path), {"inversion": 1}, unit="inversions",
                           display=ProgressDisplay(stream=None, clock=clock))  # fmt: skip
    progress.start()
    clock.t = T0 + 100
    progress.add(status("k", state="ok", inversion=50))
    clock.t = T0 + 120
    progress.finish("failed", "RayTaskError: boom")
    end = read_json(tmp_path)
    assert (end["state"], end["failure"], end["unit"], end["done"], end["total"]) == (
        "failed", "RayTaskError: boom", "inversions", 1, 4
    )  # fmt: skip
    assert end["busy_share"] == {"inversion": 50 / 120} and end["eta_seconds"] == 3 * 120 / 1


def test_failed_checks_count_as_filtered_only_where_failures_are_routed_aside(tmp_path):
    for routes, want in ((True, (1, 1)), (False, (2, 0))):
        progress = JobProgress(2, None, {}, display=ProgressDisplay(clock=Clock()), routes_failures=routes)
        progress.add(status("k", passed=False))
        progress.add(status("j", passed=None))  # no verdict: ok
        assert (progress.ok, progress.filtered) == want


def test_plain_lines_come_every_n_seconds_of_the_clock(tmp_path):
    progress, stream, clock = make(tmp_path, total=20, tty=False, every=30.0)
    progress.start()
    for t in range(5, 105, 5):  # a row every 5 s
        clock.t = T0 + t
        progress.add(status(f"k{t}"))
    progress.finish()
    text = stream.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert [line.split()[1] for line in lines] == ["6/20", "12/20", "18/20", "20/20"]  # at 30, 60, 90 s; the end
    assert [line.rsplit("; ", 1)[-1] for line in lines] == ["30s", "1m00s", "1m30s", "finished"]


def test_a_terminal_gets_the_line_redrawn_in_place_within_its_width(tmp_path):
    progress, stream, clock = make(tmp_path, total=20, tty=True, width=60)
    progress.start()
    for t in (0.5, 1.0, 1.5, 3.0):  # redrawn when a second has passed since the last drawing
        clock.t = T0 + t
        progress.add(status(f"k{t}", editor=0.25))
    clock.t = T0 + 4
    progress.finish()
    text = stream.getvalue()
    assert text.startswith("\r") and text.endswith("\n") and text.count("\n") == 1
    drawn = text[1:-1].split("\r")
    assert [len(d) for d in drawn] == [59] * 4  # cut to the width, blanks over a longer earlier line
    assert [d.split()[1] for d in drawn] == ["0/20", "2/20", "4/20", "4/20"]
    assert len(progress.line(T0 + 4)) > 59 and drawn[-1] == progress.line(T0 + 4)[:59]
    assert read_json(tmp_path)["state"] == "finished"  # the file is the same whatever the display


def test_a_progress_file_that_cannot_be_written_never_fails_the_run(tmp_path):
    clock, stream = Clock(), io.StringIO()
    progress = JobProgress(2, "/proc/no-such-output", {"sampler": 1},
                           display=ProgressDisplay(stream=stream, tty=False, clock=clock), json_every=1.0)  # fmt: skip
    progress.start()
    for t in (2, 4):
        clock.t = T0 + t
        progress.add(status(f"k{t}"))
    progress.finish()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("progress: cannot write /proc/no-such-output/_progress.json: ")
    assert len(lines) == 2 and lines[1].startswith("progress: 2/2 pairs (100%)")  # said once, then the line
