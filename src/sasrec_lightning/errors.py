"""The package's errors for bad input (the CLI prints them as one ``error:`` line, without a traceback)."""

from __future__ import annotations

__all__ = [
    "DataError", "OptionError", "CheckpointError", "ModelError", "OutputError", "MissingPackageError", "in_chain",
]


class DataError(ValueError):
    """Bad input data; the message names the file, field or line and what was expected."""


class OptionError(ValueError):
    """An option out of its range; the message names the option, the value given and what is allowed."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here (unsafe, unreadable or trained on other data); says what to do."""


class ModelError(ValueError):
    """A model whose training loss, weights or scores are not finite (it diverged); says which and what to try."""


class OutputError(OSError):
    """A file the package writes could not be written (disk full, a file-size limit, a read-only folder).

    The message names the file and the reason; the previous file, if any, is left as it was and no
    half-written file remains. An ``OSError``, so code catching write errors still catches it.
    """


class MissingPackageError(ImportError):
    """An optional package a command needs is not installed; the message names the extra that installs it.

    An ``ImportError``, so code catching a missing import still catches it.
    """


def in_chain(error: BaseException | None, kind: type[BaseException] | tuple[type[BaseException], ...] | str):
    """The first exception of ``kind`` (a type, types or a class name) in the cause/context chain, else ``None``.

    A class name matches exceptions of a library that is not imported here (e.g. pandas' ``ParserError``).
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if type(error).__name__ == kind if isinstance(kind, str) else isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
