"""A built-in synthetic interaction log with real sequential structure, generated from a seed.

Each user has persistent tastes (one or two item clusters); consecutive actions follow short-range
item-to-item transitions (every item has a few likely successors); item popularity is Zipf-skewed.
A model that reads the order of the sequence beats a most-popular ranking by a wide margin, so
the quickstart shows learning without any download.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["synthetic_interactions"]


def synthetic_interactions(
    num_users: int = 2000,
    num_items: int = 500,
    num_clusters: int = 20,
    min_length: int = 5,
    max_length: int = 40,
    transition_prob: float = 0.6,
    taste_prob: float = 0.3,
    successors: int = 3,
    seed: int = 0,
) -> pa.Table:
    """Generate a deterministic interaction log.

    At every step a user follows one of the current item's successors with ``transition_prob``,
    picks a popular item from one of their taste clusters with ``taste_prob``, and otherwise a
    globally popular item.

    Args:
        num_users: number of users.
        num_items: number of items (ids ``1..num_items``).
        num_clusters: number of taste clusters.
        min_length: shortest sequence.
        max_length: longest sequence.
        transition_prob: probability of following an item-to-item transition.
        taste_prob: probability of a taste-driven pick.
        successors: likely successors per item (within its cluster).
        seed: random seed; the same seed gives the same table.

    Returns:
        Arrow table with columns ``user``, ``item``, ``timestamp`` (int64).
    """
    if num_items < num_clusters or num_clusters < 1:
        raise ValueError(f"need num_items >= num_clusters >= 1, got {num_items} items, {num_clusters} clusters")
    rng = np.random.default_rng(seed)
    items = np.arange(1, num_items + 1)
    cluster_of = rng.integers(0, num_clusters, size=num_items)  # (I,)
    # Small catalogues can leave a cluster empty (its popularity would be 0/0): move one item of the
    # largest cluster into each empty one. No extra random draws, so other logs are unchanged.
    for c in np.setdiff1d(np.arange(num_clusters), cluster_of):
        cluster_of[np.flatnonzero(cluster_of == np.bincount(cluster_of).argmax())[0]] = c
    popularity = 1.0 / np.arange(1, num_items + 1) ** 0.8
    popularity = popularity[rng.permutation(num_items)]
    popularity /= popularity.sum()  # (I,)
    # Successors: popular items of the same cluster, drawn once per item.
    successor_table = np.empty((num_items, successors), dtype=np.int64)
    members = [items[cluster_of == c] for c in range(num_clusters)]
    member_pop = [popularity[m - 1] / popularity[m - 1].sum() for m in members]
    for c in range(num_clusters):  # one draw per cluster, not per user
        chosen = rng.choice(members[c], size=(len(members[c]), successors), p=member_pop[c])
        successor_table[members[c] - 1] = chosen

    def draw_from_cluster(clusters: np.ndarray) -> np.ndarray:
        out = np.empty(len(clusters), dtype=np.int64)
        for c in np.unique(clusters):
            where = clusters == c
            out[where] = rng.choice(members[c], size=int(where.sum()), p=member_pop[c])
        return out

    lengths = rng.integers(min_length, max_length + 1, size=num_users)  # (U,)
    tastes = rng.integers(0, num_clusters, size=(num_users, 2))  # (U, 2)
    sequence = np.zeros((num_users, max_length), dtype=np.int64)  # (U, T)
    current = draw_from_cluster(tastes[:, 0])
    sequence[:, 0] = current
    for step in range(1, max_length):  # vectorized over users
        choice = rng.random(num_users)
        follow = choice < transition_prob
        taste = (choice >= transition_prob) & (choice < transition_prob + taste_prob)
        nxt = rng.choice(items, size=num_users, p=popularity)
        nxt[follow] = successor_table[current[follow] - 1, rng.integers(0, successors, size=int(follow.sum()))]
        which = tastes[np.flatnonzero(taste), rng.integers(0, 2, size=int(taste.sum()))]
        nxt[taste] = draw_from_cluster(which)
        sequence[:, step] = nxt
        current = nxt
    keep = np.arange(max_length)[None, :] < lengths[:, None]  # (U, T)
    users = np.broadcast_to(np.arange(1, num_users + 1)[:, None], keep.shape)[keep]
    timestamps = np.broadcast_to(np.arange(max_length)[None, :], keep.shape)[keep] + 1_600_000_000
    return pa.table({"user": users.astype(np.int64), "item": sequence[keep], "timestamp": timestamps.astype(np.int64)})
