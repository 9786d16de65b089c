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
published ``ml-*.zip``), ``disk`` (a ``save_to_disk`` folder) and ``hub`` (a dataset id).
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import csv
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import tempfile
import urllib.parse
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import DataError
from .formats import (
    first_false,
    integer_or_text_ids,
    looks_like_literal_dicts,
    parse_literal_dicts,
    parse_movielens_lines,
    parse_sasrec_lines,
    quote_line,
)
from .textfiles import TEXT_ENCODING, other_unicode_error

__all__ = [
    "DataError",
    "FORMATS",
    "READERS",
    "Reader",
    "default_min_interactions",
    "detect_format",
    "download",
    "load_interactions",
    "local_path",
    "source_identity",
    "timestamps_to_int64",
]

_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")  # a scheme of 2+ letters: not a Windows drive


def local_path(path: str) -> str:
    """``--data.path`` as a local path: a ``file://`` URL is read as the path it names; other URLs are refused.

    A ``file://`` URL names a local file unambiguously (``file:///data/my%20log.csv`` is
    ``/data/my log.csv``), so it is read rather than refused. ``http(s)://`` and other remote URLs
    are not read from ``--data.path`` (it would say "does not exist"): ``--data.url`` downloads a
    file once into the cache. ``hf://`` paths are passed on to ``datasets`` (a hub dataset).

    Raises:
        DataError: a remote URL, or a ``file://`` URL naming another host.
    """
    match = _URL.match(path)
    if match is None or match[1].lower() == "hf":
        return path
    if match[1].lower() == "file":
        parsed = urllib.parse.urlsplit(path)
        if parsed.netloc not in ("", "localhost"):
            raise DataError(f"--data.path {path!r} is a file:// URL on the host {parsed.netloc!r}; expected a local "
                            "file (file:///absolute/path, or the path itself)")
        return urllib.request.url2pathname(parsed.path)
    raise DataError(f"--data.path {path!r} is a URL, but --data.path takes a local file, a folder or a hub dataset id; "
                    f"to download the file, pass it with --data.url {path} (downloaded once into --data.cache_dir), or "
                    "download it yourself and pass the local file with --data.path")


def detect_format(path: str) -> str:
    """Guess the format of ``path`` from its extension (``.txt`` is the SASRec "user item" format)."""
    if os.path.isdir(path):
        return "disk"
    name = path.lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    suffix = Path(name).suffix
    extensions = {extension: format for format, reader in READERS.items() for extension in reader.extensions}
    if suffix in extensions:
        return extensions[suffix]
    if os.path.exists(path):
        raise DataError(
            f"cannot tell the format of {path!r} from its extension {suffix!r}; expected one of "
            f"{sorted(extensions)} or set --data.format to one of {list(READERS)}"
        )
    return "hub"


# ------------------------------------------------------------------------------ identity / download
SAMPLE_BLOCK = 64 << 10  # bytes per sampled block of the default fingerprint
SAMPLED_BLOCKS = 8  # blocks between the head and the tail, at fixed offsets spread over the file


def _sampled_sha256(path: str, size: int) -> str:
    """SHA-256 of the head, the tail and :data:`SAMPLED_BLOCKS` blocks between them (the whole file when small).

    The offsets depend only on the size, so the same bytes give the same digest; reading ten 64 KiB
    blocks takes milliseconds however large the file is.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= (SAMPLED_BLOCKS + 2) * SAMPLE_BLOCK:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            for index in range(SAMPLED_BLOCKS + 2):  # 0 (the head) .. size - SAMPLE_BLOCK (the tail)
                handle.seek(index * (size - SAMPLE_BLOCK) // (SAMPLED_BLOCKS + 1))
                digest.update(handle.read(SAMPLE_BLOCK))
    return digest.hexdigest()


def _file_identity(file: str, name: str, hash_content: bool) -> dict:
    """The cache-key entry of one file: a symlink stands for its target (``os.stat`` and ``open`` follow it)."""
    status = os.stat(file)
    entry = {"path": name, "target": os.path.realpath(file), "size": status.st_size}
    if hash_content:
        digest = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        entry["sha256"] = digest.hexdigest()
    else:
        entry.update(mtime_ns=status.st_mtime_ns, inode=status.st_ino,
                     sampled_sha256=_sampled_sha256(file, status.st_size))
    return entry


def source_identity(path: str, format: str, name: str | None = None, split: str = "train",
                    hash_content: bool = False) -> dict:
    """What identifies the source's content, for the processed-data cache key.

    Local files, and every file of a folder: absolute path, the target of a symlink, size, and by
    default the modification time, the inode and a SHA-256 of the head, the tail and 8 blocks at
    fixed offsets (:func:`_sampled_sha256`), so an edit that keeps the size and the modification
    time (``touch -r``, a restored backup, a symlink swapped to another file) still changes the key
    unless it falls outside the sampled blocks and the inode is the same too; ``hash_content``
    (``--data.hash_source``): a SHA-256 of every byte instead, which nothing misses. Hub ids: id,
    configuration, split.
    """
    local_folder = format == "hub" and os.path.isdir(path)  # a folder of data files read as a hub dataset
    if format == "hub" and not local_folder:
        return {"hub": path, "name": name, "split": split}
    if not local_folder:
        _check_local(path, format)  # a FIFO would block the hash or the stat of its content
    root = os.path.abspath(path)
    files = [root] if os.path.isfile(root) else sorted(
        os.path.join(base, file) for base, _, names in os.walk(root) for file in names
    )
    entries = [_file_identity(file, os.path.relpath(file, root) if file != root else root, hash_content)
               for file in files]
    return {"path": root, "split": split if format in ("disk", "hub") else None,
            "name": name if local_folder else None, "files": entries}


def download(url: str, cache_dir: str | None = None) -> str:
    """Download ``url`` (once) into the ``datasets`` download cache and return the local path.

    Raises:
        DataError: offline or unreachable; the message names the URL and ``--data.path``.
    """
    advice = (f"Download {url} yourself (e.g. `wget {url}`) and pass the file with --data.path PATH "
              "(the file is read as is, no need to decompress it)")
    if datasets.config.HF_HUB_OFFLINE:
        raise DataError(f"cannot download {url}: offline mode is on (HF_HUB_OFFLINE=1). {advice}")
    config = datasets.DownloadConfig(cache_dir=os.path.join(cache_dir, "downloads") if cache_dir else None)
    try:
        return datasets.DownloadManager(download_config=config).download(url)
    except (OSError, ValueError) as error:  # ConnectionError, FileNotFoundError, HTTP errors
        raise DataError(f"cannot download {url} ({type(error).__name__}: {error}). {advice}") from error


# ------------------------------------------------------------------------------- finding the line
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


def _open_text(path: str, errors: str = "replace") -> io.TextIOBase:
    """The file's text, decompressed, without a leading UTF-8 byte-order mark (see :mod:`.textfiles`)."""
    return io.TextIOWrapper(_open_binary(path), encoding=TEXT_ENCODING, errors=errors, newline="")


def _csv_records(path: str, separator: str, errors: str = "replace") -> Iterator[tuple[int, list[str]]]:
    """(first line, fields) of every non-blank CSV record, the header included.

    Lines are counted as an editor counts them (1-based, blank lines and the lines of quoted
    multi-line fields included); blank lines are skipped, as the CSV reader skips them.
    """
    with _open_text(path, errors) as text:  # a byte-order mark is not part of the header
        reader = csv.reader(text, delimiter=separator)
        previous = 0
        for fields in reader:
            start, previous = previous + 1, reader.line_num
            if fields:
                yield start, fields


def _json_records(path: str) -> Iterator[tuple[int, str]]:
    """(line, text) of every non-blank line of a JSON-lines file."""
    with _open_text(path) as text:
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
            records = (line for line, _ in _csv_records(path, "\t" if format == "tsv" else ","))
            next(records, None)  # the header
        for index, line in enumerate(records):
            if index == row:
                return line
    except (OSError, EOFError, zlib.error, csv.Error):
        return None
    return None


def _row_hint(table: pa.Table, row: int, format: str, source: str = "") -> str:
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


def _not_utf8(path: str, format: str) -> DataError | None:
    try:
        with _open_binary(path) as handle:
            head = handle.read(4)
        found = _first_undecodable(path)
    except (OSError, EOFError, zlib.error, lzma.LZMAError):
        return None
    if found is None:
        return None
    compressed = path.lower().endswith(_COMPRESSION)
    other = other_unicode_error(path, head, f"UTF-8 text in the {format} format", compressed)
    if other is not None:  # UTF-16/UTF-32 text, not a binary or an 8-bit file
        return other
    line, byte, binary = found
    if binary:
        return DataError(f"{path}, line {line}: byte 0x{byte:02x} is not UTF-8 text and the file holds NUL bytes: "
                         f"it looks like a binary file, not {format} text. Expected a UTF-8 text file in the "
                         f"{format} format; check --data.path and --data.format")
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


def _json_problem(path: str, keys: list[str]) -> str | None:
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


# ------------------------------------------------------------------------------------ validation
# What pandas reads as a missing value; CSV cells are read as text, so these arrive as tokens.
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
        raise DataError(f"{source}, {_row_hint(table, row, format, source)}: timestamp field {field!r} is {shown!r}, "
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
        raise DataError(f"{source}, {_row_hint(table, row, format, source)}: the timestamp field {field!r} is "
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
        raise DataError(f"{source}, {_row_hint(table, row, format, source)}: timestamp field {field!r} is "
                        f"{values[row].as_py()!r}; {expected}")
    raise DataError(f"{source}: timestamp field {field!r} has type {kind}; {expected}")


def _ids(table: pa.Table, column: str, canonical: str, source: str, format: str) -> pa.ChunkedArray:
    """An id column as int64 or text, checked: every row has an id, and the ids are scalars.

    CSV/TSV cells arrive as text (see :func:`_read_csv`): they keep their spelling unless every id
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
        raise DataError(f"{source}, {_row_hint(table, row, format, source)}: {what} is {_missing_detail(token)}; "
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
                f"{source}, {_row_hint(table, row, format, source)}: {what} is {float(numbers[row])!r} (read as a "
                f"floating-point number), not an integer id within the 64-bit range ({_INT64_RANGE}); expected "
                "integer ids that fit 64 bits, or text ids (write long ids as JSON strings, e.g. "
                "\"12345678901234567890\")"
            )
        return pa.chunked_array([numbers.astype(np.int64)])
    if getattr(kind, "extension_name", None) == "arrow.json":  # mixed JSON types (text of each value)
        problem = _json_problem(source, [column]) if os.path.isfile(source) else None
        raise DataError(problem or f"{source}: {what} mixes JSON types (e.g. numbers on some lines, strings on "
                                   "others); expected one type: every id a number, or every id a string")
    if pa.types.is_nested(kind) or pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        raise DataError(f"{source}: {what} has type {kind}; expected one integer or text id per row, not a "
                        "list, a record or raw bytes (point --data.user_column / --data.item_column at a "
                        "column of plain ids)")
    try:
        return pc.cast(values, pa.string())  # booleans, dates, decimals: their text is the id
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise DataError(f"{source}: {what} has type {kind}; expected integer or text ids") from error


def _canonical(table: pa.Table, source: str, format: str, user_column: str, item_column: str,
               timestamp_column: str | None, rating_column: str | None) -> pa.Table:
    wanted = {"user": user_column, "item": item_column, "timestamp": timestamp_column, "rating": rating_column}
    wanted = {canonical: original for canonical, original in wanted.items() if original}
    missing = [column for column in wanted.values() if column not in table.column_names]
    if missing:
        raise DataError(
            f"{source}: column(s) {missing} not found; the columns are {table.column_names}. "
            "Set --data.user_column / --data.item_column / --data.timestamp_column / --data.rating_column "
            "to the right names"
        )
    if table.num_rows == 0:
        raise DataError(f"{source}: no interactions found (the file has no data rows); expected at least one "
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


# ---------------------------------------------------------------------------------------- loading
def _is_zip(path: str) -> bool:
    return path.lower().endswith(".zip") or zipfile.is_zipfile(path)


def _first_line(path: str) -> str:
    with _open_text(path) as handle:
        for line in handle:
            if line.strip():
                return line
    return ""


def _corrupt_archive(error: BaseException) -> BaseException | None:
    """The gzip/zip/decompression error behind a ``datasets`` error, if there is one."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (gzip.BadGzipFile, EOFError, zlib.error)) or type(error).__name__ == "BadZipFile":
            return error
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def _scratch_cache() -> Iterator[str]:
    """A throw-away ``datasets`` cache for reading one local file, removed afterwards (also on errors).

    The Arrow files ``load_dataset`` writes for a local file (and ``map`` results, extracted
    archives, lock files) go here instead of ``--data.cache_dir``: a failed load leaves nothing in
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


def _extract_ratings(path: str, cache_dir: str) -> str:
    """``*/ratings.dat`` of a MovieLens zip, extracted by ``datasets`` into ``cache_dir``.

    ``datasets`` extracts local archives itself (also offline, where ``zip://`` URLs are refused).
    """
    config = datasets.DownloadConfig(cache_dir=os.path.join(cache_dir, "downloads"))
    folder = datasets.DownloadManager(download_config=config).extract(os.path.abspath(path))
    found = sorted(glob.glob(os.path.join(folder, "*", "ratings.dat")) + glob.glob(os.path.join(folder, "ratings.dat")))
    if not found:
        raise DataError(f"{path}: no 'ratings.dat' inside the zip archive; expected the MovieLens archive as "
                        "published (ml-1m.zip holds ml-1m/ratings.dat)")
    return found[0]


_EXPECTED = {
    "csv": "a UTF-8 CSV file: a header line, then the same number of comma-separated fields on every line",
    "tsv": "a UTF-8 TSV file: a header line, then the same number of tab-separated fields on every line",
    "json": "UTF-8 JSON lines: one JSON object per line",
    "parquet": "a Parquet file",
    "text": "UTF-8 text",
}


def _in_chain(error: BaseException, kind: type | str) -> BaseException | None:
    """The first exception of ``kind`` (a type or a class name) in ``error``'s cause/context chain."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(kind, str) and type(error).__name__ == kind or isinstance(kind, type) and isinstance(error, kind):
            return error
        error = error.__cause__ or error.__context__
    return None


def _one_paragraph(error: BaseException, limit: int = 300) -> str:
    detail = " ".join(str(error).split())
    return f"{type(error).__name__}: " + (detail if len(detail) <= limit else detail[:limit] + " ...")


def _read_failure(error: Exception, path: str, builder: str, format: str, keys: list[str], archive: bool) -> DataError:
    """The ``DataError`` for a file ``datasets`` could not read: where in the file, and what was expected.

    The reader's own message points at a batch or a pandas chunk; the file is read again here
    (only on this error path) to find the line.
    """
    cause = _corrupt_archive(error)
    if cause is not None:
        kind = "zip archive" if archive else "compressed file"
        return DataError(f"{path}: the {kind} is corrupt or truncated ({type(cause).__name__}: {cause}); expected a "
                         "complete archive. Download the file again")
    if _in_chain(error, UnicodeDecodeError) is not None:
        found = _not_utf8(path, format)
        if found is not None:
            return found
    if builder == "csv" and (_in_chain(error, "ParserError") or _in_chain(error, "ParserWarning")) is not None:
        separator = "\t" if format == "tsv" else ","
        header = None
        with contextlib.suppress(csv.Error):  # e.g. a field beyond csv's size limit: the generic message
            for line, fields in _csv_records(path, separator):
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
        problem = _json_problem(path, keys)
        if problem is not None:
            return DataError(problem)
    if "corresponds to no data" in str(error):  # datasets' words for a table without rows or columns
        if builder == "csv":
            return DataError(f"{path}: only a header line, no data rows; expected at least one row with the fields "
                             f"{keys}")
        return DataError(f"{path}: no data: the lines hold no fields (e.g. empty objects {{}}); expected "
                         f"{_EXPECTED.get(builder, builder)} with the fields {keys}")
    return DataError(f"{path}: cannot be read as {format} ({_one_paragraph(error.__cause__ or error)}); "
                     f"expected {_EXPECTED.get(format, _EXPECTED.get(builder, builder))}, or set --data.format to "
                     "the file's real format")


def _load(builder: str, path: str, cache_dir: str, format: str, keys: list[str], **kwargs) -> datasets.Dataset:
    """``datasets.load_dataset`` of one local file; reader errors become one-paragraph ``DataError`` s.

    ``cache_dir`` is the scratch cache of :func:`_scratch_cache`; ``format`` and ``keys`` (the
    fields wanted) are for the messages.
    """
    archive = _is_zip(path)
    try:
        data_files = _extract_ratings(path, cache_dir) if archive else path
        return datasets.load_dataset(builder, data_files=data_files, split="train", cache_dir=cache_dir, **kwargs)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001  (datasets wraps reader errors; find the real cause)
        raise _read_failure(error, path, builder, format, keys, archive) from error


def _csv_header(path: str, separator: str) -> list[str] | None:
    """The header fields of a (possibly compressed) CSV file; ``None`` if they cannot be read here."""
    try:
        return next(iter(_csv_records(path, separator, errors="strict")), (0, None))[1]
    except UnicodeDecodeError:
        raise _not_utf8(path, "csv" if separator == "," else "tsv") from None
    except (OSError, EOFError, zlib.error, lzma.LZMAError, csv.Error):
        return None  # e.g. zstd or a corrupt archive: datasets reads it (and reports what is wrong)


def _read_csv(path: str, format: str, scratch: str, keys: list[str]) -> pa.Table:
    """A CSV/TSV file with every cell as text, and every line checked to have the header's fields.

    pandas would guess types per chunk: ``0042`` and ``42`` would both become 42, ``NA`` or ``None``
    a missing value, and a huge number a float. Reading text keeps the file's spelling; the ids,
    timestamps and ratings are typed afterwards with one rule each (:func:`_canonical`). A line with
    more fields than the header is an error (pandas would shift a first such line into an index
    column, or drop its extra fields with only a warning).
    """
    separator = "\t" if format == "tsv" else ","
    header = _csv_header(path, separator)
    if header is None:  # cannot look inside here: let pandas guess, as before
        return _load("csv", path, scratch, format, keys, sep=separator).data.table
    missing = [key for key in keys if key not in header]
    if missing:
        raise DataError(f"{path}: column(s) {missing} not found; the columns are {header}. Set --data.user_column / "
                        "--data.item_column / --data.timestamp_column / --data.rating_column to the right names")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the header line names column(s) {repeated} more than once; expected distinct "
                        "column names")
    features = datasets.Features({name: datasets.Value("string") for name in header})
    with warnings.catch_warnings():
        # pandas' ParserWarning "... This leads to a loss of data": refuse the line instead
        warnings.filterwarnings("error", message="Length of header or names does not match")
        return _load("csv", path, scratch, format, keys, sep=separator, features=features, index_col=False,
                     keep_default_na=False).data.table


def _check_parquet(path: str, keys: list[str]) -> None:
    """A Parquet file that ``datasets`` would fail on with an Arrow traceback: not Parquet, or no rows."""
    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a Parquet file ({_one_paragraph(error)}); expected a Parquet file, or set "
                        "--data.format to the file's real format") from None
    try:
        if handle.metadata.num_rows == 0:
            raise DataError(f"{path}: the Parquet file has no rows (its columns are {handle.schema_arrow.names}); "
                            f"expected at least one row with the fields {keys}")
    finally:
        handle.close()


def _check_local(path: str, format: str) -> None:
    """Refuse a local path that cannot be read as ``format`` before anything opens it.

    A named pipe (FIFO), device or socket would block the read or never end; a folder is only a
    source for ``disk`` (a ``save_to_disk`` folder); an empty file has no interactions.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"data file {path!r} does not exist; point --data.path at an existing file "
                        "(or a folder saved with save_to_disk, or a hub dataset id with --data.format hub)") from None
    except OSError as error:
        raise DataError(f"data file {path!r} cannot be accessed ({_one_paragraph(error)}); expected a readable "
                        "file (--data.path)") from None
    if stat.S_ISDIR(mode):
        if format != "disk":
            raise DataError(f"data path {path!r} is a folder, but the {format} format reads one file; point "
                            "--data.path at the file, or use --data.format disk for a folder written by "
                            "save_to_disk (--data.format hub reads a folder of data files)")
        return
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
                else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
        raise DataError(f"data path {path!r} is {kind}, not a regular file; reading it could block or never end. "
                        "Expected a regular file: save the data to a file and pass that with --data.path")
    if format == "disk":
        raise DataError(f"data path {path!r} is a file, but --data.format disk expects a folder written by "
                        "Dataset.save_to_disk")
    if os.path.getsize(path) == 0:
        raise DataError(f"data file {path!r} is empty; expected interactions ({format} format)")


# ---------------------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class _Request:
    """One read: the source, the fields wanted (for messages) and where ``datasets`` may cache."""

    path: str
    format: str
    keys: list[str]
    scratch: str | None  # the scratch ``datasets`` cache of a local file or folder (None: disk, hub ids)
    name: str | None
    split: str
    cache_dir: str | None
    num_proc: int | None


@dataclass(frozen=True)
class Reader:
    """How one format is read: a function from a :class:`_Request` to an Arrow table, plus its defaults.

    Attributes:
        read: returns the table with the source's columns (named by ``columns`` or by the options).
        extensions: file extensions that select this format.
        columns: the format's own ``(user, item, timestamp, rating)`` columns, which override the
            ``*_column`` options; ``None``: the options name them.
        min_interactions: default of ``min_user_interactions`` / ``min_item_interactions``
            (0: the file is already filtered, as the SASRec text files are).
        sniff: for a format that covers two kinds of file, the format a local path really has
            (read from its first line); ``None``: the format is what it says.
    """

    read: Callable[[_Request], pa.Table]
    extensions: tuple[str, ...] = ()
    columns: tuple[str, str, str | None, str | None] | None = None
    min_interactions: int = 5
    sniff: Callable[[str], str] | None = None


def _read_sasrec(request: _Request) -> pa.Table:
    lines = _load("text", request.path, request.scratch, request.format, ["user", "item"])
    return parse_sasrec_lines(lines, request.path)


def _read_movielens(request: _Request) -> pa.Table:
    lines = _load("text", request.path, request.scratch, request.format, ["UserID", "MovieID"])
    return parse_movielens_lines(lines, request.path)


def _read_literal(request: _Request) -> pa.Table:
    lines = _load("text", request.path, request.scratch, request.format, request.keys)
    return parse_literal_dicts(lines, request.path, tuple(request.keys), request.num_proc)


def _read_text_cells(request: _Request) -> pa.Table:
    return _read_csv(request.path, request.format, request.scratch, request.keys)


def _read_parquet(request: _Request) -> pa.Table:
    if not request.path.lower().endswith(_COMPRESSION):
        _check_parquet(request.path, request.keys)
    return _load("parquet", request.path, request.scratch, request.format, request.keys).data.table


def _read_json(request: _Request) -> pa.Table:
    return _load("json", request.path, request.scratch, request.format, request.keys).data.table


def _json_or_literal(path: str) -> str:
    """``literal`` when the first line of a ``json`` file is a Python-literal dict (raw Steam/Amazon), else ``json``."""
    if not os.path.isfile(path):
        return "json"
    try:
        return "literal" if looks_like_literal_dicts(_first_line(path)) else "json"
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read the file ({type(error).__name__}: {error}); expected a "
                        "complete (gzip) JSON-lines file") from error


def _read_disk(request: _Request) -> pa.Table:
    path, split = request.path, request.split
    try:
        dataset = datasets.load_from_disk(path)
    except FileNotFoundError as error:
        raise DataError(f"{path}: not a folder written by Dataset.save_to_disk ({error})") from error
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(f"{path}: split {split!r} not found; the splits are {list(dataset)} (--data.split)")
        dataset = dataset[split]
    return dataset.data.table


_NEVER_RUN = ("dataset scripts are never run (a script is code, not data). Expected data files: convert the data to "
              "Parquet, CSV or JSON lines and pass the file (or a folder of them) with --data.path")


def _loading_script(path: str) -> str | None:
    """The loading script ``datasets`` would take a local hub path for: ``x.py`` itself, or ``folder/folder.py``."""
    if path.lower().endswith(".py") and os.path.isfile(path):
        return os.path.basename(path)
    script = f"{os.path.basename(os.path.normpath(path))}.py"
    return script if os.path.isfile(os.path.join(path, script)) else None


def _read_hub(request: _Request) -> pa.Table:
    path, name, split = request.path, request.name, request.split
    script = _loading_script(path)
    if script is not None:  # refused here, whatever the installed datasets would do with it
        raise DataError(f"hub dataset {path!r} holds a loading script, {script}: {_NEVER_RUN}")
    try:
        cache_dir = request.scratch or request.cache_dir  # a local folder: the scratch cache
        return datasets.load_dataset(path, name=name, split=split, cache_dir=cache_dir).data.table
    except datasets.exceptions.DatasetGenerationError as error:  # the hub files themselves are bad
        cause = error.__cause__ or error
        raise DataError(
            f"hub dataset {path!r} (name={name!r}, split={split!r}) could not be built: "
            f"{_one_paragraph(cause)}. Expected files of one consistent table with "
            "user/item(/timestamp) columns"
        ) from error
    except RuntimeError as error:  # datasets >= 4 on a hub repository that is a script
        if "scripts are no longer supported" not in str(error):
            raise
        found = str(error).rsplit("found ", 1)[-1]
        raise DataError(f"hub dataset {path!r} holds a loading script, {found}: {_NEVER_RUN}") from None
    except (ConnectionError, FileNotFoundError) as error:
        if os.path.isdir(path):  # a local folder: nothing to do with the hub or offline mode
            scripts = sorted(file for file in os.listdir(path) if file.lower().endswith(".py"))
            held = f"; it holds Python files {scripts}, and {_NEVER_RUN}" if scripts else (
                ". Expected Parquet, CSV or JSON-lines files in the folder")
            raise DataError(f"hub dataset folder {path!r} has no data files datasets can read "
                            f"({_one_paragraph(error)}){held}") from None
        offline = " (offline mode: HF_HUB_OFFLINE=1)" if datasets.config.HF_HUB_OFFLINE else ""
        raise DataError(
            f"hub dataset {path!r} (name={name!r}, split={split!r}) could not be loaded{offline}: "
            f"{type(error).__name__}: {error}. Expected a dataset id reachable on the Hugging Face Hub or "
            "already in the local datasets cache (--data.cache_dir); for a local file check --data.path"
        ) from error


#: Every format: its reader. Adding a format is one entry here (and its line parser in formats.py).
READERS: dict[str, Reader] = {
    "sasrec": Reader(_read_sasrec, (".txt",), columns=("user", "item", None, None), min_interactions=0),
    "csv": Reader(_read_text_cells, (".csv",)),
    "tsv": Reader(_read_text_cells, (".tsv",)),
    "parquet": Reader(_read_parquet, (".parquet", ".pq")),
    "json": Reader(_read_json, (".json", ".jsonl", ".ndjson"), sniff=_json_or_literal),
    "literal": Reader(_read_literal),
    "movielens": Reader(_read_movielens, (".dat", ".zip"), columns=("user", "item", "timestamp", "rating")),
    "disk": Reader(_read_disk),
    "hub": Reader(_read_hub),
}
FORMATS = tuple(READERS)  # the built-in formats


def default_min_interactions(format: str) -> int:
    """The default minimum user/item interaction count of ``format`` (5, the paper; 0 for SASRec text)."""
    reader = READERS.get(format)
    return 5 if reader is None else reader.min_interactions


def load_interactions(
    path: str,
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
    """Read interactions from a local file, a ``save_to_disk`` folder or a hub dataset id.

    Args:
        path: file path, folder or hub id.
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
    path = local_path(path)
    format = format or detect_format(path)
    if format not in READERS:
        raise DataError(f"unknown format {format!r} for {path!r}; expected one of {list(READERS)}")
    if format != "hub":
        _check_local(path, format)
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
        scratch = stack.enter_context(_scratch_cache()) if local else None
        table = reader.read(_Request(path, format, keys, scratch, name, split, cache_dir, num_proc))
        return _canonical(table, path, format, user_column, item_column, timestamp_column, rating_column)
