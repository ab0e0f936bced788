"""User-facing errors.

Anything a user can cause (a bad path, an empty corpus, a tampered checkpoint,
a misspelt option) raises :class:`GenrnnError` with a message that says what is
wrong and what to do. The CLI prints the message and exits with status 2; it
never shows a traceback for these.
"""


class GenrnnError(Exception):
    """An error caused by user input, with a message meant for the user."""


class DiskFullError(GenrnnError):
    """A write failed for want of space (or a file-size limit); the file that
    was there before is unchanged, so a run can resume once there is room."""
