"""`anyv2v-batch pack`: a real folder of videos (the official demo layout, the `.edited.png` convention,
captions files, a corrupt video, a corrupt edited frame) into shards, checked member by member, byte
for byte, and read back by the job's shard reader (a whole job on packed shards: tests/test_demo.py)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import moving_clip
from shards import image, mp4, png, read_tar, recolor

from anyv2v_batch.cli import main
from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.operators.read_shards import VIDEO_EXTENSIONS, iter_samples, sample_metadata
from anyv2v_batch.pack import pack_folder

OFFICIAL = "Man Walking"  # the official demo layout: <name>.mp4 and <name>/edited_first_frame/*.png


def clip(seed: int) -> np.ndarray:
    return moving_clip(12, 32, 32, seed=seed)


def build_folder(root: Path) -> Path:
    """Four readable videos (five samples) and two files that do not read."""
    data = root / "data"
    edits = data / OFFICIAL / "edited_first_frame"
    edits.mkdir(parents=True)
    (data / "sub").mkdir()
    (data / "clip_a.mp4").write_bytes(mp4(clip(0)))
    (data / "clip_a.edited.png").write_bytes(png(recolor(clip(0)[0])))
    (data / "clip_a.txt").write_text("a red car\n")
    (data / f"{OFFICIAL}.mp4").write_bytes(mp4(clip(1)))
    for i, frame in enumerate(clip(1)[:3]):  # the official folder also holds the source frames: not videos
        (data / OFFICIAL / f"{i:05d}.png").write_bytes(png(frame))
    (edits / "batman.png").write_bytes(png(recolor(clip(1)[0])))
    (edits / "turn him into an astronaut.png").write_bytes(png(255 - clip(1)[0]))
    (data / "sub" / "clip b.mp4").write_bytes(mp4(clip(2)))
    (data / "sub" / "clip b.edited.png").write_bytes(png(recolor(clip(2)[0])))
    (data / "sub" / "bad_edit.mp4").write_bytes(mp4(clip(3)))
    (data / "sub" / "bad_edit.edited.png").write_bytes(b"\x89PNG but not really")
    (data / "broken.mp4").write_bytes(mp4(clip(4))[:1500])  # cut short: no index
    (data / "notes.md").write_text("not a video")
    (data / ".hidden.mp4").write_bytes(b"ignored")
    return data


def official_captions(root: Path) -> Path:
    """The official group_config.json's shape: one record per (video, edited frame)."""
    records = [
        {"video_name": OFFICIAL, "edited_first_frame_path": f"demo/{OFFICIAL}/edited_first_frame/batman.png",
         "editing_prompt": "batman walking", "pnp_f_t": 0.2},
        {"video_name": OFFICIAL, "edited_first_frame_path": f"demo/{OFFICIAL}/edited_first_frame/"
         "turn him into an astronaut.png", "editing_prompt": "an astronaut walking"},
        {"video_name": "clip b", "editing_prompt": "a bus in the rain"},
        {"video_name": "missing", "editing_prompt": "nobody"},
    ]  # fmt: skip
    path = root / "group_config.json"
    path.write_text(json.dumps(records))
    return path


def run(argv, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
        raise SystemExit(0)
    return e.value.code, capsys.readouterr().err.splitlines()


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


KEYS = ["Man_Walking__batman", "Man_Walking__turn_him_into_an_astronaut", "clip_a", "clip_b"]


def test_pack_writes_exact_members_and_reports_skips(tmp_path, capsys):
    data = build_folder(tmp_path)
    code, lines = run(["pack", data, "-o", tmp_path / "shards", "--captions", official_captions(tmp_path),
                       "--shard-size", 3], capsys)  # fmt: skip
    assert code == 0, lines
    assert lines[0] == "captions: group_config.json item 3: no video 'missing' in the folder"
    assert lines[1] == "skipped sub/bad_edit.edited.png: not a readable image"  # in key order
    assert lines[2] == (
        "skipped broken.mp4: not a readable video (decord: Error reading broken.mp4; "
        "pyav: [Errno 1094995529] Invalid data found when processing input: 'broken.mp4')"
    )
    assert lines[3] == (
        f"packed 4 samples into 2 shards ({tmp_path / 'shards'}/{{000000..000001}}.tar); skipped 2; "
        "1 caption entry matched no video"
    )
    assert len(lines) == 4  # one line per file left out, nothing from FFmpeg
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["000000.tar", "000001.tar"]
    s0, s1 = read_tar(tmp_path / "shards" / "000000.tar"), read_tar(tmp_path / "shards" / "000001.tar")
    assert list(s0) == [f"{k}.{e}" for k in KEYS[:3] for e in ("edited.png", "json", "mp4")]
    assert list(s1) == ["clip_b.edited.png", "clip_b.json", "clip_b.mp4"]
    # the files' own bytes, not re-encoded
    assert s0["clip_a.mp4"] == (data / "clip_a.mp4").read_bytes()
    assert s0["Man_Walking__batman.mp4"] == s0["Man_Walking__turn_him_into_an_astronaut.mp4"]
    assert s0["Man_Walking__batman.edited.png"] == (data / OFFICIAL / "edited_first_frame" / "batman.png").read_bytes()
    assert np.array_equal(image(s1["clip_b.edited.png"]), recolor(clip(2)[0]))
    meta = json.loads(s0["Man_Walking__batman.json"])
    assert meta == {
        "video_name": OFFICIAL, "edited_first_frame_path": f"demo/{OFFICIAL}/edited_first_frame/batman.png",
        "editing_prompt": "batman walking", "pnp_f_t": 0.2, "caption": "batman walking",
        "source_file": f"{OFFICIAL}.mp4", "edited_file": f"{OFFICIAL}/edited_first_frame/batman.png",
        "source_frames": 12, "source_fps": 8.0, "source_width": 32, "source_height": 32,
    }  # fmt: skip
    assert json.loads(s0["clip_a.json"])["caption"] == "a red car"  # from clip_a.txt
    assert json.loads(s0["Man_Walking__turn_him_into_an_astronaut.json"])["caption"] == "an astronaut walking"
    assert json.loads(s1["clip_b.json"])["caption"] == "a bus in the rain"
    # the job's reader sees the same samples
    read = {sample.key: sample.files for sample in iter_samples(str(tmp_path / "shards" / "000000.tar"))}
    assert list(read) == KEYS[:3] and set(read["clip_a"]) == {"edited.png", "json", "mp4"}
    assert sample_metadata("clip_a", read["clip_a"])["caption"] == "a red car"
    with tarfile.open(tmp_path / "shards" / "000000.tar") as tar:  # fixed member metadata
        fixed = {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in tar.getmembers()}
    assert fixed == {(0, 0, 0, "", "", 0o644)}


def test_repack_is_byte_identical(tmp_path, capsys):
    data = build_folder(tmp_path)
    captions = official_captions(tmp_path)
    assert run(["pack", data, "-o", tmp_path / "one", "--captions", captions, "--shard-size", 2], capsys)[0] == 0
    for p in data.rglob("*"):  # new modification times, same contents
        os.utime(p, (1_700_000_000, 1_700_000_000))
    assert run(["pack", data, "-o", tmp_path / "two", "--captions", captions, "--shard-size", 2], capsys)[0] == 0
    assert digests(tmp_path / "one") == digests(tmp_path / "two")
    assert len(digests(tmp_path / "one")) == 2
    before = digests(tmp_path / "one")
    code, _ = run(["pack", data, "-o", tmp_path / "one", "--captions", captions, "--shard-size", 2, "--overwrite"],
                  capsys)  # fmt: skip
    assert code == 0 and digests(tmp_path / "one") == before


def shard_payloads(path: Path) -> list[int]:
    """Per sample of a shard: the bytes its members take (headers and padded data)."""
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    ends, spans, start = {}, [], 0
    for m in members:
        ends[m.name.split(".", 1)[0]] = m.offset_data + math.ceil(m.size / 512) * 512
    for key in dict.fromkeys(m.name.split(".", 1)[0] for m in members):
        spans.append(ends[key] - start)
        start = ends[key]
    return spans


def test_shards_respect_the_byte_limit_and_are_full(tmp_path, capsys):
    data = build_folder(tmp_path)
    limit = 20480  # two tar records: room for two of these samples, not three
    code, lines = run(["pack", data, "-o", tmp_path / "out", "--max-shard-bytes", limit, "--shard-size", 100], capsys)
    assert code == 0, lines
    shards = sorted((tmp_path / "out").iterdir())
    payloads = [shard_payloads(p) for p in shards]
    assert [len(p) for p in payloads] == [2, 2]
    record = lambda payload: math.ceil((payload + 1024) / 10240) * 10240  # noqa: E731 - a tar's file size
    for path, spans in zip(shards, payloads, strict=True):
        assert path.stat().st_size == record(sum(spans)) <= limit
    # greedy: the next shard's first sample would not have fitted
    assert record(sum(payloads[0]) + payloads[1][0]) > limit
    # a sample bigger than the limit gets a shard of its own instead of failing
    (data / "big.mp4").write_bytes(mp4(moving_clip(24, 96, 96, seed=8)))
    code, lines = run(["pack", data, "-o", tmp_path / "tiny", "--max-shard-bytes", 10240], capsys)
    shards = sorted((tmp_path / "tiny").iterdir())
    assert code == 0 and [len(shard_payloads(p)) for p in shards] == [1] * 5 and "into 5 shards" in lines[-1]
    assert [p.stat().st_size > 10240 for p in shards] == [False, False, True, False, False]  # big: after Man_*


def test_overwrite_replaces_old_shards_and_keeps_other_files(tmp_path, capsys):
    data = build_folder(tmp_path)
    out = tmp_path / "out"
    assert run(["pack", data, "-o", out, "--shard-size", 1], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [f"{i:06d}.tar" for i in range(4)]
    (out / "README.txt").write_text("mine")
    code, lines = run(["pack", data, "-o", out, "--shard-size", 4], capsys)
    assert code == 1 and lines == [f"error: output {str(out)!r} is not empty; pass --overwrite to replace its shards"]
    assert run(["pack", data, "-o", out, "--shard-size", 4, "--overwrite"], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["000000.tar", "README.txt"]  # stale shards gone
    assert list(read_tar(out / "000000.tar"))[::3] == [f"{k}.edited.png" for k in KEYS]


def test_captions_csv_and_yaml_and_pattern(tmp_path, capsys):
    data = build_folder(tmp_path)
    csv_file = tmp_path / "captions.csv"
    csv_file.write_text(
        "file,caption,style\n"
        'sub/clip b.mp4,"a bus, at night",noir\n'  # by its path under the folder
        "clip_a.mp4,a blue car,\n"  # by file name: the captions file wins over clip_a.txt
        "Man_Walking__batman,batman,comic\n"  # by sample key: that sample only
        f"{OFFICIAL},a man walking,\n"  # by stem: every sample of the video (after sample-level entries)
    )
    code, lines = run(["pack", data, "-o", tmp_path / "csv", "--captions", csv_file, "--pattern", "train-{:04d}.tar"],
                      capsys)  # fmt: skip
    assert code == 0, lines
    assert lines[-1].startswith(f"packed 4 samples into 1 shard ({tmp_path / 'csv'}/train-0000.tar)")
    shard = read_tar(tmp_path / "csv" / "train-0000.tar")
    meta = {k: json.loads(shard[f"{k}.json"]) for k in KEYS}
    assert {k: m["caption"] for k, m in meta.items()} == {
        "Man_Walking__batman": "batman", "Man_Walking__turn_him_into_an_astronaut": "a man walking",
        "clip_a": "a blue car", "clip_b": "a bus, at night",
    }  # fmt: skip
    assert meta["clip_b"]["style"] == "noir" and meta["Man_Walking__batman"]["style"] == "comic"
    assert meta["clip_a"]["style"] == ""

    yaml_file = tmp_path / "captions.yaml"
    yaml_file.write_text(yaml.safe_dump({"clip_a": "a yellow car", "clip b": {"prompt": "a tram", "year": 1999}}))
    assert run(["pack", data, "-o", tmp_path / "yaml", "--captions", yaml_file], capsys)[0] == 0
    shard = read_tar(tmp_path / "yaml" / "000000.tar")
    assert json.loads(shard["clip_a.json"])["caption"] == "a yellow car"
    assert {k: v for k, v in json.loads(shard["clip_b.json"]).items() if k in ("caption", "prompt", "year")} == {
        "caption": "a tram", "prompt": "a tram", "year": 1999,
    }  # fmt: skip
    assert "caption" not in json.loads(shard["Man_Walking__batman.json"])


def test_colliding_names_are_refused_or_keyed_by_path(tmp_path, capsys):
    data = tmp_path / "data"
    for folder in ("a", "b"):
        (data / folder).mkdir(parents=True)
        (data / folder / "clip.mp4").write_bytes(mp4(clip(5)))
    code, lines = run(["pack", data, "-o", tmp_path / "out"], capsys)
    assert code == 1 and lines == [
        "error: a/clip.mp4 and b/clip.mp4 both make the key 'clip'; rename one, or pass --keys path "
        "(keys from the path under the folder)"
    ]
    assert not (tmp_path / "out").exists()  # refused before anything was written
    code, lines = run(["pack", data, "-o", tmp_path / "out", "--keys", "path"], capsys)
    assert code == 0, lines
    assert list(read_tar(tmp_path / "out" / "000000.tar")) == ["a_clip.json", "a_clip.mp4", "b_clip.json", "b_clip.mp4"]
    (data / "a" / "clip.webm").write_bytes(b"same stem, other container")
    code, lines = run(["pack", data / "a", "-o", tmp_path / "out2"], capsys)
    assert code == 1 and lines == ["error: clip.mp4 and clip.webm both make the key 'clip'; rename one"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("same", "is the input folder itself"),
        ("under-file", "is not a folder"),
        ("no-input", "does not exist or is not a folder"),
        ("bad-captions", "does not parse"),
        ("no-name-field", "no field naming the video (file, video, video_name, key)"),
        ("ambiguous", "'clip' is the stem of a/clip.mp4 and b/clip.mp4; name it by its path"),
        ("duplicate", "both describe video clip_a.mp4; keep one"),
        ("bad-size", "--max-shard-bytes 'lots': expected a size like 500MB"),
        ("bad-pattern", "--pattern 'shards.tar' needs exactly one number field"),
        ("two-edits", "clip_a.mp4 has two edited first frames (clip_a.edited.jpg and clip_a.edited.png); keep one"),
    ],
)
def test_refused_before_any_work(tmp_path, capsys, case, message):
    data = build_folder(tmp_path)
    out = tmp_path / "out"
    args = ["pack", data, "-o", out]
    if case == "same":
        args[3] = data
    elif case == "under-file":
        (tmp_path / "file").write_text("x")
        args[3] = out = tmp_path / "file" / "shards"
    elif case == "no-input":
        args[1] = tmp_path / "nothing"
    elif case in ("bad-captions", "no-name-field", "duplicate", "ambiguous"):
        text = {
            "bad-captions": "{not json",
            "no-name-field": json.dumps([{"caption": "x"}]),
            "duplicate": json.dumps({"clip_a": "x", "clip_a.mp4": "y"}),
            "ambiguous": json.dumps({"clip": "x"}),
        }[case]
        if case == "ambiguous":
            for folder in ("a", "b"):
                (data / folder).mkdir()
                (data / folder / "clip.mp4").write_bytes(mp4(clip(6)))
        (tmp_path / "c.json").write_text(text)
        args += ["--captions", tmp_path / "c.json", "--keys", "path"]
    elif case == "bad-size":
        args += ["--max-shard-bytes", "lots"]
    elif case == "bad-pattern":
        args += ["--pattern", "shards.tar"]
    elif case == "two-edits":
        (data / "clip_a.edited.jpg").write_bytes(b"")
    code, lines = run(args, capsys)
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists() or not any(out.iterdir()) or case == "same"


def test_quiet_still_reports_what_was_left_out(tmp_path, capsys):
    data = build_folder(tmp_path)
    code, lines = run(["pack", data, "-o", tmp_path / "out", "-q"], capsys)
    assert code == 0 and [line.split(":")[0] for line in lines] == [
        "skipped sub/bad_edit.edited.png",
        "skipped broken.mp4",
    ]


def test_output_inside_the_input_is_not_read_back(tmp_path):
    data = build_folder(tmp_path)
    out = data / "shards"
    out.mkdir()
    (out / "stray.mp4").write_bytes(mp4(clip(7)))  # a video in the output folder is not an input
    summary = pack_folder(data, out, overwrite=True)
    again = pack_folder(data, out, overwrite=True)
    assert summary.samples == again.samples == 4
    assert list(read_tar(out / "000000.tar"))[::3] == [f"{k}.edited.png" for k in KEYS]


def test_members_are_what_the_job_reads():
    from anyv2v_batch.editors.provided import EDITED_EXTENSIONS
    from anyv2v_batch.pack import EDITED_EXT, MEMBER_VIDEO_EXT

    assert set(MEMBER_VIDEO_EXT.values()) <= set(VIDEO_EXTENSIONS)
    assert {f"edited.{e}" for e in EDITED_EXT.values()} <= set(EDITED_EXTENSIONS)


def test_nothing_readable_is_an_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "bad.mp4").write_bytes(b"\x00" * 100)
    (data / "empty.mov").write_bytes(b"")
    lines: list[str] = []
    with pytest.raises(AnyV2VError, match="none of the 2 videos"):
        pack_folder(data, tmp_path / "out", report=lines.append)
    assert lines == [
        "skipped bad.mp4: not a readable video (decord: Error reading bad.mp4; "
        "pyav: [Errno 1094995529] Invalid data found when processing input: 'bad.mp4')",
        "skipped empty.mov: empty (0 bytes)",
    ]
    assert not (tmp_path / "out").exists()


def test_a_video_only_pyav_decodes_is_packed_not_skipped(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "narrow.mp4").write_bytes(mp4(moving_clip(6, 24, 32, seed=5)))  # 24 px wide: decord 0.6 fails
    lines: list[str] = []
    pack_folder(data, tmp_path / "out", report=lines.append)
    assert not any(line.startswith("skipped") for line in lines), lines
    meta = json.loads(read_tar(tmp_path / "out" / "000000.tar")["narrow.json"])
    assert (meta["source_width"], meta["source_height"], meta["source_frames"]) == (24, 32, 6)
