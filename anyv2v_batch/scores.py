"""Quality scores of an edited clip: CLIP similarities, motion fidelity against the source, aesthetics.

Every CLIP similarity comes from one embedding per image (output frames, source frames, the edited first
frame) and one per prompt, reused by every metric; scores are raw cosines in float32 (no x100, no clamp).

Preprocessing (the same for every image, done here, not by the transformers image processor, so that
neither its centre crop nor its backend choice - PIL or torchvision - changes a score): the WHOLE frame
is resized to the model's square input size with PIL's bicubic filter (antialiased; the aspect ratio
is not kept: a wide frame is squeezed, never cropped), then scaled to [0, 1] and normalised with the
model's own `image_mean` / `image_std` (preprocessor_config.json). Prompts are tokenized with the
model's tokenizer, truncated and padded to its maximum length (77 for CLIP).

Reproducibility: images go through CLIP in calls of exactly `EMBED_BATCH` images (the last one padded
with black images) and prompts one at a time, so an image's embedding does not depend on what else was
scored with it: `score_many` over any grouping gives the same bits as `score` one pair at a time.

Motion fidelity needs no weights: OpenCV's Farneback dense optical flow (see `motion_fidelity`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import AnyV2VError
from .evaluation import DEFAULT_SCORER_MODEL, METRICS, EvaluateSettings
from .imaging import to_pil
from .loading import hub_offline, resolve_device, resolve_dtype, weights_identity

AESTHETIC_METRICS = ("aesthetic_min", "aesthetic_mean")

EMBED_BATCH = 16  # images per CLIP call, always: fixed shapes make each embedding independent of its batch mates

# Farneback optical flow, fixed (the values of OpenCV's own dense-flow example)
FLOW_PYR_SCALE = 0.5
FLOW_LEVELS = 3
FLOW_WINSIZE = 15
FLOW_ITERATIONS = 3
FLOW_POLY_N = 5
FLOW_POLY_SIGMA = 1.2
FLOW_FLAGS = 0
FLOW_MAX_SIDE = 256  # flow on frames scaled down to this longer side: 5x cheaper at 512x512, the same at any size
FLOW_THREADS = 2  # OpenCV's threads; the scorer shares its machine with the job's other actors
# a frame pair whose source and output flows both stay under 0.01 px RMS is still in both: it agrees (1.0)
STILL_MEAN_SQUARE = 1e-4

AESTHETIC_WIDTHS = (1024, 128, 64, 16, 1)
AESTHETIC_DEFAULT_FILE = "model.safetensors"


def column(metric: str) -> str:
    """The Parquet column of a metric."""
    return "score_" + metric


# ---- motion fidelity (weight-free)


def method_identity() -> str:
    """How scores are computed apart from the models' weights (part of a row's evaluate fingerprint):
    changes when the preprocessing, the batching or the flow changes."""
    return f"whole frame resized, PIL bicubic, no crop; {EMBED_BATCH} images per CLIP call; {flow_identity()}"


def scoring_identity(settings: EvaluateSettings) -> tuple[str, str]:
    """(fingerprint, record JSON) of what makes a pair's scores and verdict what they are: the settings,
    the weights' identities and the scorer's preprocessing. ("", "") when scoring is off, so outputs of
    runs without scoring match older outputs, which have no fingerprint."""
    if not settings.enabled:
        return "", ""
    record = settings.record() | {
        "weights": weights_identity(settings.model),
        "aesthetic_weights": weights_identity(settings.aesthetic) if settings.aesthetic else "",
        "method": method_identity(),
    }
    text = json.dumps(record, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16], text


def flow_identity() -> str:
    import cv2

    return (
        f"opencv {cv2.__version__} calcOpticalFlowFarneback(pyr_scale={FLOW_PYR_SCALE}, levels={FLOW_LEVELS}, "
        f"winsize={FLOW_WINSIZE}, iterations={FLOW_ITERATIONS}, poly_n={FLOW_POLY_N}, poly_sigma={FLOW_POLY_SIGMA}, "
        f"flags={FLOW_FLAGS}) on BT.601 grayscale frames, INTER_AREA-scaled to a longer side <= {FLOW_MAX_SIDE}"
    )


def flow_size(height: int, width: int) -> tuple[int, int]:
    """(width, height) the flow is computed at: the frame scaled down so its longer side is FLOW_MAX_SIDE."""
    scale = min(1.0, FLOW_MAX_SIDE / max(height, width))
    return max(1, round(width * scale)), max(1, round(height * scale))


def optical_flows(frames: np.ndarray) -> np.ndarray:
    """Farneback flow of each consecutive frame pair: [F, H, W, 3] uint8 -> [F-1, h, w, 2] float32 (pixels
    at the flow size, see `flow_size`)."""
    import cv2

    cv2.setNumThreads(FLOW_THREADS)
    size = flow_size(*frames.shape[1:3])
    gray = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in frames]
    if size != (frames.shape[2], frames.shape[1]):
        gray = [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in gray]
    parameters = (FLOW_PYR_SCALE, FLOW_LEVELS, FLOW_WINSIZE, FLOW_ITERATIONS, FLOW_POLY_N, FLOW_POLY_SIGMA, FLOW_FLAGS)
    try:
        flows = [
            cv2.calcOpticalFlowFarneback(a, b, None, *parameters) for a, b in zip(gray[:-1], gray[1:], strict=True)
        ]
    except cv2.error as e:
        raise AnyV2VError(
            f"optical flow failed on {size[0]}x{size[1]} frames: {str(e).strip().splitlines()[-1]}"
        ) from e
    return np.stack(flows)


def flow_agreement(source_flows: np.ndarray, output_flows: np.ndarray) -> float:
    """Mean over frame pairs of 2<s, o> / (|s|^2 + |o|^2), sums over all pixels (see `motion_fidelity`)."""
    s = source_flows.astype(np.float64).reshape(len(source_flows), -1)
    o = output_flows.astype(np.float64).reshape(len(output_flows), -1)
    dot, ss, oo = (s * o).sum(1), (s * s).sum(1), (o * o).sum(1)
    pixels = s.shape[1] // 2
    still = (ss <= STILL_MEAN_SQUARE * pixels) & (oo <= STILL_MEAN_SQUARE * pixels)  # both under 0.01 px RMS
    per_pair = np.where(still, 1.0, 2 * dot / np.where(still, 1.0, ss + oo))
    return float(np.float32(per_pair.mean())) + 0.0  # + 0.0: no -0.0 in the table


def motion_fidelity(source: np.ndarray, output: np.ndarray) -> float:
    """How well the output's motion follows the source's, in [-1, 1]; 1 exactly when the flows are identical.

    source, output: [F, H, W, 3] uint8, same shape, F >= 2. For each consecutive frame pair f -> f+1,
    s and o are the Farneback optical flows (module constants FLOW_*; frames converted to grayscale and,
    when larger, scaled down with INTER_AREA to a longer side of FLOW_MAX_SIDE) of the source and of the
    output, as vectors over all pixels and both components, and the pair scores

        a_f = 2 <s, o> / (|s|^2 + |o|^2) = 1 - |s - o|^2 / (|s|^2 + |o|^2)

    (1.0 where both flows are under 0.01 px RMS: both still). The score is the mean of a_f over the F-1
    pairs. a_f is 1 only for equal flows; a frozen output (o = 0) gives 0, reversed motion (o = -s) -1,
    motion in the right direction at k times the speed 2k / (1 + k^2). Per pixel it is the cosine of
    the two flow vectors weighted by their magnitudes, with a penalty for unequal speed.
    """
    _check_video(source, "source")
    _check_video(output, "output")
    if source.shape != output.shape:
        raise AnyV2VError(f"motion fidelity: source {list(source.shape)} and output {list(output.shape)} differ")
    return flow_agreement(optical_flows(source), optical_flows(output))


def _check_video(frames: np.ndarray, what: str) -> None:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        shape = list(getattr(frames, "shape", []))
        raise AnyV2VError(f"scoring: the {what} must be uint8 frames [F, H, W, 3], got {shape}")
    if frames.shape[0] < 2:
        raise AnyV2VError(f"scoring: the {what} has {frames.shape[0]} frame(s); scores need at least 2")


def _digest(array: np.ndarray) -> bytes:
    digest = hashlib.blake2b(str(array.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.digest()


# ---- loading


def _load(cls: type, model: str, what: str, **kwargs):
    """`cls.from_pretrained(model)` with a missing or broken model as a one-line AnyV2VError."""
    try:
        return cls.from_pretrained(model, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _missing(model, what, e) from e


def _missing(model: str, what: str, error: BaseException) -> AnyV2VError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    local = Path(model).expanduser()
    if local.is_dir():
        fix = f"the folder must hold a transformers CLIPModel with its tokenizer and preprocessor_config.json ({first})"
    elif model.startswith((".", "/", "~")) or model.count("/") != 1:
        fix = "no such folder; pass --evaluate-model with an existing folder or a hub id"
    elif hub_offline():
        fix = (
            f"HF_HUB_OFFLINE is set and it is not in the hub cache; download it first (`hf download {model}`) "
            "or pass --evaluate-model with a local folder"
        )
    else:
        fix = f"check the hub id and your network, or pass --evaluate-model with a local folder ({first})"
    return AnyV2VError(f"cannot load {what} of scorer model {model!r}: {fix}")


def _read_json(model: str, filename: str) -> tuple[dict, str]:
    """A JSON file of a model folder or hub repo, and the revision it came from: the commit of the hub
    snapshot (the cache's `snapshots/<commit>/` folder), "local folder" for a folder."""
    local = Path(model).expanduser()
    try:
        if local.is_dir():
            path, revision = local / filename, "local folder"
        else:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(model, filename))
            revision = path.parent.name if path.parent.parent.name == "snapshots" else "unknown"
        return json.loads(path.read_text()), revision
    except (OSError, ValueError) as e:
        raise _missing(model, filename, e) from e


def _resolve_aesthetic(spec: str) -> tuple[Path, str]:
    """A local safetensors file (or a folder holding model.safetensors), or a hub id: `org/name` (its
    model.safetensors) or `org/name/path/in/repo.safetensors`. Returns the file and its identity."""
    local = Path(spec).expanduser()
    if local.is_dir():
        local = local / AESTHETIC_DEFAULT_FILE
    if local.is_file():
        return local, f"file:{hashlib.sha256(local.read_bytes()).hexdigest()[:16]}"
    parts = spec.split("/")
    looks_local = spec.startswith((".", "/", "~")) or (len(parts) == 2 and spec.endswith(".safetensors"))
    if looks_local or len(parts) < 2 or not all(parts):
        raise AnyV2VError(f"aesthetic head {spec!r}: no such file; pass a .safetensors file or a hub id (org/name)")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or AESTHETIC_DEFAULT_FILE
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, filename)), f"hub:{repo}/{filename}"
    except (OSError, ValueError) as e:
        where = "HF_HUB_OFFLINE is set and it is not in the hub cache" if hub_offline() else "not found on the hub"
        raise AnyV2VError(
            f"cannot load aesthetic head {filename!r} of {repo!r}: {where}; download it first "
            f"(`hf download {repo} {filename}`) or pass a local .safetensors file"
        ) from e


def aesthetic_mlp(input_width: int) -> torch.nn.Sequential:
    """The LAION improved-aesthetic-predictor head: five Linear layers with Dropout between, no activation."""
    nn = torch.nn
    widths = (input_width, *AESTHETIC_WIDTHS)
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < 3:
            layers.append(nn.Dropout((0.2, 0.2, 0.1)[i]))
    return nn.Sequential(*layers)


def load_aesthetic(spec: str, input_width: int) -> tuple[torch.nn.Sequential, str]:
    """The head from a safetensors state dict (keys `layers.N.weight/bias`, as the released checkpoints)."""
    from safetensors.torch import load_file

    path, identity = _resolve_aesthetic(spec)
    try:
        state = load_file(str(path))
    except (OSError, ValueError, RuntimeError) as e:
        raise AnyV2VError(f"aesthetic head {spec!r} is not a readable safetensors file ({e})") from e
    state = {k.removeprefix("layers."): v for k, v in state.items()}
    head = aesthetic_mlp(input_width)
    expected = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if found != expected:
        width = found.get("0.weight", (None, None))[1]
        raise AnyV2VError(
            f"aesthetic head {spec!r} is not the LAION improved-aesthetic MLP for {input_width}-wide CLIP "
            f"embeddings (its input width: {width}); use a head trained on this CLIP model's embeddings"
        )
    head.load_state_dict({k: v.float() for k, v in state.items()})
    return head.eval(), identity


# ---- the scorer


class Scorer:
    """A CLIP model (and optionally an aesthetic head) that scores edited clips; load once, score many."""

    def __init__(
        self,
        model: str = DEFAULT_SCORER_MODEL,
        device: str = "cpu",
        dtype: str = "float32",
        aesthetic: str | None = None,
    ):
        from transformers import CLIPModel, CLIPTokenizer

        model = str(Path(model).expanduser()) if Path(model).expanduser().is_dir() else model
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        processor, revision = _read_json(model, "preprocessor_config.json")
        self.tokenizer = _load(CLIPTokenizer, model, "the tokenizer")
        self.model = _load(CLIPModel, model, "the CLIP weights", dtype=self.dtype).to(self.device).eval()
        self.image_size = int(self.model.config.vision_config.image_size)
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)
        self.mean = torch.tensor(processor.get("image_mean", ()), dtype=torch.float32)
        self.std = torch.tensor(processor.get("image_std", ()), dtype=torch.float32)
        if self.mean.shape != (3,) or self.std.shape != (3,):
            raise _missing(model, "preprocessor_config.json", ValueError("no 3-channel image_mean / image_std"))
        self.aesthetic = None
        aesthetic_identity = "none"
        if aesthetic is not None:
            self.aesthetic, aesthetic_identity = load_aesthetic(aesthetic, int(self.model.config.projection_dim))
            self.aesthetic.to(self.device)
        self.metrics = tuple(m for m in METRICS if self.aesthetic is not None or m not in AESTHETIC_METRICS)
        mean, std = ([round(float(v), 8) for v in t] for t in (self.mean, self.std))
        self.identity: dict[str, str] = {
            "model": model,
            "revision": revision,
            "weights": weights_identity(model),
            "dtype": str(self.dtype).removeprefix("torch."),
            "preprocessing": (
                f"whole frame resized to {self.image_size}x{self.image_size} (no crop, aspect not kept), PIL bicubic; "
                f"/255, mean {mean}, std {std}; prompt truncated/padded to {self.max_tokens} tokens; "
                f"{EMBED_BATCH} images per CLIP call"
            ),
            "aesthetic": aesthetic_identity,
            "flow": flow_identity(),
        }

    # -- embeddings

    def pixel_values(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """N frames [H, W, 3] uint8 -> [N, 3, S, S] float32, normalised (see the module docstring)."""
        size = (self.image_size, self.image_size)
        resized = np.stack([np.asarray(to_pil(f).resize(size, Image.Resampling.BICUBIC)) for f in frames])
        x = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean[:, None, None]) / self.std[:, None, None]

    @torch.no_grad()
    def embed_images(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """L2-normalised float32 image embeddings [N, D] of N frames [H, W, 3] uint8, EMBED_BATCH per CLIP call."""
        out = []
        for start in range(0, len(frames), EMBED_BATCH):
            chunk = self.pixel_values(frames[start : start + EMBED_BATCH])
            n = len(chunk)
            if n < EMBED_BATCH:  # pad to the fixed call shape (black images, thrown away)
                chunk = torch.cat([chunk, chunk.new_zeros(EMBED_BATCH - n, *chunk.shape[1:])])
            features = self.model.get_image_features(pixel_values=chunk.to(self.device, self.dtype))
            # transformers 5: an output object whose pooler_output is the projected embedding; 4.x: the tensor
            features = features if isinstance(features, torch.Tensor) else features.pooler_output
            out.append(features[:n].float().cpu())
        return torch.nn.functional.normalize(torch.cat(out), dim=-1)

    @torch.no_grad()
    def embed_text(self, prompt: str) -> torch.Tensor:
        """L2-normalised float32 text embedding [D] (one prompt per call: fixed shape)."""
        tokens = self.tokenizer(
            [prompt], padding="max_length", truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        features = self.model.get_text_features(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)
        features = features if isinstance(features, torch.Tensor) else features.pooler_output
        return torch.nn.functional.normalize(features[0].float().cpu(), dim=-1)

    @torch.no_grad()
    def aesthetic_scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The aesthetic head on L2-normalised float32 embeddings [N, D] -> [N]."""
        return self.aesthetic(embeddings.to(self.device)).float().cpu()[:, 0]

    # -- scores

    def score(
        self, output: np.ndarray, source: np.ndarray, edited_first_frame: np.ndarray, prompt: str
    ) -> dict[str, float]:
        """Scores of one edited clip: {"score_<metric>": float} for each metric of `self.metrics`.

        output, source: [F, H, W, 3] uint8 (the source fitted to the clip size, as the output);
        edited_first_frame: [H, W, 3] uint8; prompt: the description of the target video."""
        return self.score_many([(output, source, edited_first_frame, prompt)])[0]

    def score_many(
        self,
        items: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]],
        windows: list[list[tuple[int, int]]] | None = None,
    ) -> list[dict[str, float]]:
        """`score` for several (output, source, edited_first_frame, prompt) items, CLIP calls shared across
        them: every output frame, every distinct source clip and edited frame, every distinct prompt is
        embedded once; the source's optical flow is computed once per distinct source.

        windows: per item, the (start, end) frames of each window of a long clip; each result then also
        holds "window_edit_hold": the edit hold of each window's frames (after its first) against the
        edited first frame, which shows where a chain drifts from the edit."""
        for output, source, edited, prompt in items:
            _check_video(output, "output")
            _check_video(source, "source")
            if source.shape != output.shape:
                raise AnyV2VError(f"scoring: source {list(source.shape)} and output {list(output.shape)} differ")
            if (
                not isinstance(edited, np.ndarray)
                or edited.dtype != np.uint8
                or edited.ndim != 3
                or edited.shape[2] != 3
            ):
                raise AnyV2VError("scoring: the edited first frame must be a uint8 image [H, W, 3]")
            if not isinstance(prompt, str):
                raise AnyV2VError(f"scoring: the prompt must be a string, got {type(prompt).__name__}")
        if not items:
            return []
        # every image once, in one list: outputs, distinct sources, distinct edited frames
        images: list[np.ndarray] = []
        where: dict[bytes, int] = {}  # digest of a distinct source clip / edited frame -> its first row

        def place(frames: np.ndarray, key: bytes | None = None) -> int:
            if key is not None and key in where:
                return where[key]
            start = sum(len(x) for x in images)
            images.append(frames)
            if key is not None:
                where[key] = start
            return start

        rows = []
        for output, source, edited, _prompt in items:
            source_key = _digest(source)
            rows.append((place(output), place(source, source_key), place(edited[None], _digest(edited)), source_key))

        def flows() -> tuple[dict[bytes, np.ndarray], list[np.ndarray]]:
            sources: dict[bytes, np.ndarray] = {}
            for item, (*_, key) in zip(items, rows, strict=True):
                if key not in sources:  # once per distinct source clip
                    sources[key] = optical_flows(item[1])
            return sources, [optical_flows(item[0]) for item in items]

        # the flows run on the CPU (OpenCV releases the GIL) while the CLIP calls run on the model's device
        with ThreadPoolExecutor(max_workers=1) as pool:
            flows_done = pool.submit(flows)
            embeddings = self.embed_images([frame for frames in images for frame in frames])  # views, no copy
            texts = {p: self.embed_text(p) for p in dict.fromkeys(item[3] for item in items)}
            source_flows, output_flows = flows_done.result()
        results = []
        for i, ((output, _source, _edited, prompt), (o, s, e, key)) in enumerate(zip(items, rows, strict=True)):
            frames = len(output)
            out, src, first = embeddings[o : o + frames], embeddings[s : s + frames], embeddings[e]
            scores = {
                "clip_text": (out @ texts[prompt]).mean(),
                "clip_consecutive": (out[:-1] * out[1:]).sum(-1).mean(),
                "edit_hold": (out[1:] @ first).mean(),
                "source_similarity": (src * out).sum(-1).mean(),
                "motion_fidelity": flow_agreement(source_flows[key], output_flows[i]),
            }
            if self.aesthetic is not None:
                aesthetic = self.aesthetic_scores(out)
                scores["aesthetic_min"], scores["aesthetic_mean"] = aesthetic.min(), aesthetic.mean()
            result = {column(m): float(scores[m]) for m in self.metrics}
            if windows is not None and windows[i]:
                result["window_edit_hold"] = [float((out[a + 1 : b] @ first).mean()) for a, b in windows[i]]
            results.append(result)
        return results
