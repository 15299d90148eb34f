"""Shards from people we do not control: what a hostile or broken sample may not make the job do.

The tar-level cases (sizes, truncation, lying headers, unsafe keys, members per key) are in
test_read_shards.py; here: metadata paths and URLs, decompression bombs, templates, output names, the
limits' settings, and one whole job on the tiny model over a shard mixing good and hostile samples.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TINY_MODEL, moving_clip
from shards import bomb_png, header_offsets, mp4, png, read_tar, recolor, tar_bytes

from anyv2v_batch import AnyV2VError
from anyv2v_batch.cli import main
from anyv2v_batch.editors import SampleContext, editor_class, load_editor
from anyv2v_batch.job import JobError, build_job
from anyv2v_batch.operators.encode import PairResult
from anyv2v_batch.operators.write import part_bytes
from anyv2v_batch.video_io import encode_png, read_image

FRAME = moving_clip(1, 32, 32)[0]
EDITED = np.full((32, 32, 3), 7, np.uint8)


def run(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def edit_with(meta: dict, options: dict | None = None, key: str = "k") -> np.ndarray:
    return load_editor("provided", device="cpu").edit(FRAME, options or {}, SampleContext(key, meta=meta))


# ---- metadata paths and URLs


def test_metadata_paths_and_urls_are_refused_by_default():
    for location in ["/etc/passwd", "http://169.254.169.254/latest/meta-data/", "../../etc/passwd", "s3://other/x.png"]:
        with pytest.raises(AnyV2VError) as e:
            edit_with({"edited_first_frame": location})
        message = str(e.value)
        assert message.startswith(f"sample 'k': metadata field 'edited_first_frame' names {location!r}")
        assert "allowed_roots (none set" in message and "--editor-option allowed_roots=[" in message
        assert "\n" not in message
    with pytest.raises(AnyV2VError, match="not under the editor option allowed_roots"):  # style-transfer too
        editor_class("style-transfer").style_image({}, SampleContext("k", meta={"style": "/etc/hostname"}))


def test_local_roots_cannot_be_escaped(tmp_path):
    edits, secret = tmp_path / "edits", tmp_path / "secret.png"
    edits.mkdir()
    (edits / "e.png").write_bytes(encode_png(EDITED))
    secret.write_bytes(encode_png(EDITED))
    (tmp_path / "edits-other").mkdir()
    (tmp_path / "edits-other" / "e.png").write_bytes(encode_png(EDITED))
    (edits / "link.png").symlink_to(secret)
    options = {"allowed_roots": [str(edits)]}
    assert np.array_equal(edit_with({"edited_first_frame": str(edits / "e.png")}, options), EDITED)
    assert np.array_equal(edit_with({"edited_first_frame": f"file://{edits}/e.png"}, options), EDITED)
    for location in [
        f"{edits}/../secret.png",  # '..' out of the root
        str(edits / "link.png"),  # a symlink inside pointing outside
        str(tmp_path / "edits-other" / "e.png"),  # a sibling sharing the root's name as a prefix
        "edits/e.png",  # relative: to what?
        f"simplecache::file://{edits}/e.png",  # an fsspec chain
        f"file://{edits}/%2e%2e/secret.png",
    ]:
        with pytest.raises(AnyV2VError, match="not under the editor option allowed_roots"):
            edit_with({"edited_first_frame": location}, options)


def test_url_roots_compare_scheme_host_and_normalised_path():
    fs = fsspec.filesystem("memory")
    fs.pipe("/edits/e.png", encode_png(EDITED))
    fs.pipe("/private/p.png", encode_png(EDITED))
    options = {"allowed_roots": ["memory://edits/"]}
    assert np.array_equal(edit_with({"edited_first_frame": "memory://edits/e.png"}, options), EDITED)
    for location in [
        "memory://edits/../private/p.png",
        "memory://edits/%2e%2e/private/p.png",
        "memory://edits/..%2fprivate/p.png",
        "memory://private/p.png",
        "http://edits/e.png",  # same host and path, another scheme
    ]:
        with pytest.raises(AnyV2VError, match="not under the editor option allowed_roots"):
            edit_with({"edited_first_frame": location}, options)
    web = {"allowed_roots": ["https://cdn.example.com/edits/"]}
    for location in ["https://cdn.example.com@169.254.169.254/edits/x.png", "https://cdn.example.com.evil.net/edits/x",
                     "https://cdn.example.com/editsx/y.png"]:  # fmt: skip
        with pytest.raises(AnyV2VError, match="not under"):  # refused before any request is made
            edit_with({"edited_first_frame": location}, web)


def test_allowed_roots_are_checked_before_work_and_listed(tmp_path, capsys):
    for bad in ["relative/dir", 5, [""]]:
        with pytest.raises(AnyV2VError, match="allowed_roots"):
            editor_class("provided").check_options({"allowed_roots": bad})
    code, _, err = run(["run", "--input", tmp_path / "none.tar", "--output", tmp_path / "o",
                        "--editor-option", "allowed_roots=[edits]"], capsys)  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "must be an absolute path or a URL prefix" in lines[0], err
    assert not (tmp_path / "o").exists()
    code, out, _ = run(["editors"], capsys)
    assert code == 0 and "    allowed_roots: path or URL prefixes" in out


# ---- decompression bombs


def test_an_image_over_the_pixel_limit_is_refused_before_decoding():
    bomb = bomb_png(12000, 10000)  # 15 KB, 120 megapixels: PIL alone only warns, then decodes it
    assert len(bomb) < 20_000
    with pytest.raises(AnyV2VError) as e:
        read_image(bomb, name="k.edited.png")
    assert str(e.value) == (
        "image 'k.edited.png' is 12000x10000 (120000000 pixels), more than the limit of 50000000 "
        "(limits.max_image_pixels)"
    )
    with pytest.raises(AnyV2VError, match="12000x10000"):  # the provided editor, from the sample's own member
        load_editor("provided", device="cpu").edit(FRAME, {}, SampleContext("k", files={"edited.png": bomb}))
    with pytest.raises(AnyV2VError, match="is 32x32 \\(1024 pixels\\), more than the limit of 1023"):
        read_image(encode_png(EDITED), max_pixels=1023)
    assert read_image(encode_png(EDITED), max_pixels=1024).shape == (32, 32, 3)
    context = SampleContext("k", files={"edited.png": encode_png(EDITED)}, max_image_pixels=1000)
    with pytest.raises(AnyV2VError, match="more than the limit of 1000"):
        load_editor("provided", device="cpu").edit(FRAME, {}, context)


# ---- templates, limits, output names


def test_templates_are_checked_when_the_job_is_validated(tmp_path, capsys):
    for variant, message in [
        ({"name": "a", "prompt": "{caption.__class__.__init__}"}, "variants[0].edit.prompt template field "
                                                                  "{caption.__class__.__init__} is not a plain name"),
        ({"name": "a", "prompt": "{caption:>999999999}"}, "variants[0].edit.prompt template field {caption} has a "
                                                          "format spec :>999999999"),
        ({"name": "a", "edit_prompt": "{meta[0]}"}, "variants[0].edit_prompt template field {meta[0]} is not a plain"),
        ({"name": "a", "prompt": "{caption!s}"}, "variants[0].edit.prompt template field {caption} has a conversion"),
    ]:  # fmt: skip
        with pytest.raises(JobError) as e:
            build_job({"input": "x.tar", "output": "o", "variants": [variant]})
        assert str(e.value).startswith(f"job: {message}"), str(e.value)
    code, _, err = run(["run", "--input", tmp_path / "x.tar", "--output", tmp_path / "o", "--prompt",
                        "{caption.__globals__}"], capsys)  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "{caption.__globals__} is not a plain name" in lines[0], err


def test_limits_are_validated_and_settable():
    job = build_job({"input": "x.tar", "output": "o"}, overrides={"limits.max_members_per_key": 8})
    assert job.limits.max_members_per_key == 8 and job.limits.max_member_bytes == 2 * 1024**3
    assert job.limits.max_image_pixels == 50_000_000
    for overrides, message in [
        ({"limits.max_member_bytes": 0}, "limits.max_member_bytes must be >= 1, got 0"),
        ({"limits.max_image_pixels": "many"}, "limits.max_image_pixels must be an int, got 'many'"),
        ({"limits.max_bytes": 1}, "limits.max_bytes is not a job field"),
    ]:
        with pytest.raises(JobError, match=message):
            build_job({"input": "x.tar", "output": "o"}, overrides=overrides)


def test_no_output_member_is_named_by_an_unsafe_key():
    row = {"key": "../../etc/evil", "variant": "a", "status": "error"}
    error_pair = PairResult("s.tar", "s", "../../etc/evil", "a", "error", "unsafe", row, {})
    with tarfile.open(fileobj=io.BytesIO(part_bytes(error_pair))) as tar:
        names = tar.getnames()
    assert len(names) == 1 and names[0].endswith(".row.json") and "/" not in names[0] and ".." not in names[0]
    for key in ["../../etc/evil", "/abs/evil", "nul\x00key", "bad\udcffkey"]:  # and never an ok pair's files
        pair = PairResult("s.tar", "s", key, "a", "ok", "", {**row, "key": key}, {"mp4": b"x"})
        with pytest.raises(ValueError, match="refusing to write tar member"):
            part_bytes(pair)


# ---- one whole job over a shard mixing good and hostile samples


def listing(folder: Path, skip: Path | None = None) -> set[str]:
    return {str(p) for p in folder.rglob("*") if skip is None or skip not in p.parents and p != skip}


def hostile_shard(root: Path) -> Path:
    clip = moving_clip(12, 32, 32, seed=1)
    video, edited = mp4(clip), png(recolor(clip[0]))
    nul = tarfile.TarInfo("x.mp4")
    nul.pax_headers = {"path": "nul\x00key.mp4"}
    members = [
        ("clip0.mp4", video), ("clip0.json", json.dumps({"caption": "a red car"}).encode()),
        ("clip0.edited.png", edited),
        ("../evil.mp4", video), ("../evil.txt", b"x"), ("../evil.edited.png", edited),
        ("/tmp/abs-evil.mp4", video), ("/tmp/abs-evil.edited.png", edited),
        (nul, video), ("bad\udcffkey.mp4", video),
        ("passwd.mp4", video),
        ("passwd.json", json.dumps({"caption": "c", "edited_first_frame": "/etc/passwd"}).encode()),
        ("meta-url.mp4", video),
        ("meta-url.json", json.dumps({"caption": "c", "edited_first_frame": "http://169.254.169.254/latest"}).encode()),
        ("bomb.mp4", video), ("bomb.txt", b"a bomb"), ("bomb.edited.png", bomb_png(12000, 10000)),
        ("big.mp4", video), ("big.txt", b"big"), ("big.extra.bin", b"\0" * 300_000),
        *[(f"many.{i}.bin", b"m") for i in range(100)],
        ("clip1.mp4", video), ("clip1.txt", b"a {caption.__class__} dog"), ("clip1.edited.png", edited),
        ("cut.mp4", video),
    ]  # fmt: skip
    data = tar_bytes(members)
    path = root / "shards" / "000000.tar"
    path.parent.mkdir(parents=True)
    path.write_bytes(data[: header_offsets(data)["cut.mp4"] + 200])  # the shard ends inside the last header
    return path


EXPECTED = {
    "clip0": "ok",
    "clip1": "ok",
    "../evil": "sample key '../evil' is unsafe: it has a '..' component",
    "/tmp/abs-evil": "sample key '/tmp/abs-evil' is unsafe: it is an absolute path",
    "nul\\x00key": "sample key 'nul\\x00key' is unsafe: it has NUL, control characters or bytes that are not UTF-8",
    "bad\\xffkey": "sample key 'bad\\xffkey' is unsafe: it has NUL, control characters or bytes that are not UTF-8",
    "passwd": "editor provided: sample 'passwd': metadata field 'edited_first_frame' names '/etc/passwd', which is "
    "not under the editor option allowed_roots",
    "meta-url": "editor provided: sample 'meta-url': metadata field 'edited_first_frame' names "
    "'http://169.254.169.254/latest', which is not under",
    "bomb": "editor provided: image 'bomb.edited.png' is 12000x10000 (120000000 pixels), more than the limit of "
    "50000000 (limits.max_image_pixels)",
    "big": "sample 'big' member 'big.extra.bin' has 300000 bytes, more than limits.max_member_bytes (200000)",
    "many": "sample 'many' has 100 members, more than limits.max_members_per_key (64)",
    "": "no end-of-archive marker at byte",
}


@pytest.fixture(scope="module")
def hostile_run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    shard = hostile_shard(root)
    job = {
        "input": str(shard),
        "output": str(root / "out"),
        "model": str(TINY_MODEL),
        "device": "cpu",
        "clip": {"frames": 6, "fps": 8, "width": 32, "height": 32},
        "inversion": {"steps": 2},  # the rows and files do not depend on the steps
        "edit": {"steps": 2},
        "editor": "provided",
        "variants": [{"name": "wc", "prompt": "{caption}, watercolor"}],
        "limits": {"max_member_bytes": 200_000},
        "pools": {p: {"num_cpus": 0.5} for p in ("decode", "editor", "inversion", "sampler", "encode")},
        "share_model": True,  # one model actor: one load (the same bytes as separate pools)
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    base = root.parent
    before_root, before_base = listing(root), {p.name for p in base.iterdir()}
    before_tmp = set(os.listdir("/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        captured: list[str] = []
        mp.setattr("anyv2v_batch.cli._say", lambda quiet, m: captured.append(m))
        with pytest.raises(SystemExit) as e:
            main(["run", str(root / "job.yaml")])
            raise SystemExit(0)
    written = {
        "root": listing(root, skip=root / "out") - before_root,
        "base": {p.name for p in base.iterdir()} - before_base,
        "tmp": {n for n in set(os.listdir("/tmp")) - before_tmp if "evil" in n or "key" in n},
    }
    return root, e.value.code, captured, written


def test_the_job_finishes_with_exact_rows_for_good_and_hostile_samples(hostile_run):
    root, code, log, _ = hostile_run
    assert code == 0, log
    assert "12 (clip, variant) pairs processed: 2 ok, 10 errors" in log[-1], log
    rows = pq.read_table(root / "out" / "metadata").to_pylist()
    assert sorted(r["key"] for r in rows) == sorted(EXPECTED)  # each once, every key printable
    for r in rows:
        want = EXPECTED[r["key"]]
        if want == "ok":
            assert r["status"] == "ok" and r["error"] == "", r
        else:
            assert r["status"] == "error" and want in r["error"], (r["key"], r["error"])
    prompts = {r["key"]: r["prompt"] for r in rows if r["status"] == "ok"}
    assert prompts == {"clip0": "a red car, watercolor", "clip1": "a {caption.__class__} dog, watercolor"}


def test_the_output_holds_only_the_good_samples_and_nothing_is_written_elsewhere(hostile_run):
    root, _, _, written = hostile_run
    out = read_tar(root / "out" / "shards" / "000000.tar")
    assert list(out) == [f"clip{i}.wc.{e}" for i in (0, 1) for e in ("json", "mp4", "png")]
    files = sorted(str(p.relative_to(root / "out")) for p in (root / "out").rglob("*") if p.is_file())
    assert files == ["_progress.json", "metadata/000000.parquet", "shards/000000.tar"]
    # the total counted from the headers before work (damage, unsafe keys, limits) is the rows written
    progress = json.loads((root / "out" / "_progress.json").read_text())
    assert (progress["state"], progress["total"], progress["done"]) == ("finished", len(EXPECTED), len(EXPECTED))
    assert written == {"root": set(), "base": set(), "tmp": set()}
    assert not Path("/tmp/abs-evil.wc.mp4").exists() and not (root / "evil.wc.mp4").exists()
