"""A synthetic world of moving shapes: the model organism's clips, with their ground truth.

Each clip holds one to three shapes (discs, squares, stripes; solid colours or a checker texture) over a
plain or two-tone background, all moving one way: at constant velocity, bouncing off the frame's edges,
or still while the camera pans. A clip comes with a caption naming its shapes, colours and motion ("a
red disc moves right") and its ground truth: each shape's centre in every frame, so that an edit's or a
generation's motion is measured in pixels, not judged by eye.

Everything is a function of a seed (numpy's PCG64): the same seed, the same clip, byte for byte. Shapes
are drawn with a one-pixel anti-aliased edge, so a shape's centre moves smoothly at sub-pixel speeds.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

# colours far apart in RGB, each with a name a caption can use
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
    "magenta": (210, 50, 200),
    "cyan": (40, 200, 210),
    "white": (240, 240, 240),
    "orange": (240, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 20),
    "grey": (110, 110, 115),
    "navy": (20, 25, 70),
    "brown": (90, 60, 35),
}
KINDS = ("disc", "square", "stripe")
MOTIONS = ("moves", "bounces", "pan")
DIRECTIONS = {"right": (1.0, 0.0), "left": (-1.0, 0.0), "down": (0.0, 1.0), "up": (0.0, -1.0)}


@dataclasses.dataclass(frozen=True)
class Shape:
    kind: str  # disc, square or stripe (a vertical bar the frame's height)
    colour: str  # a name in COLOURS
    size: float  # radius (disc), half side (square) or half width (stripe), pixels
    texture: str  # "solid" or "checker" (the colour and a darker shade, in 4-pixel cells)
    start: tuple[float, float]  # centre (x, y) at frame 0, pixels
    velocity: tuple[float, float]  # pixels per frame


@dataclasses.dataclass(frozen=True)
class WorldClip:
    frames: np.ndarray  # [F, H, W, 3] uint8
    caption: str
    centres: np.ndarray  # [shapes, F, 2] float: each shape's centre (x, y) in each frame, in frame pixels
    shapes: tuple[Shape, ...]
    motion: str  # moves, bounces or pan
    background: tuple[str, ...]  # one colour name, or two (left half, right half)
    pan: tuple[float, float]  # camera velocity, pixels per frame (the scene moves the other way)

    def record(self) -> dict[str, Any]:
        """The ground truth as plain JSON (what `<key>.json` of a world shard holds)."""
        return {
            "caption": self.caption,
            "motion": self.motion,
            "background": list(self.background),
            "pan": list(self.pan),
            "shapes": [dataclasses.asdict(s) for s in self.shapes],
            "centres": np.round(self.centres, 4).tolist(),
        }


def coverage(shape: Shape, centre: tuple[float, float], width: int, height: int) -> np.ndarray:
    """How much of each pixel the shape covers, 0..1 [H, W] (a one-pixel linear edge)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5  # pixel centres
    cx, cy = centre
    if shape.kind == "disc":
        inside = shape.size - np.hypot(x - cx, y - cy)
    elif shape.kind == "square":
        inside = shape.size - np.maximum(np.abs(x - cx), np.abs(y - cy))
    else:  # stripe
        inside = shape.size - np.abs(x - cx)
    return np.clip(inside + 0.5, 0.0, 1.0)


def _paint(shape: Shape, centre: tuple[float, float], width: int, height: int) -> np.ndarray:
    """The shape's colour at each pixel [H, W, 3] float (its texture moves with it)."""
    colour = np.array(COLOURS[shape.colour], dtype=np.float64)
    paint = np.broadcast_to(colour, (height, width, 3)).copy()
    if shape.texture == "checker":
        y, x = np.mgrid[0:height, 0:width]
        cells = (np.floor((x - centre[0]) / 4) + np.floor((y - centre[1]) / 4)) % 2 == 1
        paint[cells] *= 0.55
    return paint


def render(
    shapes: tuple[Shape, ...],
    centres: np.ndarray,
    background: tuple[str, ...],
    pan_offset: np.ndarray,
    width: int,
    height: int,
) -> np.ndarray:
    """Frames [F, H, W, 3] uint8 with each shape at its centre (later shapes drawn over earlier ones)."""
    frames = []
    for f in range(centres.shape[1]):
        image = np.empty((height, width, 3), dtype=np.float64)
        if len(background) == 1:
            image[:] = BACKGROUNDS[background[0]]
        else:  # two-tone: the boundary is part of the scene, so it moves with a pan
            x = np.arange(width) + 0.5 + pan_offset[f, 0]
            left = (np.floor(x / (width / 2)) % 2) == 0
            image[:, left] = BACKGROUNDS[background[0]]
            image[:, ~left] = BACKGROUNDS[background[1]]
        for s, shape in enumerate(shapes):
            centre = (float(centres[s, f, 0]), float(centres[s, f, 1]))
            alpha = coverage(shape, centre, width, height)[..., None]
            image = image * (1 - alpha) + _paint(shape, centre, width, height) * alpha
        frames.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
    return np.stack(frames)


def trajectory(
    start: tuple[float, float], velocity: tuple[float, float], frames: int, bounds: tuple[float, float, float, float]
) -> np.ndarray:
    """Centres [F, 2] of a point moving at `velocity`, reflected off the box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = bounds
    out = np.empty((frames, 2))
    for axis, (lo, hi) in enumerate(((x0, x1), (y0, y1))):
        p = start[axis] + velocity[axis] * np.arange(frames)
        span = hi - lo
        if span <= 0:
            out[:, axis] = start[axis]
            continue
        q = np.mod(p - lo, 2 * span)  # unfolded: a reflection every `span`
        out[:, axis] = lo + np.where(q > span, 2 * span - q, q)
    return out


def _caption(shapes: tuple[Shape, ...], motion: str, direction: str) -> str:
    names = [f"a {s.colour} {'checkered ' if s.texture == 'checker' else ''}{s.kind}" for s in shapes]
    subject = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    if motion == "pan":
        return f"the camera pans {direction} over {subject}"
    if motion == "bounces":
        return f"{subject} {'bounces' if len(shapes) == 1 else 'bounce'} around"
    return f"{subject} {'moves' if len(shapes) == 1 else 'move'} {direction}"


def make_clip(
    seed: int,
    frames: int = 9,
    width: int = 32,
    height: int = 32,
    motion: str | None = None,
    shapes: int | None = None,
) -> WorldClip:
    """One clip of the world, a function of its seed (and size); `motion` / `shapes` fix what is drawn."""
    rng = np.random.default_rng(seed)
    motion = motion or str(rng.choice(MOTIONS))
    count = shapes or int(rng.integers(1, 4))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    direction = str(rng.choice(list(DIRECTIONS)))
    dx, dy = DIRECTIONS[direction]
    speed = float(rng.uniform(0.6, 1.4)) * min(width, height) / 32
    scale = min(width, height) / 32
    made, tracks = [], []
    for i in range(count):
        kind = str(rng.choice(KINDS if motion != "bounces" else ("disc", "square")))
        size = float(rng.uniform(3.0, 5.5)) * scale if kind != "stripe" else float(rng.uniform(1.5, 2.5)) * scale
        margin = size + 1
        start = (float(rng.uniform(margin, width - margin)), float(rng.uniform(margin, height - margin)))
        if kind == "stripe":
            start = (start[0], height / 2)
        if motion == "bounces":
            angle = float(rng.uniform(0, 2 * np.pi))
            velocity = (speed * 1.5 * np.cos(angle), speed * 1.5 * np.sin(angle))
        elif motion == "moves":
            velocity = (dx * speed, dy * speed if kind != "stripe" else 0.0)
        else:
            velocity = (0.0, 0.0)
        texture = "checker" if rng.random() < 0.25 and kind != "stripe" else "solid"
        shape = Shape(kind, str(colours[i]), size, texture, start, velocity)
        if motion == "bounces":
            bounds = (size, size, width - size, height - size)
        else:  # constant velocity may leave the frame; the centre is still the truth
            bounds = (-1e9, -1e9, 1e9, 1e9)
        made.append(shape)
        tracks.append(trajectory(start, velocity, frames, bounds))
    centres = np.stack(tracks)
    pan = (-dx * speed, -dy * speed) if motion == "pan" else (0.0, 0.0)
    offset = -np.arange(frames)[:, None] * np.array(pan)  # where the camera is, relative to frame 0
    if motion == "pan":
        centres = centres + np.array(pan)[None, None] * np.arange(frames)[None, :, None]
    for i, shape in enumerate(made):
        if shape.kind == "stripe":  # a vertical bar the frame's height: its centre is the frame's middle row
            centres[i, :, 1] = height / 2
    two_tone = rng.random() < 0.4
    background = tuple(rng.choice(list(BACKGROUNDS), size=2 if two_tone else 1, replace=False).tolist())
    clip = render(tuple(made), centres, background, offset, width, height)
    return WorldClip(clip, _caption(tuple(made), motion, direction), centres, tuple(made), motion, background, pan)


def recoloured(clip: WorldClip, shape: int, colour: str) -> np.ndarray:
    """The clip's first frame with one shape in another colour: a perfect first-frame edit, and its
    ground truth for every frame (`recoloured_clip`)."""
    return recoloured_clip(clip, shape, colour)[0]


def unused_colour(clip: WorldClip) -> str:
    """A colour no shape of the clip has (white aside: it reads as a highlight): what a recolour edit uses."""
    taken = {s.colour for s in clip.shapes}
    return next(c for c in COLOURS if c not in taken and c != "white")


def recoloured_clip(clip: WorldClip, shape: int, colour: str) -> np.ndarray:
    """The whole clip with one shape in another colour: what a perfect edit propagates to."""
    shapes = tuple(dataclasses.replace(s, colour=colour) if i == shape else s for i, s in enumerate(clip.shapes))
    frames, height, width = clip.frames.shape[:3]
    offset = -np.arange(frames)[:, None] * np.array(clip.pan)
    return render(shapes, clip.centres, clip.background, offset, width, height)


def colour_mask(frame: np.ndarray, colour: str, tolerance: float = 60.0) -> np.ndarray:
    """[H, W] bool: the pixels within `tolerance` (RGB distance) of a named colour."""
    return np.linalg.norm(frame.astype(np.float64) - np.array(COLOURS[colour]), axis=-1) < tolerance


def centroid(
    frame: np.ndarray, colour: str, tolerance: float = 60.0, min_pixels: int = 1
) -> tuple[float, float] | None:
    """The centre (x, y) of the pixels near a colour, in pixel units (None when fewer than `min_pixels`
    are): how motion is measured on a model's output, where only colours are known."""
    ys, xs = np.nonzero(colour_mask(frame, colour, tolerance))
    if len(xs) < max(1, min_pixels):
        return None
    return float(xs.mean() + 0.5), float(ys.mean() + 0.5)


def follows(
    frames: np.ndarray, colour: str, centres: np.ndarray, first: np.ndarray | None = None, tolerance: float = 80.0
) -> tuple[float, float]:
    """How well a colour follows a trajectory in frames 1..F-1: the share of frames where the colour
    covers at least half the area it covers in `first` (the edited first frame; default frames[0]) -- a
    shape, not a few stray pixels -- and the mean distance in pixels between its centre and the
    trajectory's (`centres` [F, 2], e.g. a shape's `WorldClip.centres[i]`) over those frames (nan where
    it is never found)."""
    area = int(colour_mask(frames[0] if first is None else first, colour, tolerance).sum())
    found = [centroid(frame, colour, tolerance, min_pixels=max(1, area // 2)) for frame in frames[1:]]
    errors = [float(np.hypot(at[0] - c[0], at[1] - c[1])) for at, c in zip(found, centres[1:], strict=True) if at]
    return len(errors) / max(1, len(found)), float(np.mean(errors)) if errors else float("nan")


def ground_truth_json(clip: WorldClip) -> bytes:
    return json.dumps(clip.record(), sort_keys=True).encode()
