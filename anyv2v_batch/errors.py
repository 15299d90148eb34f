"""The one exception type that means "the user can fix this": bad input, missing weights, no memory."""


class AnyV2VError(Exception):
    """A problem with the input or the environment, explained in one line with its fix.

    The CLI prints it as ``error: <message>`` and exits non-zero without a traceback; library callers
    can catch it to tell user errors from bugs.
    """
