"""DDIM inversion of a source clip: the noisy latent at every timestep, as a plain value.

The official code writes each inverted latent to disk with torch.save and reloads it at every sampling
step; here the result is an `Inversion` held in memory: tensors and plain fields only (no module
references), so it pickles across Ray actors and serialises to safetensors.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from .backbones.base import Backbone, Branch
from .imaging import as_rgb_array
from .integrity import CONTENT_DIGEST, content_digest
from .schedule import missing_timestep_error, set_schedule
from .settings import ClipSettings, InversionSettings


@dataclass
class Inversion:
    """The inverted latents of one source clip and what they were computed from.

    `latents[i]` is stored under `timesteps[i]`: the latent produced by the inverse DDIM step evaluated
    at that timestep (as the official code stores it). Latents are float32 on the CPU, [C, F, h, w] each.
    """

    backbone: str
    timesteps: tuple[int, ...]  # ascending
    latents: torch.Tensor  # [T, C, F, h, w]
    source_first_frame: np.ndarray  # [H, W, 3] uint8: the source branch's image condition
    fps: float
    settings: InversionSettings
    meta: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.latents.shape[2]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the source clip in pixels."""
        return self.source_first_frame.shape[1], self.source_first_frame.shape[0]

    def at(self, t: int) -> torch.Tensor:
        """The inverted latent stored under timestep t: [1, C, F, h, w]."""
        try:
            i = self.timesteps.index(int(t))
        except ValueError:
            raise missing_timestep_error(int(t), self.settings.steps, self.settings.save_steps) from None
        return self.latents[i : i + 1]

    def keep(self, timesteps: Iterable[int]) -> Inversion:
        """A copy holding only the given timesteps (what one edit schedule needs), to ship less."""
        wanted = sorted({int(t) for t in timesteps})
        idx = [self.timesteps.index(t) for t in wanted if t in self.timesteps]
        return Inversion(
            backbone=self.backbone,
            timesteps=tuple(self.timesteps[i] for i in idx),
            latents=self.latents[idx].clone(),
            source_first_frame=self.source_first_frame,
            fps=self.fps,
            settings=self.settings,
            meta=dict(self.meta),
        )


def guided_prediction(backbone: Backbone, latents: torch.Tensor, t: int, cond, guidance_scale: float) -> torch.Tensor:
    """Model output with classifier-free guidance: cond holds [negative, positive] when guidance > 1."""
    if guidance_scale > 1.0:
        neg, pos = backbone.predict(torch.cat([latents, latents]), t, cond).chunk(2)
        return neg + guidance_scale * (pos - neg)
    return backbone.predict(latents, t, cond)


def inversion_branches(first_frame: np.ndarray, settings: InversionSettings) -> list[Branch]:
    """[prompt] or, with guidance, [negative, prompt]: all conditioned on the source first frame."""
    branches = [Branch(settings.prompt, first_frame)]
    if settings.guidance_scale > 1.0:
        branches.insert(0, Branch(settings.negative_prompt, first_frame, image_embedding=False))
    return branches


@torch.inference_mode()
def invert(
    backbone: Backbone,
    frames: np.ndarray,
    settings: InversionSettings = InversionSettings(),
    fps: float = 8.0,
    keep: Iterable[int] | None = None,
    latents: torch.Tensor | None = None,
    on_step: Callable[[int, int, torch.Tensor], None] | None = None,
) -> Inversion:
    """DDIM-invert a clip [F, H, W, 3] (uint8, already at the clip size), conditioned on its first frame.

    keep: only these timesteps are kept in the result (all by default).
    latents: the clip's clean latents [1, C, F, h, w], if already encoded.
    on_step(i, t, latent): called with each inverted latent as it is produced.
    """
    step_hook = None if on_step is None else (lambda c, i, t, x: on_step(i, t, x))
    return invert_batch(
        backbone, [frames], settings, fps=fps, keep=keep, latents=None if latents is None else [latents],
        on_step=step_hook,
    )[0]  # fmt: skip


@torch.inference_mode()
def invert_batch(
    backbone: Backbone,
    clips: list[np.ndarray],
    settings: InversionSettings = InversionSettings(),
    fps: float = 8.0,
    keep: Iterable[int] | None = None,
    latents: list[torch.Tensor] | None = None,
    on_step: Callable[[int, int, int, torch.Tensor], None] | None = None,
) -> list[Inversion]:
    """Several clips of one shape inverted, each in UNet calls of its own: a clip's inversion is
    bit-identical whatever other clips it is inverted with (kernels round differently for another
    batch size).

    on_step(clip, i, t, latent) is called with each inverted latent as it is produced.
    """
    settings.validate()
    clips = [np.stack([as_rgb_array(f) for f in frames]) for frames in clips]
    if len({c.shape for c in clips}) != 1:
        raise ValueError("invert_batch needs clips of one shape")
    num_frames, height, width = clips[0].shape[:3]
    backbone.check_clip(ClipSettings(frames=num_frames, fps=fps, width=width, height=height).validate())
    type(backbone).check_inversion(settings)
    stored = set(backbone.schedule.stored_timesteps(settings))
    wanted = stored if keep is None else stored & {int(t) for t in keep}
    if backbone.flow:
        return _invert_flow(backbone, clips, settings, fps, wanted, latents, on_step)
    row = 1 if settings.guidance_scale > 1.0 else 0  # the positive branch's conditioning row

    inversions = []
    for c, frames in enumerate(clips):
        scheduler = backbone.scheduler(inverse=True)  # a fresh one per clip: a scheduler may keep state
        timesteps = set_schedule(scheduler, settings.steps, "--inversion-steps")
        cond = backbone.condition(inversion_branches(frames[0], settings), num_frames, fps)
        video = backbone.encode_video(frames) if latents is None else latents[c].to(backbone.device, torch.float32)
        x = backbone.sampled_part(video)  # ConsistI2V: frame 0 is a condition, not inverted
        kept_t: list[int] = []
        kept_x: list[torch.Tensor] = []
        for i, t in enumerate(timesteps):
            v = guided_prediction(backbone, x, t, cond, settings.guidance_scale)
            x = scheduler.step(v, t, x).prev_sample
            if on_step is None and t not in wanted:
                continue
            full = backbone.full_video(x, cond, row)
            if on_step is not None:
                on_step(c, i, t, full)
            if t in wanted:
                kept_t.append(t)
                kept_x.append(full[0].to("cpu", torch.float32))
        inversions.append(
            Inversion(
                backbone=backbone.name,
                timesteps=tuple(kept_t),
                latents=torch.stack(kept_x) if kept_t else torch.empty(0),
                source_first_frame=frames[0],
                fps=fps,
                settings=settings,
            )
        )
    return inversions


def _invert_flow(backbone, clips, settings, fps, wanted, latents, on_step) -> list[Inversion]:
    """A flow-matching backbone's inversion (flow_edit.invert) as `Inversion`s keyed by grid keys."""
    from .flow import DEFAULT_SHIFT, grid_keys
    from .flow_edit import invert as flow_invert

    keys = grid_keys(settings.steps)  # grid point i <-> keys[i]; the clean source is the last, key 0
    shift = settings.shift or DEFAULT_SHIFT
    context = backbone.condition([Branch(settings.prompt, clips[0][0])], 0, fps)["context"]
    negative = None
    if settings.guidance_scale != 1.0:
        negative = backbone.condition([Branch(settings.negative_prompt, clips[0][0])], 0, fps)["context"]
    inversions = []
    for c, frames in enumerate(clips):
        video = backbone.encode_video(frames) if latents is None else latents[c].to(backbone.device, torch.float32)
        points = flow_invert(backbone, video, context, settings.steps, shift, settings.solver, settings.guidance_scale,
                             negative)  # fmt: skip
        kept_t, kept_x = [], []
        for n, i in enumerate(range(settings.steps, -1, -1)):  # ascending keys: the clean end first
            if on_step is not None:
                on_step(c, n, keys[i], points[i : i + 1])
            if keys[i] in wanted:
                kept_t.append(keys[i])
                kept_x.append(points[i].to("cpu", torch.float32))
        inversions.append(Inversion(backbone.name, tuple(kept_t), torch.stack(kept_x) if kept_t else torch.empty(0),
                                    frames[0], fps, settings))  # fmt: skip
    return inversions


# ---- storing inversions: safetensors (tensors + string metadata), never pickle

INVERSION_FORMAT = "anyv2v-inversion/1"


def inversion_to_bytes(inversion: Inversion, meta: dict[str, str] | None = None) -> bytes:
    """An inversion as safetensors bytes: latents, timesteps, the source first frame, and its settings."""
    tensors = {
        "latents": inversion.latents.contiguous(),
        "timesteps": torch.tensor(inversion.timesteps, dtype=torch.int64),
        "source_first_frame": torch.from_numpy(np.ascontiguousarray(inversion.source_first_frame)),
    }
    metadata = {
        "format": INVERSION_FORMAT,
        "backbone": inversion.backbone,
        "fps": repr(float(inversion.fps)),
        "settings": json.dumps(dataclasses.asdict(inversion.settings), sort_keys=True),
        **(meta or {}),
    }
    metadata[CONTENT_DIGEST] = content_digest(tensors, metadata)
    return safetensors_bytes(tensors, metadata)


SAFETENSORS_DTYPES = {torch.float32: "F32", torch.int64: "I64", torch.uint8: "U8"}


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors file of these tensors, the same bytes for the same content: the library's writer
    orders the metadata as a hash map iterates (differently in each process), which would make a remade
    entry differ from the one it replaces. Header keys sorted, tensors by element size then name (each one
    aligned), the header padded with spaces to 8 bytes, as the format asks."""
    header: dict[str, object] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors, key=lambda n: (-tensors[n].element_size(), n)):
        t = tensors[name].contiguous()
        blob = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def inversion_from_bytes(data: bytes) -> tuple[Inversion, dict[str, str]]:
    """Parse and check stored bytes; ValueError if they are not a complete, consistent inversion."""
    from safetensors.torch import load

    if len(data) < 8:
        raise ValueError("too short to be safetensors")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise ValueError("truncated safetensors header")
    try:
        header = json.loads(data[8 : 8 + header_len])
        tensors = load(data)
    except Exception as e:  # noqa: BLE001 - any parse failure means "not usable"
        raise ValueError(f"not readable safetensors ({type(e).__name__})") from None
    meta = header.get("__metadata__") or {}
    if meta.get("format") != INVERSION_FORMAT:
        raise ValueError(f"not an {INVERSION_FORMAT} entry")
    # entries written before digests have none: checked for their structure only (below)
    if CONTENT_DIGEST in meta and content_digest(tensors, meta) != meta[CONTENT_DIGEST]:
        raise ValueError("damaged: its content does not match its digest")
    latents, timesteps, frame = tensors.get("latents"), tensors.get("timesteps"), tensors.get("source_first_frame")
    if latents is None or timesteps is None or frame is None:
        raise ValueError("missing tensors")
    if latents.ndim != 5 or timesteps.ndim != 1 or len(timesteps) != len(latents) or frame.ndim != 3:
        raise ValueError("tensor shapes do not fit together")
    if latents.dtype != torch.float32 or frame.dtype != torch.uint8 or not torch.isfinite(latents).all():
        raise ValueError("tensor types or values are wrong")
    try:
        settings = InversionSettings(**json.loads(meta["settings"]))
        fps = float(meta["fps"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"bad metadata ({e})") from None
    inversion = Inversion(
        backbone=meta.get("backbone", ""),
        timesteps=tuple(int(t) for t in timesteps.tolist()),
        latents=latents,
        source_first_frame=frame.numpy(),
        fps=fps,
        settings=settings,
    )
    return inversion, meta
