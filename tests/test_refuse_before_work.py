"""What the settings and the environment decide is refused before any model loads or clip is decoded:
step grids an inversion cannot serve, outputs that cannot be written. The model folders here hold only
configs (no weights), so reaching a model load would fail differently, and every refusal must leave
nothing written."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import SHARED, TINY_MODEL, moving_clip
from shards import mp4, png, recolor, write_shard

from anyv2v_batch.cli import main
from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.pnp_edit import check_step_plan, plan_schedule
from anyv2v_batch.schedule import Schedule, SEINESchedule
from anyv2v_batch.settings import EditSettings, InversionSettings

TINY_SEINE = SHARED / "seine-reference" / "tiny-seine"


def configs_only(root: Path, model: Path, name: str) -> Path:
    """A model folder with the scheduler and UNet configs of `model` and no weights at all."""
    folder = root / name
    for sub, file in (("scheduler", "scheduler_config.json"), ("unet", "config.json")):
        if (model / sub / file).exists():
            (folder / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(model / sub / file, folder / sub / file)
    return folder


def schedule(model: Path, cls=Schedule) -> Schedule:
    return cls(json.loads((model / "scheduler" / "scheduler_config.json").read_text()))


def suggested(message: str) -> tuple[int, int | None]:
    steps = int(re.search(r"--inversion-steps (\d+)", message).group(1))
    save = re.search(r"--inversion-save-steps (\d+)", message)
    return steps, int(save.group(1)) if save else None


@pytest.mark.parametrize(
    "cls, model, edit, inversion",
    [
        (Schedule, TINY_MODEL, EditSettings(steps=4), InversionSettings(steps=10)),
        (Schedule, TINY_MODEL, EditSettings(steps=50, init_step=4), InversionSettings(steps=30)),
        (Schedule, TINY_MODEL, EditSettings(steps=3), InversionSettings(steps=250)),
        (SEINESchedule, TINY_SEINE, EditSettings(steps=50), InversionSettings(steps=500, save_steps=30)),
        (SEINESchedule, TINY_SEINE, EditSettings(steps=25, init_step=3), InversionSettings(steps=40, save_steps=20)),
    ],
)
def test_an_inversion_that_misses_a_read_timestep_is_refused_with_step_counts_that_work(cls, model, edit, inversion):
    sched = schedule(model, cls)
    plan = plan_schedule(sched, edit, inversion)
    missing = [t for t in plan.needed if t not in sched.stored_timesteps(inversion)]
    assert missing  # the case really is one the inversion cannot serve
    with pytest.raises(AnyV2VError) as e:
        check_step_plan(sched, edit, inversion)
    message = str(e.value)
    assert f"timestep {missing[0]}" in message and "\n" not in message
    steps, save = suggested(message)
    fixed = InversionSettings(steps=steps, save_steps=save if save is not None else inversion.save_steps)
    check_step_plan(sched, edit, fixed)  # the suggestion works
    stored = set(sched.stored_timesteps(fixed))
    assert set(plan_schedule(sched, edit, fixed).needed) <= stored


def test_the_official_grids_pass():
    check_step_plan(schedule(TINY_MODEL), EditSettings(), InversionSettings())
    check_step_plan(schedule(TINY_MODEL), EditSettings(init_step=4), InversionSettings())
    check_step_plan(schedule(TINY_SEINE, SEINESchedule), EditSettings(), InversionSettings(save_steps=250))


def cli(argv: list, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    return e.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("src")
    clip = moving_clip(6, 32, 32, seed=3)
    (root / "clip.mp4").write_bytes(mp4(clip))
    (root / "edited.png").write_bytes(png(recolor(clip[0])))
    return root / "clip.mp4", root / "edited.png"


def test_edit_refuses_a_step_grid_before_loading_the_model(tmp_path, source, capsys):
    model = configs_only(tmp_path, TINY_MODEL, "model")
    out = tmp_path / "out.mp4"
    base = ["edit", source[0], "--first-frame", source[1], "-o", out, "--model", model, "--frames", "6"]
    code, err = cli([*base, "--width", "32", "--height", "32", "--inversion-steps", "10", "--steps", "4"], capsys)
    assert code == 1 and len(err) == 1, err
    assert "no latent at timestep 751" in err[0] and "use --inversion-steps 20" in err[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_edit_and_edit_frame_refuse_an_unwritable_output_before_any_work(tmp_path, source, capsys):
    model = configs_only(tmp_path, TINY_MODEL, "model")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out in (Path("/proc/anyv2v-out.mp4"), a_file / "out.mp4", Path("/proc/frames")):
        code, err = cli(["edit", source[0], "--first-frame", source[1], "-o", out, "--model", model], capsys)
        assert code == 1 and len(err) == 1 and f"cannot write the output '{out}'" in err[0], err
    code, err = cli(["edit-frame", source[0], "--first-frame", source[1], "-o", "/proc/frame.png"], capsys)
    assert code == 1 and len(err) == 1 and "cannot write the output '/proc/frame.png'" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "model"]


@pytest.fixture(scope="module")
def shard(tmp_path_factory) -> Path:
    clip = moving_clip(8, 32, 32, seed=1)
    members = [("a.mp4", mp4(clip)), ("a.txt", b"a scene"), ("a.edited.png", png(recolor(clip[0])))]
    return write_shard(tmp_path_factory.mktemp("in") / "000.tar", members)


def job_file(root: Path, shard: Path, variants: list[dict], **fields) -> Path:
    job = {
        "input": str(shard), "output": str(root / "out"), "device": "cpu",
        "clip": {"frames": 6, "width": 32, "height": 32}, "variants": variants, **fields,
    }  # fmt: skip
    path = root / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def test_run_and_invert_refuse_a_step_grid_per_variant_before_ray_starts(tmp_path, shard, capsys):
    i2v = configs_only(tmp_path, TINY_MODEL, "i2v")
    seine = configs_only(tmp_path, TINY_SEINE, "seine")
    variants = [
        {"name": "fine", "edit": {"steps": 5}, "inversion": {"steps": 25}},
        {"name": "coarse", "edit": {"steps": 30}, "backbone": "seine", "model": str(seine)},
    ]
    path = job_file(tmp_path, shard, variants, model=str(i2v))
    for command in (["run", path], ["invert", path, "--inversions", tmp_path / "store"]):
        code, err = cli(command, capsys)
        assert code == 1 and len(err) == 1, err
        assert err[0].startswith("error: variant 'coarse': the inversion stores no latent at timestep"), err
        assert "--inversion-steps" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i2v", "job.yaml", "seine"]  # no output, no store


def test_run_and_invert_refuse_unwritable_outputs_and_invert_needs_no_output(tmp_path, shard, capsys):
    i2v = configs_only(tmp_path, TINY_MODEL, "i2v")
    path = job_file(tmp_path, shard, [{"name": "v", "edit": {"steps": 5}, "inversion": {"steps": 25}}], model=str(i2v))
    code, err = cli(["run", path, "--output", "/proc/anyv2v-out"], capsys)
    assert code == 1 and len(err) == 1 and "cannot write the output folder '/proc/anyv2v-out" in err[0], err
    code, err = cli(["invert", "--input", shard, "--inversions", "/proc/store", "--model", i2v], capsys)
    assert code == 1 and len(err) == 1 and "cannot write the inversions store folder '/proc/store" in err[0], err
    code, err = cli(["invert", "--input", shard, "--model", i2v], capsys)
    assert code == 1 and len(err) == 1 and "inversions is missing" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i2v", "job.yaml"]


def test_share_model_with_long_clips_is_refused_before_ray_starts(tmp_path, shard, capsys):
    """One actor inverting and sampling leaves no place to join a long clip's windows: said before any work."""
    i2v = configs_only(tmp_path, TINY_MODEL, "i2v")
    clip = {"frames": "all", "width": 32, "height": 32}
    path = job_file(tmp_path, shard, [{"name": "v"}], model=str(i2v), share_model=True, clip=clip)
    code, err = cli(["run", path], capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("error: share_model: true cannot run long clips") and "share_model: false" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i2v", "job.yaml"]  # no output
