"""The item table: read like the interactions, encoded column-wise into :class:`~.features.ItemFeatures`.

The table (``--data.features.*``, :class:`~.options.FeatureOptions`) is read through the interactions'
machinery: :mod:`.locations` (paths, formats, identity), :mod:`.readers` (CSV/TSV as text cells,
Parquet, JSON lines, ``save_to_disk`` folders, hub ids) and :mod:`.memory` (a table passed from
Python). Each column is then encoded with Arrow/numpy kernels, never a Python loop over items:

- ``categorical``: one value per item; the vocabulary is the sorted distinct values, code 0 unknown.
- ``multi``: a list per item (a list column, or text split at ``delimiter``); codes padded with 0 to
  the longest list, cut at ``max_values``.
- ``numeric``: standardized with the mean and the standard deviation of the table's rows; NaN = missing.
- ``vector``: a list of numbers per item, every row the same length; a row of NaN = missing.

Rows are aligned with the interactions' internal item ids through their original ids (integers and
text compared as the rest of the package does); table items without interactions become cold-start
items with the ids after the interactions' items. Every problem is one ``DataError`` naming the file,
the line (as the file shows it) and the column. The encoded table is cached beside the sequences
(:class:`FeatureCache`), keyed by the table's identity, the options and the interactions' item ids.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from lightning.pytorch.utilities import rank_zero_warn

from ..errors import DataError
from .cache import SequenceCache, cache_key
from .columns import _MISSING_TOKENS, _ids
from .diagnostics import json_problem, row_hint
from .features import UNKNOWN, FeatureColumn, ItemFeatures
from .formats import first_false, quote_line
from .locations import check_local, detect_format, local_path, source_identity
from .memory import check_not_description, content_digest, describe, is_in_memory, memory_table
from .options import ITEM_TABLE_FORMATS, FeatureOptions
from .readers import READERS, ReadRequest, _csv_header, _json_or_literal
from .sources import scratch_cache
from .vocabulary import IdMap

__all__ = ["ItemTable", "read_item_table", "encode_item_table", "FeatureCache", "feature_cache_key",
           "catalogue_digest"]

log = logging.getLogger(__name__)

FEATURE_CACHE_VERSION = 1  # bump when the encoding or the stored layout changes

_PLAIN_INTEGER = r"^(0|-?[1-9][0-9]*)$"  # as formats.integer_or_text_ids: the number's only spelling
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|infinity|nan)$"


# ------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ItemTable:
    """A raw item table and where it came from (for the messages).

    Attributes:
        table: the table with the source's own columns (CSV/TSV: every cell text).
        source: the file, folder or hub id as given, or the description of a table in memory.
        format: ``csv``, ``tsv``, ``parquet``, ``json``, ``disk``, ``hub`` or ``memory``.
    """

    table: pa.Table
    source: str
    format: str

    def where(self, row: int) -> str:
        """``line 7`` (as the file shows it, the header counted) or ``row 7`` of 0-based data row ``row``."""
        return row_hint(self.table, row, self.format, self.source)


# The interaction readers' messages name the interaction options; for the item table they mean these.
_OPTION_NAMES = (
    ("--data.source.user_column / --data.source.item_column", "--data.features.item_column"),
    ("--data.source.", "--data.features."),
    ("--data.path", "--data.features.path"),
    ("SASRecDataModule(path=", "FeatureOptions(path="),
)


def _for_features(error: DataError) -> DataError:
    """A reader's ``DataError`` with the option names of the item table (``--data.features.*``)."""
    message = str(error)
    for old, new in _OPTION_NAMES:
        message = message.replace(old, new)
    return DataError(message)


def _wanted(options: FeatureOptions) -> list[str]:
    return [options.item_column, *options.columns]


def _check_columns(names: list[str], options: FeatureOptions, source: str) -> None:
    """Every listed column is in the table (``names``), or one error naming each option and the columns there are."""
    flags = {options.item_column: "--data.features.item_column",
             **{name: f"--data.features.{kind}" for name, kind in options.columns.items()}}
    missing = [f"{name!r} ({flag})" for name, flag in flags.items() if name not in names]
    if missing:
        raise DataError(f"{source}: item table column(s) {', '.join(missing)} not found; the columns are {names}. "
                        "Expected the names of the item table's columns in those options")


def _check_exists(path: str, format: str, options: FeatureOptions) -> None:
    """A local item table that is missing or empty, named as the item table (``check_local`` names ``--data.path``)."""
    if not os.path.lexists(path):
        raise DataError(f"item table {path!r} does not exist; point --data.features.path at an existing file "
                        "(or a folder saved with save_to_disk, or a hub dataset id with --data.features.format hub)")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise DataError(f"item table {path!r} is empty; expected one row per item with the columns "
                        f"{_wanted(options)} ({format} format)")


def _read_local(path: str, options: FeatureOptions, cache_dir: str | None) -> ItemTable:
    path = local_path(path)
    format = options.format or detect_format(path)
    if format == "json" and _json_or_literal(path) == "literal":
        raise DataError(f"{path}: the lines are Python-literal dicts, not JSON; expected an item table as CSV/TSV, "
                        "Parquet or JSON lines (convert it, e.g. with pandas: df.to_parquet)")
    if format not in ITEM_TABLE_FORMATS:
        raise DataError(f"item table {path!r} has the {format} format, which holds interactions, not item "
                        f"attributes; expected one of {list(ITEM_TABLE_FORMATS)} (set --data.features.format, "
                        "e.g. tsv for a tab-separated .txt file)")
    if format != "hub":
        _check_exists(path, format, options)
        check_local(path, format)
    wanted = _wanted(options)
    if format in ("csv", "tsv"):
        header = _csv_header(path, "\t" if format == "tsv" else ",")
        if header is not None:  # the readers' own check names the interaction options
            _check_columns(header, options, path)
    with contextlib.ExitStack() as stack:
        local = format != "disk" and (format != "hub" or os.path.isdir(path))
        scratch = stack.enter_context(scratch_cache()) if local else None
        table = READERS[format].read(ReadRequest(path, format, wanted, scratch, options.name, options.split,
                                                 cache_dir, None))
    return ItemTable(table, path, format)


def read_item_table(path: Any, options: FeatureOptions, cache_dir: str | None = None) -> ItemTable:
    """Read the item table: a local file or folder, a hub id, or a table in memory.

    Args:
        path: ``options.path``, or another table (e.g. the synthetic one) of the same kinds.
        options: the feature options (format, item column, hub name and split, the columns wanted).
        cache_dir: ``datasets``' cache of hub ids (``--data.cache.dir``).

    Raises:
        DataError: a missing, empty or unreadable source, or a listed column that is not there.
    """
    try:
        if is_in_memory(path):
            item_table = ItemTable(memory_table(path, options.split), describe(path, options.split), "memory")
        else:
            check_not_description(path)  # a checkpoint's record of a table in memory: not a file
            item_table = _read_local(os.fspath(path), options, cache_dir)
    except DataError as error:
        raise _for_features(error) from None
    _check_columns(item_table.table.column_names, options, item_table.source)
    for name, kind in options.columns.items():
        if getattr(item_table.table.column(name).type, "extension_name", None) == "arrow.json":  # mixed JSON types
            problem = json_problem(item_table.source, [name]) if os.path.isfile(item_table.source) else None
            raise DataError(problem or f"{item_table.source}: {kind} column {name!r} mixes JSON types (e.g. a string "
                                       "on some lines, a list on others); expected one type per column")
    if item_table.table.num_rows == 0:
        raise DataError(f"{item_table.source}: the item table has no rows; expected one row per item with the "
                        f"columns {_wanted(options)}")
    return item_table


# ------------------------------------------------------------------------------------ item ids
def _aligned_ids(items: ItemTable, options: FeatureOptions, catalogue: np.ndarray) -> np.ndarray:
    """The table's item ids in the type of the interactions' ids: ``(n,)`` int64 or text.

    As elsewhere in the package (``read_user_list``, ``recommend``): integers against text compare as
    text; text ids against integer ids must be plain integers (``42``, not ``0042`` or ``B00X``).
    """
    try:
        ids = _ids(items.table, options.item_column, "item", items.source, items.format)
    except DataError as error:
        raise _for_features(error) from None
    if pa.types.is_integer(ids.type):
        values = ids.to_numpy()
        return values.astype(np.int64) if catalogue.dtype.kind in "iu" else values.astype(str)
    text = pc.utf8_trim_whitespace(ids) if items.format in ("csv", "tsv") else ids
    if catalogue.dtype.kind not in "iu":
        return np.asarray(text.to_numpy(zero_copy_only=False)).astype(str)
    plain = pc.match_substring_regex(text, _PLAIN_INTEGER)
    bad = first_false(plain)
    if bad is None:
        try:
            return pc.cast(text, pa.int64()).to_numpy()
        except pa.ArrowInvalid:
            bad = first_false(pc.less_equal(pc.utf8_length(text), 18))  # a candidate beyond int64
    count = len(text) - int(pc.sum(pc.fill_null(plain, False)).as_py() or 0)
    raise DataError(f"{items.source}, {items.where(bad)}: item id {quote_line(str(text[bad].as_py()))} in column "
                    f"{options.item_column!r} is not an integer ({count} of the table's {len(text)} ids are not), but "
                    f"the interactions' item ids are integers (e.g. {catalogue[1:4].tolist()}); expected the "
                    "interactions' original item ids, written as they are (integers without leading zeros)")


def _check_unique(ids: np.ndarray, items: ItemTable, column: str) -> None:
    order = np.argsort(ids, kind="stable")  # (n,)
    sorted_ids = ids[order]
    repeated = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])  # (d,)
    if len(repeated):
        first, second = sorted(order[[repeated[0], repeated[0] + 1]].tolist())
        raise DataError(f"{items.source}, {items.where(first)} and {items.where(second)}: item id "
                        f"{ids[first].item()!r} (column {column!r}) appears twice; expected one row per item "
                        f"({len(repeated)} repeated rows in all)")


# ------------------------------------------------------------------------------------ the columns
def _plain(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return values.cast(values.type.value_type) if pa.types.is_dictionary(values.type) else values


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _missing_as_null(values: pa.ChunkedArray, items: ItemTable) -> pa.ChunkedArray:
    """Text cells trimmed; empty cells (and in CSV/TSV pandas' missing-value tokens: ``NA``, ``null``) are null."""
    values = pc.utf8_trim_whitespace(values)
    missing = _MISSING_TOKENS if items.format in ("csv", "tsv") else ("",)
    return pc.if_else(pc.is_in(values, pa.array(missing)), pa.scalar(None, values.type), values)


def _unsupported(items: ItemTable, column: str, kind: str, found: pa.DataType, expected: str) -> DataError:
    return DataError(f"{items.source}: {kind} column {column!r} (--data.features.{kind}) has type {found}; "
                     f"expected {expected}")


_SCALAR = ("one value per row (text, an integer or a boolean); a list of values per item goes under "
           "--data.features.multi")


def _scalar_values(values: pa.ChunkedArray | pa.Array, items: ItemTable, column: str, kind: str,
                   expected: str = _SCALAR) -> pa.ChunkedArray | pa.Array:
    """Category values: text (empty = missing), integers, booleans; floats with NaN = missing."""
    kind_type = values.type
    if _is_text(kind_type):
        return _missing_as_null(values, items) if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_integer(kind_type) or pa.types.is_boolean(kind_type):
        return values
    if pa.types.is_floating(kind_type):
        return pc.if_else(pc.is_nan(values), pa.scalar(None, kind_type), values)
    if pa.types.is_null(kind_type):
        return values
    raise _unsupported(items, column, kind, kind_type, expected)


def _vocabulary(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The distinct non-null values, sorted (numbers numerically, text by code point)."""
    distinct = pc.unique(values.drop_null())
    if isinstance(distinct, pa.ChunkedArray):
        distinct = distinct.combine_chunks()
    return distinct.take(pc.sort_indices(distinct))


def _codes(values, vocabulary: pa.Array) -> np.ndarray:
    """``(n,)`` int64 codes ``1..V`` of ``values`` in ``vocabulary``; 0 where a value is missing."""
    if len(vocabulary) == 0:
        return np.zeros(len(values), dtype=np.int64)
    index = pc.index_in(values, value_set=vocabulary)
    return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1


def _vocabulary_text(vocabulary: pa.Array) -> list[str]:
    if pa.types.is_null(vocabulary.type) or len(vocabulary) == 0:
        return [UNKNOWN]
    return [UNKNOWN, *pc.cast(vocabulary, pa.string()).to_pylist()]


def _categorical(items: ItemTable, column: str) -> tuple[np.ndarray, list[str]]:
    values = _scalar_values(_plain(items.table.column(column)), items, column, "categorical")
    vocabulary = _vocabulary(values)
    return _codes(values, vocabulary), _vocabulary_text(vocabulary)


def _lists(items: ItemTable, column: str, kind: str, delimiter: str | None, expected: str) -> pa.Array:
    """A list per row: a list column as it is, or text split at ``delimiter`` (or spaces/commas for vectors)."""
    values = _plain(items.table.column(column))
    if _is_list(values.type):
        return values.combine_chunks()
    if _is_text(values.type):
        text = _missing_as_null(values, items)
        if delimiter is None:  # a vector written as text: "[0.1, 0.2]", "0.1 0.2", "0.1,0.2"
            text = pc.utf8_trim_whitespace(pc.utf8_trim(text, "[]"))
            return pc.split_pattern_regex(text, r"[\s,]+").combine_chunks()
        return pc.split_pattern(text, delimiter).combine_chunks()
    raise _unsupported(items, column, kind, values.type, expected)


def _multi(items: ItemTable, column: str, options: FeatureOptions) -> tuple[np.ndarray, list[str]]:
    expected = (f"a list of values per row, or text with the values separated by --data.features.delimiter "
                f"{options.delimiter!r}")
    lists = _lists(items, column, "multi", options.delimiter, expected)
    flat = pc.list_flatten(lists)  # (m,) every value, rows back to back
    parents = pc.list_parent_indices(lists).to_numpy().astype(np.int64)  # (m,) the row of each value
    flat = _scalar_values(flat, items, column, "multi", f"{expected} (plain values, not {flat.type} lists)")
    if _is_text(flat.type):
        flat = pc.utf8_trim_whitespace(flat)
        flat = pc.if_else(pc.equal(flat, ""), pa.scalar(None, flat.type), flat)  # "a||b": no empty value
    keep = pc.is_valid(flat).to_numpy(zero_copy_only=False)  # (m,)
    flat, parents = flat.filter(pa.array(keep)), parents[keep]
    vocabulary = _vocabulary(flat)
    codes = _codes(flat, vocabulary)  # (m,)
    rows = items.table.num_rows
    counts = np.bincount(parents, minlength=rows)  # (n,) values per row
    position = np.arange(len(parents)) - (np.cumsum(counts) - counts)[parents]  # (m,) index within its row
    width = int(max(1, min(counts.max(initial=0), options.max_values)))
    cut = int(np.sum(counts > options.max_values))
    if cut:
        rank_zero_warn(f"{items.source}: multi column {column!r} has more than --data.features.max_values "
                       f"{options.max_values} values for {cut} items (at most {int(counts.max())}); only the first "
                       f"{options.max_values} of each are kept")
    out = np.zeros((rows, width), dtype=np.int64)  # (n, width)
    kept = position < width
    out[parents[kept], position[kept]] = codes[kept]
    return out, _vocabulary_text(vocabulary)


def _first_not_number(text: pa.Array) -> int | None:
    """Index of the first non-null text that is not a number (NaN and infinities are numbers here)."""
    return first_false(pc.or_kleene(pc.is_null(text), pc.match_substring_regex(text, _NUMBER, ignore_case=True)))


def _numeric(items: ItemTable, column: str) -> tuple[np.ndarray, tuple[float, float]]:
    values = _plain(items.table.column(column))
    expected = "a number per row (empty, NaN or null: missing)"
    if _is_text(values.type):
        values = _missing_as_null(values, items)
        bad = _first_not_number(values)
        if bad is not None:
            raise DataError(f"{items.source}, {items.where(bad)}: numeric column {column!r} is "
                            f"{quote_line(values[bad].as_py())}, not a number; expected {expected}")
    elif not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type) or pa.types.is_null(values.type)
              or pa.types.is_decimal(values.type)):
        raise _unsupported(items, column, "numeric", values.type, expected)
    numbers = pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)  # (n,) null -> NaN
    infinite = np.isinf(numbers)
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        raise DataError(f"{items.source}, {items.where(row)}: numeric column {column!r} is "
                        f"{float(numbers[row])!r}, not a finite number; expected {expected}")
    present = numbers[~np.isnan(numbers)]
    mean = float(present.mean()) if len(present) else 0.0
    std = float(present.std()) if len(present) else 0.0
    std = std if std > 0 else 1.0  # a constant column: centred, not divided by zero
    return ((numbers - mean) / std).astype(np.float32), (mean, std)


def _vector(items: ItemTable, column: str) -> np.ndarray:
    expected = "a list of numbers per row (or text of numbers separated by spaces or commas), every row the same length"
    lists = _lists(items, column, "vector", None, expected)
    flat = pc.list_flatten(lists)  # (m,)
    parents = pc.list_parent_indices(lists).to_numpy().astype(np.int64)  # (m,)
    if _is_text(flat.type):
        bad = first_false(pc.and_kleene(pc.is_valid(flat), pc.match_substring_regex(flat, _NUMBER, ignore_case=True)))
    elif pa.types.is_integer(flat.type) or pa.types.is_floating(flat.type) or pa.types.is_null(flat.type):
        bad = first_false(pc.is_valid(flat))
    else:
        raise _unsupported(items, column, "vector", lists.type, expected)
    if bad is not None:
        raise DataError(f"{items.source}, {items.where(int(parents[bad]))}: vector column {column!r} has the element "
                        f"{quote_line(str(flat[bad].as_py()))}, not a number; expected {expected}")
    numbers = pc.cast(flat, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)  # (m,)
    if not np.isfinite(numbers).all():
        bad = int(np.flatnonzero(~np.isfinite(numbers))[0])
        raise DataError(f"{items.source}, {items.where(int(parents[bad]))}: vector column {column!r} has the element "
                        f"{float(numbers[bad])!r}, not a finite number; expected {expected} (a missing vector: an "
                        "empty cell or null)")
    present = pc.is_valid(lists).to_numpy(zero_copy_only=False)  # (n,)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)  # (n,)
    rows = np.flatnonzero(present)
    if len(rows) == 0:
        raise DataError(f"{items.source}: vector column {column!r} has no vector on any row, so its length is "
                        f"unknown; expected {expected}")
    width = int(lengths[rows[0]])
    other = rows[lengths[rows] != width]
    if len(other):
        raise DataError(f"{items.source}, {items.where(int(other[0]))}: vector column {column!r} has "
                        f"{int(lengths[other[0]])} numbers, but {items.where(int(rows[0]))} has {width}; expected "
                        "every vector the same length")
    if width == 0:
        raise DataError(f"{items.source}, {items.where(int(rows[0]))}: vector column {column!r} holds empty vectors; "
                        f"expected {expected}")
    out = np.full((items.table.num_rows, width), np.nan, dtype=np.float32)  # (n, width)
    out[rows] = numbers.reshape(len(rows), width)
    return out


# ------------------------------------------------------------------------------------ encoding
def encode_item_table(items: ItemTable, options: FeatureOptions, item_ids: np.ndarray) -> ItemFeatures:
    """Encode the table's columns and align them with the internal item ids.

    Args:
        items: the table read by :func:`read_item_table`.
        options: the feature options (the columns and their kinds, the delimiter, ``max_values``,
            ``add_cold_items``).
        item_ids: ``(I + 1,)`` the interactions' original item ids, internal id -> original id.

    Returns:
        :class:`ItemFeatures` over ``I + C + 1`` rows: the interactions' items, then the ``C`` cold-start
        items (table ids without interactions, sorted by original id, ids ``I + 1..I + C``). Its ``info``
        holds ``cold_item_ids`` (``(C,)`` their original ids), ``rows``, ``source`` and ``items_without_row``.

    Raises:
        DataError: bad ids or values (naming the file, the line and the column), or ids without
            interactions when ``add_cold_items`` is false.
    """
    item_ids = np.asarray(item_ids)
    ids = _aligned_ids(items, options, item_ids)  # (n,)
    _check_unique(ids, items, options.item_column)
    internal, found = IdMap(item_ids, first=1).lookup(ids)  # (n,), (n,)
    unknown = np.flatnonzero(~found)
    num_items = len(item_ids) - 1
    cold_ids = np.sort(ids[unknown])  # (C,) sorted original ids
    if len(unknown) and not options.add_cold_items:
        raise DataError(f"{items.source}: {len(unknown)} item ids in column {options.item_column!r} have no "
                        f"interaction (e.g. {cold_ids[:5].tolist()}, first on {items.where(int(unknown[0]))}); "
                        "expected only the interactions' items (items the preprocessing filters removed, "
                        "--data.preprocessing.min_item_interactions, count as without interactions), or set "
                        "--data.features.add_cold_items true to add them as cold-start items")
    internal[unknown] = num_items + 1 + np.searchsorted(cold_ids, ids[unknown])  # I + 1..I + C, by original id
    total = num_items + len(cold_ids)
    columns, values, vocabularies, scaling = [], {}, {}, {}
    for name, kind in options.columns.items():
        if kind == "categorical":
            encoded, vocabularies[name] = _categorical(items, name)
            columns.append(FeatureColumn(name, kind, len(vocabularies[name])))
        elif kind == "multi":
            encoded, vocabularies[name] = _multi(items, name, options)
            columns.append(FeatureColumn(name, kind, len(vocabularies[name]), encoded.shape[1]))
        elif kind == "numeric":
            encoded, scaling[name] = _numeric(items, name)
            columns.append(FeatureColumn(name, kind, 1))
        else:
            encoded = _vector(items, name)
            columns.append(FeatureColumn(name, kind, encoded.shape[1], encoded.shape[1]))
        missing = 0 if kind in ("categorical", "multi") else np.nan
        aligned = np.full((total + 1, *encoded.shape[1:]), missing, dtype=encoded.dtype)  # (I + C + 1, ...)
        aligned[internal] = encoded
        values[name] = aligned
    has_row = np.zeros(total + 1, dtype=bool)  # (I + C + 1,)
    has_row[internal] = True
    info = {"source": items.source, "rows": int(items.table.num_rows), "cold_items": int(len(cold_ids)),
            "items_without_row": int(num_items - np.sum(found)), "cold_item_ids": cold_ids}
    return ItemFeatures(tuple(columns), values, vocabularies, scaling, has_row, info)


# ------------------------------------------------------------------------------------ the cache
def catalogue_digest(item_ids: np.ndarray) -> str:
    """SHA-256 of the interactions' original item ids (their type and order): what the features are aligned to."""
    ids = np.asarray(item_ids)[1:]
    integers = ids.dtype.kind in "iu"  # text ids are str or object arrays (as built, as read from the cache)
    digest = hashlib.sha256(f"{'int' if integers else 'text'}\0{len(ids)}\0".encode())
    digest.update(ids.astype(np.int64).tobytes() if integers else "\0".join(ids.astype(str)).encode())
    return digest.hexdigest()


def feature_cache_key(identity: dict, options: FeatureOptions, item_ids: np.ndarray) -> tuple[str, dict]:
    """The cache key of an encoded item table, and what it is made of (stored in the entry's ``meta.json``)."""
    recipe = {"kind": "item_features", "version": FEATURE_CACHE_VERSION,
              "options": options.plain(path=None), "catalogue_sha256": catalogue_digest(item_ids)}
    return cache_key(identity, recipe), {"source": identity, "recipe": recipe}


def table_identity(items_path: Any, options: FeatureOptions, hash_content: bool) -> dict | None:
    """The identity of a file, folder or hub id, for the key; ``None`` for a table in memory (its content is)."""
    if is_in_memory(items_path):
        return None
    path = local_path(os.fspath(items_path))
    format = options.format or detect_format(path)
    return {"item_table": source_identity(path, format, options.name, options.split, hash_content)}


class FeatureCache(SequenceCache):
    """Encoded item tables under ``root`` (``<sequence cache>/features``), written like the sequences' entries.

    An entry is ``arrays.npz`` (one array per column, ``has_row``; read with ``allow_pickle=False``),
    ``cold_item_ids.parquet`` (the cold-start items' original ids) and ``meta.json`` (the columns,
    vocabularies, scaling and provenance), written to a temporary folder and renamed into place.
    """

    def _read(self, folder: Path, meta: dict) -> ItemFeatures:
        columns = tuple(FeatureColumn(**column) for column in meta["spec"]["columns"])
        with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
            values = {column.name: arrays[f"column_{index}"] for index, column in enumerate(columns)}
            has_row = arrays["has_row"]
        cold = pq.read_table(folder / "cold_item_ids.parquet").column(0).to_numpy(zero_copy_only=False)
        if any(len(array) != len(has_row) for array in values.values()):
            raise ValueError("arrays of different lengths")
        info = {**meta.get("info", {}), "cold_item_ids": np.asarray(cold)}
        return ItemFeatures(columns, values, meta["vocabularies"],
                            {name: tuple(pair) for name, pair in meta["scaling"].items()}, has_row, info)

    def _write(self, folder: Path, data: ItemFeatures, meta: dict) -> tuple[str, ...]:
        arrays = {f"column_{index}": data.values[column.name] for index, column in enumerate(data.columns)}
        np.savez(folder / "arrays.npz", has_row=data.has_row, **arrays)
        cold = np.asarray(data.info["cold_item_ids"])
        pq.write_table(pa.table({"item_id": pa.array(cold)}), folder / "cold_item_ids.parquet")
        info = {k: v for k, v in data.info.items() if k not in ("cache", "cold_item_ids")}
        state = data.state()
        (folder / "meta.json").write_text(json.dumps(
            {**meta, "spec": state["spec"], "vocabularies": state["vocabularies"],
             "scaling": state["scaling"], "info": info}, indent=1, default=str))
        return "arrays.npz", "cold_item_ids.parquet"


def load_item_features(path: Any, options: FeatureOptions, item_ids: np.ndarray, cache_root: str | None,
                       cache_dir: str | None = None, hash_content: bool = False,
                       rebuild: bool = False) -> ItemFeatures:
    """Read and encode the item table, through the cache under ``cache_root`` (``None``: no cache).

    The key holds the table's identity (a file's as the sequences' cache has it; a table in memory: a
    SHA-256 of its content), every feature option and the interactions' item ids, so a change to any of
    them encodes again. A failure caches nothing.
    """
    items, identity = None, None
    try:
        if cache_root is not None and not is_in_memory(path):
            check_not_description(os.fspath(path))
            local = local_path(os.fspath(path))
            format = options.format or detect_format(local)
            if format != "hub":
                _check_exists(local, format, options)  # before the identity reads the file
            identity = table_identity(path, options, hash_content)
        elif cache_root is not None:  # in memory: read it to know its content
            items = read_item_table(path, options, cache_dir)
            identity = {"in_memory_sha256": content_digest(items.table)}
    except DataError as error:
        raise _for_features(error) from None

    def build() -> ItemFeatures:
        return encode_item_table(items or read_item_table(path, options, cache_dir), options, item_ids)

    if cache_root is None:
        return build()
    key, meta = feature_cache_key(identity, options, item_ids)
    return FeatureCache(cache_root).get_or_build(key, build, meta=meta, rebuild=rebuild)
