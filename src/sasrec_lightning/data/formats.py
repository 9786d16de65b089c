"""Line formats that are not CSV/JSON/Parquet, parsed column-wise from the ``datasets`` ``text`` builder.

- SASRec text: ``user item`` per line (whitespace separated integers), already chronological.
- MovieLens ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``.
- Python-literal dicts, one per line: the raw Steam reviews file and the older Amazon review
  files (``{'reviewerID': 'A1', 'asin': 'B0', 'unixReviewTime': 1234, ...}``), parsed with
  :func:`ast.literal_eval` (never ``eval``) in a batched, multi-process ``datasets.map``; lines
  simple enough to be read exactly by the C JSON parser take that faster path (see
  :func:`literal_eval_line`).

Each parser returns an Arrow table with string or integer columns and a ``line`` column (the
1-based line number in the file) so later errors can point at the offending line. Empty lines are
skipped, and a UTF-8 byte-order mark before the first line is dropped (the ``text`` builder keeps it
in compressed files, whatever its ``encoding``; see :mod:`.textfiles`).
"""

from __future__ import annotations

import ast
import json
import re

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError
from .textfiles import BYTE_ORDER_MARK

__all__ = ["parse_sasrec_lines", "parse_movielens_lines", "parse_literal_dicts", "looks_like_literal_dicts",
           "integer_or_text_ids", "quote_line", "first_false"]

_INTEGER = r"^[+-]?\d+$"
_PLAIN_INTEGER = r"^(0|-?[1-9][0-9]*)$"  # no sign but '-', no leading zero: the text is the number's only spelling


def integer_or_text_ids(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Ids read as text: int64 when every id is a plain integer that fits 64 bits, else the text unchanged.

    ``0042`` and ``42`` (or ``+7`` and ``7``) are different ids in a text file; reading both as the
    number 42 would merge two users or items. Only when no id has another spelling of its number
    (no leading zero, no ``+``) are the ids read as integers, so they sort numerically and ids
    ``1..N`` stay ``1..N``. Ids beyond int64 keep their exact text.
    """
    if not pc.all(pc.match_substring_regex(values, _PLAIN_INTEGER)).as_py():
        return values
    try:
        return pc.cast(values, pa.int64())
    except pa.ArrowInvalid:  # beyond the int64 range: the text is exact, a number would not be
        return values


def _without_byte_order_mark(lines: pa.ChunkedArray) -> pa.ChunkedArray:
    """The lines of a file with a UTF-8 byte-order mark removed from the first one (only there: it marks the file)."""
    first = lines[0].as_py() if len(lines) else None
    if not first or not first.startswith(BYTE_ORDER_MARK):
        return lines
    rest = lines.slice(1)  # zero-copy: a large file stays memory-mapped
    return pa.chunked_array([pa.array([first[len(BYTE_ORDER_MARK):]], lines.type), *rest.chunks], lines.type)


def _lines(dataset: datasets.Dataset) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Non-empty lines (whitespace-trimmed) and their 1-based line numbers."""
    text = pc.utf8_trim_whitespace(_without_byte_order_mark(dataset.data.table.column("text")))
    keep = pc.not_equal(text, "")
    numbers = np.flatnonzero(keep.to_numpy(zero_copy_only=False)) + 1  # (n,)
    return text.filter(keep), numbers


def first_false(ok: pa.ChunkedArray | pa.Array) -> int | None:
    """Index of the first ``False`` (or null) in a boolean array, or ``None`` when all are ``True``."""
    values = pc.fill_null(ok, False).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~values)
    return int(bad[0]) if len(bad) else None


def _split_fields(text: pa.ChunkedArray, numbers: np.ndarray, path: str, separator: str, regex: bool,
                  expected: int, what: str) -> list[pa.Array]:
    """Split every line into exactly ``expected`` fields, or raise naming the first bad line."""
    split = pc.split_pattern_regex(text, separator) if regex else pc.split_pattern(text, separator)
    split = split.combine_chunks() if isinstance(split, pa.ChunkedArray) else split
    bad = first_false(pc.equal(pc.list_value_length(split), expected))
    if bad is not None:
        raise DataError(
            f"{path}, line {numbers[bad]}: expected {what}, found {quote_line(text[bad].as_py())}. "
            "Fix or remove that line, or set --data.source.format if this is not the format you meant"
        )
    flat = split.flatten()
    return [flat[i::expected] for i in range(expected)]


def quote_line(text: str, limit: int = 80) -> str:
    """``repr`` of a line for an error message, shortened: a binary file's "line" can be megabytes long."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f" ... ({len(text)} characters)"


def _integers(field: pa.Array, numbers: np.ndarray, path: str, name: str, line_format: str,
              ids: bool = False) -> pa.Array:
    """A field that must be an integer on every line: int64 (ids: see :func:`integer_or_text_ids`)."""
    bad = first_false(pc.match_substring_regex(field, _INTEGER))
    if bad is not None:
        raise DataError(
            f"{path}, line {numbers[bad]}: {name} {quote_line(field[bad].as_py())} is not an integer; every line "
            f"must be {line_format}"
        )
    if ids:
        return integer_or_text_ids(field)
    try:
        return pc.cast(field, pa.int64())
    except pa.ArrowInvalid:  # more digits than int64 holds
        digits = pc.utf8_length(pc.utf8_ltrim(pc.utf8_ltrim(field, "+-"), "0"))  # significant digits
        bad = 0
        for row in np.flatnonzero(pc.greater_equal(digits, 19).to_numpy(zero_copy_only=False)):  # the candidates
            try:
                pc.cast(field.slice(int(row), 1), pa.int64())
            except pa.ArrowInvalid:
                bad = int(row)
                break
        raise DataError(
            f"{path}, line {numbers[bad]}: {name} {field[bad].as_py()!r} is beyond the 64-bit integer range "
            f"(-9223372036854775808 .. 9223372036854775807); every line must be {line_format}"
        ) from None


def parse_sasrec_lines(dataset: datasets.Dataset, path: str) -> pa.Table:
    """``user item`` lines (two whitespace-separated integers) -> ``user``, ``item``, ``line``."""
    text, numbers = _lines(dataset)
    line_format = "two whitespace-separated integers 'user item'"
    users, items = _split_fields(text, numbers, path, r"\s+", True, 2, line_format)
    return pa.table({
        "user": _integers(users, numbers, path, "user", line_format, ids=True),
        "item": _integers(items, numbers, path, "item", line_format, ids=True),
        "line": pa.array(numbers, pa.int64()),
    })


def parse_movielens_lines(dataset: datasets.Dataset, path: str) -> pa.Table:
    """``UserID::MovieID::Rating::Timestamp`` lines -> ``user``, ``item``, ``rating``, ``timestamp``, ``line``."""
    text, numbers = _lines(dataset)
    line_format = "'UserID::MovieID::Rating::Timestamp' (MovieLens ratings.dat)"
    users, items, ratings, times = _split_fields(text, numbers, path, "::", False, 4, line_format)
    return pa.table({
        "user": _integers(users, numbers, path, "UserID", line_format, ids=True),
        "item": _integers(items, numbers, path, "MovieID", line_format, ids=True),
        "rating": pc.cast(_integers(ratings, numbers, path, "Rating", line_format), pa.float64()),
        "timestamp": _integers(times, numbers, path, "Timestamp", line_format),
        "line": pa.array(numbers, pa.int64()),
    })


def looks_like_literal_dicts(first_line: str) -> bool:
    """True when a JSON-lines file is really one Python-literal dict per line (Steam, old Amazon)."""
    first_line = first_line.strip()
    if not first_line.startswith("{"):
        return False
    try:
        json.loads(first_line)
    except ValueError:
        try:
            return isinstance(ast.literal_eval(first_line), dict)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return False
    return False


_PYTHON_WORDS = re.compile(r"\b(True|False|None)\b")
_JSON_ONLY_WORDS = re.compile(r"\b(true|false|null|NaN|Infinity)\b")
_JSON_OF = {"True": "true", "False": "false", "None": "null"}
# A (non-prefixed, single-line) Python string literal in either quote; the capture group makes
# re.split alternate syntax (even parts) and string literals (odd parts).
_STRING = re.compile(r"""('[^'\\\n]*(?:\\.[^'\\\n]*)*'|"[^"\\\n]*(?:\\.[^"\\\n]*)*")""")  # unrolled: fast


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a Python literal")


def _json_string(literal: str) -> str:
    """A Python string literal (from :data:`_STRING`) as a JSON string with the same value."""
    content = literal[1:-1]
    if "\\" in content:  # Python and JSON escapes differ: let Python decode this one string
        return json.dumps(ast.literal_eval(literal), ensure_ascii=False)
    return '"' + content.replace('"', '\\"') + '"' if literal[0] == "'" else literal


def _literal_via_json(text: str) -> object | None:
    """``ast.literal_eval(text)`` for the common simple line, via the C JSON parser; ``None`` if not simple.

    The line is split into string literals and the syntax between them (scanning left to right, as
    Python's tokenizer does); strings are re-quoted for JSON with their value unchanged and only the
    syntax is rewritten (``True``/``False``/``None``). Anything JSON cannot read the way Python
    does (string prefixes like ``b''``, implicit concatenation, tuples, sets, ``+1``, hex,
    non-string keys, trailing commas, ...) fails to parse here and falls back to ``literal_eval``.
    """
    parts = _STRING.split(text)
    syntax = parts[0::2]
    joined = " ".join(syntax)
    if "'" in joined or '"' in joined or _JSON_ONLY_WORDS.search(joined):
        return None  # an unterminated or multi-line string, or a JSON-only word
    if _PYTHON_WORDS.search(joined):
        parts[0::2] = [_PYTHON_WORDS.sub(lambda match: _JSON_OF[match[0]], part) for part in syntax]
    parts[1::2] = [
        _json_string(literal) if "\\" in literal or literal[0] == "'" and '"' in literal
        else ('"' + literal[1:-1] + '"' if literal[0] == "'" else literal)
        for literal in parts[1::2]
    ]  # the common cases inline: the per-call overhead dominates on short strings
    try:
        return json.loads("".join(parts), strict=False, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None


def literal_eval_line(text: str) -> object:
    """A Python literal, safely: a fast exact JSON path for simple lines, else :func:`ast.literal_eval`."""
    value = _literal_via_json(text)
    return ast.literal_eval(text) if value is None else value


def _literal_batch(batch: dict, indices: list[int], keys: tuple[str, ...]) -> dict:
    """``datasets.map`` function: literal-eval each line and keep ``keys`` as strings (None if absent).

    Never raises: a bad line is reported in the ``error`` column so the parent process can name it.
    """
    out: dict[str, list] = {key: [] for key in keys}
    out["line"], out["error"] = [], []
    for text, index in zip(batch["text"], indices, strict=True):
        text = (text.removeprefix(BYTE_ORDER_MARK) if index == 0 else text).strip()  # see _without_byte_order_mark
        if not text:
            continue
        error = None
        try:
            record = literal_eval_line(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            record, error = {}, f"not a Python literal ({type(exc).__name__}: {exc})"
        if error is None and not isinstance(record, dict):
            record, error = {}, f"expected a dict, found a {type(record).__name__}"
        if error is None:
            missing = [key for key in keys if key not in record]
            if missing:
                error = f"key(s) {missing} not found; the keys are {sorted(record)}"
        for key in keys:
            value = record.get(key)
            out[key].append(None if value is None else str(value))
        out["line"].append(index + 1)
        out["error"].append(error)
    return out


def parse_literal_dicts(dataset: datasets.Dataset, path: str, keys: tuple[str, ...],
                        num_proc: int | None = None) -> pa.Table:
    """Python-literal dict lines -> a table with the string columns ``keys`` and ``line``.

    Args:
        dataset: the file read with the ``text`` builder (one row per line).
        path: the file name, for error messages.
        keys: dict keys to keep (user, item, timestamp, rating source names).
        num_proc: worker processes for ``datasets.map``.

    Returns:
        Arrow table with one string column per key and the int64 ``line`` column.
    """
    features = datasets.Features({**{key: datasets.Value("string") for key in keys},
                                  "line": datasets.Value("int64"), "error": datasets.Value("string")})
    parsed = dataset.map(
        _literal_batch, batched=True, batch_size=10_000, with_indices=True, num_proc=num_proc,
        fn_kwargs={"keys": keys}, remove_columns=dataset.column_names, features=features,
        desc="parsing Python-literal lines",
    )
    table = parsed.data.table
    errors = table.column("error")
    if errors.null_count != len(errors):
        bad = first_false(pc.is_null(errors))
        raise DataError(
            f"{path}, line {table.column('line')[bad].as_py()}: {errors[bad].as_py()}. Expected one Python dict "
            f"per line with the keys {list(keys)} (set --data.source.user_column/--data.source.item_column/"
            "--data.source.timestamp_column to the names used in the file)"
        )
    return table.drop_columns(["error"])
