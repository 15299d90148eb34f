"""Frame geometry, including I2VGen-XL's crop quirks that exactness depends on."""

from __future__ import annotations

import numpy as np
from PIL import Image

from anyv2v_batch.imaging import center_crop_wide, fit_frame


def gradient(width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([xx * 3 % 256, yy * 5 % 256, (xx + yy) % 256], -1).astype(np.uint8) + 1)


def test_identity_at_the_target_size():
    img = gradient(48, 32)
    assert np.array_equal(np.asarray(center_crop_wide(img, 48, 32)), np.asarray(img))


def test_one_pixel_short_resize_reaches_outside_and_fills_black():
    # 80x32 to an 80x80 square: scale 0.4, 32 // 0.4 == 79.0 (not 80), so the crop box starts at y = -1
    out = np.asarray(center_crop_wide(gradient(80, 32), 80, 80))
    assert out.shape == (80, 80, 3)
    assert (out[0] == 0).all() and (out[1] != 0).any()


def test_portrait_square_crop_is_centered():
    img = gradient(32, 48)
    out = np.asarray(center_crop_wide(img, 32, 32))
    assert np.array_equal(out, np.asarray(img)[8:40])


def test_fit_modes():
    frame = np.asarray(gradient(64, 32))
    stretched = fit_frame(frame, 32, 32, "stretch")
    cropped = fit_frame(frame, 32, 32, "crop")
    padded = fit_frame(frame, 32, 32, "pad")
    assert stretched.shape == cropped.shape == padded.shape == (32, 32, 3)
    assert (padded[:8] == 0).all() and (padded[-8:] == 0).all() and (padded[8:24] != 0).any()
    assert np.array_equal(cropped, frame[:, 16:48])  # no scaling needed: a pure center crop
    assert fit_frame(frame, 64, 32, "pad") is frame
