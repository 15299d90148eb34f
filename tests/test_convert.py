"""`convert_seine`: the tiny SEINE fixture (SD-1.4 layout + seine.pt pickle) into a safetensors-only folder
that loads into the same model; its one-line errors; nothing half-written on failure."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SHARED
from safetensors import safe_open
from safetensors.torch import load_file

from anyv2v_batch import AnyV2VError, load_backbone
from anyv2v_batch.convert import convert_seine

torch.set_num_threads(1)

TINY = SHARED / "seine-reference" / "tiny-seine"
CHECKPOINT = TINY / "seine.pt"


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder`."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def readable_without_pickle(path: Path) -> bool:
    """A safetensors file that safetensors opens, or a JSON / text file (a pickle is neither)."""
    if path.suffix == ".safetensors":
        with safe_open(path, "pt") as f:
            return len(list(f.keys())) > 0
    text = path.read_bytes().decode("utf-8")  # pickles (protocol >= 2) start with 0x80: not UTF-8
    if path.suffix == ".json":
        json.loads(text)
    return path.suffix in {".json", ".txt"}


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    before = tree_digest(TINY)
    out = convert_seine(CHECKPOINT, str(TINY), tmp_path_factory.mktemp("convert") / "seine-converted")
    assert tree_digest(TINY) == before  # the input is only read
    return out


@pytest.fixture(scope="module")
def backbones(converted):
    from anyv2v_batch.loading import quiet_libraries

    quiet_libraries()
    ours = load_backbone("seine", str(converted), device="cpu", dtype="float32")
    original = load_backbone("seine", str(TINY), device="cpu", dtype="float32")
    return ours, original


def test_converted_folder_is_complete_and_holds_no_pickle(converted):
    files = {str(p.relative_to(converted)) for p in converted.rglob("*") if p.is_file()}
    assert files == {
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "scheduler/scheduler_config.json",
    }
    assert not [p for p in converted.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"}]
    assert all(readable_without_pickle(p) for p in converted.rglob("*") if p.is_file())
    assert [p.name for p in converted.parent.iterdir()] == ["seine-converted"]  # no temporary folder left
    assert json.loads((converted / "unet" / "config.json").read_text())["_class_name"] == "SEINEUNet"
    # the copied pieces are byte-identical / equal to the source's
    for name in ("merges.txt", "vocab.json", "special_tokens_map.json", "tokenizer_config.json"):
        assert (converted / "tokenizer" / name).read_bytes() == (TINY / "tokenizer" / name).read_bytes()
    scheduler = json.loads((converted / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler == json.loads((TINY / "scheduler" / "scheduler_config.json").read_text())
    # the UNet file holds exactly seine.pt's "ema"
    ema = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["ema"]
    saved = load_file(converted / "unet" / "diffusion_pytorch_model.safetensors")
    assert set(saved) == set(ema) and len(saved) == len(ema) > 0
    assert all(torch.equal(saved[k], v) for k, v in ema.items())


def test_converted_folder_loads_into_the_same_model(backbones):
    ours, original = backbones
    for part in ("unet", "vae", "text_encoder"):
        mine, theirs = getattr(ours, part).state_dict(), getattr(original, part).state_dict()
        assert set(mine) == set(theirs), part
        assert all(torch.equal(v, theirs[k]) for k, v in mine.items()), part
    assert ours.scheduler_config == original.scheduler_config
    text = "a red square over a gradient"
    assert ours.tokenizer(text)["input_ids"] == original.tokenizer(text)["input_ids"]

    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 9, 8, 8, 8, generator=generator)
    context = torch.randn(1, 77, 32, generator=generator)
    with torch.inference_mode():
        b = original.unet(sample, torch.tensor(500), context)
        # The converted UNet's parameters are views into the memory-mapped safetensors file, at offsets
        # that are not 64-byte aligned; on the CPU the kernels then take other vector paths and round
        # differently (~1e-6 relative). In freshly allocated memory (a deep copy) it is bit-identical.
        a = copy.deepcopy(ours.unet)(sample, torch.tensor(500), context)
        as_loaded = ours.unet(sample, torch.tensor(500), context)
    assert a.shape == b.shape == (1, 4, 8, 8, 8)
    assert a.abs().sum() > 0
    assert torch.equal(a, b)
    assert float((as_loaded - b).norm() / b.norm()) < 1e-6


def test_checkpoint_none_takes_seine_pt_from_the_model_folder_and_overwrite_replaces(converted, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with pytest.raises(AnyV2VError, match="already exists.*overwrite=True"):
        convert_seine(None, str(TINY), out)
    assert [p.name for p in out.iterdir()] == ["stale.txt"]  # untouched
    assert convert_seine(None, str(TINY), out, overwrite=True) == out
    assert not (out / "stale.txt").exists()
    assert (
        tree_digest(out)["unet/diffusion_pytorch_model.safetensors"]
        == (tree_digest(converted)["unet/diffusion_pytorch_model.safetensors"])
    )
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # neither the temporary nor the old folder remains


def _assert_nothing_written(tmp_path: Path, keep: set[str]) -> None:
    assert {p.name for p in tmp_path.iterdir()} == keep


def test_missing_checkpoint(tmp_path):
    with pytest.raises(AnyV2VError, match=r"nope\.pt' does not exist; pass the path of seine\.pt") as e:
        convert_seine(tmp_path / "nope.pt", str(TINY), tmp_path / "deep" / "out")
    assert "\n" not in str(e.value)
    _assert_nothing_written(tmp_path, set())


def test_missing_checkpoint_in_model_folder_offline(tmp_path):
    model = tmp_path / "sd14"
    shutil.copytree(TINY, model)
    (model / "seine.pt").unlink()
    with pytest.raises(
        AnyV2VError, match="no SEINE checkpoint given and no seine.pt in .*HF_HUB_OFFLINE is set.*hf download"
    ):
        convert_seine(None, str(model), tmp_path / "out")
    _assert_nothing_written(tmp_path, {"sd14"})


def test_not_a_seine_checkpoint(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(AnyV2VError, match="is not a SEINE checkpoint.*'ema'.*state_dict.*seine.pt"):
        convert_seine(tmp_path / "other.pt", str(TINY), tmp_path / "new" / "out")
    _assert_nothing_written(tmp_path, {"other.pt"})


def test_garbage_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"this is not a pickle")
    with pytest.raises(AnyV2VError, match="is not a SEINE checkpoint that loads safely"):
        convert_seine(tmp_path / "junk.pt", str(TINY), tmp_path / "out")
    _assert_nothing_written(tmp_path, {"junk.pt"})


def test_state_dict_that_does_not_fit_the_config(tmp_path):
    ema = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)["ema"]
    missing = dict(ema)
    missing.pop("conv_in.weight")
    torch.save({"ema": missing}, tmp_path / "missing.pt")
    with pytest.raises(AnyV2VError, match=r"does not fit the SEINE UNet.*\(1 missing: conv_in\.weight\)") as e:
        convert_seine(tmp_path / "missing.pt", str(TINY), tmp_path / "out")
    assert "\n" not in str(e.value)
    resized = dict(ema, **{"conv_in.weight": torch.zeros(32, 4, 3, 3)})  # a 2D SD input layer, not SEINE's 9
    torch.save({"ema": resized}, tmp_path / "resized.pt")
    with pytest.raises(AnyV2VError, match=r"1 of another shape: conv_in\.weight \[32, 4, 3, 3\] != \[32, 9, 3, 3\]"):
        convert_seine(tmp_path / "resized.pt", str(TINY), tmp_path / "out")
    _assert_nothing_written(tmp_path, {"missing.pt", "resized.pt"})


def test_missing_component_of_the_sd_model(tmp_path):
    model = tmp_path / "sd14"
    shutil.copytree(TINY, model)
    shutil.rmtree(model / "vae")
    before = tree_digest(model)
    with pytest.raises(AnyV2VError, match="cannot load the vae of model .*diffusers layout"):
        convert_seine(None, str(model), tmp_path / "out")
    assert tree_digest(model) == before
    _assert_nothing_written(tmp_path, {"sd14"})


def test_output_that_would_replace_the_input_is_refused(tmp_path):
    model = tmp_path / "sd14"
    shutil.copytree(TINY, model)
    before = tree_digest(model)
    for target in (model, tmp_path):  # the model folder itself, or a folder holding it
        with pytest.raises(AnyV2VError, match="would replace the input model"):
            convert_seine(None, str(model), target, overwrite=True)
    assert tree_digest(model) == before
    _assert_nothing_written(tmp_path, {"sd14"})


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    from transformers import CLIPTextModel

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(CLIPTextModel, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        convert_seine(CHECKPOINT, str(TINY), tmp_path / "a" / "b" / "out")
    _assert_nothing_written(tmp_path, set())  # neither the temporary folder nor the parents it made
