"""The units of work that flow between the operators, and how a variant becomes concrete for a sample.

A `ClipWork` is one source clip at one geometry / inversion setting, carrying the variants that share
its inversion. Each operator fills in its part (frames, edited first frames, inversion, edited
videos) and records failures in `error` fields instead of raising: one bad sample never fails a block.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from anyv2v_batch.errors import AnyV2VError
from anyv2v_batch.job import EditorSpec, JobSpec, VariantSpec
from anyv2v_batch.settings import ClipSettings, EditSettings, InversionSettings, WindowSettings, recorded_fields
from anyv2v_batch.templates import TemplateError, fill, template_fields
from anyv2v_batch.windows import Window, WindowLimits, window_clip

if TYPE_CHECKING:  # the inversion (torch tensors) is unpickled where it is used; reading shards needs no torch
    from anyv2v_batch.inversion import Inversion


# an `inversion_source` with this phrase: the stored entry is damaged or another clip's (the run then has
# the store's shard verified and repaired, pipelines/verify.mend_store)
UNUSABLE = "stored inversion not usable"


@dataclass
class VariantWork:
    name: str
    settings: EditSettings  # prompt rendered, seed derived for this sample
    editor: EditorSpec
    edit_prompt: str = ""  # rendered instruction for the editor
    first_frame: np.ndarray | None = None  # the edited first frame [H, W, 3]
    frames: np.ndarray | None = None  # the edited clip [F, H, W, 3]
    error: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)  # "score_<metric>" -> value (scorer pool)
    passed: bool | None = None  # the thresholds' verdict (evaluate mode flag / route)
    failed_checks: list[str] = field(default_factory=list)
    score_error: str = ""  # why the pair could not be scored (the pair itself is fine)
    scorer_identity: str = ""  # what scored it, as the scorer actor reports it (scores.Scorer.identity, JSON)
    mp4: bytes | None = None  # the encoded clip, once made (scored as written; encode reuses it)
    row: dict[str, Any] | None = None  # `anyv2v-batch score`: the pair's existing metadata row
    window_seeds: list[int] = field(default_factory=list)  # a long clip's windows' seeds (chain.py)
    seam_steps: list[float] = field(default_factory=list)  # and the step at each join (windows.seam_steps)
    window_scores: list[float] = field(default_factory=list)  # edit hold per window (scorer pool)
    # False for a variant that is already done but is computed again beside its clip's pending ones,
    # so that every output comes from the same batch composition as in an uninterrupted run
    write: bool = True


@dataclass
class ClipWork:
    shard: str  # the input shard's URL
    shard_id: str  # its output name
    key: str
    meta: dict[str, Any]
    files: dict[str, bytes]  # the sample's other members by extension (e.g. "edited.png")
    video: bytes | None
    video_ext: str
    clip: ClipSettings
    inversion_settings: InversionSettings
    variants: list[VariantWork]
    frames: np.ndarray | None = None  # decoded source [F, H, W, 3]
    source: dict[str, Any] = field(default_factory=dict)  # fps, frames, width, height of the file
    inversion: Inversion | None = None
    stored_inversion: bytes | None = None  # a stored inversion of this clip, to check and reuse
    inversion_source: str = ""  # "computed", "stored" or "recomputed: <why the stored one was not used>"
    error: str = ""  # a clip-level failure: every variant fails with it
    seconds: dict[str, float] = field(default_factory=dict)
    backbone: str = "i2vgen-xl"  # the model that inverts and samples this clip's variants
    model: str | None = None
    weights: str = ""  # the model's weights identity (part of the stored inversion's name)
    # clips longer than one window (anyv2v_batch/windows.py), filled in by the decode stage
    window_settings: WindowSettings = WindowSettings()
    window_limits: WindowLimits | None = None  # the model's windows with these settings (known to the driver)
    total: int = 0  # the clip's frame count (clip.frames, or what "all" came to)
    truncated: bool = False  # cut to clip.max_frames
    plan: tuple[Window, ...] = ()
    window: Window | None = None  # set on the row of one window of a multi-window clip
    windows: list[Inversion] = field(default_factory=list)  # a multi-window clip's inversions, gathered
    stored_entries: dict[str, bytes] = field(default_factory=dict)  # the key's stored inversions, by id
    stored_ids: frozenset[str] = frozenset()  # `invert`: the ids already in the store for this key
    # a store repair (`JobSpec.keep_timesteps`): the only ids of this key to make (None: every one not stored)
    wanted_ids: frozenset[str] | None = None

    def pending(self) -> list[VariantWork]:
        """Variants still being worked on."""
        return [] if self.error else [v for v in self.variants if not v.error]

    @property
    def frames_here(self) -> int:
        """The frames this row inverts: its window's, else the whole clip's."""
        if self.window is not None:
            return self.window.frames
        return self.total or (self.clip.frames if isinstance(self.clip.frames, int) else 0)

    @property
    def start(self) -> int:
        return self.window.start if self.window is not None else 0

    def for_window(self, window: Window) -> ClipWork:
        """The row of one window: its own variants' copies (the editor and sampler use window 1's)."""
        first = window.index == 0
        variants = self.variants if first else [dataclasses.replace(v) for v in self.variants]
        return dataclasses.replace(
            self, window=window, variants=variants, frames=None, video=None, seconds=dict(self.seconds),
            source=dict(self.source), stored_entries={}, stored_ids=frozenset(), wanted_ids=None,
            files=self.files if first else {},
        )  # fmt: skip


def pair_id(key: str, variant: str) -> str:
    """A file-name-safe, stable id of a (sample, variant) pair."""
    return hashlib.sha256(f"{key}\0{variant}".encode()).hexdigest()[:24]


def inversion_id(
    backbone: str,
    model: str | None,
    clip: ClipSettings,
    inversion: InversionSettings,
    weights: str = "",
    start: int = 0,
) -> str:
    """The name under which a clip's inversion is stored: backbone, weights (the model id and its
    identity, see loading.weights_identity) and every setting that changes it (the decoded frames' hash
    is checked separately, inside the entry). A window of a long clip is the clip of its frames that
    starts at frame `start` (windows.py): the first window of a clip is stored as the clip of its length."""
    parts = [backbone, model, weights, recorded_fields(clip), recorded_fields(inversion)]
    text = json.dumps(parts, sort_keys=True)
    name = "inv-" + hashlib.sha256(text.encode()).hexdigest()[:16]
    return f"{name}-at{start}" if start else name


def derive_seed(base: int, key: str, variant: str) -> int:
    """A per-sample seed from the variant's base seed, the sample key and the variant name."""
    digest = hashlib.sha256(f"{base}\0{key}\0{variant}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: a valid torch seed


def render(template: str, meta: dict[str, Any], what: str, key: str) -> str:
    """Fill `{field}` placeholders from the sample's metadata, with a one-line error naming the field that
    is missing or not a plain name (no attribute / index access, conversion or format spec: see templates.py)."""
    try:
        fields = template_fields(template)
    except TemplateError as e:
        raise AnyV2VError(f"{what} {e}") from None
    missing = [f for f in fields if f not in meta]
    if missing:
        have = ", ".join(sorted(meta)) or "none"
        raise AnyV2VError(
            f"{what} template needs {{{missing[0]}}}, but sample {key!r} has no {missing[0]!r} in its metadata "
            f"(it has: {have})"
        )
    return fill(template, meta)


def variant_for_sample(spec: VariantSpec, key: str, meta: dict[str, Any]) -> VariantWork:
    """The variant made concrete: templates rendered, seed derived. Errors become the variant's error."""
    seed = derive_seed(spec.seed, key, spec.name)
    try:
        prompt = render(spec.edit.prompt, meta, "prompt", key)
        edit_prompt = render(spec.edit_prompt, meta, "edit_prompt", key) if spec.edit_prompt else ""
    except AnyV2VError as e:
        return VariantWork(spec.name, dataclasses.replace(spec.edit, seed=seed), spec.editor, error=str(e))
    settings = dataclasses.replace(spec.edit, prompt=prompt, seed=seed)
    return VariantWork(spec.name, settings, spec.editor, edit_prompt=edit_prompt)


def group_variants(job: JobSpec) -> list[list[VariantSpec]]:
    """The job's variants grouped by what they can share: one backbone, one decoded clip, one inversion."""
    groups: dict[tuple, list[VariantSpec]] = {}
    for spec in job.variants:
        groups.setdefault((spec.backbone, spec.model, spec.clip, spec.inversion, spec.window), []).append(spec)
    return list(groups.values())


def work_inversion_id(work: ClipWork) -> str:
    """The stored name of this row's inversion: of its window, or of the whole clip."""
    clip = window_clip(work.clip, work.frames_here)
    return inversion_id(work.backbone, work.model, clip, work.inversion_settings, work.weights, work.start)


def clip_group_id(work: ClipWork) -> str:
    """The whole clip's group (its settings as given, "all" included): what gathers its windows."""
    return inversion_id(work.backbone, work.model, work.clip, work.inversion_settings, work.weights) + (
        "-" + hashlib.sha256(repr(work.window_settings).encode()).hexdigest()[:8]
    )


def one_line(e: BaseException) -> str:
    """An exception as one line for an error row."""
    text = str(e).strip().splitlines()
    message = text[0] if text else ""
    return message if isinstance(e, AnyV2VError) else f"{type(e).__name__}: {message}"[:500]
