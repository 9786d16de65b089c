"""From an interaction table to chronological per-user sequences (CSR arrays) and a split.

Everything here is column-wise numpy on the Arrow columns: no per-user Python loop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import DataError

__all__ = ["SequenceData", "PreprocessOptions", "preprocess", "build_sequences", "dataset_statistics",
           "format_statistics", "format_filters"]


@dataclass
class SequenceData:
    """Every user's chronological item sequence in CSR form, with the id maps.

    Attributes:
        items: ``(n,)`` int64 internal item ids ``1..num_items``, users back to back, oldest first.
        offsets: ``(num_users + 1,)`` int64; user ``u`` owns ``items[offsets[u]:offsets[u + 1]]``.
        user_ids: ``(num_users,)`` original user ids, row ``u`` -> original id.
        item_ids: ``(num_items + 1,)`` original item ids, internal id -> original (index 0 unused).
        timestamps: ``(n,)`` int64 timestamps aligned with ``items`` or ``None``.
    """

    items: np.ndarray
    offsets: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, user_row: int) -> np.ndarray:
        """One user's items (for inspection and tests; hot paths use the arrays)."""
        return self.items[self.offsets[user_row] : self.offsets[user_row + 1]]


@dataclass(frozen=True)
class PreprocessOptions:
    """The preprocessing recipe; every field is part of the processed-data cache key.

    Attributes:
        min_user_interactions: drop users with fewer interactions (paper: 5; 0 keeps all).
        min_item_interactions: drop items with fewer interactions (paper: 5; 0 keeps all).
        filter_mode: ``one_pass`` counts once on the raw log and drops the rows of rare users and
            items (the SASRec preprocessing script; survivors can fall below the thresholds), or
            ``k_core`` repeats until every user and item meets them (a fixpoint).
        min_rating: keep only interactions with ``rating >= min_rating`` (needs a rating column).
        deduplicate: keep only the earliest of repeated (user, item) interactions.
    """

    min_user_interactions: int = 5
    min_item_interactions: int = 5
    filter_mode: str = "one_pass"
    min_rating: float | None = None
    deduplicate: bool = False

    def __post_init__(self) -> None:
        if self.filter_mode not in ("one_pass", "k_core"):
            raise ValueError(f"filter_mode must be 'one_pass' or 'k_core', got {self.filter_mode!r}")
        if self.min_user_interactions < 0 or self.min_item_interactions < 0:
            raise ValueError("min_user_interactions and min_item_interactions must be >= 0, got "
                             f"{self.min_user_interactions} and {self.min_item_interactions}")


def _encode(values: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Sorted distinct values and each row's index in them (one hash pass, then a sort of the distinct values)."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()  # one dictionary (unifying per-chunk dictionaries is far slower)
    encoded = pc.dictionary_encode(values)
    order = pc.sort_indices(encoded.dictionary).to_numpy()  # (K,)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return encoded.dictionary.take(pa.array(order)), rank[encoded.indices.to_numpy()]


def _column(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.to_numpy()


def _filter_counts(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int,
                   options: PreprocessOptions) -> tuple[np.ndarray, int]:
    """Rows kept by the user/item thresholds, and the number of passes it took."""
    keep = np.ones(len(users), dtype=bool)
    passes = 0
    while True:
        passes += 1
        user_counts = np.bincount(users[keep], minlength=num_users)  # (U,)
        item_counts = np.bincount(items[keep], minlength=num_items)  # (I,)
        new_keep = keep & (user_counts[users] >= options.min_user_interactions) & (
            item_counts[items] >= options.min_item_interactions
        )
        changed = bool((new_keep != keep).any())
        keep = new_keep
        if options.filter_mode == "one_pass" or not changed:
            return keep, passes


def _compact(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the codes that occur to ``0..K-1`` keeping their order; returns (new codes, old code of each)."""
    present = np.bincount(codes, minlength=size) > 0  # (size,)
    new_of_old = np.cumsum(present) - 1
    return new_of_old[codes], np.flatnonzero(present)


def _counts(users: np.ndarray, items: np.ndarray) -> dict[str, int]:
    return {"actions": len(users), "users": int(np.count_nonzero(np.bincount(users))),
            "items": int(np.count_nonzero(np.bincount(items)))}


def _chronological_order(users: np.ndarray, timestamps: np.ndarray | None, num_users: int) -> np.ndarray:
    """Row order by (user, timestamp), ties keeping file order (stable)."""
    if timestamps is None:
        return np.argsort(users, kind="stable")
    if len(timestamps) == 0:
        return np.zeros(0, dtype=np.int64)
    low = int(timestamps.min())
    span = int(timestamps.max()) - low + 1
    if span * max(num_users, 1) < 2**62:  # one int64 key sorts faster than lexsort's two passes
        return np.argsort(users * span + (timestamps - low), kind="stable")
    return np.lexsort((timestamps, users))


def preprocess(table: pa.Table, options: PreprocessOptions | None = None, source: str = "the data",
               timestamp_column: str | None = "timestamp") -> SequenceData:
    """The paper's recipe: filter, de-duplicate, order each user's actions in time, renumber ids.

    Steps (all column-wise numpy/Arrow, no per-user Python): rating threshold; earliest-first
    de-duplication of (user, item); user/item thresholds (one pass or k-core); a stable sort by
    (user, timestamp), ties keeping file order; users renumbered to rows ``0..U-1`` and items to
    ``1..I`` in sorted order of their original ids (0 stays padding), so a file whose ids are already
    ``1..N`` keeps them.

    Args:
        table: canonical interactions (``user``, ``item``, optional ``timestamp``/``rating``).
        options: the recipe; ``PreprocessOptions()`` (the paper's) when ``None``.
        source: name of the source, for error messages.
        timestamp_column: order by this column when the table has it; otherwise file order.

    Returns:
        The sequences and id maps; ``info`` holds the counts before/after filtering.

    Raises:
        DataError: nothing is left after filtering, or ``min_rating`` without a rating column.
    """
    options = options or PreprocessOptions()
    num_rows = table.num_rows
    removed = []  # what each filter removed, for the data summary (see format_filters)
    table = _rating_filter(table, options, source, removed)
    user_vocab, users = _encode(table.column("user"))  # (n,), (n,)
    item_vocab, items = _encode(table.column("item"))
    raw = {**_counts(users, items), "rows_read": num_rows}
    timestamps = None
    if timestamp_column is not None and timestamp_column in table.column_names:
        timestamps = _column(table, timestamp_column).astype(np.int64, copy=False)
    order = _chronological_order(users, timestamps, len(user_vocab))
    users, items = users[order], items[order]
    timestamps = None if timestamps is None else timestamps[order]
    keep = _first_occurrences(users, items, len(item_vocab), removed) if options.deduplicate else \
        np.ones(len(users), dtype=bool)
    passes, filtered_users = _threshold_filter(users, items, keep, user_vocab, len(item_vocab), options, removed)
    if not keep.any():
        raise _nothing_left(source, options, raw, users, items, len(user_vocab), len(item_vocab))
    if not keep.all():
        users, items = users[keep], items[keep]
        timestamps = None if timestamps is None else timestamps[keep]
    data = _renumbered(users, items, timestamps, user_vocab, item_vocab)
    data.info = {"raw": raw, "filter_passes": passes, "options": asdict(options), "removed": removed,
                 "filtered_users": filtered_users}
    return data


def _rating_filter(table: pa.Table, options: PreprocessOptions, source: str, removed: list[dict]) -> pa.Table:
    """The rows rated at least ``min_rating`` (all rows without the option); appends what it removed."""
    if options.min_rating is None:
        return table
    if "rating" not in table.column_names:
        raise DataError(f"{source}: min_rating={options.min_rating} needs a rating column; the columns are "
                        f"{table.column_names}. Set --data.source.rating_column or drop "
                        "--data.preprocessing.min_rating")
    keep = pc.fill_null(pc.greater_equal(table.column("rating"), options.min_rating), False)
    before = [pc.count_distinct(table.column(name)).as_py() for name in ("user", "item")]
    filtered = table.filter(keep)
    after = [pc.count_distinct(filtered.column(name)).as_py() for name in ("user", "item")]
    removed.append({"option": f"min_rating={options.min_rating}", "users": before[0] - after[0],
                    "items": before[1] - after[1], "interactions": table.num_rows - filtered.num_rows})
    return filtered


def _first_occurrences(users: np.ndarray, items: np.ndarray, num_items: int, removed: list[dict]) -> np.ndarray:
    """``(n,)`` mask of the earliest row of each (user, item) pair (rows in time order); appends what it removed."""
    _, first = np.unique(users * num_items + items, return_index=True)  # keys chronological within each user
    keep = np.zeros(len(users), dtype=bool)
    keep[first] = True
    removed.append({"option": "deduplicate=True", "users": 0, "items": 0, "interactions": int(len(keep) - len(first))})
    return keep


def _threshold_filter(users: np.ndarray, items: np.ndarray, keep: np.ndarray, user_vocab: pa.Array, num_items: int,
                      options: PreprocessOptions, removed: list[dict]) -> tuple[int, dict[str, list]]:
    """Apply the user/item thresholds to the rows still in ``keep`` (cleared in place where a row goes).

    Returns:
        The number of filter passes and ``{option: original ids of the users it removed}``; what each
        threshold removed is appended to ``removed``.
    """
    if options.min_user_interactions <= 0 and options.min_item_interactions <= 0:
        return 0, {}
    kept_rows = np.flatnonzero(keep)  # (m,)
    filtered, passes = _filter_counts(users[kept_rows], items[kept_rows], len(user_vocab), num_items, options)
    keep[kept_rows[~filtered]] = False
    removed_by, filtered_users = _threshold_report(users[kept_rows], items[kept_rows], filtered, user_vocab,
                                                   num_items, options)
    removed += removed_by
    return passes, filtered_users


def _nothing_left(source: str, options: PreprocessOptions, raw: dict, users: np.ndarray, items: np.ndarray,
                  num_users: int, num_items: int) -> DataError:
    """The error for a recipe that filtered out every interaction, with the counts before filtering."""
    user_counts = np.bincount(users, minlength=num_users)
    item_counts = np.bincount(items, minlength=num_items)
    return DataError(
        f"{source}: every interaction was filtered out (min_user_interactions={options.min_user_interactions}, "
        f"min_item_interactions={options.min_item_interactions}, filter_mode={options.filter_mode!r}, "
        f"min_rating={options.min_rating}, deduplicate={options.deduplicate}); before filtering there were "
        f"{raw['actions']} interactions of {raw['users']} users (most active: {user_counts.max(initial=0)}) "
        f"on {raw['items']} items (most popular: {item_counts.max(initial=0)}). Lower "
        "--data.preprocessing.min_user_interactions / --data.preprocessing.min_item_interactions"
    )


def _renumbered(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None, user_vocab: pa.Array,
                item_vocab: pa.Array) -> SequenceData:
    """The kept rows (grouped by user, in time order) as CSR sequences: users ``0..U-1``, items ``1..I``."""
    users, user_rows = _compact(users, len(user_vocab))
    items, item_rows = _compact(items, len(item_vocab))
    items += 1  # 0 is padding
    offsets = np.zeros(len(user_rows) + 1, dtype=np.int64)  # (U + 1,)
    np.cumsum(np.bincount(users, minlength=len(user_rows)), out=offsets[1:])
    item_ids = item_vocab.take(pa.array(item_rows)).to_numpy(zero_copy_only=False)
    return SequenceData(
        items=items,
        offsets=offsets,
        user_ids=user_vocab.take(pa.array(user_rows)).to_numpy(zero_copy_only=False),
        item_ids=np.concatenate([item_ids[:1], item_ids]),  # index 0 (padding) is a placeholder
        timestamps=timestamps,
    )


# Filtered-out user ids kept for messages (an unknown --data.predict_users id): bounded, since the raw
# Steam log has millions of users below the threshold; beyond this only the counts are kept.
MAX_FILTERED_USER_IDS = 100_000


def _threshold_report(users: np.ndarray, items: np.ndarray, kept: np.ndarray, user_vocab: pa.Array, num_items: int,
                      options: PreprocessOptions) -> tuple[list[dict], dict[str, list]]:
    """What the user/item thresholds removed, each row, user and item credited to the option that removed it.

    A row is credited to ``min_user_interactions`` when its user was below that threshold on the counts
    before filtering, else to ``min_item_interactions`` when its item was; what ``k_core``'s later
    passes removed besides is credited to ``filter_mode=k_core``. A removed user below the user
    threshold is credited to it, any other removed user to the item threshold (all its items were
    rare); a removed item below the item threshold to it, any other to the user threshold.

    Args:
        users: ``(n,)`` user codes of the rows the thresholds saw.
        items: ``(n,)`` item codes of those rows.
        kept: ``(n,)`` whether each row survived.
        user_vocab: user code -> original id.
        num_items: number of item codes.
        options: the recipe.

    Returns:
        One ``{"option", "users", "items", "interactions"}`` entry per option that removed something,
        and ``{option: [original ids of the users it removed]}`` (omitted above ``MAX_FILTERED_USER_IDS``).
    """
    user_counts = np.bincount(users, minlength=len(user_vocab))  # (U,)
    item_counts = np.bincount(items, minlength=num_items)  # (I,)
    user_low = user_counts < options.min_user_interactions  # (U,)
    item_low = item_counts < options.min_item_interactions  # (I,)
    users_left = np.bincount(users[kept], minlength=len(user_vocab)) > 0  # (U,)
    items_left = np.bincount(items[kept], minlength=num_items) > 0  # (I,)
    gone_users, gone_items = (user_counts > 0) & ~users_left, (item_counts > 0) & ~items_left  # (U,), (I,)
    by_user = user_low[users]  # (n,) row credited to min_user_interactions
    by_item = ~by_user & item_low[items]  # (n,)
    later = ~kept & ~by_user & ~by_item  # (n,) k_core cascades
    reasons = [
        (f"min_user_interactions={options.min_user_interactions}", by_user, gone_users & user_low,
         gone_items & ~item_low),
        (f"min_item_interactions={options.min_item_interactions}", by_item, gone_users & ~user_low,
         gone_items & item_low),
    ]
    report, ids = [], {}
    for option, rows, user_mask, item_mask in reasons:
        if rows.any():
            report.append({"option": option, "users": int(user_mask.sum()), "items": int(item_mask.sum()),
                           "interactions": int(rows.sum())})
            if user_mask.sum() <= MAX_FILTERED_USER_IDS:
                ids[option] = user_vocab.take(pa.array(np.flatnonzero(user_mask))).to_pylist()
    if later.any():
        report.append({"option": "filter_mode=k_core (later passes)", "users": 0, "items": 0,
                       "interactions": int(later.sum())})
    return report, ids


def format_filters(info: dict) -> str:
    """One line per filter: what it removed and the option that controls it (``""`` when nothing was removed)."""
    lines = [f"  {entry['option']}: removed {entry['users']:,} users, {entry['items']:,} items, "
             f"{entry['interactions']:,} interactions" for entry in info.get("removed", []) if entry["interactions"]]
    if not lines:
        return ""
    read = info.get("raw", {}).get("rows_read", 0)
    return f"filters ({read:,} interactions read):\n" + "\n".join(lines)


def build_sequences(
    table: pa.Table,
    user_column: str = "user",
    item_column: str = "item",
    timestamp_column: str | None = None,
) -> SequenceData:
    """Group a table of interactions into chronological per-user sequences, without filtering.

    Rows are ordered by user, then timestamp (when a timestamp column is given), ties keeping file
    order (a stable sort). Users and items are renumbered in sorted order of their original ids:
    users to rows ``0..U-1``, items to ``1..I`` (0 stays padding), so a file whose item ids are
    already ``1..I`` keeps them.

    Args:
        table: Arrow table with at least the user and item columns.
        user_column: name of the user column.
        item_column: name of the item column.
        timestamp_column: name of the timestamp column, or ``None`` to keep file order.

    Returns:
        The sequences and id maps.
    """
    columns = {"user": table.column(user_column), "item": table.column(item_column)}
    if timestamp_column is not None:
        columns["timestamp"] = table.column(timestamp_column)
    options = PreprocessOptions(min_user_interactions=0, min_item_interactions=0)
    return preprocess(pa.table(columns), options, timestamp_column="timestamp" if timestamp_column else None)


def dataset_statistics(data: SequenceData) -> dict[str, float]:
    """The paper's Table II columns: users, items, actions and their averages."""
    actions = int(len(data.items))
    return {
        "users": data.num_users,
        "items": data.num_items,
        "actions": actions,
        "avg_actions_per_user": actions / max(data.num_users, 1),
        "avg_actions_per_item": actions / max(data.num_items, 1),
    }


def format_statistics(statistics: dict[str, float], name: str = "dataset") -> str:
    """Statistics as a row of the paper's Table II (a small Markdown table)."""
    header = "| dataset | #users | #items | avg. actions/user | avg. actions/item | #actions |"
    return (
        f"{header}\n|---|---:|---:|---:|---:|---:|\n"
        f"| {name} | {statistics['users']:,} | {statistics['items']:,} | {statistics['avg_actions_per_user']:.2f} | "
        f"{statistics['avg_actions_per_item']:.2f} | {statistics['actions']:,} |"
    )
