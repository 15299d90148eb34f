"""Frame geometry: fitting frames to the clip size, and I2VGen-XL's own "center crop wide".

Frames are numpy uint8 arrays [H, W, 3] (RGB); PIL does the resampling so that results match the
official code pixel for pixel.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

from .errors import AnyV2VError

ResizeMode = Literal["stretch", "crop", "pad"]
RESIZE_MODES: tuple[str, ...] = ("stretch", "crop", "pad")


def to_pil(frame: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8), mode="RGB")


def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """Any PIL image or [H, W, 3] uint8 array as an RGB uint8 array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise AnyV2VError(f"expected an RGB uint8 image [H, W, 3], got {arr.dtype} {list(arr.shape)}")
    return arr


def fit_frame(frame: np.ndarray, width: int, height: int, mode: ResizeMode = "stretch") -> np.ndarray:
    """Bring one frame to width x height.

    stretch: LANCZOS resize ignoring the aspect ratio (what the official loader does);
    crop: scale to cover, then center-crop; pad: scale to fit, then center on black.
    """
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    img = to_pil(frame)
    if mode == "stretch":
        return np.asarray(img.resize((width, height), resample=Image.Resampling.LANCZOS))
    if mode == "crop":
        scale = max(width / w, height / h)
    elif mode == "pad":
        scale = min(width / w, height / h)
    else:
        raise AnyV2VError(f"unknown resize mode {mode!r}; use one of {', '.join(RESIZE_MODES)}")
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    img = img.resize((sw, sh), resample=Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height))
    # a negative offset crops, a positive one pads
    canvas.paste(img, ((width - sw) // 2, (height - sh) // 2))
    return np.asarray(canvas)


def center_crop_wide(image: Image.Image, width: int, height: int) -> Image.Image:
    """I2VGen-XL's crop, quirks included (exactness depends on them).

    Scale so the image covers width x height, with a BOX resize to sizes computed by *floor division
    of floats* (a side can come out one pixel short), then a centered crop box that may reach one pixel
    outside the image, where PIL fills black. Identity for an image already at width x height.
    """
    scale = min(image.width / width, image.height / height)
    image = image.resize((round(image.width // scale), round(image.height // scale)), resample=Image.Resampling.BOX)
    x1 = (image.width - width) // 2
    y1 = (image.height - height) // 2
    return image.crop((x1, y1, x1 + width, y1 + height))


def prepare_first_frame(frame, width: int, height: int) -> np.ndarray:
    """The edited first frame at the clip size (LANCZOS, as the official script resizes it)."""
    return fit_frame(as_rgb_array(frame), width, height, "stretch")
