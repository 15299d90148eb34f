"""First-frame editors: one module each behind `base.FirstFrameEditor`, found by name."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import AnyV2VError
from .base import FirstFrameEditor, SampleContext

# name -> "module:class"; imported on first use so a job loads only the editor it runs
BUILTIN_EDITORS: dict[str, str] = {
    "provided": "anyv2v_batch.editors.provided:ProvidedEditor",
}


def editor_class(name: str) -> type[FirstFrameEditor]:
    if name not in BUILTIN_EDITORS:
        raise AnyV2VError(f"unknown editor {name!r}; choose one of: {', '.join(sorted(BUILTIN_EDITORS))}")
    module, cls = BUILTIN_EDITORS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_editor(name: str, device: str = "auto", dtype: str = "auto", **load_options: Any) -> FirstFrameEditor:
    return editor_class(name)(device=device, dtype=dtype, **load_options)


__all__ = ["BUILTIN_EDITORS", "FirstFrameEditor", "SampleContext", "editor_class", "load_editor"]
