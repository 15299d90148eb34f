"""`anyv2v-batch score`: the pairs of an existing output brought back as work for the scorer pool, and
their new rows written as row-only parts (compaction then re-routes the files; no clip is made again).

    output shard -> read rows, the written .mp4 / .png and the source video -> ClipWork per clip
                 -> (decode source) -> scorer pool -> rescored rows -> parts -> compact
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.integrity import digest_column, member_digests, member_problem
from anyv2v_batch.job import EditorSpec, JobSpec
from anyv2v_batch.operators.encode import PAIR_MEMBERS, PairResult, score_fields
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
                for kind in ("mp4", "png"):
                    if problem := member_problem(r, kind, written[kind]):
                        raise ValueError(f"{key}.{r['variant']}.{kind} is {problem}; `anyv2v-batch verify --repair`")
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


# ---- clips edited by other tools: a plain WebDataset of `<key>.mp4` (+ `.edited.png`, `.json` / `.txt`)

EDITED_FRAME_EXTENSIONS = ("edited.png", "edited.jpg", "png", "jpg")


def clip_geometry(data: bytes, label: str) -> tuple[ClipSettings, np.ndarray]:
    """An edited clip's own frame count, frame rate and size (it is scored as it is), and its first frame."""
    from anyv2v_batch.video_decode import decoders_to_try, open_video

    failures = []
    for which in decoders_to_try("auto"):
        try:
            video = open_video(io.BytesIO(data), which)
            first = video.frames([0])[0]
            if not video.fps > 0 or video.num_frames < 2:
                raise ValueError("no frame rate or fewer than 2 frames")
            height, width = first.shape[:2]
            clip = ClipSettings(frames=video.num_frames, fps=float(video.fps), width=int(width), height=int(height))
            return clip, first
        except Exception as e:  # noqa: BLE001 - decord and PyAV raise many kinds
            failures.append(f"{which}: {one_line(e)}")
    raise ValueError(f"cannot read the edited clip {label!r} ({'; '.join(failures)})")


def read_edited_samples(item: dict[str, Any], job: JobSpec, name: str) -> Iterator[dict[str, Any]]:
    """flat_map: {shard, shard_id, done, sources: {key: source shard URL}} -> {"work": ClipWork} per edited
    clip not yet scored. The source is brought to the edited clip's frames, fps and size (stretch); the
    edited first frame is `<key>.edited.png` (or `.png` / `.jpg`), else the clip's own first frame; the
    prompt is the `.json`'s `prompt` or `caption`, or the `.txt`."""
    from anyv2v_batch.imaging import fit_frame
    from anyv2v_batch.operators.read_shards import sample_metadata
    from anyv2v_batch.operators.work import pair_id

    done, started = set(item["done"]), time.perf_counter()
    by_source: dict[str, list] = {}
    edited = []
    for sample in iter_samples(item["shard"], job.limits):
        if pair_id(sample.key, name) in done:
            continue
        edited.append(sample)
        by_source.setdefault(item["sources"].get(sample.key, ""), []).append(sample.key)
    videos: dict[str, tuple[str, bytes]] = {}
    for source, keys in by_source.items():
        if source:
            videos |= _source_videos(source, set(keys), job)
    for sample in edited:
        files, key = sample.files, sample.key
        ext = next((e for e in VIDEO_EXTENSIONS if e in files), "")
        variant = VariantWork(name, EditSettings(), EditorSpec("external"), mp4=files.get(ext))
        clip, error = ClipSettings(), sample.error
        try:
            if not error and not ext:
                raise ValueError(f"sample {key!r} has no edited clip ({', '.join('.' + e for e in VIDEO_EXTENSIONS)})")
            if not error:
                clip, variant.first_frame = clip_geometry(files[ext], f"{key}.{ext}")
                meta = sample_metadata(key, files)
                prompt = meta.get("prompt") or meta.get("caption")
                if not isinstance(prompt, str) or not prompt:
                    raise ValueError(f"sample {key!r} has no prompt (.json `prompt` / `caption`, or .txt)")
                variant.settings = dataclasses.replace(EditSettings(), prompt=prompt)
                frame_ext = next((e for e in EDITED_FRAME_EXTENSIONS if e in files), "")
                if frame_ext:
                    image = read_image(
                        files[frame_ext], name=f"{key}.{frame_ext}", max_pixels=job.limits.max_image_pixels
                    )
                    variant.first_frame = fit_frame(image, clip.width, clip.height)
                if key not in videos:
                    raise ValueError(f"no source clip for {key!r} in the --sources shards")
        except (ValueError, AnyV2VError) as e:
            error = str(e)
        source_ext, video = videos.get(key, ("", None))
        work = ClipWork(
            shard=item["sources"].get(key, ""), shard_id=item["shard_id"], key=key,
            meta={"edited_shard": item["shard"]}, files={}, video=video, video_ext=source_ext, clip=clip,
            inversion_settings=InversionSettings(), variants=[variant], error=error,
        )  # fmt: skip
        work.seconds["read"] = time.perf_counter() - started
        started = time.perf_counter()
        yield {"work": work}


def external_parts(row: dict[str, Any], job: JobSpec) -> Iterator[dict[str, Any]]:
    """flat_map: a scored edited clip -> its part: the clip, its first frame and a row with the scores,
    or an error row."""
    from anyv2v_batch.operators.encode import STAGES
    from anyv2v_batch.video_io import encode_png

    work: ClipWork = row["work"]
    variant = work.variants[0]
    error = work.error or variant.error
    status = "error" if error else "ok"
    c = work.clip
    record = {"key": work.key, "variant": variant.name, "edited_shard": work.meta.get("edited_shard", ""),
              "source_shard": work.shard, "prompt": variant.settings.prompt, "source": work.source,
              "clip": dataclasses.asdict(c), "editor": {"name": "external", "options": {}}}  # fmt: skip
    files: dict[str, bytes] = {}
    if not error:
        files = {"mp4": variant.mp4, "png": encode_png(variant.first_frame)}
        files["json"] = json.dumps(record | member_digests(files), sort_keys=True, indent=1).encode()
    seconds = {**work.seconds, **variant.seconds}
    new = {
        "source_shard": work.shard, "shard_id": work.shard_id, "key": work.key, "variant": variant.name,
        "output_key": f"{work.key}.{variant.name}", "status": status, "error": error, "editor": "external",
        "prompt": variant.settings.prompt, "frames": c.frames, "fps": float(c.fps), "width": c.width,
        "height": c.height, "settings": json.dumps(record, sort_keys=True),
        **{f"seconds_{k}": float(seconds.get(k, 0.0)) for k in STAGES},
        **score_fields(job, variant, status),
        **{digest_column(ext): None for ext in PAIR_MEMBERS}, **member_digests(files),
    }  # fmt: skip
    yield {"pair": PairResult(work.shard, work.shard_id, work.key, variant.name, status, error, new, files,
                              seconds=seconds)}  # fmt: skip
