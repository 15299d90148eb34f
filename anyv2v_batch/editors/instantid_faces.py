"""Face analysis for the `instantid` editor: faces with a box, 5 keypoints and an identity embedding.

InstantID was trained on the embeddings of insightface's `antelopev2` pack (SCRFD detector + ArcFace
`glintr100`), so that pack is the default analyzer. Its models are for non-commercial research only and
are never downloaded here: the user names a local folder that holds them. Anything with a `faces`
method returning `Face`s can stand in for it (`FaceAnalyzer`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import AnyV2VError

# insightface without its dependencies: it requires opencv-python, which would replace opencv-python-headless
EXTRA_HINT = "pip install -e '.[instantid]' && pip install --no-deps 'insightface>=2.1'"


@dataclass
class Face:
    bbox: np.ndarray  # [4] x1, y1, x2, y2 in the image's pixels
    kps: np.ndarray  # [5, 2] eyes, nose, mouth corners (x, y) in the image's pixels
    embedding: np.ndarray  # [512] the raw (not normalised) ArcFace embedding, as InstantID uses it

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))


class FaceAnalyzer(Protocol):
    def faces(self, rgb: np.ndarray) -> list[Face]:
        """Every face found in an RGB uint8 image [H, W, 3]."""
        ...


def largest_face(faces: list[Face]) -> Face | None:
    """The face with the largest box, as the official scripts pick it (`sorted(...)[-1]`: the last of equals)."""
    return sorted(faces, key=lambda f: f.area)[-1] if faces else None


def require_extra() -> None:
    """One line naming the extra if insightface (or its runtime) is not installed."""
    try:
        import insightface.app  # noqa: F401
    except ImportError as e:
        raise AnyV2VError(
            f"the instantid editor's face analysis needs insightface and onnxruntime ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else 'not installed'}); install them with `{EXTRA_HINT}`, "
            "or give each sample a face_embedding and face_kps"
        ) from None


def check_model_folder(folder: str | Path) -> Path:
    """The antelopev2 folder, if it holds ONNX models (insightface would otherwise try to download them)."""
    path = Path(folder).expanduser()
    if not path.is_dir() or not sorted(path.glob("*.onnx")):
        nested = path / path.name
        hint = f" (the zip unpacks into {nested}: point face_models there)" if sorted(nested.glob("*.onnx")) else ""
        raise AnyV2VError(
            f"face_models {str(folder)!r} holds no insightface antelopev2 models (*.onnx){hint}; download the "
            "antelopev2 pack yourself (non-commercial research only) and give its folder; it is never downloaded"
        )
    return path


class InsightFaceAnalyzer:
    """insightface `FaceAnalysis(name="antelopev2")` on a local folder, detection + recognition only, with
    the official `det_size=(640, 640)` passed explicitly (insightface >= 2 otherwise combines 128 and 640)."""

    def __init__(self, folder: str | Path, ctx_id: int = 0, providers: list[str] | None = None) -> None:
        path = check_model_folder(folder)  # before insightface could reach for the network
        require_extra()
        from insightface.app import FaceAnalysis

        # an absolute folder as the name: insightface >= 2 opens it directly, older ones join it to
        # root/models/ (an absolute path wins the join); either way the folder exists and nothing downloads
        kwargs = {"providers": providers} if providers else {}
        self.app = FaceAnalysis(
            name=str(path.resolve()), root=str(path.parent), allowed_modules=["detection", "recognition"], **kwargs
        )
        self.app.prepare(ctx_id=ctx_id, det_size=(640, 640))

    def faces(self, rgb: np.ndarray) -> list[Face]:
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # cv2.cvtColor(RGB2BGR), as the official scripts
        return [
            Face(np.asarray(f["bbox"], np.float32), np.asarray(f["kps"], np.float32), np.asarray(f["embedding"]))
            for f in self.app.get(bgr)
        ]
