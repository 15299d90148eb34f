"""The `anydoor` editor against AnyDoor's official code (ali-vilab/AnyDoor @ 44ca2b2a).

tests/fixtures/anydoor-reference/ holds a tiny random-weight ControlLDM in the official key layout
(`tiny-anydoor.safetensors`, built from `tiny-anydoor.yaml`) and cases recorded from the official demo
code on the CPU (tools/reference/anydoor/): the inputs, the three NumPy draws, and every stage. Our
converter turns the state dict into diffusers / transformers models; each stage is compared with the
recording: preprocessing bit for bit, tokens, the noise predictions and steps, the final latent to 1e-4
relative, and the uint8 frame to one level.

The networks' two branches and the update are compared at the recorded steps (first, middle, last); the
whole loop runs from the recorded start noise and is compared at every step's input. The editor runs end
to end (all its stages wired) with few steps in the CLI and Ray-job tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, TINY_MODEL, moving_clip
from PIL import Image
from safetensors.torch import load_file

from anyv2v_batch import AnyV2VError
from anyv2v_batch.convert_anydoor import convert_anydoor, convert_state_dict, load_checkpoint, read_config
from anyv2v_batch.editors import SampleContext, editor_class
from anyv2v_batch.editors.anydoor import AnyDoorEditor
from anyv2v_batch.editors.anydoor_ddim import LdmDDIM
from anyv2v_batch.editors.anydoor_model import AnyDoorDinov2Embeddings, AnyDoorModel
from anyv2v_batch.editors.anydoor_preprocess import RandomDraws, paste_back, prepare

REFERENCE = FIXTURES / "anydoor-reference"
CHECKPOINT = REFERENCE / "tiny-anydoor.safetensors"
CONFIG = REFERENCE / "tiny-anydoor.yaml"
CASES = sorted(p.name for p in REFERENCE.glob("case-*"))
TOL = 1e-4
# the recording is made on the anydoor-ref branch (tools/reference/anydoor/); without it nothing here can run
pytestmark = pytest.mark.skipif(
    not CHECKPOINT.is_file(), reason=f"{REFERENCE} is missing: merge the recorded AnyDoor fixtures (branch anydoor-ref)"
)


def max_rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|."""
    ours, ref = ours.detach().float().cpu(), ref.detach().float().cpu()
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float((ours - ref).abs().max() / ref.abs().max())


class Case:
    def __init__(self, name: str) -> None:
        self.folder = REFERENCE / name
        self.settings = json.loads((self.folder / "case.json").read_text())
        self.stages = load_file(str(self.folder / "stages.safetensors"))

    def image(self, name: str, mode: str = "RGB") -> np.ndarray | None:
        path = self.folder / name
        return np.asarray(Image.open(path).convert(mode)) if path.is_file() else None

    def inputs(self):
        """subject RGB, subject 0/1 mask, frame, target 0/1 mask, as the official demo thresholds them."""
        subject = Image.open(self.folder / "subject.png")
        mask = self.image("subject_mask.png", "L")
        if mask is None:
            mask = np.asarray(subject.convert("RGBA"))[:, :, 3]
        frame = self.image("background.png")
        target = self.image("target_mask.png", "L")
        binary = lambda m: np.where(m > 128, 1, 0).astype(np.uint8)  # noqa: E731
        return np.asarray(subject.convert("RGB")), binary(mask), frame, binary(target)

    @property
    def hint(self) -> torch.Tensor:
        """The recorded hint, [1, 4, 512, 512]: the uint8 collage as the demo scales it (float32 / 127.5 - 1)
        and the box mask channel (1 in the box, 0 outside, -1 padding)."""
        collage = self.stages["collage"].float() / 127.5 - 1.0
        mask = self.stages["collage_mask"].float()[..., None]
        return torch.cat([collage, mask], -1).permute(2, 0, 1)[None]

    @property
    def steps_run(self) -> int:
        return len(self.stages["timesteps"])


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return convert_anydoor(CHECKPOINT, tmp_path_factory.mktemp("anydoor") / "tiny-anydoor", config=CONFIG)


@pytest.fixture(scope="module")
def model(converted) -> AnyDoorModel:
    torch.manual_seed(0)
    return AnyDoorModel.load(str(converted))


@pytest.fixture(scope="module", params=CASES)
def case(request) -> Case:
    return Case(request.param)


# ---- the converter


def test_converter_uses_every_key_and_writes_no_pickle(converted):
    state = load_checkpoint(CHECKPOINT)
    parts = convert_state_dict(state, read_config(CONFIG))
    total = sum(
        sum(v.numel() for v in parts[name].state_dict().values()) for name in ("unet", "controlnet", "vae", "dino")
    ) + sum(v.numel() for v in parts["projector"].values())
    from anyv2v_batch.convert_anydoor import SCHEDULE_BUFFERS as schedule

    # one number out for every number in (conv_in of the ControlNet is the unused input_blocks.0.0, zeroed)
    assert total == sum(v.numel() for k, v in state.items() if k not in schedule)
    conv_in = parts["controlnet"].conv_in
    assert not conv_in.weight.any() and not conv_in.bias.any()
    assert state["control_model.input_blocks.0.0.weight"].any()  # it was not zero: the zeroing is ours
    assert torch.equal(parts["projector"]["weight"], state["cond_stage_model.projector.weight"])
    files = sorted(p.relative_to(converted).as_posix() for p in converted.rglob("*") if p.is_file())
    assert all(f.endswith((".json", ".safetensors")) for f in files), files
    assert {"unet", "controlnet", "vae", "dino", "scheduler", "projector.safetensors"} <= {
        p.name for p in converted.iterdir()
    }

    with pytest.raises(AnyV2VError, match="no place in the converted model"):
        convert_state_dict({**state, "control_model.extra_block.weight": torch.ones(3)}, read_config(CONFIG))
    with pytest.raises(AnyV2VError, match="not AnyDoor's"):
        convert_state_dict({**state, "some_other_model.weight": torch.ones(3)}, read_config(CONFIG))
    missing = dict(state)
    del missing["model.diffusion_model.out.2.weight"]
    with pytest.raises(AnyV2VError, match="UNet does not fit"):
        convert_state_dict(missing, read_config(CONFIG))


def test_convert_refuses_before_work(tmp_path, capsys):
    from anyv2v_batch.cli import main

    def cli(*argv) -> tuple[int, str]:
        with pytest.raises(SystemExit) as e:
            main(["convert-anydoor", *map(str, argv)])
            raise SystemExit(0)
        return e.value.code, capsys.readouterr().err

    code, err = cli("--checkpoint", tmp_path / "nope.ckpt", "-o", tmp_path / "out")
    assert code == 1 and err.count("\n") == 1 and "does not exist" in err
    (tmp_path / "taken").mkdir()
    code, err = cli("--checkpoint", CHECKPOINT, "-o", tmp_path / "taken")
    assert code == 1 and "already exists" in err
    code, err = cli("--checkpoint", CHECKPOINT, "-o", "/proc/anydoor-out")
    assert code == 1 and "cannot write" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing written
    code, err = cli("--checkpoint", CHECKPOINT, "--config", CONFIG, "-o", tmp_path / "new" / "anydoor", "-q")
    assert code == 0, err
    assert (tmp_path / "new" / "anydoor" / "unet" / "config.json").is_file()
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["anydoor"]  # no temporary folder left


def test_pickle_checkpoint_loads_weights_only(tmp_path):
    """The official .ckpt layout (state_dict inside a Lightning dict), read with weights_only."""
    state = load_file(str(CHECKPOINT))
    torch.save({"state_dict": state, "global_step": 8687}, tmp_path / "tiny.ckpt")
    loaded = load_checkpoint(tmp_path / "tiny.ckpt")
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)


# ---- stage by stage against the official recording


def test_preprocessing_is_bit_exact(case):
    draws = RandomDraws.from_seed(case.settings["seed"])
    assert [draws.subject_pad, draws.target_box, draws.crop] == pytest.approx(case.settings["ratios"], abs=0)
    subject, subject_mask, frame, target = case.inputs()
    inputs = prepare(
        subject, subject_mask, frame, target, draws, shape_control=case.settings.get("shape_control", False)
    )
    ref = torch.from_numpy(inputs.ref / 255).float().permute(2, 0, 1)[None]
    hint = torch.from_numpy(inputs.hint).permute(2, 0, 1)[None]
    assert torch.equal(ref, case.stages["ref"])
    assert torch.equal(hint, case.hint)


def test_tokens_match_and_need_anydoors_interpolation(model, case):
    cond = model.encode_subject(case.stages["ref"])
    uncond = model.uncond_tokens()
    assert max_rel(cond, case.stages["cond_tokens"]) < TOL
    assert max_rel(uncond, case.stages["uncond_tokens"]) < TOL
    # transformers' own interpolation (size = 16, not scale_factor = 16.1 / 37) gives other tokens
    embeddings = model.encoder.dino.embeddings
    assert isinstance(embeddings, AnyDoorDinov2Embeddings)
    embeddings.__class__ = AnyDoorDinov2Embeddings.__mro__[1]
    try:
        stock = model.encode_subject(case.stages["ref"])
    finally:
        embeddings.__class__ = AnyDoorDinov2Embeddings
    assert max_rel(stock, case.stages["cond_tokens"]) > 100 * TOL


def test_sampler_matches_every_step(model, case):
    s = case.settings
    ddim = LdmDDIM(model.alphas_cumprod, s["steps"])
    assert torch.equal(torch.tensor(ddim.timesteps), case.stages["timesteps"].long())
    if s["steps"] == 30:
        assert len(ddim) == 31  # the official sampler's extra step
    assert torch.equal(case.stages["x_in.0"], case.stages["x_T"])
    cond, uncond = case.stages["cond_tokens"], case.stages["uncond_tokens"]
    hint, n = case.hint, len(ddim)
    for i in sorted({0, n // 2, n - 1}):  # the networks and the update at the recorded steps
        x_in = case.stages[f"x_in.{i}"]
        eps_c = model.eps(x_in, ddim.timesteps[i], hint, cond, s["control_strength"])
        eps_u = model.eps(x_in, ddim.timesteps[i], hint, uncond, s["control_strength"])
        assert max_rel(eps_c, case.stages[f"eps_cond.{i}"]) < TOL, i
        assert max_rel(eps_u, case.stages[f"eps_uncond.{i}"]) < TOL, i
        e_t = ddim.guide(case.stages[f"eps_cond.{i}"], case.stages[f"eps_uncond.{i}"], s["guidance_scale"])
        after = ddim.step(i, x_in, e_t)
        expected = case.stages[f"x_in.{i + 1}"] if i + 1 < n else case.stages["latent"]
        assert max_rel(after, expected) < TOL, i


def loop_cases() -> list[str]:
    """The cases whose whole loop runs: the demo's 30 steps (31 run) and the fewest steps recorded. The loop's
    wiring does not depend on the case; every case's schedule and steps are checked in the test above."""
    steps = {name: json.loads((REFERENCE / name / "case.json").read_text())["steps"] for name in CASES}
    return sorted({n for n, s in steps.items() if s == 30} | ({min(steps, key=steps.get)} if steps else set()))


@pytest.mark.parametrize("name", loop_cases())
@pytest.mark.slow
def test_the_whole_loop_matches_from_the_start_noise(model, name):
    """Our loop from the recorded start noise: the input of every recorded step and the final latent."""
    case = Case(name)
    s = case.settings
    cond, uncond = case.stages["cond_tokens"], case.stages["uncond_tokens"]
    inputs: dict[int, torch.Tensor] = {}
    latent = model.sample(
        case.stages["x_T"], case.hint, cond, uncond, s["steps"], s["guidance_scale"], s["control_strength"],
        on_step=lambda i, t, x, eps_c, eps_u: inputs.__setitem__(i, x.clone()),
    )  # fmt: skip
    assert sorted(inputs) == list(range(case.steps_run))
    recorded = sorted(int(k.split(".")[1]) for k in case.stages if k.startswith("x_in."))
    assert len(recorded) >= 4  # first, middle, last and the steps after them (tools/reference/slim.py)
    for i in recorded:
        assert max_rel(inputs[i], case.stages[f"x_in.{i}"]) < TOL, i
    assert max_rel(latent, case.stages["latent"]) < TOL


def test_decode_and_frame_match(model, case):
    decoded = model.decode(case.stages["latent"])
    subject, subject_mask, frame, target = case.inputs()
    inputs = prepare(subject, subject_mask, frame, target, RandomDraws.from_seed(case.settings["seed"]))
    ours = paste_back((decoded.permute(0, 2, 3, 1) * 127.5 + 127.5)[0].numpy(), frame, inputs)
    diff = np.abs(ours.astype(int) - case.stages["frame"].numpy().astype(int))
    assert diff.max() <= 1, diff.max()
    assert ours.shape == frame.shape


# ---- the editor's inputs


def editor_sample(case: Case, **files) -> SampleContext:
    folder = case.folder
    members = {"subject.png": (folder / "subject.png").read_bytes(), **files}
    return SampleContext("clip7", {"target_box": case.settings["target_box"]}, members, seed=case.settings["seed"])


def test_editor_wires_the_recorded_stages(model, converted, case, monkeypatch):
    """The editor's own edit(): seeded draws and starting noise, inputs, settings, decode and paste back.
    The 31 / 50 network steps in between are the sampler test's; here the recorded final latent stands in."""
    files = {name: (case.folder / name).read_bytes() for name in ("subject.png", "subject_mask.png", "target_mask.png")
             if (case.folder / name).is_file()}  # fmt: skip
    sample = SampleContext("case", {}, files, seed=case.settings["seed"])
    seen = {}

    def recorded_sampler(x_T, hint, cond, uncond, steps, guidance_scale, control_strength, on_step=None):
        seen.update(x_T=x_T, hint=hint, cond=cond, uncond=uncond, settings=(steps, guidance_scale, control_strength))
        return case.stages["latent"]

    editor = editor_with(model, converted)
    monkeypatch.setattr(model, "sample", recorded_sampler)
    options = {"model": str(converted), "shape_control": case.settings.get("shape_control", False)}
    for key in ("steps", "guidance_scale", "control_strength"):
        if case.settings[key] != {"steps": 30, "guidance_scale": 4.5, "control_strength": 1.0}[key]:
            options[key] = case.settings[key]  # the demo's settings are the defaults
    frame = case.image("background.png")
    out = editor.edit(frame, options, sample)
    s = case.settings
    assert seen["settings"] == (s["steps"], s["guidance_scale"], s["control_strength"])
    assert torch.equal(seen["x_T"], case.stages["x_T"])  # torch.Generator("cpu").manual_seed(seed)
    assert torch.equal(seen["hint"], case.hint)
    assert max_rel(seen["cond"], case.stages["cond_tokens"]) < TOL
    assert max_rel(seen["uncond"], case.stages["uncond_tokens"]) < TOL
    assert out.shape == frame.shape
    assert np.abs(out.astype(int) - case.stages["frame"].numpy().astype(int)).max() <= 1


def test_missing_subject_mask_or_target_is_an_error(converted):
    editor = AnyDoorEditor(device="cpu", dtype="float32")
    frame = moving_clip(1, 64, 48)[0]
    rgb = np.zeros((40, 30, 3), np.uint8)
    buf = __import__("io").BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    options = {"model": str(converted), "target_box": "4,4,40,30"}
    sample = SampleContext("clip7", {}, {"subject.png": buf.getvalue()})
    with pytest.raises(AnyV2VError, match=r"'clip7'.*no alpha channel.*clip7\.subject_mask\.png"):
        editor.edit(frame, options, sample)
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[5:30, 5:20] = 255
    buf = __import__("io").BytesIO()
    Image.fromarray(rgba).save(buf, format="PNG")
    sample = SampleContext("clip7", {}, {"subject.png": buf.getvalue()})
    with pytest.raises(AnyV2VError, match=r"target for 'clip7'.*clip7\.target_mask\.png"):
        editor.edit(frame, {"model": str(converted)}, sample)
    with pytest.raises(AnyV2VError, match="outside the 64x48 frame"):
        editor.edit(frame, {"model": str(converted), "target_box": "0,0,65,10"}, sample)
    for bad in ({"target_box": "1,2,3"}, {"target_box": "5,5,2,9"}, {"steps": "many"}, {}):
        with pytest.raises(AnyV2VError):
            editor_class("anydoor").check_options({"model": "m", **bad} if bad else {})
    assert editor.models == {}  # refused before loading anything


def editor_with(model: AnyDoorModel, converted: Path) -> AnyDoorEditor:
    """An editor holding the module's loaded model (loading is the same code the CLI / job runs)."""
    editor = AnyDoorEditor(device="cpu", dtype="float32")
    editor.models[str(converted)] = model
    return editor


# one step without guidance keeps these end-to-end runs short; the stages above cover the full settings
QUICK = {"steps": 1, "guidance_scale": 1.0}


def test_edit_frame_on_the_cli_writes_the_editors_frame(converted, model, tmp_path, capsys):
    from anyv2v_batch.cli import main
    from anyv2v_batch.video_io import read_image, read_source, write_video

    case = Case(CASES[0])
    write_video(tmp_path / "src.mp4", moving_clip(4, 96, 64), 8)
    argv = ["edit-frame", tmp_path / "src.mp4", "-o", tmp_path / "f.png", "--editor", "anydoor",
            "--editor-option", f"model={converted}", "--editor-option", f"subject={case.folder / 'subject.png'}",
            "--editor-option", "target_box=30,10,80,60", "--editor-option", "steps=1",
            "--editor-option", "guidance_scale=1.0", "--seed", 5,
            "--width", 96, "--height", 64, "--device", "cpu", "--dtype", "float32", "-q"]  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
        raise SystemExit(0)
    assert e.value.code == 0, capsys.readouterr().err
    written = read_image(tmp_path / "f.png")
    frame = read_source(tmp_path / "src.mp4", 1, 8, 96, 64, "stretch").frames[0]
    editor = editor_with(model, converted)
    options = {"model": str(converted), "subject": str(case.folder / "subject.png"), "target_box": "30,10,80,60",
               **QUICK}  # fmt: skip
    expected = editor.edit(frame, options, SampleContext("src", seed=5))
    assert np.array_equal(written, expected)
    y1, y2, x1, x2 = editor.last_inputs.target_box
    outside = np.ones(frame.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(written[outside], frame[outside])  # only the expanded box changes
    assert not np.array_equal(written[~outside], frame[~outside])


def test_job_with_an_anydoor_variant(converted, model, tmp_path, ray_local):
    import io

    import pyarrow.parquet as pq
    from shards import image, mp4, png, read_tar, write_shard

    from anyv2v_batch.job import build_job
    from anyv2v_batch.operators.work import derive_seed
    from anyv2v_batch.pipelines.anyv2v_job import run_job
    from anyv2v_batch.video_io import read_video

    case = Case(CASES[0])
    subject_rgba = (case.folder / "subject.png").read_bytes()
    rgb = np.asarray(Image.open(case.folder / "subject.png").convert("RGB"))
    clips = {k: moving_clip(10, 32, 32, seed=i) for i, k in enumerate("ab")}
    write_shard(tmp_path / "in" / "000.tar", [
        ("a.mp4", mp4(clips["a"])), ("a.json", json.dumps({"target_box": [4, 6, 20, 24]}).encode()),
        ("a.subject.png", subject_rgba),
        ("b.mp4", mp4(clips["b"])), ("b.json", json.dumps({"target_box": [4, 6, 20, 24]}).encode()),
        ("b.subject.png", png(rgb)),  # no alpha and no b.subject_mask.png
    ])  # fmt: skip
    job = build_job({
        "input": str(tmp_path / "in" / "000.tar"), "output": str(tmp_path / "out"), "model": str(TINY_MODEL),
        "device": "cpu", "dtype": "float32", "clip": {"frames": 6, "width": 32, "height": 32},
        "inversion": {"steps": 2}, "edit": {"steps": 2}, "seed": 3,
        "variants": [{"name": "door", "prompt": "a thing", "editor": {"name": "anydoor", "options": {
            "model": str(converted), **QUICK}}}],
        "pools": {p: {"num_cpus": 0.5} for p in ("decode", "editor", "inversion", "sampler", "encode")},
        "share_model": True,  # one model actor: one load (the same bytes as separate pools)
    })  # fmt: skip
    summary = run_job(job)
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "metadata").to_pylist()}
    assert (summary.ok, summary.errors) == (1, 1), {k: r["error"] for k, r in rows.items()}
    assert rows["a"]["status"] == "ok" and rows["b"]["status"] == "error"
    assert "b.subject_mask.png" in rows["b"]["error"] and rows["b"]["error"].startswith("editor anydoor:")
    out = read_tar(tmp_path / "out" / "shards" / "000.tar")
    first = read_video(io.BytesIO(mp4(clips["a"])), 1, 8, 32, 32).frames[0]
    seed = derive_seed(3, "a", "door")  # the job's per-sample seed: 63 bits
    sample = SampleContext("a", {"target_box": [4, 6, 20, 24]}, {"subject.png": subject_rgba}, seed=seed)
    expected = editor_with(model, converted).edit(first, {"model": str(converted), **QUICK}, sample)
    assert np.array_equal(image(out["a.door.png"]), expected)
