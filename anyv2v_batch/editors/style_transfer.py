"""`style-transfer`: neural style transfer (Gatys, Ecker & Bethge, 2016) of the frame onto a style image.

The standard recipe: VGG-19 features with ImageNet weights; content from relu4_2, style as Gram
matrices of relu1_1 ... relu5_1 (equal weights); content weight 1, style weight 1e6; the image itself
optimised with L-BFGS, starting from the frame. No randomness, so the same inputs give the same frame.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import AnyV2VError
from ..imaging import fit_frame
from ..loading import hub_offline
from .base import FirstFrameEditor, SampleContext
from .provided import ALLOWED_ROOTS_HELP, allowed_roots, read_image_url, read_metadata_image
from .vgg19 import WEIGHTS_URL, VGG19Features

CONTENT_LAYERS = ("relu4_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
STYLE_FILES = ("style.png", "style.jpg", "style.jpeg", "style.webp")


def gram(features: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] -> [N, C, C], normalised by the number of elements per channel map."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def load_vgg19_weights(source: str | None) -> dict[str, torch.Tensor]:
    """The ImageNet VGG-19 checkpoint from a local file, or its usual URL through the torch hub cache."""
    source = source or WEIGHTS_URL
    try:
        if not source.startswith(("http://", "https://")):
            if not Path(source).is_file():
                raise AnyV2VError(f"VGG-19 weights file {source!r} does not exist")
            return torch.load(source, map_location="cpu", weights_only=True)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(source)
        if not cached.is_file() and hub_offline():
            raise AnyV2VError(
                f"VGG-19 weights are not in the torch hub cache and HF_HUB_OFFLINE is set; download {source} "
                "and pass it as the editor option weights=PATH"
            )
        return torch.hub.load_state_dict_from_url(source, map_location="cpu", progress=False, weights_only=True)
    except AnyV2VError:
        raise
    except Exception as e:  # noqa: BLE001 - network, pickle or format problems: one line
        raise AnyV2VError(
            f"cannot load VGG-19 weights from {source!r} ({type(e).__name__}); download {WEIGHTS_URL} and pass "
            "it as the editor option weights=PATH"
        ) from None


class StyleTransferEditor(FirstFrameEditor):
    name = "style-transfer"
    description = "neural style transfer (Gatys et al.) onto a style image, VGG-19 features"
    needs_gpu = True
    options = {
        "style": "path or URL of the style image (else the sample's <key>.style.png or metadata `style`)",
        "weights": f"VGG-19 ImageNet checkpoint, a path or URL (default {WEIGHTS_URL})",
        "allowed_roots": ALLOWED_ROOTS_HELP.replace("metadata path", "metadata `style` path"),
        "steps": "L-BFGS iterations (default 300)",
        "style_weight": "default 1e6",
        "content_weight": "default 1",
    }

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        allowed_roots(options)

    def __init__(self, device: str = "auto", dtype: str = "auto", **load_options: Any) -> None:
        super().__init__(device, dtype, **load_options)
        self.networks: dict[str, VGG19Features] = {}
        self.last_losses: list[float] = []  # the loss at each evaluation of the last edit

    def network(self, weights: str | None) -> VGG19Features:
        key = weights or WEIGHTS_URL
        if key not in self.networks:
            net = VGG19Features()
            try:
                net.load_checkpoint(load_vgg19_weights(weights))
            except ValueError as e:
                raise AnyV2VError(f"{key}: {e}") from None
            self.networks[key] = net.eval().requires_grad_(False).to(self.device)
        return self.networks[key]

    @staticmethod
    def style_image(options: dict[str, Any], sample: SampleContext) -> np.ndarray:
        from ..video_io import read_image

        if options.get("style"):
            return read_image_url(str(options["style"]), sample.max_image_pixels)
        for ext in STYLE_FILES:
            if ext in sample.files:
                return read_image(sample.files[ext], name=f"{sample.key}.{ext}", max_pixels=sample.max_image_pixels)
        if sample.meta.get("style"):  # from the shard: read only under allowed_roots
            return read_metadata_image("style", options, sample)
        raise AnyV2VError(
            f"style-transfer needs a style image for {sample.key!r}: set the editor option style=PATH, or add "
            f"{sample.key}.style.png to the sample"
        )

    def edit(self, frame: np.ndarray, options: dict[str, Any], sample: SampleContext) -> np.ndarray:
        net = self.network(options.get("weights"))
        height, width = frame.shape[:2]
        style = fit_frame(self.style_image(options, sample), width, height, "stretch")
        steps = int(options.get("steps", 300))
        style_weight = float(options.get("style_weight", 1e6))
        content_weight = float(options.get("content_weight", 1.0))

        def to_tensor(img: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(img.astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous().to(self.device)

        content = to_tensor(frame)
        with torch.no_grad():
            target_content = net(content, list(CONTENT_LAYERS))
            target_style = {k: gram(v) for k, v in net(to_tensor(style), list(STYLE_LAYERS)).items()}
        image = content.clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS([image], max_iter=steps, history_size=50, line_search_fn=None)
        self.last_losses = []

        def closure() -> torch.Tensor:
            with torch.no_grad():
                image.clamp_(0, 1)
            optimizer.zero_grad()
            feats = net(image, [*CONTENT_LAYERS, *STYLE_LAYERS])
            loss_c = sum(F.mse_loss(feats[k], target_content[k]) for k in CONTENT_LAYERS)
            loss_s = sum(F.mse_loss(gram(feats[k]), target_style[k]) for k in STYLE_LAYERS)
            loss = content_weight * loss_c + style_weight * loss_s
            loss.backward()
            self.last_losses.append(loss.item())
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        out = image.detach().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()
        return np.round(out * 255).astype(np.uint8)
