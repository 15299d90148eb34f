"""`provided`: the edited first frame already exists; this editor only fetches it.

Where from, in order: the `image` option (a path or URL, e.g. `--first-frame` of the one-clip
command), the sample's own `<key>.edited.png` / `.edited.jpg`, or a path / URL in the sample's
metadata field named by the `field` option (default `edited_first_frame`).

The `image` option is the job owner's and is trusted. Metadata comes with the shard, from people we
do not control: a path or URL there is read only if it lies under one of the `allowed_roots` option's
prefixes (none by default), so a shard cannot make the job read `/etc/passwd`, another dataset's files
or an internal URL. Local paths are resolved (`..`, symlinks) before the check and the resolved path
is what is opened; URLs are compared by scheme, host (or bucket) and percent-decoded path, and a URL
whose path has a '..' component is refused (object stores keep '..' where a web server resolves it).
"""

from __future__ import annotations

import os
import posixpath
import re
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from ..errors import AnyV2VError
from ..video_io import MAX_IMAGE_PIXELS
from .base import FirstFrameEditor, SampleContext

EDITED_EXTENSIONS = ("edited.png", "edited.jpg", "edited.jpeg", "edited.webp")
URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
ALLOWED_ROOTS_HELP = (
    "path or URL prefixes (a list) under which a metadata path / URL may be read (default: none, only "
    "the sample's own members)"
)


def read_image_url(url: str, max_pixels: int = MAX_IMAGE_PIXELS, mode: str = "RGB") -> np.ndarray:
    """An image from a local path or any fsspec URL (s3://, gs://, http://, ...), read in bounded size."""
    import fsspec

    from ..video_io import read_image

    limit = 4 * max_pixels + 2**20  # more bytes than an uncompressed RGBA image of the allowed size is not an image
    try:
        with fsspec.open(url, "rb") as f:
            data = f.read(limit + 1)
    except (OSError, ValueError) as e:
        raise AnyV2VError(f"cannot open the edited first frame {url!r}: {str(e).splitlines()[0][:160]}") from None
    if len(data) > limit:
        raise AnyV2VError(f"image {url!r} is over {limit} bytes, too big for limits.max_image_pixels ({max_pixels})")
    return read_image(data, name=url, max_pixels=max_pixels, mode=mode)


def _url_path(path: str) -> str:
    """A URL path as a server would see it: percent-decoded, backslashes as slashes, '..' resolved."""
    return "/" + posixpath.normpath("/" + unquote(path).replace("\\", "/")).lstrip("/")


def _under(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def allowed_roots(options: dict[str, Any]) -> list[str]:
    """The `allowed_roots` option as a list of absolute paths / URLs (AnyV2VError if malformed)."""
    raw = options.get("allowed_roots") or []
    roots = [raw] if isinstance(raw, str) else raw
    if not isinstance(roots, (list, tuple)) or not all(isinstance(r, str) and r for r in roots):
        raise AnyV2VError(f"editor option allowed_roots must be a list of paths / URL prefixes, got {raw!r}")
    for root in roots:
        if "::" in root or not (URL.match(root) or os.path.isabs(root)):
            raise AnyV2VError(f"editor option allowed_roots: {root!r} must be an absolute path or a URL prefix")
    return list(roots)


def resolve_allowed(location: str, roots: list[str]) -> str | None:
    """What to open for a metadata path / URL if it lies under one of `roots` (None if not): a local
    path resolved (so '..' and symlinks cannot escape), or the URL itself."""
    if "::" in location:  # fsspec chains (zip://x::file://...) are never followed
        return None
    if URL.match(location) and not location.lower().startswith("file://"):
        parts = urlsplit(location)
        if ".." in unquote(parts.path).replace("\\", "/").split("/"):
            return None  # filesystems differ in how they resolve '..' (object stores keep it): never followed
        path = _url_path(parts.path)
        for root in roots:
            r = urlsplit(root)
            same_place = (r.scheme.lower(), r.netloc.lower()) == (parts.scheme.lower(), parts.netloc.lower())
            if URL.match(root) and same_place and _under(path, _url_path(r.path)):
                return location
        return None
    local = unquote(urlsplit(location).path) if URL.match(location) else location
    if not os.path.isabs(local):  # relative to what? the worker's folder is no place a shard may name
        return None
    resolved = os.path.realpath(local)
    for root in roots:
        if URL.match(root):
            if not root.lower().startswith("file://"):
                continue
            root = unquote(urlsplit(root).path)
        if _under(resolved, os.path.realpath(root)):
            return resolved
    return None


def read_metadata_image(field: str, options: dict[str, Any], sample: SampleContext, mode: str = "RGB") -> np.ndarray:
    """The image a sample's metadata field names, if `allowed_roots` allows it (`mode`: as `read_image`)."""
    from ..video_io import read_image

    location = str(sample.meta[field])
    roots = allowed_roots(options)
    target = resolve_allowed(location, roots)
    if target is None:
        shown = repr(location[:200])
        given = ", ".join(map(repr, roots)) if roots else "none set: only the sample's own members are read"
        raise AnyV2VError(
            f"sample {sample.key!r}: metadata field {field!r} names {shown}, which is not under the editor option "
            f"allowed_roots ({given}); to read it, add its folder or URL prefix, e.g. "
            "--editor-option allowed_roots=[/data/edits] (job: editor.options.allowed_roots)"
        )
    if target == location and URL.match(location):
        return read_image_url(location, sample.max_image_pixels, mode)
    return read_image(target, name=location, max_pixels=sample.max_image_pixels, mode=mode)


class ProvidedEditor(FirstFrameEditor):
    name = "provided"
    description = "use an edited first frame that comes with the sample (or a given image)"
    options = {
        "image": "path or URL of the edited first frame (overrides the sample's own; trusted)",
        "field": "metadata field holding a path or URL (default: edited_first_frame)",
        "allowed_roots": ALLOWED_ROOTS_HELP,
    }

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        allowed_roots(options)

    def edit(self, frame: np.ndarray, options: dict[str, Any], sample: SampleContext) -> np.ndarray:
        from ..video_io import read_image

        if options.get("image"):
            return read_image_url(str(options["image"]), sample.max_image_pixels)
        for ext in EDITED_EXTENSIONS:
            if ext in sample.files:
                return read_image(sample.files[ext], name=f"{sample.key}.{ext}", max_pixels=sample.max_image_pixels)
        field = str(options.get("field", "edited_first_frame"))
        if sample.meta.get(field):
            return read_metadata_image(field, options, sample)
        raise AnyV2VError(
            f"sample {sample.key!r} has no edited first frame: add {sample.key}.edited.png to the shard, "
            f"a path in its metadata field {field!r}, or choose another --editor"
        )
