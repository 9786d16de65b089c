"""Files written whole or not at all: a temporary file beside the target, flushed, then renamed over it.

Every file the package writes (checkpoints, the run's ``config.yaml``, predictions, exported models,
attention heatmaps) goes through :func:`atomic_path`: the content is written under a hidden name in
the target's own folder (``.NAME.tmp-<pid>-<hex>``), flushed to disk (``fsync``), renamed over the
target with :func:`os.replace` (atomic within one file system) and the folder is flushed so the
rename survives a power cut. A process killed at any moment leaves the old file (or none) or the
complete new one, never a part of one.

Why beside the target: a temporary file elsewhere (``$TMPDIR``, often a tmpfs or node-local scratch)
cannot be renamed across file systems; ``shutil.move`` then *copies* it over the target, and a kill
during that copy leaves the target truncated. Lightning's default checkpoint saving did that.

A temporary left by a killed writer is removed by the next write of the same target once its writer
process is gone (or it has not changed for :data:`STALE_AFTER` seconds). A write that fails (disk full,
a file-size limit, a read-only folder) raises :class:`~sasrec_lightning.errors.OutputError` naming the
file and the reason, with the temporary removed and the target as it was.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError

__all__ = ["atomic_path", "atomic_write", "write_bytes", "write_text", "temporary_path",
           "remove_stale_temporaries", "check_writable_folder", "write_failure", "output_error", "STALE_AFTER"]

log = logging.getLogger(__name__)

# A temporary of a live writer is written to continuously; one unchanged this long (seconds) is left
# over even if its pid is alive again (pids are reused, and a writer on another machine sharing the
# folder has a pid that means nothing here).
STALE_AFTER = 3600.0

# The errors that mean "this cannot be written here" (an OSError with another errno inside a writer,
# e.g. a font matplotlib cannot find, is that writer's own problem and propagates unchanged).
_WRITE_FAILURES = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "larger than the file-size limit of this process, see `ulimit -f`",
    errno.EROFS: "the folder is on a read-only file system",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
    errno.EIO: "the storage device reported an error",
    errno.ENOTDIR: "a file is in the way of a folder",
    errno.EISDIR: "a folder is in the way",
    errno.EEXIST: "a file is in the way of a folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def temporary_path(target: str | os.PathLike) -> Path:
    """A fresh hidden name beside ``target``: ``.NAME.tmp-<pid>-<8 hex digits>``."""
    target = Path(target)
    return target.with_name(f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except PermissionError:  # another user's live process
        return True
    except (OSError, OverflowError, ValueError):  # no such process (ProcessLookupError), or no valid pid
        return False
    return True


def remove_stale_temporaries(target: str | os.PathLike, suffix: str | None = None) -> list[Path]:
    """Remove the temporaries of ``target`` left by killed writers; returns the removed paths.

    A temporary is left over when the process named by its pid is gone, or when it has not changed
    for :data:`STALE_AFTER` seconds. Temporaries of live writers are kept.

    Args:
        target: the file whose temporaries are removed.
        suffix: also those of every other file in its folder whose name ends with ``suffix`` (checkpoints
            are named after their step, so a killed save's name is never written again).
    """
    target = Path(target)
    name = re.escape(target.name) if suffix is None else rf"[^/]+{re.escape(suffix)}"
    pattern = re.compile(rf"\.{name}\.tmp-(\d+)-[0-9a-f]+")
    removed = []
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if _process_alive(int(match.group(1))) and now - entry.stat(follow_symlinks=False).st_mtime < STALE_AFTER:
                continue
            os.remove(entry.path)
        except OSError:  # removed meanwhile by another writer, or not ours to remove
            continue
        log.warning("removed %s, left by an interrupted write", entry.path)
        removed.append(Path(entry.path))
    return removed


def write_failure(error: BaseException | None) -> OSError | None:
    """The write failure (disk full, file-size limit, read-only, ...) behind ``error``, else ``None``.

    Searched along the cause chain: ``torch.save`` reports a failed write as a ``RuntimeError`` whose
    context is the ``OSError``.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and not isinstance(error, OutputError) and error.errno in _WRITE_FAILURES:
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def output_error(target: str | os.PathLike, what: str, error: OSError, where: str = "",
                 existed: bool | None = None) -> OutputError:
    """The one-paragraph error for ``error`` while writing ``target`` (``what``: e.g. ``"checkpoint"``).

    Args:
        target: the file that was being written.
        what: what the file is, as the user knows it (``"checkpoint"``, ``"--prediction.output"``).
        error: the ``OSError`` of the failed write.
        where: the option that chooses the folder, named in the advice (``"--trainer.default_root_dir"``).
        existed: whether ``target`` existed before (default: whether it exists now).
    """
    target = Path(target)
    existed = target.exists() if existed is None else existed
    code = errno.errorcode.get(error.errno, str(error.errno))
    kept = (f"the previous {target.name} is left as it was" if existed else f"no {target.name} was written")
    if error.errno == errno.EFBIG:
        advice = "Raise the limit, or write it elsewhere"
    elif error.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "Free some space, or write it elsewhere"
    else:
        advice = "Write it to a writable folder"
    advice += f" ({where})" if where else ""  # the option that chooses the place
    return OutputError(f"cannot write {what} {str(target)!r}: {error.strerror or error} ({code}: "
                       f"{_WRITE_FAILURES.get(error.errno, 'the write failed')}); {kept}, and no partial file "
                       f"remains. {advice}")


def _fsync(path: Path, folder: bool = False) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:  # (some systems cannot open a folder; the rename is still atomic there)
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError:
        if not folder:  # (some file systems cannot flush a folder)
            raise
    finally:
        os.close(descriptor)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "file", where: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write; on success it is flushed and renamed over ``path``.

    For writers that take a file name (ONNX, ``torch.jit.save``); :func:`atomic_write` opens the file.
    The folders are created. Stale temporaries of ``path`` are removed first (:func:`remove_stale_temporaries`).

    Raises:
        OutputError: the folder or file could not be written (see :func:`output_error`); the
            temporary is removed and ``path`` keeps its old content.
    """
    target = Path(path)
    existed = target.exists()
    temporary = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        temporary = temporary_path(target)
        yield temporary
        _fsync(temporary)
        os.replace(temporary, target)
        temporary = None
        _fsync(target.parent, folder=True)
    except BaseException as error:  # a kill (KeyboardInterrupt, SystemExit) too: never leave the temporary
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.remove(temporary)
        failure = write_failure(error)
        if failure is not None:
            raise output_error(target, what, failure, where, existed) from error
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, what: str = "file", where: str = "") -> Iterator[BinaryIO]:
    """A binary file handle whose content replaces ``path`` whole when the block ends (see :func:`atomic_path`)."""
    with atomic_path(path, what, where) as temporary, open(temporary, "xb") as handle:
        yield handle


def write_bytes(path: str | os.PathLike, data: bytes, what: str = "file", where: str = "") -> Path:
    """Replace ``path`` with ``data`` atomically; returns the path."""
    with atomic_write(path, what, where) as handle:
        handle.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, what: str = "file", where: str = "") -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"), what, where)


def check_writable_folder(folder: str | os.PathLike, what: str, where: str = "") -> None:
    """Fail now, not after training, when files cannot be created in ``folder``.

    Probes the folder (or, while it does not exist yet, its nearest existing ancestor) by creating and
    removing a hidden file; creates no folder.

    Args:
        folder: the folder files will be written to.
        what: what goes there, for the message (``"the run's folder"``).
        where: the option that chooses the folder, named in the advice.

    Raises:
        OutputError: a file is in the way, or the folder cannot be written (read-only, no permission, full).
    """
    folder = Path(folder)
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    advice = f" ({where})" if where else ""
    if not ancestor.is_dir():
        raise OutputError(f"cannot write in {what} {str(folder)!r}: {str(ancestor)!r} is a file, not a folder; "
                          f"expected a writable folder{advice}")
    probe = temporary_path(ancestor / ".sasrec-lightning-probe")
    try:
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(descriptor)
        os.remove(probe)
    except OSError as error:
        code = errno.errorcode.get(error.errno, str(error.errno))
        inside = "" if ancestor == folder else f" (checked in {str(ancestor)!r}, the part that exists)"
        raise OutputError(f"cannot write in {what} {str(folder)!r}: {error.strerror or error} ({code}: "
                          f"{_WRITE_FAILURES.get(error.errno, 'a file could not be created')}){inside}; expected "
                          f"a writable folder{advice}") from error
