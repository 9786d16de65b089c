"""From an interaction table to chronological per-user sequences (CSR arrays) and a split.

Everything here is column-wise numpy on the Arrow columns: no per-user Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

__all__ = ["SequenceData", "build_sequences", "dataset_statistics"]


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


def _factorize(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique values and the index of each value in them."""
    uniques, codes = np.unique(values, return_inverse=True)
    return uniques, codes.reshape(-1).astype(np.int64)


def _column(table: pa.Table, name: str) -> np.ndarray:
    column = table.column(name)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return column.to_numpy(zero_copy_only=False)


def build_sequences(
    table: pa.Table,
    user_column: str = "user",
    item_column: str = "item",
    timestamp_column: str | None = None,
) -> SequenceData:
    """Group a table of interactions into chronological per-user sequences.

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
    users = _column(table, user_column)
    items = _column(table, item_column)
    user_ids, user_codes = _factorize(users)
    item_ids, item_codes = _factorize(items)
    item_codes += 1
    timestamps = None
    if timestamp_column is not None:
        timestamps = _column(table, timestamp_column).astype(np.int64)
        order = np.lexsort((timestamps, user_codes))  # stable: ties keep file order
    else:
        order = np.argsort(user_codes, kind="stable")
    counts = np.bincount(user_codes, minlength=len(user_ids))
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    item_vocab = np.concatenate([item_ids[:1], item_ids])  # index 0 (padding) is a placeholder
    return SequenceData(
        items=item_codes[order],
        offsets=offsets,
        user_ids=user_ids,
        item_ids=item_vocab,
        timestamps=None if timestamps is None else timestamps[order],
    )


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
