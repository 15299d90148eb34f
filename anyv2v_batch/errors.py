"""The one exception type that means "the user can fix this": bad input, missing weights, no memory."""


class AnyV2VError(Exception):
    """A problem with the input or the environment, explained in one line with its fix.

    The CLI prints it as ``error: <message>`` and exits non-zero without a traceback; library callers
    can catch it to tell user errors from bugs.
    """


def first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message cut to its first line (at most `limit` characters), or its type's name when
    it has none: the part of a library's error that fits in one of ours."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:limit]
