"""Id maps between original ids and internal ids: one :class:`IdMap` for users and items.

The model works on internal ids ``1..num_items`` (0 = padding). To answer in the dataset's own
ids, and to fall back to the most-popular items for an empty history, the module keeps

* ``item_ids``: a plain Python list, internal id -> original id (index 0 unused), saved in the
  checkpoint as primitives so ``torch.load(..., weights_only=True)`` can read it;
* ``popularity``: interaction counts per internal id (a buffer of the module, so it lives in the
  ``state_dict``).

Lookups are vectorized (``np.searchsorted`` over the sorted ids), no per-item dictionary.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.json
import pyarrow.parquet as pq

from ..errors import DataError
from .textfiles import TEXT_ENCODING, other_unicode_error

__all__ = ["IdMap", "ItemVocabulary", "read_user_list"]

log = logging.getLogger(__name__)


def _as_array(ids: Sequence) -> np.ndarray:
    """Original ids as a numpy array: int64 for integer ids, unicode strings otherwise."""
    array = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if array.dtype.kind in "iub":
        return array.astype(np.int64)
    if array.dtype.kind in "US":
        return array.astype(str)
    return array.astype(str)  # mixed/object: compare as text


class IdMap:
    """Two-way map between original ids and consecutive internal ids ``first, first + 1, ...``.

    Users are rows ``0..U-1`` (``first=0``); items are ``1..I`` (``first=1``, entry 0 is padding).
    Lookups are one ``np.searchsorted`` over the sorted original ids.

    Args:
        ids: original ids, internal id -> original id; entries before ``first`` are placeholders.
        first: the first internal id that names a real entry.
    """

    def __init__(self, ids: Sequence, first: int = 0) -> None:
        self.ids = _as_array(ids)  # (first + n,)
        self.first = first
        self.order = np.argsort(self.ids[first:], kind="stable") + first  # (n,) internal ids sorted by original id
        self.sorted_ids = self.ids[self.order]  # (n,)
        self._text: tuple[np.ndarray, np.ndarray] | None = None  # the sorted ids as text (see _as_text)

    def __len__(self) -> int:
        return len(self.ids) - self.first

    def lookup(self, ids: Sequence) -> tuple[np.ndarray, np.ndarray]:
        """Internal ids of original ids and whether each was found: ``(n,) -> (n,) int64, (n,) bool``.

        Integer queries against text ids (or the other way round) compare as text, so ids read from
        a file as strings of digits still match. Where an id is unknown, its internal id is arbitrary.
        """
        query = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
        if len(query) == 0 or len(self) == 0:
            return np.zeros(len(query), dtype=np.int64), np.zeros(len(query), dtype=bool)
        if (query.dtype.kind in "iub") != (self.sorted_ids.dtype.kind == "i"):
            # e.g. integer queries against string ids ("12" == 12 would be surprising, but ids read
            # from a CSV may be strings of digits)
            query = query.astype(str)
            sorted_ids, internal = self._as_text()
        else:
            query = query.astype(self.sorted_ids.dtype)
            sorted_ids, internal = self.sorted_ids, self.order
        where = np.minimum(np.searchsorted(sorted_ids, query), len(sorted_ids) - 1)  # (n,)
        return internal[where].astype(np.int64), sorted_ids[where] == query

    def _as_text(self) -> tuple[np.ndarray, np.ndarray]:
        """The ids as text, sorted, and their internal ids: sorted on the first mixed-type lookup, then kept."""
        if self._text is None:
            text = self.sorted_ids.astype(str)  # (n,)
            order = np.argsort(text, kind="stable")
            self._text = text[order], self.order[order]
        return self._text

    def to_original(self, internal: np.ndarray) -> np.ndarray:
        """Original ids of internal ids, any shape."""
        return self.ids[np.asarray(internal)]


class ItemVocabulary(IdMap):
    """Two-way map between original item ids and internal ids ``1..num_items`` (0 = padding, unknown).

    Args:
        item_ids: ``(num_items + 1,)`` original ids, internal id -> original id; entry 0 (padding)
            is a placeholder.
    """

    def __init__(self, item_ids: Sequence) -> None:
        super().__init__(item_ids, first=1)
        if len(self.ids) < 2:
            raise ValueError(f"an item vocabulary needs at least one item after the padding entry, got "
                             f"{len(self.ids)} entries")

    @property
    def item_ids(self) -> np.ndarray:
        """``(I + 1,)`` original ids, internal id -> original id."""
        return self.ids

    @property
    def num_items(self) -> int:
        return len(self)

    def to_list(self) -> list:
        """Plain Python ints/strings, safe for ``weights_only`` checkpoints and JSON."""
        return self.ids.tolist()

    def to_internal(self, ids: Sequence) -> np.ndarray:
        """Internal ids of original ids; ``0`` where an id is unknown: ``(n,) -> (n,)`` int64."""
        internal, found = self.lookup(ids)
        return np.where(found, internal, 0).astype(np.int64)


def _not_utf8(path: str, error: UnicodeDecodeError, option: str = "--data.predict_users",
              column: str = "user") -> DataError:
    """The error for an id list that is not UTF-8 text: the line and the byte (only on this error path)."""
    with open(path, "rb") as handle:
        data = handle.read().removeprefix(codecs.BOM_UTF8)  # as the reader decoded it (utf-8-sig)
    try:
        data.decode("utf-8")
        line, byte = None, error.object[error.start]
    except UnicodeDecodeError as found:
        line, byte = data[: found.start].count(b"\n") + 1, data[found.start]
    name = os.path.basename(path)
    where = "" if line is None else f", line {line}"
    return DataError(f"{option} {path!r}{where}: byte 0x{byte:02x} is not valid UTF-8 (the file is "
                     f"probably Latin-1, Windows-1252 or another 8-bit encoding); expected UTF-8 text, one {column} id "
                     f"per line. Convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 {name} > utf8-{name}`")


def read_user_list(path: str, user_ids: np.ndarray, filtered_users: dict[str, list] | None = None) -> np.ndarray:
    """User rows of the original user ids listed in a file, in sorted row order, each once.

    Args:
        path: a text file with one original user id per line, or a Parquet / JSON-lines file with
            a ``user`` column.
        user_ids: ``(U,)`` original user ids of the data, row -> id (sorted, as built by
            :func:`~sasrec_lightning.preprocessing.build_sequences`).
        filtered_users: ``{option: original ids of the users it filtered out}`` (preprocessing's
            ``info["filtered_users"]``), so a skipped id is reported as filtered out, not unknown.

    Returns:
        ``(N,)`` int64 user rows. Ids not in the data are skipped with a warning.
    """
    given, _, rows, found = _read_id_list(path, IdMap(user_ids), "--data.predict_users", "user")
    if not found.all():
        missing = given[~found][:5].tolist()
        reasons = []
        for option, ids in (filtered_users or {}).items():
            dropped = np.intersect1d(given[~found], np.asarray(ids).astype(str))  # (D,)
            if len(dropped):
                reasons.append(f"{len(dropped)} filtered out by {option} (e.g. {dropped[:3].tolist()})")
        why = f"; {', '.join(reasons)}" if reasons else ""
        log.warning("data.predict_users %s: %d id(s) not in the data were skipped (first: %s)%s",
                    path, int((~found).sum()), missing, why)
    return np.unique(rows[found]).astype(np.int64)


def read_item_list(path: str, item_ids: np.ndarray, option: str = "--data.holdout.cold_item_list") -> np.ndarray:
    """Internal ids of the original item ids listed in a file, sorted, each once (read as :func:`read_user_list`).

    Args:
        path: a text file with one original item id per line, or a Parquet / JSON-lines file with
            an ``item`` column.
        item_ids: ``(I + 1,)`` original item ids, internal id -> original id (index 0 unused).
        option: the option that named the file, for the messages.

    Returns:
        ``(N,)`` int64 internal item ids in ``1..I``.

    Raises:
        DataError: the file cannot be read, or an id is not an item of the data (naming its line).
    """
    given, lines, items, found = _read_id_list(path, ItemVocabulary(item_ids), option, "item")
    if not found.all():
        where = "row" if lines is None else "line"
        first = int(np.flatnonzero(~found)[0])
        number = first + 1 if lines is None else int(lines[first])
        raise DataError(f"{option} {path!r}, {where} {number}: item {str(given[first])!r} is not an item of the data "
                        f"({int((~found).sum())} of the {len(given)} listed ids are not: "
                        f"{given[~found][:5].tolist()}); expected original item ids of the interactions (an item "
                        "the preprocessing filters removed is not in the data either)")
    return np.unique(items).astype(np.int64)


def _read_id_list(path: str, ids: IdMap, option: str, column: str
                  ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """The ids a list file names, looked up: ``(given (N,) as text, line numbers (N,), internal (N,), found (N,))``.

    ``line numbers`` are 1-based lines of a text file (blank lines are skipped, not renumbered); ``None``
    for Parquet / JSON lines, whose ids are numbered by row.
    """
    if not os.path.isfile(path):
        raise DataError(f"{option} {path!r} does not exist; expected a file with one {column} id "
                        f"per line (or Parquet / JSON lines with {_an(column)} '{column}' column)")
    suffix = Path(path).suffix.lower()
    if suffix not in (".parquet", ".pq"):
        with open(path, "rb") as handle:
            head = handle.read(4)
        other = other_unicode_error(path, head, f"UTF-8 text: one {column} id per line (or JSON lines with "
                                    f"{_an(column)} '{column}' key)", label=f"{option} {path!r}")
        if other is not None:
            raise other
    line_numbers = None
    if suffix in (".parquet", ".pq", ".jsonl", ".ndjson", ".json"):
        kind = "Parquet" if suffix in (".parquet", ".pq") else "JSON lines"
        try:
            table = pq.read_table(path) if kind == "Parquet" else pyarrow.json.read_json(path)
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"{option} {path!r} is not a readable {kind} file ({error}); expected {_an(column)} "
                            f"'{column}' column (or a text file with one {column} id per line)") from error
        if column not in table.column_names:
            raise DataError(f"{option} {path!r}: no '{column}' column; the columns are {table.column_names}")
        wanted = table.column(column).to_numpy(zero_copy_only=False)
    else:
        try:  # a UTF-8 byte-order mark (Windows Notepad) is not part of the first id
            with open(path, encoding=TEXT_ENCODING) as handle:
                lines = [line.strip() for line in handle]
        except UnicodeDecodeError as error:
            raise _not_utf8(path, error, option, column) from None
        line_numbers = np.flatnonzero([bool(line) for line in lines]) + 1  # (N,)
        wanted = np.array([line for line in lines if line])
    wanted = np.asarray(wanted)
    given = wanted.astype(str)  # (N,) as written, for the messages
    known = np.ones(len(wanted), dtype=bool)  # (N,)
    if np.asarray(ids.ids).dtype.kind in "iu":  # ids written as text: parse the ones that are integers
        known = np.char.isdigit(np.char.lstrip(given, "-"))  # (N,) ids that can be integers at all
        wanted = np.zeros(len(given), dtype=np.int64)
        wanted[known] = given[known].astype(np.int64)
    internal, found = ids.lookup(wanted)  # (N,), (N,)
    return given, line_numbers, internal, found & known


def _an(word: str) -> str:
    """The article of ``word`` in the messages: "a 'user' column", "an 'item' column"."""
    return "an" if word[:1] in "aeiou" else "a"
