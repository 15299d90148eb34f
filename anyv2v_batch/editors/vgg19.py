"""VGG-19's convolutional feature network (Simonyan & Zisserman), as neural style transfer uses it.

Plain PyTorch, no torchvision: the module names (`features.0`, `features.2`, ...) are those of the
standard ImageNet checkpoint, so its state dict loads as it is. Only the feature layers are built.
"""

from __future__ import annotations

import torch
from torch import nn

# channels per conv layer; "M" is a 2x2 max pool
CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
WEIGHTS_URL = "https://download.pytorch.org/models/vgg19-dcbbb42b.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_names() -> list[str]:
    """Names of the `features` modules in order: conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, ..."""
    names, block, index = [], 1, 1
    for c in CONFIG:
        if c == "M":
            names.append(f"pool{block}")
            block, index = block + 1, 1
        else:
            names += [f"conv{block}_{index}", f"relu{block}_{index}"]
            index += 1
    return names


LAYER_NAMES = _layer_names()


class VGG19Features(nn.Module):
    """x [N, 3, H, W] in [0, 1] -> the activations of the requested layers (e.g. "relu4_2")."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for c in CONFIG:
            if c == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, c, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                channels = c
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        wanted, out = set(layers), {}
        h = (x - self.mean) / self.std
        last = max(LAYER_NAMES.index(name) for name in wanted)
        for i, module in enumerate(self.features[: last + 1]):
            h = module(h)
            if LAYER_NAMES[i] in wanted:
                out[LAYER_NAMES[i]] = h
        return out

    def load_checkpoint(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the ImageNet checkpoint's `features.*` weights (its classifier is not needed)."""
        features = {k: v for k, v in state_dict.items() if k.startswith("features.")}
        missing, unexpected = self.load_state_dict(features, strict=False)
        missing = [k for k in missing if k.startswith("features.")]
        if missing or unexpected:
            raise ValueError(f"not a VGG-19 checkpoint: missing {missing[:3]}, unexpected {unexpected[:3]}")
