"""`instruct-pix2pix`: InstructPix2Pix through diffusers, with the settings AnyV2V uses.

Official settings (from InstructPix2Pix's own edit script, as AnyV2V runs it): the Euler ancestral
scheduler, 100 steps, image guidance 1.5, text guidance 7.5. MagicBrush is the same pipeline with
other weights: `model: vinesmsuic/magicbrush-jul7`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import AnyV2VError
from ..imaging import to_pil
from ..loading import load_component
from .base import FirstFrameEditor, SampleContext

DEFAULT_MODEL = "timbrooks/instruct-pix2pix"
DEFAULT_NEGATIVE = "low res, blurry, watermark, jpeg artifacts"


class InstructPix2PixEditor(FirstFrameEditor):
    name = "instruct-pix2pix"
    description = "edit the frame by an instruction (InstructPix2Pix; MagicBrush via model)"
    needs_gpu = True
    options = {
        "instruction": "the edit, e.g. 'turn him into a robot' (--edit-prompt)",
        "model": f"hub id or folder (default {DEFAULT_MODEL}; MagicBrush: vinesmsuic/magicbrush-jul7)",
        "steps": "denoising steps (default 100)",
        "image_guidance_scale": "faithfulness to the frame (default 1.5)",
        "guidance_scale": "faithfulness to the instruction (default 7.5)",
        "negative_prompt": f"default {DEFAULT_NEGATIVE!r}",
    }

    def __init__(self, device: str = "auto", dtype: str = "auto", **load_options: Any) -> None:
        super().__init__(device, dtype, **load_options)
        self.pipelines: dict[str, Any] = {}

    def pipeline(self, model: str):
        if model not in self.pipelines:
            from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

            pipe = load_component(
                StableDiffusionInstructPix2PixPipeline, model, None, torch_dtype=self.dtype,
                safety_checker=None, requires_safety_checker=False,
            )  # fmt: skip
            pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
            pipe.set_progress_bar_config(disable=True)
            self.pipelines[model] = pipe.to(self.device)
        return self.pipelines[model]

    def edit(self, frame: np.ndarray, options: dict[str, Any], sample: SampleContext) -> np.ndarray:
        instruction = str(options.get("instruction", "")).strip()
        if not instruction:
            raise AnyV2VError("instruct-pix2pix needs an instruction: set --edit-prompt (or the variant's edit_prompt)")
        pipe = self.pipeline(str(options.get("model", DEFAULT_MODEL)))
        result = pipe(
            instruction,
            image=to_pil(frame),
            num_inference_steps=int(options.get("steps", 100)),
            image_guidance_scale=float(options.get("image_guidance_scale", 1.5)),
            guidance_scale=float(options.get("guidance_scale", 7.5)),
            negative_prompt=str(options.get("negative_prompt", DEFAULT_NEGATIVE)),
            generator=torch.Generator("cpu").manual_seed(int(options.get("seed", sample.seed))),
        ).images[0]
        return np.asarray(result.convert("RGB"))
