"""One reader per format: a function from a :class:`ReadRequest` to an Arrow table, in :data:`READERS`.

Every local file goes through ``datasets.load_dataset`` (:func:`load_file`), a ``save_to_disk``
folder through ``load_from_disk`` and a hub id through ``load_dataset(id)``. Line formats that are
not CSV/JSON are parsed column-wise in :mod:`.formats`. Adding a format is one :class:`Reader` entry
(and its line parser).
"""

from __future__ import annotations

import csv
import glob
import lzma
import os
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DataError
from .diagnostics import csv_records, not_utf8, one_paragraph, open_text, read_failure
from .formats import looks_like_literal_dicts, parse_literal_dicts, parse_movielens_lines, parse_sasrec_lines
from .textfiles import COMPRESSION

__all__ = ["load_file", "read_csv", "ReadRequest", "Reader", "READERS", "FORMATS", "default_min_interactions",
           "pick_split"]


def _is_zip(path: str) -> bool:
    return path.lower().endswith(".zip") or zipfile.is_zipfile(path)


def _first_line(path: str) -> str:
    with open_text(path) as handle:
        for line in handle:
            if line.strip():
                return line
    return ""


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


def load_file(builder: str, path: str, cache_dir: str, format: str, keys: list[str], **kwargs) -> datasets.Dataset:
    """``datasets.load_dataset`` of one local file; reader errors become one-paragraph ``DataError`` s.

    ``cache_dir`` is the scratch cache of :func:`~.sources.scratch_cache`; ``format`` and ``keys`` (the
    fields wanted) are for the messages.
    """
    archive = _is_zip(path)
    try:
        data_files = _extract_ratings(path, cache_dir) if archive else path
        return datasets.load_dataset(builder, data_files=data_files, split="train", cache_dir=cache_dir, **kwargs)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001  (datasets wraps reader errors; find the real cause)
        raise read_failure(error, path, builder, format, keys, archive) from error


def _csv_header(path: str, separator: str) -> list[str] | None:
    """The header fields of a (possibly compressed) CSV file; ``None`` if they cannot be read here."""
    try:
        return next(iter(csv_records(path, separator, errors="strict")), (0, None))[1]
    except UnicodeDecodeError:
        raise not_utf8(path, "csv" if separator == "," else "tsv") from None
    except (OSError, EOFError, zlib.error, lzma.LZMAError, csv.Error):
        return None  # e.g. zstd or a corrupt archive: datasets reads it (and reports what is wrong)


def read_csv(path: str, format: str, scratch: str, keys: list[str]) -> pa.Table:
    """A CSV/TSV file with every cell as text, and every line checked to have the header's fields.

    pandas would guess types per chunk: ``0042`` and ``42`` would both become 42, ``NA`` or ``None``
    a missing value, and a huge number a float. Reading text keeps the file's spelling; the ids,
    timestamps and ratings are typed afterwards with one rule each (:func:`~.columns.canonical_columns`). A line with
    more fields than the header is an error (pandas would shift a first such line into an index
    column, or drop its extra fields with only a warning).
    """
    separator = "\t" if format == "tsv" else ","
    header = _csv_header(path, separator)
    if header is None:  # cannot look inside here: let pandas guess, as before
        return load_file("csv", path, scratch, format, keys, sep=separator).data.table
    missing = [key for key in keys if key not in header]
    if missing:
        raise DataError(f"{path}: column(s) {missing} not found; the columns are {header}. Set "
                        "--data.source.user_column / --data.source.item_column / --data.source.timestamp_column / "
                        "--data.source.rating_column to the right names")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{path}: the header line names column(s) {repeated} more than once; expected distinct "
                        "column names")
    features = datasets.Features({name: datasets.Value("string") for name in header})
    with warnings.catch_warnings():
        # pandas' ParserWarning "... This leads to a loss of data": refuse the line instead
        warnings.filterwarnings("error", message="Length of header or names does not match")
        return load_file("csv", path, scratch, format, keys, sep=separator, features=features, index_col=False,
                     keep_default_na=False).data.table


def _check_parquet(path: str, keys: list[str]) -> None:
    """A Parquet file that ``datasets`` would fail on with an Arrow traceback: not Parquet, or no rows."""
    try:
        handle = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a Parquet file ({one_paragraph(error)}); expected a Parquet file, or set "
                        "--data.source.format to the file's real format") from None
    try:
        if handle.metadata.num_rows == 0:
            raise DataError(f"{path}: the Parquet file has no rows (its columns are {handle.schema_arrow.names}); "
                            f"expected at least one row with the fields {keys}")
    finally:
        handle.close()


@dataclass(frozen=True)
class ReadRequest:
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
    """How one format is read: a function from a :class:`ReadRequest` to an Arrow table, plus its defaults.

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

    read: Callable[[ReadRequest], pa.Table]
    extensions: tuple[str, ...] = ()
    columns: tuple[str, str, str | None, str | None] | None = None
    min_interactions: int = 5
    sniff: Callable[[str], str] | None = None


def _read_sasrec(request: ReadRequest) -> pa.Table:
    lines = load_file("text", request.path, request.scratch, request.format, ["user", "item"])
    return parse_sasrec_lines(lines, request.path)


def _read_movielens(request: ReadRequest) -> pa.Table:
    lines = load_file("text", request.path, request.scratch, request.format, ["UserID", "MovieID"])
    return parse_movielens_lines(lines, request.path)


def _read_literal(request: ReadRequest) -> pa.Table:
    lines = load_file("text", request.path, request.scratch, request.format, request.keys)
    return parse_literal_dicts(lines, request.path, tuple(request.keys), request.num_proc)


def _read_text_cells(request: ReadRequest) -> pa.Table:
    return read_csv(request.path, request.format, request.scratch, request.keys)


def _read_parquet(request: ReadRequest) -> pa.Table:
    if not request.path.lower().endswith(COMPRESSION):
        _check_parquet(request.path, request.keys)
    return load_file("parquet", request.path, request.scratch, request.format, request.keys).data.table


def _read_json(request: ReadRequest) -> pa.Table:
    return load_file("json", request.path, request.scratch, request.format, request.keys).data.table


def _json_or_literal(path: str) -> str:
    """``literal`` when the first line of a ``json`` file is a Python-literal dict (raw Steam/Amazon), else ``json``."""
    if not os.path.isfile(path):
        return "json"
    try:
        return "literal" if looks_like_literal_dicts(_first_line(path)) else "json"
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: cannot read the file ({type(error).__name__}: {error}); expected a "
                        "complete (gzip) JSON-lines file") from error


def _read_disk(request: ReadRequest) -> pa.Table:
    path, split = request.path, request.split
    try:
        dataset = datasets.load_from_disk(path)
    except FileNotFoundError as error:
        raise DataError(f"{path}: not a folder written by Dataset.save_to_disk ({error})") from error
    if isinstance(dataset, datasets.DatasetDict):
        dataset = pick_split(dataset, split, path)
    return dataset.data.table


def pick_split(dataset: datasets.DatasetDict, split: str, source: str) -> datasets.Dataset:
    """The ``split`` (``--data.source.split``) of a ``DatasetDict`` read from disk or passed in memory."""
    if split not in dataset:
        raise DataError(f"{source}: split {split!r} not found; the splits are {list(dataset)} (--data.source.split)")
    return dataset[split]


_NEVER_RUN = ("dataset scripts are never run (a script is code, not data). Expected data files: convert the data to "
              "Parquet, CSV or JSON lines and pass the file (or a folder of them) with --data.path")


def _loading_script(path: str) -> str | None:
    """The loading script ``datasets`` would take a local hub path for: ``x.py`` itself, or ``folder/folder.py``."""
    if path.lower().endswith(".py") and os.path.isfile(path):
        return os.path.basename(path)
    script = f"{os.path.basename(os.path.normpath(path))}.py"
    return script if os.path.isfile(os.path.join(path, script)) else None


def _read_hub(request: ReadRequest) -> pa.Table:
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
            f"{one_paragraph(cause)}. Expected files of one consistent table with "
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
                            f"({one_paragraph(error)}){held}") from None
        offline = " (offline mode: HF_HUB_OFFLINE=1)" if datasets.config.HF_HUB_OFFLINE else ""
        raise DataError(
            f"hub dataset {path!r} (name={name!r}, split={split!r}) could not be loaded{offline}: "
            f"{type(error).__name__}: {error}. Expected a dataset id reachable on the Hugging Face Hub or "
            "already in the local datasets cache (--data.cache.dir); for a local file check --data.path"
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

