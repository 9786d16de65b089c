"""On-disk cache of processed sequences, keyed by the source's identity and every preprocessing option.

One entry is a folder ``<root>/<key>/`` with ``arrays.npz`` (CSR items/offsets, timestamps; read
with ``allow_pickle=False``), ``user_ids.parquet`` / ``item_ids.parquet`` (the original ids, any
Arrow type: no pickled object arrays) and ``meta.json`` (what the key was made of, statistics).
Entries are written to a temporary folder, flushed to disk (``fsync``) and renamed into place with
:func:`os.replace`, so a run killed mid-write (or a power cut) leaves no entry a later run could read
half of. A temporary folder left by a killed save is removed by a later save or load once it is
older than :data:`STALE_TEMPORARY_SECONDS`; an entry that cannot be read is removed and rebuilt.

The cache is optional: a folder that cannot be written (read-only, full, a file-size limit) is
skipped with one warning and the run goes on with the sequences as built.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .preprocessing import SequenceData

__all__ = ["CACHE_VERSION", "STALE_TEMPORARY_SECONDS", "SequenceCache", "cache_key", "default_cache_root"]

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when the key, the stored layout or the preprocessing semantics change
# (2: CSV ids read as text; 3: the source's inode and sampled-content digest in the key)
STALE_TEMPORARY_SECONDS = 30 * 60  # a save takes seconds; a temporary folder this old was left by a killed save


def default_cache_root() -> str:
    """``$SASREC_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/sasrec_lightning`` (``~/.cache/...``)."""
    if os.environ.get("SASREC_LIGHTNING_CACHE"):
        return os.environ["SASREC_LIGHTNING_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sasrec_lightning")


def _reason(error: OSError) -> str:
    """``ENOSPC: No space left on device``: an ``OSError`` in a few words, for a warning."""
    if error.errno in errno.errorcode and error.strerror:
        return f"{errno.errorcode[error.errno]}: {error.strerror}"
    return f"{type(error).__name__}: {error}"


def _lock_paths(root: Path, key: str) -> list[tuple[str, bool]]:
    """Where the lock of ``key`` may live, preferred first: ``(path, in the shared temporary directory)``.

    The cache folder first: nobody else can plant a file there. ``$TMPDIR`` (a hashed, predictable
    name, so every process of this cache finds the same file) when the cache folder is read-only.
    """
    name = hashlib.sha256(f"{os.path.abspath(root)}/{key}".encode()).hexdigest()[:24]
    return [(os.path.join(root, f".lock-{key}"), False),
            (os.path.join(tempfile.gettempdir(), f"sasrec_lightning-{name}.lock"), True)]


def _open_lock_file(path: str, shared: bool) -> int:
    """Open (create) a lock file without following a symlink planted at its name; the descriptor.

    ``O_NOFOLLOW``: a symlink at ``path`` (e.g. planted in a shared ``/tmp`` at the predictable
    name, pointing at a file of yours) is refused, never opened, created or written through. In the
    shared temporary directory a file owned by another user is refused too (they could hold it
    locked forever). The file is opened read-only: nothing is ever written to it.

    Raises:
        OSError: the file cannot be created or opened, is a symlink, or belongs to another user.
    """
    flags = os.O_RDONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP or os.path.islink(path):
            raise OSError(errno.ELOOP, "a symbolic link is at the lock file's name (not followed)", path) from None
        raise
    if shared and os.fstat(descriptor).st_uid != os.geteuid():
        os.close(descriptor)
        raise OSError(errno.EPERM, "the lock file belongs to another user", path)
    return descriptor


@contextlib.contextmanager
def _build_lock(root: Path, key: str) -> Iterator[None]:
    """An exclusive inter-process lock per cache entry (a no-op where ``fcntl`` is unavailable).

    The lock file is ``<root>/.lock-<key>`` (the cache folder is created for it), or, when the cache
    folder is not writable, ``$TMPDIR/sasrec_lightning-<hash>.lock``; neither is followed if it is a
    symlink (:func:`_open_lock_file`). When no lock file can be opened the build goes on without the
    lock, with a warning: the cache is optional, and the only cost is that processes building the
    same entry at once each build it. The lock file is removed when the lock is released, so lock
    files do not pile up (one per entry ever built). Removing a lock file others may wait on is safe
    with the usual check: after ``flock`` succeeds, the holder verifies that the path still names the
    file it locked; a waiter that locked a file removed meanwhile opens the new one and tries again.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no lock, concurrent builders each write an identical entry
        yield
        return
    problems, path, shared, descriptor = [], "", False, None
    for candidate, in_tmpdir in _lock_paths(root, key):
        try:
            if not in_tmpdir:
                os.makedirs(root, exist_ok=True)
            descriptor = _open_lock_file(candidate, in_tmpdir)
        except OSError as error:
            problems.append(f"{candidate}: {_reason(error)}")
            continue
        path, shared = candidate, in_tmpdir  # the lock file of this run, opened again below if it is replaced
        break
    while descriptor is not None:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            locked, named = os.fstat(descriptor), os.lstat(path)
            current = (locked.st_ino, locked.st_dev) == (named.st_ino, named.st_dev)
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(descriptor)  # the previous holder removed this file: lock the path's new file
        descriptor = None
        try:
            descriptor = _open_lock_file(path, shared)
        except OSError as error:
            problems.append(f"{path}: {_reason(error)}")
    if descriptor is None:
        log.warning("cannot take the build lock of cache entry %s (%s); continuing without it (processes that "
                    "build this entry at the same time each build it)", key, "; ".join(problems))
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still holding the lock: waiters on this file will see it is gone
        os.close(descriptor)


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk; folders cannot be opened on Windows."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems cannot fsync a folder
        pass
    finally:
        os.close(descriptor)


def cache_key(source: dict, options: dict) -> str:
    """A stable hex key of the source identity and the preprocessing options."""
    blob = json.dumps({"version": CACHE_VERSION, "source": source, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class SequenceCache:
    """Processed :class:`~sasrec_lightning.preprocessing.SequenceData` entries under ``root``.

    Args:
        root: the cache folder (created on the first write).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key

    def remove_stale_temporaries(self, max_age: float = STALE_TEMPORARY_SECONDS) -> list[Path]:
        """Remove ``.tmp-*`` folders older than ``max_age`` seconds (left by saves that were killed).

        A save in progress is younger: it writes its few files within seconds.
        """
        removed = []
        now = time.time()
        for folder in self.root.glob(".tmp-*") if self.root.is_dir() else ():
            try:
                age = now - folder.stat().st_mtime
            except OSError:  # removed meanwhile by another process
                continue
            if age > max_age:
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
                log.warning("removed %s, left by an interrupted cache write", folder)
        return removed

    def load(self, key: str) -> SequenceData | None:
        """The cached entry, or ``None`` when there is none; an unreadable entry is removed (and so rebuilt).

        Anything that goes wrong while reading an entry (truncated or garbled files: ``EOFError``,
        ``BadZipFile``, Arrow errors, bad JSON, inconsistent arrays) means the entry is damaged; it
        must not stop every later run, so it is logged, removed and reported as a miss.
        """
        self.remove_stale_temporaries()
        folder = self.path(key)
        if not (folder / "meta.json").is_file():
            return None
        try:
            data = self._read(folder, json.loads((folder / "meta.json").read_text()))
        except Exception as error:  # noqa: BLE001  (any damage means: rebuild; see the docstring)
            log.warning("removing unreadable cache entry %s (%s: %s); it will be rebuilt", folder,
                        type(error).__name__, error)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        data.info["cache"] = {"key": key, "path": str(folder), "hit": True}
        return data

    def _read(self, folder: Path, meta: dict) -> SequenceData:
        """An entry's data from its files (``meta``: its ``meta.json``); any error means a damaged entry."""
        with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
            items, offsets = arrays["items"], arrays["offsets"]
            timestamps = arrays["timestamps"] if "timestamps" in arrays.files else None
        user_ids = pq.read_table(folder / "user_ids.parquet").column(0).to_numpy()
        item_ids = pq.read_table(folder / "item_ids.parquet").column(0).to_numpy()
        if (offsets[0] != 0 or offsets[-1] != len(items) or len(user_ids) != len(offsets) - 1
                or (timestamps is not None and len(timestamps) != len(items))):
            raise ValueError(f"inconsistent arrays ({len(items)} items, {len(offsets)} offsets, "
                             f"{len(user_ids)} users)")
        return SequenceData(items=items, offsets=offsets, user_ids=user_ids, item_ids=item_ids,
                            timestamps=timestamps, info=dict(meta.get("info", {})))

    def save(self, key: str, data: SequenceData, meta: dict | None = None) -> Path:
        """Write an entry atomically: a temporary folder, flushed to disk, then :func:`os.replace`."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temporaries()
        folder = self.path(key)
        temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.root))
        try:
            names = self._write(temporary, data, meta or {})
            # The rename must not reach the disk before the data: after a crash the entry would
            # exist with empty or partial files.
            for name in (*names, "meta.json", "."):
                _fsync(temporary / name)
            if folder.exists():  # a forced rebuild replaces the old entry
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.replace(temporary, folder)
            except OSError:  # another process won the race: its entry is as good as ours
                if not (folder / "meta.json").is_file():
                    raise
            _fsync(self.root)  # the rename itself
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        return folder

    def _write(self, folder: Path, data: SequenceData, meta: dict) -> tuple[str, ...]:
        """Write ``data`` and ``meta.json`` into ``folder``; the names of the other files written."""
        arrays = {"items": data.items, "offsets": data.offsets}
        if data.timestamps is not None:
            arrays["timestamps"] = data.timestamps
        np.savez(folder / "arrays.npz", **arrays)
        pq.write_table(pa.table({"user_id": pa.array(data.user_ids)}), folder / "user_ids.parquet")
        pq.write_table(pa.table({"item_id": pa.array(data.item_ids)}), folder / "item_ids.parquet")
        info = {k: v for k, v in data.info.items() if k != "cache"}
        (folder / "meta.json").write_text(json.dumps({**meta, "info": info}, indent=1, default=str))
        return "arrays.npz", "user_ids.parquet", "item_ids.parquet"

    def get_or_build(self, key: str, build: Callable[[], SequenceData], meta: dict | None = None,
                     rebuild: bool = False) -> SequenceData:
        """The cached entry for ``key``; otherwise ``build()`` it and store it (only if it succeeds).

        Processes building the same key (e.g. DDP ranks started together) take turns: the first
        builds, the others wait and then read its entry instead of preprocessing again. When the
        entry cannot be written (``OSError``: a read-only or full disk, a file-size limit) the built
        data is returned with a warning and nothing is left in the cache folder.
        """
        with _build_lock(self.root, key):
            if not rebuild:
                data = self.load(key)
                if data is not None:
                    log.info("loaded processed sequences from cache %s", self.path(key))
                    return data
            data = build()
            try:
                folder = self.save(key, data, meta)
            except OSError as error:  # read-only, full, a file-size limit: the cache is optional
                log.warning("cannot write the processed-data cache in %s (%s); continuing without the cache: the "
                            "sequences are used as built from the source and the next run builds them again (free "
                            "space, make the folder writable, or choose another with --data.cache.dir; "
                            "--data.cache.use false skips the cache)", self.root, _reason(error))
                return data
        data.info["cache"] = {"key": key, "path": str(folder), "hit": False}
        log.info("cached processed sequences in %s", folder)
        return data
