"""The error every part of batch inference raises for a problem with the user's input."""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """A problem with what the user asked for (a missing file, a bad option value, ...).

    The command prints its message as a single line and exits non-zero, without a traceback.
    """
