"""`anydoor`: put a reference subject into the first frame at a target box (AnyDoor, Chen et al. 2024).

Inputs per sample or per variant: the subject image and its mask (the image's alpha channel, else
`<key>.subject_mask.png` or the option `subject_mask`), and where it goes: the option / metadata field
`target_box` (`x1,y1,x2,y2` in the pixels of the frame the editor gets, i.e. at the clip size; x2, y2
exclusive) or a target mask (`<key>.target_mask.png`, resized to the frame with nearest neighbour). A
missing mask or box is an error naming the sample and what was looked for, never "the whole image".

The recipe is the official demo's (ali-vilab/AnyDoor @ 44ca2b2a, `run_gradio_demo.py`): its
preprocessing (anydoor_preprocess.py), 30 DDIM steps (ldm's schedule: 31 steps), guidance 4.5 with an
all-zero reference image as the unconditional input, control strength 1.0, and only the expanded
target box pasted back into the frame. The official code is unseeded; here every random draw comes
from the variant's seed, in the official order: the three preprocessing ratios (NumPy
`RandomState(seed)`), then the starting noise (`torch.Generator("cpu").manual_seed(seed)`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import AnyV2VError
from .anydoor_preprocess import AnyDoorInputs, RandomDraws, paste_back, prepare, require_cv2
from .base import FirstFrameEditor, SampleContext
from .provided import ALLOWED_ROOTS_HELP, allowed_roots, read_image_url, read_metadata_image

SUBJECT_FILES = ("subject.png", "subject.webp", "subject.jpg", "subject.jpeg")
SUBJECT_MASK_FILES = ("subject_mask.png", "subject_mask.webp")
TARGET_MASK_FILES = ("target_mask.png", "target_mask.webp")
DEFAULTS = {"steps": 30, "guidance_scale": 4.5, "control_strength": 1.0}


def parse_box(value: Any, what: str = "target_box") -> tuple[int, int, int, int]:
    """`x1,y1,x2,y2` (a string or a list of 4 integers) with x1 < x2 and y1 < y2."""
    parts = value.replace(" ", "").split(",") if isinstance(value, str) else value
    try:
        if not isinstance(parts, (list, tuple)) or len(parts) != 4:
            raise ValueError
        x1, y1, x2, y2 = (int(p) for p in parts)
        if isinstance(value, (list, tuple)) and any(isinstance(p, float) and not p.is_integer() for p in parts):
            raise ValueError
    except (TypeError, ValueError):
        raise AnyV2VError(f"{what} must be x1,y1,x2,y2 (four integers, pixels of the frame), got {value!r}") from None
    if not (0 <= x1 < x2 and 0 <= y1 < y2):
        raise AnyV2VError(f"{what} {value!r} is empty or negative: need 0 <= x1 < x2 and 0 <= y1 < y2")
    return x1, y1, x2, y2


def _binary(mask: np.ndarray) -> np.ndarray:
    """The demo's threshold: > 128 is inside (uint8 0 / 1)."""
    return np.where(mask > 128, 1, 0).astype(np.uint8)


class AnyDoorEditor(FirstFrameEditor):
    name = "anydoor"
    description = "insert a reference subject at a target box (AnyDoor; weights: anyv2v-batch convert-anydoor)"
    needs_gpu = True
    options = {
        "model": "the folder written by `anyv2v-batch convert-anydoor` (or a hub repo in that layout)",
        "subject": "path or URL of the subject image (else the sample's <key>.subject.png or metadata `subject`)",
        "subject_mask": "its mask (default: the subject's alpha channel, else <key>.subject_mask.png)",
        "target_box": "x1,y1,x2,y2 in the frame's pixels (else metadata `target_box` or <key>.target_mask.png)",
        "target_mask": "path or URL of a target mask image, instead of target_box",
        "steps": "DDIM steps (default 30; ldm's schedule then runs 31)",
        "guidance_scale": "classifier-free guidance (default 4.5)",
        "control_strength": "scale of the ControlNet residuals (default 1.0)",
        "shape_control": "true: the target mask's shape, not only its box, guides the object (default false)",
        "allowed_roots": ALLOWED_ROOTS_HELP.replace("metadata path", "metadata `subject` path"),
    }

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        allowed_roots(options)
        if not options.get("model"):
            raise AnyV2VError(
                "the anydoor editor needs its weights: convert AnyDoor's checkpoint once with "
                "`anyv2v-batch convert-anydoor --checkpoint epoch=1-step=8687.ckpt -o anydoor/` and set model=anydoor/"
            )
        if options.get("target_box") not in (None, ""):
            parse_box(options["target_box"])
        for key, kind in (("steps", int), ("guidance_scale", float), ("control_strength", float)):
            if key in options:
                try:
                    value = kind(options[key])
                except (TypeError, ValueError):
                    raise AnyV2VError(f"editor option {key} must be a number, got {options[key]!r}") from None
                if key == "steps" and not 1 <= value <= 1000:
                    raise AnyV2VError(f"editor option steps must be 1 ... 1000, got {options[key]!r}")
        if not isinstance(options.get("shape_control", False), bool):
            raise AnyV2VError(f"editor option shape_control must be true or false, got {options['shape_control']!r}")
        require_cv2()

    def __init__(self, device: str = "auto", dtype: str = "auto", **load_options: Any) -> None:
        super().__init__(device, dtype, **load_options)
        self.models: dict[str, Any] = {}
        self.last_inputs: AnyDoorInputs | None = None  # what the last edit fed the model (for tests / inspection)

    def model(self, name: str):
        from .anydoor_model import AnyDoorModel

        if name not in self.models:
            self.models[name] = AnyDoorModel.load(name, self.device, self.dtype)
        return self.models[name]

    # ---- inputs

    @staticmethod
    def _image(option: str, files: tuple[str, ...], options: dict, sample: SampleContext, mode: str):
        from ..video_io import read_image

        if options.get(option):
            return read_image_url(str(options[option]), sample.max_image_pixels, mode)
        for ext in files:
            if ext in sample.files:
                return read_image(sample.files[ext], f"{sample.key}.{ext}", sample.max_image_pixels, mode=mode)
        if sample.meta.get(option):  # from the shard: read only under allowed_roots
            return read_metadata_image(option, options, sample, mode)
        return None

    def subject(self, options: dict[str, Any], sample: SampleContext) -> tuple[np.ndarray, np.ndarray]:
        """The subject RGB uint8 and its 0/1 mask."""
        image = self._image("subject", SUBJECT_FILES, options, sample, "RGB+A")
        if image is None:
            raise AnyV2VError(
                f"anydoor needs a subject image for {sample.key!r}: set the editor option subject=PATH, or add "
                f"{sample.key}.subject.png (RGBA, alpha = mask) to the sample"
            )
        mask = self._image("subject_mask", SUBJECT_MASK_FILES, options, sample, "L")
        if mask is None:
            if image.shape[2] != 4:
                raise AnyV2VError(
                    f"sample {sample.key!r}: the subject has no alpha channel and there is no "
                    f"{sample.key}.subject_mask.png (nor the option subject_mask): AnyDoor needs the subject's mask"
                )
            mask = image[:, :, 3]
        if mask.shape != image.shape[:2]:
            raise AnyV2VError(
                f"sample {sample.key!r}: the subject mask is {mask.shape[1]}x{mask.shape[0]}, the subject "
                f"{image.shape[1]}x{image.shape[0]}; they must be the same size"
            )
        mask = _binary(mask)
        if not mask.any():
            raise AnyV2VError(f"sample {sample.key!r}: the subject mask is empty")
        return np.ascontiguousarray(image[:, :, :3]), mask

    def target_mask(self, options: dict[str, Any], sample: SampleContext, height: int, width: int) -> np.ndarray:
        """The 0/1 target mask at the frame's size, from a box or a mask image."""
        box = options.get("target_box") or sample.meta.get("target_box")
        if box:
            x1, y1, x2, y2 = parse_box(box)
            if x2 > width or y2 > height:
                raise AnyV2VError(f"sample {sample.key!r}: target_box {box!r} lies outside the {width}x{height} frame")
            mask = np.zeros((height, width), np.uint8)
            mask[y1:y2, x1:x2] = 1
            return mask
        image = self._image("target_mask", TARGET_MASK_FILES, options, sample, "L")
        if image is None:
            raise AnyV2VError(
                f"anydoor needs a target for {sample.key!r}: set target_box=x1,y1,x2,y2 (option or metadata), "
                f"or add {sample.key}.target_mask.png to the sample"
            )
        if image.shape != (height, width):
            cv2 = require_cv2()
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST)
        mask = _binary(image)
        if not mask.any():
            raise AnyV2VError(f"sample {sample.key!r}: the target mask is empty")
        return mask

    # ---- edit

    def edit(self, frame: np.ndarray, options: dict[str, Any], sample: SampleContext) -> np.ndarray:
        self.check_options(options)
        subject, subject_mask = self.subject(options, sample)
        target = self.target_mask(options, sample, *frame.shape[:2])
        model = self.model(str(options["model"]))
        settings = {k: type(v)(options.get(k, v)) for k, v in DEFAULTS.items()}
        seed = int(sample.seed)

        inputs = prepare(subject, subject_mask, frame, target, RandomDraws.from_seed(seed),
                         shape_control=bool(options.get("shape_control", False)))  # fmt: skip
        self.last_inputs = inputs
        ref = torch.from_numpy(inputs.ref / 255).float().permute(2, 0, 1)[None]
        hint = torch.from_numpy(inputs.hint).permute(2, 0, 1)[None]
        size = hint.shape[-1] // model.latent_scale
        generator = torch.Generator("cpu").manual_seed(seed)
        x_T = torch.randn((1, model.unet.config.in_channels, size, size), generator=generator)
        latent = model.sample(
            x_T, hint, model.encode_subject(ref), model.uncond_tokens(), settings["steps"],
            settings["guidance_scale"], settings["control_strength"],
        )  # fmt: skip
        decoded = model.decode(latent)
        generated = (decoded.permute(0, 2, 3, 1) * 127.5 + 127.5)[0].cpu().numpy()
        return paste_back(generated, frame, inputs)
