"""Interaction sources: files, archives, URLs and hub datasets, all read through Hugging Face ``datasets``.

Every source ends as one Arrow table with the canonical columns ``user`` and ``item``, and when the
source has them ``timestamp`` (int64, seconds for dates), ``rating`` (float64) and ``line`` (the
1-based line of each row in a text file, for error messages). Values are validated here, where the
file, column and line are known; preprocessing receives clean, typed columns.

Supported (``format``): ``sasrec`` (``user item`` text), ``csv``, ``tsv``, ``parquet``, ``json``
(JSON lines; one Python-literal dict per line is detected and parsed safely: the raw Steam and older
Amazon files), ``literal`` (force the Python-literal parser), ``movielens`` (``ratings.dat`` or the
published ``ml-*.zip``), ``disk`` (a ``save_to_disk`` folder) and ``hub`` (a dataset id).
"""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataError
from .formats import looks_like_literal_dicts, parse_literal_dicts, parse_movielens_lines, parse_sasrec_lines

__all__ = [
    "DataError",
    "FORMATS",
    "detect_format",
    "download",
    "load_interactions",
    "source_identity",
    "timestamps_to_int64",
]

FORMATS = ("sasrec", "csv", "tsv", "parquet", "json", "literal", "movielens", "disk", "hub")
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst")
_EXTENSIONS = {".txt": "sasrec", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet",
               ".json": "json", ".jsonl": "json", ".ndjson": "json", ".dat": "movielens", ".zip": "movielens"}


def detect_format(path: str) -> str:
    """Guess the format of ``path`` from its extension (``.txt`` is the SASRec "user item" format)."""
    if os.path.isdir(path):
        return "disk"
    name = path.lower()
    for suffix in _COMPRESSION:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    suffix = Path(name).suffix
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if os.path.exists(path):
        raise DataError(
            f"cannot tell the format of {path!r} from its extension {suffix!r}; expected one of "
            f"{sorted(_EXTENSIONS)} or set --data.format to one of {list(FORMATS)}"
        )
    return "hub"


# ------------------------------------------------------------------------------ identity / download
def source_identity(path: str, format: str, name: str | None = None, split: str = "train",
                    hash_content: bool = False) -> dict:
    """What identifies the source's content, for the processed-data cache key.

    Local files: absolute path, size and modification time (or a SHA-256 of the bytes with
    ``hash_content``); folders: the same for every file inside. Hub ids: id, configuration, split.
    """
    if format == "hub":
        return {"hub": path, "name": name, "split": split}
    root = os.path.abspath(path)
    files = [root] if os.path.isfile(root) else sorted(
        os.path.join(base, file) for base, _, names in os.walk(root) for file in names
    )
    entries = []
    for file in files:
        stat = os.stat(file)
        entry = {"path": os.path.relpath(file, root) if file != root else root, "size": stat.st_size}
        if hash_content:
            digest = hashlib.sha256()
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
            entry["sha256"] = digest.hexdigest()
        else:
            entry["mtime_ns"] = stat.st_mtime_ns
        entries.append(entry)
    return {"path": root, "split": split if format == "disk" else None, "files": entries}


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


# ------------------------------------------------------------------------------------ validation
def _row_hint(table: pa.Table, row: int, format: str) -> str:
    if "line" in table.column_names:
        return f"line {table.column('line')[row].as_py()}"
    if format in ("csv", "tsv"):
        return f"row {row + 1} (line {row + 2} counting the header)"
    return f"row {row + 1}"


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


def timestamps_to_int64(table: pa.Table, column: str, source: str, field: str, format: str) -> np.ndarray:
    """A timestamp column as int64: integers, whole-number floats, numeric strings or ISO-8601 dates.

    Dates and date-times become Unix seconds (UTC); fractional seconds are floored (ties then keep
    file order).

    Raises:
        DataError: a missing or unparseable value; names the file, field, row/line and the value.
    """
    values = table.column(column)
    expected = ("expected integers (e.g. Unix seconds), numbers, or ISO-8601 dates like '2017-12-17' / "
                "'2017-12-17 10:30:00'")
    if values.null_count:
        row = _first_false(pc.is_valid(values))
        raise DataError(f"{source}, {_row_hint(table, row, format)}: the timestamp field {field!r} is empty; "
                        f"{expected}")
    kind = values.type
    if pa.types.is_dictionary(kind):
        values, kind = values.cast(kind.value_type), kind.value_type
    if pa.types.is_integer(kind):
        return values.to_numpy().astype(np.int64, copy=False)
    if pa.types.is_floating(kind):
        numbers = values.to_numpy()
        if not np.isfinite(numbers).all():
            row = int(np.flatnonzero(~np.isfinite(numbers))[0])
            raise DataError(f"{source}, {_row_hint(table, row, format)}: timestamp field {field!r} is "
                            f"{numbers[row]}; {expected}")
        return np.floor(numbers).astype(np.int64)
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return pc.cast(pc.cast(values, pa.timestamp("s")), pa.int64()).to_numpy()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        numeric = pc.match_substring_regex(values, r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
        if pc.all(numeric).as_py():
            return np.floor(pc.cast(pc.utf8_trim_whitespace(values), pa.float64()).to_numpy()).astype(np.int64)
        parsed = _parse_datetimes(values)
        row = _first_false(pc.or_(numeric, pc.is_valid(parsed)))
        if row is None and parsed.null_count == 0:
            return parsed.to_numpy()
        if row is None:  # every value is a number or a date, but both kinds occur
            row = _first_false(pc.invert(numeric)) or 0
            expected += " (one kind per column: this column mixes numbers and dates)"
        raise DataError(f"{source}, {_row_hint(table, row, format)}: timestamp field {field!r} is "
                        f"{values[row].as_py()!r}; {expected}")
    raise DataError(f"{source}: timestamp field {field!r} has type {kind}; {expected}")


def _first_false(mask) -> int | None:
    values = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~values)
    return int(bad[0]) if len(bad) else None


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
    columns = {}
    for canonical in ("user", "item"):
        values = table.column(wanted[canonical])
        if values.null_count:
            row = _first_false(pc.is_valid(values))
            raise DataError(f"{source}, {_row_hint(table, row, format)}: the {canonical} field "
                            f"{wanted[canonical]!r} is empty; expected an id on every row")
        if pa.types.is_dictionary(values.type):
            values = values.cast(values.type.value_type)
        if not (pa.types.is_integer(values.type) or pa.types.is_string(values.type)
                or pa.types.is_large_string(values.type)):
            values = pc.cast(values, pa.string())
        columns[canonical] = values
    if "timestamp" in wanted:
        columns["timestamp"] = pa.array(
            timestamps_to_int64(table, wanted["timestamp"], source, wanted["timestamp"], format)
        )
    if "rating" in wanted:
        try:
            columns["rating"] = pc.cast(table.column(wanted["rating"]), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
            raise DataError(f"{source}: rating field {wanted['rating']!r} is not numeric ({error}); "
                            "expected numbers") from error
    if "line" in table.column_names:
        columns["line"] = table.column("line")
    return pa.table(columns)


# ---------------------------------------------------------------------------------------- loading
def _is_gzip(path: str) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _is_zip(path: str) -> bool:
    return path.lower().endswith(".zip") or zipfile.is_zipfile(path)


def _first_line(path: str) -> str:
    opener = gzip.open if _is_gzip(path) else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
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
    It lives in the system temporary directory (``$TMPDIR``). Tables read from it stay valid after
    the removal: they are memory-mapped, and an unlinked file's mapping lives on (POSIX).
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


def _load(builder: str, path: str, cache_dir: str, **kwargs) -> datasets.Dataset:
    """``datasets.load_dataset`` of one local file, with decompression errors turned into ``DataError``.

    ``cache_dir`` is the scratch cache of :func:`_scratch_cache`.
    """
    archive = _is_zip(path)
    try:
        data_files = _extract_ratings(path, cache_dir) if archive else path
        return datasets.load_dataset(builder, data_files=data_files, split="train", cache_dir=cache_dir, **kwargs)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001  (datasets wraps reader errors; find the real cause)
        cause = _corrupt_archive(error)
        if cause is not None:
            kind = "zip archive" if archive else "compressed file"
            raise DataError(
                f"{path}: the {kind} is corrupt or truncated ({type(cause).__name__}: {cause}); expected a "
                "complete archive. Download the file again"
            ) from error
        raise


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
        format: one of :data:`FORMATS`; detected from the extension when ``None``.
        user_column: user column name in the source (ignored by ``sasrec``/``movielens``).
        item_column: item column name in the source (ignored by ``sasrec``/``movielens``).
        timestamp_column: timestamp column name, or ``None`` to keep file order (``movielens``
            always uses its timestamps).
        name: hub dataset configuration name.
        split: hub dataset split (and the split of a ``save_to_disk`` ``DatasetDict``).
        cache_dir: the ``datasets`` cache of hub ids (their prepared Arrow files are kept there).
            Local files are read through a temporary cache that is removed afterwards, so loading
            a local file, successfully or not, writes nothing to ``cache_dir``.
        rating_column: rating column name, or ``None`` (``movielens`` always reads its ratings).
        num_proc: worker processes for parsing Python-literal lines.

    Returns:
        Arrow table with columns ``user``, ``item`` and, when available, ``timestamp``, ``rating``, ``line``.

    Raises:
        DataError: missing/empty/corrupt file, bad line or value, missing column, unreachable hub id.
    """
    format = format or detect_format(path)
    if format not in FORMATS:
        raise DataError(f"unknown format {format!r} for {path!r}; expected one of {list(FORMATS)}")
    if format != "hub":
        if not os.path.exists(path):
            raise DataError(f"data file {path!r} does not exist; point --data.path at an existing file "
                            "(or a folder saved with save_to_disk, or a hub dataset id with --data.format hub)")
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise DataError(f"data file {path!r} is empty; expected interactions ({format} format)")
    if format == "json" and os.path.isfile(path):
        try:
            literal = looks_like_literal_dicts(_first_line(path))
        except (OSError, EOFError, zlib.error) as error:
            raise DataError(f"{path}: cannot read the file ({type(error).__name__}: {error}); expected a "
                            "complete (gzip) JSON-lines file") from error
        format = "literal" if literal else "json"

    with contextlib.ExitStack() as stack:
        # Local files: the datasets cache is a scratch folder (nothing lands in cache_dir); hub ids
        # keep using cache_dir, where datasets prepares into "*.incomplete" and renames when done.
        scratch = None if format in ("disk", "hub") else stack.enter_context(_scratch_cache())
        if format == "sasrec":
            table = parse_sasrec_lines(_load("text", path, scratch), path)
            user_column, item_column, timestamp_column, rating_column = "user", "item", None, None
        elif format == "movielens":
            table = parse_movielens_lines(_load("text", path, scratch), path)
            user_column, item_column, timestamp_column = "user", "item", "timestamp"
            rating_column = "rating"
        elif format == "literal":
            keys = tuple(dict.fromkeys(k for k in (user_column, item_column, timestamp_column, rating_column) if k))
            table = parse_literal_dicts(_load("text", path, scratch), path, keys, num_proc)
        elif format in ("csv", "tsv"):
            table = _load("csv", path, scratch, sep="\t" if format == "tsv" else ",").data.table
        elif format in ("parquet", "json"):
            table = _load(format, path, scratch).data.table
        elif format == "disk":
            try:
                dataset = datasets.load_from_disk(path)
            except FileNotFoundError as error:
                raise DataError(f"{path}: not a folder written by Dataset.save_to_disk ({error})") from error
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise DataError(f"{path}: split {split!r} not found; the splits are {list(dataset)} (--data.split)")
                dataset = dataset[split]
            table = dataset.data.table
        else:
            try:
                table = datasets.load_dataset(path, name=name, split=split, cache_dir=cache_dir).data.table
            except datasets.exceptions.DatasetGenerationError as error:  # the hub files themselves are bad
                cause = error.__cause__ or error
                detail = " ".join(str(cause).split())  # one paragraph (schema dumps span many lines)
                detail = detail if len(detail) <= 300 else detail[:300] + " ..."
                raise DataError(
                    f"hub dataset {path!r} (name={name!r}, split={split!r}) could not be built: "
                    f"{type(cause).__name__}: {detail}. Expected files of one consistent table with "
                    "user/item(/timestamp) columns"
                ) from error
            except (ConnectionError, FileNotFoundError) as error:
                offline = " (offline mode: HF_HUB_OFFLINE=1)" if datasets.config.HF_HUB_OFFLINE else ""
                raise DataError(
                    f"hub dataset {path!r} (name={name!r}, split={split!r}) could not be loaded{offline}: "
                    f"{type(error).__name__}: {error}. Expected a dataset id reachable on the Hugging Face Hub or "
                    "already in the local datasets cache (--data.cache_dir); for a local file check --data.path"
                ) from error
        return _canonical(table, path, format, user_column, item_column, timestamp_column, rating_column)
