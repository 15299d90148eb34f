"""Every knob of an AnyV2V edit, with the official I2VGen-XL defaults, and their validation.

Settings are plain frozen dataclasses: they cross process boundaries, hash into cache keys and print
into metadata. Validation raises `AnyV2VError` naming the CLI flag of the bad value.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from .errors import AnyV2VError
from .imaging import RESIZE_MODES

OFFICIAL_NEGATIVE_PROMPT = (
    "Distorted, discontinuous, Ugly, blurry, low resolution, motionless, static, disfigured, "
    "disconnected limbs, Ugly faces, incomplete arms"
)

InjectionWindow = Literal["official", "from-start"]
TOO_LONG = ("error", "truncate")
SOLVERS = ("ddim", "euler", "midpoint")  # inversion: DDIM for the U-Nets; flow ODE steps for the DiTs
# Wan2.2's official default negative prompt (Wan-Video/Wan2.2 wan/configs/shared_config.py)
WAN_NEGATIVE_PROMPT = (
    "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，"
    "残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，"
    "三条腿，背景人很多，倒着走"
)
BLENDS = ("earlier", "linear")


class SettingError(AnyV2VError):
    """A setting out of its range. Says it with the CLI flag; job files re-word it with their field path."""

    def __init__(self, field: str, flag: str, rule: str, value: Any):
        self.field, self.flag, self.rule, self.value = field, flag, rule, value
        super().__init__(f"--{flag.replace('_', '-')} must be {rule}, got {value!r}")

    def for_field(self, path: str) -> str:
        return f"{path} must be {self.rule}, got {self.value!r}"


def _check(ok: bool, field: str, rule: str, value: Any, flag: str | None = None) -> None:
    if not ok:
        raise SettingError(field, flag or field, rule, value)


@dataclass(frozen=True)
class ClipSettings:
    """The geometry the source clip is brought to before anything else."""

    # a frame count from the clip's start, or "all": every frame of the source at `fps`, up to `max_frames`
    frames: int | str = 16
    fps: float = 8.0  # resampling rate for video files; always the UNet's fps micro-condition
    width: int = 512
    height: int = 512
    resize: str = "stretch"  # fitting frames to width x height: stretch (official), crop or pad
    max_frames: int = 256  # frames "all": the most frames a clip may have
    too_long: str = "error"  # a source over max_frames: "error" (an error row) or "truncate" (its first max_frames)

    def validate(self) -> ClipSettings:
        ok_frames = self.frames == "all" or (isinstance(self.frames, int) and self.frames >= 2)
        _check(ok_frames, "frames", "an integer >= 2 or 'all'", self.frames)
        ok_max = isinstance(self.max_frames, int) and self.max_frames >= 2
        _check(ok_max, "max_frames", "an integer >= 2", self.max_frames, "max_frames")
        _check(self.too_long in TOO_LONG, "too_long", f"one of {', '.join(TOO_LONG)}", self.too_long)
        _check(self.fps > 0, "fps", "> 0", self.fps)
        for name in ("width", "height"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 8 and v % 8 == 0, name, "a positive multiple of 8", v)
        _check(self.resize in RESIZE_MODES, "resize", f"one of {', '.join(RESIZE_MODES)}", self.resize)
        return self


@dataclass(frozen=True)
class WindowSettings:
    """How a clip longer than one model window is edited (windows.py): in one window while it has at most
    `max_frames` frames, else in chained windows of `frames` frames that overlap by `overlap`."""

    frames: int | None = None  # chained windows' length (None: the backbone's trained clip length)
    overlap: int = 1  # frames shared by consecutive windows (>= 1: the next window starts from one)
    max_frames: int | None = None  # the longest clip edited as one window (None: the backbone's)
    match_stats: float = 0.0  # strength of matching each window's latent channel mean / std to window 1's
    blend: str = "earlier"  # overlapping frames: the earlier window's, or a linear crossfade of the two

    def validate(self) -> WindowSettings:
        ok = self.frames is None or (isinstance(self.frames, int) and self.frames >= 2)
        _check(ok, "frames", "an integer >= 2 (or unset: the backbone's)", self.frames, "window_frames")
        ok = isinstance(self.overlap, int) and self.overlap >= 1 and (self.frames is None or self.overlap < self.frames)
        _check(ok, "overlap", "an integer >= 1 and below window.frames", self.overlap, "window_overlap")
        ok = self.max_frames is None or (isinstance(self.max_frames, int) and self.max_frames >= 2)
        _check(ok, "max_frames", "an integer >= 2 (or unset: the backbone's)", self.max_frames, "window_max_frames")
        _check(0.0 <= self.match_stats <= 1.0, "match_stats", "between 0 and 1", self.match_stats, "window_match_stats")
        _check(self.blend in BLENDS, "blend", f"one of {', '.join(BLENDS)}", self.blend, "window_blend")
        return self


@dataclass(frozen=True)
class InversionSettings:
    """DDIM inversion of the source clip (official: 500 steps, guidance 1, empty prompt)."""

    steps: int = 500
    guidance_scale: float = 1.0
    prompt: str = ""
    negative_prompt: str = ""  # used only when guidance_scale > 1
    # keep the latents only at the timesteps of a `save_steps`-step schedule (None: at every step).
    # SEINE's official inversion saves on a 250-step grid and its edit starts from the noisiest saved one
    save_steps: int | None = None
    # flow-matching backbones (wan2.2-ti2v): "euler" or "midpoint" (RF-Solver's second order) over the
    # sampler's grid with this shift; the U-Nets' DDIM inversion is "ddim" and has no shift
    solver: str = "ddim"
    shift: float | None = None

    def validate(self) -> InversionSettings:
        ok_steps = isinstance(self.steps, int) and self.steps >= 1
        _check(ok_steps, "steps", "an integer >= 1", self.steps, "inversion_steps")
        ok_save = self.save_steps is None or (isinstance(self.save_steps, int) and self.save_steps >= 1)
        _check(ok_save, "save_steps", "an integer >= 1 (or unset: every step)", self.save_steps, "inversion_save_steps")
        _check(self.guidance_scale >= 0, "guidance_scale", ">= 0", self.guidance_scale, "inversion_guidance_scale")
        _check(self.solver in SOLVERS, "solver", f"one of {', '.join(SOLVERS)}", self.solver, "inversion_solver")
        _check(self.shift is None or self.shift > 0, "shift", "> 0", self.shift, "inversion_shift")
        return self


@dataclass(frozen=True)
class EditSettings:
    """Injected I2V sampling from the inversion (official: 50 steps, CFG 9, PnP 0.2 / 0.2 / 0.5)."""

    prompt: str = ""
    negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT
    steps: int = 50
    guidance_scale: float = 9.0
    pnp_conv: float = 0.2
    pnp_spatial: float = 0.2
    pnp_temporal: float = 0.5
    pnp_cross: float = 0.0  # cross-attention Q/K injection (SEINE's `pnp_cross_attn_t`; other backbones: 0)
    init_step: int = 0  # index into the sampling schedule of the first step run (0: t = 981 at 50 steps)
    seed: int = 8888
    random_ratio: float = 0.0  # blend of fresh noise into the starting latent (official `random_ratio`)
    eta: float = 0.0
    # "official": a fraction f injects at the first int(steps * f) timesteps of the *full* schedule, so a
    # start index > 0 silently drops injected steps (as the official code does). "from-start": the
    # window starts at the first step that runs.
    injection_window: InjectionWindow = "official"
    # ConsistI2V only: the official code conditions the source branch on the EDITED first frame (a bug);
    # True conditions it on the source's own first frame. Other backbones always use the source frame
    fix_source_frame: bool = False
    # flow-matching DiTs (wan2.2-ti2v): self-attention Q/K injected for the first `pnp_attn` of the steps
    # (with `attn_first_frame`, on the first frame's tokens too), feed-forward features of
    # `feature_blocks` (None: the middle third) for the first `pnp_feature`; `shift` maps the sigma grid
    pnp_attn: float = 0.0
    pnp_feature: float = 0.0
    attn_first_frame: bool = True
    feature_blocks: tuple[int, ...] | None = None
    shift: float | None = None
    attn_injection: str = "qk"  # "qk": the source's Q/K replace the edit's; "kv": the source's K/V shared

    def validate(self) -> EditSettings:
        _check(isinstance(self.steps, int) and self.steps >= 1, "steps", "an integer >= 1", self.steps)
        _check(self.guidance_scale >= 0, "guidance_scale", ">= 0", self.guidance_scale)
        for name in ("pnp_conv", "pnp_spatial", "pnp_temporal", "pnp_cross", "pnp_attn", "pnp_feature", "random_ratio"):
            v = getattr(self, name)
            _check(0.0 <= v <= 1.0, name, "between 0 and 1", v)
        _check(
            isinstance(self.init_step, int) and 0 <= self.init_step < self.steps,
            "init_step",
            f"an integer in [0, steps - 1 = {self.steps - 1}]",
            self.init_step,
        )
        _check(self.eta >= 0, "eta", ">= 0", self.eta)
        _check(self.shift is None or self.shift > 0, "shift", "> 0", self.shift)
        _check(self.attn_injection in ("qk", "kv"), "attn_injection", "qk or kv", self.attn_injection)
        blocks_ok = self.feature_blocks is None or all(isinstance(b, int) and b >= 0 for b in self.feature_blocks)
        _check(blocks_ok, "feature_blocks", "block indices (integers >= 0)", self.feature_blocks)
        _check(
            self.injection_window in ("official", "from-start"),
            "injection_window",
            "'official' or 'from-start'",
            self.injection_window,
        )
        _check(isinstance(self.seed, int) and 0 <= self.seed < 2**63, "seed", "an integer in [0, 2^63)", self.seed)
        return self

    @property
    def uses_guidance(self) -> bool:
        # the official pipeline batches a negative branch only when guidance_scale > 1
        return self.guidance_scale > 1.0


# Each backbone's official defaults, as overrides of the dataclass defaults above (I2VGen-XL's).
# ConsistI2V: configs/pipeline_256/{ddim_inversion_256,pnp_edit}.yaml; SEINE: configs/{ddim_inversion,pnp_edit}.yaml
BACKBONE_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "i2vgen-xl": {},
    "consisti2v": {
        "clip": {"width": 256, "height": 256},
        "edit": {"guidance_scale": 35.0, "init_step": 4},
    },
    "seine": {
        "inversion": {"save_steps": 250},
        "edit": {"guidance_scale": 4.0, "negative_prompt": ""},
    },
    # Wan-Video/Wan2.2 wan/configs/wan_ti2v_5B.py (50 steps, shift 5, guidance 5, 121 frames at 24 fps,
    # 1280x704) and shared_config.py (the negative prompt); inversion on the same grid, Euler
    "wan2.2-ti2v": {
        "clip": {"frames": 121, "fps": 24.0, "width": 1280, "height": 704},
        "inversion": {"steps": 50, "solver": "euler", "shift": 5.0},
        "edit": {
            "guidance_scale": 5.0,
            "negative_prompt": WAN_NEGATIVE_PROMPT,
            "shift": 5.0,
            "pnp_conv": 0.0,
            "pnp_spatial": 0.0,
            "pnp_temporal": 0.0,
            "pnp_attn": 0.5,
            "pnp_feature": 0.2,
        },
    },
}
SECTION_CLASSES = {
    "clip": ClipSettings, "inversion": InversionSettings, "edit": EditSettings, "window": WindowSettings,
}  # fmt: skip

# fields added after outputs and stored inversions were first fingerprinted, with their defaults: left
# out of fingerprints and inversion ids while at those defaults, so that what was made before stays valid
ADDED_LATER: dict[type, dict[str, Any]] = {
    ClipSettings: {"max_frames": 256, "too_long": "error"},
    InversionSettings: {"solver": "ddim", "shift": None},
    EditSettings: {
        "pnp_attn": 0.0,
        "pnp_feature": 0.0,
        "attn_first_frame": True,
        "feature_blocks": None,
        "shift": None,
        "attn_injection": "qk",
    },
    WindowSettings: {f.name: f.default for f in dataclasses.fields(WindowSettings)},
}


def recorded_fields(settings: Any) -> dict[str, Any]:
    """A settings dataclass as the dict that fingerprints and ids hash (see ADDED_LATER)."""
    later = ADDED_LATER.get(type(settings), {})
    return {k: v for k, v in dataclasses.asdict(settings).items() if k not in later or v != later[k]}


def backbone_defaults(backbone: str) -> dict[str, Any]:
    """{"clip": ClipSettings, "inversion": ..., "edit": ...} holding `backbone`'s official defaults."""
    overrides = BACKBONE_DEFAULTS.get(backbone, {})
    return {name: cls(**overrides.get(name, {})) for name, cls in SECTION_CLASSES.items()}
