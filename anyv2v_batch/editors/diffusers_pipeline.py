"""`diffusers`: any diffusers image-editing pipeline that takes `image` and `prompt` and returns images.

For example Qwen-Image-Edit (`model: Qwen/Qwen-Image-Edit`) or FLUX.1 Kontext
(`model: black-forest-labs/FLUX.1-Kontext-dev`). `DiffusionPipeline.from_pretrained` picks the class
from the model's `model_index.json`; every other option is passed to the pipeline call as is
(e.g. `num_inference_steps: 28`, `guidance_scale: 2.5`).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from ..errors import AnyV2VError
from ..imaging import to_pil
from ..loading import load_component
from .base import FirstFrameEditor, SampleContext

RESERVED = {"model", "instruction", "seed"}


class DiffusersEditor(FirstFrameEditor):
    name = "diffusers"
    description = "any diffusers pipeline taking image and prompt (Qwen-Image-Edit, FLUX.1 Kontext, ...)"
    needs_gpu = True
    options = {
        "model": "hub id or folder of the pipeline (required)",
        "instruction": "the prompt passed to the pipeline (--edit-prompt)",
        "<other>": "passed to the pipeline call, e.g. num_inference_steps=28",
    }

    def __init__(self, device: str = "auto", dtype: str = "auto", **load_options: Any) -> None:
        super().__init__(device, dtype, **load_options)
        self.pipelines: dict[str, Any] = {}

    def pipeline(self, model: str):
        if model not in self.pipelines:
            from diffusers import DiffusionPipeline

            pipe = load_component(DiffusionPipeline, model, None, torch_dtype=self.dtype)
            pipe.set_progress_bar_config(disable=True)
            self.pipelines[model] = pipe.to(self.device)
        return self.pipelines[model]

    def edit(self, frame: np.ndarray, options: dict[str, Any], sample: SampleContext) -> np.ndarray:
        if not options.get("model"):
            raise AnyV2VError("the diffusers editor needs the option model=HUB_ID_OR_FOLDER")
        pipe = self.pipeline(str(options["model"]))
        extra = {k: v for k, v in options.items() if k not in RESERVED}
        accepted = {
            name
            for name, p in inspect.signature(pipe.__call__).parameters.items()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        }
        unknown = sorted(set(extra) - accepted)
        if unknown:
            raise AnyV2VError(
                f"{options['model']}: the pipeline does not take {', '.join(unknown)} "
                f"(it takes: {', '.join(sorted(accepted - {'prompt', 'image', 'generator'}))})"
            )
        generator = torch.Generator("cpu").manual_seed(int(options.get("seed", sample.seed)))
        out = pipe(prompt=str(options.get("instruction", "")), image=to_pil(frame), generator=generator, **extra)
        images = getattr(out, "images", None)
        if not images:
            raise AnyV2VError(f"{options['model']}: the pipeline returned no images")
        return np.asarray(images[0].convert("RGB"))
