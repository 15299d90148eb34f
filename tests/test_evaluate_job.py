"""Scores in a job: every pair scored as written, judged, routed aside when it fails (nothing lost), and
`anyv2v-batch score` (re)scoring an existing output in place to the same numbers, without touching clips.

One small job (tiny I2VGen-XL, tiny random CLIP) scored without thresholds; the same output then
rescored with a threshold that splits it, rescored again (nothing to do), and relaxed; a second run
with the threshold in the job must equal the rescored output byte for byte.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import TINY_MODEL, moving_clip
from shards import mp4, png, read_tar, recolor, tar_bytes, write_shard

from anyv2v_batch.cli import main
from anyv2v_batch.evaluation import METRICS, SCORE_COLUMNS
from anyv2v_batch.video_io import read_image, read_video

CLIP_METRICS = [m for m in METRICS if not m.startswith("aesthetic")]
VARIANTS = [{"name": "car", "prompt": "a red car"}, {"name": "snow", "prompt": "a snowy scene"}]
CLIP = {"frames": 6, "fps": 8, "width": 32, "height": 32}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    members = []
    for i in range(3):
        clip = moving_clip(12, 32, 32, seed=10 + i)
        members += [(f"clip{i}.mp4", mp4(clip)), (f"clip{i}.edited.png", png(recolor(clip[0])))]
    members += [("bad.mp4", b"not a video" * 50), ("bad.edited.png", png(np.zeros((32, 32, 3), np.uint8)))]
    write_shard(root / "shards" / "000000.tar", members)
    return root


def job_yaml(root: Path, out: str, tiny_clip: Path, evaluate: dict | None = None) -> Path:
    import yaml

    job = {
        "input": str(root / "shards" / "000000.tar"),
        "output": str(root / out),
        "model": str(TINY_MODEL),
        "device": "cpu",
        "clip": CLIP,
        "inversion": {"steps": 2},  # the scores and routing do not depend on the steps: the fewest that run a loop
        "edit": {"steps": 2},
        "variants": VARIANTS,
        "evaluate": {"model": str(tiny_clip), **(evaluate or {})},
        "share_model": True,  # one model actor: one load (the same bytes as separate pools)
    }
    path = root / f"{out}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def cli(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows_of(out: Path) -> dict[tuple[str, str], dict]:
    return {(r["key"], r["variant"]): r for r in pq.read_table(out / "metadata" / "000000.parquet").to_pylist()}


def tar_members(path: Path) -> dict[str, bytes]:
    return read_tar(path) if path.exists() else {}


def all_members(out: Path) -> dict[str, bytes]:
    shards, filtered = tar_members(out / "shards" / "000000.tar"), tar_members(out / "filtered/shards/000000.tar")
    assert not set(shards) & set(filtered), "a pair in both tars"
    return shards | filtered


def test_every_ok_pair_is_scored_as_written_and_errors_are_not(ray_local, inputs, tiny_clip, capsys):
    code, _, err = cli(["run", str(job_yaml(inputs, "out", tiny_clip)), "--evaluate", "-q"], capsys)
    assert code == 0, err
    out = inputs / "out"
    rows = rows_of(out)
    assert len(rows) == 8 and sum(r["status"] == "ok" for r in rows.values()) == 6
    from anyv2v_batch.scores import Scorer

    scorer = Scorer(str(tiny_clip))
    members = read_tar(out / "shards" / "000000.tar")
    source_tar = read_tar(inputs / "shards" / "000000.tar")
    for (key, variant), row in rows.items():
        if row["status"] != "ok":
            assert all(row[c] is None for c in SCORE_COLUMNS) and row["evaluate_fingerprint"] == ""
            continue
        assert row["passed"] is None and row["failed_checks"] is None and row["routed"] == "shards"
        assert json.loads(row["scorer"])["mode"] == "score" and row["evaluate_fingerprint"]
        assert json.loads(row["scorer_identity"]) == scorer.identity
        assert all(row[f"score_{m}"] is None for m in ("aesthetic_min", "aesthetic_mean"))
        # independently: the written mp4 as decoded, the source as the job fits it, the edited first frame
        base = f"{key}.{variant}"
        output = read_video(io.BytesIO(members[f"{base}.mp4"]), 6, 8, 32, 32).frames
        source = read_video(io.BytesIO(source_tar[f"{key}.mp4"]), 6, 8, 32, 32).frames
        edited = read_image(members[f"{base}.png"])
        prompt = {"car": "a red car", "snow": "a snowy scene"}[variant]
        expected = scorer.score(output, source, edited, prompt)
        for m in CLIP_METRICS:
            assert math.isfinite(row[f"score_{m}"])
            assert abs(row[f"score_{m}"] - expected[f"score_{m}"]) <= 1e-6, (key, variant, m)


def test_score_routes_an_existing_output_in_place_without_touching_clips(ray_local, inputs, tiny_clip, capsys):
    out = inputs / "out"
    before_rows, before_members = rows_of(out), all_members(out)
    values = sorted(r["score_clip_text"] for r in before_rows.values() if r["status"] == "ok")
    threshold = (values[2] + values[3]) / 2  # three pass, three fail
    route = ["--set", "evaluate.mode=route", "--set", f"evaluate.thresholds.clip_text={threshold!r}"]
    code, _, err = cli(["score", str(out), "--evaluate-model", str(tiny_clip), *route, "-q"], capsys)
    assert code == 0, err
    rows = rows_of(out)
    assert set(rows) == set(before_rows)
    filtered = tar_members(out / "filtered/shards/000000.tar")
    for pair, row in rows.items():
        old = before_rows[pair]
        if row["status"] != "ok":
            assert row == old
            continue
        for c in SCORE_COLUMNS:  # the same model: the same numbers
            assert row[c] == old[c]
        fails = row["score_clip_text"] < threshold
        assert row["passed"] is (not fails) and row["failed_checks"] == (["clip_text.min"] if fails else [])
        assert row["routed"] == ("filtered" if fails else "shards")
        assert (f"{pair[0]}.{pair[1]}.mp4" in filtered) is fails
    assert all_members(out) == before_members  # every clip's bytes, in one tar or the other
    assert len(filtered) == 3 * 3

    # nothing left to do: a second score changes no byte
    snapshot = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != "_progress.json"}
    code, _, err = cli(["score", str(out), "--evaluate-model", str(tiny_clip), *route], capsys)
    assert code == 0, err
    assert "0 pairs to score, 6 already scored" in err
    assert {p: p.read_bytes() for p in snapshot} == snapshot

    # a second run with the threshold in the job makes the same output, byte for byte
    evaluate = {"mode": "route", "thresholds": {"clip_text": threshold}}
    code, _, err = cli(["run", str(job_yaml(inputs, "out2", tiny_clip, evaluate)), "-q"], capsys)
    assert code == 0, err
    out2 = inputs / "out2"
    for name in ("shards/000000.tar", "filtered/shards/000000.tar"):
        assert (out2 / name).read_bytes() == (out / name).read_bytes(), name
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("seconds_") and k not in ("settings",)}  # noqa: E731
    assert {p: strip(r) for p, r in rows_of(out2).items()} == {p: strip(r) for p, r in rows.items()}

    # a rerun with other thresholds is refused before any work, pointing to `score`
    stricter = {"mode": "route", "thresholds": {"clip_text": values[-1] + 1}}
    before = (out2 / "metadata" / "000000.parquet").read_bytes()
    code, _, err = cli(["run", str(job_yaml(inputs, "out2", tiny_clip, stricter)), "-q"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "6 outputs in" in err and "anyv2v-batch score" in err and "evaluate.thresholds.clip_text.min" in err
    assert (out2 / "metadata" / "000000.parquet").read_bytes() == before

    # relaxed thresholds bring every pair back to shards/; the filtered tar goes away
    relaxed = ["--set", "evaluate.mode=flag", "--set", f"evaluate.thresholds.clip_text={values[0] - 1!r}"]
    code, _, err = cli(["score", str(out2), "--evaluate-model", str(tiny_clip), *relaxed, "-q"], capsys)
    assert code == 0, err
    assert not (out2 / "filtered/shards/000000.tar").exists()
    assert all(r["passed"] for r in rows_of(out2).values() if r["status"] == "ok")
    assert tar_members(out2 / "shards/000000.tar") == all_members(out)

    # a damaged clip is neither scored nor shown as if it were the output: `score` and `report` name it
    out3 = inputs / "out3"
    shutil.copytree(out2, out3)
    members = read_tar(out3 / "shards/000000.tar")
    clip = bytearray(members["clip0.car.mp4"])
    clip[len(clip) // 2] ^= 0x08
    members["clip0.car.mp4"] = bytes(clip)
    (out3 / "shards/000000.tar").write_bytes(tar_bytes(sorted(members.items())))
    # what `score` reads for each pair (operators/rescore.py; the scorer pool scores none with an error)
    from anyv2v_batch.job import load_job
    from anyv2v_batch.operators.rescore import read_pairs_to_score

    job = load_job(None, {"output": str(out3), "evaluate.mode": "score", "evaluate.model": str(tiny_clip)}, "score")
    rows = [json.dumps(r, default=str) for r in rows_of(out3).values() if r["status"] == "ok"]
    item = {"shard_id": "000000", "rows": rows, "sources": {}}
    problems = {(w.key, v.name): v.score_error for row in read_pairs_to_score(item, job) for w in [row["work"]]
                for v in w.variants}  # fmt: skip
    assert len(problems) == 6 and "clip0.car.mp4 is damaged" in problems.pop(("clip0", "car"))
    assert set(problems.values()) == {""}
    code, _, err = cli(["report", str(out3), "-o", str(inputs / "report3")], capsys)
    assert code == 0, err
    assert "clip0.car.mp4 is damaged" in err  # said on the console, and on the page instead of the clip
    pages = "".join(p.read_text() for p in sorted((inputs / "report3").glob("gallery-*.html")))
    assert set(re.findall(r"([\w.]+) is damaged", pages)) == {"clip0.car.mp4"}
    assert 'title="clip0.car.mp4 is damaged' in pages  # in the output picture's place

    # `verify --repair` remakes the pair, and scores it as its row records (the same scorer, mode, thresholds)
    code, _, err = cli(["verify", str(out3), "--repair", "--device", "cpu", "--set", "share_model=true", "-q"], capsys)
    assert code == 0, err
    assert (out3 / "shards/000000.tar").read_bytes() == (out2 / "shards/000000.tar").read_bytes()
    assert {p: strip(r) for p, r in rows_of(out3).items()} == {p: strip(r) for p, r in rows_of(out2).items()}


def test_clips_edited_by_another_tool_are_scored_against_their_sources(ray_local, inputs, tiny_clip, capsys):
    """`score OUT --input EDITED --sources SOURCES`: a plain WebDataset of edited clips, scored as they are
    (their own frames, fps and size; the source brought to them), so methods compare on the same metrics."""
    from anyv2v_batch.scores import Scorer

    root = inputs
    source_tar = read_tar(root / "shards" / "000000.tar")
    clips = {k: read_video(io.BytesIO(source_tar[f"{k}.mp4"]), 10, 10, 40, 24).frames for k in ("clip0", "clip1")}
    theirs = {k: np.clip(c.astype(int)[..., ::-1] + 15, 0, 255).astype(np.uint8) for k, c in clips.items()}
    edited_png = png(recolor(theirs["clip1"][0]))
    write_shard(
        root / "theirs" / "000000.tar",
        [
            ("clip0.mp4", mp4(theirs["clip0"], fps=10)),
            ("clip0.json", json.dumps({"prompt": "a blue car"}).encode()),
            ("clip1.mp4", mp4(theirs["clip1"], fps=10)),
            ("clip1.txt", b"a snowy day"),
            ("clip1.edited.png", edited_png),
            ("clip2.mp4", mp4(theirs["clip0"], fps=10)),  # no prompt
            ("ghost.mp4", mp4(theirs["clip0"], fps=10)),
            ("ghost.txt", b"a ghost"),  # no source clip
        ],
    )
    out = root / "theirs-scored"
    argv = ["score", str(out), "--input", str(root / "theirs" / "000000.tar"), "--sources",
            str(root / "shards" / "*.tar"), "--evaluate-model", str(tiny_clip), "--name", "other-tool",
            "-q"]  # fmt: skip
    code, _, err = cli(argv, capsys)
    assert code == 0, err
    rows = rows_of(out)
    assert sorted(rows) == [("clip0", "other-tool"), ("clip1", "other-tool"), ("clip2", "other-tool"),
                            ("ghost", "other-tool")]  # fmt: skip
    assert "no prompt" in rows[("clip2", "other-tool")]["error"]
    assert "no source clip for 'ghost'" in rows[("ghost", "other-tool")]["error"]
    scorer = Scorer(str(tiny_clip))
    members = read_tar(out / "shards" / "000000.tar")
    for key, prompt, first in (("clip0", "a blue car", None), ("clip1", "a snowy day", read_image(edited_png))):
        row = rows[(key, "other-tool")]
        assert row["status"] == "ok" and (row["frames"], row["fps"], row["width"], row["height"]) == (10, 10, 40, 24)
        data = read_tar(root / "theirs" / "000000.tar")[f"{key}.mp4"]
        assert members[f"{key}.other-tool.mp4"] == data  # their clip, byte for byte
        output = read_video(io.BytesIO(data), 10, 10, 40, 24).frames
        source = read_video(io.BytesIO(source_tar[f"{key}.mp4"]), 10, 10, 40, 24).frames
        expected = scorer.score(output, source, output[0] if first is None else first, prompt)
        for m in CLIP_METRICS:
            assert abs(row[f"score_{m}"] - expected[f"score_{m}"]) <= 1e-6, (key, m)
    # a rerun scores nothing again (the error rows are retried, to the same errors); the tar keeps its bytes
    before = (out / "shards" / "000000.tar").read_bytes()
    code, _, err = cli(argv[:-1], capsys)
    assert code == 0 and "2 already scored" in err, err
    assert (out / "shards" / "000000.tar").read_bytes() == before
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("seconds_")}  # noqa: E731
    assert {p: strip(r) for p, r in rows_of(out).items()} == {p: strip(r) for p, r in rows.items()}
