"""The most-popular baseline, evaluated with exactly the protocol and users the model is."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..data.batches import EvalBatches
from ..data.csr import csr_gather
from ..model.metrics import RankingMetrics

__all__ = ["most_popular_metrics"]


def most_popular_metrics(
    batches: EvalBatches, protocol: str = "sampled", exclude_seen: bool = True, ks: Sequence[int] = (10,),
    prefix: str = "", seed: int = 0,
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

    Returns:
        Metric name -> value.
    """
    data = batches.split.data
    counts = batches.popularity.astype(np.float64)  # (I + 1,)
    counts += np.random.default_rng(seed).random(len(counts)) * 0.5  # strict order, ties broken at random
    counts[0] = -np.inf
    if protocol == "sampled":
        scores = counts[batches.candidates]  # (N, 1 + n)
        ranks = (scores[:, 1:] > scores[:, :1]).sum(axis=1)
    elif protocol == "full":
        order = np.argsort(-counts, kind="stable")
        position = np.empty_like(order)
        position[order] = np.arange(len(order))  # 0 = most popular
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
    else:
        raise ValueError(f"unknown protocol {protocol!r}; expected 'sampled' or 'full'")
    metric = RankingMetrics(ks, prefix=prefix, sync_on_compute=False)  # all users, here: no DDP sync (rank 0 only)
    metric.update(torch.from_numpy(ranks))
    return {name: float(value) for name, value in metric.compute().items()}
