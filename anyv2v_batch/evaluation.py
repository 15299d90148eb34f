"""What a job does with quality scores: which scorer, which thresholds, and what failing means.

    mode  off    no scoring (the default)
          score  the `score_*` columns only
          flag   the columns, plus `passed` and `failed_checks` from the thresholds
          route  as flag, and failing pairs go to `filtered/shards/<shard>.tar` (rows stay in `metadata/`)

A threshold is a minimum (`clip_text: 0.25`) or a range (`source_similarity: {max: 0.98}`). A failed
check is named by its settings path below `thresholds`: `clip_text.min`, `source_similarity.max`. The
scores themselves, and the fingerprint of how they are made, come from `scores`; this module is plain
data and rules, loaded by the job parser without any model library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from anyv2v_batch.errors import AnyV2VError

DEFAULT_SCORER_MODEL = "openai/clip-vit-large-patch14"
METRICS = (
    "clip_text", "clip_consecutive", "edit_hold", "source_similarity", "motion_fidelity", "aesthetic_min",
    "aesthetic_mean",
)  # fmt: skip
SCORE_COLUMNS = tuple(f"score_{m}" for m in METRICS)
MODES = ("off", "score", "flag", "route")


@dataclass(frozen=True)
class Threshold:
    min: float | None = None
    max: float | None = None

    def failures(self, metric: str, value: float | None) -> list[str]:
        """The checks this value fails; an absent or NaN score fails every bound it has."""
        missing = value is None or math.isnan(value)
        out = []
        if self.min is not None and (missing or value < self.min):
            out.append(f"{metric}.min")
        if self.max is not None and (missing or value > self.max):
            out.append(f"{metric}.max")
        return out


@dataclass(frozen=True)
class EvaluateSettings:
    mode: str = "off"
    model: str = DEFAULT_SCORER_MODEL  # any transformers CLIPModel: hub id or local folder
    aesthetic: str | None = None  # LAION aesthetic head (safetensors file or hub id); None: no aesthetic scores
    dtype: str = "float32"
    thresholds: tuple[tuple[str, Threshold], ...] = field(default_factory=tuple)  # sorted by metric

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def judges(self) -> bool:
        return self.mode in ("flag", "route")

    def validate(self) -> EvaluateSettings:
        if self.mode not in MODES:
            raise AnyV2VError(f"evaluate.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            raise AnyV2VError(f"evaluate.dtype must be float32, float16 or bfloat16, got {self.dtype!r}")
        if not self.model:
            raise AnyV2VError("evaluate.model must be a CLIP model's hub id or folder")
        for metric, t in self.thresholds:
            if metric.startswith("aesthetic") and not self.aesthetic:
                raise AnyV2VError(
                    f"evaluate.thresholds.{metric} needs the aesthetic scores: set evaluate.aesthetic to the "
                    "LAION aesthetic head (safetensors file or hub id), or drop the threshold"
                )
            if t.min is not None and t.max is not None and t.min > t.max:
                raise AnyV2VError(f"evaluate.thresholds.{metric}: min {t.min} is above max {t.max}")
        if self.thresholds and not self.judges:
            raise AnyV2VError(
                f"evaluate.thresholds are set but evaluate.mode is {self.mode!r}, which ignores them; "
                "use evaluate.mode=flag or route"
            )
        return self

    def judge(self, scores: dict[str, float | None]) -> tuple[bool, list[str]]:
        """(passed, failed checks) of one pair's `score_*` values."""
        failed = [f for metric, t in self.thresholds for f in t.failures(metric, scores.get(f"score_{metric}"))]
        return not failed, failed

    def record(self) -> dict[str, Any]:
        """The settings as plain data (for rows and the fingerprint)."""
        return {
            "mode": self.mode,
            "model": self.model,
            "aesthetic": self.aesthetic,
            "dtype": self.dtype,
            "thresholds": {m: {k: v for k, v in (("min", t.min), ("max", t.max)) if v is not None}
                           for m, t in self.thresholds},
        }  # fmt: skip


def parse_thresholds(raw: Any, where: str = "evaluate.thresholds") -> tuple[tuple[str, Threshold], ...]:
    """{metric: number (a minimum) | {min: .., max: ..}} -> sorted (metric, Threshold) pairs."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise AnyV2VError(f"{where} must be a mapping of metric to threshold, got {type(raw).__name__}")

    def number(path: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise AnyV2VError(f"{path} must be a number, got {value!r}")
        return float(value)

    out = []
    for metric, value in raw.items():
        path = f"{where}.{metric}"
        if metric not in METRICS:
            raise AnyV2VError(f"{path} is not a metric (known: {', '.join(METRICS)})")
        if isinstance(value, dict):
            unknown = sorted(set(value) - {"min", "max"})
            if unknown or not value:
                raise AnyV2VError(f"{path} takes min and/or max, got {', '.join(unknown) or 'nothing'}")
            t = Threshold(*(number(f"{path}.{k}", value[k]) if k in value else None for k in ("min", "max")))
        else:
            t = Threshold(min=number(path, value))
        out.append((metric, t))
    return tuple(sorted(out))


def check_scorer(settings: EvaluateSettings, device: str) -> None:
    """What the scorer's settings and files decide, before any model loads or Ray starts: its model is a
    CLIP model that can be read (a folder, or a hub id, from the cache when offline), its aesthetic head
    exists, its dtype runs on the device."""
    if not settings.enabled:
        return
    from anyv2v_batch.loading import load_json

    if settings.dtype == "float16" and device == "cpu":
        raise AnyV2VError("evaluate.dtype float16 does not run on the CPU; use float32 (or bfloat16)")
    try:
        config = load_json(settings.model, "", "config.json")
    except AnyV2VError as e:
        raise AnyV2VError(
            f"cannot read the scorer's config.json from {settings.model!r}; give --evaluate-model (evaluate.model) a "
            f"CLIP model's hub id (in the hub cache when HF_HUB_OFFLINE is set) or local folder ({e})"
        ) from None
    if config.get("model_type") != "clip":
        raise AnyV2VError(
            f"evaluate.model {settings.model!r} is not a CLIP model (its config says model_type "
            f"{config.get('model_type')!r}); give a transformers CLIPModel's hub id or folder"
        )
    head = settings.aesthetic
    if head and (head.startswith(("/", ".", "~")) or not _looks_like_hub_id(head)):
        from pathlib import Path

        if not Path(head).expanduser().exists():
            raise AnyV2VError(f"evaluate.aesthetic {head!r} does not exist; give the head's safetensors file or hub id")


def _looks_like_hub_id(text: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)?", text) is not None
