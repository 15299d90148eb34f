"""A rerun never mixes outputs of different settings: each row records its variant's settings
fingerprint; a rerun whose variant changed refuses, naming the variant and the fields, unless
--redo-changed, which recomputes those pairs and replaces their outputs (equal to a fresh run's)."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import TINY_MODEL, moving_clip
from shards import mp4, png, read_tar, recolor, write_shard

from anyv2v_batch.cli import main
from anyv2v_batch.fingerprint import changed_fields, job_fingerprints
from anyv2v_batch.job import build_job
from anyv2v_batch.operators.write import rows_table

TIMING = ("seconds_", "inversion_source")


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> Path:
    members = []
    for i in range(2):
        clip = moving_clip(8, 32, 32, seed=20 + i)
        members += [(f"c{i}.mp4", mp4(clip)), (f"c{i}.txt", f"scene {i}".encode()),
                    (f"c{i}.edited.png", png(recolor(clip[0])))]  # fmt: skip
    return write_shard(tmp_path_factory.mktemp("in") / "000.tar", members)


def job(
    root: Path, shard: Path, out: str, night_steps: int = 4, night_prompt: str = "{caption}, at night", shared=True
) -> Path:
    """The job; `shared`: one model actor inverts and samples (share_model: one model load, the same bytes)."""
    raw = {
        "input": str(shard), "output": str(root / out), "model": str(TINY_MODEL), "device": "cpu",
        "clip": {"frames": 6, "width": 32, "height": 32}, "inversion": {"steps": 4},
        "variants": [{"name": "day", "prompt": "{caption}", "edit": {"steps": 4}},
                     {"name": "night", "prompt": night_prompt, "edit": {"steps": night_steps}}],
        "pools": {p: {"num_cpus": 0.5} for p in ("decode", "editor", "inversion", "sampler", "encode")},
        "share_model": shared,
    }  # fmt: skip
    path = root / f"{out}-{night_steps}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(argv: list, capsys) -> tuple[int, list[str]]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of the output but the run's progress record (timestamps)."""
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "_progress.json")
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def rows(out: Path) -> dict[tuple[str, str], dict]:
    table = pq.read_table(out / "metadata").to_pylist()
    return {(r["key"], r["variant"]): {k: v for k, v in r.items() if not k.startswith(TIMING)} for r in table}


@contextmanager
def model_actors_started():
    """The stages of the model actors started in this Ray instance inside the block (Ray Data names each
    map actor by its stage class: "MapWorker(MapBatches(ModelPool))")."""
    from ray._private import state

    started: set[str] = set()
    before = set(state.actors())
    yield started
    names = "".join(a["ActorClassName"] for key, a in state.actors().items() if key not in before)
    started |= {stage for stage in ("ModelPool", "InversionPool", "SamplerPool") if f"({stage}))" in names}


def test_a_changed_variant_is_refused_then_redone_to_equal_a_fresh_run(ray_local, tmp_path, shard, capsys):
    with model_actors_started() as started:
        code, err = cli(["run", job(tmp_path, shard, "out"), "-q"], capsys)
    assert code == 0, err
    assert started == {"ModelPool"}  # share_model: one model actor inverts and samples
    assert not [line for line in err if "progress: " in line], err  # -q: no progress line, but the file
    assert json.loads((tmp_path / "out" / "_progress.json").read_text())["state"] == "finished"
    first = snapshot(tmp_path / "out")
    before = rows(tmp_path / "out")
    assert {r["status"] for r in before.values()} == {"ok"} and len(before) == 4
    assert len({r["settings_fingerprint"] for r in before.values()}) == 2  # one per variant

    # the same settings: everything is done, nothing is touched
    code, err = cli(["run", job(tmp_path, shard, "out")], capsys)
    assert code == 0 and "4 (clip, variant) pairs already done" in "\n".join(err), err
    assert snapshot(tmp_path / "out") == first

    # another step count or prompt template under the same name: refused in one line, nothing written
    for changed, field in ((job(tmp_path, shard, "out", night_steps=2), "edit.steps 4 -> 2"),
                           (job(tmp_path, shard, "out", night_prompt="{caption}, in fog"), "edit.prompt")):  # fmt: skip
        code, err = cli(["run", changed], capsys)
        assert code == 1 and len(err) == 1, err
        assert err[0].startswith("error: variant 'night' has 2 outputs in") and field in err[0], err
        assert "--redo-changed" in err[0] and "'day'" not in err[0]
        assert snapshot(tmp_path / "out") == first

    # --redo-changed: the night pairs are recomputed and replaced; the result equals a fresh run's (one with
    # separate inversion and sampler actors: share_model changes no byte)
    code, err = cli(["run", job(tmp_path, shard, "out", night_steps=2), "--redo-changed"], capsys)
    assert code == 0, err
    with model_actors_started() as started:
        code, err = cli(["run", job(tmp_path, shard, "fresh", night_steps=2, shared=False), "-q"], capsys)
    assert code == 0, err
    assert started == {"InversionPool", "SamplerPool"}
    FRESH["out"] = tmp_path / "fresh"  # the verify test damages a copy of it
    redone, fresh = snapshot(tmp_path / "out"), snapshot(tmp_path / "fresh")
    assert redone.keys() == fresh.keys() and redone["shards/000.tar"] == fresh["shards/000.tar"]
    assert rows(tmp_path / "out") == rows(tmp_path / "fresh")
    members = read_tar(tmp_path / "out" / "shards" / "000.tar")
    assert json.loads(members["c0.night.json"])["edit"]["steps"] == 2
    assert members["c0.day.mp4"] == read_tar_from(first)["c0.day.mp4"]  # the unchanged variant kept its bytes
    assert members["c0.night.mp4"] != read_tar_from(first)["c0.night.mp4"]


FRESH: dict[str, Path] = {}


def flip(data: bytes, at: float) -> bytes:
    """One bit flipped at a fraction of the bytes: damage that still parses (most of the time)."""
    i = int(len(data) * at)
    return data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :]


def test_verify_names_every_damage_and_repair_remakes_exactly_the_damaged_pairs(ray_local, tmp_path, capsys):
    """A pair's bytes do not depend on its company: the repaired pairs equal a fresh run's, bit for bit."""
    from shards import tar_bytes

    fresh = FRESH["out"]
    out = tmp_path / "damaged"
    shutil.copytree(fresh, out)
    members = read_tar(out / "shards" / "000.tar")
    assert {m.rsplit(".", 1)[1] for m in members} == {"mp4", "png", "json"}
    members["c0.day.mp4"] = flip(members["c0.day.mp4"], 0.5)
    members["c0.day.json"] = flip(members["c0.day.json"], 0.3)
    members["c1.night.png"] = flip(members["c1.night.png"], 0.7)
    del members["c1.night.mp4"]
    members["c9.day.mp4"] = members["c1.day.mp4"]
    for ext in ("mp4", "png", "json"):  # c0.night: an error row, which a repair leaves as it is
        del members[f"c0.night.{ext}"]
    (out / "shards" / "000.tar").write_bytes(tar_bytes(sorted(members.items())))
    table = pq.read_table(out / "metadata" / "000.parquet").to_pylist()
    for row in table:
        if (row["key"], row["variant"]) == ("c0", "night"):
            row.update(status="error", error="a failure of the run", mp4_sha256=None, png_sha256=None, json_sha256=None)
    pq.write_table(rows_table(table), out / "metadata" / "000.parquet")
    (out / "shards" / ".000.tar.k2j3.tmp").write_bytes(b"half a tar")
    rows_before = {(r["key"], r["variant"]): r for r in pq.read_table(out / "metadata").to_pylist()}

    with pytest.raises(SystemExit) as exit_:
        main(["verify", str(out)])
    assert exit_.value.code == 1
    printed = capsys.readouterr().out
    from anyv2v_batch.pipelines.verify import verify_output

    problems = {(p.key, p.variant, p.where.rsplit(".", 1)[-1], p.what) for p in verify_output(str(out)).problems}
    assert problems == {
        ("c0", "day", "mp4", "damaged"), ("c0", "day", "json", "damaged"), ("c1", "night", "png", "damaged"),
        ("c1", "night", "mp4", "missing"), ("c9", "day", "mp4", "extra"), ("", "", "tmp", "leftover"),
    }, problems  # fmt: skip
    for named in ("c0.day.mp4", "c0.day.json", "c1.night.png", "c1.night.mp4", "c9.day.mp4", ".000.tar.k2j3.tmp"):
        assert named in printed, (named, printed)
    assert "c0.night" not in printed and "c1.day" not in printed and "2 pairs to remake" in printed

    code, err = cli(["verify", out, "--repair", "--device", "cpu", "--set", "share_model=true"], capsys)
    assert code == 0, err
    expected = {name: data for name, data in read_tar(fresh / "shards" / "000.tar").items() if "c0.night" not in name}
    assert read_tar(out / "shards" / "000.tar") == expected  # the remade members: a fresh run's bytes
    assert not (out / "shards" / ".000.tar.k2j3.tmp").exists()
    after = {(r["key"], r["variant"]): r for r in pq.read_table(out / "metadata").to_pylist()}
    assert after[("c1", "day")] == rows_before[("c1", "day")]  # not remade: its row, timings and all, kept
    # an error row of a variant the repair runs: not the repair's to retry (a rerun of the job does that)
    assert after[("c0", "night")] == rows_before[("c0", "night")]
    assert after[("c0", "day")]["seconds_sampler"] != rows_before[("c0", "day")]["seconds_sampler"]  # remade
    fresh_rows = rows(fresh)
    assert {k: v for k, v in rows(out).items() if k != ("c0", "night")} == {
        k: v for k, v in fresh_rows.items() if k != ("c0", "night")
    }
    assert verify_output(str(out)).clean


def read_tar_from(snap: dict[str, bytes]) -> dict[str, bytes]:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(snap["shards/000.tar"])) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_the_fingerprint_covers_weights_templates_editor_and_seed_but_not_speed_knobs(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(TINY_MODEL, model)
    raw = {"input": "x.tar", "output": "o", "model": str(model), "variants": [{"name": "v", "prompt": "{caption}"}]}

    def fields(**changes):
        spec = job_fingerprints(build_job({**raw, **changes}))
        return spec.fingerprints["v"][0], json.loads(spec.fingerprints["v"][1])

    base_print, base = fields()
    for change, named in [
        ({"seed": 1}, "seed 8888 -> 1"),
        ({"editor": {"name": "provided", "options": {"field": "frame"}}}, "editor.options.field"),
        ({"edit": {"guidance_scale": 3.0}}, "edit.guidance_scale 9.0 -> 3.0"),
        ({"clip": {"resize": "crop"}}, 'clip.resize "stretch" -> "crop"'),
        ({"dtype": "bfloat16"}, "dtype"),
        ({"share_source": False}, "share_source true -> false"),
    ]:
        other_print, other = fields(**change)
        assert other_print != base_print and named in changed_fields(base, other), change
    batched = {"pools": {"sampler": {"batch_size": 4}}}
    for speed in ({"device": "cpu"}, {"compile": True}, batched, {"share_model": True}):
        assert fields(**speed)[0] == base_print, speed
    # the same model folder's content changed: another fingerprint, named as the weights
    unet = next((model / "unet").glob("*.safetensors"))
    data = bytearray(unet.read_bytes())
    data[-1] ^= 1
    unet.write_bytes(bytes(data))
    changed_print, changed = fields()
    assert changed_print != base_print and changed_fields(base, changed).startswith("weights ")
