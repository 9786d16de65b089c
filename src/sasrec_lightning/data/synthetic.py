"""A built-in synthetic interaction log with real sequential structure, generated from a seed.

Each user has persistent tastes (one or two item clusters); consecutive actions follow short-range
item-to-item transitions (every item has a few likely successors); item popularity is Zipf-skewed.
A model that reads the order of the sequence beats a most-popular ranking by a wide margin, so
the quickstart shows learning without any download.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["synthetic_interactions", "synthetic_item_features"]


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


def synthetic_item_features(
    num_users: int = 2000,
    num_items: int = 500,
    num_categories: int = 20,
    tags_per_category: int = 3,
    min_length: int = 5,
    max_length: int = 40,
    transition_prob: float = 0.3,
    taste_prob: float = 0.5,
    successors: int = 3,
    late_share: float = 0.1,
    late_boost: float = 4.0,
    missing_price: float = 0.1,
    vector_size: int = 4,
    seed: int = 0,
) -> tuple[pa.Table, pa.Table]:
    """A synthetic interaction log whose behaviour follows item attributes, and the item table (issue 26).

    Every item has a category, 1-3 tags (mostly from its category's own ``tags_per_category``, one in
    four items also one random tag: noise), a price (log-normal, a ``missing_price`` share missing) and a
    small dense vector (its category's and first tag's centres plus noise, like a text embedding). What
    users do follows them: each user has a taste category and a favourite tag in it; at every step
    they follow one of the current item's successors with ``transition_prob`` (item-to-item structure
    only ids can learn), pick an item of their category with ``taste_prob``, weighted by its appeal and
    three times more when it has their tag, and otherwise any item by appeal. An item's appeal comes
    from its attributes: cheaper items and some tags are more popular.

    Time is global: each user's actions are spread over their own stretch of one year, and a
    ``late_share`` of the items is released late: nobody can pick them before the ``1 - late_share``
    quantile of all the actions' times, so ``--data.holdout.cold_items late_share`` makes exactly them cold
    (as long as each is picked at all). They are never successors of other items, so a model can only
    find them through their attributes. ``synthetic_interactions`` is a different generator (its random
    stream, and the quickstart's digits, do not depend on this one).

    Args:
        num_users: number of users.
        num_items: number of items (ids ``1..num_items``), the late ones included.
        num_categories: number of categories (the users' taste clusters).
        tags_per_category: tags of each category's own (tag vocabulary: ``num_categories * tags_per_category``).
        min_length: shortest sequence.
        max_length: longest sequence.
        transition_prob: probability of following an item-to-item transition.
        taste_prob: probability of a pick from the user's category.
        successors: likely successors per item (early items of its category).
        late_share: share of items released late (and of time they are available in).
        late_boost: a released late item's appeal is this many times its attributes' (new releases draw
            attention; nothing in the attributes says so).
        missing_price: share of items without a price.
        vector_size: length of the dense vector (0: no vector column).
        seed: random seed; the same seed gives the same tables.

    Returns:
        ``(interactions, items)``: ``user``, ``item``, ``timestamp`` (int64 seconds); ``item``, ``category``
        (string), ``tags`` (list of strings), ``price`` (float64, null when missing), ``embedding`` (list of
        ``vector_size`` float32, when ``vector_size`` > 0) and ``late`` (bool: released late; for reading the
        data, not a feature to train on).
    """
    if num_items < num_categories or num_categories < 1 or tags_per_category < 1:
        raise ValueError(f"need num_items >= num_categories >= 1 and tags_per_category >= 1, got {num_items} "
                         f"items, {num_categories} categories, {tags_per_category} tags per category")
    if not 0 <= late_share < 1 or not 0 <= missing_price <= 1:
        raise ValueError(f"need late_share in [0, 1) and missing_price in [0, 1], got {late_share}, {missing_price}")
    rng = np.random.default_rng(seed)
    items = np.arange(1, num_items + 1)  # (I,)
    category = np.concatenate([np.arange(num_categories), rng.integers(0, num_categories, num_items - num_categories)])
    category = category[rng.permutation(num_items)]  # (I,) every category has an item
    own = category * tags_per_category + rng.integers(0, tags_per_category, num_items)  # (I,) first tag
    second = np.where(rng.random(num_items) < 0.5,
                      category * tags_per_category + rng.integers(0, tags_per_category, num_items), -1)  # (I,)
    noise = np.where(rng.random(num_items) < 0.25, rng.integers(0, num_categories * tags_per_category, num_items), -1)
    price = np.exp(rng.normal(3.0, 0.6, num_items))  # (I,)
    tag_appeal = rng.normal(0.0, 0.5, num_categories * tags_per_category)  # (T,)
    appeal = np.exp(-0.8 * (np.log(price) - 3.0) / 0.6 + tag_appeal[own])  # (I,) cheap items, good tags
    late = np.zeros(num_items, dtype=bool)
    late[rng.choice(num_items, size=int(round(late_share * num_items)), replace=False)] = True  # (I,)

    # Successors: early items of the same category, by appeal (a late item is nobody's successor).
    successor_table = np.empty((num_items, successors), dtype=np.int64)
    for c in range(num_categories):  # one draw per category, not per user
        members = np.flatnonzero(category == c)
        early = members[~late[members]]
        pool = early if len(early) else members
        chance = appeal[pool] / appeal[pool].sum()
        successor_table[members] = rng.choice(pool, size=(len(members), successors), p=chance)

    # Each user's stretch of time: the sequence ends somewhere in the year and spans 10-60 % of its end.
    lengths = rng.integers(min_length, max_length + 1, size=num_users)  # (U,)
    ends = 1.0 - 0.6 * rng.random(num_users) ** 2  # (U,) more users active lately (a growing service)
    starts = ends * rng.uniform(0.4, 0.9, num_users)  # (U,)
    steps = np.arange(max_length)[None, :] / np.maximum(lengths - 1, 1)[:, None]  # (U, T)
    times = starts[:, None] + (ends - starts)[:, None] * np.minimum(steps, 1.0)  # (U, T) in [0, 1]
    keep = np.arange(max_length)[None, :] < lengths[:, None]  # (U, T)
    release = np.quantile(times[keep], 1 - late_share, method="higher") if late_share else np.inf

    tastes = rng.integers(0, num_categories, num_users)  # (U,)
    favourite = tastes * tags_per_category + rng.integers(0, tags_per_category, num_users)  # (U,)
    tag_of = np.stack([own, second, noise], axis=1)  # (I, 3), -1 = none
    sequence = np.zeros((num_users, max_length), dtype=np.int64)  # (U, T) item indices 0..I-1
    for step in range(max_length):  # vectorized over users
        released = times[:, step] >= release  # (U,) late items available to these users
        choice = rng.random(num_users)
        follow = (choice < transition_prob) & (step > 0)
        taste = ~follow & (choice < transition_prob + taste_prob)
        # Each user's weights over the items, (U, I): appeal, x3 with the user's tag, 0 for unreleased items.
        weights = np.broadcast_to(appeal, (num_users, num_items)).copy()
        weights *= np.where((tag_of[None, :, :] == favourite[:, None, None]).any(axis=2), 3.0, 1.0)
        weights[:, late] *= np.where(released, late_boost, 0.0)[:, None]  # unreleased: 0; new releases draw attention
        weights[taste[:, None] & (category[None, :] != tastes[:, None])] = 0.0  # taste picks: own category only
        cdf = np.cumsum(weights, axis=1)  # (U, I)
        picked = (cdf < rng.random(num_users)[:, None] * cdf[:, -1:]).sum(axis=1)  # (U,) inverse-CDF draw
        picked = np.minimum(picked, num_items - 1)
        if step > 0:
            nxt = successor_table[sequence[:, step - 1], rng.integers(0, successors, num_users)]  # (U,)
            picked = np.where(follow, nxt, picked)
        sequence[:, step] = picked

    users = np.broadcast_to(np.arange(1, num_users + 1)[:, None], keep.shape)[keep]
    timestamps = (1_600_000_000 + np.round(times * 365 * 86400)).astype(np.int64)[keep]
    interactions = pa.table({"user": users.astype(np.int64), "item": items[sequence[keep]].astype(np.int64),
                             "timestamp": timestamps})
    tag_names = np.array([f"t{t:03d}" for t in range(num_categories * tags_per_category)])
    tags = [tag_names[list(dict.fromkeys(t for t in row if t >= 0))].tolist() for row in tag_of]  # unique, in order
    has_price = rng.random(num_items) >= missing_price
    columns = {
        "item": items.astype(np.int64),
        "category": [f"c{c:02d}" for c in category],
        "tags": tags,
        "price": pa.array(np.round(price, 2), mask=~has_price),
    }
    if vector_size:
        centres = rng.normal(0.0, 1.0, (num_categories + num_categories * tags_per_category, vector_size))
        vectors = centres[category] + 0.5 * centres[num_categories + own] + rng.normal(0, 0.3, (num_items, vector_size))
        columns["embedding"] = pa.array(vectors.astype(np.float32).tolist(), type=pa.list_(pa.float32()))
    columns["late"] = late
    return interactions, pa.table(columns)
