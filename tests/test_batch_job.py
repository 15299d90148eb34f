"""The batch stage end to end on a local Ray instance: real shards in, shards and Parquet out.

One job over two shards (with a corrupt video, a too-short video, a sample whose members are not
adjacent, one whose metadata lacks the caption a template needs, one with no edited frame), two
variants; then a rerun over the same output.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import TINY_MODEL, moving_clip
from shards import mp4, png, read_tar, recolor, write_shard

from anyv2v_batch.cli import main
from anyv2v_batch.operators.work import derive_seed

VARIANTS = [
    {"name": "watercolor", "prompt": "{caption}, watercolor painting"},
    {"name": "snow", "edit": {"prompt": "a snowy scene", "guidance_scale": 7.5}},
]


def sample(key: str, clip: np.ndarray, meta: tuple[str, bytes] | None, edited: bool = True) -> list:
    members = [(f"{key}.mp4", mp4(clip))]
    if meta is not None:
        members.append((f"{key}.{meta[0]}", meta[1]))
    if edited:
        members.append((f"{key}.edited.png", png(recolor(clip[0]))))
    return members


def build_inputs(root: Path) -> dict[str, np.ndarray]:
    clips = {f"clip{i}": moving_clip(12, 32, 32, seed=i) for i in range(5)}
    caption = lambda text: ("json", json.dumps({"caption": text}).encode())  # noqa: E731
    write_shard(
        root / "shards" / "000000.tar",
        sample("clip0", clips["clip0"], caption("a red car"))
        + sample("clip1", clips["clip1"], ("txt", b"a dog"))
        + [
            ("bad.mp4", b"\x00\x01 not a video " * 300),
            ("bad.txt", b"a cat"),
            ("bad.edited.png", png(clips["clip0"][0])),
        ]
        + sample("short", clips["clip0"][:3], ("txt", b"a cat")),
    )
    s2 = sample("clip2", clips["clip2"], caption("a blue car"))
    s3 = sample("clip3", clips["clip3"], ("json", json.dumps({"title": "x"}).encode()))
    interleaved = [m for pair in zip(s2, s3, strict=True) for m in pair]  # clip2 and clip3 members alternate
    write_shard(
        root / "shards" / "000001.tar", interleaved + sample("clip4", clips["clip4"], ("txt", b"a woman"), edited=False)
    )
    return clips


def job_file(root: Path) -> Path:
    job = {
        "input": str(root / "shards" / "{000000..000001}.tar"),
        "output": str(root / "out"),
        "model": str(TINY_MODEL),
        "device": "cpu",
        "clip": {"frames": 6, "fps": 8, "width": 32, "height": 32},
        "inversion": {"steps": 2},  # the rows, files and bytes do not depend on the steps: the fewest that run a loop
        "edit": {"steps": 2},
        "editor": "provided",
        "variants": VARIANTS,
        "pools": {p: {"num_cpus": 0.5} for p in ("decode", "editor", "inversion", "sampler", "encode")},
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def digest_tree(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
        raise SystemExit(0)
    return e.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def job_run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("job")
    clips = build_inputs(root)
    inputs_before = digest_tree(root / "shards")
    path = job_file(root)
    with pytest.MonkeyPatch.context() as mp:
        captured, stderr = [], io.StringIO()  # not a terminal: progress comes as plain lines
        mp.setattr("anyv2v_batch.cli._say", lambda quiet, m: captured.append(m))
        mp.setattr("sys.stderr", stderr)
        with pytest.raises(SystemExit) as e:
            main(["run", str(path)])
            raise SystemExit(0)
    return root, clips, inputs_before, e.value.code, captured, stderr.getvalue()


EXPECTED_STATUS = {
    ("clip0", "watercolor"): "ok", ("clip0", "snow"): "ok", ("clip1", "watercolor"): "ok", ("clip1", "snow"): "ok",
    ("bad", "watercolor"): "error", ("bad", "snow"): "error", ("short", "watercolor"): "error",
    ("short", "snow"): "error", ("clip2", "watercolor"): "ok", ("clip2", "snow"): "ok",
    ("clip3", "watercolor"): "error", ("clip3", "snow"): "ok", ("clip4", "watercolor"): "error",
    ("clip4", "snow"): "error",
}  # fmt: skip


def test_job_writes_one_row_per_clip_and_variant(job_run):
    root, _, inputs_before, code, log, _ = job_run
    assert code == 0, log
    assert "14 (clip, variant) pairs processed: 7 ok, 7 errors" in log[-1]
    table = pq.read_table(root / "out" / "metadata").to_pylist()
    assert {(r["key"], r["variant"]): r["status"] for r in table} == EXPECTED_STATUS
    assert len(table) == len(EXPECTED_STATUS)  # no duplicates
    errors = {(r["key"], r["variant"]): r["error"] for r in table if r["status"] == "error"}
    assert "cannot decode" in errors[("bad", "snow")]
    assert "too short" in errors[("short", "watercolor")]
    assert "needs {caption}" in errors[("clip3", "watercolor")]
    assert "no edited first frame" in errors[("clip4", "snow")]
    row = next(r for r in table if (r["key"], r["variant"]) == ("clip0", "watercolor"))
    assert row["prompt"] == "a red car, watercolor painting" and row["source_shard"].endswith("000000.tar")
    assert (row["frames"], row["fps"], row["width"], row["height"]) == (6, 8.0, 32, 32)
    assert row["seed"] == derive_seed(8888, "clip0", "watercolor")
    assert row["seconds_inversion"] > 0 and row["seconds_sampler"] > 0
    assert next(r for r in table if r["key"] == "clip1" and r["variant"] == "snow")["guidance_scale"] == 7.5
    assert digest_tree(root / "shards") == inputs_before  # inputs untouched
    assert not (root / "out" / "_parts").exists()
    assert not [p for p in (root / "out").rglob(".*")]  # no temporary files


def progress_file(out: Path) -> dict:
    return json.loads((out / "_progress.json").read_text())


def test_progress_counts_every_row_from_the_tar_headers(job_run):
    """The total, counted from the shards' headers before work started (the bad video, the short one,
    the sample without an edited frame and the one lacking its caption included), is the rows written."""
    root, _, _, code, log, stderr = job_run
    assert code == 0, log
    rows = pq.read_table(root / "out" / "metadata").num_rows
    assert log[0].endswith("0 (clip, variant) pairs already done in " + str(root / "out") + f"; {rows} to do")
    progress = progress_file(root / "out")
    assert progress["state"] == "finished" and progress["total"] == progress["done"] == rows == 14
    assert (progress["ok"], progress["error"], progress["filtered"], progress["eta_seconds"]) == (7, 7, 0, 0.0)
    assert set(progress["busy_share"]) == {"editor", "inversion", "sampler"}
    assert 0 < progress["busy_share"]["inversion"] <= 1 and progress["rate"] == 14 / progress["elapsed_seconds"]
    lines = [line for line in stderr.split("\n") if line.startswith("progress: ")]
    assert lines and not any("\r" in line for line in lines), stderr  # plain lines: the stream is no terminal
    assert lines[-1].startswith("progress: 14/14 pairs (100%), 7 ok, 7 error, 0 filtered; ") and lines[-1].endswith(
        "; finished"
    )


def test_output_shards_hold_exactly_the_ok_pairs(job_run):
    root, clips, *_ = job_run
    s0, s1 = read_tar(root / "out" / "shards" / "000000.tar"), read_tar(root / "out" / "shards" / "000001.tar")
    want0 = [f"{k}.{v}.{e}" for k in ("clip0", "clip1") for v in ("snow", "watercolor") for e in ("json", "mp4", "png")]
    want1 = [f"clip2.{v}.{e}" for v in ("snow", "watercolor") for e in ("json", "mp4", "png")]
    want1 += [f"clip3.snow.{e}" for e in ("json", "mp4", "png")]
    assert list(s0) == want0 and list(s1) == want1  # sorted by key, variant
    settings = json.loads(s0["clip0.snow.json"])
    assert settings["edit"]["guidance_scale"] == 7.5 and settings["edit"]["seed"] == derive_seed(8888, "clip0", "snow")
    assert settings["clip"] == {"frames": 6, "fps": 8.0, "width": 32, "height": 32, "resize": "stretch"}
    # readable by the webdataset library itself
    import webdataset as wds

    keys = [s["__key__"] for s in wds.WebDataset(str(root / "out" / "shards" / "000001.tar"), shardshuffle=False)]
    assert keys == ["clip2", "clip3"]  # webdataset splits keys at the first dot: variants become extensions


@pytest.mark.parametrize(
    ("shard", "key", "variant", "prompt", "guidance"),
    [
        # ran alone in its calls: clip3.watercolor failed before sampling
        ("000001", "clip3", "snow", "a snowy scene", 7.5),
        # shared its clip's source branch with clip0.snow, beside the other clips of its shard
        ("000000", "clip0", "watercolor", "a red car, watercolor painting", 9.0),
    ],
)
def test_a_sample_equals_the_one_clip_command(job_run, tmp_path, capsys, shard, key, variant, prompt, guidance):
    """A pair is the one-clip command's bytes, whatever ran beside it in the job (every call's shape is
    fixed by the pair alone)."""
    root, clips, *_ = job_run
    written = read_tar(root / "out" / "shards" / f"{shard}.tar")
    source = read_tar(root / "shards" / f"{shard}.tar")
    (tmp_path / f"{key}.mp4").write_bytes(source[f"{key}.mp4"])
    (tmp_path / "edited.png").write_bytes(source[f"{key}.edited.png"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job's actors ran (their CPU share)
    try:
        code, err = run(["edit", tmp_path / f"{key}.mp4", "--first-frame", tmp_path / "edited.png", "-o",
                         tmp_path / "one.mp4", "--model", TINY_MODEL, "--frames", 6, "--fps", 8, "--width", 32,
                         "--height", 32, "--inversion-steps", 2, "--steps", 2, "--prompt", prompt,
                         "--guidance-scale", guidance, "--seed", derive_seed(8888, key, variant), "--device", "cpu",
                         "-q"], capsys)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    assert (tmp_path / "one.mp4").read_bytes() == written[f"{key}.{variant}.mp4"]


def test_rerun_adds_nothing(job_run):
    root, *_ = job_run
    before = digest_tree(root / "out" / "shards")
    rows_before = pq.read_table(root / "out" / "metadata").to_pylist()
    with pytest.MonkeyPatch.context() as mp:
        captured = []
        mp.setattr("anyv2v_batch.cli._say", lambda quiet, m: captured.append(m))
        with pytest.raises(SystemExit) as e:
            # one model actor inverts and samples (share_model: one load, the same bytes as the first run's pools)
            main(["run", str(root / "job.yaml"), "--set", "share_model=true"])
            raise SystemExit(0)
    assert e.value.code == 0
    assert "7 already done" in captured[-1] and "7 (clip, variant) pairs processed: 0 ok, 7 errors" in captured[-1]
    assert captured[0].endswith("; 7 to do")  # the errors, retried
    progress = progress_file(root / "out")
    assert (progress["state"], progress["total"], progress["done"], progress["done_before"]) == ("finished", 7, 7, 7)
    assert digest_tree(root / "out" / "shards") == before  # byte for byte
    rows_after = pq.read_table(root / "out" / "metadata").to_pylist()
    assert len(rows_after) == len(rows_before)
    ok_before = [r for r in rows_before if r["status"] == "ok"]
    assert [r for r in rows_after if r["status"] == "ok"] == ok_before  # kept as they were, timings included
    brief = lambda rows: [(r["key"], r["variant"], r["status"], r["error"]) for r in rows]  # noqa: E731
    assert brief(rows_after) == brief(rows_before)  # errors were retried and failed the same way
