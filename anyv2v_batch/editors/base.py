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

from ..errors import AnyV2VError
from ..video_io import MAX_IMAGE_PIXELS


@dataclass
class SampleContext:
    """What an editor may use besides the frame: the sample's key, metadata and extra files."""

    key: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # extension -> bytes, e.g. "edited.png"
    seed: int = 42  # the variant's seed for this sample, for editors that sample
    max_image_pixels: int = MAX_IMAGE_PIXELS  # the job's limits.max_image_pixels, for images the sample brings


NONCOMMERCIAL_FLAG = "--accept-noncommercial-models"


def check_licence(cls: type[FirstFrameEditor], accepted: bool) -> None:
    """Refuse a non-commercial editor unless the job accepts its licence (before any model loads)."""
    if cls.noncommercial and not accepted:
        raise AnyV2VError(
            f"editor {cls.name!r}: {cls.licence_note.split(';')[0] or 'its models are for non-commercial use only'}; "
            f"to accept that, pass {NONCOMMERCIAL_FLAG} (job: accept_noncommercial_models: true)"
        )


class FirstFrameEditor(ABC):
    """Edits the first frame of a clip. Subclasses set `name` and describe their `options`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: ClassVar[dict[str, str]] = {}  # option -> one-line help, listed by `anyv2v-batch editors`
    needs_gpu: ClassVar[bool] = False  # whether the editor pool should hold GPUs for it
    # weights or models licensed for non-commercial use only: the editor starts only when the job
    # accepts that (accept_noncommercial_models: true); `licence_note` says why, in `anyv2v-batch editors`
    noncommercial: ClassVar[bool] = False
    licence_note: ClassVar[str] = ""

    def __init__(self, device: str = "auto", dtype: str = "auto", **load_options: Any) -> None:
        from ..loading import resolve_device, resolve_dtype

        check_licence(type(self), bool(load_options.get("accept_noncommercial_models")))
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
