"""`anyv2v-batch score`: the pairs of an existing output brought back as work for the scorer pool, and
their new rows written as row-only parts (compaction then re-routes the files; no clip is made again).

    output shard -> read rows, the written .mp4 / .png and the source video -> ClipWork per clip
                 -> (decode source) -> scorer pool -> rescored rows -> parts -> compact
"""

from __future__ import annotations

import dataclasses
import json
import tarfile
import time
from collections.abc import Iterator
from typing import Any

from anyv2v_batch.job import EditorSpec, JobSpec
from anyv2v_batch.operators.encode import PairResult, score_fields
from anyv2v_batch.operators.read_shards import VIDEO_EXTENSIONS, iter_samples, split_member
from anyv2v_batch.operators.storage import filesystem
from anyv2v_batch.operators.work import ClipWork, VariantWork, one_line
from anyv2v_batch.operators.write import PLACES, tar_url
from anyv2v_batch.settings import ClipSettings, EditSettings, InversionSettings
from anyv2v_batch.video_io import read_image


def _written_files(output: str, shard_id: str, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], dict]:
    """(key, variant) -> {"mp4": bytes, "png": bytes} from the shard's tars, reading only wanted members."""
    found: dict[tuple[str, str], dict] = {}
    for place in PLACES:
        fs, path = filesystem(tar_url(output, place, shard_id))
        if not fs.exists(path):
            continue
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                key, ext = split_member(member.name)
                variant, _, kind = ext.partition(".")
                if (key, variant) in wanted and kind in ("mp4", "png"):
                    found.setdefault((key, variant), {})[kind] = tar.extractfile(member).read()
    return found


def _source_videos(source: str, keys: set[str], job: JobSpec) -> dict[str, tuple[str, bytes]]:
    """key -> (extension, video bytes) for the wanted keys of a source shard."""
    videos = {}
    for sample in iter_samples(source, job.limits):
        if sample.key in keys and not sample.error:
            ext = next((e for e in VIDEO_EXTENSIONS if e in sample.files), "")
            if ext:
                videos[sample.key] = (ext, sample.files[ext])
    return videos


def read_pairs_to_score(item: dict[str, Any], job: JobSpec) -> Iterator[dict[str, Any]]:
    """flat_map: {shard_id, rows: [JSON rows to rescore], sources: {row source: URL}} -> {"work": ClipWork}
    per (clip, clip settings), its variants carrying the written clip and edited first frame."""
    started = time.perf_counter()
    rows = [json.loads(r) for r in item["rows"]]
    shard_id = item["shard_id"]
    files = _written_files(job.output, shard_id, {(r["key"], r["variant"]) for r in rows})
    by_clip: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        settings = json.loads(r["settings"])
        by_clip.setdefault((r["source_shard"], r["key"], json.dumps(settings["clip"], sort_keys=True)), []).append(r)
    videos: dict[str, dict[str, tuple[str, bytes]]] = {}
    for source in sorted({s for s, _, _ in by_clip}):
        url = item["sources"].get(source, source)
        try:
            videos[source] = _source_videos(url, {k for s, k, _ in by_clip if s == source}, job)
        except Exception as e:  # noqa: BLE001 - every pair of an unreadable source fails its scoring
            videos[source] = {"": ("", f"cannot read source shard {url!r}: {one_line(e)}".encode())}
    for (source, key, clip_json), clip_rows in sorted(by_clip.items()):
        clip = ClipSettings(**json.loads(clip_json))
        ext, video = videos[source].get(key, ("", b""))
        problem = ""
        if not ext:
            unreadable = videos[source].get("", ("", b""))[1].decode()
            problem = unreadable or f"source shard {item['sources'].get(source, source)!r} has no video for {key!r}"
        variants = []
        for r in clip_rows:
            settings = json.loads(r["settings"])
            written = files.get((r["key"], r["variant"]), {})
            variant = VariantWork(
                r["variant"],
                dataclasses.replace(EditSettings(), prompt=settings["prompt"]),
                EditorSpec(settings["editor"]["name"]),
                mp4=written.get("mp4"),
                row=r,
            )
            try:
                if "mp4" not in written or "png" not in written:
                    raise ValueError(f"the output tars of {shard_id!r} hold no .mp4 / .png for it")
                variant.first_frame = read_image(written["png"], name=f"{key}.{r['variant']}.png")
            except Exception as e:  # noqa: BLE001
                variant.score_error = one_line(e)
            variant.score_error = variant.score_error or problem
            variants.append(variant)
        work = ClipWork(
            shard=source, shard_id=shard_id, key=key, meta={}, files={}, video=video if ext else None,
            video_ext=ext, clip=clip, inversion_settings=InversionSettings(), variants=variants,
        )  # fmt: skip
        work.seconds["read"] = time.perf_counter() - started
        started = time.perf_counter()
        yield {"work": work}


def rescored_parts(row: dict[str, Any], job: JobSpec) -> Iterator[dict[str, Any]]:
    """flat_map: a scored ClipWork -> one row-only part per pair: its old row with the new scores."""
    work: ClipWork = row["work"]
    for variant in work.variants:
        old = dict(variant.row or {})
        seconds = float(variant.seconds.get("scorer", 0.0))
        new = old | score_fields(job, variant, "ok") | {"seconds_scorer": seconds}
        pair = PairResult(
            work.shard, work.shard_id, work.key, variant.name, "ok", "", new, {}, seconds={"scorer": seconds}
        )
        yield {"pair": pair}
