"""When a read fails: the line, field and reason, found by reading the file again on the error path.

``datasets`` reports a bad file as a reader traceback (an Arrow or pandas error, often without the
line); these helpers look at the file itself to name the line and what was expected, so every
failure is one ``DataError`` paragraph (non-UTF-8 bytes, a line with extra fields, a malformed JSON
line, a corrupt archive).
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import gzip
import io
import json
import lzma
import os
import zlib
from collections.abc import Iterator

import pyarrow as pa

from ..errors import DataError, in_chain
from .formats import quote_line
from .textfiles import COMPRESSION, TEXT_ENCODING, other_unicode_error

__all__ = ["open_text", "csv_records", "row_hint", "not_utf8", "json_problem", "one_paragraph",
           "read_failure"]


def _open_binary(path: str) -> io.BufferedIOBase:
    """The file's bytes, decompressed (gzip, bz2, xz) as ``datasets`` reads them."""
    with open(path, "rb") as handle:
        magic = handle.read(6)
    if magic[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if magic[:3] == b"BZh":
        return bz2.open(path, "rb")
    if magic == b"\xfd7zXZ\x00":
        return lzma.open(path, "rb")
    return open(path, "rb")


def open_text(path: str, errors: str = "replace") -> io.TextIOBase:
    """The file's text, decompressed, without a leading UTF-8 byte-order mark (see :mod:`.textfiles`)."""
    return io.TextIOWrapper(_open_binary(path), encoding=TEXT_ENCODING, errors=errors, newline="")


def csv_records(path: str, separator: str, errors: str = "replace") -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of every non-blank CSV record, the header included.

    Lines are counted as an editor counts them (1-based, blank lines and the lines of quoted
    multi-line fields included); blank lines are skipped, as the CSV reader skips them.
    """
    with open_text(path, errors) as text:  # a byte-order mark is not part of the header
        reader = csv.reader(text, delimiter=separator)
        previous = 0
        for fields in reader:
            start, previous = previous + 1, reader.line_num
            if fields:
                yield start, fields


def _json_records(path: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every non-blank line of a JSON-lines file."""
    with open_text(path) as text:
        for number, line in enumerate(text, 1):
            if line.strip():
                yield number, line.strip()


def _line_of_row(path: str, format: str, row: int) -> int | None:
    """The 1-based line where data row ``row`` (0-based, header not counted) starts; only on error paths."""
    if not os.path.isfile(path) or format not in ("csv", "tsv", "json"):
        return None
    try:
        if format == "json":
            records = (line for line, _ in _json_records(path))
        else:
            records = (line for line, _ in csv_records(path, "\t" if format == "tsv" else ","))
            next(records, None)  # the header
        for index, line in enumerate(records):
            if index == row:
                return line
    except (OSError, EOFError, zlib.error, csv.Error):
        return None
    return None


def row_hint(table: pa.Table, row: int, format: str, source: str = "") -> str:
    """Where row ``row`` of ``table`` is in the file, for a message: ``line N`` when it can be told."""
    if "line" in table.column_names:
        return f"line {table.column('line')[row].as_py()}"
    line = _line_of_row(source, format, row)
    if line is not None:
        return f"line {line}"
    if format in ("csv", "tsv"):
        return f"row {row + 1} (line {row + 2} counting the header)"
    return f"row {row + 1}"


def _first_undecodable(path: str) -> tuple[int, int, bool] | None:
    """(line, byte value, has NUL bytes) of the first byte that is not UTF-8, or ``None``."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, binary = 1, False
    with _open_binary(path) as handle:
        while block := handle.read(1 << 20):
            binary = binary or b"\x00" in block
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:  # error.object: the decoder's pending bytes + this block
                return line + error.object[: error.start].count(b"\n"), error.object[error.start], binary
            line += block.count(b"\n")
    return None


def not_utf8(path: str, format: str) -> DataError | None:
    try:
        with _open_binary(path) as handle:
            head = handle.read(4)
        found = _first_undecodable(path)
    except (OSError, EOFError, zlib.error, lzma.LZMAError):
        return None
    if found is None:
        return None
    compressed = path.lower().endswith(COMPRESSION)
    other = other_unicode_error(path, head, f"UTF-8 text in the {format} format", compressed)
    if other is not None:  # UTF-16/UTF-32 text, not a binary or an 8-bit file
        return other
    line, byte, binary = found
    if binary:
        return DataError(f"{path}, line {line}: byte 0x{byte:02x} is not UTF-8 text and the file holds NUL bytes: "
                         f"it looks like a binary file, not {format} text. Expected a UTF-8 text file in the "
                         f"{format} format; check --data.path and --data.source.format")
    name = os.path.basename(path)
    example = "" if compressed else f", e.g. `iconv -f latin1 -t utf-8 {name} > utf8-{name}`"
    return DataError(f"{path}, line {line}: byte 0x{byte:02x} is not valid UTF-8 (the file is probably Latin-1, "
                     f"Windows-1252 or another 8-bit encoding); expected UTF-8 text. Convert the file to "
                     f"UTF-8{example}")


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}[type(value)]


def json_problem(path: str, keys: list[str]) -> str | None:
    """The first line that is not a JSON object, or whose ``keys`` change JSON type; ``None`` if all are fine."""
    first: dict[str, tuple[str, int]] = {}
    for line, text in _json_records(path):
        try:
            record = json.loads(text)
        except ValueError as error:
            return (f"{path}, line {line}: not valid JSON ({error}): {quote_line(text)}; expected one JSON object "
                    "per line")
        if not isinstance(record, dict):
            return (f"{path}, line {line}: expected a JSON object {{...}}, found {_json_kind(record)}: "
                    f"{quote_line(text)}")
        for key in keys:
            if key in record:
                kind = _json_kind(record[key])
                if key not in first or first[key][0] == "null":
                    first[key] = (kind, line)
                elif kind not in (first[key][0], "null"):
                    return (f"{path}, line {line}: field {key!r} is {kind} ({record[key]!r}), but on line "
                            f"{first[key][1]} it is {first[key][0]}; expected one type per field (e.g. every id a "
                            "number, or every id a string)")
    return None


def _corrupt_archive(error: BaseException) -> BaseException | None:
    """The gzip/zip/decompression error behind a ``datasets`` error, if there is one."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (gzip.BadGzipFile, EOFError, zlib.error)) or type(error).__name__ == "BadZipFile":
            return error
        error = error.__cause__ or error.__context__
    return None


_EXPECTED = {
    "csv": "a UTF-8 CSV file: a header line, then the same number of comma-separated fields on every line",
    "tsv": "a UTF-8 TSV file: a header line, then the same number of tab-separated fields on every line",
    "json": "UTF-8 JSON lines: one JSON object per line",
    "parquet": "a Parquet file",
    "text": "UTF-8 text",
}


def one_paragraph(error: BaseException, limit: int = 300) -> str:
    detail = " ".join(str(error).split())
    return f"{type(error).__name__}: " + (detail if len(detail) <= limit else detail[:limit] + " ...")


def read_failure(error: Exception, path: str, builder: str, format: str, keys: list[str], archive: bool) -> DataError:
    """The ``DataError`` for a file ``datasets`` could not read: where in the file, and what was expected.

    The reader's own message points at a batch or a pandas chunk; the file is read again here
    (only on this error path) to find the line.
    """
    cause = _corrupt_archive(error)
    if cause is not None:
        kind = "zip archive" if archive else "compressed file"
        return DataError(f"{path}: the {kind} is corrupt or truncated ({type(cause).__name__}: {cause}); expected a "
                         "complete archive. Download the file again")
    if in_chain(error, UnicodeDecodeError) is not None:
        found = not_utf8(path, format)
        if found is not None:
            return found
    if builder == "csv" and (in_chain(error, "ParserError") or in_chain(error, "ParserWarning")) is not None:
        separator = "\t" if format == "tsv" else ","
        header = None
        with contextlib.suppress(csv.Error):  # e.g. a field beyond csv's size limit: the generic message
            for line, fields in csv_records(path, separator):
                if header is None:
                    header = fields
                elif len(fields) > len(header):
                    return DataError(
                        f"{path}, line {line}: {len(fields)} fields, but the header line has {len(header)} "
                        f"({separator.join(header)!r}): {quote_line(separator.join(fields))}; expected "
                        f"{len(header)} fields on every line (quote a field that contains {separator!r}). Fix or "
                        "remove that line"
                    )
    if builder == "json":
        problem = json_problem(path, keys)
        if problem is not None:
            return DataError(problem)
    if "corresponds to no data" in str(error):  # datasets' words for a table without rows or columns
        if builder == "csv":
            return DataError(f"{path}: only a header line, no data rows; expected at least one row with the fields "
                             f"{keys}")
        return DataError(f"{path}: no data: the lines hold no fields (e.g. empty objects {{}}); expected "
                         f"{_EXPECTED.get(builder, builder)} with the fields {keys}")
    return DataError(f"{path}: cannot be read as {format} ({one_paragraph(error.__cause__ or error)}); "
                     f"expected {_EXPECTED.get(format, _EXPECTED.get(builder, builder))}, or set "
                     "--data.source.format to "
                     "the file's real format")

