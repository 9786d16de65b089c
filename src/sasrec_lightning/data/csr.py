"""Gathers from the CSR layout of :class:`~sasrec_lightning.preprocessing.SequenceData`.

Every user's items sit back to back in one flat ``items`` array; a split or a batch selects
``items[starts[r]:ends[r]]`` for each of its rows ``r``. These functions do that for all rows at
once with a few whole-array numpy operations (no per-row Python loop): flat, with each item's
row (:func:`csr_gather`), as counts (:func:`item_counts`) or as a left-padded matrix
(:func:`left_padded`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["segment_positions", "csr_gather", "item_counts", "left_padded"]


def segment_positions(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Indices of ``items[starts[r]:ends[r]]`` for every row ``r``, rows back to back: ``(S,)``.

    Args:
        starts: ``(B,)`` first index of each row's range.
        ends: ``(B,)`` one past the last index; a range with ``ends <= starts`` is empty.

    Returns:
        ``(S,)`` int64 with ``S = sum(max(ends - starts, 0))``.
    """
    return _positions(starts, np.maximum(ends - starts, 0))


def csr_gather(items: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every row's items, flat, with the row each one belongs to.

    Returns:
        ``(rows (S,), values (S,))``: ``values`` is ``items[starts[r]:ends[r]]`` for ``r = 0, 1, ...``
        back to back and ``rows`` repeats each ``r`` that many times.
    """
    lengths = np.maximum(ends - starts, 0)  # (B,)
    return np.repeat(np.arange(len(starts)), lengths), items[_positions(starts, lengths)]


def _positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    # Output slot i of row r is its (i - first slot of r)-th item: one repeat of the per-row shift.
    shift = starts + lengths - np.cumsum(lengths)  # (B,) start of r minus its first output slot
    return np.arange(lengths.sum()) + np.repeat(shift, lengths)  # (S,)


def item_counts(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, num_items: int) -> np.ndarray:
    """How often every item id occurs in ``items[starts[u]:ends[u]]`` over all rows: ``(num_items + 1,)``."""
    return np.bincount(items[segment_positions(starts, ends)], minlength=num_items + 1).astype(np.int64)


def left_padded(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """The last ``width`` items of ``items[starts[b]:ends[b]]`` for each row, left-padded with 0.

    Args:
        items: ``(n,)`` flat item array.
        starts: ``(B,)`` first index of each row's range.
        ends: ``(B,)`` one past the last index of each row's range.
        width: output width.

    Returns:
        ``(B, width)`` int64.
    """
    index = ends[:, None] - width + np.arange(width)  # (B, W)
    valid = index >= starts[:, None]  # (B, W)
    return np.where(valid, items[np.maximum(index, 0)], 0)  # (B, W)
