"""First-frame editors: one module each behind `base.FirstFrameEditor`, found by name.

Built-in editors are listed below; third-party editors register a `FirstFrameEditor` subclass under
the entry-point group `anyv2v_batch.editors`:

    [project.entry-points."anyv2v_batch.editors"]
    my-editor = "my_package.editor:MyEditor"
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from ..errors import AnyV2VError
from .base import FirstFrameEditor, SampleContext, check_licence

ENTRY_POINT_GROUP = "anyv2v_batch.editors"

# name -> "module:class"; imported on first use so a job loads only the editor it runs
BUILTIN_EDITORS: dict[str, str] = {
    "provided": "anyv2v_batch.editors.provided:ProvidedEditor",
    "instruct-pix2pix": "anyv2v_batch.editors.instruct_pix2pix:InstructPix2PixEditor",
    "style-transfer": "anyv2v_batch.editors.style_transfer:StyleTransferEditor",
    "diffusers": "anyv2v_batch.editors.diffusers_pipeline:DiffusersEditor",
    "anydoor": "anyv2v_batch.editors.anydoor:AnyDoorEditor",
    "instantid": "anyv2v_batch.editors.instantid:InstantIDEditor",
}


@dataclass
class EditorInfo:
    name: str
    source: str  # "built-in" or the plug-in's distribution
    cls: type[FirstFrameEditor] | None
    error: str = ""  # why a plug-in could not be loaded


def _load(target: str) -> type[FirstFrameEditor]:
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, FirstFrameEditor)):
        raise TypeError(f"{target} is not a FirstFrameEditor subclass")
    return cls


def available_editors() -> list[EditorInfo]:
    """Every editor: built-ins, then plug-ins (a plug-in that fails to load is listed with its error)."""
    infos = [EditorInfo(name, "built-in", None) for name in BUILTIN_EDITORS]
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if ep.name in BUILTIN_EDITORS:
            continue
        dist = getattr(ep.dist, "name", None) or "plug-in"
        try:
            infos.append(EditorInfo(ep.name, dist, _load(ep.value)))
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not break the others
            infos.append(
                EditorInfo(ep.name, dist, None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            )
    for info in infos:
        if info.cls is None and not info.error:
            try:
                info.cls = _load(BUILTIN_EDITORS[info.name])
            except Exception as e:  # noqa: BLE001
                info.error = f"{type(e).__name__}: {e}"
    return infos


def editor_class(name: str) -> type[FirstFrameEditor]:
    if name in BUILTIN_EDITORS:
        return _load(BUILTIN_EDITORS[name])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                return _load(ep.value)
            except Exception as e:  # noqa: BLE001
                raise AnyV2VError(f"editor plug-in {name!r} cannot be loaded: {type(e).__name__}: {e}") from None
    names = sorted({*BUILTIN_EDITORS, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
    raise AnyV2VError(f"unknown editor {name!r}; choose one of: {', '.join(names)} (see `anyv2v-batch editors`)")


def load_editor(name: str, device: str = "auto", dtype: str = "auto", **load_options: Any) -> FirstFrameEditor:
    return editor_class(name)(device=device, dtype=dtype, **load_options)


__all__ = [
    "BUILTIN_EDITORS",
    "ENTRY_POINT_GROUP",
    "EditorInfo",
    "FirstFrameEditor",
    "SampleContext",
    "available_editors",
    "check_licence",
    "editor_class",
    "load_editor",
]
