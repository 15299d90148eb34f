"""`anyv2v-batch edit` on real files: its output, and its one-line errors that leave inputs untouched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED, TINY_MODEL, moving_clip
from PIL import Image

from anyv2v_batch.cli import main
from anyv2v_batch.video_io import read_frame_folder, read_video, write_video

FAST = [
    "--model",
    str(TINY_MODEL),
    "--width",
    "32",
    "--height",
    "32",
    "--frames",
    "6",
    "--inversion-steps",
    "20",
    "--steps",
    "5",
    "--device",
    "cpu",
    "-q",
]


@pytest.fixture()
def files(tmp_path):
    clip = moving_clip(12, 32, 32)
    write_video(tmp_path / "src.mp4", clip, 8)
    edited = clip[0][..., ::-1].copy()
    Image.fromarray(edited).save(tmp_path / "edited.png")
    return tmp_path


def run_cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.slow
def test_edit_writes_the_same_frames_as_the_api(files, capsys, tiny_backbone):
    from anyv2v_batch import EditSettings, InversionSettings, edit, invert

    code, err = run_cli(
        [
            "edit",
            files / "src.mp4",
            "--first-frame",
            files / "edited.png",
            "-o",
            files / "out",
            "--prompt",
            "a red car",
            *FAST,
        ],
        capsys,
    )
    assert code == 0, err
    assert err == ""  # -q
    written = read_frame_folder(files / "out", 6, 8, 32, 32).frames
    clip = read_video(files / "src.mp4", 6, 8, 32, 32).frames
    inversion = invert(tiny_backbone, clip, InversionSettings(steps=20), fps=8)
    edited = np.asarray(Image.open(files / "edited.png").convert("RGB"))
    expected = edit(tiny_backbone, inversion, edited, EditSettings(prompt="a red car", steps=5)).frames
    assert np.array_equal(written, expected)


@pytest.mark.slow
def test_edit_mp4_out_and_frame_folder_in(files, capsys, tiny_clip):
    from anyv2v_batch.imaging import fit_frame
    from anyv2v_batch.scores import Scorer

    out = files / "out.mp4"
    evaluate = ["--evaluate", "--evaluate-model", tiny_clip, "--prompt", "a red square"]
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in ["edit", files / "src.mp4", "--first-frame", files / "edited.png", "-o", out, *FAST,
                               *evaluate]])  # fmt: skip
        raise SystemExit(0)
    printed = capsys.readouterr()
    assert exit_info.value.code == 0, printed.err
    written = read_video(out, 6, 8, 32, 32).frames
    assert written.shape == (6, 32, 32, 3)
    # --evaluate prints the scores of the clip as written, even with -q
    scores = dict(line.split("\t") for line in printed.out.splitlines())
    edited = fit_frame(np.asarray(Image.open(files / "edited.png").convert("RGB")), 32, 32)
    source = read_video(files / "src.mp4", 6, 8, 32, 32).frames
    expected = Scorer(str(tiny_clip)).score(written, source, edited, "a red square")
    assert sorted(scores) == sorted(expected)
    for name, value in expected.items():
        assert abs(float(scores[name]) - value) <= 1e-6, name
    write_video(files / "frames", moving_clip(7, 32, 32), 8)
    code, err = run_cli(
        ["edit", files / "frames", "--first-frame", files / "edited.png", "-o", files / "o2.mp4", *FAST[:-1]], capsys
    )
    assert code == 0, err
    assert "wrote" in err and "inversion" in err  # progress lines without -q


def _error_cases(files: Path) -> dict[str, tuple[list, str]]:
    src, frame = files / "src.mp4", files / "edited.png"
    (files / "garbage.mp4").write_bytes(b"\x00junk" * 500)
    (files / "notimage.png").write_text("hello")
    write_video(files / "short.mp4", moving_clip(3, 32, 32), 8)
    (files / "exists.mp4").write_bytes(b"keep me")
    (files / "no-unet").mkdir()
    (files / "no-unet" / "model_index.json").write_text("{}")
    base = ["--first-frame", frame]
    return {
        "missing source": ([files / "none.mp4", *base, "-o", files / "o.mp4"], "does not exist"),
        "corrupt video": ([files / "garbage.mp4", *base, "-o", files / "o.mp4"], "cannot decode"),
        "too few frames": ([files / "short.mp4", *base, "-o", files / "o.mp4"], "too short"),
        "missing first frame": ([src, "--first-frame", files / "no.png", "-o", files / "o.mp4"], "does not exist"),
        "corrupt first frame": ([src, "--first-frame", files / "notimage.png", "-o", files / "o.mp4"], "cannot read"),
        "fraction out of range": ([src, *base, "-o", files / "o.mp4", "--pnp-conv", "1.5"], "--pnp-conv must be"),
        "odd width": ([src, *base, "-o", files / "o.mp4", "--width", "30"], "--width must be a positive multiple"),
        "start past the end": ([src, *base, "-o", files / "o.mp4", "--init-step", "5"], "--init-step must be"),
        "bad resize": ([src, *base, "-o", files / "o.mp4", "--resize", "zoom"], "--resize must be one of"),
        "output exists": ([src, *base, "-o", files / "exists.mp4"], "already exists; pass --overwrite"),
        "output is input": ([src, *base, "-o", src, "--overwrite"], "is the source itself"),
        "bad output suffix": ([src, *base, "-o", files / "o.gif"], "use a .mp4 file or a folder"),
        "no model folder": ([src, *base, "-o", files / "o.mp4", "--model", files / "nope" / "model"], "does not exist"),
        "incomplete model folder": ([src, *base, "-o", files / "o.mp4", "--model", files / "no-unet"], "the unet"),
        "no GPU": ([src, *base, "-o", files / "o.mp4", "--device", "cuda:0"], "CUDA"),
        "unreachable schedule": (
            [src, *base, "-o", files / "o.mp4", "--inversion-steps", "30", "--steps", "10"],
            "no latent at timestep",
        ),
        "not a number": ([src, *base, "-o", files / "o.mp4", "--steps", "many"], "Invalid value for '--steps'"),
    }


ERROR_NAMES = [
    "missing source",
    "corrupt video",
    "too few frames",
    "missing first frame",
    "corrupt first frame",
    "fraction out of range",
    "odd width",
    "start past the end",
    "bad resize",
    "output exists",
    "output is input",
    "bad output suffix",
    "no model folder",
    "incomplete model folder",
    "no GPU",
    "unreachable schedule",
    "not a number",
]


@pytest.mark.parametrize("name", ERROR_NAMES)
def test_bad_input_is_one_line_nonzero_and_leaves_everything_as_it_was(files, capsys, name):
    if name == "no GPU":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    argv, message = _error_cases(files)[name]
    before = digest(files)
    fast = [a for a in FAST if a not in ("-q",)]
    if "--model" in [str(a) for a in argv]:  # the case names its own model
        i = fast.index("--model")
        fast = fast[:i] + fast[i + 2 :]
    code, err = run_cli(["edit", *fast, *argv], capsys)  # the case's own flags come last and win
    assert code != 0
    lines = [line for line in err.splitlines() if not line.startswith(("loading", "inverting", "editing"))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert "Traceback" not in err
    assert digest(files) == before  # inputs untouched, no output, no temporary files


@pytest.mark.slow
def test_missing_weights_offline_in_a_real_process(files):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(files / "hf-home"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "anyv2v_batch.cli",
            "edit",
            files / "src.mp4",
            "--first-frame",
            files / "edited.png",
            "-o",
            files / "o.mp4",
            "--model",
            "nobody/no-such-model",
            "--width",
            "32",
            "--height",
            "32",
            "--frames",
            "6",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 1
    assert (
        proc.stderr.strip().splitlines()[-1].startswith("error: cannot load the unet of model 'nobody/no-such-model'")
    )
    assert "HF_HUB_OFFLINE" in proc.stderr and "Traceback" not in proc.stderr
    assert not (files / "o.mp4").exists()


@pytest.mark.parametrize(
    ("backbone", "missing"),
    [("consisti2v", "unet/config.json of model 'TIGER-Lab/ConsistI2V'"), ("seine", "the vae of model 'CompVis/")],
)
def test_other_backbones_without_weights_offline_say_so_in_one_line(files, capsys, monkeypatch, backbone, missing):
    monkeypatch.setenv("HF_HOME", str(files / "hf-home"))  # an empty hub cache; HF_HUB_OFFLINE is set
    code, err = run_cli(
        ["edit", files / "src.mp4", "--first-frame", files / "edited.png", "-o", files / "o.mp4",
         "--backbone", backbone, "--frames", 16, "--device", "cpu"], capsys,
    )  # fmt: skip
    assert code == 1
    last = err.strip().splitlines()[-1]  # after the progress line
    assert last.startswith(f"error: cannot load {missing}") and "HF_HUB_OFFLINE" in last and "Traceback" not in err
    assert not (files / "o.mp4").exists()


def test_convert_seine_writes_a_folder_without_pickles(files, capsys):
    from safetensors.torch import load_file

    from anyv2v_batch.backbones.seine_unet import load_seine_checkpoint

    tiny = SHARED / "seine-reference" / "tiny-seine"
    argv = ["convert-seine", "--checkpoint", tiny / "seine.pt", "--sd-model", tiny, "-o", files / "s"]
    code, err = run_cli(argv, capsys)
    assert code == 0, err
    assert not [p for p in (files / "s").rglob("*") if p.suffix in (".bin", ".pt", ".pkl")]
    converted = load_file(files / "s" / "unet" / "diffusion_pytorch_model.safetensors")
    ema = load_seine_checkpoint(tiny / "seine.pt")
    assert converted.keys() == ema.keys() and all(torch.equal(converted[k], ema[k]) for k in ema)
    code, err = run_cli(argv, capsys)
    assert code == 1 and "already exists" in err and "--overwrite" in err


def test_rays_notices_stay_off_the_console_unless_debug():
    """The notices a newcomer saw on every run (token authentication on, Ray Data's progress bars off), from
    Ray's own functions and loggers: silent without --debug, shown with it; Ray's errors always shown."""
    import logging

    from ray._private.authentication import authentication_token_setup as auth

    from anyv2v_batch.pipelines.anyv2v_job import ray_console

    said: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    progress = logging.getLogger("ray.data._internal.progress")
    handler = Keep(logging.NOTSET)
    for logger in (progress, auth.logger):
        logger.addHandler(handler)
    try:
        for debug in (False, True):
            ray_console(debug)
            said.clear()
            auth._warn_token_auth_enabled()
            progress.warning("Progress bars disabled.")
            progress.error("a real Ray Data error")
            assert "a real Ray Data error" in said and len(said) == (3 if debug else 1), (debug, said)
    finally:
        ray_console(False)
        for logger in (progress, auth.logger):
            logger.removeHandler(handler)
