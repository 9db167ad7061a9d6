"""User-facing errors: one line, exit code 2, never a traceback."""
from __future__ import annotations


class JulekitError(Exception):
    """A problem with the user's input (recipe, data, flags) that they can fix.

    The CLI prints ``str(error)`` on one line and exits with ``exit_code``.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep the message on one line whatever the caller passes in.
        super().__init__(" ".join(str(message).split()))


class RecipeError(JulekitError):
    """A recipe key, value or plugin name is invalid."""


class DataError(JulekitError):
    """A dataset cannot be found, read or is malformed."""


class PluginError(JulekitError):
    """A plugin cannot be found or failed to load."""


class TrainingError(JulekitError):
    """Training cannot go on (non-finite features or loss, out of memory)."""
