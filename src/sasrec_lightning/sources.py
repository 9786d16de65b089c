"""Interaction sources: files and hub datasets read through Hugging Face ``datasets``.

Every source ends as one Arrow table with the canonical columns ``user``, ``item`` and, when
available, ``timestamp``.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
import pyarrow as pa

__all__ = ["DataError", "detect_format", "load_interactions"]

FORMATS = ("sasrec", "csv", "tsv", "parquet", "json", "hub", "disk")


class DataError(ValueError):
    """Bad input data; the message names the file, field or line and what was expected."""


def detect_format(path: str) -> str:
    """Guess the format of ``path`` from its extension (``.txt`` is the SASRec "user item" format)."""
    if os.path.isdir(path):
        return "disk"
    name = path.lower()
    for suffix in (".gz", ".bz2", ".xz", ".zst"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    suffix = Path(name).suffix
    known = {".txt": "sasrec", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
             ".json": "json", ".jsonl": "json", ".ndjson": "json"}
    if suffix in known:
        return known[suffix]
    if os.path.exists(path):
        raise DataError(
            f"cannot tell the format of {path!r} from its extension {suffix!r}; expected one of "
            f"{sorted(known)} or set --data.format to one of {list(FORMATS)}"
        )
    return "hub"


def _canonical(table: pa.Table, source: str, user_column: str, item_column: str,
               timestamp_column: str | None) -> pa.Table:
    wanted = {"user": user_column, "item": item_column}
    if timestamp_column:
        wanted["timestamp"] = timestamp_column
    missing = [column for column in wanted.values() if column not in table.column_names]
    if missing:
        raise DataError(
            f"{source}: column(s) {missing} not found; the columns are {table.column_names}. "
            "Set --data.user_column / --data.item_column / --data.timestamp_column to the right names"
        )
    return pa.table({canonical: table.column(original) for canonical, original in wanted.items()})


def load_interactions(
    path: str,
    format: str | None = None,
    user_column: str = "user",
    item_column: str = "item",
    timestamp_column: str | None = None,
    name: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
) -> pa.Table:
    """Read interactions from a local file, a ``save_to_disk`` folder or a hub dataset id.

    Args:
        path: file path, folder or hub id.
        format: one of ``sasrec``, ``csv``, ``tsv``, ``parquet``, ``json``, ``disk``, ``hub``;
            detected from the extension when ``None``.
        user_column: user column name in the source.
        item_column: item column name in the source.
        timestamp_column: timestamp column name, or ``None`` to keep file order.
        name: hub dataset configuration name.
        split: hub dataset split.
        cache_dir: where ``datasets`` keeps its Arrow cache.

    Returns:
        Arrow table with columns ``user``, ``item`` (and ``timestamp``).
    """
    format = format or detect_format(path)
    if format not in FORMATS:
        raise DataError(f"unknown format {format!r} for {path!r}; expected one of {list(FORMATS)}")
    if format not in ("hub",) and not os.path.exists(path):
        raise DataError(f"data file {path!r} does not exist; point --data.path at an existing file")
    if format == "sasrec":
        dataset = datasets.load_dataset(
            "csv", data_files=path, split="train", sep=" ", header=None, column_names=["user", "item"],
            cache_dir=cache_dir,
        )
        user_column, item_column, timestamp_column = "user", "item", None
    elif format in ("csv", "tsv"):
        dataset = datasets.load_dataset(
            "csv", data_files=path, split="train", sep="\t" if format == "tsv" else ",", cache_dir=cache_dir
        )
    elif format in ("parquet", "json"):
        dataset = datasets.load_dataset(format, data_files=path, split="train", cache_dir=cache_dir)
    elif format == "disk":
        dataset = datasets.load_from_disk(path)
        if isinstance(dataset, datasets.DatasetDict):
            dataset = dataset[split]
    else:
        dataset = datasets.load_dataset(path, name=name, split=split, cache_dir=cache_dir)
    return _canonical(dataset.data.table, path, user_column, item_column, timestamp_column)
