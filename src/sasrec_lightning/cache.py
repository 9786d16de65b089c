"""On-disk cache of processed sequences, keyed by the source's identity and every preprocessing option.

One entry is a folder ``<root>/<key>/`` with ``arrays.npz`` (CSR items/offsets, timestamps; read
with ``allow_pickle=False``), ``user_ids.parquet`` / ``item_ids.parquet`` (the original ids, any
Arrow type: no pickled object arrays) and ``meta.json`` (what the key was made of, statistics).
Entries are written to a temporary folder and renamed into place with :func:`os.replace`, so a run
killed mid-write leaves no entry a later run could read half of.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .preprocessing import SequenceData

__all__ = ["CACHE_VERSION", "SequenceCache", "cache_key", "default_cache_root"]

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stored layout or the preprocessing semantics change


def default_cache_root() -> str:
    """``$SASREC_LIGHTNING_CACHE``, else ``$XDG_CACHE_HOME/sasrec_lightning`` (``~/.cache/...``)."""
    if os.environ.get("SASREC_LIGHTNING_CACHE"):
        return os.environ["SASREC_LIGHTNING_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sasrec_lightning")


@contextlib.contextmanager
def _build_lock(root: Path, key: str) -> Iterator[None]:
    """An exclusive inter-process lock per cache entry (a no-op where ``fcntl`` is unavailable).

    The lock file lives in the temporary directory, not in the cache, so a failed build leaves the
    cache untouched.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no lock, concurrent builders each write an identical entry
        yield
        return
    name = hashlib.sha256(f"{os.path.abspath(root)}/{key}".encode()).hexdigest()[:24]
    with open(os.path.join(tempfile.gettempdir(), f"sasrec_lightning-{name}.lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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

    def load(self, key: str) -> SequenceData | None:
        """The cached entry, or ``None`` when there is none (or it cannot be read)."""
        folder = self.path(key)
        if not (folder / "meta.json").is_file():
            return None
        try:
            meta = json.loads((folder / "meta.json").read_text())
            with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
                items, offsets = arrays["items"], arrays["offsets"]
                timestamps = arrays["timestamps"] if "timestamps" in arrays.files else None
            user_ids = pq.read_table(folder / "user_ids.parquet").column(0).to_numpy()
            item_ids = pq.read_table(folder / "item_ids.parquet").column(0).to_numpy()
        except (OSError, ValueError, KeyError) as error:
            log.warning("ignoring unreadable cache entry %s (%s); rebuilding", folder, error)
            return None
        info = dict(meta.get("info", {}))
        info["cache"] = {"key": key, "path": str(folder), "hit": True}
        return SequenceData(items=items, offsets=offsets, user_ids=user_ids, item_ids=item_ids,
                            timestamps=timestamps, info=info)

    def save(self, key: str, data: SequenceData, meta: dict | None = None) -> Path:
        """Write an entry atomically (temporary folder, then :func:`os.replace`)."""
        self.root.mkdir(parents=True, exist_ok=True)
        folder = self.path(key)
        temporary = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=self.root))
        try:
            arrays = {"items": data.items, "offsets": data.offsets}
            if data.timestamps is not None:
                arrays["timestamps"] = data.timestamps
            np.savez(temporary / "arrays.npz", **arrays)
            pq.write_table(pa.table({"user_id": pa.array(data.user_ids)}), temporary / "user_ids.parquet")
            pq.write_table(pa.table({"item_id": pa.array(data.item_ids)}), temporary / "item_ids.parquet")
            info = {k: v for k, v in data.info.items() if k != "cache"}
            (temporary / "meta.json").write_text(json.dumps({**(meta or {}), "info": info}, indent=1, default=str))
            if folder.exists():  # a forced rebuild replaces the old entry
                shutil.rmtree(folder, ignore_errors=True)
            try:
                os.replace(temporary, folder)
            except OSError:  # another process won the race: its entry is as good as ours
                if not (folder / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        return folder

    def get_or_build(self, key: str, build: Callable[[], SequenceData], meta: dict | None = None,
                     rebuild: bool = False) -> SequenceData:
        """The cached entry for ``key``; otherwise ``build()`` it and store it (only if it succeeds).

        Processes building the same key (e.g. DDP ranks started together) take turns: the first
        builds, the others wait and then read its entry instead of preprocessing again.
        """
        with _build_lock(self.root, key):
            if not rebuild:
                data = self.load(key)
                if data is not None:
                    log.info("loaded processed sequences from cache %s", self.path(key))
                    return data
            data = build()
            folder = self.save(key, data, meta)
        data.info["cache"] = {"key": key, "path": str(folder), "hit": False}
        log.info("cached processed sequences in %s", folder)
        return data
