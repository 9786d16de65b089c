"""Interactions already in memory: a ``datasets`` Dataset or DatasetDict, a pandas DataFrame, an Arrow table, a dict.

From Python, ``SASRecDataModule(path=table)`` takes the table itself instead of a file. Each kind
becomes one Arrow table here, column-wise and without copying where Arrow allows it (a DataFrame
through ``pa.Table.from_pandas``, a Dataset through its Arrow format, which honours a ``select`` /
``shuffle`` / ``filter``), and then takes the files' way: the same column options, the same typed
and validated canonical columns (:func:`~.columns.canonical_columns`) and the same preprocessing.

An in-memory table has no file identity, so the sequence cache is keyed on a SHA-256 of the
canonical columns' bytes (:func:`content_digest`); a checkpoint stores a description of the table
(:func:`describe`), never the table, and a description given back as ``path`` is refused with a
line saying the data must be given again (:func:`check_not_description`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from ..errors import DataError
from .diagnostics import one_paragraph
from .readers import pick_split

__all__ = ["KINDS", "is_in_memory", "describe", "memory_table", "content_digest", "is_description",
           "check_not_description"]

#: What ``path`` may be besides a path, for the messages.
KINDS = ("a datasets.Dataset or DatasetDict, a pandas.DataFrame, a pyarrow.Table or RecordBatch, a dict of columns, "
         "or an object with the Arrow PyCapsule interface (__arrow_c_stream__: polars, DuckDB, ...)")

# "<pandas.DataFrame 353962 rows>": what a checkpoint records instead of the table (see describe).
_DESCRIPTION = re.compile(r"<[\w.]+(\['[^'<>]*'\])?( \d+ rows)?>")


def _is_dataframe(data: Any) -> bool:
    """A pandas DataFrame, without importing pandas when nobody passed one."""
    module = type(data).__module__ or ""
    return module.startswith("pandas") and type(data).__name__ == "DataFrame"


def is_in_memory(data: Any) -> bool:
    """Whether ``path`` is a table in memory rather than a path, a hub id or nothing."""
    return data is not None and not isinstance(data, (str, os.PathLike))


def _kind(data: Any) -> str:
    """``pandas.DataFrame``, ``pyarrow.Table``, ``datasets.Dataset``, ``dict``: the type by its package's name."""
    kind = type(data)
    package = (kind.__module__ or "").split(".")[0]
    return kind.__name__ if package in ("builtins", "") else f"{package}.{kind.__name__}"


def _num_rows(data: Any) -> int | None:
    if isinstance(data, Mapping):  # a dict of columns: the columns' common length
        lengths = {len(column) for column in data.values() if hasattr(column, "__len__")}
        return lengths.pop() if len(lengths) == 1 else None
    if isinstance(data, (datasets.Dataset, pa.Table, pa.RecordBatch)) or _is_dataframe(data) or \
            hasattr(data, "__arrow_c_stream__"):
        try:
            return len(data)  # rows (also a polars DataFrame's)
        except TypeError:
            return None
    return None  # not a table: no rows to count


def describe(data: Any, split: str = "train") -> str:
    """``"<pandas.DataFrame 353962 rows>"``: a table in memory as a checkpoint and the messages name it.

    A ``DatasetDict`` is described by the split that is read (``<datasets.DatasetDict['train'] 40 rows>``).
    """
    kind = _kind(data)
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            return f"<{kind}>"  # pick_split names the splits there are
        kind, data = f"{kind}[{split!r}]", data[split]
    rows = _num_rows(data)
    return f"<{kind} {rows} rows>" if rows is not None else f"<{kind}>"


def is_description(path: str) -> bool:
    """Whether ``path`` is a :func:`describe` string (what a checkpoint keeps of an in-memory table)."""
    return _DESCRIPTION.fullmatch(path) is not None


def check_not_description(path: str) -> None:
    """Refuse the description of an in-memory table given back as a path (e.g. from a checkpoint).

    Raises:
        DataError: ``path`` is a :func:`describe` string and no such file exists.
    """
    if is_description(path) and not os.path.exists(path):
        raise DataError(f"data path {path!r} is not a file but the record of a table that was in memory in training "
                        "(a checkpoint keeps plain values, not the table), so the data must be given again: "
                        "--data.path FILE with the same interactions (e.g. the table written with df.to_parquet), or "
                        "SASRecDataModule(path=<the table>) in Python")


def _from_pandas(frame: Any, source: str) -> pa.Table:
    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError) as error:  # e.g. an object column of ints and strings
        raise DataError(f"{source}: cannot be converted to an Arrow table ({one_paragraph(error)}); expected one type "
                        "per column (e.g. every id an int, or every id a str: df[column].astype(str))") from None


def memory_table(data: Any, split: str = "train") -> pa.Table:
    """An in-memory table (every kind of :data:`KINDS`) as one Arrow table, with the source's own columns.

    Args:
        data: the table.
        split: the split of a ``DatasetDict`` (``source.split``, as for a ``save_to_disk`` folder).

    Raises:
        DataError: an unsupported object, a missing split, a streamed ``IterableDataset``, or columns
            that Arrow cannot hold (mixed types in one column, columns of different lengths).
    """
    source = describe(data, split)
    if isinstance(data, datasets.DatasetDict):
        data = pick_split(data, split, source)
    if isinstance(data, datasets.Dataset):
        # The Arrow format applies the indices of select/shuffle/filter (data.data.table would not).
        return data.with_format("arrow")[:]
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if _is_dataframe(data):
        return _from_pandas(data, source)
    if isinstance(data, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise DataError(f"{source}: a streamed dataset has no rows in memory to sort into sequences; expected a "
                        "datasets.Dataset (load it without streaming=True)")
    if isinstance(data, Mapping) or hasattr(data, "__arrow_c_stream__") or hasattr(data, "__arrow_c_array__"):
        try:
            return pa.table(data)
        except (pa.ArrowException, TypeError, ValueError) as error:
            raise DataError(f"{source}: cannot be converted to an Arrow table ({one_paragraph(error)}); expected "
                            "columns of equal length with one type each") from None
    raise DataError(f"path is {source}; expected a file path, a hub dataset id, or in memory {KINDS}")


def _column_bytes(column: pa.ChunkedArray) -> Iterator[bytes | memoryview]:
    """The bytes that determine a column's values, the same however it is chunked or sliced.

    Numbers are read from their buffers without a copy (only each chunk's slice); text as every value's
    length, then the characters (only the slice's). Columns with nulls or of other types: Arrow's IPC
    bytes of each chunk (then another chunking only costs a cache miss, never a wrong hit).
    """
    chunks = [chunk for chunk in column.chunks if len(chunk)]
    kind = column.type
    if column.null_count == 0 and (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        for chunk in chunks:
            yield memoryview(chunk.to_numpy(zero_copy_only=True)).cast("B")
        return
    if column.null_count == 0 and (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        width = np.int32 if pa.types.is_string(kind) else np.int64
        offsets = [np.frombuffer(chunk.buffers()[1], dtype=width)[chunk.offset: chunk.offset + len(chunk) + 1]
                   for chunk in chunks]  # (n_chunk + 1,) each
        for ends in offsets:
            yield np.diff(ends).astype(np.int64).tobytes()  # each value's length in bytes
        for chunk, ends in zip(chunks, offsets, strict=True):
            if ends[-1] > ends[0]:
                yield memoryview(chunk.buffers()[2])[int(ends[0]): int(ends[-1])]
        return
    for chunk in chunks:
        data = pa.record_batch([chunk], names=["values"]).serialize()
        yield f"{data.size}\0".encode()
        yield data


def content_digest(table: pa.Table) -> str:
    """SHA-256 of a table's columns: names, types and values, so equal content gives equal digests.

    The identity of an in-memory source in the sequence cache key. It reads every byte of the
    (canonical) columns: 28 ms for Beauty's 353,962 interactions on a busy 2-core machine (docs/datasets.md).
    """
    digest = hashlib.sha256()
    for name in table.column_names:
        column = table.column(name)
        digest.update(f"{name}\0{column.type}\0{len(column)}\0".encode())
        for part in _column_bytes(column):
            digest.update(part)
    return digest.hexdigest()
