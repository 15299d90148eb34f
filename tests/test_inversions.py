"""Stored inversions: safetensors entries written by `invert`, reused by `run`, never trusted blindly."""

from __future__ import annotations

import io
import json
import tarfile

import pyarrow.parquet as pq
import pytest
import torch
from cli_runner import run_cli
from conftest import TINY_MODEL, moving_clip, rel_err
from shards import mp4, png, read_tar, recolor, write_shard

from anyv2v_batch.inversion import inversion_from_bytes, inversion_to_bytes
from anyv2v_batch.job import build_job


def test_inversion_bytes_round_trip_and_damage_is_detected(case_a):
    inv = case_a.reference_inversion().keep([901, 801, 701])
    data = inversion_to_bytes(inv, {"frames_sha256": "abc"})
    back, meta = inversion_from_bytes(data)
    assert back.timesteps == inv.timesteps and torch.equal(back.latents, inv.latents)
    assert (back.source_first_frame == inv.source_first_frame).all() and back.settings == inv.settings
    assert meta["frames_sha256"] == "abc" and meta["backbone"] == "i2vgen-xl"
    assert rel_err(back.latents, inv.latents) == 0
    bad_values = inversion_to_bytes(type(inv)(**{**inv.__dict__, "latents": inv.latents * float("nan")}))
    for damaged, why in [(data[: len(data) // 2], "truncated|not readable"), (b"\x00" * 64, "not readable"),
                         (data.replace(b"anyv2v-inversion/1", b"anyv2v-inversion/9"), "not an"),
                         (bad_values, "values are wrong")]:  # fmt: skip
        with pytest.raises(ValueError, match=why):
            inversion_from_bytes(damaged)
    assert b"pickle" not in data and data[8:9] == b"{"  # a JSON header: safetensors, no pickle


def flip_bit(data: bytes, i: int) -> bytes:
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1 :]


def latent_byte(data: bytes, at: float) -> int:
    """The offset of the least significant byte of a float in the stored latents (flipping it keeps the
    value finite: damage no structural check can see)."""
    n = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8 : 8 + n])["latents"]["data_offsets"]
    return 8 + n + start + 4 * int((end - start) // 4 * at)


def test_a_flipped_bit_anywhere_in_a_stored_inversion_is_refused(case_a):
    inv = case_a.reference_inversion().keep([901, 801, 701])
    data = inversion_to_bytes(inv, {"frames_sha256": "abc", "key": "c0"})
    inversion_from_bytes(data)  # intact: fine
    header_end = 8 + int.from_bytes(data[:8], "little")
    places = sorted({*range(0, len(data), max(1, len(data) // 64)), header_end - 1, header_end, len(data) - 1,
                     data.index(b'"c0"') + 1, *(latent_byte(data, at) for at in (0.0, 0.5, 1.0 - 1e-9))})  # fmt: skip
    for i in places:
        with pytest.raises(ValueError):
            inversion_from_bytes(flip_bit(data, i))
    # the latents' damage is what only the digest sees: the values stay finite
    _, meta = inversion_from_bytes(data)
    damaged = flip_bit(data, latent_byte(data, 0.5))
    with pytest.raises(ValueError, match="damaged: its content does not match its digest"):
        inversion_from_bytes(damaged)
    unsigned = damaged.replace(meta["content_sha256"].encode(), b"0" * 64)
    with pytest.raises(ValueError, match="damaged"):
        inversion_from_bytes(unsigned)


def job_raw(root, out: str, inversions: bool = True, mode: str = "edit") -> dict:
    # storing, reusing and rechecking inversions does not depend on the steps: the fewest that run a loop
    raw = {
        "input": str(root / "in" / "000.tar"), "output": str(root / out), "model": str(TINY_MODEL), "device": "cpu",
        "clip": {"frames": 6, "width": 32, "height": 32}, "inversion": {"steps": 2}, "edit": {"steps": 1},
        "variants": [{"name": "a", "prompt": "{caption}, at night"}],  # one edit: reuse needs no more
        "pools": {p: {"num_cpus": 0.5} for p in ("decode", "editor", "inversion", "sampler", "encode")},
        "share_model": True,  # one model actor: one load (the same bytes as separate pools)
    }  # fmt: skip
    if inversions:
        raw["inversions"] = str(root / "store")
    if mode == "invert":  # invert writes only the store: no output needed
        del raw["output"]
    return raw


def job_for(root, out: str, inversions: bool = True, mode: str = "edit"):
    return build_job(job_raw(root, out, inversions, mode), mode=mode)


def test_invert_once_then_sample_new_edits_without_inverting(ray_local, tmp_path):
    from anyv2v_batch.pipelines.anyv2v_job import run_job

    members = []
    for i in range(3):
        clip = moving_clip(10, 32, 32, seed=i)
        members += [(f"c{i}.mp4", mp4(clip)), (f"c{i}.txt", b"a car"), (f"c{i}.edited.png", png(recolor(clip[0])))]
    write_shard(tmp_path / "in" / "000.tar", members)

    first = run_job(job_for(tmp_path, "", mode="invert"), mode="invert")
    assert (first.ok, first.errors) == (3, 0)
    store = read_tar(tmp_path / "store" / "shards" / "000.tar")
    assert len(store) == 3 and all(name.endswith(".safetensors") and ".inv-" in name for name in store)
    assert run_job(job_for(tmp_path, "", mode="invert"), mode="invert").processed == 0  # resumable: nothing left

    baseline = run_job(job_for(tmp_path, "baseline", inversions=False))
    assert baseline.ok == 3

    # the run below uses c2's intact entry (same bytes as the plain run: reuse changes nothing); it finds c0's
    # latents damaged (finite values still) and another clip's entry under c1's name: both are
    # recomputed, never used
    names = sorted(store)
    intact = (tmp_path / "store" / "shards" / "000.tar").read_bytes()
    store[names[0]] = flip_bit(store[names[0]], latent_byte(store[names[0]], 0.5))
    store[names[1]] = store[names[2]]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(store[name])
            tar.addfile(info, io.BytesIO(store[name]))
    (tmp_path / "store" / "shards" / "000.tar").write_bytes(buffer.getvalue())
    # `run` (the command: it mends the store after the job) recomputes both, and makes them again in the store
    job_file = tmp_path / "checked.json"
    job_file.write_text(json.dumps(job_raw(tmp_path, "checked")))
    code, said = run_cli(["run", job_file])
    assert code == 0 and "3 (clip, variant) pairs processed: 3 ok" in "\n".join(said), said
    sources = {r["key"]: r["inversion_source"] for r in pq.read_table(tmp_path / "checked" / "metadata").to_pylist()}
    assert sources["c0"] == "recomputed: stored inversion not usable (damaged: its content does not match its digest)"
    assert sources["c1"] == "recomputed: stored inversion not usable (made from other frames_sha256)"
    assert sources["c2"] == "stored"
    assert read_tar(tmp_path / "checked" / "shards" / "000.tar") == read_tar(
        tmp_path / "baseline" / "shards" / "000.tar"
    )
    settings = json.loads(read_tar(tmp_path / "checked" / "shards" / "000.tar")["c0.a.json"])
    assert settings["inversion"]["steps"] == 2
    assert "inversions store: repaired: 2 damaged inversions made again, 0 dropped" in "\n".join(said), said
    assert (tmp_path / "store" / "shards" / "000.tar").read_bytes() == intact  # the same bytes as first made

    # the store is whole again: `verify` finds nothing, and `invert` has nothing left to do (`verify
    # --inversions --repair` itself is tested on a long clip's window entry, test_long_clip_job.py)
    from anyv2v_batch.pipelines.verify import verify_output

    assert verify_output(str(tmp_path / "store")).clean
    assert run_job(job_for(tmp_path, "", mode="invert"), mode="invert").processed == 0
