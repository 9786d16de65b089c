"""The popularity baselines, evaluated with exactly the protocol, users and exclusions the model is.

- **most popular**: items ranked by their training interactions;
- **category popularity** (issue 26): items ranked by the training interactions of their category,
  then by their own, so the most popular category's items come first, most popular first, then the
  next category's. For an item with several categories (a multi-valued column) its category score is
  that of its most popular category; an item without a category is in one "unknown" group of its
  own, so with no category known at all the ranking is the most-popular one. It is not personalized
  and never looks at the target: a cold item (no training interaction) ranks right after the warm
  items of its own category, which is what a team without a model would do with a new item.

Both report the users whose target is warm and those whose target is cold apart (``<prefix>warm/...``,
``<prefix>cold/...``, as :class:`~sasrec_lightning.training.cold_start.WarmColdMetrics`) when the
batches mark the cold targets (``EvalBatches.target_cold``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.batches import EvalBatches
from ..data.csr import csr_gather
from ..data.features import FeatureColumn, ItemFeatures
from ..errors import OptionError
from ..model.metrics import RankingMetrics
from .cold_start import WarmColdMetrics

__all__ = ["most_popular_metrics", "category_popularity_metrics", "category_column", "category_scores"]


def most_popular_metrics(
    batches: EvalBatches, protocol: str = "sampled", exclude_seen: bool = True, ks: Sequence[int] = (10,),
    prefix: str = "", seed: int = 0, num_items: int | None = None,
) -> dict[str, float]:
    """HR/NDCG/MRR of ranking items by their training-split popularity.

    Popularity is ``batches.popularity``: training interactions per item
    (:func:`~sasrec_lightning.splits.training_popularity`, the data module's, computed once), so no
    validation or test item leaks in. Ties are broken by a fixed random order so the baseline is a
    strict ranking.

    Args:
        batches: the evaluation batches (``val`` or ``test``) the model is scored on.
        protocol: ``sampled`` (rank among the fixed candidates) or ``full`` (among all items).
        exclude_seen: under ``full``, skip items from the user's history (except the target).
        ks: cut-offs.
        prefix: prepended to metric names.
        seed: seed of the tie-breaking order.
        num_items: the model's catalogue when it is larger than the sequences' (the cold-start items an item
            table adds after them: no interaction, so popularity 0); empty: the sequences'.

    Returns:
        Metric name -> value (and the warm / cold ones when ``batches.target_cold``).
    """
    counts = _popularity(batches, num_items)  # (I + 1,)
    counts += np.random.default_rng(seed).random(len(counts)) * 0.5  # strict order, ties broken at random
    counts[0] = -np.inf
    return _metrics(batches, _ranks(batches, counts, protocol, exclude_seen), ks, prefix)


def category_column(features: ItemFeatures, name: str | None = None) -> FeatureColumn | None:
    """The column the category-popularity baseline ranks by: ``name``, or the first categorical / multi one.

    Returns:
        The column, or ``None`` when no name is given and the table has no categorical or multi column.

    Raises:
        OptionError: ``name`` is not a categorical or multi-valued column of the table.
    """
    columns = [column for column in features.columns if column.kind in ("categorical", "multi")]
    if name is None:
        return columns[0] if columns else None
    for column in columns:
        if column.name == name:
            return column
    raise OptionError(f"--model.evaluation.baseline_category {name!r}: expected a categorical or multi-valued column "
                      f"of the item features, one of {[column.name for column in columns]}")


def category_popularity_metrics(
    batches: EvalBatches, features: ItemFeatures, column: str | None = None, protocol: str = "sampled",
    exclude_seen: bool = True, ks: Sequence[int] = (10,), prefix: str = "", seed: int = 0,
    num_items: int | None = None,
) -> dict[str, float]:
    """HR/NDCG/MRR of ranking items by their category's training popularity, then by their own.

    A category's popularity is the training interactions (``batches.popularity``) of the items that
    have it; an item's score is that of its (most popular) category, its own popularity breaks ties
    inside a category, and a fixed random order the remaining ones (see the module docstring).

    Args:
        batches: the evaluation batches (``val`` or ``test``) the model is scored on.
        features: the item features, aligned with the batches' item ids.
        column: the categorical or multi-valued column; empty: the first one.
        protocol: ``sampled`` or ``full``.
        exclude_seen: under ``full``, skip items from the user's history (except the target).
        ks: cut-offs.
        prefix: prepended to metric names.
        seed: seed of the tie-breaking order.
        num_items: the model's catalogue (see :func:`most_popular_metrics`); empty: the item features'.

    Returns:
        Metric name -> value (and the warm / cold ones when ``batches.target_cold``).
    """
    chosen = category_column(features, column)
    if chosen is None:
        raise OptionError("the category-popularity baseline needs a categorical or multi-valued item feature column; "
                          f"the item features have {[c.name for c in features.columns]}")
    popularity = _popularity(batches, features.num_items if num_items is None else num_items)  # (I + 1,)
    if features.num_items != len(popularity) - 1:
        raise ValueError(f"the item features cover {features.num_items} items, the catalogue "
                         f"{len(popularity) - 1}; expected the same items")
    category = category_scores(features.values[chosen.name], popularity)  # (I + 1,)
    tie = np.random.default_rng(seed).random(len(popularity))  # (I + 1,)
    order = np.lexsort((-tie, -popularity, -category))  # best first: category, then own popularity, then random
    scores = np.empty(len(order), dtype=np.float64)
    scores[order] = -np.arange(len(order), dtype=np.float64)  # (I + 1,) strict: higher is better
    scores[0] = -np.inf
    return _metrics(batches, _ranks(batches, scores, protocol, exclude_seen), ks, prefix)


def category_scores(codes: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """``(I + 1,)`` each item's category popularity: the popularity summed over its category's items.

    Args:
        codes: ``(I + 1,)`` categorical codes or ``(I + 1, W)`` multi-valued codes (0-padded); code 0, and an
            item without any code, is the "unknown" group.
        popularity: ``(I + 1,)`` training interactions per item.

    Returns:
        ``(I + 1,)`` float64: the popularity of the item's most popular category (row 0: ``-inf``).
    """
    codes = np.asarray(codes, dtype=np.int64).reshape(len(popularity), -1)  # (I + 1, W)
    present = codes > 0  # (I + 1, W)
    present[:, 0] |= ~present.any(axis=1)  # an item without a code is in the unknown group (code 0)
    rows, slots = np.nonzero(present)  # (P,), (P,) each (item, category) pair once
    values = codes[rows, slots]  # (P,)
    totals = np.bincount(values, weights=popularity[rows], minlength=int(codes.max(initial=0)) + 1)  # (C,)
    scores = np.full(len(popularity), -np.inf)  # (I + 1,)
    np.maximum.at(scores, rows, totals[values])
    scores[0] = -np.inf
    return scores


def _popularity(batches: EvalBatches, num_items: int | None) -> np.ndarray:
    """``(I + 1,)`` float64 training interactions per item over ``num_items`` items (0 past the sequences' items)."""
    counts = batches.popularity.astype(np.float64)  # (I_data + 1,)
    if num_items is None or num_items + 1 <= len(counts):
        return counts
    return np.concatenate([counts, np.zeros(num_items + 1 - len(counts))])


def _ranks(batches: EvalBatches, scores: np.ndarray, protocol: str, exclude_seen: bool) -> np.ndarray:
    """``(N,)`` 0-based rank of every user's target under ``scores`` (``(I + 1,)``, all distinct, higher first)."""
    data = batches.split.data
    if protocol == "sampled":
        candidates = scores[batches.candidates]  # (N, 1 + n)
        return (candidates[:, 1:] > candidates[:, :1]).sum(axis=1)
    if protocol != "full":
        raise ValueError(f"unknown protocol {protocol!r}; expected 'sampled' or 'full'")
    order = np.argsort(-scores, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))  # 0 = first
    targets = batches.candidates[:, 0]
    ranks = position[targets].astype(np.int64)
    if exclude_seen:
        rows = batches.rows
        owner, seen = csr_gather(data.items, batches.split.starts[rows], batches.history_ends[rows])  # (S,), (S,)
        # Distinct seen items ranked above the target each remove one place.
        keys = np.unique(owner * (data.num_items + 1) + seen)
        owner, seen = keys // (data.num_items + 1), keys % (data.num_items + 1)
        above = (position[seen] < position[targets[owner]]) & (seen != targets[owner])
        ranks -= np.bincount(owner[above], minlength=len(rows))
    return ranks


def _metrics(batches: EvalBatches, ranks: np.ndarray, ks: Sequence[int], prefix: str) -> dict[str, float]:
    """The metrics of ``(N,)`` ranks over every user, and over warm and cold targets apart when marked."""
    ranks = torch.from_numpy(np.asarray(ranks, dtype=np.int64))
    metric = RankingMetrics(ks, prefix=prefix, sync_on_compute=False)  # all users, here: no DDP sync (rank 0 only)
    metric.update(ranks)
    out = {name: float(value) for name, value in metric.compute().items()}
    if batches.target_cold:
        groups = WarmColdMetrics(ks, prefix=prefix, sync_on_compute=False)
        groups.update(ranks, torch.from_numpy(batches.cold_targets))
        out.update({name: float(value) for name, value in groups.compute().items()})
    return out
