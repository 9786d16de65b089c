"""The metrics of warm and cold targets apart: ``val/warm/ndcg@10`` beside ``val/cold/ndcg@10`` (issue 26).

A target is *cold* when its item has no training interaction (the evaluation batch's ``target_cold``,
``data/contract.py``): under the cold-item split every cold item, and any item only ever held out.
The two groups are one torchmetrics ``Metric`` with sum and count states (``dist_reduce_fx="sum"``),
so DDP sums them in one all-reduce, like :class:`~sasrec_lightning.model.metrics.RankingMetrics`.

A group no user fell in has no mean: its metrics are ``nan`` (never a 0 that reads as a measured
miss), and ``<prefix>warm/users`` / ``<prefix>cold/users`` say how many users each mean is over.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from ..model.metrics import ranking_metrics

__all__ = ["WarmColdMetrics", "GROUPS"]

#: The groups, in the order of the states' first dimension: ``target_cold`` False, then True.
GROUPS = ("warm", "cold")


class WarmColdMetrics(Metric):
    """HR@K, NDCG@K and MRR over the users whose target is warm, and over those whose target is cold.

    Args:
        ks: cut-offs, e.g. ``(10,)``.
        prefix: prepended to every name, e.g. ``"val/"`` gives ``val/warm/hr@10`` and ``val/cold/hr@10``.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, ks: Sequence[int] = (10,), prefix: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = tuple(int(k) for k in ks)
        self.prefix = prefix
        self.names = list(ranking_metrics(torch.zeros(1), self.ks))
        self.add_state("sums", default=torch.zeros(len(GROUPS), len(self.names), dtype=torch.float64),
                       dist_reduce_fx="sum")
        self.add_state("counts", default=torch.zeros(len(GROUPS), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, ranks: Tensor, cold: Tensor) -> None:
        """Add a batch: ``(B,)`` 0-based target ranks and ``(B,)`` bool ``target_cold``."""
        per_user = torch.stack([ranking_metrics(ranks, self.ks)[name] for name in self.names])  # (M, B)
        groups = torch.stack([~cold, cold]).to(per_user)  # (2, B) one-hot over the groups
        self.sums += (groups.unsqueeze(1) * per_user).sum(dim=-1)  # (2, M)
        self.counts += groups.sum(dim=1)

    def compute(self) -> dict[str, Tensor]:
        """Means per group (``nan`` for a group without users) and the users per group."""
        means = self.sums / self.counts.unsqueeze(1)  # (2, M): 0 / 0 = nan for an empty group
        out = {}
        for g, group in enumerate(GROUPS):
            out.update({f"{self.prefix}{group}/{name}": means[g, i].float() for i, name in enumerate(self.names)})
            out[f"{self.prefix}{group}/users"] = self.counts[g].float()
        return out
