"""The first-frame editor interface: one frame in, one edited frame of the same size out.

An editor loads its models once (in `__init__`, once per actor in a job) and then edits many frames.
`options` are the variant's editor options (e.g. an instruction); `sample` gives what the sample
carries besides its video (metadata, a provided edited frame), for editors that need it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..video_io import MAX_IMAGE_PIXELS


@dataclass
class SampleContext:
    """What an editor may use besides the frame: the sample's key, metadata and extra files."""

    key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # extension -> bytes, e.g. "edited.png"
    seed: int = 42  # the variant's seed for this sample, for editors that sample
    max_image_pixels: int = MAX_IMAGE_PIXELS  # the job's limits.max_image_pixels, for images the sample brings


class FirstFrameEditor(ABC):
    """Edits the first frame of a clip. Subclasses set `name` and describe their `options`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: ClassVar[dict[str, str]] = {}  # option -> one-line help, listed by `anyv2v-batch editors`
    needs_gpu: ClassVar[bool] = False  # whether the editor pool should hold GPUs for it

    def __init__(self, device: str = "auto", dtype: str = "auto", **load_options: Any) -> None:
        from ..loading import resolve_device, resolve_dtype

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.load_options = load_options

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Refuse malformed options before any work (AnyV2VError naming the option); called by `run`."""
        return None

    @abstractmethod
    def edit(self, frame: np.ndarray, options: dict[str, Any], sample: SampleContext) -> np.ndarray:
        """frame [H, W, 3] uint8 at the clip size -> edited frame, RGB uint8 (resized to H x W after)."""
