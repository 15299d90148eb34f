"""Routing at compaction: pairs move between shards/ and filtered/shards/ with row-only parts, and a
compaction cut at any tar write never loses a pair's files (the next compaction finishes the move).
Also the `evaluate:` job section's rules. No Ray: the write stage's functions on real tars and Parquet.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from conftest import TINY_MODEL
from shards import read_tar

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.evaluation import EvaluateSettings, Threshold, parse_thresholds
from anyv2v_batch.job import build_job
from anyv2v_batch.operators import write
from anyv2v_batch.operators.encode import PairResult

PAIRS = [("a", "v"), ("b", "v"), ("c", "v"), ("d", "w")]


def pair(key: str, variant: str, routed: str | None, files: bool = True, score: float | None = None) -> PairResult:
    row = {"key": key, "variant": variant, "status": "ok", "error": "", "routed": routed, "score_clip_text": score,
           "passed": None if routed is None else routed == "shards", "failed_checks": None}  # fmt: skip
    data = {ext: f"{key}.{variant}.{ext} bytes".encode() * 50 for ext in ("mp4", "png", "json")} if files else {}
    return PairResult("in.tar", "000000", key, variant, "ok", "", row, data)


def places(out) -> dict[str, set[tuple[str, str]]]:
    found = {}
    for place, path in (("shards", out / "shards/000000.tar"), ("filtered", out / "filtered/shards/000000.tar")):
        members = read_tar(path) if path.exists() else {}
        found[place] = {(n.split(".")[0], n.split(".")[1]) for n in members}
    return found


def every_file(out) -> dict[str, bytes]:
    files = {}
    for path in (out / "shards/000000.tar", out / "filtered/shards/000000.tar"):
        files |= read_tar(path) if path.exists() else {}
    return files


@pytest.fixture
def output(tmp_path):
    """Pairs a, b in shards/; c, d filtered."""
    out = tmp_path / "out"
    for key, variant in PAIRS:
        routed = "shards" if key in "ab" else "filtered"
        write.write_part({"pair": pair(key, variant, routed, score=0.5)}, str(out))
    write.compact_shard(str(out), "000000")
    assert places(out) == {"shards": {("a", "v"), ("b", "v")}, "filtered": {("c", "v"), ("d", "w")}}
    return out


def rescore(out, routes: dict[tuple[str, str], str]) -> None:
    for (key, variant), routed in routes.items():
        write.write_part({"pair": pair(key, variant, routed, files=False, score=0.25)}, str(out))


def test_row_only_parts_move_files_both_ways_and_keep_their_bytes(output):
    before = every_file(output)
    rescore(output, {("a", "v"): "filtered", ("d", "w"): "shards", ("b", "v"): "shards"})
    counts = write.compact_shard(str(output), "000000")
    assert places(output) == {"shards": {("b", "v"), ("d", "w")}, "filtered": {("a", "v"), ("c", "v")}}
    assert every_file(output) == before
    assert counts == {"rows": 4, "ok": 4, "error": 0, "filtered": 2}
    rows = {r["key"]: r for r in pq.read_table(output / "metadata/000000.parquet").to_pylist()}
    assert rows["a"]["score_clip_text"] == 0.25 and rows["c"]["score_clip_text"] == 0.5
    assert pq.read_schema(output / "metadata/000000.parquet").field("score_clip_text").type == "float"
    # all back to shards/: the filtered tar is removed, not left empty
    rescore(output, {("a", "v"): "shards", ("c", "v"): "shards"})
    write.compact_shard(str(output), "000000")
    assert places(output)["filtered"] == set() and not (output / "filtered/shards/000000.tar").exists()
    assert every_file(output) == before


@pytest.mark.parametrize("cut_at", [1, 2, 3])
def test_a_compaction_cut_at_any_tar_write_loses_nothing(output, monkeypatch, cut_at):
    """Moves both ways need four tar writes (both tars with the moved pairs in both, then final): a cut
    after any of them leaves every pair's files in some tar, and the next compaction finishes."""
    before = every_file(output)
    rescore(output, {("a", "v"): "filtered", ("d", "w"): "shards"})
    real = write.atomic_output
    writes = {"n": 0}

    def cut_after(url):
        writes["n"] += 1
        if writes["n"] > cut_at:
            raise OSError("cut")
        return real(url)

    monkeypatch.setattr(write, "atomic_output", cut_after)
    with pytest.raises(OSError, match="cut"):
        write.compact_shard(str(output), "000000")
    now = places(output)
    assert set(PAIRS) <= now["shards"] | now["filtered"]
    assert {name: data for name, data in every_file(output).items()} == before
    monkeypatch.setattr(write, "atomic_output", real)
    write.compact_shard(str(output), "000000")
    assert places(output) == {"shards": {("b", "v"), ("d", "w")}, "filtered": {("a", "v"), ("c", "v")}}
    assert every_file(output) == before


def test_older_rows_without_score_columns_keep_new_columns():
    """Parquet from rows of different ages: every column of every row (pyarrow's from_pylist would keep
    only the first row's columns)."""
    table = write.rows_table([{"key": "old", "status": "ok"}, {"key": "new", "status": "ok", "passed": False}])
    assert table.column_names == ["key", "status", "passed"]
    assert table.to_pylist()[0]["passed"] is None and table.to_pylist()[1]["passed"] is False


def test_thresholds_judge_min_and_max_and_missing_scores():
    settings = EvaluateSettings(
        mode="flag", thresholds=parse_thresholds({"clip_text": 0.25, "source_similarity": {"max": 0.98}})
    )
    assert settings.thresholds == (("clip_text", Threshold(0.25, None)), ("source_similarity", Threshold(None, 0.98)))
    assert settings.judge({"score_clip_text": 0.3, "score_source_similarity": 0.5}) == (True, [])
    assert settings.judge({"score_clip_text": 0.25, "score_source_similarity": 0.98}) == (True, [])
    assert settings.judge({"score_clip_text": 0.2, "score_source_similarity": 0.99}) == (
        False, ["clip_text.min", "source_similarity.max"],
    )  # fmt: skip
    assert settings.judge({"score_clip_text": float("nan")}) == (False, ["clip_text.min", "source_similarity.max"])


@pytest.mark.parametrize(
    "evaluate, message",
    [
        ({"mode": "drop"}, "evaluate.mode must be one of off, score, flag, route"),
        ({"mode": "flag", "thresholds": {"clip_txt": 0.2}}, "evaluate.thresholds.clip_txt is not a metric"),
        ({"mode": "score", "thresholds": {"clip_text": 0.2}}, "use evaluate.mode=flag or route"),
        ({"mode": "flag", "thresholds": {"aesthetic_mean": 5}}, "needs the aesthetic scores"),
        ({"mode": "flag", "thresholds": {"clip_text": {"min": 0.5, "max": 0.1}}}, "min 0.5 is above max 0.1"),
        ({"mode": "flag", "thresholds": {"clip_text": {"above": 0.5}}}, "takes min and/or max, got above"),
        ({"mode": "flag", "thresholds": {"clip_text": "high"}}, "must be a number, got 'high'"),
        ({"modes": "flag"}, "evaluate.modes is not a job field (did you mean 'mode'?)"),
    ],
)
def test_bad_evaluate_settings_are_one_line_errors(evaluate, message):
    with pytest.raises(AnyV2VError, match=None) as e:
        build_job({"input": "in.tar", "output": "out", "evaluate": evaluate}, "job.yaml")
    assert message in str(e.value) and str(e.value).startswith("job.yaml: ") and "\n" not in str(e.value)


def test_evaluate_flag_takes_the_job_mode_or_flag_with_thresholds_or_score():
    on = {"evaluate.mode": "on"}
    assert build_job({"input": "i", "output": "o"}, overrides=on).evaluate.mode == "score"
    with_thresholds = {"input": "i", "output": "o", "evaluate": {"thresholds": {"clip_text": 0.2}}}
    assert build_job(with_thresholds, overrides=on).evaluate.mode == "flag"
    routed = {"input": "i", "output": "o", "evaluate": {"mode": "route", "thresholds": {"clip_text": 0.2}}}
    assert build_job(routed, overrides=on).evaluate.mode == "route"
    assert build_job({"input": "i", "output": "o"}).evaluate.enabled is False


def test_every_example_job_is_valid():
    from pathlib import Path

    from anyv2v_batch.job import load_job

    examples = sorted((Path(__file__).parent.parent / "pipelines" / "examples").glob("*.yaml"))
    assert len(examples) >= 4
    jobs = {p.name: load_job(p) for p in examples}
    routed = jobs["scored_and_routed.yaml"].evaluate
    assert routed.mode == "route" and dict(routed.thresholds)["source_similarity"] == Threshold(None, 0.97)


def test_moves_on_an_object_store_read_the_tars_as_they_are_now(monkeypatch):
    """On S3 a handle opened before a tar was replaced reads an object the store no longer serves: each
    tar write reads the current tars afresh (moto's server; s3fs's read block made small so the files
    are read in many ranged requests, as real-size shards are)."""
    import fsspec.config
    import s3fs
    from s3_server import S3Server

    server = S3Server()
    try:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setitem(fsspec.config.conf, "s3", {"default_block_size": 64 * 1024})
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("jobs")
        out = "s3://jobs/out"
        for key, variant in PAIRS:
            p = pair(key, variant, "shards" if key in "ab" else "filtered", score=0.5)
            p.files = big(key)
            write.write_part({"pair": p}, out)
        write.compact_shard(out, "000000")
        rescore(out, {("a", "v"): "filtered", ("d", "w"): "shards"})
        write.compact_shard(out, "000000")
        fs = s3fs.S3FileSystem()
        tars = {place: read_tar_bytes(fs.cat_file(f"jobs/out/{path}/000000.tar"))
                for place, path in (("shards", "shards"), ("filtered", "filtered/shards"))}  # fmt: skip
        assert sorted(tars["shards"]) == ["b.v.json", "b.v.mp4", "b.v.png", "d.w.json", "d.w.mp4", "d.w.png"]
        assert sorted(tars["filtered"]) == ["a.v.json", "a.v.mp4", "a.v.png", "c.v.json", "c.v.mp4", "c.v.png"]
        for members in tars.values():
            for name, data in members.items():
                assert data == big(name[0])[name.rsplit(".", 1)[1]], name
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def big(key: str) -> dict[str, bytes]:
    return {ext: bytes([ord(key)]) * (300_000 if ext == "mp4" else 100) for ext in ("mp4", "png", "json")}


def read_tar_bytes(data: bytes) -> dict[str, bytes]:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@pytest.mark.parametrize(
    "evaluate, message",
    [
        ({"model": "/nonexistent/clip"}, "cannot read the scorer's config.json from '/nonexistent/clip'"),
        ({"model": str(TINY_MODEL / "unet")}, "is not a CLIP model (its config says model_type None)"),
        ({"aesthetic": "/nonexistent/head.safetensors"}, "evaluate.aesthetic '/nonexistent/head.safetensors' does not"),
        ({"dtype": "float16"}, "evaluate.dtype float16 does not run on the CPU"),
    ],
)
def test_a_bad_scorer_is_refused_before_any_work(tmp_path, tiny_clip, evaluate, message):
    """Known from the settings and the files: refused before Ray starts or anything is read or written."""
    from anyv2v_batch.pipelines.anyv2v_job import run_job

    evaluate = {"mode": "score", "model": str(tiny_clip)} | evaluate
    job = build_job({"input": str(tmp_path / "none.tar"), "output": str(tmp_path / "out"), "model": str(TINY_MODEL),
                     "device": "cpu", "evaluate": evaluate})  # fmt: skip
    with pytest.raises(AnyV2VError) as e:
        run_job(job)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_scorers_always_find_room_on_the_gpus():
    """Default: each inversion / sampler actor takes 0.9 of a GPU, one per GPU, and a scorer the tenth
    left; with model actors that take whole GPUs, whole GPUs are kept for the scorers."""
    from anyv2v_batch.pipelines.anyv2v_job import resolve_pools

    def placed(pools: dict, gpus: int) -> bool:  # Ray's packing: fractions per GPU, first fit
        free = [1.0] * gpus
        actors = [p.num_gpus for n, p in pools.items() if p.num_gpus for _ in range(p.size)]
        for need in sorted(actors, reverse=True):
            slot = next((i for i, f in enumerate(free) if f >= need - 1e-9), None)
            if slot is None:
                return False
            free[slot] -= need
        return True

    base = {"input": "i", "output": "o", "evaluate": {"mode": "score"}}
    whole = build_job(base | {"pools": {"inversion": {"num_gpus": 1}, "sampler": {"num_gpus": 1}}})
    for gpus in (2, 3, 8, 10):
        pools = resolve_pools(build_job(base), {"CPU": 16, "GPU": gpus})
        assert pools["scorer"].num_gpus == 0.1 and pools["inversion"].num_gpus == 0.9
        assert pools["inversion"].size + pools["sampler"].size == gpus and placed(pools, gpus)
        if gpus > 2:
            pools = resolve_pools(whole, {"CPU": 16, "GPU": gpus})
            assert pools["inversion"].size + pools["sampler"].size == gpus - 1 and placed(pools, gpus)
    with pytest.raises(AnyV2VError, match="leave none of the 2 for the scorer; set pools.scorer.num_gpus: 0"):
        resolve_pools(whole, {"CPU": 16, "GPU": 2})
    plain = resolve_pools(build_job({"input": "i", "output": "o"}), {"CPU": 16, "GPU": 8})
    assert "scorer" not in plain and plain["inversion"].num_gpus == 1.0
    assert plain["inversion"].size + plain["sampler"].size == 8
    # one GPU: the two model pools share it (each half) instead of asking for two
    for job, half in ((build_job(base), 0.45), (build_job({"input": "i", "output": "o"}), 0.5)):
        pools = resolve_pools(job, {"CPU": 16, "GPU": 1})
        assert pools["inversion"].num_gpus == pools["sampler"].num_gpus == half and placed(pools, 1)
    # share_model: one model actor per GPU, inverting and sampling; "inversion" names the same actors
    for gpus in (1, 3):
        pools = resolve_pools(build_job(base | {"share_model": True}), {"CPU": 16, "GPU": gpus})
        assert pools["inversion"] is pools["sampler"] and pools["sampler"].size == gpus
        assert placed({n: p for n, p in pools.items() if n != "inversion"}, gpus)
