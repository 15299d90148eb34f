"""Reading WebDataset shards: grouping by key whatever the member order, metadata, bad shards."""

from __future__ import annotations

import gc
import json
import os
import tarfile
import tracemalloc

from shards import header_offsets, patch_size, tar_bytes, write_shard

from anyv2v_batch.job import Limits, build_job
from anyv2v_batch.operators.read_shards import iter_samples, printable_key, read_shard, sample_metadata, split_member
from anyv2v_batch.operators.work import derive_seed, pair_id, render

JOB = build_job({"input": "x.tar", "output": "o", "variants": [{"name": "a", "prompt": "{caption}!"}, {"name": "b"}]})


def test_members_group_by_key_even_when_not_adjacent(tmp_path):
    shard = write_shard(tmp_path / "s.tar", [
        ("d/x.mp4", b"1"), ("d/y.mp4", b"2"), ("d/x.json", b"{}"), ("d/._x.mp4", b"junk"), ("d/y.edited.png", b"3"),
    ])  # fmt: skip
    samples = {s.key: s.files for s in iter_samples(str(shard)) if not s.error}
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
    # b is done and not computed again: a pair's bytes do not depend on the variants beside it
    assert [(v.name, v.write) for v in works["v"].variants] == [("a", True)]
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


# ---- hostile shards: each ends as error rows (or a recorded damage row), never as a lost shard


def samples_of(path, limits=None) -> list[tuple[str, dict, str]]:
    return [(s.key, s.files, s.error) for s in iter_samples(str(path), limits)]


def test_a_member_over_the_limit_is_never_read(tmp_path):
    """A real 3 GiB member (a sparse file: no disk, no memory): refused from its header, and the
    samples around it come through, with memory far below the member's size."""
    path = tmp_path / "big.tar"
    head = tar_bytes([("a.mp4", b"A" * 100)])
    head = head[: header_offsets(head)["a.mp4"] + 2 * tarfile.BLOCKSIZE]  # header + data block only
    big = tarfile.TarInfo("huge.mp4")
    big.size = 3 * 1024**3
    tail = tar_bytes([("z.mp4", b"Z" * 10), ("z.txt", b"after the giant")])
    with open(path, "wb") as f:
        f.write(head + big.tobuf(tarfile.PAX_FORMAT))
        f.truncate(f.tell() + big.size)  # sparse: a hole of 3 GiB
        f.seek(0, 2)
        f.write(tail)
    assert os.path.getsize(path) > big.size
    gc.collect()
    tracemalloc.start()
    try:
        got = samples_of(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024**2, peak
    assert got[0] == ("a", {"mp4": b"A" * 100}, "")
    assert got[1][0] == "huge" and got[1][1] == {}
    assert got[1][2] == (
        f"sample 'huge' member 'huge.mp4' has {3 * 1024**3} bytes, more than limits.max_member_bytes ({2 * 1024**3})"
    )
    assert got[2] == ("z", {"mp4": b"Z" * 10, "txt": b"after the giant"}, "")
    assert len(got) == 3
    # the limits are the job's: a small one refuses a small member, and a sample's total is capped too
    small = samples_of(write_shard(tmp_path / "s.tar", [("m.mp4", b"x" * 5000)]), Limits(max_member_bytes=4999))
    assert small == [("m", {}, "sample 'm' member 'm.mp4' has 5000 bytes, more than limits.max_member_bytes (4999)")]
    write_shard(tmp_path / "t.tar", [("m.mp4", b"x" * 600), ("m.json", b"{}" * 300), ("n.mp4", b"ok")])
    total = samples_of(tmp_path / "t.tar", Limits(max_sample_bytes=1000))
    assert total == [("m", {}, "sample 'm' has 1200 bytes in its members, more than limits.max_sample_bytes (1000)"),
                     ("n", {"mp4": b"ok"}, "")]  # fmt: skip


def three_samples() -> bytes:
    return tar_bytes([("a.mp4", b"a" * 700), ("a.txt", b"cap a"), ("b.mp4", b"b" * 900), ("c.mp4", b"c" * 3000)])


def test_a_truncated_tar_keeps_the_samples_before_the_damage(tmp_path):
    data = three_samples()
    at = header_offsets(data)
    good = [("a", {"mp4": b"a" * 700, "txt": b"cap a"}, ""), ("b", {"mp4": b"b" * 900}, "")]
    # cut inside c's data: c's own row records it
    (tmp_path / "data.tar").write_bytes(data[: at["c.mp4"] + 512 + 1000])
    got = samples_of(tmp_path / "data.tar")
    assert got[:2] == good and len(got) == 3
    assert got[2] == ("c", {}, "sample 'c' member 'c.mp4' claims 3000 bytes but the shard ends 1000 bytes after its "
                               "start (a truncated tar or a lying header)")  # fmt: skip
    # cut inside c's header, or exactly before it (tarfile alone would end there quietly): one damage row
    for cut, damage in [(at["c.mp4"] + 100, "no end-of-archive marker"), (at["c.mp4"], "no end-of-archive marker")]:
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        got = samples_of(tmp_path / "cut.tar")
        assert got[:2] == good and len(got) == 3, got
        assert got[2][:2] == ("", {}) and damage in got[2][2] and f"byte {at['c.mp4']}" in got[2][2]
    # a gzip-compressed tar cut short: the samples before the cut, then the damage
    import gzip

    random_c = tar_bytes(
        [("a.mp4", b"a" * 700), ("a.txt", b"cap a"), ("b.mp4", b"b" * 900), ("c.mp4", os.urandom(3000))]
    )
    (tmp_path / "z.tar.gz").write_bytes(gzip.compress(random_c)[:-500])  # cut inside c's (incompressible) data
    got = samples_of(tmp_path / "z.tar.gz")
    assert got[:2] == good and got[-1][0] in ("", "c") and got[-1][2], got


def test_a_header_that_lies_about_a_size(tmp_path):
    data = three_samples()
    at = header_offsets(data)
    # b claims more than the file holds: b is an error row, a comes through; c (inside b's claim) is gone
    (tmp_path / "big.tar").write_bytes(patch_size(data, at["b.mp4"], 10**9))
    got = samples_of(tmp_path / "big.tar")
    assert got[0] == ("a", {"mp4": b"a" * 700, "txt": b"cap a"}, "")
    assert got[1][:2] == ("b", {}) and "claims 1000000000 bytes but the shard ends" in got[1][2]
    assert len(got) == 2
    # b claims less: the scan lands inside b's data, which is no header -> a damage row (b is cut short:
    # its bytes are what the header says, and decoding will judge them)
    (tmp_path / "small.tar").write_bytes(patch_size(data, at["b.mp4"], 100))
    got = samples_of(tmp_path / "small.tar")
    assert got[0][0] == "a" and got[1] == ("b", {"mp4": b"b" * 100}, "")
    assert got[2][0] == "" and "no end-of-archive marker" in got[2][2] and len(got) == 3
    # a PAX extended header claiming 4 GiB: tarfile would read it whole; refused, not read into memory
    pax = tar_bytes([("a.mp4", b"a"), ("ü.mp4", b"u"), ("z.mp4", b"z")])  # the non-ASCII name gets a PAX header
    offset = pax.index(b"PaxHeader") // tarfile.BLOCKSIZE * tarfile.BLOCKSIZE  # the extended header's block
    gc.collect()
    tracemalloc.start()
    try:
        (tmp_path / "pax.tar").write_bytes(patch_size(pax, offset, 4 * 1024**3))
        got = samples_of(tmp_path / "pax.tar")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024**2, peak
    assert got[0] == ("a", {"mp4": b"a"}, "") and len(got) == 2
    assert got[1][0] == "" and "a header claims 4294967296 bytes" in got[1][2]


def test_unsafe_keys_become_error_rows_under_a_printable_key(tmp_path):
    nul = tarfile.TarInfo("x.mp4")
    nul.pax_headers = {"path": "nul\x00key.mp4"}
    members = [
        ("../evil.mp4", b"1"), ("/etc/abs.mp4", b"2"), ("d/../../up.mp4", b"3"),
        ("bad\udcff.mp4", b"5"), ("tab\tkey.mp4", b"6"), ("bad\\xff.mp4", b"7"), ("./fine.mp4", b"8"),
        ("ok/ünï.mp4", b"9"),
    ]  # fmt: skip
    (tmp_path / "keys.tar").write_bytes(tar_bytes(members, format=tarfile.GNU_FORMAT))
    (tmp_path / "pax.tar").write_bytes(tar_bytes([(nul, b"4"), ("bad\udcff.mp4", b"5")]))
    got = samples_of(tmp_path / "keys.tar")
    rows = {key: error for key, _, error in got}
    # the literal key "bad\xff" is safe and keeps its name; the unsafe one is made unique
    assert list(rows) == [
        "../evil",
        "/etc/abs",
        "d/../../up",
        "bad\\xff#2",
        "tab\\x09key",
        "bad\\xff",
        "./fine",
        "ok/ünï",
    ]
    pax = samples_of(tmp_path / "pax.tar")  # PAX names: a NUL survives; the bad byte has no safe twin here
    assert [(k, "unsafe" in e) for k, _, e in pax] == [("nul\\x00key", True), ("bad\\xff", True)]
    assert rows["../evil"] == "sample key '../evil' is unsafe: it has a '..' component"
    assert rows["/etc/abs"] == "sample key '/etc/abs' is unsafe: it is an absolute path"
    not_utf8 = "it has NUL, control characters or bytes that are not UTF-8"
    assert rows["bad\\xff#2"] == f"sample key 'bad\\xff' is unsafe: {not_utf8}"
    assert "unsafe" in rows["tab\\x09key"] and "unsafe" in rows["d/../../up"]
    assert rows["./fine"] == rows["ok/ünï"] == rows["bad\\xff"] == ""
    for key in [*rows, *(k for k, _, _ in pax)]:  # every row key is printable UTF-8 text
        assert key.isprintable() and key.encode("utf-8")
    assert printable_key("a\udcfe\x01\\") == "a\\xfe\\x01\\\\"
    # through read_shard: error rows with the job's variants, never a stored-inversion lookup or a crash
    works = [w["work"] for w in read_shard({"shard": str(tmp_path / "keys.tar"), "shard_id": "k", "done": []}, JOB)]
    assert [(w.key, w.error) for w in works] == [(k, e) for k, _, e in got]
    assert [w.stored_inversion for w in works] == [None] * 8 and all(len(w.variants) == 2 for w in works)


def test_thousands_of_members_per_key_are_capped(tmp_path):
    members = [(f"many.{i}.bin", b"m" * 100) for i in range(5000)] + [("many.mp4", b"v"), ("good.mp4", b"g")]
    write_shard(tmp_path / "many.tar", members)
    got = samples_of(tmp_path / "many.tar")
    assert got == [("many", {}, "sample 'many' has 5001 members, more than limits.max_members_per_key (64)"),
                   ("good", {"mp4": b"g"}, "")]  # fmt: skip
    assert samples_of(tmp_path / "many.tar", Limits(max_members_per_key=6000))[0][2] == ""


def test_hostile_metadata_fails_its_sample_only(tmp_path):
    write_shard(tmp_path / "m.tar", [
        ("deep.mp4", b"v"), ("deep.json", b"[" * 100000), ("sur.mp4", b"v"), ("sur.json", b'{"caption": "\\ud800"}'),
        ("num.mp4", b"v"), ("num.json", b'{"n": ' + b"9" * 5000 + b"}"), ("good.mp4", b"v"), ("good.txt", b"a dog"),
    ])  # fmt: skip
    works = {w["work"].key: w["work"] for w in read_shard({"shard": str(tmp_path / "m.tar"), "shard_id": "m",
                                                            "done": []}, JOB)}  # fmt: skip
    assert "deep.json is not valid JSON (RecursionError" in works["deep"].error
    assert works["sur"].error == "sur.json has text that is not valid Unicode (a lone surrogate)"
    assert "num.json is not valid JSON (ValueError: Exceeds the limit" in works["num"].error
    assert works["good"].error == "" and works["good"].variants[0].settings.prompt == "a dog!"


def test_templates_refuse_attribute_index_conversion_and_format_spec():
    meta = {"caption": "a dog", "obj": {"k": "secret"}}
    for template, field in [("{caption.__class__}", "{caption.__class__}"), ("{obj[k]}", "{obj[k]}"),
                            ("{caption!r}", "!r"), ("{caption:>999999999}", ":>999999999")]:  # fmt: skip
        try:
            render(template, meta, "prompt", "k")
        except Exception as e:  # noqa: BLE001
            assert field in str(e) and str(e).startswith("prompt template field") and "\n" not in str(e)
        else:
            raise AssertionError(f"{template} rendered")
    assert render("{caption} {{x}} {obj}", meta, "prompt", "k") == "a dog {x} {'k': 'secret'}"
