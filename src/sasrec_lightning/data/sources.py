"""Interaction sources: files, archives, URLs and hub datasets, all read through Hugging Face ``datasets``.

Every source ends as one Arrow table with the canonical columns ``user`` and ``item``, and when the
source has them ``timestamp`` (int64, seconds for dates), ``rating`` (float64) and ``line`` (the
1-based line of each row in a text file, for error messages). Values are validated here, where the
file, column and line are known; preprocessing receives clean, typed columns. CSV/TSV cells are read
as text and typed here (ids keep their spelling unless all are plain integers). When ``datasets``
cannot read a file, the file is read again on that error path to name the line and what was wrong
(non-UTF-8 bytes, a line with extra fields, a malformed JSON line), so every failure is one
``DataError`` paragraph rather than a reader traceback. A UTF-8 byte-order mark at the start of a text
file is dropped, and a UTF-16/UTF-32 one is named in the error (:mod:`.textfiles`).

Supported (``format``): ``sasrec`` (``user item`` text), ``csv``, ``tsv``, ``parquet``, ``json``
(JSON lines; one Python-literal dict per line is detected and parsed safely: the raw Steam and older
Amazon files), ``literal`` (force the Python-literal parser), ``movielens`` (``ratings.dat`` or the
published ``ml-*.zip``), ``disk`` (a ``save_to_disk`` folder) and ``hub`` (a dataset id); from Python
also a table in memory (:mod:`.memory`: a Dataset, DataFrame, Arrow table or dict of columns, format ``memory``).

The parts: :mod:`.locations` (paths, URLs, formats, identity, downloads), :mod:`.readers` (one reader per
format), :mod:`.columns` (typed canonical columns) and :mod:`.diagnostics` (the line and reason of a failure).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from ..errors import DataError
from .columns import canonical_columns
from .locations import check_local, detect_format, local_path
from .memory import describe, is_in_memory, memory_table
from .readers import READERS, ReadRequest

__all__ = ["load_interactions", "scratch_cache"]


@contextlib.contextmanager
def scratch_cache() -> Iterator[str]:
    """A throw-away ``datasets`` cache for reading one local file, removed afterwards (also on errors).

    The Arrow files ``load_dataset`` writes for a local file (and ``map`` results, extracted
    archives, lock files) go here instead of ``--data.cache.dir``: a failed load leaves nothing in
    the cache, and a successful one needs no raw copy, since the processed sequences are cached.
    It lives in the system temporary directory (``$TMPDIR``) and is removed on errors and Ctrl-C (and
    on SIGTERM under the commands, which turn it into an exception: ``cli/signals.py``). Tables read
    from it stay valid after the removal: they are memory-mapped, and an unlinked file's mapping
    lives on (POSIX).
    """
    scratch = tempfile.mkdtemp(prefix="sasrec-lightning-read-")
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_interactions(
    path: str | Any,
    format: str | None = None,
    user_column: str = "user",
    item_column: str = "item",
    timestamp_column: str | None = None,
    name: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
    rating_column: str | None = None,
    num_proc: int | None = None,
) -> pa.Table:
    """Read interactions from a local file, a ``save_to_disk`` folder, a hub dataset id or a table in memory.

    Args:
        path: file path, folder or hub id; or a table in memory (:data:`~.memory.KINDS`), whose ``format``
            is ``memory`` and whose ``DatasetDict`` split is ``split``.
        format: a key of :data:`READERS`; detected from the extension when ``None``.
        user_column: user column name in the source (ignored by ``sasrec``/``movielens``).
        item_column: item column name in the source (ignored by ``sasrec``/``movielens``).
        timestamp_column: timestamp column name, or ``None`` to keep file order (``movielens``
            always uses its timestamps).
        name: hub dataset configuration name.
        split: hub dataset split (and the split of a ``save_to_disk`` ``DatasetDict``).
        cache_dir: the ``datasets`` cache of hub ids (their prepared Arrow files are kept there).
            Local files (and local folders read as ``hub``) are read through a temporary cache that
            is removed afterwards, so loading them, successfully or not, writes nothing to ``cache_dir``.
        rating_column: rating column name, or ``None`` (``movielens`` always reads its ratings).
        num_proc: worker processes for parsing Python-literal lines.

    Returns:
        Arrow table with columns ``user``, ``item`` and, when available, ``timestamp``, ``rating``, ``line``.

    Raises:
        DataError: missing/empty/corrupt file, bad line or value, missing column, unreachable hub id.
    """
    if is_in_memory(path):  # a table passed from Python: the same typed, checked columns as a file's
        return canonical_columns(memory_table(path, split), describe(path, split), "memory", user_column, item_column,
                                 timestamp_column, rating_column)
    path = local_path(path)
    format = format or detect_format(path)
    if format not in READERS:
        raise DataError(f"unknown format {format!r} for {path!r}; expected one of {list(READERS)}")
    if format != "hub":
        check_local(path, format)
    if READERS[format].sniff is not None:
        format = READERS[format].sniff(path)  # e.g. a .json file of Python-literal dicts: literal
    reader = READERS[format]
    if reader.columns is not None:
        user_column, item_column, timestamp_column, rating_column = reader.columns
    keys = list(dict.fromkeys(key for key in (user_column, item_column, timestamp_column, rating_column) if key))
    with contextlib.ExitStack() as stack:
        # Local files and folders: the datasets cache is a scratch folder (nothing lands in cache_dir,
        # and datasets' own cache, keyed by path and modification time, can never serve an edited
        # file); hub ids keep using cache_dir, where datasets prepares into "*.incomplete" and renames.
        local = format != "disk" and (format != "hub" or os.path.isdir(path))
        scratch = stack.enter_context(scratch_cache()) if local else None
        table = reader.read(ReadRequest(path, format, keys, scratch, name, split, cache_dir, num_proc))
        return canonical_columns(table, path, format, user_column, item_column, timestamp_column, rating_column)
