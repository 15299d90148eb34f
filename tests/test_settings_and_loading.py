"""Settings validation and device / dtype / weight resolution."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anyv2v_batch import AnyV2VError, ClipSettings, EditSettings, InversionSettings
from anyv2v_batch.loading import load_component, resolve_device, resolve_dtype


def test_official_defaults():
    e, i, c = EditSettings(), InversionSettings(), ClipSettings()
    assert (e.steps, e.guidance_scale, e.pnp_conv, e.pnp_spatial, e.pnp_temporal) == (50, 9.0, 0.2, 0.2, 0.5)
    assert (e.init_step, e.seed, e.eta, e.random_ratio) == (0, 8888, 0.0, 0.0)
    assert e.negative_prompt.startswith("Distorted, discontinuous, Ugly, blurry")
    assert (i.steps, i.guidance_scale, i.prompt) == (500, 1.0, "")
    assert (c.frames, c.fps, c.width, c.height) == (16, 8.0, 512, 512)


@pytest.mark.parametrize(
    ("settings", "flag"),
    [
        (EditSettings(steps=0), "--steps"),
        (EditSettings(pnp_temporal=-0.1), "--pnp-temporal"),
        (EditSettings(init_step=50), "--init-step"),
        (EditSettings(guidance_scale=-1), "--guidance-scale"),
        (EditSettings(injection_window="middle"), "--injection-window"),
        (InversionSettings(steps=0), "--inversion-steps"),
        (ClipSettings(frames=1), "--frames"),
        (ClipSettings(width=500), "--width"),
        (ClipSettings(fps=0), "--fps"),
    ],
)
def test_bad_values_name_their_flag(settings, flag):
    with pytest.raises(AnyV2VError, match=f"^{flag} must be"):
        settings.validate()


def test_device_and_dtype_resolution():
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    with pytest.raises(AnyV2VError, match="float16 is not supported on the CPU"):
        resolve_dtype("float16", cpu)
    with pytest.raises(AnyV2VError, match="--dtype 'half8'"):
        resolve_dtype("half8", cpu)
    with pytest.raises(AnyV2VError, match="not a torch device"):
        resolve_device("gpu-please")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == cpu
        with pytest.raises(AnyV2VError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_weight_errors_are_one_line(tmp_path):
    from diffusers import I2VGenXLUNet

    with pytest.raises(AnyV2VError, match=r"model folder '.*nowhere' does not exist"):
        load_component(I2VGenXLUNet, str(tmp_path / "nowhere"), "unet")
    with pytest.raises(AnyV2VError, match="the unet is missing or unreadable") as err:
        load_component(I2VGenXLUNet, str(tmp_path), "unet")
    assert "\n" not in str(err.value)
    with pytest.raises(AnyV2VError, match="HF_HUB_OFFLINE is set"):  # the test session runs offline
        load_component(I2VGenXLUNet, "nobody/no-such-model", "unet")


def test_code_is_ruff_clean():
    root = Path(__file__).parent.parent
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", str(root)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
