"""AnyV2V's task presets: the propagation settings the official configs use for one kind of edit.

The official repository records its settings per demo edit in
`i2vgen-xl/configs/group_pnp_edit/group_config.json` (TIGER-AI-Lab/AnyV2V @ bc540be), each entry naming its
`task_name`. Every subject-driven and identity entry starts sampling at the first step
(`ddim_init_latents_t_idx: 0`); the injection fractions vary by clip, so a preset takes the task's first
entry and lists the others, which users may set instead (explicit settings always win over a preset).
The entries are I2VGen-XL's: the other backbones have no official per-task settings, so a preset names
the backbones it holds for and is refused on the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import AnyV2VError

OFFICIAL_CONFIG = "i2vgen-xl/configs/group_pnp_edit/group_config.json (TIGER-AI-Lab/AnyV2V @ bc540be)"


@dataclass(frozen=True)
class TaskPreset:
    name: str
    task_name: str  # the official config's `task_name`
    editor: str  # the first-frame editor for this kind of edit, used where the job names none
    edit: dict[str, Any]  # EditSettings fields
    source: str  # the official entry the values come from
    alternatives: tuple[str, ...] = ()  # the task's other official entries, as "conv/spatial/temporal (clip)"
    backbones: tuple[str, ...] = ("i2vgen-xl",)
    description: str = ""


TASK_PRESETS: dict[str, TaskPreset] = {
    p.name: p
    for p in (
        TaskPreset(
            name="subject-driven",
            task_name="Subject-Driven-Editing",
            editor="anydoor",
            edit={"init_step": 0, "pnp_conv": 0.2, "pnp_spatial": 0.2, "pnp_temporal": 1.0},
            source='"An Old Man Doing Exercises For The Body And Mind" -> helmet',
            alternatives=("0.2/0.2/0.5 (kitten -> dog)",),
            description="insert a reference subject into the clip (AnyDoor on the first frame)",
        ),
        TaskPreset(
            name="identity",
            task_name="Identity-Manipulation",
            editor="instantid",
            edit={"init_step": 0, "pnp_conv": 0.8, "pnp_spatial": 0.8, "pnp_temporal": 1.0},
            source='"An Old Man Doing Exercises For The Body And Mind" -> Jack Ma',
            alternatives=(
                "1.0/1.0/1.0 (old man -> Hinton)",
                "0.1/0.1/1.0 (man walking -> Elon Musk)",
                "0.0/0.0/1.0 (man walking -> Yann LeCun)",
            ),  # fmt: skip
            description="give the person in the clip another identity (InstantID on the first frame)",
        ),
    )
}


def task_preset(name: str, backbone: str, where: str = "preset") -> TaskPreset:
    """The preset `name` for `backbone`, or an AnyV2VError naming the choices (checked before any work)."""
    preset = TASK_PRESETS.get(name)
    if preset is None:
        raise AnyV2VError(
            f"{where}: unknown preset {name!r}; choose one of: {', '.join(TASK_PRESETS)} (see `anyv2v-batch presets`)"
        )
    if backbone not in preset.backbones:
        raise AnyV2VError(
            f"{where}: preset {name!r} holds the official {', '.join(preset.backbones)} settings and {backbone} has "
            f"none; drop the preset and set edit.pnp_* / edit.init_step yourself"
        )
    return preset
