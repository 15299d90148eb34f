"""Encode: each (clip, variant) becomes its output files and its metadata row (CPU tasks).

Files of an ok pair: `<key>.<variant>.mp4` (H.264), `.png` (the edited first frame) and `.json`
(every setting used; nothing run-dependent, so a rerun writes identical bytes). The metadata row adds
what is run-dependent (timings) and the status.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Any

from anyv2v_batch import __version__
from anyv2v_batch.evaluation import SCORE_COLUMNS
from anyv2v_batch.integrity import digest_column, member_digests
from anyv2v_batch.job import JobSpec
from anyv2v_batch.operators.work import ClipWork, VariantWork, one_line, work_inversion_id
from anyv2v_batch.settings import recorded_fields
from anyv2v_batch.video_io import encode_mp4, encode_png


@dataclasses.dataclass
class PairResult:
    shard: str
    shard_id: str
    key: str
    variant: str
    status: str  # "ok" or "error"
    error: str
    row: dict[str, Any]  # the Parquet row
    files: dict[str, bytes]  # extension ("mp4", "png", "json") -> bytes; empty for an error
    group: str = ""  # the decoded clip / inversion the pair came from (several variants share one)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # per stage


def settings_record(job: JobSpec, work: ClipWork, variant: VariantWork) -> dict[str, Any]:
    """Every setting that made this output (the `.json` beside the clip)."""
    return {
        "key": work.key,
        "variant": variant.name,
        "source_shard": work.shard,
        "backbone": work.backbone,
        "model": work.model,
        "seed": variant.settings.seed,
        "prompt": variant.settings.prompt,
        "negative_prompt": variant.settings.negative_prompt,
        "edit_prompt": variant.edit_prompt,
        "editor": {"name": variant.editor.name, "options": variant.editor.options},
        "clip": recorded_fields(work.clip),
        "inversion": dataclasses.asdict(work.inversion_settings),
        "edit": dataclasses.asdict(variant.settings),
        "source": work.source,
        **long_clip_record(work, variant),
        "settings_fingerprint": job.fingerprints.get(variant.name, ("", ""))[0],
        # what the fingerprint is of: enough to remake the pair should its row be lost (`verify --repair`)
        "settings_fields": json.loads(job.fingerprints.get(variant.name, ("", "{}"))[1]),
        "anyv2v_batch": __version__,
    }


def long_clip_record(work: ClipWork, variant: VariantWork) -> dict[str, Any]:
    """A clip of `frames: all` or of several windows: its length and, per window, frames and seed."""
    if work.clip.frames != "all" and len(work.plan) < 2:
        return {}
    return {
        "frames": work.total,
        "truncated": work.truncated,
        "window": recorded_fields(work.window_settings),
        "windows": [
            {"start": w.start, "frames": w.frames, "seed": s}
            for w, s in zip(work.plan, variant.window_seeds, strict=False)  # no seeds: not sampled
        ],
    }


def metadata_row(
    job: JobSpec, work: ClipWork, variant: VariantWork, status: str, error: str, files: dict[str, bytes]
) -> dict[str, Any]:
    s, c = variant.settings, work.clip
    seconds = {**work.seconds, **variant.seconds}
    return {
        "source_shard": work.shard,
        "shard_id": work.shard_id,
        "key": work.key,
        "variant": variant.name,
        "output_key": f"{work.key}.{variant.name}",
        "status": status,
        "error": error,
        "backbone": work.backbone,
        "model": work.model or "",
        "editor": variant.editor.name,
        "prompt": s.prompt,
        "negative_prompt": s.negative_prompt,
        "edit_prompt": variant.edit_prompt,
        "seed": s.seed,
        **length_fields(work, status),
        "fps": float(c.fps),
        "width": c.width,
        "height": c.height,
        "source_fps": float(work.source.get("fps") or 0.0),
        "source_frames": int(work.source.get("frames") or 0),
        "source_width": int(work.source.get("width") or 0),
        "source_height": int(work.source.get("height") or 0),
        "inversion_steps": work.inversion_settings.steps,
        "steps": s.steps,
        "guidance_scale": s.guidance_scale,
        "inversion_source": work.inversion_source,
        "settings": json.dumps(settings_record(job, work, variant), sort_keys=True),
        # the variant's fingerprint and what it was computed from (fingerprint.py): a rerun with other
        # settings is told which fields changed
        "settings_fingerprint": job.fingerprints.get(variant.name, ("", ""))[0],
        "settings_fields": job.fingerprints.get(variant.name, ("", "{}"))[1],
        **{f"seconds_{k}": float(seconds.get(k, 0.0)) for k in STAGES},
        **score_fields(job, variant, status),
        **window_fields(work, variant, status),
        # what each member's bytes must be (integrity.py); null for an error row
        **{digest_column(ext): None for ext in PAIR_MEMBERS},
        **member_digests(files),
    }


PAIR_MEMBERS = ("json", "mp4", "png")


def length_fields(work: ClipWork, status: str) -> dict[str, Any]:
    """The clip's frame count (what `frames: all` came to), and how long the source and output play."""
    c = work.clip
    frames = work.total or (c.frames if isinstance(c.frames, int) else 0)
    return {
        "frames": frames,
        "truncated": work.truncated,  # cut to clip.max_frames (clip.too_long: truncate)
        "source_seconds": float(work.source.get("seconds") or 0.0),
        "output_seconds": frames / float(c.fps) if status == "ok" else 0.0,
    }


def window_fields(work: ClipWork, variant: VariantWork, status: str) -> dict[str, Any]:
    """How a clip longer than one window was edited: its plan, each window's seed, and the step at each
    join against the median step inside the windows (filter bad seams on `seam_step_max`)."""
    ok = status == "ok"
    return {
        "windows": len(work.plan),
        "window_plan": json.dumps([[w.start, w.frames] for w in work.plan]),
        "window_seeds": list(variant.window_seeds) if ok else [],
        "seam_steps": [float(x) for x in variant.seam_steps] if ok else [],
        "seam_step_max": float(max(variant.seam_steps)) if ok and variant.seam_steps else None,
        "window_edit_hold": [float(x) for x in variant.window_scores] if ok else [],
    }


STAGES = ("read", "decode", "editor", "inversion", "sampler", "scorer", "encode")


def score_fields(job: JobSpec, variant: VariantWork, status: str) -> dict[str, Any]:
    """The scores, verdict and where the pair's files go (every row has these columns; null when not
    scored), and what scored it: `evaluate_fingerprint` ("" without scoring) tells a rerun or `score`
    whether a row's scores are the current settings'."""
    scored = status == "ok" and job.evaluate.enabled
    judged = scored and job.evaluate.judges
    routed = ""
    if status == "ok":
        routed = "filtered" if job.evaluate.mode == "route" and variant.passed is False else "shards"
    return {
        **{c: (float(variant.scores[c]) if scored and c in variant.scores else None) for c in SCORE_COLUMNS},
        "passed": variant.passed if judged else None,
        "failed_checks": list(variant.failed_checks) if judged else None,
        "score_error": variant.score_error if scored else "",
        "routed": routed,
        "scorer": job.scoring[1] if scored else "",
        "scorer_identity": variant.scorer_identity if scored else "",  # model revision, preprocessing, flow
        "evaluate_fingerprint": job.scoring[0] if status == "ok" else "",
    }


def encode_pairs(row: dict[str, Any], job: JobSpec) -> Iterator[dict[str, Any]]:
    """flat_map: a finished ClipWork -> one {"pair": PairResult} per variant."""
    work: ClipWork = row["work"]
    for variant in (v for v in work.variants if v.write):
        started = time.perf_counter()
        error = work.error or variant.error
        files: dict[str, bytes] = {}
        if not error:
            try:
                files = {
                    "mp4": variant.mp4 if variant.mp4 is not None else encode_mp4(variant.frames, work.clip.fps),
                    "png": encode_png(variant.first_frame),
                }
                record = settings_record(job, work, variant) | member_digests(files)
                files["json"] = json.dumps(record, sort_keys=True, indent=1).encode()
            except Exception as e:  # noqa: BLE001
                error, files = f"encode: {one_line(e)}", {}
        variant.seconds["encode"] = time.perf_counter() - started
        status = "error" if error else "ok"
        yield {
            "pair": PairResult(
                work.shard,
                work.shard_id,
                work.key,
                variant.name,
                status,
                error,
                metadata_row(job, work, variant, status, error, files),
                files,
                group=work_inversion_id(work),
                seconds={**work.seconds, **variant.seconds},
            )
        }


def encode_inversions(row: dict[str, Any], job: JobSpec) -> Iterator[dict[str, Any]]:
    """flat_map (the `invert` job): a ClipWork with its inversion -> one stored entry
    `<key>.<inversion id>.safetensors` and its metadata row."""
    from anyv2v_batch.inversion import inversion_to_bytes

    work: ClipWork = row["work"]
    inv_id = work_inversion_id(work)
    if job.keep_timesteps is not None and (work.shard_id, work.key, inv_id) not in job.keep_timesteps:
        return  # a store repair writes its entries only, never a row over another one
    started = time.perf_counter()
    error = work.error or ("" if work.inversion is not None else "not inverted")
    files: dict[str, bytes] = {}
    if not error:
        meta = {
            "model": str(work.model),
            "inversion_id": inv_id,
            "frames_sha256": work.source["frames_sha256"],
            "key": work.key,
            "source_shard": work.shard,
        }
        files = {"safetensors": inversion_to_bytes(work.inversion, meta)}
    work.seconds["encode"] = time.perf_counter() - started
    status = "error" if error else "ok"
    c, inv = work.clip, work.inversion_settings
    row = {
        "source_shard": work.shard,
        "shard_id": work.shard_id,
        "key": work.key,
        "variant": inv_id,
        "status": status,
        "error": error,
        "backbone": work.backbone,
        "model": work.model or "",
        "frames": work.frames_here,
        "window_start": work.start,
        "fps": float(c.fps),
        "width": c.width,
        "height": c.height,
        "inversion_steps": inv.steps,
        "inversion_guidance_scale": inv.guidance_scale,
        "inversion_prompt": inv.prompt,
        "stored_timesteps": len(work.inversion.timesteps) if work.inversion is not None else 0,
        "frames_sha256": work.source.get("frames_sha256", ""),
        "inversion_source": work.inversion_source,
        # what makes the entry again (`verify --repair`): the settings and the timesteps it keeps
        "settings_fields": json.dumps(store_fields(job, work), sort_keys=True) if not error else "",
        **{f"seconds_{k}": float(work.seconds.get(k, 0.0)) for k in STAGES},
        digest_column("safetensors"): None,
        **member_digests(files),
    }
    yield {
        "pair": PairResult(
            work.shard, work.shard_id, work.key, inv_id, status, error, row, files, group=inv_id, seconds=work.seconds
        )
    }


def store_fields(job: JobSpec, work: ClipWork) -> dict[str, Any]:
    """The flat fields a stored inversion was made from: a job that makes it again, byte for byte,
    is built from them (pipelines/verify.py)."""
    from anyv2v_batch.fingerprint import flat

    fields: dict[str, Any] = {
        "backbone": work.backbone,
        "model": work.model,
        "weights": work.weights,
        "weights_variant": job.weights_variant,
        "dtype": job.dtype,
        "timesteps": list(work.inversion.timesteps),
    }
    sections = (("clip", work.clip), ("inversion", work.inversion_settings), ("window", work.window_settings))
    for section, settings in sections:
        flat(section, dataclasses.asdict(settings), fields)
    return fields
