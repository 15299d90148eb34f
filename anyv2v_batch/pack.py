"""Pack a folder of videos into the WebDataset shards a job reads: the step before `shards -> ...`.

What is found, at any depth under FOLDER (hidden files and folders, and the output folder, are left out):

- `<dir>/<name>.mp4` (.webm .mkv .avi .mov .m4v): a video; its key is <name> with every run of characters
  other than letters, digits, `_` and `-` replaced by `_` (`Man Walking.mp4` -> `Man_Walking`);
- `<dir>/<name>.edited.png` (.jpg .jpeg .webp): its edited first frame (the simple convention);
- `<dir>/<name>/edited_first_frame/<edit>.png` (the official AnyV2V demo layout): one sample per edited
  frame, keyed `<key>__<edit>` (the video's bytes go into each);
- `<dir>/<name>.txt`: its caption;
- `--captions FILE` (.json, .yaml / .yml, .csv): a mapping `{video: caption}` or `{video: {field: value}}`,
  or a list of records / CSV rows naming the video in `file`, `video`, `video_name` or `key` (the official
  `group_config.json` is such a list; its `edited_first_frame_path` picks one edited frame of the video by
  file name). A video is named by its path under FOLDER, its file name, its stem or its key; a sample by
  its key. `caption` is the record's `caption`, else its `prompt`, else its `editing_prompt`.

A sample in a shard: `<key>.<video ext>` (the file's bytes), `<key>.json` (the captions' fields and
`source_file`, `edited_file`, `source_frames`, `source_fps`, `source_width`, `source_height`) and
`<key>.edited.<ext>`. Samples are in key order; tar members carry fixed metadata, so packing the same
folder twice gives identical shards. A video or edited frame that does not read is reported in one line
(`skipped <file>: <why>`) and left out; anything the user must decide (two videos making one key, a
malformed captions file, an output that is not empty) is an error before any work.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import string
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AnyV2VError
from .video_io import FILE_MODE, IMAGE_SUFFIXES, VideoInfo, encode_png, probe_video, read_image

# the extensions read_shards groups as a sample's video; .m4v is an MPEG-4 file like .mp4
MEMBER_VIDEO_EXT = {".mp4": "mp4", ".m4v": "mp4", ".webm": "webm", ".mkv": "mkv", ".avi": "avi", ".mov": "mov"}
# edited frames the `provided` editor reads as they are; other image files are converted to PNG
EDITED_EXT = {".png": "png", ".jpg": "jpg", ".jpeg": "jpeg", ".webp": "webp"}
OFFICIAL_EDITS_FOLDER = "edited_first_frame"
EDIT_SEPARATOR = "__"
NAME_FIELDS = ("file", "video", "video_name", "key")  # which record field names the video
EDIT_FIELD = "edited_first_frame_path"  # the official group_config.json's field
CAPTION_FIELDS = ("caption", "prompt", "editing_prompt")
KEY_MODES = ("stem", "path")

# fixed tar layout: PAX headers (long and non-ASCII names), every member's metadata the same
TAR_FORMAT, TAR_ENCODING, TAR_ERRORS = tarfile.PAX_FORMAT, "utf-8", "surrogateescape"
BLOCK, RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE

DEFAULT_SHARD_SIZE = 100
DEFAULT_MAX_SHARD_BYTES = 1_000_000_000
DEFAULT_PATTERN = "{:06d}.tar"


@dataclass
class Video:
    path: Path
    rel: str  # posix path under FOLDER
    key: str
    caption_file: Path | None = None  # <name>.txt
    beside_edits: list[Path] = field(default_factory=list)  # <name>.edited.png and the like
    info: VideoInfo | None = None


@dataclass
class Sample:
    key: str
    video: Video
    edited: Path | None = None
    edited_rel: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # from the captions file (sample-level entries)


@dataclass
class CaptionEntry:
    where: str  # "captions.csv row 3", for messages
    name: str
    fields: dict[str, Any]
    edit: str | None = None  # the file name of one edited frame of the video


@dataclass
class PackSummary:
    output: Path
    pattern: str
    samples: int
    shards: list[Path]
    skipped: list[str]
    without_caption: int
    without_edited: int
    unmatched_captions: int

    def line(self) -> str:
        text = f"packed {_count(self.samples, 'sample')} into {_count(len(self.shards), 'shard')}"
        text += f" ({self.input_pattern()}); skipped {len(self.skipped)}"
        if self.without_caption:
            text += f"; {self.without_caption} without a caption"
        if self.without_edited:
            text += f"; {self.without_edited} without an edited first frame"
        if self.unmatched_captions:
            text += f"; {_count(self.unmatched_captions, 'caption entry', 'caption entries')} matched no video"
        return text

    def input_pattern(self) -> str:
        """The shards as one brace pattern for `anyv2v-batch run --input`."""
        return str(self.output / brace_pattern(self.pattern, len(self.shards)))


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


# ---- settings


def parse_bytes(text: str | int) -> int:
    """'1GB' -> 10**9, '512MiB' -> 2**29, '4096' -> 4096."""
    units = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", str(text), re.IGNORECASE)
    if not match:
        raise AnyV2VError(f"--max-shard-bytes {text!r}: expected a size like 500MB, 2GiB or 1000000")
    return int(float(match[1]) * units[(match[2] or "").lower()])


def check_pattern(pattern: str) -> None:
    fields = [(f, spec) for _, f, spec, _ in string.Formatter().parse(pattern) if f is not None]
    problem = ""
    if len(fields) != 1 or fields[0][0] not in ("", "0"):
        problem = "needs exactly one number field like {:06d}"
    else:
        try:
            names = pattern.format(0), pattern.format(1)
        except (ValueError, IndexError) as e:
            names, problem = ("", ""), f"is not a format for a number ({e})"
        if not problem and (names[0] == names[1] or "/" in names[0] or not names[0].endswith(".tar")):
            problem = "must name a .tar file in the output folder, different for every number"
    if problem:
        raise AnyV2VError(f"--pattern {pattern!r} {problem}, e.g. 'shard-{{:06d}}.tar'")


def split_pattern(pattern: str) -> tuple[str, str, str]:
    """'shard-{:06d}.tar' -> ('shard-', '{:06d}', '.tar')."""
    parts = list(string.Formatter().parse(pattern))
    prefix, _, spec, conversion = parts[0]
    field_text = "{" + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
    return prefix, field_text, "".join(literal for literal, *_ in parts[1:])


def brace_pattern(pattern: str, count: int) -> str:
    """'{:06d}.tar', 3 -> '{000000..000002}.tar' (braceexpand keeps the zero padding)."""
    if count <= 1:
        return pattern.format(0)
    prefix, field_text, suffix = split_pattern(pattern)
    return f"{prefix}{{{field_text.format(0)}..{field_text.format(count - 1)}}}{suffix}"


def check_output(folder: Path, output: Path, overwrite: bool) -> None:
    """The output is a folder that is not the input, empty or replaceable, and can be written."""
    if output.resolve() == folder.resolve():
        raise AnyV2VError(f"output {str(output)!r} is the input folder itself; choose another -o folder")
    if output.exists():
        if not output.is_dir():
            raise AnyV2VError(f"output {str(output)!r} exists and is not a folder")
        if not overwrite and any(not p.name.startswith(".") for p in output.iterdir()):
            raise AnyV2VError(f"output {str(output)!r} is not empty; pass --overwrite to replace its shards")
    existing = output
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise AnyV2VError(f"cannot create output {str(output)!r}: {str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AnyV2VError(f"output {str(output)!r} is not writable ({str(existing)!r}); choose another -o folder")


# ---- finding the videos


def safe_key(text: str) -> str:
    """Runs of characters other than letters, digits, '_' and '-' become one '_' (a key has no dot)."""
    return "_".join(part for part in re.split(r"[^\w-]+", text) if part)


def find_videos(folder: Path, output: Path, keys: str) -> list[Video]:
    """Every video under `folder` (sorted walk) with the files beside it that belong to it, keyed."""
    skip_dir = output.resolve()
    videos: list[Video] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() != skip_dir)
        names = sorted(n for n in filenames if not n.startswith("."))
        beside: dict[str, list[Path]] = {}  # "<stem>.edited.<image>" by stem, one listing per folder
        for name in names:
            at = name.lower().rfind(".edited.")
            if at > 0 and "." + name[at + len(".edited.") :].lower() in IMAGE_SUFFIXES:
                beside.setdefault(name[:at], []).append(here / name)
        present = set(names)
        for name in names:
            path = here / name
            if path.suffix.lower() not in MEMBER_VIDEO_EXT or not path.is_file():
                continue
            rel = path.relative_to(folder).as_posix()
            key = safe_key(path.stem if keys == "stem" else rel.rsplit(".", 1)[0])
            txt = f"{path.stem}.txt"
            video = Video(path, rel, key, here / txt if txt in present else None, beside.get(path.stem, []))
            videos.append(video)
    return videos


def edited_frames(video: Video) -> list[Path]:
    """`<name>.edited.<image>` beside the video, then `<name>/edited_first_frame/*` (official layout)."""
    if len(video.beside_edits) > 1:
        names = " and ".join(p.name for p in video.beside_edits)
        raise AnyV2VError(f"{video.rel} has two edited first frames ({names}); keep one")
    found = list(video.beside_edits)
    official = video.path.parent / video.path.stem / OFFICIAL_EDITS_FOLDER
    if official.is_dir():
        found += sorted(
            p
            for p in official.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
    return found


def build_samples(folder: Path, videos: list[Video]) -> list[Sample]:
    """One sample per edited frame of each video (or one without, if it has none); keys unique."""
    samples: list[Sample] = []
    for video in videos:
        frames = edited_frames(video)
        if not frames:
            samples.append(Sample(video.key, video))
        for frame in frames:
            official = frame.parent.name == OFFICIAL_EDITS_FOLDER and frame.parent.parent.name == video.path.stem
            key = f"{video.key}{EDIT_SEPARATOR}{safe_key(frame.stem)}" if official else video.key
            samples.append(Sample(key, video, frame, frame.relative_to(folder).as_posix()))
    by_key: dict[str, Sample] = {}
    for sample in samples:
        other = by_key.setdefault(sample.key.casefold(), sample)  # casefold: keys become file names elsewhere
        if other is not sample:
            names = sorted({other.edited_rel or other.video.rel, sample.edited_rel or sample.video.rel})
            what = " and ".join(names) if len(names) == 2 else names[0]
            raise AnyV2VError(
                f"{what} both make the key {sample.key!r}; rename one"
                + (", or pass --keys path (keys from the path under the folder)" if "/" in "".join(names) else "")
            )
        if not sample.key:
            raise AnyV2VError(f"{sample.video.rel}: its name has no letter or digit to make a key from; rename it")
    return sorted(samples, key=lambda s: s.key)


# ---- captions


def read_captions(path: Path) -> list[CaptionEntry]:
    """The entries of a captions file; a malformed file is an error naming the place."""
    if not path.is_file():
        raise AnyV2VError(f"--captions {str(path)!r} does not exist")
    suffix, name = path.suffix.lower(), path.name
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise AnyV2VError(f"--captions {str(path)!r}: cannot read it as UTF-8 text ({e})") from None
    if suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        return [_record(f"{name} row {i + 2}", row) for i, row in enumerate(rows)]
    if suffix not in (".json", ".yaml", ".yml"):
        raise AnyV2VError(f"--captions {str(path)!r}: use a .json, .yaml / .yml or .csv file")
    try:
        import yaml

        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise AnyV2VError(f"--captions {str(path)!r} does not parse: {str(e).splitlines()[0]}") from None
    if isinstance(data, list):
        return [_record(f"{name} item {i}", item) for i, item in enumerate(data)]
    if not isinstance(data, dict):
        raise AnyV2VError(f"--captions {name}: expected a mapping video -> caption or a list of records")
    entries = []
    for video, value in data.items():
        if isinstance(value, dict):
            entries.append(CaptionEntry(f"{name}[{video!r}]", str(video), _with_caption(value), _edit_of(value)))
        elif isinstance(value, str):
            entries.append(CaptionEntry(f"{name}[{video!r}]", str(video), {"caption": value}))
        else:
            raise AnyV2VError(f"{name}[{video!r}]: expected a caption (text) or fields (a mapping)")
    return entries


def _record(where: str, record: Any) -> CaptionEntry:
    if not isinstance(record, dict):
        raise AnyV2VError(f"{where}: expected a record (a mapping of fields)")
    name = next((record[f] for f in NAME_FIELDS if record.get(f) not in (None, "")), None)
    if name is None:
        raise AnyV2VError(f"{where}: no field naming the video ({', '.join(NAME_FIELDS)})")
    return CaptionEntry(where, str(name), _with_caption(record), _edit_of(record))


def _edit_of(record: dict) -> str | None:
    value = record.get(EDIT_FIELD)
    return Path(str(value)).name if value else None


def _with_caption(fields: dict) -> dict[str, Any]:
    fields = json.loads(json.dumps({str(k): v for k, v in fields.items()}, default=str))  # JSON values only
    caption = next((fields[f] for f in CAPTION_FIELDS if fields.get(f) not in (None, "")), None)
    if caption is not None:
        fields["caption"] = str(caption)
    return fields


def attach_captions(
    samples: list[Sample], entries: list[CaptionEntry], report: Callable[[str], None]
) -> tuple[dict[str, dict], int]:
    """Match entries to videos and samples: ({video rel: fields}, entries matched to nothing).

    Sample-level fields go into each Sample; two entries for one video or one sample are an error."""
    videos = list({s.video.rel: s.video for s in samples}.values())
    names: list[tuple[str, Callable[[Video], str]]] = [
        ("path", lambda v: v.rel),
        ("file name", lambda v: v.path.name),
        ("stem", lambda v: v.path.stem),
        ("key", lambda v: v.key),
    ]
    index: list[tuple[str, dict[str, list[Video]]]] = []  # per kind of name: name -> videos
    for what, of in names:
        by_name: dict[str, list[Video]] = {}
        for v in videos:
            by_name.setdefault(of(v), []).append(v)
        index.append((what, by_name))
    sample_by_key = {s.key: s for s in samples}
    edits = {(s.video.rel, s.edited.name): s for s in samples if s.edited is not None}
    video_fields: dict[str, dict] = {}
    claimed: dict[str, str] = {}  # target -> the entry that described it
    unmatched = 0
    for entry in entries:
        name = entry.name.removeprefix("./")
        target: Video | Sample | None = None
        for what, by_name in index:
            found = by_name.get(name, [])
            if len(found) > 1:
                paths = " and ".join(v.rel for v in found[:2])
                raise AnyV2VError(f"{entry.where}: {name!r} is the {what} of {paths}; name it by its path")
            if found:
                target = found[0]
                break
        if target is None:
            target = sample_by_key.get(name)
        if isinstance(target, Video) and entry.edit is not None:
            target = edits.get((target.rel, entry.edit))
        if target is None:
            unmatched += 1
            edit = f" with the edited frame {entry.edit!r}" if entry.edit else ""
            report(f"captions: {entry.where}: no video {name!r}{edit} in the folder")
            continue
        tag = f"video {target.rel}" if isinstance(target, Video) else f"sample {target.key}"
        if tag in claimed:
            raise AnyV2VError(f"{claimed[tag]} and {entry.where} both describe {tag}; keep one")
        claimed[tag] = entry.where
        if isinstance(target, Video):
            video_fields[target.rel] = entry.fields
        else:
            target.fields = entry.fields
    return video_fields, unmatched


# ---- checking and writing


@dataclass
class Member:
    name: str
    size: int
    path: Path | None = None  # copied from this file ...
    data: bytes | None = None  # ... or these bytes


def check_files(samples: list[Sample], report: Callable[[str], None]) -> tuple[list[Sample], list[str]]:
    """Probe every video once and open every edited frame; what does not read is reported and left out."""
    bad: dict[Path, str] = {}
    kept, skipped = [], []

    def fail(path: Path, rel: str, why: str) -> None:
        bad[path] = why
        line = f"skipped {rel}: {why}"
        skipped.append(line)
        report(line)

    for sample in samples:
        video = sample.video
        if video.path not in bad and video.info is None:
            try:
                video.info = probe_video(video.path)
            except (AnyV2VError, OSError) as e:
                fail(video.path, video.rel, str(e))
        if video.path in bad:
            continue
        if sample.edited is not None:
            try:
                read_image(sample.edited)
            except AnyV2VError:
                fail(sample.edited, sample.edited_rel, "not a readable image")
                continue
        kept.append(sample)
    return kept, skipped


def sample_members(sample: Sample, video_fields: dict[str, dict]) -> list[Member]:
    """The sample's tar members: edited frame, metadata, video."""
    video, key = sample.video, sample.key
    meta: dict[str, Any] = {}
    if video.caption_file is not None:
        meta["caption"] = video.caption_file.read_text(encoding="utf-8", errors="replace").strip()
    meta |= video_fields.get(video.rel, {})
    meta |= sample.fields
    info = video.info
    meta |= {"source_file": video.rel, "source_frames": info.frames, "source_fps": info.fps}
    meta |= {"source_width": info.width, "source_height": info.height}
    members = []
    if sample.edited is not None:
        meta["edited_file"] = sample.edited_rel
        ext = EDITED_EXT.get(sample.edited.suffix.lower())
        if ext is None:  # .bmp and the like: the provided editor reads PNG / JPEG / WebP
            data = encode_png(read_image(sample.edited))
            members.append(Member(f"{key}.edited.png", len(data), data=data))
        else:
            members.append(Member(f"{key}.edited.{ext}", sample.edited.stat().st_size, path=sample.edited))
    data = json.dumps(meta, sort_keys=True, ensure_ascii=False, indent=1).encode("utf-8")
    members.append(Member(f"{key}.json", len(data), data=data))
    ext = MEMBER_VIDEO_EXT[video.path.suffix.lower()]
    members.append(Member(f"{key}.{ext}", video.path.stat().st_size, path=video.path))
    return members


def tar_info(member: Member) -> tarfile.TarInfo:
    """Fixed metadata, so the same files always give the same bytes."""
    info = tarfile.TarInfo(member.name)
    info.size, info.mtime, info.mode, info.type = member.size, 0, 0o644, tarfile.REGTYPE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def tar_bytes(members: list[Member]) -> int:
    """The bytes these members take in a tar: headers plus data padded to whole blocks."""
    headers = sum(len(tar_info(m).tobuf(TAR_FORMAT, TAR_ENCODING, TAR_ERRORS)) for m in members)
    return headers + sum(math.ceil(m.size / BLOCK) * BLOCK for m in members)


def shard_file_size(payload: int) -> int:
    """A tar's file size: members, two zero blocks, padded to a whole record."""
    return math.ceil((payload + 2 * BLOCK) / RECORD) * RECORD


def plan_shards(samples: list[list[Member]], shard_size: int, max_bytes: int) -> Iterator[list[list[Member]]]:
    """Consecutive samples per shard: at most `shard_size`, at most `max_bytes` (a bigger sample goes alone)."""
    shard: list[list[Member]] = []
    payload = 0
    for members in samples:
        size = tar_bytes(members)
        if shard and (len(shard) == shard_size or shard_file_size(payload + size) > max_bytes):
            yield shard
            shard, payload = [], 0
        shard.append(members)
        payload += size
    if shard:
        yield shard


def write_shard(path: Path, shard: list[list[Member]]) -> None:
    """A tar written to a temporary name beside `path`, fsynced, renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=TAR_FORMAT, encoding=TAR_ENCODING, errors=TAR_ERRORS) as tar:
                for members in shard:
                    for m in members:
                        if m.data is not None:
                            tar.addfile(tar_info(m), io.BytesIO(m.data))
                        else:
                            with open(m.path, "rb") as src:
                                tar.addfile(tar_info(m), src)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stale_shards(output: Path, pattern: str, count: int) -> list[Path]:
    """Shards an earlier pack left beyond the `count` just written (names the same pattern makes)."""
    prefix, _, suffix = split_pattern(pattern)
    regex = re.compile(re.escape(prefix) + r"(\d+)" + re.escape(suffix))
    stale = []
    for p in sorted(output.iterdir()):
        match = regex.fullmatch(p.name)
        if match and p.is_file() and int(match[1]) >= count and pattern.format(int(match[1])) == p.name:
            stale.append(p)
    return stale


def pack_folder(
    folder: str | os.PathLike,
    output: str | os.PathLike,
    captions: str | os.PathLike | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    pattern: str = DEFAULT_PATTERN,
    keys: str = "stem",
    overwrite: bool = False,
    report: Callable[[str], None] = lambda line: None,
) -> PackSummary:
    """Pack FOLDER's videos into shards in OUTPUT; `report` gets one line per file left out."""
    folder, output = Path(folder), Path(output)
    if not folder.is_dir():
        raise AnyV2VError(f"input folder {str(folder)!r} does not exist or is not a folder")
    if shard_size < 1:
        raise AnyV2VError(f"--shard-size must be at least 1, got {shard_size}")
    if max_shard_bytes < RECORD:
        raise AnyV2VError(f"--max-shard-bytes must be at least {RECORD} (one tar record), got {max_shard_bytes}")
    if keys not in KEY_MODES:
        raise AnyV2VError(f"--keys must be one of {', '.join(KEY_MODES)}, got {keys!r}")
    check_pattern(pattern)
    check_output(folder, output, overwrite)
    entries = read_captions(Path(captions)) if captions is not None else []

    videos = find_videos(folder, output, keys)
    if not videos:
        suffixes = ", ".join(MEMBER_VIDEO_EXT)
        raise AnyV2VError(f"no videos ({suffixes}) in {str(folder)!r}")
    samples = build_samples(folder, videos)
    video_fields, unmatched = attach_captions(samples, entries, report)
    samples, skipped = check_files(samples, report)
    if not samples:
        raise AnyV2VError(f"none of the {len(videos)} videos in {str(folder)!r} could be read; nothing written")

    members = [sample_members(s, video_fields) for s in samples]
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for index, shard in enumerate(plan_shards(members, shard_size, max_shard_bytes)):
        path = output / pattern.format(index)
        write_shard(path, shard)
        written.append(path)
    for old in stale_shards(output, pattern, len(written)):
        old.unlink()
    metas = [json.loads(next(m.data for m in ms if m.name.endswith(".json"))) for ms in members]
    return PackSummary(
        output=output,
        pattern=pattern,
        samples=len(samples),
        shards=written,
        skipped=skipped,
        without_caption=sum(1 for meta in metas if not meta.get("caption")),
        without_edited=sum(1 for s in samples if s.edited is None),
        unmatched_captions=unmatched,
    )
