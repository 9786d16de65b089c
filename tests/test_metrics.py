"""HR@K / NDCG@K / MRR against a brute-force numpy reference, and accumulation over batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sasrec_lightning.metrics import RankingMetrics, rank_of_target, ranking_metrics

KS = (1, 3, 5, 10, 20)


def numpy_reference(scores: np.ndarray, target: np.ndarray, ks) -> dict[str, float]:
    """Sort every user's candidates (target included) best first; ties count against the target."""
    out = {f"{name}@{k}": [] for k in ks for name in ("hr", "ndcg")} | {"mrr": []}
    for row, t in zip(scores, target, strict=True):
        ranked = sorted([(s, 0) for s in row] + [(t, 1)], key=lambda pair: (-pair[0], pair[1]))  # ties: target last
        rank = [is_target for _, is_target in ranked].index(1)
        for k in ks:
            out[f"hr@{k}"].append(1.0 if rank < k else 0.0)
            out[f"ndcg@{k}"].append(1.0 / math.log2(rank + 2) if rank < k else 0.0)
        out["mrr"].append(1.0 / (rank + 1))
    return {name: float(np.mean(values)) for name, values in out.items()}


@pytest.mark.parametrize("integer_scores", [False, True])  # integers produce many ties
def test_metrics_equal_brute_force_on_random_scores(rng, integer_scores):
    scores = rng.integers(0, 6, size=(300, 100)) if integer_scores else rng.normal(size=(300, 100))
    target = rng.integers(0, 6, size=300) if integer_scores else rng.normal(size=300) + 1.5
    ranks = rank_of_target(torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64))
    per_user = ranking_metrics(ranks, KS)
    expected = numpy_reference(scores, target, KS)
    assert set(per_user) == set(expected)
    for name, value in expected.items():
        assert per_user[name].mean().item() == pytest.approx(value, abs=1e-12), name
    metric = RankingMetrics(KS, prefix="test/")
    metric.update(ranks)
    computed = metric.compute()
    for name, value in expected.items():
        assert computed[f"test/{name}"].item() == pytest.approx(value, abs=1e-6), name


def test_accumulating_batches_equals_one_shot(rng):
    ranks = torch.as_tensor(rng.integers(0, 101, size=1000))
    one_shot = RankingMetrics(KS)
    one_shot.update(ranks)
    batched = RankingMetrics(KS)
    for chunk in torch.split(ranks, [1, 7, 256, 300, 436]):
        batched.update(chunk)
    expected, got = one_shot.compute(), batched.compute()
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-7)
    batched.reset()
    batched.update(ranks[:10])
    assert batched.compute()["hr@1"].item() == pytest.approx((ranks[:10] < 1).double().mean().item())


def test_bad_cut_offs_are_rejected():
    with pytest.raises(ValueError, match="positive"):
        RankingMetrics((0, 10))
