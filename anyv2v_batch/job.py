"""A batch job: what to read, which edits to make, where to write, how big each pool is.

A job file is YAML (see `pipelines/examples/`); every field can also be given or overridden on the
command line, the common ones by their own flags and any of them by `--set path=value`. Validation
happens here, before any work, and every problem is one line naming the field:

    job.yaml: variants[1].edit.pnp_conv must be between 0 and 1, got 1.5
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.evaluation import EvaluateSettings, parse_thresholds
from anyv2v_batch.presets import TASK_PRESETS, task_preset
from anyv2v_batch.settings import (
    ClipSettings,
    EditSettings,
    InversionSettings,
    SettingError,
    WindowSettings,
    backbone_defaults,
)
from anyv2v_batch.templates import TemplateError, template_fields
from anyv2v_batch.video_io import MAX_IMAGE_PIXELS
from anyv2v_batch.windows import WindowLimits

VARIANT_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
SECTIONS = {"clip": ClipSettings, "inversion": InversionSettings, "edit": EditSettings, "window": WindowSettings}
POOLS = ("decode", "editor", "inversion", "sampler", "scorer", "encode")


@dataclass(frozen=True)
class PoolSpec:
    """One stage's workers: `size` actors (GPU pools) or concurrent tasks, each with these resources."""

    size: int | None = None  # None: 1, or for GPU pools a share of the GPUs by cost (pipelines/balance.py)
    num_gpus: float | None = None  # per actor; None: 1 when the cluster has GPUs and the device allows
    num_cpus: float = 1.0  # per actor / task; also its torch thread count
    batch_size: int = 1  # clips per call


@dataclass(frozen=True)
class Limits:
    """Caps on what a shard may make the job read or hold: shards come from people we do not control.
    A sample over a cap becomes an error row; nothing over a cap is read into memory."""

    max_member_bytes: int = 2 * 1024**3  # one tar member (checked from its header, before reading)
    max_sample_bytes: int = 4 * 1024**3  # all members of one sample together
    max_members_per_key: int = 64  # members sharing one key
    max_image_pixels: int = MAX_IMAGE_PIXELS  # an image (edited first frame), checked before decoding its pixels


@dataclass(frozen=True)
class EditorSpec:
    name: str = "provided"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VariantSpec:
    """One edit made of every clip. `edit.prompt` and `edit_prompt` may template sample metadata."""

    name: str
    clip: ClipSettings
    inversion: InversionSettings
    edit: EditSettings
    editor: EditorSpec
    edit_prompt: str = ""  # the instruction for the first-frame editor, if it takes one
    seed: int = 8888  # base of the per-sample seed (see `derive_seed`)
    backbone: str = "i2vgen-xl"  # the job's unless the variant names its own
    model: str | None = None  # hub id or folder of the backbone's weights (None: its official ones)
    window: WindowSettings = WindowSettings()  # clips longer than one model window (windows.py)


@dataclass(frozen=True)
class JobSpec:
    input: tuple[str, ...]
    output: str
    variants: tuple[VariantSpec, ...]
    backbone: str = "i2vgen-xl"
    model: str | None = None
    weights_variant: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    pools: dict[str, PoolSpec] = field(default_factory=dict)
    ray_address: str | None = None
    ray_num_cpus: float | None = None  # CPUs of a local Ray instance (None: all)
    compile: bool = False  # torch.compile the UNet in the inversion and sampler actors
    # a clip's variants share one source branch (computed once per step for all of them). False: each
    # variant computes its own; the outputs are the same bytes either way
    share_source: bool = True
    # inversion and sampling in one actor pool (sized and resourced by pools.sampler): each actor holds one
    # copy of the models instead of one per pool (one load; half the weights' memory on a GPU); inversion
    # and sampling then take turns instead of overlapping. Not with long clips (windows). Same bytes.
    share_model: bool = False
    # stored inversions (written by `anyv2v-batch invert`): reused when valid, recomputed otherwise
    inversions: str | None = None
    store_all_timesteps: bool = False  # `invert`: keep every timestep, not only those the variants read
    # a rerun recomputes (and replaces) pairs made with other settings instead of refusing
    redo_changed: bool = False
    # editors whose models are for non-commercial use only (e.g. instantid) run only when this is true
    accept_noncommercial_models: bool = False
    limits: Limits = field(default_factory=Limits)
    # `verify --repair`: the run makes exactly these pairs ("<shard id>/<key>.<variant>"), done or not, and
    # nothing else (None: every pair that is not done)
    only_pairs: frozenset[str] | None = None
    # `verify --repair` of an inversions store: `invert` makes exactly these entries, (shard id, key,
    # inversion id), each keeping exactly the timesteps it held (None: every entry not stored, keeping
    # what the variants read)
    keep_timesteps: dict[tuple[str, str, str], tuple[int, ...]] | None = None
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)  # quality scores (evaluation.py)
    source: str = "job"  # the file (or "command line") the job came from, for messages
    # filled in by the driver before work (fingerprint.job_fingerprints): variant name -> (fingerprint,
    # its fields as JSON), and "backbone:model" -> weights identity
    fingerprints: dict[str, tuple[str, str]] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    scoring: tuple[str, str] = ("", "")  # (evaluate fingerprint, what scores: JSON), scores.scoring_identity
    # filled in by the driver (pipelines/anyv2v_job.check_models): (backbone, model, window settings) -> the
    # model's windows, so the decode tasks plan windows without importing any backbone
    window_limits: dict[tuple[str, str | None, WindowSettings], WindowLimits] = field(default_factory=dict)

    def pool(self, name: str) -> PoolSpec:
        return self.pools.get(name, PoolSpec())

    def weights_of(self, backbone: str, model: str | None) -> str:
        """The weights identity of a (backbone, model) the variants use ("" before it is computed)."""
        return self.weights.get(f"{backbone}:{model or ''}", "")

    def models(self) -> list[tuple[str, str | None]]:
        """The distinct (backbone, model) pairs the variants use, in order: what each GPU actor loads."""
        return list(dict.fromkeys((v.backbone, v.model) for v in self.variants))


TOP_LEVEL = {
    "input", "output", "variants", "backbone", "model", "weights_variant", "device", "dtype", "seed",
    "clip", "inversion", "edit", "editor", "edit_prompt", "pools", "ray", "compile", "share_source", "share_model",
    "inversions", "store_all_timesteps", "redo_changed", "limits", "evaluate", "window", "preset",
    "accept_noncommercial_models",
}  # fmt: skip
VARIANT_KEYS = {
    "name", "prompt", "clip", "inversion", "edit", "editor", "edit_prompt", "seed", "backbone", "model", "window",
    "preset",
}  # fmt: skip


class JobError(AnyV2VError):
    pass


def _fail(where: str, path: str, message: str) -> JobError:
    return JobError(f"{where}: {path} {message}" if path else f"{where}: {message}")


def _unknown(where: str, path: str, key: str, allowed: set[str]) -> JobError:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(allowed))})"
    full = f"{path}.{key}" if path else key
    return _fail(where, full, f"is not a job field{hint}")


def _mapping(where: str, path: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(where, path, f"must be a mapping, got {type(value).__name__}")
    return value


def _coerce(where: str, path: str, value: Any, default: Any) -> Any:
    """Check a scalar against its default's type (ints where ints are due; an int is a fine float)."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        kind = type(default).__name__
        raise _fail(where, path, f"must be {'a' if kind != 'int' else 'an'} {kind}, got {value!r}")
    return value


def _settings(where: str, path: str, cls: type, base: Any, raw: Any) -> Any:
    raw = _mapping(where, path, raw)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {}
    for key, value in raw.items():
        if key not in names:
            raise _unknown(where, path, key, names)
        if cls is EditSettings and key == "seed":
            raise _fail(where, f"{path}.seed", "is not set per edit: give `seed` at the top or in a variant")
        if cls is ClipSettings and key == "frames" and value == "all":
            values[key] = value  # every frame of the source
            continue
        values[key] = _coerce(where, f"{path}.{key}", value, getattr(base, key))
    settings = dataclasses.replace(base, **values)
    try:
        return settings.validate()
    except SettingError as e:
        raise _fail(where, "", e.for_field(f"{path}.{e.field}")) from None


def _with_preset(where: str, path: str, name: str, backbone: str, edit: EditSettings) -> EditSettings:
    """`edit` with the task preset's settings (presets.py); an unknown or inapplicable preset is refused."""
    try:
        preset = task_preset(name, backbone, where=f"{where}: {path}")
    except AnyV2VError as e:
        raise JobError(str(e)) from None
    return dataclasses.replace(edit, **preset.edit)


def _preset_editor(name: str) -> EditorSpec:
    """The editor a task preset implies, where the job names none (an unknown preset fails in _with_preset)."""
    preset = TASK_PRESETS.get(name)
    return EditorSpec(name=preset.editor) if preset else EditorSpec()


def _editor(where: str, path: str, raw: Any, base: EditorSpec) -> EditorSpec:
    if raw is None:
        return base
    if isinstance(raw, str):
        return EditorSpec(raw, dict(base.options) if raw == base.name else {})
    raw = _mapping(where, path, raw)
    for key in raw:
        if key not in ("name", "options"):
            raise _unknown(where, path, key, {"name", "options"})
    name = _coerce(where, f"{path}.name", raw.get("name", base.name), "")
    options = _mapping(where, f"{path}.options", raw.get("options"))
    return EditorSpec(name, {**(base.options if name == base.name else {}), **options})


def _pool(where: str, path: str, raw: Any) -> PoolSpec:
    raw = _mapping(where, path, raw)
    base = PoolSpec()
    names = {f.name for f in dataclasses.fields(PoolSpec)}
    values = {}
    for key, value in raw.items():
        if key not in names:
            raise _unknown(where, path, key, names)
        default = {"num_gpus": 1.0, "size": 1}.get(key, getattr(base, key))
        values[key] = _coerce(where, f"{path}.{key}", value, default)
    pool = dataclasses.replace(base, **values)
    if pool.size is not None and pool.size < 1:
        raise _fail(where, f"{path}.size", f"must be >= 1, got {pool.size}")
    if pool.batch_size < 1:
        raise _fail(where, f"{path}.batch_size", f"must be >= 1, got {pool.batch_size}")
    if pool.num_cpus <= 0 or (pool.num_gpus is not None and pool.num_gpus < 0):
        raise _fail(where, path, "num_cpus must be > 0 and num_gpus >= 0")
    return pool


def _limits(where: str, raw: Any) -> Limits:
    raw = _mapping(where, "limits", raw)
    names = {f.name for f in dataclasses.fields(Limits)}
    values = {}
    for key, value in raw.items():
        if key not in names:
            raise _unknown(where, "limits", key, names)
        values[key] = _coerce(where, f"limits.{key}", value, getattr(Limits, key))
        if values[key] < 1:
            raise _fail(where, f"limits.{key}", f"must be >= 1, got {value}")
    return Limits(**values)


def _evaluate(where: str, raw: Any, file_mode: Any) -> EvaluateSettings:
    raw = dict(_mapping(where, "evaluate", raw))
    names = {"mode", "model", "aesthetic", "dtype", "thresholds"}
    for key in raw:
        if key not in names:
            raise _unknown(where, "evaluate", key, names)
    try:
        thresholds = parse_thresholds(raw.get("thresholds"))
    except AnyV2VError as e:
        raise _fail(where, "", str(e)) from None
    mode = raw.get("mode", "off")
    if mode == "on":  # --evaluate: the job file's mode, else flag when there are thresholds, else score
        mode = file_mode if file_mode not in (None, "off", "on") else ("flag" if thresholds else "score")
    base = EvaluateSettings()
    values = {k: _coerce(where, f"evaluate.{k}", raw[k], getattr(base, k)) for k in ("model", "dtype") if k in raw}
    if raw.get("aesthetic") is not None:
        values["aesthetic"] = _coerce(where, "evaluate.aesthetic", raw["aesthetic"], "") or None
    settings = EvaluateSettings(mode=_coerce(where, "evaluate.mode", mode, ""), thresholds=thresholds, **values)
    try:
        return settings.validate()
    except AnyV2VError as e:
        raise _fail(where, "", str(e)) from None


def _template(where: str, path: str, template: str) -> str:
    """A prompt template is checked here, before any work: plain `{field}` names only."""
    try:
        template_fields(template)
    except TemplateError as e:
        raise _fail(where, path, str(e)) from None
    return template


def _as_list(where: str, path: str, value: Any) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(i, str) and i for i in items):
        raise _fail(where, path, "must be a path / URL pattern or a non-empty list of them")
    return tuple(items)


def set_path(raw: dict, dotted: str, value: Any) -> None:
    """raw["a"]["b"] = value for "a.b"."""
    *parents, last = dotted.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise JobError(f"--set {dotted}: {p} is not a mapping")
    node[last] = value


def build_job(raw: Any, where: str = "job", overrides: dict[str, Any] | None = None, mode: str = "edit") -> JobSpec:
    """Validate a parsed job (plus command-line overrides, which win everywhere) into a JobSpec.

    mode "invert": the job writes only its `inversions` store, so that is required and `output` is not.
    mode "score": the job scores its existing `output`; `input` and `variants` play no part."""
    raw = copy.deepcopy(dict(_mapping(where, "", raw)))  # overrides are set into it; the caller's stays as it was
    overrides = overrides or {}
    if isinstance(raw.get("editor"), str):
        raw["editor"] = {"name": raw["editor"]}
    file_evaluate = raw.get("evaluate")
    file_mode = file_evaluate.get("mode") if isinstance(file_evaluate, dict) else None
    for dotted, value in overrides.items():
        set_path(raw, dotted, value)
    for key in raw:
        if key not in TOP_LEVEL:
            raise _unknown(where, "", key, TOP_LEVEL)
    if mode == "score":  # scores an existing output: its rows name their sources
        raw.setdefault("input", [])
        raw.pop("variants", None)
    elif "input" not in raw:
        raise _fail(where, "input", "is missing: give shard paths or patterns (or --input)")
    if mode == "invert":
        if not isinstance(raw.get("inversions"), str) or not raw["inversions"]:
            raise _fail(where, "inversions", "is missing: invert writes the inversions store; give --inversions")
        raw.setdefault("output", "")
    elif "output" not in raw or not isinstance(raw["output"], str) or not raw["output"]:
        raise _fail(where, "output", "is missing: give an output folder or URL (or --output)")

    from anyv2v_batch.backbones import BACKBONES

    def backbone_name(path: str, value: Any) -> str:
        value = _coerce(where, path, value, "")
        if value not in BACKBONES:
            raise _fail(where, path, f"must be one of {', '.join(BACKBONES)}, got {value!r}")
        return value

    base_seed = _coerce(where, "seed", raw.get("seed", 8888), 0)
    job_backbone = backbone_name("backbone", raw.get("backbone", "i2vgen-xl"))
    job_model = _coerce(where, "model", raw["model"], "") if raw.get("model") is not None else None
    job_preset = _coerce(where, "preset", raw["preset"], "") if raw.get("preset") else ""
    base_cache: dict[str, dict[str, Any]] = {}

    def base_for(backbone: str) -> dict[str, Any]:
        """The job's top-level sections over its preset over `backbone`'s official defaults."""
        if backbone not in base_cache:
            defaults = backbone_defaults(backbone)
            if job_preset:
                defaults["edit"] = _with_preset(where, "preset", job_preset, backbone, defaults["edit"])
            base_cache[backbone] = {
                name: _settings(where, name, cls, defaults[name], raw.get(name)) for name, cls in SECTIONS.items()
            }
        return base_cache[backbone]

    base_for(job_backbone)  # the top-level sections are checked even if every variant names a backbone
    base_editor = _editor(where, "editor", raw.get("editor"), _preset_editor(job_preset))
    base_edit_prompt = _coerce(where, "edit_prompt", raw.get("edit_prompt", ""), "")

    raw_variants = raw.get("variants")
    if raw_variants is None:
        raw_variants = [{"name": "edit"}]
    if not isinstance(raw_variants, list) or not raw_variants:
        raise _fail(where, "variants", "must be a non-empty list")
    # a command-line override of a section field or the editor beats what a variant says
    per_variant = (*SECTIONS, "editor", "edit_prompt", "backbone", "model", "preset")
    section_overrides = {k: v for k, v in overrides.items() if k.split(".")[0] in per_variant}

    variants = []
    for i, rv in enumerate(raw_variants):
        path = f"variants[{i}]"
        rv = dict(_mapping(where, path, rv))
        for key in rv:
            if key not in VARIANT_KEYS:
                raise _unknown(where, path, key, VARIANT_KEYS)
        if "prompt" in rv:  # shorthand for edit.prompt
            edit = dict(_mapping(where, f"{path}.edit", rv.get("edit")))
            if "prompt" in edit:
                raise _fail(where, f"{path}.prompt", "is given twice (also as edit.prompt)")
            rv["edit"] = {**edit, "prompt": rv.pop("prompt")}
        if isinstance(rv.get("editor"), str):
            rv["editor"] = {"name": rv["editor"]}
        for dotted, value in section_overrides.items():
            set_path(rv, dotted, value)
        name = rv.get("name")
        if not isinstance(name, str) or not VARIANT_NAME.match(name):
            raise _fail(where, f"{path}.name", f"must be letters, digits, '-' or '_', got {name!r}")
        backbone = backbone_name(f"{path}.backbone", rv["backbone"]) if "backbone" in rv else job_backbone
        if rv.get("model") is not None:
            model = _coerce(where, f"{path}.model", rv["model"], "")
        else:  # the job's model is for the job's backbone; another backbone loads its official weights
            model = job_model if backbone == job_backbone else None
        base = base_for(backbone)
        editor_base = base_editor
        if rv.get("preset") is not None and rv["preset"] != job_preset:
            # the variant's own preset: over the job's sections, under the variant's own fields
            preset = _coerce(where, f"{path}.preset", rv["preset"], "")
            if preset:
                base = {**base, "edit": _with_preset(where, f"{path}.preset", preset, backbone, base["edit"])}
            if "editor" not in raw:  # an editor the job names explicitly beats the preset's
                editor_base = _preset_editor(preset)
        sections = {s: _settings(where, f"{path}.{s}", cls, base[s], rv.get(s)) for s, cls in SECTIONS.items()}
        _template(where, f"{path}.edit.prompt", sections["edit"].prompt)
        variants.append(
            VariantSpec(
                name=name,
                clip=sections["clip"],
                inversion=sections["inversion"],
                edit=sections["edit"],
                editor=_editor(where, f"{path}.editor", rv.get("editor"), editor_base),
                edit_prompt=_template(
                    where,
                    f"{path}.edit_prompt",
                    _coerce(where, f"{path}.edit_prompt", rv.get("edit_prompt", base_edit_prompt), ""),
                ),
                seed=_coerce(where, f"{path}.seed", rv.get("seed", base_seed), 0),
                backbone=backbone,
                model=model,
                window=sections["window"],
            )
        )
    names = [v.name for v in variants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise _fail(where, "variants", f"names must be unique; repeated: {', '.join(duplicates)}")

    pools_raw = _mapping(where, "pools", raw.get("pools"))
    for key in pools_raw:
        if key not in POOLS:
            raise _unknown(where, "pools", key, set(POOLS))
    pools = {name: _pool(where, f"pools.{name}", pools_raw.get(name)) for name in POOLS}
    ray_raw = _mapping(where, "ray", raw.get("ray"))
    for key in ray_raw:
        if key not in ("address", "num_cpus"):
            raise _unknown(where, "ray", key, {"address", "num_cpus"})

    optional = {}
    for key in ("weights_variant", "inversions"):
        if raw.get(key) is not None:
            optional[key] = _coerce(where, key, raw[key], "")
    return JobSpec(
        input=_as_list(where, "input", raw["input"]) if raw["input"] or mode != "score" else (),
        output=raw["output"],
        variants=tuple(variants),
        backbone=job_backbone,
        model=job_model,
        device=_coerce(where, "device", raw.get("device", "auto"), ""),
        dtype=_coerce(where, "dtype", raw.get("dtype", "auto"), ""),
        pools=pools,
        ray_address=ray_raw.get("address"),
        ray_num_cpus=ray_raw.get("num_cpus"),
        compile=_coerce(where, "compile", raw.get("compile", False), False),
        share_source=_coerce(where, "share_source", raw.get("share_source", True), True),
        share_model=_coerce(where, "share_model", raw.get("share_model", False), False),
        store_all_timesteps=_coerce(where, "store_all_timesteps", raw.get("store_all_timesteps", False), False),
        redo_changed=_coerce(where, "redo_changed", raw.get("redo_changed", False), False),
        accept_noncommercial_models=_coerce(
            where, "accept_noncommercial_models", raw.get("accept_noncommercial_models", False), False
        ),
        limits=_limits(where, raw.get("limits")),
        evaluate=_evaluate(where, raw.get("evaluate"), file_mode),
        source=where,
        **optional,
    )


def load_job(path: str | Path | None, overrides: dict[str, Any] | None = None, mode: str = "edit") -> JobSpec:
    """Read and validate a job file (None: a job from command-line overrides alone)."""
    if path is None:
        return build_job({}, "command line", overrides, mode)
    path = Path(path)
    if not path.is_file():
        raise JobError(f"job file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise JobError(f"{path}: not valid YAML{at}: {getattr(e, 'problem', None) or e}") from None
    return build_job(raw if raw is not None else {}, str(path), overrides, mode)


def parse_set(assignments: list[str], flag: str = "--set") -> dict[str, Any]:
    """`--set a.b=value` pairs; values are YAML (numbers, booleans, lists, strings)."""
    out = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JobError(f"{flag} {item!r}: expected KEY=VALUE, e.g. pools.sampler.size=4")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = value
    return out
