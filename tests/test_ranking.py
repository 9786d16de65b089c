"""The ranking functions on their own: no module, no encoder, only tensors in and ranks out."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sasrec_lightning import metrics
from sasrec_lightning.ranking import full_ranks, sampled_ranks


def reference_ranks(hidden: np.ndarray, weight: np.ndarray, targets, seen: dict[int, set], exclude_seen: bool):
    """Per user: items 1..I other than the target (and, optionally, its history) scoring >= the target."""
    scores = hidden.astype(np.float64) @ weight.astype(np.float64).T  # (B, I + 1)
    ranks = []
    for row, target in enumerate(targets):
        others = [i for i in range(1, weight.shape[0]) if i != target and not (exclude_seen and i in seen[row])]
        ranks.append(int(sum(scores[row, i] >= scores[row, target] for i in others)))
    return ranks


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 100])
@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("batch", [1, 3])
def test_full_ranks_equal_a_brute_force_reference_with_exact_ties(chunk, exclude_seen, batch):
    generator = torch.Generator().manual_seed(chunk * 10 + batch)
    # Small integers: every dot product is exact in fp32, so ties are real ties in any summation order.
    weight = torch.randint(-2, 3, (8, 4), generator=generator).float()  # (I + 1, d), 7 items
    weight[0] = 0.0
    weight[5] = weight[3]  # item 5 ties item 3 for everyone
    hidden = torch.randint(-2, 3, (batch, 4), generator=generator).float()  # (B, d)
    targets = torch.tensor([3, 6, 1][:batch])  # user 0's target is tied with item 5
    seen = {0: {5, 2}, 1: {6, 1}, 2: {1, 7}}  # user 1 saw its own target (stays rankable)
    seen_rows = torch.tensor([row for row in range(batch) for _ in seen[row]])
    seen_items = torch.tensor([item for row in range(batch) for item in sorted(seen[row])])
    ranks, scores = full_ranks(hidden, weight, targets, seen_rows, seen_items, chunk, exclude_seen)
    assert ranks.tolist() == reference_ranks(hidden.numpy(), weight.numpy(), targets.tolist(), seen, exclude_seen)
    assert scores.tolist() == (hidden * weight[targets]).sum(-1).tolist()


def test_sampled_ranks_count_ties_against_the_target():
    scores = torch.tensor([[1.0, 0.5, 1.0, 2.0], [3.0, 1.0, 2.0, 0.0], [float("nan"), 0.0, 1.0, 2.0]])
    ranks, target_scores = sampled_ranks(scores)
    assert ranks.tolist() == [2, 0, 3]  # a tie and a better one; none; a NaN target ranks last
    assert target_scores[:2].tolist() == [1.0, 3.0]


def test_a_metric_added_to_ranking_metrics_is_reported(monkeypatch):
    """Adding a rank-based metric is one entry in ``metrics.ranking_metrics`` (docs/architecture.md)."""
    original = metrics.ranking_metrics

    def with_mean_rank(ranks, ks):
        return {**original(ranks, ks), "mean_rank": ranks.double()}

    monkeypatch.setattr(metrics, "ranking_metrics", with_mean_rank)
    metric = metrics.RankingMetrics((1,), prefix="val/")
    metric.update(torch.tensor([0, 3]))
    values = {name: float(value) for name, value in metric.compute().items()}
    assert values == {"val/hr@1": 0.5, "val/ndcg@1": 0.5, "val/mrr": 0.625, "val/mean_rank": 1.5}
