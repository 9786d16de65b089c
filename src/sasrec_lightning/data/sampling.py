"""Vectorized negative sampling: uniform item ids that a user never interacted with.

Membership is tested against one sorted array of ``user * (num_items + 1) + item`` keys with
``np.searchsorted``, so sampling for a whole batch (or every user at once) is a handful of array
operations and rejected draws are simply drawn again.
"""

from __future__ import annotations

import numpy as np

from .csr import csr_gather, item_counts

__all__ = ["InteractionIndex", "sample_negatives", "item_counts"]  # item_counts: re-exported from csr.py


class InteractionIndex:
    """Sorted ``(user, item)`` keys for O(log n) vectorized membership tests.

    Args:
        users: ``(n,)`` user row index of every interaction.
        items: ``(n,)`` item id of every interaction (1..num_items).
        num_items: number of items.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, num_items: int) -> None:
        self.num_items = int(num_items)
        keys = np.sort(users.astype(np.int64) * (self.num_items + 1) + items.astype(np.int64))  # (n,)
        # Sort + neighbour compare: numpy 2's hash-based np.unique is ~5x slower on millions of keys.
        self.keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys  # (n',)
        user_of_key = self.keys // (self.num_items + 1)
        self.items_per_user = np.bincount(user_of_key) if len(user_of_key) else np.zeros(0, np.int64)

    @classmethod
    def from_csr(cls, items: np.ndarray, starts: np.ndarray, ends: np.ndarray, num_items: int) -> InteractionIndex:
        """Index of ``items[starts[u]:ends[u]]`` for every user row ``u``."""
        return cls(*csr_gather(items, starts, ends), num_items)

    def seen_counts(self, users: np.ndarray) -> np.ndarray:
        """``(B,)`` distinct items of each user row (0 for rows past the last one with interactions)."""
        users = np.asarray(users, dtype=np.int64)
        counts = np.zeros(users.shape, np.int64)  # (B,)
        inside = users < len(self.items_per_user)  # the bincount ends at the last row with a key
        counts[inside] = self.items_per_user[users[inside]]
        return counts

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each ``(users[i], items[i])`` pair was seen; inputs broadcast together."""
        keys = users.astype(np.int64) * (self.num_items + 1) + items
        where = np.searchsorted(self.keys, keys)
        where = np.minimum(where, len(self.keys) - 1)
        return self.keys[where] == keys if len(self.keys) else np.zeros(keys.shape, bool)


def sample_negatives(
    index: InteractionIndex,
    users: np.ndarray,
    shape: tuple[int, ...],
    rng: np.random.Generator,
    max_rounds: int = 1000,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Draw item ids from the items each user never interacted with, uniformly or by popularity.

    Args:
        index: the interactions that must not be drawn.
        users: ``(B,)`` user rows.
        shape: trailing shape per user, e.g. ``(L,)`` or ``(L, k)`` or ``(100,)``.
        rng: numpy generator (seeded by the caller for reproducibility).
        max_rounds: give up after this many rejection rounds.
        probabilities: optional ``(num_items + 1,)`` sampling weights of every item id (row 0
            ignored), e.g. item counts for popularity-proportional negatives; uniform if omitted.
            Rejection keeps the draw proportional to the weights among the user's unseen items.

    Returns:
        ``(B, *shape)`` int64 item ids in ``1..num_items``.
    """
    users = np.asarray(users, dtype=np.int64)
    seen = index.seen_counts(users)  # (B,)
    if np.any(seen >= index.num_items):
        full = users[seen >= index.num_items]
        raise ValueError(
            f"user rows {full[:5].tolist()} interacted with all {index.num_items} items, so no negative "
            "item can be sampled for them; drop such users or add items"
        )
    user_grid = np.broadcast_to(users.reshape((-1,) + (1,) * len(shape)), (len(users), *shape))
    if probabilities is None:
        def draw(size):
            return rng.integers(1, index.num_items + 1, size=size, dtype=np.int64)
    else:
        weights = np.asarray(probabilities, dtype=np.float64).copy()
        if weights.shape != (index.num_items + 1,) or np.any(weights < 0):
            raise ValueError(
                f"probabilities must be {index.num_items + 1} non-negative weights (one per item id), "
                f"got shape {weights.shape}"
            )
        weights[0] = 0.0
        cdf = np.cumsum(weights) / weights.sum()  # (I + 1,)

        def draw(size):
            return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), index.num_items).astype(np.int64)
    negatives = draw(user_grid.shape)
    for _ in range(max_rounds):
        clash = index.contains(user_grid, negatives)
        count = int(clash.sum())
        if count == 0:
            return negatives
        negatives[clash] = draw(count)
    raise RuntimeError(f"negative sampling did not converge after {max_rounds} rounds")
