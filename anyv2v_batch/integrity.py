"""Digests of stored bytes: what each output member and each stored inversion should be, recorded
where it is written and checked wherever it is read.

An output pair's row records the SHA-256 of each of its members (`mp4_sha256`, `png_sha256`,
`json_sha256`; a stored inversion's row `safetensors_sha256`), and its `.json` those of the `.mp4`
and `.png`. A stored inversion also carries a digest of its own content in its metadata
(`content_sha256`), so that an entry read without its row (by `run --inversions`) is checked too.
Parsing alone cannot tell damaged bytes from good ones: most damage to float data still parses as
finite floats.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # verify, report and score read digests without torch
    import torch

DIGEST_SUFFIX = "_sha256"
CHUNK = 1 << 20  # bytes hashed at a time when streaming a member


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_column(ext: str) -> str:
    """The row column holding the digest of a pair's member with this extension."""
    return f"{ext}{DIGEST_SUFFIX}"


def member_digest_columns(row: Mapping[str, Any]) -> dict[str, str]:
    """Extension -> recorded digest of a row's members (`frames_sha256`, the decoded source's, is not a
    member's)."""
    return {
        column[: -len(DIGEST_SUFFIX)]: value
        for column, value in row.items()
        if column.endswith(DIGEST_SUFFIX) and column != "frames" + DIGEST_SUFFIX and value
    }


def member_digests(files: Mapping[str, bytes]) -> dict[str, str]:
    """{"mp4_sha256": ..., ...} for a pair's members, keyed by extension."""
    return {digest_column(ext): sha256_hex(files[ext]) for ext in sorted(files)}


def member_problem(row: Mapping[str, Any], ext: str, data: bytes) -> str:
    """Why a member's bytes are not the ones its row records ("" when they are, or when the row
    predates digests and records none)."""
    expected = row.get(digest_column(ext))
    if not expected or sha256_hex(data) == expected:
        return ""
    return f"damaged: its SHA-256 is not the {digest_column(ext)} its row records"


# ---- stored inversions (safetensors): a digest of the content in the entry's own metadata

CONTENT_DIGEST = "content_sha256"


def content_digest(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """SHA-256 of what an entry means, independent of the file's layout: every metadata field but the
    digest, each tensor's name, dtype and shape, then each tensor's bytes, in name order. Damage to
    the tensor data, to a shape, dtype or offset in the header, or to a metadata value changes it."""
    import torch

    h = hashlib.sha256()
    described = {
        "metadata": {k: v for k, v in metadata.items() if k != CONTENT_DIGEST},
        "tensors": {name: [str(t.dtype), list(t.shape)] for name, t in sorted(tensors.items())},
    }
    h.update(json.dumps(described, sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(tensors[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
