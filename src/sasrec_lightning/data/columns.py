"""The canonical columns, typed and validated where the file, column and line are known.

Every reader's table ends here: ``user`` and ``item`` ids (integers when every id is a plain
integer, else text, as written), ``timestamp`` (int64; dates become seconds), ``rating`` (float64)
and ``line`` (the 1-based line of each row in a text file, for the messages). CSV/TSV cells arrive
as text; a missing or unparsable value is one ``DataError`` naming its line.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError
from .diagnostics import json_problem, row_hint
from .formats import first_false, integer_or_text_ids

__all__ = ["timestamps_to_int64", "canonical_columns"]


_MISSING_TOKENS = ("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
                   "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null")


_INT64_RANGE = "-9223372036854775808 .. 9223372036854775807"


def _missing_token(values: pa.ChunkedArray) -> int | None:
    """Row of the first cell that is empty or a missing-value token (``NA``, ``null``, ``None``, ...)."""
    return first_false(pc.invert(pc.is_in(values, pa.array(_MISSING_TOKENS))))


def _missing_detail(token: str | None) -> str:
    if token is None:
        return "null (missing)"
    return "empty (missing)" if token == "" else f"{token!r}, a missing-value marker (the value is missing)"


_DATE_PATTERNS = ("%Y-%m-%d", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%S%z",
                  "%Y-%m-%d %H:%M:%S%z")


def _parse_datetimes(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """ISO-8601 dates/date-times as UTC seconds (int64); null where a value does not parse."""
    values = pc.utf8_trim_whitespace(values)
    for target in (pa.timestamp("s"), pa.timestamp("s", tz="UTC")):  # fast paths: one uniform style
        try:
            return pc.cast(pc.cast(values, target), pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
    parsed = [pc.cast(pc.strptime(values, pattern, "s", error_is_null=True), pa.int64()) for pattern in _DATE_PATTERNS]
    return pc.coalesce(*parsed)


def _floats_to_int64(numbers: np.ndarray, values, table: pa.Table, source: str, field: str, format: str,
                     expected: str) -> np.ndarray:
    """Floored float timestamps as int64; NaN, infinities and values beyond int64 are errors (no wrap-around)."""
    ok = np.isfinite(numbers) & (numbers >= -(2.0**63)) & (numbers < 2.0**63)  # (n,)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        shown = values[row].as_py() if values is not None else float(numbers[row])
        problem = ("not a finite number" if not np.isfinite(numbers[row])
                   else f"beyond the 64-bit integer range of timestamps ({_INT64_RANGE})")
        raise DataError(f"{source}, {row_hint(table, row, format, source)}: timestamp field {field!r} is {shown!r}, "
                        f"{problem}; {expected}")
    return np.floor(numbers).astype(np.int64)


def timestamps_to_int64(table: pa.Table, column: str, source: str, field: str, format: str) -> np.ndarray:
    """A timestamp column as int64: integers, whole-number floats, numeric strings or ISO-8601 dates.

    Dates and date-times become Unix seconds (UTC); fractional seconds are floored (ties then keep
    file order). Integer strings are converted exactly (no detour through float64).

    Raises:
        DataError: a missing, unparseable, non-finite or out-of-range (beyond int64) value; names the
            file, field, line (or row) and the value.
    """
    values = table.column(column)
    expected = ("expected integers (e.g. Unix seconds), numbers, or ISO-8601 dates like '2017-12-17' / "
                "'2017-12-17 10:30:00'")
    kind = values.type
    if pa.types.is_dictionary(kind):
        values, kind = values.cast(kind.value_type), kind.value_type
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if text and values.null_count == 0 and pc.all(pc.match_substring_regex(values, r"^[+-]?\d+$")).as_py():
        try:  # the common case first (CSV cells are text): integers, converted exactly
            return pc.cast(values, pa.int64()).to_numpy()
        except pa.ArrowInvalid:  # beyond int64: the checks below name the value
            pass
    if text:
        values = pc.utf8_trim_whitespace(values)
    row = first_false(pc.is_valid(values))
    token = None
    if row is None and text and format in ("csv", "tsv"):
        row = _missing_token(values)
        token = None if row is None else values[row].as_py()
    if row is not None:
        raise DataError(f"{source}, {row_hint(table, row, format, source)}: the timestamp field {field!r} is "
                        f"{_missing_detail(token)}; {expected}")
    if pa.types.is_integer(kind):
        return values.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_floating(kind):
        return _floats_to_int64(values.to_numpy(), None, table, source, field, format, expected)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return pc.cast(pc.cast(values, pa.timestamp("s")), pa.int64()).to_numpy()
    if text:
        if pc.all(pc.match_substring_regex(values, r"^[+-]?\d+$")).as_py():
            try:
                return pc.cast(values, pa.int64()).to_numpy()
            except pa.ArrowInvalid:  # beyond int64: the float check below names the value
                pass
        numeric = pc.match_substring_regex(values, r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$",
                                           ignore_case=True)
        if pc.all(numeric).as_py():
            numbers = pc.cast(values, pa.float64()).to_numpy()
            return _floats_to_int64(numbers, values, table, source, field, format, expected)
        parsed = _parse_datetimes(values)
        row = first_false(pc.or_(numeric, pc.is_valid(parsed)))
        if row is None and parsed.null_count == 0:
            return parsed.to_numpy()
        if row is None:  # every value is a number or a date, but both kinds occur
            row = first_false(pc.invert(numeric)) or 0
            expected += " (one kind per column: this column mixes numbers and dates)"
        raise DataError(f"{source}, {row_hint(table, row, format, source)}: timestamp field {field!r} is "
                        f"{values[row].as_py()!r}; {expected}")
    raise DataError(f"{source}: timestamp field {field!r} has type {kind}; {expected}")


def _ids(table: pa.Table, column: str, canonical: str, source: str, format: str) -> pa.ChunkedArray:
    """An id column as int64 or text, checked: every row has an id, and the ids are scalars.

    CSV/TSV cells arrive as text (see :func:`~.readers.read_csv`): they keep their spelling unless every id
    is a plain integer (:func:`~sasrec_lightning.formats.integer_or_text_ids`); empty cells and
    pandas' missing-value tokens (``NA``, ``null``, ``None``, ...) are missing ids. Other formats
    bring their own types: JSON strings stay strings, JSON numbers must be integers within int64.
    """
    values = table.column(column)
    what = f"the {canonical} field {column!r}"
    expected = "expected an id on every row"
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    kind = values.type
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if text and format in ("csv", "tsv"):
        if values.null_count == 0:
            typed = integer_or_text_ids(values)  # the common case first: one regex pass, no copies
            if pa.types.is_integer(typed.type):
                return typed
        values = pc.utf8_trim_whitespace(values)
    row = first_false(pc.is_valid(values))
    token = None
    # CSV: pandas' missing-value tokens too; JSON/Parquet: an empty string. Python-literal files (Steam,
    # old Amazon) keep '' as an id, as the paper's preprocessing script does with those files.
    if row is None and text and format != "literal":
        row = _missing_token(values) if format in ("csv", "tsv") else first_false(pc.not_equal(values, ""))
        token = None if row is None else values[row].as_py()
    if row is not None:
        if token is None and format in ("csv", "tsv"):
            token = ""  # a row with fewer fields than the header
        raise DataError(f"{source}, {row_hint(table, row, format, source)}: {what} is {_missing_detail(token)}; "
                        f"{expected}")
    if text:
        return integer_or_text_ids(values) if format in ("csv", "tsv") else values
    if pa.types.is_integer(kind):
        return values
    if pa.types.is_floating(kind):  # JSON numbers with a fraction or an exponent, or too large for int64
        numbers = values.to_numpy()
        ok = np.isfinite(numbers) & (numbers == np.floor(numbers)) & (numbers >= -(2.0**63)) & (numbers < 2.0**63)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise DataError(
                f"{source}, {row_hint(table, row, format, source)}: {what} is {float(numbers[row])!r} (read as a "
                f"floating-point number), not an integer id within the 64-bit range ({_INT64_RANGE}); expected "
                "integer ids that fit 64 bits, or text ids (write long ids as JSON strings, e.g. "
                "\"12345678901234567890\")"
            )
        return pa.chunked_array([numbers.astype(np.int64)])
    if getattr(kind, "extension_name", None) == "arrow.json":  # mixed JSON types (text of each value)
        problem = json_problem(source, [column]) if os.path.isfile(source) else None
        raise DataError(problem or f"{source}: {what} mixes JSON types (e.g. numbers on some lines, strings on "
                                   "others); expected one type: every id a number, or every id a string")
    if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        raise DataError(f"{source}: {what} has type {kind}; expected one integer or text id per row, not a "
                        "list, a record or raw bytes (point --data.source.user_column / --data.source.item_column at a "
                        "column of plain ids)")
    try:
        return pc.cast(values, pa.string())  # booleans, dates, decimals: their text is the id
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise DataError(f"{source}: {what} has type {kind}; expected integer or text ids") from error


def canonical_columns(table: pa.Table, source: str, format: str, user_column: str, item_column: str,
               timestamp_column: str | None, rating_column: str | None) -> pa.Table:
    wanted = {"user": user_column, "item": item_column, "timestamp": timestamp_column, "rating": rating_column}
    wanted = {canonical: original for canonical, original in wanted.items() if original}
    missing = [column for column in wanted.values() if column not in table.column_names]
    if missing:
        options = ("--data.source.user_column / --data.source.item_column / --data.source.timestamp_column / "
                   "--data.source.rating_column")
        if format == "memory":  # a table passed from Python
            options = "source=SourceOptions(user_column=..., item_column=..., timestamp_column=..., rating_column=...)"
        raise DataError(f"{source}: column(s) {missing} not found; the columns are {table.column_names}. Set {options} "
                        "to the right names")
    if table.num_rows == 0:
        where = "the table has no rows" if format == "memory" else "the file has no data rows"
        raise DataError(f"{source}: no interactions found ({where}); expected at least one "
                        f"row with the fields {list(wanted.values())}")
    columns = {canonical: _ids(table, wanted[canonical], canonical, source, format) for canonical in ("user", "item")}
    if "timestamp" in wanted:
        columns["timestamp"] = pa.array(
            timestamps_to_int64(table, wanted["timestamp"], source, wanted["timestamp"], format)
        )
    if "rating" in wanted:
        ratings = table.column(wanted["rating"])
        if format in ("csv", "tsv") and pa.types.is_string(ratings.type):  # CSV cells are text: NA -> missing
            try:
                ratings = pc.cast(ratings, pa.float64())  # the common case: every cell a number
            except pa.ArrowInvalid:
                ratings = pc.utf8_trim_whitespace(ratings)
                ratings = pc.if_else(pc.is_in(ratings, pa.array(_MISSING_TOKENS)), None, ratings)
        try:
            columns["rating"] = pc.cast(ratings, pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise DataError(f"{source}: rating field {wanted['rating']!r} is not numeric ({error}); "
                            "expected numbers") from error
    if "line" in table.column_names:
        columns["line"] = table.column("line")
    return pa.table(columns)

