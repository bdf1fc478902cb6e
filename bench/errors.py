"""The one exception type for failures a user can cause.

The CLI prints ``error: <message>`` (one line, no traceback) for these and exits with status 2.
A message says what went wrong *and* what to do about it.
"""


class UserError(Exception):
    """A failure caused by the user's input (bad config, unknown name, missing data ...)."""
