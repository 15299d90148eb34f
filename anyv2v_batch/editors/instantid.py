"""`instantid`: give the person in the first frame another identity (InstantID, instantX-research/InstantID).

The frame's face keypoints (its pose) steer IdentityNet; the reference face's ArcFace embedding steers
both IdentityNet and the UNet's decoupled cross-attention; the prompt describes the picture. As the
official `infer_full.py`: the frame is brought to the generation size by `resize_img`, the largest face
of the reference image gives the embedding and the largest face of the frame the keypoints (the gradio
demo takes the last detected face instead); 30 Euler steps, guidance 5, both scales 0.8. The result is
resized back to the frame's size (LANCZOS).

Per sample, in this order: the editor option (a path, trusted), the sample's own file, its metadata:
- embedding: `face_embedding` (.npy of 512 floats) / `<key>.face_embedding.npy` / metadata `face_embedding`;
  else the largest face of the reference image `face` / `<key>.face.png` / metadata `face` (a path under
  `allowed_roots`), found by the face analyzer.
- keypoints: `face_kps` (.json, 5 x [x, y] in the frame's pixels at the clip size) / `<key>.face_kps.json` /
  metadata `face_kps`; else the largest face the analyzer finds in the frame.
The face analyzer (insightface antelopev2 from the local folder `face_models`) and InstantID's weights are
for non-commercial research only: the editor refuses to start unless the job accepts that.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import AnyV2VError
from ..imaging import fit_frame, to_pil
from .base import FirstFrameEditor, SampleContext
from .instantid_faces import FaceAnalyzer, InsightFaceAnalyzer, largest_face
from .provided import ALLOWED_ROOTS_HELP, allowed_roots, read_image_url, read_metadata_image

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"  # infer.py's base model
# infer.py's negative prompt (the official pipeline reads the "(...:1.2)" weights as plain text)
DEFAULT_NEGATIVE = (
    "(lowres, low quality, worst quality:1.2), (text:1.2), watermark, painting, drawing, illustration, glitch, "
    "deformed, mutated, cross-eyed, ugly, disfigured (lowres, low quality, worst quality:1.2), (text:1.2), watermark, "
    "painting, drawing, illustration, glitch,deformed, mutated, cross-eyed, ugly, disfigured"
)
FACE_FILES = ("face.png", "face.jpg", "face.jpeg", "face.webp")
EMBEDDING_FILE = "face_embedding.npy"
KPS_FILE = "face_kps.json"
NUMBERS = {  # option -> (default, type, smallest allowed)
    "steps": (30, int, 1),
    "guidance_scale": (5.0, float, 0.0),
    "identitynet_scale": (0.8, float, 0.0),
    "ip_adapter_scale": (0.8, float, 0.0),
    "max_side": (1280, int, 64),
    "min_side": (1024, int, 64),
}
LICENCE_NOTE = (
    "InstantID's weights and the insightface antelopev2 face models are for non-commercial research only; "
    "runs only with accept_noncommercial_models: true (--accept-noncommercial-models)"
)


def _number(options: dict[str, Any], name: str) -> int | float:
    default, kind, low = NUMBERS[name]
    value = options.get(name, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind is float or value == int(value))
    if not ok or value < low:
        raise AnyV2VError(f"editor option {name} must be {'an integer' if kind is int else 'a number'} >= {low}, "
                          f"got {value!r}")  # fmt: skip
    return kind(value)


def parse_embedding(value: Any, where: str) -> np.ndarray:
    """512 finite floats from a .npy file's bytes or a list."""
    try:
        arr = np.load(io.BytesIO(value), allow_pickle=False) if isinstance(value, bytes) else np.asarray(value)
        arr = np.asarray(arr, dtype=np.float32).reshape(-1)
    except (ValueError, TypeError, OSError) as e:
        raise AnyV2VError(f"{where}: not a face embedding ({type(e).__name__}: {str(e)[:80]})") from None
    if arr.size != 512 or not np.isfinite(arr).all():
        raise AnyV2VError(f"{where}: a face embedding is 512 finite floats, got {arr.size} values")
    return arr


def parse_kps(value: Any, where: str) -> np.ndarray:
    """5 x [x, y] finite floats from JSON bytes / text or a list."""
    try:
        if isinstance(value, (bytes, str)):
            value = json.loads(value)
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError) as e:
        raise AnyV2VError(f"{where}: not face keypoints ({type(e).__name__}: {str(e)[:80]})") from None
    if arr.shape != (5, 2) or not np.isfinite(arr).all():
        raise AnyV2VError(f"{where}: face keypoints are 5 [x, y] pairs, got shape {list(arr.shape)}")
    return arr


def _read_option_file(path: str, what: str) -> bytes:
    file = Path(str(path)).expanduser()
    if not file.is_file():
        raise AnyV2VError(f"editor option {what}: {str(path)!r} does not exist")
    return file.read_bytes()


class InstantIDEditor(FirstFrameEditor):
    name = "instantid"
    description = "another identity for the person in the frame (InstantID: SDXL + IdentityNet + face adapter)"
    needs_gpu = True
    noncommercial = True
    licence_note = LICENCE_NOTE
    options = {
        "prompt": "what the picture shows, e.g. 'a photo of a woman' (required; --edit-prompt / edit_prompt wins)",
        "negative_prompt": "default: infer.py's negative prompt; null: zeros (the pipeline's own default)",
        "face": "reference face image, path or URL (else <key>.face.png or metadata `face`)",
        "face_embedding": "its 512-d antelopev2 embedding as .npy instead (else <key>.face_embedding.npy / metadata)",
        "face_kps": "the frame's 5 face keypoints as .json [[x, y] x 5] in clip pixels (else <key>.face_kps.json / "
        "metadata; else detected in the frame)",
        "face_models": "local folder of insightface's antelopev2 models (never downloaded; non-commercial)",
        "model": f"SDXL base, hub id or folder (default {DEFAULT_MODEL})",
        "identitynet": "InstantID's ControlNetModel folder (required)",
        "adapter": "InstantID's ip-adapter.bin (or .safetensors with image_proj./ip_adapter. keys; required)",
        "steps": "Euler steps (default 30)",
        "guidance_scale": "default 5",
        "identitynet_scale": "IdentityNet residual scale (default 0.8)",
        "ip_adapter_scale": "face adapter scale (default 0.8)",
        "max_side": "resize_img: the generated image's long side (default 1280)",
        "min_side": "resize_img: its short side before that (default 1024)",
        "allowed_roots": ALLOWED_ROOTS_HELP.replace("metadata path", "metadata `face` path"),
    }

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if not str(options.get("prompt") or options.get("instruction") or "").strip():
            raise AnyV2VError("instantid needs a prompt: set the editor option prompt=... (or --edit-prompt)")
        for name in ("identitynet", "adapter"):
            if not options.get(name):
                raise AnyV2VError(f"instantid needs the editor option {name}=PATH ({cls.options[name]})")
        for name in NUMBERS:
            _number(options, name)
        negative = options.get("negative_prompt", DEFAULT_NEGATIVE)
        if negative is not None and not isinstance(negative, str):
            raise AnyV2VError(f"editor option negative_prompt must be text or null, got {negative!r}")
        for name in ("face_embedding", "face_kps", "face_models"):
            if options.get(name) is not None and not Path(str(options[name])).expanduser().exists():
                raise AnyV2VError(f"editor option {name}: {str(options[name])!r} does not exist")
        allowed_roots(options)

    def __init__(self, device: str = "auto", dtype: str = "auto", **load_options: Any) -> None:
        super().__init__(device, dtype, **load_options)  # refuses without accept_noncommercial_models
        self.models: dict[tuple[str, str, str], Any] = {}
        self.analyzers: dict[str, FaceAnalyzer] = {}

    def model(self, options: dict[str, Any]):
        from .instantid_model import InstantIDModel

        key = (str(options.get("model", DEFAULT_MODEL)), str(options["identitynet"]), str(options["adapter"]))
        if key not in self.models:
            self.models[key] = InstantIDModel.load(*key, device=self.device, dtype=self.dtype)
        return self.models[key]

    def analyzer(self, options: dict[str, Any], sample: SampleContext, needed_for: str) -> FaceAnalyzer:
        folder = options.get("face_models")
        if not folder:
            raise AnyV2VError(
                f"sample {sample.key!r} has no {needed_for}: add {sample.key}.{needed_for}"
                f"{'.npy' if needed_for == 'face_embedding' else '.json'} (or metadata), or set face_models=FOLDER "
                "to detect it"
            )
        if str(folder) not in self.analyzers:
            ctx = (self.device.index or 0) if self.device.type == "cuda" else -1  # insightface: -1 is the CPU
            self.analyzers[str(folder)] = InsightFaceAnalyzer(folder, ctx_id=ctx)
        return self.analyzers[str(folder)]

    def face_image(self, options: dict[str, Any], sample: SampleContext) -> np.ndarray | None:
        from ..video_io import read_image

        if options.get("face"):
            return read_image_url(str(options["face"]), sample.max_image_pixels)
        for ext in FACE_FILES:
            if ext in sample.files:
                return read_image(sample.files[ext], name=f"{sample.key}.{ext}", max_pixels=sample.max_image_pixels)
        if sample.meta.get("face"):
            return read_metadata_image("face", options, sample)
        return None

    def embedding(self, options: dict[str, Any], sample: SampleContext, sizes: tuple[int, int]) -> np.ndarray:
        from .instantid_model import resize_img

        if options.get("face_embedding"):
            return parse_embedding(_read_option_file(options["face_embedding"], "face_embedding"), "face_embedding")
        if EMBEDDING_FILE in sample.files:
            return parse_embedding(sample.files[EMBEDDING_FILE], f"{sample.key}.{EMBEDDING_FILE}")
        if sample.meta.get("face_embedding") is not None:
            return parse_embedding(sample.meta["face_embedding"], f"sample {sample.key!r} metadata face_embedding")
        image = self.face_image(options, sample)
        if image is None:
            raise AnyV2VError(
                f"sample {sample.key!r} has no reference face: set the editor option face=PATH, or add "
                f"{sample.key}.face.png or {sample.key}.{EMBEDDING_FILE}"
            )
        analyzer = self.analyzer(options, sample, "face_embedding")
        # the official scripts detect on the resize_img'd reference image
        face = largest_face(analyzer.faces(np.asarray(resize_img(to_pil(image), *sizes))))
        if face is None:
            raise AnyV2VError(f"sample {sample.key!r}: no face found in the reference face image")
        return parse_embedding(face.embedding, f"sample {sample.key!r} reference face")

    def keypoints(self, options: dict[str, Any], sample: SampleContext, frame: np.ndarray, pose: np.ndarray):
        """The frame's keypoints in the pixels of `pose` (the frame at the generation size)."""
        given = None
        if options.get("face_kps"):
            given = parse_kps(_read_option_file(options["face_kps"], "face_kps"), "face_kps")
        elif KPS_FILE in sample.files:
            given = parse_kps(sample.files[KPS_FILE], f"{sample.key}.{KPS_FILE}")
        elif sample.meta.get("face_kps") is not None:
            given = parse_kps(sample.meta["face_kps"], f"sample {sample.key!r} metadata face_kps")
        if given is not None:  # in the frame's pixels: scaled to the generation size
            return given * [pose.shape[1] / frame.shape[1], pose.shape[0] / frame.shape[0]]
        face = largest_face(self.analyzer(options, sample, "face_kps").faces(pose))
        if face is None:
            raise AnyV2VError(f"sample {sample.key!r}: no face found in the first frame")
        return np.asarray(face.kps, dtype=np.float64)

    def edit(self, frame: np.ndarray, options: dict[str, Any], sample: SampleContext) -> np.ndarray:
        from .instantid_model import draw_kps, generate, resize_img

        self.check_options(options)
        sizes = (_number(options, "max_side"), _number(options, "min_side"))
        pose = np.asarray(resize_img(to_pil(frame), *sizes))
        kps = self.keypoints(options, sample, frame, pose)
        embedding = self.embedding(options, sample, sizes)
        model = self.model(options)
        image = generate(
            model,
            prompt=str(options.get("instruction") or options.get("prompt")),  # edit_prompt may template metadata
            negative_prompt=options.get("negative_prompt", DEFAULT_NEGATIVE),
            face_embedding=embedding,
            kps_image=draw_kps(pose.shape[1], pose.shape[0], kps),
            steps=_number(options, "steps"),
            guidance_scale=_number(options, "guidance_scale"),
            identitynet_scale=_number(options, "identitynet_scale"),
            ip_adapter_scale=_number(options, "ip_adapter_scale"),
            generator=torch.Generator("cpu").manual_seed(int(options.get("seed", sample.seed))),
        )
        return fit_frame(image, frame.shape[1], frame.shape[0], "stretch")
