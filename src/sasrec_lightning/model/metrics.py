"""Ranking metrics: HR@K, NDCG@K and MRR from the rank of the held-out item.

With one relevant item per user, the metrics depend only on its 0-based rank ``r`` among the
candidates: ``HR@K = [r < K]``, ``NDCG@K = [r < K] / log2(r + 2)``, ``MRR = 1 / (r + 1)``.

The rank is pessimistic, so a broken model never scores well:

- Ties count against the target: a candidate scoring exactly the target's score ranks above it, so
  a constant model gets the worst rank (the number of valid candidates). Scores closer than fp32
  products can tell apart are compared on the vectors themselves (:mod:`~sasrec_lightning.ranking`),
  so a tie is a tie on every CPU.
- A NaN candidate score counts against the target (as a tie would).
- A non-finite target score (NaN, +inf or -inf) ranks the target last among the valid candidates: a
  diverged model gets HR = NDCG = 0 and MRR = 1 / (candidates + 1), never a perfect score.
  :class:`RankingMetrics` counts such users and warns once (``rank_zero_warn``) when it sees any.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

__all__ = ["beats_target", "rank_of_target", "ranking_metrics", "RankingMetrics"]


def beats_target(scores: Tensor, target_scores: Tensor) -> Tensor:
    """Which candidates rank at or above the target: ``(B, C)`` bool.

    ``not (score < target)`` rather than ``score >= target``: every comparison with NaN is false, so
    a NaN candidate, and every candidate of a non-finite target (mapped to NaN first), counts against it.

    Args:
        scores: ``(B, C)`` candidate scores.
        target_scores: ``(B,)`` score of the held-out item.
    """
    target = torch.where(torch.isfinite(target_scores), target_scores, torch.nan)  # (B,) non-finite -> NaN
    return torch.lt(scores, target.unsqueeze(-1)).logical_not_()  # (B, C)


def rank_of_target(scores: Tensor, target_scores: Tensor, valid: Tensor | None = None) -> Tensor:
    """0-based rank of each target: how many valid candidates score at least as high, itself excluded.

    NaN candidates count against the target; a non-finite target ranks after every valid candidate
    (see :func:`beats_target`).

    Args:
        scores: ``(B, C)`` candidate scores that do not include the target itself.
        target_scores: ``(B,)`` score of the held-out item.
        valid: optional ``(B, C)`` boolean, ``False`` for candidates to ignore (seen items, padding).

    Returns:
        ``(B,)`` int64 ranks.
    """
    beats = beats_target(scores, target_scores)  # (B, C)
    if valid is not None:
        beats &= valid
    return beats.sum(dim=-1)


def ranking_metrics(ranks: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-user metrics from ranks: ``{"hr@K": (B,), "ndcg@K": (B,), "mrr": (B,)}``.

    Every rank-based metric is one entry here: :class:`RankingMetrics` sums and reports each key
    (with its prefix), so a new metric is one more line in this function.
    """
    ranks = ranks.to(torch.float64)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = hit.to(torch.float64)
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 2.0), torch.zeros_like(ranks))
    out["mrr"] = 1.0 / (ranks + 1.0)
    return out


class RankingMetrics(Metric):
    """HR@K, NDCG@K for several cut-offs and MRR, accumulated as sums and a user count.

    Sum states with ``dist_reduce_fx="sum"`` keep memory constant in the number of users and make
    the DDP sync a single all-reduce. Users whose target score was not finite (a diverged model) are
    counted too; ``compute`` warns once per metric object when there were any.

    Args:
        ks: cut-offs, e.g. ``(1, 5, 10, 20)``.
        prefix: prepended to every name, e.g. ``"val/"``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int] = (10,), prefix: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"cut-offs must be positive integers, got {list(ks)}")
        self.ks = tuple(int(k) for k in ks)
        self.prefix = prefix
        self.names = list(ranking_metrics(torch.zeros(1), self.ks))  # a metric added there is reported here
        self.add_state("sums", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("nonfinite", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self._warned = False

    def update(self, ranks: Tensor, finite: Tensor | None = None) -> None:
        """Add a batch of ``(B,)`` 0-based target ranks.

        Args:
            ranks: ``(B,)`` ranks (a non-finite target already ranked last by :func:`rank_of_target`).
            finite: optional ``(B,)`` bool, ``False`` where the target's score was NaN or infinite.
        """
        per_user = ranking_metrics(ranks, self.ks)
        self.sums += torch.stack([per_user[name].sum() for name in self.names]).to(self.sums)
        self.count += ranks.numel()
        if finite is not None:
            self.nonfinite += (~finite).sum().to(self.nonfinite)

    def compute(self) -> dict[str, Tensor]:
        """Averages over users, keyed ``prefix + name``."""
        if self.nonfinite > 0 and not self._warned:
            self._warned = True
            where = self.prefix.rstrip("/") or "evaluation"
            rank_zero_warn(
                f"{where}: {int(self.nonfinite)} of {int(self.count)} evaluated users got a non-finite (NaN or "
                "infinite) score for their held-out item, so the model has diverged or its weights are broken; "
                "those users are ranked last (counted as misses). Further occurrences are not reported."
            )
        means = self.sums / self.count.clamp(min=1)
        return {self.prefix + name: means[i].float() for i, name in enumerate(self.names)}
