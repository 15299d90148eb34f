"""Four backbones in one job on a local Ray instance: one variant each, every pair written, rows that
record their backbone, each output equal to the one-clip command's, limits checked before any work."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from cli_runner import run_cli
from conftest import SHARED, TINY_MODEL, moving_clip
from shards import mp4, png, read_tar, recolor, write_shard
from wan_tiny import build_tiny_wan_folder

from anyv2v_batch.operators.work import derive_seed, inversion_id
from anyv2v_batch.settings import ClipSettings, InversionSettings

CONSISTI2V = SHARED / "consisti2v-reference" / "tiny-consisti2v"
SEINE = SHARED / "seine-reference" / "tiny-seine"
# per variant: backbone, model, geometry each tiny model accepts, and the one-clip command's flags
VARIANTS = {
    "i2v": (
        {"clip": {"width": 32, "height": 32}},
        ["--model", TINY_MODEL, "--width", 32, "--height", 32, "--inversion-steps", 5],
    ),
    "consist": (
        {"backbone": "consisti2v", "model": str(CONSISTI2V), "clip": {"width": 32, "height": 32}},
        ["--backbone", "consisti2v", "--model", CONSISTI2V, "--width", 32, "--height", 32, "--inversion-steps", 5],
    ),
    "seine": (
        {
            "backbone": "seine", "model": str(SEINE), "clip": {"width": 64, "height": 64},
            "inversion": {"steps": 10, "save_steps": 5},
        },
        ["--backbone", "seine", "--model", SEINE, "--width", 64, "--height", 64, "--inversion-steps", 10,
         "--inversion-save-steps", 5],
    ),
}  # fmt: skip
WAN_FRAMES = ["--backbone", "wan2.2-ti2v", "--frames", 9, "--fps", 24, "--width", 64, "--height", 64,
              "--inversion-steps", 5]  # fmt: skip


def wan_variant(model: Path) -> tuple[dict, list]:
    """The tiny recorded Wan2.2 TI2V (a folder built per run): 4k + 1 frames at 24 fps, 32-multiple sizes."""
    spec = {"backbone": "wan2.2-ti2v", "model": str(model), "clip": {"frames": 9, "fps": 24, "width": 64, "height": 64}}
    return spec, ["--model", model, *WAN_FRAMES]


def write_job(root: Path, variants: list[dict], frames: int = 8) -> Path:
    job = {
        "input": str(root / "shards" / "000000.tar"),
        "output": str(root / "out"),
        "model": str(TINY_MODEL),
        "device": "cpu",
        "clip": {"frames": frames, "fps": 8},
        "inversion": {"steps": 5},
        "edit": {"steps": 5, "prompt": "a red car"},
        "variants": variants,
        "pools": {p: {"num_cpus": 0.5} for p in ("decode", "editor", "inversion", "sampler", "encode")},
        "share_model": True,  # one model actor: one load (the same bytes as separate pools)
    }
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.fixture(scope="module")
def mixed_run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed")
    clip = moving_clip(9, 64, 64, seed=3)  # 9 frames for the Wan variant; the others read the first 8
    write_shard(root / "shards" / "000000.tar", [("c0.mp4", mp4(clip)), ("c0.edited.png", png(recolor(clip[0])))])
    VARIANTS["wan"] = wan_variant(build_tiny_wan_folder(root / "tiny-wan"))
    path = write_job(root, [{"name": name, **spec} for name, (spec, _) in VARIANTS.items()])
    code, said = run_cli(["run", path])
    return root, code, said


def test_every_backbone_writes_its_pair_and_records_itself(mixed_run):
    root, code, said = mixed_run
    assert code == 0, said
    rows = {r["variant"]: r for r in pq.read_table(root / "out" / "metadata").to_pylist()}
    assert {v: r["status"] for v, r in rows.items()} == {"i2v": "ok", "consist": "ok", "seine": "ok", "wan": "ok"}, rows
    backbones = {v: r["backbone"] for v, r in rows.items()}
    assert backbones == {"i2v": "i2vgen-xl", "consist": "consisti2v", "seine": "seine", "wan": "wan2.2-ti2v"}
    assert rows["consist"]["model"] == str(CONSISTI2V) and rows["seine"]["model"] == str(SEINE)
    # each backbone's official defaults apply where the job is silent
    assert (rows["i2v"]["guidance_scale"], rows["consist"]["guidance_scale"], rows["seine"]["guidance_scale"]) == (
        9.0, 35.0, 4.0,
    )  # fmt: skip
    assert rows["seine"]["negative_prompt"] == ""
    assert rows["consist"]["negative_prompt"] == rows["i2v"]["negative_prompt"]
    assert (rows["seine"]["width"], rows["consist"]["width"]) == (64, 32)
    # Wan2.2's official guidance and negative prompt; its frames and fps as the variant asks
    assert rows["wan"]["guidance_scale"] == 5.0 and rows["wan"]["negative_prompt"].startswith("色调艳丽")
    assert (rows["wan"]["frames"], rows["wan"]["fps"]) == (9, 24.0)


@pytest.mark.parametrize("variant", ["consist", "seine", "wan"])
def test_a_pair_equals_the_one_clip_command(mixed_run, variant, tmp_path):
    """Same bytes as `anyv2v-batch edit --backbone ...` with the pair's seed (SEINE's DDPM noise included)."""
    root, *_ = mixed_run
    source = read_tar(root / "shards" / "000000.tar")
    (tmp_path / "c0.mp4").write_bytes(source["c0.mp4"])
    (tmp_path / "edited.png").write_bytes(source["c0.edited.png"])
    spec, flags = VARIANTS[variant]
    guidance = {"consist": 35, "seine": 4, "wan": 5}[variant]
    geometry = [] if variant == "wan" else ["--frames", 8, "--fps", 8]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the job's actors ran
    try:
        code, said = run_cli(["edit", tmp_path / "c0.mp4", "--first-frame", tmp_path / "edited.png",
                              "-o", tmp_path / "one.mp4", *geometry, "--steps", 5,
                              "--prompt", "a red car", "--seed", derive_seed(8888, "c0", variant),
                              "--device", "cpu", "-q", *flags])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 0, said
    out = read_tar(root / "out" / "shards" / "000000.tar")
    assert (tmp_path / "one.mp4").read_bytes() == out[f"c0.{variant}.mp4"]
    assert guidance  # the command took the backbone's default guidance, as the job did (rows checked above)


def test_backbone_limits_fail_the_job_before_any_work(tmp_path):
    path = write_job(tmp_path, [{"name": "consist", **VARIANTS["consist"][0]}], frames=6)
    code, said = run_cli(["run", path])
    assert code == 1
    assert said[-1] == (
        "error: variant 'consist': consisti2v runs exactly 8 frames (its UNet was trained with n_frames 8), "
        "got --frames 6; use --frames 8 or more (a longer clip runs in windows of 8), or --frames all"
    )
    assert not (tmp_path / "out").exists()


def test_unknown_backbone_is_one_line(tmp_path):
    path = write_job(tmp_path, [{"name": "x", "backbone": "sora"}])
    code, said = run_cli(["run", path])
    assert code == 1
    assert "variants[0].backbone must be one of i2vgen-xl, consisti2v, seine, wan2.2-ti2v, got 'sora'" in said[-1]


def test_stored_inversions_are_keyed_by_backbone_and_weights():
    clip, inv = ClipSettings(frames=8, width=32, height=32), InversionSettings(steps=20)
    ids = {inversion_id(b, m, clip, inv) for b, m in [("i2vgen-xl", None), ("consisti2v", None), ("seine", None),
                                                       ("consisti2v", "/models/other")]}  # fmt: skip
    assert len(ids) == 4
