"""AnyDoor's input recipe: the subject crop for the ID extractor, the collage hint, and the paste back.

Our implementation of the recipe of AnyDoor's demo (ali-vilab/AnyDoor @ 44ca2b2a, `run_gradio_demo.py`
`process_pairs` / `crop_back` / the paste of the target box, helpers from `datasets/data_utils.py`), which
is also its training recipe. It keeps the official OpenCV calls, interpolations and dtypes (uint8
truncation included), so the hint and the pasted frame match the official code bit for bit.

Boxes are (y1, y2, x1, x2) as in the official code; `mask_box` returns the last row / column that is
inside the mask (inclusive), and the official code then slices with it as an exclusive end. Kept.

The official code draws three numbers from NumPy's global generator, in this order: the subject's
padding ratio (1.1 ... 1.4), the target box ratio (always 1.1, from `randint(11, 12)`), the crop ratio
(1.3 ... 2.9). We draw them from `np.random.RandomState(seed)` with the same calls, so a recording made
after `np.random.seed(seed)` replays (seeds of 32 bits or more: see `RandomDraws.from_seed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import AnyV2VError

Box = tuple[int, int, int, int]  # y1, y2, x1, x2

REF_SIZE = 224  # the ID extractor's input
HINT_SIZE = 512  # the generation size (latent 64 x 64)
PASTE_MARGIN = 3  # pixels of the generated crop's border left out of the paste (the demo's m = 3)


def require_cv2():
    """OpenCV, or a one-line error naming the extra that installs it."""
    try:
        import cv2
    except ImportError:
        raise AnyV2VError(
            "the anydoor editor needs OpenCV: pip install 'anyv2v-batch[anydoor]' (opencv-python-headless)"
        ) from None
    return cv2


@dataclass(frozen=True)
class RandomDraws:
    """The three ratios of one edit, as the official code draws them."""

    subject_pad: float
    target_box: float
    crop: float

    @classmethod
    def from_seed(cls, seed: int) -> RandomDraws:
        # a 32-bit seed seeds as np.random.seed(seed) does (so recordings replay); a job's 63-bit
        # per-sample seed goes in whole, as two 32-bit words
        rng = np.random.RandomState(seed if 0 <= seed < 2**32 else [seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF])
        subject_pad = rng.randint(11, 15) / 10
        # `expand_bbox` draws randint(ratio[0] * 10, ratio[1] * 10): the same float bounds, the same draws
        target_box = rng.randint(1.1 * 10, 1.2 * 10) / 10
        crop = rng.randint(1.3 * 10, 3.0 * 10) / 10
        return cls(subject_pad, target_box, crop)


@dataclass
class AnyDoorInputs:
    """What the model takes, and where its output goes back into the frame."""

    ref: np.ndarray  # [224, 224, 3] uint8, the masked subject on white (the encoder reads ref / 255)
    hint: np.ndarray  # [512, 512, 4] float32: collage in [-1, 1], then the box mask (1 in, 0 out, -1 padding)
    sizes: tuple[int, int, int, int]  # crop height, width before and after padding to a square
    crop_box: Box  # the square-ish crop of the frame the model regenerates
    target_box: Box  # the expanded target box: only this part of the frame changes
    draws: RandomDraws


def mask_box(mask: np.ndarray) -> Box:
    """The mask's bounding box (last row / column inclusive); the whole image for a mask under 10 pixels."""
    height, width = mask.shape[:2]
    if mask.sum() < 10:
        return 0, height, 0, width
    rows = np.flatnonzero(np.any(mask, axis=1))
    cols = np.flatnonzero(np.any(mask, axis=0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def pad_around(image: np.ndarray, mask: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Grow both sides by `ratio`, centred: the image with white, the mask with 0."""
    h, w = image.shape[:2]
    big_h, big_w = int(h * ratio), int(w * ratio)
    top, left = (big_h - h) // 2, (big_w - w) // 2
    rows, cols = (top, big_h - h - top), (left, big_w - w - left)
    return (
        np.pad(image, (rows, cols, (0, 0)), constant_values=255),
        np.pad(mask, (rows, cols), constant_values=0),
    )


def pad_square(image: np.ndarray, value: float) -> np.ndarray:
    """Pad the shorter side on both ends (the odd pixel at the end) to a square."""
    h, w = image.shape[:2]
    if h == w:
        return image
    total = abs(h - w)
    first = int(total / 2)
    pad = (first, total - first)
    pad_width = ((0, 0), pad, (0, 0)) if h > w else (pad, (0, 0), (0, 0))
    return np.pad(image, pad_width, constant_values=value)


def grow_box(shape: tuple[int, ...], box: Box, ratio: float) -> Box:
    """The box scaled by `ratio` about its centre (sizes counted inclusively), clipped to the image."""
    y1, y2, x1, x2 = box
    height, width = shape[:2]
    yc, xc = 0.5 * (y1 + y2), 0.5 * (x1 + x2)
    h, w = ratio * (y2 - y1 + 1), ratio * (x2 - x1 + 1)
    y1, y2 = int(yc - h * 0.5), int(yc + h * 0.5)
    x1, x2 = int(xc - w * 0.5), int(xc + w * 0.5)
    return max(0, y1), min(height, y2), max(0, x1), min(width, x2)


def square_box(shape: tuple[int, ...], box: Box) -> Box:
    """The box widened (or heightened) to a square about its centre, clipped to the image."""
    y1, y2, x1, x2 = box
    height, width = shape[:2]
    cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
    h, w = y2 - y1, x2 - x1
    if h >= w:
        x1, x2 = cx - h // 2, cx + h // 2
    else:
        y1, y2 = cy - w // 2, cy + w // 2
    return max(0, y1), min(height, y2), max(0, x1), min(width, x2)


def high_frequency_map(image: np.ndarray, mask: np.ndarray, threshold: int = 50) -> np.ndarray:
    """The subject's edges (Sobel magnitude over 50 inside the eroded mask) times its colours, uint8."""
    cv2 = require_cv2()
    height, width = image.shape[:2]
    image = cv2.resize(image, (256, 256))
    inside = (cv2.resize(mask, (256, 256)) > 0.5).astype(np.uint8)
    inside = cv2.erode(inside, np.ones((5, 5), np.uint8), iterations=2)
    grad_x = cv2.convertScaleAbs(cv2.Sobel(image, cv2.CV_64F, 1, 0, ksize=3))
    grad_y = cv2.convertScaleAbs(cv2.Sobel(image, cv2.CV_64F, 0, 1, ksize=3))
    edges = np.max(cv2.addWeighted(grad_x, 0.5, grad_y, 0.5, 0), -1) * inside
    edges[edges < threshold] = 0
    edges = np.stack([edges] * 3, -1)
    detail = (edges.astype(np.float32) / 255 * image.astype(np.float32)).astype(np.uint8)
    return cv2.resize(detail, (width, height))


def subject_crop(subject: np.ndarray, subject_mask: np.ndarray, pad_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """The subject on white, cropped to its mask, padded by `pad_ratio`, squared and resized to 224:
    (image uint8 [224, 224, 3], mask uint8 0/255 [224, 224])."""
    cv2 = require_cv2()
    y1, y2, x1, x2 = mask_box(subject_mask)
    mask3 = np.stack([subject_mask] * 3, -1)
    on_white = subject * mask3 + np.ones_like(subject) * 255 * (1 - mask3)
    image, mask = pad_around(on_white[y1:y2, x1:x2], subject_mask[y1:y2, x1:x2], pad_ratio)
    mask3 = np.stack([mask] * 3, -1)
    image = cv2.resize(pad_square(image, 255).astype(np.uint8), (REF_SIZE, REF_SIZE)).astype(np.uint8)
    mask3 = cv2.resize(pad_square(mask3 * 255, 0).astype(np.uint8), (REF_SIZE, REF_SIZE)).astype(np.uint8)
    return image, mask3[:, :, 0]


def prepare(
    subject: np.ndarray,
    subject_mask: np.ndarray,
    frame: np.ndarray,
    target_mask: np.ndarray,
    draws: RandomDraws,
    shape_control: bool = False,
) -> AnyDoorInputs:
    """The demo's `process_pairs`: subject [h, w, 3] uint8 with its 0/1 mask, frame [H, W, 3] uint8 with
    the 0/1 target mask -> the model's inputs."""
    cv2 = require_cv2()
    ref, ref_mask = subject_crop(subject, subject_mask, draws.subject_pad)
    detail = high_frequency_map(ref, ref_mask / 255)

    target_box = grow_box(target_mask.shape, mask_box(target_mask), draws.target_box)
    crop_box = square_box(frame.shape, grow_box(frame.shape, target_box, draws.crop))
    cy1, cy2, cx1, cx2 = crop_box
    crop = frame[cy1:cy2, cx1:cx2, :]
    y1, y2, x1, x2 = (target_box[0] - cy1, target_box[1] - cy1, target_box[2] - cx1, target_box[3] - cx1)

    collage = crop.copy()
    collage[y1:y2, x1:x2, :] = cv2.resize(detail.astype(np.uint8), (x2 - x1, y2 - y1))
    if shape_control:  # the user's mask shapes the object (the demo's "Enable Shape Control")
        box_mask = np.stack([target_mask[cy1:cy2, cx1:cx2]] * 3, -1)
    else:
        box_mask = crop.copy() * 0.0
        box_mask[y1:y2, x1:x2, :] = 1.0
    h1, w1 = collage.shape[:2]
    collage = pad_square(collage, 0).astype(np.uint8)
    box_mask = pad_square(box_mask, 2).astype(np.uint8)  # 2 marks the padding: -1 in the hint
    h2, w2 = collage.shape[:2]

    collage = cv2.resize(collage, (HINT_SIZE, HINT_SIZE)).astype(np.float32)
    box_mask = cv2.resize(box_mask, (HINT_SIZE, HINT_SIZE), interpolation=cv2.INTER_NEAREST).astype(np.float32)
    box_mask[box_mask == 2] = -1
    hint = np.concatenate([collage / 127.5 - 1.0, box_mask[:, :, :1]], -1)
    return AnyDoorInputs(ref, hint, (h1, w1, h2, w2), crop_box, target_box, draws)


def paste_back(generated: np.ndarray, frame: np.ndarray, inputs: AnyDoorInputs) -> np.ndarray:
    """The demo's post-processing: generated [512, 512, 3] float32 in [0, 255] (decoder * 127.5 + 127.5)
    -> the frame with only the expanded target box replaced, uint8 (truncated, not rounded)."""
    cv2 = require_cv2()
    h1, w1, h2, w2 = inputs.sizes
    y1, y2, x1, x2 = inputs.crop_box
    m = PASTE_MARGIN
    pred = np.clip(generated, 0, 255)[1:, :, :]  # the official code drops the first row
    pred = cv2.resize(pred, (w2, h2))
    if w1 < w2:
        first = int((w2 - w1) / 2)
        pred = pred[:, first : -(w2 - w1 - first), :]
    elif h1 < h2:
        first = int((h2 - h1) / 2)
        pred = pred[first : -(h2 - h1 - first), :, :]
    regenerated = frame.copy()
    regenerated[y1 + m : y2 - m, x1 + m : x2 - m, :] = pred[m:-m, m:-m]
    out = frame.copy()
    ty1, ty2, tx1, tx2 = inputs.target_box
    out[ty1:ty2, tx1:tx2, :] = regenerated[ty1:ty2, tx1:tx2, :]
    return out
