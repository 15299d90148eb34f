"""What makes a variant's outputs what they are, as one fingerprint.

Every output row records its variant's fingerprint and the fields it was made from. A rerun into the
same output compares them: pairs made with other settings under the same variant name are never
counted as done and silently kept beside new ones; the run refuses, naming the fields that changed,
unless asked to redo them (`--redo-changed`).

The fields are everything that changes an output: backbone, weights (a local folder's content digest;
a hub id's name), dtype, the clip / inversion / edit settings with the prompt *templates*, the editor
and its options, the base seed, and whether variants share a source branch (float rounding). Not in
it: device, pools, batch sizes and `compile`, which change speed, and outputs only by float rounding
at most.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from anyv2v_batch.job import JobSpec, VariantSpec
from anyv2v_batch.settings import recorded_fields


def flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for k in sorted(value):
            flat(f"{prefix}.{k}", value[k], out)
    else:
        out[prefix] = json.loads(json.dumps(value, default=str))  # plain JSON values only


def variant_fields(job: JobSpec, variant: VariantSpec, model: str, weights: str) -> dict[str, Any]:
    """The flat {"edit.steps": 50, ...} of everything that changes this variant's outputs."""
    edit = recorded_fields(variant.edit)  # fields added later count only once set (settings.ADDED_LATER)
    edit.pop("seed")  # a variant's seed is `seed`; the edit's own is derived per sample
    fields: dict[str, Any] = {
        "backbone": variant.backbone,
        "model": model,
        "weights": weights,
        "weights_variant": job.weights_variant,
        "dtype": job.dtype,
        "share_source": job.share_source,
        "seed": variant.seed,
        "edit_prompt": variant.edit_prompt,
        "editor.name": variant.editor.name,
    }
    flat("editor.options", dict(variant.editor.options), fields)
    sections = (("clip", variant.clip), ("inversion", variant.inversion), ("edit", edit), ("window", variant.window))
    for section, settings in sections:
        values = settings if isinstance(settings, dict) else recorded_fields(settings)
        if not values and section == "window":
            continue  # all defaults: fingerprints of outputs made before windows existed stay valid
        for k in sorted(values):
            flat(f"{section}.{k}", values[k], fields)
    return fields


def fingerprint(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def changed_fields(old: dict[str, Any], new: dict[str, Any], most: int = 4) -> str:
    """'edit.steps 5 -> 4, edit.prompt ...' for the fields that differ (the first `most` of them)."""
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, "<unset>") != new.get(k, "<unset>"))

    def show(value: Any) -> str:
        text = json.dumps(value) if value != "<unset>" else "unset"
        return text if len(text) <= 40 else text[:37] + "..."

    parts = [f"{k} {show(old.get(k, '<unset>'))} -> {show(new.get(k, '<unset>'))}" for k in keys[:most]]
    more = f" and {len(keys) - most} more" if len(keys) > most else ""
    return ", ".join(parts) + more


def job_fingerprints(job: JobSpec) -> JobSpec:
    """The job with each variant's fingerprint and fields (`job.fingerprints`) and each model's weights
    identity (`job.weights`), computed once in the driver."""
    from anyv2v_batch.backbones import backbone_class
    from anyv2v_batch.loading import weights_identity
    from anyv2v_batch.scores import scoring_identity

    weights: dict[str, str] = {}
    prints: dict[str, tuple[str, str]] = {}
    for v in job.variants:
        model = v.model or backbone_class(v.backbone).default_model
        key = f"{v.backbone}:{v.model or ''}"
        if key not in weights:
            weights[key] = weights_identity(model)
        fields = variant_fields(job, v, model, weights[key])
        prints[v.name] = (fingerprint(fields), json.dumps(fields, sort_keys=True))
    return dataclasses.replace(job, fingerprints=prints, weights=weights, scoring=scoring_identity(job.evaluate))
