"""`provided`: the edited first frame already exists; this editor only fetches it.

Where from, in order: the `image` option (a path or URL, e.g. `--first-frame` of the one-clip
command), the sample's own `<key>.edited.png` / `.edited.jpg`, or a path / URL in the sample's
metadata field named by the `field` option (default `edited_first_frame`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import AnyV2VError
from .base import FirstFrameEditor, SampleContext

EDITED_EXTENSIONS = ("edited.png", "edited.jpg", "edited.jpeg", "edited.webp")


def read_image_url(url: str) -> np.ndarray:
    """An image from a local path or any fsspec URL (s3://, gs://, http://, ...)."""
    import fsspec

    from ..video_io import read_image

    try:
        with fsspec.open(url, "rb") as f:
            data = f.read()
    except (OSError, ValueError) as e:
        raise AnyV2VError(f"cannot open the edited first frame {url!r}: {str(e).splitlines()[0][:160]}") from None
    return read_image(data, name=url)


class ProvidedEditor(FirstFrameEditor):
    name = "provided"
    description = "use an edited first frame that comes with the sample (or a given image)"
    options = {
        "image": "path or URL of the edited first frame (overrides the sample's own)",
        "field": "metadata field holding a path or URL (default: edited_first_frame)",
    }

    def edit(self, frame: np.ndarray, options: dict[str, Any], sample: SampleContext) -> np.ndarray:
        from ..video_io import read_image

        if options.get("image"):
            return read_image_url(str(options["image"]))
        for ext in EDITED_EXTENSIONS:
            if ext in sample.files:
                return read_image(sample.files[ext], name=f"{sample.key}.{ext}")
        field = str(options.get("field", "edited_first_frame"))
        if sample.meta.get(field):
            return read_image_url(str(sample.meta[field]))
        raise AnyV2VError(
            f"sample {sample.key!r} has no edited first frame: add {sample.key}.edited.png to the shard, "
            f"a path in its metadata field {field!r}, or choose another --editor"
        )
