"""Ranking metrics: HR@K, NDCG@K and MRR from the rank of the held-out item.

With one relevant item per user, the metrics depend only on its 0-based rank ``r`` among the
candidates: ``HR@K = [r < K]``, ``NDCG@K = [r < K] / log2(r + 2)``, ``MRR = 1 / (r + 1)``.
Ties are counted against the target (pessimistic), so a constant model scores no better than chance.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["rank_of_target", "ranking_metrics", "RankingMetrics"]


def rank_of_target(scores: Tensor, target_scores: Tensor, valid: Tensor | None = None) -> Tensor:
    """0-based rank of each target: how many valid candidates score at least as high, itself excluded.

    Args:
        scores: ``(B, C)`` candidate scores that do not include the target itself.
        target_scores: ``(B,)`` score of the held-out item.
        valid: optional ``(B, C)`` boolean, ``False`` for candidates to ignore (seen items, padding).

    Returns:
        ``(B,)`` int64 ranks.
    """
    beats = scores >= target_scores.unsqueeze(-1)  # (B, C)
    if valid is not None:
        beats &= valid
    return beats.sum(dim=-1)


def ranking_metrics(ranks: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-user metrics from ranks: ``{"hr@K": (B,), "ndcg@K": (B,), "mrr": (B,)}``."""
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
    the DDP sync a single all-reduce.

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
        self.names = [f"{name}@{k}" for k in self.ks for name in ("hr", "ndcg")] + ["mrr"]
        self.add_state("sums", default=torch.zeros(len(self.names), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ranks: Tensor) -> None:
        """Add a batch of ``(B,)`` 0-based target ranks."""
        per_user = ranking_metrics(ranks, self.ks)
        self.sums += torch.stack([per_user[name].sum() for name in self.names]).to(self.sums)
        self.count += ranks.numel()

    def compute(self) -> dict[str, Tensor]:
        """Averages over users, keyed ``prefix + name``."""
        means = self.sums / self.count.clamp(min=1)
        return {self.prefix + name: means[i].float() for i, name in enumerate(self.names)}
