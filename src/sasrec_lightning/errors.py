"""The package's error for bad input data (the CLI prints it without a traceback)."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad input data; the message names the file, field or line and what was expected."""
