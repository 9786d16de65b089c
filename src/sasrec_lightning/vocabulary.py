"""The item vocabulary a trained model carries: original item ids and item popularity.

The model works on internal ids ``1..num_items`` (0 = padding). To answer in the dataset's own
ids, and to fall back to the most-popular items for an empty history, the module keeps

* ``item_ids``: a plain Python list, internal id -> original id (index 0 unused), saved in the
  checkpoint as primitives so ``torch.load(..., weights_only=True)`` can read it;
* ``popularity``: interaction counts per internal id (a buffer of the module, so it lives in the
  ``state_dict``).

Lookups are vectorized (``np.searchsorted`` over the sorted ids), no per-item dictionary.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["ItemVocabulary"]


def _as_array(ids: Sequence) -> np.ndarray:
    """Original ids as a numpy array: int64 for integer ids, unicode strings otherwise."""
    array = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if array.dtype.kind in "iub":
        return array.astype(np.int64)
    if array.dtype.kind in "US":
        return array.astype(str)
    return array.astype(str)  # mixed/object: compare as text


class ItemVocabulary:
    """Two-way map between original item ids and internal ids ``1..num_items``.

    Args:
        item_ids: ``(num_items + 1,)`` original ids, internal id -> original id; entry 0 (padding)
            is a placeholder.
    """

    def __init__(self, item_ids: Sequence) -> None:
        self.item_ids = _as_array(item_ids)  # (I + 1,)
        if len(self.item_ids) < 2:
            raise ValueError(f"an item vocabulary needs at least one item after the padding entry, got "
                             f"{len(self.item_ids)} entries")
        self.order = np.argsort(self.item_ids[1:], kind="stable") + 1  # (I,) internal ids sorted by original id
        self.sorted_ids = self.item_ids[self.order]  # (I,)

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    def to_list(self) -> list:
        """Plain Python ints/strings, safe for ``weights_only`` checkpoints and JSON."""
        return self.item_ids.tolist()

    def to_internal(self, ids: Sequence) -> np.ndarray:
        """Internal ids of original ids; ``0`` where an id is unknown: ``(n,) -> (n,)`` int64."""
        if len(ids) == 0:
            return np.zeros(0, dtype=np.int64)
        query = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
        if (query.dtype.kind in "iub") != (self.sorted_ids.dtype.kind == "i"):
            # e.g. integer queries against string ids: compare as text ("12" == 12 would be surprising,
            # but ids read from a CSV may be strings of digits).
            query = query.astype(str)
            sorted_ids = self.sorted_ids.astype(str)
            order = np.argsort(sorted_ids, kind="stable")
            sorted_ids, internal = sorted_ids[order], self.order[order]
        else:
            query = query.astype(self.sorted_ids.dtype)
            sorted_ids, internal = self.sorted_ids, self.order
        where = np.minimum(np.searchsorted(sorted_ids, query), len(sorted_ids) - 1)  # (n,)
        found = sorted_ids[where] == query  # (n,)
        return np.where(found, internal[where], 0).astype(np.int64)

    def to_original(self, internal: np.ndarray) -> np.ndarray:
        """Original ids of internal ids, any shape."""
        return self.item_ids[np.asarray(internal)]
