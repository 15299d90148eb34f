"""Prompt templates: `{field}` placeholders filled from a sample's metadata.

Only plain names are allowed. `str.format` would evaluate attribute and index access (`{meta.__class__}`,
`{caption[0]}`) on the metadata objects a shard supplies, apply conversions (`{caption!r}`) and format
specs (`{caption:>999999999}` builds a gigabyte string); here a template is parsed once and filled by
concatenation, so none of that can run.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from anyv2v_batch.errors import AnyV2VError


class TemplateError(AnyV2VError):
    pass


def _parse(template: str) -> list[tuple[str, str | None]]:
    """[(literal text, field name or None)], each field checked to be a plain name."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise TemplateError(
            f"template {template!r} is malformed ({e}); write literal braces as {{{{ and }}}}"
        ) from None
    pieces = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            if not name:
                raise TemplateError(f"template {template!r} uses {{}}: only named fields like {{caption}} are allowed")
            if not name.isidentifier():
                raise TemplateError(
                    f"template field {{{name}}} is not a plain name: attribute or index access is not allowed, "
                    "use {caption}-style names only"
                )
            if conversion:
                raise TemplateError(f"template field {{{name}}} has a conversion !{conversion}: use {{{name}}} only")
            if spec:
                raise TemplateError(f"template field {{{name}}} has a format spec :{spec}: use {{{name}}} only")
        pieces.append((literal, name))
    return pieces


def template_fields(template: str) -> list[str]:
    """The field names a template uses, in order; TemplateError (naming the field) if it is not plain."""
    return [name for _, name in _parse(template) if name is not None]


def fill(template: str, values: Mapping[str, Any]) -> str:
    """The template with each `{field}` replaced by `str(values[field])` (every field must be present)."""
    return "".join(literal + (str(values[name]) if name is not None else "") for literal, name in _parse(template))
