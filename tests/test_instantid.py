"""The `instantid` editor: stage by stage against the official InstantID pipeline's recorded runs
(tests/fixtures/instantid-reference, made by tools/reference/instantid), its licence gate, its optional
extra, its inputs, and in `edit-frame` and a Ray job."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import FIXTURES, TINY_MODEL, moving_clip, rel_err
from safetensors.torch import load_file
from shards import image, mp4, read_tar, write_shard

from anyv2v_batch import AnyV2VError
from anyv2v_batch.cli import main
from anyv2v_batch.editors import SampleContext, editor_class, load_editor
from anyv2v_batch.editors.instantid import InstantIDEditor
from anyv2v_batch.editors.instantid_faces import Face, InsightFaceAnalyzer, largest_face
from anyv2v_batch.editors.instantid_model import InstantIDModel, draw_kps, generate, load_adapter_state
from anyv2v_batch.pnp_edit import prepare_first_frame
from anyv2v_batch.video_io import read_image, read_video, write_video

REF = FIXTURES / "instantid-reference"  # the official runs and the tiny models they ran
CASES = sorted(p for p in REF.glob("case-*") if p.is_dir())
# the other tests run tiny random models of the same architectures, made here (build_tiny_instantid)
TINY = Path(tempfile.mkdtemp(prefix="tiny-instantid-"))
SDXL, IDENTITYNET, ADAPTER = TINY / "sdxl", TINY / "identitynet", TINY / "ip-adapter.safetensors"
ACCEPT = {"accept_noncommercial_models": True}
# tiny generation size: resize_img brings the short side to 64, then the long side to 128
SIZES = {"max_side": 128, "min_side": 64}


def base_options(**extra) -> dict:
    return {"prompt": "a photo of a person", "model": str(SDXL), "identitynet": str(IDENTITYNET),
            "adapter": str(ADAPTER), "steps": 2, **SIZES, **extra}  # fmt: skip


def build_tiny_instantid(folder: Path) -> None:
    """A tiny SDXL (text_time UNet, 8x VAE, two CLIP text encoders, Euler with SDXL-base's settings), an
    IdentityNet from its UNet with non-zero output convs, and a face adapter in the official format:
    the state dict of InstantID's `Resampler(dim=64, depth=4, dim_head=64, heads=1, num_queries=16,
    embedding_dim=512, output_dim=32, ff_mult=4)` (its key names and shapes) plus `<n>.to_k_ip` /
    `<n>.to_v_ip` for every cross-attention, n counting over all the UNet's attention processors."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(TINY_MODEL / "tokenizer")
    unet = UNet2DConditionModel(
        sample_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 16,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8), norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.13025,
    )  # fmt: skip
    text = dict(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id)  # fmt: skip
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text)), tokenizer=tokenizer, tokenizer_2=tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=16)), unet=unet,
        scheduler=scheduler,
    ).save_pretrained(folder / "sdxl")  # fmt: skip
    identitynet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4, 8, 8, 8))
    with torch.no_grad():
        for name, p in identitynet.named_parameters():
            if name.startswith(
                ("controlnet_down_blocks", "controlnet_mid_block", "controlnet_cond_embedding.conv_out")
            ):
                p.normal_(0, 0.05)
    identitynet.save_pretrained(folder / "identitynet")
    dim, inner, out, ff = 64, 64, 32, 256
    proj = {"latents": (1, 16, dim), "proj_in.weight": (dim, 512), "proj_in.bias": (dim,),
            "proj_out.weight": (out, dim), "proj_out.bias": (out,), "norm_out.weight": (out,),
            "norm_out.bias": (out,)}  # fmt: skip
    for i in range(4):
        proj |= {f"layers.{i}.0.norm1.weight": (dim,), f"layers.{i}.0.norm1.bias": (dim,),
                 f"layers.{i}.0.norm2.weight": (dim,), f"layers.{i}.0.norm2.bias": (dim,),
                 f"layers.{i}.0.to_q.weight": (inner, dim), f"layers.{i}.0.to_kv.weight": (2 * inner, dim),
                 f"layers.{i}.0.to_out.weight": (dim, inner), f"layers.{i}.1.0.weight": (dim,),
                 f"layers.{i}.1.0.bias": (dim,), f"layers.{i}.1.1.weight": (ff, dim),
                 f"layers.{i}.1.3.weight": (dim, ff)}  # fmt: skip
    layer_norms = {k for k in proj if k.endswith(("norm1.weight", "norm2.weight", "norm_out.weight", ".1.0.weight"))}
    state = {f"image_proj.{k}": torch.randn(shape) * (0.2 if len(shape) > 1 else 0.05) + (k in layer_norms)
             for k, shape in proj.items()}  # fmt: skip
    for n, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):  # every cross-attention of this UNet is at 32 channels
            state[f"ip_adapter.{n}.to_k_ip.weight"] = torch.randn(32, 32) * 0.1
            state[f"ip_adapter.{n}.to_v_ip.weight"] = torch.randn(32, 32) * 0.1
    save_file(state, folder / "ip-adapter.safetensors")


@pytest.fixture(scope="module")
def tiny_model():
    build_tiny_instantid(TINY)
    yield InstantIDModel.load(str(SDXL), str(IDENTITYNET), str(ADAPTER), torch.device("cpu"), torch.float32)
    shutil.rmtree(TINY, ignore_errors=True)


@pytest.fixture(scope="module")
def reference_model() -> InstantIDModel:
    """The tiny models the official runs used (the adapter as recorded, flattened to .safetensors)."""
    return InstantIDModel.load(
        str(REF / "tiny-sdxl"), str(REF / "tiny-identitynet"), str(REF / "tiny-ip-adapter.safetensors"),
        torch.device("cpu"), torch.float32,
    )  # fmt: skip


def run_cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
        raise SystemExit(0)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


EMBEDDING = np.random.default_rng(3).normal(0, 1, 512).astype(np.float32)
KPS = [[10.0, 10.0], [22.0, 10.5], [16.0, 16.0], [11.0, 22.0], [21.0, 22.0]]  # in a 32 x 32 frame's pixels


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# --- the official format and the model's wiring ---------------------------------------------------


def test_adapter_loads_from_the_official_bin_and_never_unpickles_code(tiny_model, tmp_path):
    """ip-adapter.bin as the official code saves it ({"image_proj": ..., "ip_adapter": ...}, torch.save)
    loads the same weights, bit for bit, as the flattened .safetensors (so the same face projection, to
    float rounding: kernels may round differently in another process layout); a pickle with code is refused."""
    flat = load_file(str(ADAPTER))
    nested: dict[str, dict] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        part, _, rest = key.partition(".")
        nested[part][rest] = value
    torch.save(nested, tmp_path / "ip-adapter.bin")
    from_bin = InstantIDModel.load(str(SDXL), str(IDENTITYNET), str(tmp_path / "ip-adapter.bin"), "cpu", torch.float32)
    # the weights: the resampler's and every cross-attention's face keys, bit for bit
    loaded, reference = from_bin.pipe.unet.state_dict(), tiny_model.pipe.unet.state_dict()
    adapter_keys = [k for k in reference if k.startswith("encoder_hid_proj.") or "_ip." in k]
    assert len(adapter_keys) > 10 and loaded.keys() == reference.keys()
    for key in adapter_keys:
        assert torch.equal(loaded[key], reference[key]), key
    emb = torch.from_numpy(EMBEDDING).reshape(1, 1, 512)
    with torch.no_grad():
        ours, theirs = from_bin.face_projection(emb), tiny_model.face_projection(emb)
    assert ours.shape == (1, 16, from_bin.pipe.unet.config.cross_attention_dim)
    assert rel_err(ours, theirs) < 1e-6
    for name, proc in from_bin.pipe.unet.attn_processors.items():  # every cross-attention has the face keys
        assert hasattr(proc, "to_k_ip") == name.endswith("attn2.processor"), name

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled code ran",))

    torch.save({"image_proj": {"latents": Evil()}, "ip_adapter": {}}, tmp_path / "evil.bin")
    with pytest.raises(AnyV2VError, match="cannot read the face adapter") as e:
        load_adapter_state(str(tmp_path / "evil.bin"))
    assert "\n" not in str(e.value)
    with pytest.raises(AnyV2VError, match="does not exist"):
        load_adapter_state(str(tmp_path / "none.bin"))


def test_identitynet_gets_the_face_tokens_not_the_text(tiny_model):
    """The IdentityNet's cross-attention context is the 16 face tokens (unconditional ones from a zero
    embedding), the UNet's the text; with the text given to the IdentityNet the prediction changes."""
    seen = []
    hook = tiny_model.identitynet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    kps = draw_kps(64, 64, np.asarray(KPS) * 2)
    record: dict = {}
    try:
        generate(tiny_model, "a face", "bad", EMBEDDING, kps, steps=1, generator=torch.Generator().manual_seed(0),
                 record=record)  # fmt: skip
    finally:
        hook.remove()
    tokens = record["face_tokens"]
    assert len(seen) == 1 and torch.equal(seen[0], tokens) and tokens.shape[:2] == (2, 16)
    with torch.no_grad():
        zero = tiny_model.face_projection(torch.zeros(1, 1, 512))
    assert torch.allclose(tokens[:1], zero) and not torch.allclose(tokens[1:], zero)
    assert record["prompt_embeds"].shape[1] == 77  # the text goes to the UNet

    original = tiny_model.identitynet.forward

    def with_text(*args, **kwargs):
        kwargs["encoder_hidden_states"] = record["prompt_embeds"]
        return original(*args, **kwargs)

    tiny_model.identitynet.forward = with_text
    try:
        other: dict = {}
        generate(tiny_model, "a face", "bad", EMBEDDING, kps, steps=1, latents=record["latents_init"], record=other)
    finally:
        del tiny_model.identitynet.forward
    assert rel_err(other["noise_pred.0"], record["noise_pred.0"]) > 1e-3


# --- face analysis ---------------------------------------------------------------------------------


def test_default_face_analyzer_refuses_a_folder_without_models(tmp_path):
    (tmp_path / "antelopev2" / "antelopev2").mkdir(parents=True)
    (tmp_path / "antelopev2" / "antelopev2" / "scrfd_10g_bnkps.onnx").write_bytes(b"")
    for folder, hint in ((tmp_path / "empty", False), (tmp_path / "antelopev2", True)):
        with pytest.raises(AnyV2VError, match="holds no insightface antelopev2 models") as e:
            InsightFaceAnalyzer(folder)
        assert "never downloaded" in str(e.value) and ("point face_models there" in str(e.value)) == hint


def test_missing_extra_is_one_line_naming_it(tmp_path):
    """Without insightface (an import that fails), face analysis says which extra to install."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "glintr100.onnx").write_bytes(b"")
    code = (
        "import sys; sys.modules['insightface'] = None\n"
        "from anyv2v_batch.errors import AnyV2VError\n"
        "from anyv2v_batch.editors.instantid_faces import InsightFaceAnalyzer\n"
        f"try:\n    InsightFaceAnalyzer({str(tmp_path / 'models')!r})\n"
        "except AnyV2VError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1 and "pip install -e '.[instantid]'" in lines[0], out.stdout


class FakeAnalyzer:
    """Stands in for insightface: given faces per image size (the editor resizes images first)."""

    def __init__(self, faces_by_shape: dict[tuple[int, int], list[Face]]):
        self.faces_by_shape, self.calls = faces_by_shape, []

    def faces(self, rgb: np.ndarray) -> list[Face]:
        self.calls.append(rgb.shape[:2])
        return self.faces_by_shape.get(rgb.shape[:2], [])


def face(x1, y1, x2, y2, seed) -> Face:
    kps = np.array([[x1 + 2, y1 + 2], [x2 - 2, y1 + 2], [(x1 + x2) / 2, (y1 + y2) / 2], [x1 + 2, y2 - 2],
                    [x2 - 2, y2 - 2]], np.float32)  # fmt: skip
    return Face(np.array([x1, y1, x2, y2], np.float32), kps, np.random.default_rng(seed).normal(size=512))


def test_faces_from_the_analyzer_largest_of_reference_and_frame(tiny_model, monkeypatch, tmp_path):
    """Without precomputed values the largest face of the (resize_img'd) reference gives the embedding and
    the largest face of the frame at the generation size the keypoints; no face is an error."""
    editor = InstantIDEditor(device="cpu", dtype="float32", **ACCEPT)
    editor.models[(str(SDXL), str(IDENTITYNET), str(ADAPTER))] = tiny_model
    frame, reference = moving_clip(1, 32, 32)[0], moving_clip(1, 48, 32, seed=5)[0]
    small, big = face(4, 4, 20, 20, 1), face(30, 30, 60, 62, 2)
    # resize_img: the 32 x 32 frame -> 128 x 128, the 48 x 32 reference -> 128 x 64 (w x h)
    fake = FakeAnalyzer({(128, 128): [big, small], (64, 128): [small, big]})
    editor.analyzers[str(tmp_path)] = fake  # the default analyzer is made once per face_models folder
    captured = {}
    real = generate

    def spy(model, **kwargs):
        captured.update(kwargs)
        return real(model, **kwargs)

    monkeypatch.setattr("anyv2v_batch.editors.instantid_model.generate", spy)
    sample = SampleContext("k", files={"face.png": npng(reference)})
    out = editor.edit(frame, base_options(face_models=str(tmp_path), steps=1), sample)
    assert out.shape == frame.shape and fake.calls == [(128, 128), (64, 128)]
    assert np.array_equal(captured["face_embedding"], big.embedding.astype(np.float32))
    assert np.array_equal(captured["kps_image"], draw_kps(128, 128, big.kps))
    fake.faces_by_shape = {}
    with pytest.raises(AnyV2VError, match="no face found in the first frame"):
        editor.edit(frame, base_options(face_models=str(tmp_path)), sample)
    assert largest_face([]) is None


def npng(frame: np.ndarray) -> bytes:
    from anyv2v_batch.video_io import encode_png

    return encode_png(frame)


# --- inputs, options and the licence gate ------------------------------------------------------------


def test_inputs_from_sample_files_metadata_and_options_agree(tiny_model, tmp_path):
    """The embedding and keypoints give the same frame from the sample's files, its metadata or option
    files; keypoints are scaled from the frame's pixels to the generation size; a sample without them
    (and no face_models) is a one-line error naming what to add."""
    editor = InstantIDEditor(device="cpu", dtype="float32", **ACCEPT)
    editor.models[(str(SDXL), str(IDENTITYNET), str(ADAPTER))] = tiny_model
    frame = moving_clip(1, 32, 32)[0]
    files = {"face_embedding.npy": npy(EMBEDDING), "face_kps.json": json.dumps(KPS).encode()}
    a = editor.edit(frame, base_options(), SampleContext("k", files=files, seed=5))
    b = editor.edit(frame, base_options(), SampleContext("k", meta={"face_embedding": EMBEDDING.tolist(),
                                                                    "face_kps": KPS}, seed=5))  # fmt: skip
    (tmp_path / "e.npy").write_bytes(npy(EMBEDDING))
    (tmp_path / "k.json").write_text(json.dumps(KPS))
    c = editor.edit(frame, base_options(face_embedding=str(tmp_path / "e.npy"), face_kps=str(tmp_path / "k.json")),
                    SampleContext("k", seed=5))  # fmt: skip
    assert a.shape == frame.shape and np.array_equal(a, b) and np.array_equal(a, c)
    d = editor.edit(frame, base_options(), SampleContext("k", files=files, seed=6))
    assert not np.array_equal(a, d)  # the sample's seed draws the noise
    # the variant's edit_prompt (the pool's `instruction`, maybe templated per sample) wins over the option
    e = editor.edit(frame, base_options(instruction="rain"), SampleContext("k", files=files, seed=5))
    assert np.array_equal(e, editor.edit(frame, base_options(prompt="rain"), SampleContext("k", files=files, seed=5)))
    assert not np.array_equal(a, e)
    with pytest.raises(AnyV2VError, match="has no reference face") as e:
        editor.edit(frame, base_options(), SampleContext("k", files={"face_kps.json": files["face_kps.json"]}))
    assert "k.face_embedding.npy" in str(e.value)
    with pytest.raises(AnyV2VError, match="has no face_kps"):
        editor.edit(frame, base_options(), SampleContext("k", files={"face_embedding.npy": npy(EMBEDDING)}))
    with pytest.raises(AnyV2VError, match="512 finite floats"):
        short = {**files, "face_embedding.npy": npy(EMBEDDING[:3])}
        editor.edit(frame, base_options(), SampleContext("k", files=short))
    with pytest.raises(AnyV2VError, match=r"5 \[x, y\] pairs"):
        editor.edit(frame, base_options(), SampleContext("k", files={**files, "face_kps.json": b"[[1, 2]]"}))


def test_options_are_checked_before_work():
    check = editor_class("instantid").check_options
    check(base_options())
    check({**base_options(prompt=""), "instruction": "from --edit-prompt"})
    for bad, message in (
        ({"prompt": ""}, "needs a prompt"), ({"identitynet": ""}, "identitynet=PATH"), ({"steps": 0}, "steps must be"),
        ({"guidance_scale": "high"}, "guidance_scale must be"), ({"max_side": 10}, "max_side must be"),
        ({"negative_prompt": 3}, "negative_prompt must be"), ({"face_models": "/no/such"}, "does not exist"),
    ):  # fmt: skip
        with pytest.raises(AnyV2VError, match=message):
            check(base_options(**bad))


def test_refuses_without_accepting_noncommercial_models_before_any_model_loads(tmp_path, capsys):
    from anyv2v_batch.job import build_job

    with pytest.raises(AnyV2VError, match="--accept-noncommercial-models"):
        load_editor("instantid", device="cpu")
    write_video(tmp_path / "src.mp4", moving_clip(4, 32, 32), 8)
    missing = ["--editor-option", f"identitynet={tmp_path / 'no-identitynet'}"]  # loading it would fail otherwise
    argv = ["edit-frame", tmp_path / "src.mp4", "-o", tmp_path / "f.png", "--editor", "instantid", "--edit-prompt",
            "a face", *missing, "--editor-option", f"adapter={ADAPTER}", "--device", "cpu"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 1 and err.count("\n") == 1 and "non-commercial research only" in err
    assert "--accept-noncommercial-models" in err and not (tmp_path / "f.png").exists()
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"input": str(tmp_path / "in.tar"), "output": str(tmp_path / "out"),
                               "editor": {"name": "instantid", "options": base_options()}}))  # fmt: skip
    code, _, err = run_cli(["run", job, "-q"], capsys)
    assert code == 1 and err.count("\n") == 1 and "accept_noncommercial_models: true" in err
    assert not (tmp_path / "out").exists()
    code, _, err = run_cli(["run", job, "-q", "--accept-noncommercial-models"], capsys)  # past the gate: no input
    assert code == 1 and "non-commercial" not in err and "in.tar" in err and not (tmp_path / "out").exists()
    with pytest.raises(AnyV2VError, match="accept_noncommercial_models must be a bool"):
        build_job({"input": "x.tar", "output": "out", "accept_noncommercial_models": "yes"})
    code, out, _ = run_cli(["editors"], capsys)
    assert code == 0 and "instantid [built-in]" in out and "NON-COMMERCIAL: InstantID's weights" in out


def test_edit_frame_writes_the_editors_frame(tiny_model, tmp_path, capsys):
    clip = moving_clip(4, 32, 32)
    write_video(tmp_path / "src.mp4", clip, 8)
    (tmp_path / "e.npy").write_bytes(npy(EMBEDDING))
    (tmp_path / "k.json").write_text(json.dumps(KPS))
    options = base_options(face_embedding=str(tmp_path / "e.npy"), face_kps=str(tmp_path / "k.json"))
    pairs = [x for k, v in options.items() if k != "prompt" for x in ("--editor-option", f"{k}={v}")]
    code, _, err = run_cli(["edit-frame", tmp_path / "src.mp4", "-o", tmp_path / "f.png", "--editor", "instantid",
                            "--edit-prompt", options["prompt"], *pairs, "--accept-noncommercial-models",
                            "--width", 32, "--height", 32, "--seed", 11, "--device", "cpu", "-q"], capsys)  # fmt: skip
    assert code == 0, err
    first = read_video(tmp_path / "src.mp4", 1, 8, 32, 32).frames[0]
    editor = load_editor("instantid", device="cpu", dtype="float32", **ACCEPT)
    expected = prepare_first_frame(editor.edit(first, options, SampleContext("src", seed=11)), 32, 32)
    assert np.array_equal(read_image(tmp_path / "f.png"), expected)


def test_shard_reader_hands_the_face_members_to_the_editor(tmp_path):
    from anyv2v_batch.job import build_job
    from anyv2v_batch.operators.read_shards import read_shard

    members = [("a.mp4", mp4(moving_clip(2, 32, 32))), ("a.face.png", npng(moving_clip(1, 32, 32)[0])),
               ("a.face_embedding.npy", npy(EMBEDDING)), ("a.face_kps.json", json.dumps(KPS).encode()),
               ("a.json", b'{"caption": "x"}')]  # fmt: skip
    write_shard(tmp_path / "s.tar", members)
    job = build_job({"input": str(tmp_path / "s.tar"), "output": str(tmp_path / "out")})
    (work,) = [w["work"] for w in read_shard({"shard": str(tmp_path / "s.tar"), "shard_id": "s", "done": []}, job)]
    assert work.files == {name.split(".", 1)[1]: data for name, data in members[1:4]} and work.meta["caption"] == "x"


def test_job_with_an_instantid_variant_one_ok_row_one_error_row(tiny_model, tmp_path, ray_local):
    from anyv2v_batch.job import build_job
    from anyv2v_batch.operators.work import derive_seed
    from anyv2v_batch.pipelines.anyv2v_job import run_job

    clips = {"a": moving_clip(6, 32, 32, seed=1), "b": moving_clip(6, 32, 32, seed=2)}
    members = [("a.mp4", mp4(clips["a"])), ("a.face_embedding.npy", npy(EMBEDDING)),
               ("a.face_kps.json", json.dumps(KPS).encode()), ("b.mp4", mp4(clips["b"]))]  # fmt: skip
    write_shard(tmp_path / "in" / "000.tar", members)
    options = base_options()
    job = build_job({
        "input": str(tmp_path / "in" / "000.tar"), "output": str(tmp_path / "out"), "model": str(TINY_MODEL),
        "device": "cpu", "accept_noncommercial_models": True, "clip": {"frames": 2, "width": 32, "height": 32},
        "inversion": {"steps": 1}, "edit": {"steps": 1, "prompt": "a person"},
        "variants": [{"name": "identity", "editor": {"name": "instantid", "options": options}}],
        "pools": {p: {"num_cpus": 0.5} for p in ("decode", "editor", "inversion", "sampler", "encode")},
        "share_model": True,  # one model actor: one load (the same bytes as separate pools)
    })  # fmt: skip
    summary = run_job(job)
    assert (summary.ok, summary.errors) == (1, 1)
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "out" / "metadata").to_pylist()}
    assert rows["a"]["status"] == "ok" and rows["b"]["status"] == "error"
    assert rows["b"]["error"].startswith("editor instantid: ") and "has no face_kps" in rows["b"]["error"]
    first = read_video(io.BytesIO(members[0][1]), 1, 8, 32, 32).frames[0]
    editor = load_editor("instantid", device="cpu", dtype="float32", **ACCEPT)
    files = {"face_embedding.npy": members[1][1], "face_kps.json": members[2][1]}
    seed = derive_seed(job.variants[0].seed, "a", "identity")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the editor actor (num_cpus 0.5): float sums then add up in the same order
    try:
        edited = editor.edit(first, options, SampleContext("a", files=files, seed=seed))
    finally:
        torch.set_num_threads(threads)
    expected = prepare_first_frame(edited, 32, 32)
    out = read_tar(tmp_path / "out" / "shards" / "000.tar")
    assert np.array_equal(image(out["a.identity.png"]), expected)


# --- stage by stage against the official pipeline ----------------------------------------------------


class Case:
    def __init__(self, folder):
        self.folder = folder
        self.spec = json.loads((folder / "case.json").read_text())
        self.stages = load_file(str(folder / "stages.safetensors"))
        self.pose = read_image(folder / self.spec.get("pose", "pose.png"))
        self.embedding = np.load(folder / self.spec.get("face_embedding", "face_embedding.npy"))


@pytest.fixture(scope="module", params=[c.name for c in CASES])
def case(request) -> Case:
    return Case(REF / request.param)


def test_stages_match_the_official_pipeline(case, reference_model):
    """Every stage of our run against the official pipeline's, from the same inputs and starting noise."""
    from anyv2v_batch.editors.instantid_model import resize_img
    from anyv2v_batch.imaging import fit_frame, to_pil

    spec, ref = case.spec, case.stages
    pose = np.asarray(resize_img(to_pil(case.pose), spec["max_side"], spec["min_side"]))
    kps = np.asarray(spec["face_kps"], np.float64) * [
        pose.shape[1] / case.pose.shape[1],
        pose.shape[0] / case.pose.shape[0],
    ]
    kps_image = draw_kps(pose.shape[1], pose.shape[0], kps)
    assert np.array_equal(kps_image, ref["kps_image"].numpy())
    record: dict = {}
    out = generate(
        reference_model, spec["prompt"], spec["negative_prompt"], case.embedding, kps_image, steps=spec["steps"],
        guidance_scale=spec["guidance_scale"], identitynet_scale=spec["identitynet_scale"],
        ip_adapter_scale=spec["ip_adapter_scale"], latents=ref["latents_init"], record=record,
    )  # fmt: skip
    errors = {
        "negative_prompt_embeds": rel_err(record["prompt_embeds"][:1], ref["negative_prompt_embeds"]),
        "prompt_embeds": rel_err(record["prompt_embeds"][1:], ref["prompt_embeds"]),
        "negative_pooled_prompt_embeds": rel_err(
            record["pooled_prompt_embeds"][:1], ref["negative_pooled_prompt_embeds"]
        ),
        "pooled_prompt_embeds": rel_err(record["pooled_prompt_embeds"][1:], ref["pooled_prompt_embeds"]),
        "uncond_face_tokens": rel_err(record["face_tokens"][:1], ref["uncond_face_tokens"]),
        "face_tokens": rel_err(record["face_tokens"][1:], ref["face_tokens"]),
        "add_time_ids": rel_err(record["add_time_ids"][-1:], ref["add_time_ids"].reshape(-1, 6)[-1:]),
        "timesteps": rel_err(record["timesteps"], ref["timesteps"]),
    }
    steps = int(ref["timesteps"].numel())
    assert steps == spec["steps"]
    for i in range(steps):
        errors[f"latent_in.{i}"] = rel_err(record[f"latent_in.{i}"], ref[f"latent_in.{i}"])
        errors[f"noise_pred.{i}"] = rel_err(record[f"noise_pred.{i}"], ref[f"noise_pred.{i}"])
    errors["latent"] = rel_err(record["latent"], ref["latent"])
    print(case.folder.name, {k: f"{v:.1e}" for k, v in errors.items()})
    assert max(errors.values()) < 1e-4, errors
    assert np.abs(out.astype(int) - ref["image"].numpy().astype(int)).max() <= 1
    if "frame" in ref:
        frame = fit_frame(out, case.pose.shape[1], case.pose.shape[0], "stretch")
        assert np.abs(frame.astype(int) - ref["frame"].numpy().astype(int)).max() <= 1
