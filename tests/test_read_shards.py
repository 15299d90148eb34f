"""Reading WebDataset shards: grouping by key whatever the member order, metadata, bad shards."""

from __future__ import annotations

import json

from shards import write_shard

from anyv2v_batch.job import build_job
from anyv2v_batch.operators.read_shards import iter_samples, read_shard, sample_metadata, split_member
from anyv2v_batch.operators.work import derive_seed, pair_id, render

JOB = build_job({"input": "x.tar", "output": "o", "variants": [{"name": "a", "prompt": "{caption}!"}, {"name": "b"}]})


def test_members_group_by_key_even_when_not_adjacent(tmp_path):
    shard = write_shard(tmp_path / "s.tar", [
        ("d/x.mp4", b"1"), ("d/y.mp4", b"2"), ("d/x.json", b"{}"), ("d/._x.mp4", b"junk"), ("d/y.edited.png", b"3"),
    ])  # fmt: skip
    samples = dict(iter_samples(str(shard)))
    assert samples == {"d/x": {"mp4": b"1", "json": b"{}"}, "d/y": {"mp4": b"2", "edited.png": b"3"}}
    assert split_member("a/b.c.D") == ("a/b", "c.d")


def test_metadata_merges_json_and_caption_text():
    meta = sample_metadata("k", {"json": json.dumps({"title": "t"}).encode(), "txt": b" a dog \n"})
    assert meta == {"title": "t", "txt": "a dog", "caption": "a dog", "key": "k"}
    assert sample_metadata("k", {"json": b'{"caption": "c"}', "txt": b"t"})["caption"] == "c"


def test_read_shard_skips_done_pairs_and_reports_problems(tmp_path):
    shard = write_shard(tmp_path / "s.tar", [
        ("v.mp4", b"video"), ("v.txt", b"a cat"), ("m.json", b"{}"), ("j.mp4", b"video"), ("j.json", b"{oops"),
    ])  # fmt: skip
    row = {"shard": str(shard), "shard_id": "s", "done": [pair_id("v", "b")]}
    works = {w["work"].key: w["work"] for w in read_shard(row, JOB)}
    # b is done: computed again beside a (same batch as an uninterrupted run) but not written
    assert [(v.name, v.write) for v in works["v"].variants] == [("a", True), ("b", False)]
    assert works["v"].variants[0].settings.prompt == "a cat!"
    assert works["v"].variants[0].settings.seed == derive_seed(8888, "v", "a")
    assert "has no video" in works["m"].error
    assert "j.json is not valid JSON" in works["j"].error


def test_an_unreadable_shard_becomes_error_rows(tmp_path):
    (tmp_path / "s.tar").write_bytes(b"not a tar at all" * 10)
    (work,) = [w["work"] for w in read_shard({"shard": str(tmp_path / "s.tar"), "shard_id": "s", "done": []}, JOB)]
    assert work.error.startswith("cannot read shard") and [v.name for v in work.variants] == ["a", "b"]


def test_templates_and_seeds():
    assert render("{caption}, as a {style}", {"caption": "a dog", "style": "sketch"}, "prompt", "k") == (
        "a dog, as a sketch")  # fmt: skip
    for bad, message in [("{caption}", "needs {caption}"), ("{}", "named fields")]:
        try:
            render(bad, {"title": "x"}, "prompt", "k")
        except Exception as e:  # noqa: BLE001
            assert message in str(e)
        else:
            raise AssertionError("no error")
    assert derive_seed(1, "k", "a") == derive_seed(1, "k", "a") != derive_seed(1, "k", "b") != derive_seed(2, "k", "a")
    assert 0 <= derive_seed(1, "k", "a") < 2**63
