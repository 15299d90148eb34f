"""Quality scores: each equals a plain transformers CLIPModel computation, and behaves on real frames.

A tiny random CLIPModel is built here and saved as a model folder (the tokenizer is the tiny
I2VGen-XL fixture's CLIP tokenizer); clips are written to and decoded from real mp4 files.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from conftest import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, TINY_CLIP_IMAGE_SIZE, moving_clip

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.loading import weights_identity
from anyv2v_batch.scores import EMBED_BATCH, METRICS, Scorer, motion_fidelity
from anyv2v_batch.video_io import encode_mp4, read_video

IMAGE_SIZE, OPENAI_MEAN, OPENAI_STD = TINY_CLIP_IMAGE_SIZE, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
PROMPT = "a red square moves over a blue field"
CLIP_METRICS = ("clip_text", "clip_consecutive", "edit_hold", "source_similarity", "motion_fidelity")


@pytest.fixture(scope="module")
def clip_folder(tiny_clip):
    return tiny_clip


@pytest.fixture(scope="module")
def scorer(clip_folder):
    return Scorer(str(clip_folder))


def mp4_roundtrip(frames: np.ndarray) -> np.ndarray:
    """The frames as a real mp4 file decodes them."""
    data = encode_mp4(frames, fps=8)
    return read_video(io.BytesIO(data), len(frames), 8, frames.shape[2], frames.shape[1], name="clip.mp4").frames


def recoloured(frames: np.ndarray, noise: float, seed: int) -> np.ndarray:
    """A faithful 'edit': the same motion, colours changed (channels swapped), a little noise."""
    rng = np.random.default_rng(seed)
    return np.clip(frames[..., ::-1].astype(np.float64) + rng.normal(0, noise, frames.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def wide_clip():
    """A real decoded clip, wider than high (a centre crop would hide its sides), and an edit of it."""
    source = mp4_roundtrip(moving_clip(10, 80, 48, seed=3))
    output = mp4_roundtrip(recoloured(source, 4, seed=4))
    return source, output, output[0].copy()


# ---- the plain computation: transformers' own processor and CLIPModel forward


def plain_motion_fidelity(source, output) -> float:
    """Farneback flows of both videos (grayscale; longer side scaled down to 256 if larger), then
    2<s,o> / (|s|^2 + |o|^2) per frame pair, then the mean over pairs."""
    import cv2

    def flows(video):
        height, width = video.shape[1:3]
        scale = min(1.0, 256 / max(height, width))
        gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in video]
        if scale < 1:
            size = (round(width * scale), round(height * scale))
            gray = [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in gray]
        pairs = zip(gray[:-1], gray[1:], strict=True)
        return [cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0) for a, b in pairs]

    pairs = []
    for s, o in zip(flows(source), flows(output), strict=True):
        s, o = s.astype(np.float64), o.astype(np.float64)
        pairs.append(2 * np.sum(s * o) / (np.sum(s * s) + np.sum(o * o)))
    return sum(pairs) / len(pairs)


def plain_scores(folder, output, source, edited, prompt) -> dict[str, float]:
    from transformers import CLIPModel, CLIPTokenizer
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    model = CLIPModel.from_pretrained(folder).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    # the processor without its centre crop, the whole frame resized to the model's input size
    processor = CLIPImageProcessorPil(do_center_crop=False, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                      resample=3, image_mean=OPENAI_MEAN, image_std=OPENAI_STD)  # fmt: skip
    images = [*output, *source, edited]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    tokens = tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        result = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixels)
    image, text = result.image_embeds, result.text_embeds[0]  # both L2-normalised by the forward
    f = len(output)
    out, src, first = image[:f], image[f : 2 * f], image[2 * f]

    def cos(a, b):
        return float(torch.dot(a, b))

    return {
        "clip_text": sum(cos(text, out[i]) for i in range(f)) / f,
        "clip_consecutive": sum(cos(out[i], out[i + 1]) for i in range(f - 1)) / (f - 1),
        "edit_hold": sum(cos(first, out[i]) for i in range(1, f)) / (f - 1),
        "source_similarity": sum(cos(src[i], out[i]) for i in range(f)) / f,
        "motion_fidelity": plain_motion_fidelity(source, output),
    }


def test_each_score_equals_the_plain_clip_forward(scorer, clip_folder, wide_clip):
    source, output, edited = wide_clip
    ours = scorer.score(output, source, edited, PROMPT)
    plain = plain_scores(clip_folder, output, source, edited, PROMPT)
    assert set(ours) == {"score_" + m for m in CLIP_METRICS}  # no aesthetic head: those columns are absent
    for metric in CLIP_METRICS:
        assert isinstance(ours["score_" + metric], float)
        assert ours["score_" + metric] == pytest.approx(plain[metric], abs=1e-6), metric
    # the scores are not trivially equal to each other (the check above would pass on constants otherwise)
    assert len({round(v, 4) for v in ours.values()}) == len(ours)


def test_the_whole_frame_is_scored_not_its_centre(scorer, wide_clip):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    frame = wide_clip[0][0]
    changed = frame.copy()
    changed[:, :12] = 255 - changed[:, :12]  # only the leftmost 12 of 80 columns
    cropping = CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE}, crop_size=IMAGE_SIZE, do_center_crop=True)
    hidden = [cropping(images=[x], return_tensors="pt")["pixel_values"] for x in (frame, changed)]
    assert torch.equal(*hidden)  # what the processor's default centre crop would show the model
    a, b = scorer.embed_images(np.stack([frame, changed]))
    assert float(a @ b) < 1 - 1e-3
    assert "no crop" in scorer.identity["preprocessing"]


def test_score_many_embeds_each_image_once_and_equals_score_bitwise(scorer, wide_clip):
    source, output, edited = wide_clip
    other = recoloured(source, 8, seed=9)
    items = [
        (output, source, edited, PROMPT),
        (other, source, other[0], PROMPT),  # a second variant of the same clip: same source, same prompt
        (output[::-1].copy(), source, edited, "a green square"),
    ]
    calls = {"images": 0, "texts": 0}
    model = scorer.model
    image_features, text_features = model.get_image_features, model.get_text_features

    def counted_images(pixel_values):
        calls["images"] += 1
        assert len(pixel_values) == EMBED_BATCH  # fixed call shape
        return image_features(pixel_values=pixel_values)

    def counted_texts(**kwargs):
        calls["texts"] += 1
        return text_features(**kwargs)

    model.get_image_features, model.get_text_features = counted_images, counted_texts
    try:
        many = scorer.score_many(items)
    finally:
        del model.get_image_features, model.get_text_features
    f = len(source)
    distinct_images = 3 * f + f + 2  # three outputs, one source, two distinct edited frames
    assert calls == {"images": math.ceil(distinct_images / EMBED_BATCH), "texts": 2}
    assert many == [scorer.score(*item) for item in items]  # bit for bit, whatever the batch mates


def test_properties_on_real_frames(scorer):
    source = mp4_roundtrip(moving_clip(12, 64, 64, seed=1))
    faithful = recoloured(source, 3, seed=5)
    edited = faithful[0]
    frozen = np.repeat(faithful[:1], len(source), axis=0)
    reversed_ = faithful[::-1].copy()
    weights = np.linspace(0, 1, len(source))[:, None, None, None]
    fading = np.round((1 - weights) * faithful + weights * source).astype(np.uint8)  # the edit fades back
    constant = np.repeat(source[:1], len(source), axis=0)

    same = scorer.score(source, source, source[0], PROMPT)
    scores = {name: scorer.score(out, source, edited, PROMPT)
              for name, out in [("faithful", faithful), ("frozen", frozen), ("reversed", reversed_),
                                ("fading", fading), ("constant", constant)]}  # fmt: skip
    figures = {"identical": same, **scores}
    print("\nproperty figures:", json.dumps({k: {m.removeprefix("score_"): round(v, 6) for m, v in s.items()}
                                               for k, s in figures.items()}))  # fmt: skip

    assert same["score_source_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert same["score_motion_fidelity"] == 1.0  # exactly its maximum
    assert motion_fidelity(source, source) == 1.0
    mf = {k: v["score_motion_fidelity"] for k, v in scores.items()}
    assert mf["faithful"] > 0.7
    assert mf["frozen"] < mf["faithful"] - 0.5
    assert mf["reversed"] < mf["faithful"] - 0.5
    assert scores["constant"]["score_clip_consecutive"] == pytest.approx(1.0, abs=1e-6)
    # a random tiny CLIP puts every image close together: compare distances from the edited frame
    hold = {k: 1 - scores[k]["score_edit_hold"] for k in ("faithful", "fading")}
    assert hold["fading"] > 2 * hold["faithful"]


def test_motion_fidelity_of_large_frames_is_computed_at_256():
    source = mp4_roundtrip(moving_clip(4, 320, 288, seed=6))
    output = recoloured(source, 3, seed=7)
    assert motion_fidelity(source, output) == pytest.approx(plain_motion_fidelity(source, output), abs=1e-6)


def test_motion_fidelity_measures_speed_and_direction():
    source = mp4_roundtrip(moving_clip(10, 64, 64, seed=2))
    # every second frame: the same motion at twice the speed, compared with a source of the same frame count
    slow, fast = source[:5], source[::2][:5]
    assert motion_fidelity(fast, fast) == 1.0
    assert motion_fidelity(slow, fast) < 0.95
    with pytest.raises(AnyV2VError, match="differ"):
        motion_fidelity(source, source[:5])
    with pytest.raises(AnyV2VError, match="uint8"):
        motion_fidelity(source.astype(np.float32), source.astype(np.float32))


def official_head(width: int) -> torch.nn.Module:
    """The improved-aesthetic-predictor MLP as its repository writes it (state-dict keys `layers.N.*`)."""
    nn = torch.nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.Sequential(
                nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
            )  # fmt: skip

        def forward(self, x):
            return self.layers(x)

    return MLP().eval()


def test_aesthetic_head_matches_a_plain_computation(clip_folder, wide_clip, tmp_path):
    from safetensors.torch import save_file
    from transformers import CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(1)
    head = official_head(24)
    save_file(head.state_dict(), tmp_path / "head.safetensors")
    scorer = Scorer(str(clip_folder), aesthetic=str(tmp_path / "head.safetensors"))
    (tmp_path / "head-folder").mkdir()
    (tmp_path / "head-folder" / "model.safetensors").write_bytes((tmp_path / "head.safetensors").read_bytes())
    assert Scorer(str(clip_folder), aesthetic=str(tmp_path / "head-folder")).identity == scorer.identity
    source, output, edited = wide_clip
    ours = scorer.score(output, source, edited, PROMPT)
    assert set(ours) == {"score_" + m for m in METRICS}

    model = CLIPModel.from_pretrained(clip_folder).eval()
    processor = CLIPImageProcessorPil(do_center_crop=False, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                      resample=3, image_mean=OPENAI_MEAN, image_std=OPENAI_STD)  # fmt: skip
    with torch.no_grad():
        embeds = model.vision_model(pixel_values=processor(images=list(output), return_tensors="pt")["pixel_values"])
        embeds = model.visual_projection(embeds.pooler_output)
        embeds = embeds / embeds.norm(dim=-1, keepdim=True)
        per_frame = head(embeds)[:, 0]
    assert ours["score_aesthetic_min"] == pytest.approx(float(per_frame.min()), abs=1e-6)
    assert ours["score_aesthetic_mean"] == pytest.approx(float(per_frame.mean()), abs=1e-6)
    assert float(per_frame.max() - per_frame.min()) > 1e-5  # min and mean differ: the check can tell them apart
    assert scorer.identity["aesthetic"].startswith("file:")
    # the same clip scores the same CLIP metrics with or without a head
    without = Scorer(str(clip_folder)).score(output, source, edited, PROMPT)
    assert {k: ours[k] for k in without} == without

    save_file(official_head(768).state_dict(), tmp_path / "vit-l.safetensors")
    with pytest.raises(AnyV2VError, match="input width: 768") as e:
        Scorer(str(clip_folder), aesthetic=str(tmp_path / "vit-l.safetensors"))
    assert "\n" not in str(e.value)


def test_identity_records_model_weights_dtype_preprocessing(scorer, clip_folder):
    identity = scorer.identity
    assert identity["model"] == str(clip_folder) and identity["revision"] == "local folder"
    assert identity["weights"] == weights_identity(str(clip_folder)) and identity["weights"].startswith("folder:")
    assert identity["dtype"] == "float32"
    assert f"{IMAGE_SIZE}x{IMAGE_SIZE}" in identity["preprocessing"] and "bicubic" in identity["preprocessing"]
    assert identity["aesthetic"] == "none"
    assert "Farneback" in identity["flow"]


def test_missing_weights_offline_is_one_line(clip_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AnyV2VError, match="HF_HUB_OFFLINE") as e:
        Scorer("nobody-here/no-such-clip")
    assert "\n" not in str(e.value) and "--evaluate-model" in str(e.value)

    broken = tmp_path / "no-weights"
    broken.mkdir()
    for path in clip_folder.iterdir():  # everything but the weights
        if path.suffix != ".safetensors":
            (broken / path.name).write_bytes(path.read_bytes())
    with pytest.raises(AnyV2VError, match="CLIP weights") as e:
        Scorer(str(broken))
    assert "\n" not in str(e.value)

    with pytest.raises(AnyV2VError, match="HF_HUB_OFFLINE") as e:
        Scorer(str(clip_folder), aesthetic="nobody-here/no-such-head")
    assert "\n" not in str(e.value)
    with pytest.raises(AnyV2VError, match="no such file") as e:
        Scorer(str(clip_folder), aesthetic=str(tmp_path / "missing-head.safetensors"))
    assert "\n" not in str(e.value)


def fake_hub_cache(cache, repo: str, files: dict[str, bytes], commit: str) -> None:
    """The hub cache layout huggingface_hub reads offline: refs/main -> snapshots/<commit>/<files>."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    for name, data in files.items():
        (folder / "snapshots" / commit / name).write_bytes(data)


def test_hub_ids_load_offline_from_the_cache_with_their_revision(scorer, clip_folder, wide_clip, tmp_path, monkeypatch):
    import huggingface_hub.constants
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    fake_hub_cache(tmp_path, "tiny-org/tiny-clip", {p.name: p.read_bytes() for p in clip_folder.iterdir()}, commit)
    torch.manual_seed(2)
    save_file(official_head(24).state_dict(), tmp_path / "head.safetensors")
    fake_hub_cache(tmp_path, "tiny-org/tiny-head", {"model.safetensors": (tmp_path / "head.safetensors").read_bytes()},
                   "f" * 40)  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    from_hub = Scorer("tiny-org/tiny-clip", aesthetic="tiny-org/tiny-head")
    assert from_hub.identity["revision"] == commit and scorer.identity["revision"] == "local folder"
    assert from_hub.identity["weights"] == "hub:tiny-org/tiny-clip"
    assert from_hub.identity["aesthetic"] == "hub:tiny-org/tiny-head/model.safetensors"
    source, output, edited = wide_clip
    hub_scores = from_hub.score(output, source, edited, PROMPT)
    folder_scores = scorer.score(output, source, edited, PROMPT)
    assert {k: hub_scores[k] for k in folder_scores} == folder_scores  # the same weights, the same bits
    assert set(hub_scores) - set(folder_scores) == {"score_aesthetic_min", "score_aesthetic_mean"}
