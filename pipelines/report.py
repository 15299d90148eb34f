"""`anyv2v-batch report`: a static HTML report of a job's output, for a person to look at.

    report/index.html        per variant: counts, the distribution of each score, seconds per stage
    report/gallery-<n>.html  per variant: a sample of pairs, source | edited first frame | output,
                             animated, with their scores, sortable by any score (worst first)
    report/errors.html       the error rows and their messages
    report/media/            animated WebP previews (and the output mp4s) the pages show
    report/report.json       the numbers the pages show, for scripts

What is read and how it is sampled: report_stats. Then each tar holding a chosen pair is streamed once
and only the chosen members are read; each input shard likewise for the sources (a shard that is gone
leaves its sources shown as unavailable). Previews are animated WebP (an <img>: any number load lazily
on one page, where browsers cap the <video> players a page may run). Every file is written atomically
(storage.atomic_write), the pages last; links are relative and nothing is fetched from elsewhere, so
the folder works opened from disk or copied to a bucket.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.integrity import member_problem
from anyv2v_batch.operators.read_shards import VIDEO_EXTENSIONS, split_member
from anyv2v_batch.operators.storage import atomic_write, check_writable, exists, filesystem, join, list_files, remove
from anyv2v_batch.pipelines import report_html
from anyv2v_batch.pipelines.report_stats import (
    METRICS,
    PREVIEW_SIDE,
    Item,
    choose_sample,
    digest,
    gather_stats,
    metadata_files,
    one_line,
)

MAX_MEMBER_BYTES = 2 * 1024**3  # a tar member larger than this is not read (a lying or hostile header)


# ---- media


def stream_members(url: str, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the members of a tar that `wanted` accepts, in one streaming pass; no other
    member is read into memory."""
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        for member in tar:
            if member.isfile() and member.size <= MAX_MEMBER_BYTES and wanted(member.name):
                handle = tar.extractfile(member)
                yield member.name, handle.read() if handle is not None else b""
            tar.members.clear()  # tarfile keeps every header it has read


def preview(frames: np.ndarray | list[np.ndarray], fps: float) -> bytes:
    """An animated (or, for one frame, still) WebP of the frames, its longer side at most PREVIEW_SIDE."""
    from PIL import Image

    images = []
    for frame in frames:
        image = Image.fromarray(frame)
        scale = PREVIEW_SIDE / max(image.size)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        images.append(image)
    buffer = io.BytesIO()
    if len(images) == 1:
        images[0].save(buffer, format="WEBP", quality=80, method=4)
    else:
        duration = max(20, round(1000 / fps)) if fps and fps > 0 else 125
        images[0].save(
            buffer,
            format="WEBP",
            save_all=True,
            append_images=images[1:],
            duration=duration,
            loop=0,
            quality=75,
            method=4,
        )
    return buffer.getvalue()


STRIP_FRAMES, STRIP_WIDTH = 8, 620  # a gallery card's inner width


def strip(frames: np.ndarray | list[np.ndarray]) -> bytes:
    """A still WebP of up to STRIP_FRAMES frames, evenly spaced from first to last, side by side: the
    motion at a glance (in print, a screenshot, or where animation is off). Small frames are enlarged
    with nearest-neighbour, so that their pixels stay sharp."""
    from PIL import Image

    picks = np.unique(np.linspace(0, len(frames) - 1, min(STRIP_FRAMES, len(frames))).round().astype(int))
    height, width = frames[0].shape[:2]
    cell = max(1, (STRIP_WIDTH - 2 * (len(picks) - 1)) // len(picks))  # 2-pixel gaps
    size = (cell, max(1, round(height * cell / width)))
    method = Image.Resampling.NEAREST if cell >= width else Image.Resampling.LANCZOS
    sheet = Image.new("RGB", (len(picks) * (cell + 2) - 2, size[1]), (255, 255, 255))
    for i, f in enumerate(picks):
        sheet.paste(Image.fromarray(np.asarray(frames[f])).resize(size, method), (i * (cell + 2), 0))
    buffer = io.BytesIO()
    sheet.save(buffer, format="WEBP", quality=85, method=4)
    return buffer.getvalue()


def decode_all(data: bytes) -> list[np.ndarray]:
    """Every frame of an output clip (already at its size and rate), RGB uint8."""
    import av

    with av.open(io.BytesIO(data)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError("no frames")
    return frames


def decode_source(data: bytes, row: dict[str, Any], fit: str, name: str) -> np.ndarray:
    """A source clip as the job saw it: the row's frame count, fps, size and the variant's fitting."""
    from anyv2v_batch.video_io import read_video

    frames, fps, width, height = int(row["frames"]), float(row["fps"]), int(row["width"]), int(row["height"])
    return read_video(io.BytesIO(data), frames, fps, width, height, fit, name=name).frames  # type: ignore[arg-type]


CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".json": "application/json", ".webp": "image/webp", ".mp4": "video/mp4",
}  # fmt: skip


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(posixpath.splitext(name)[1], "application/octet-stream")


class MediaFolder:
    """The report's media/ folder: what this report wrote there, so a former report's leftovers can go."""

    def __init__(self, report: str):
        self.report = report
        self.written: set[str] = set()

    def write(self, name: str, data: bytes) -> str:
        atomic_write(join(self.report, "media", name), data, content_type(name))
        self.written.add(name)
        return f"media/{name}"

    def remove_others(self) -> None:
        for url in list_files(join(self.report, "media"), ""):
            if posixpath.basename(url) not in self.written:
                remove(url)


def output_tar(output: str, row: dict[str, Any]) -> str:
    folder = "filtered/shards" if row["routed"] == "filtered" else "shards"
    return join(output, folder, f"{row['shard_id']}.tar")


def make_media(output: str, media: MediaFolder, items: list[Item], log: Callable[[str], None]) -> None:
    """Previews of the chosen pairs: output and edited first frame from the output's tars (each tar
    streamed once), the source clip from its input shard. What cannot be read is recorded in
    `item.missing`, and the page says so instead of showing a broken picture."""
    from PIL import Image

    by_tar: dict[str, dict[str, tuple[Item, str]]] = {}
    for it in items:
        base = f"{it.row['key']}.{it.row['variant']}"
        for ext in ("mp4", "png", "json"):
            by_tar.setdefault(output_tar(output, it.row), {})[f"{base}.{ext}"] = (it, ext)
    fits: dict[str, str] = {}  # item id -> how its clip was fitted to the size (from its settings record)
    for url, wanted in sorted(by_tar.items()):
        found: set[str] = set()
        try:
            for name, data in stream_members(url, wanted.__contains__):
                it, ext = wanted[name]
                found.add(name)
                if problem := member_problem(it.row, ext, data):  # never shown as if it were the output
                    it.missing[_ROLES.get(ext, "source")] = f"{name} is {problem} (`anyv2v-batch verify --repair`)"
                    log(f"{url}: {name} is {problem}; not shown (`anyv2v-batch verify --repair` remakes it)")
                    continue
                try:
                    if ext == "mp4":
                        it.media["mp4"] = media.write(f"{it.id}.out.mp4", data)
                        frames = decode_all(data)
                        it.media["output"] = media.write(f"{it.id}.out.webp", preview(frames, it.row["fps"]))
                        it.media["output_strip"] = media.write(f"{it.id}.out.strip.webp", strip(frames))
                    elif ext == "png":
                        frame = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
                        it.media["first"] = media.write(f"{it.id}.first.webp", preview([frame], 0))
                    else:
                        record = json.loads(data)
                        fits[it.id] = str((record.get("clip") or {}).get("resize") or "stretch")
                        it.row["source_shard"] = it.row["source_shard"] or record.get("source_shard")
                except Exception as e:  # noqa: BLE001 - one bad member: that picture is missing
                    it.missing[_ROLES.get(ext, "source")] = f"{name}: {one_line(e)}"
        except Exception as e:  # noqa: BLE001 - an unreadable tar: its pictures are missing
            log(f"cannot read {url}: {one_line(e)}")
            for it, ext in wanted.values():
                it.missing.setdefault(_ROLES.get(ext, "source"), f"cannot read {url}: {one_line(e)}")
        for name, (it, ext) in wanted.items():
            if name not in found and ext in _ROLES:
                it.missing.setdefault(_ROLES[ext], f"{name} is not in {url}")
    make_sources(media, items, fits, log)


_ROLES = {"mp4": "output", "png": "first"}


def make_sources(media: MediaFolder, items: list[Item], fits: dict[str, str], log: Callable[[str], None]) -> None:
    """The source previews, each input shard streamed once; a shard that is gone (moved, deleted, no
    credentials here) leaves its sources shown as unavailable."""
    by_shard: dict[str, dict[str, list[Item]]] = {}
    for it in items:
        if it.row["source_shard"]:
            by_shard.setdefault(str(it.row["source_shard"]), {}).setdefault(str(it.row["key"]), []).append(it)
        else:
            it.missing["source"] = "the row names no source shard"
    for shard, keys in sorted(by_shard.items()):
        try:
            reachable = exists(shard)
        except Exception:  # noqa: BLE001 - e.g. a store without credentials here
            reachable = False
        if not reachable:
            log(f"source shard {shard} is not reachable: its sources are shown as unavailable")
            for it in (it for its in keys.values() for it in its):
                it.missing["source"] = f"source shard {shard} is not reachable"
            continue

        def is_source_video(name: str, keys: dict = keys) -> bool:
            key, ext = split_member(name)
            return key in keys and ext in VIDEO_EXTENSIONS

        done: dict[tuple, tuple[str, str]] = {}  # variants that fit a clip alike share its previews
        try:
            for name, data in stream_members(shard, is_source_video):
                key = split_member(name)[0]
                for it in keys[key]:
                    if "source" in it.media:
                        continue
                    fit = fits.get(it.id, "stretch")
                    geometry = (key, it.row["frames"], it.row["fps"], it.row["width"], it.row["height"], fit)
                    try:
                        if geometry not in done:
                            clip = decode_source(data, it.row, fit, name)
                            stem = digest(shard, *geometry)
                            done[geometry] = (
                                media.write(f"{stem}.src.webp", preview(clip, it.row["fps"])),
                                media.write(f"{stem}.src.strip.webp", strip(clip)),
                            )
                        it.media["source"], it.media["source_strip"] = done[geometry]
                        it.missing.pop("source", None)
                    except Exception as e:  # noqa: BLE001 - an undecodable source: shown as unavailable
                        it.missing["source"] = f"{name}: {one_line(e)}"
        except Exception as e:  # noqa: BLE001
            log(f"cannot read source shard {shard}: {one_line(e)}")
            for it in (it for its in keys.values() for it in its):
                it.missing.setdefault("source", f"cannot read {shard}: {one_line(e)}")
        for it in (it for its in keys.values() for it in its):
            if "source" not in it.media:
                it.missing.setdefault("source", f"no video of {it.row['key']!r} in {shard}")


# ---- the report


MARKER = "report.json"


@dataclass
class ReportSummary:
    index: str
    variants: int
    rows: int
    errors: int
    shown: int
    missing_sources: int

    def line(self) -> str:
        return (
            f"wrote {self.index}: {self.variants} variant(s), {self.rows} pairs ({self.errors} errors), "
            f"{self.shown} in the galleries"
            + (f", {self.missing_sources} with the source unavailable" if self.missing_sources else "")
        )


def check_report_target(output: str, report: str) -> None:
    """Refuse, before reading anything, a report folder that cannot be written, is the output itself or
    lies in it where the job writes, or holds other files than a former report."""
    check_writable(report, "report folder")
    target = _absolute(report)
    for place in ("", "shards", "metadata", "filtered", "_parts"):
        where = _absolute(join(output, place) if place else output)
        if target == where or (place and target.startswith(where + "/")):
            what = f"inside {place}/ of the output" if place else "the output itself"
            raise AnyV2VError(f"the report folder {report!r} is {what}; choose another -o folder")
    fs, path = filesystem(report)
    if fs.exists(path) and fs.ls(path, detail=False) and not fs.exists(posixpath.join(path, MARKER)):
        raise AnyV2VError(
            f"the report folder {report!r} holds other files (no {MARKER} of a former report); choose an empty "
            "or new folder"
        )


def _absolute(url: str) -> str:
    return url.rstrip("/") if "://" in url else os.path.realpath(url)


def write_report(
    output: str,
    report: str,
    per_variant: int = 200,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> ReportSummary:
    """Write the HTML report of the job output `output` into the folder / URL `report`."""
    if per_variant < 1:
        raise AnyV2VError(f"--per-variant must be at least 1, got {per_variant}")
    check_report_target(output, report)
    if not exists(output):
        raise AnyV2VError(f"output {output!r} does not exist")
    files = metadata_files(output)
    if not files:
        raise AnyV2VError(
            f"{output!r} is not an anyv2v-batch output: it has no metadata/*.parquet (give the --output of a "
            "finished `anyv2v-batch run`)"
        )
    stats = gather_stats(files)
    chosen = choose_sample(files, stats, per_variant, seed)
    names = sorted(stats)
    items = [it for name in names for it in chosen[name]]
    log(f"{sum(v.rows for v in stats.values())} rows in {len(files)} metadata files; making {len(items)} previews")
    media = MediaFolder(report)
    make_media(output, media, items, log)
    pages = report_html.render(output, names, stats, chosen, per_variant, seed)
    numbers = {
        "output": output,
        "per_variant": per_variant,
        "seed": seed,
        "metrics": {m.name: {"label": m.label, "higher_is_better": m.higher_is_better} for m in METRICS},
        "variants": {
            name: {
                **stats[name].summary(),
                "gallery": pages.galleries[name],
                "shown": [
                    {
                        "shard_id": it.row["shard_id"],
                        "key": it.row["key"],
                        "sample": it.sample,
                        "media": it.media,
                        "missing": it.missing,
                    }
                    for it in chosen[name]
                ],
            }
            for name in names
        },
    }
    for page, html in pages.files.items():
        if page != "index.html":
            atomic_write(join(report, page), html.encode(), content_type(page))
    atomic_write(join(report, MARKER), json.dumps(numbers, indent=1, default=float).encode(), content_type(MARKER))
    atomic_write(join(report, "index.html"), pages.files["index.html"].encode(), content_type("index.html"))
    media.remove_others()
    return ReportSummary(
        index=join(report, "index.html"),
        variants=len(names),
        rows=sum(v.rows for v in stats.values()),
        errors=sum(v.error for v in stats.values()),
        shown=len(items),
        missing_sources=sum("source" in it.missing for it in items),
    )
