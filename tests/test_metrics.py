"""HR@K / NDCG@K / MRR against a brute-force numpy reference, and accumulation over batches."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from sasrec_lightning.model.metrics import RankingMetrics, rank_of_target, ranking_metrics

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


# ------------------------------------------------------------------------ known ranks, NaN and inf
def test_metrics_of_known_ranks_equal_the_written_out_formulas():
    metric = RankingMetrics((1, 5, 10), prefix="val/")
    metric.update(torch.tensor([0, 1, 4]))
    metric.update(torch.tensor([9, 10, 57]))
    got = {name: value.item() for name, value in metric.compute().items()}
    log2 = math.log2
    expected = {
        "val/hr@1": 1 / 6,  # rank 0 only
        "val/ndcg@1": 1 / 6,
        "val/hr@5": 3 / 6,  # ranks 0, 1, 4
        "val/ndcg@5": (1 + 1 / log2(3) + 1 / log2(6)) / 6,
        "val/hr@10": 4 / 6,  # ranks 0, 1, 4, 9
        "val/ndcg@10": (1 + 1 / log2(3) + 1 / log2(6) + 1 / log2(11)) / 6,
        "val/mrr": (1 + 1 / 2 + 1 / 5 + 1 / 10 + 1 / 11 + 1 / 58) / 6,
    }
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-6), name


def python_rank(scores: list[float], target: float, valid: list[bool]) -> int:
    """The documented rule, one candidate at a time.

    Ties and NaN candidates count against the target; a non-finite target ranks after every valid candidate.
    """
    if not math.isfinite(target):
        return sum(valid)
    return sum(1 for s, ok in zip(scores, valid, strict=True) if ok and (math.isnan(s) or s >= target))


def test_rank_of_target_with_ties_nan_and_inf_equals_the_rule_one_candidate_at_a_time(rng):
    nan, inf = math.nan, math.inf
    scores = np.array([
        [0.5, 0.5, 0.1, 0.9],  # a tie and a higher score
        [nan, 0.1, 0.2, 0.3],  # a NaN candidate
        [0.1, 0.2, 0.3, 0.4],  # NaN target
        [0.1, inf, -inf, 0.4],  # +inf target
        [0.1, 0.2, 0.3, 0.4],  # -inf target
        [-inf, -inf, 2.0, nan],  # infinite candidates around a finite target
        [0.0, 0.0, 0.0, 0.0],  # a constant model: every candidate ties
    ])
    target = np.array([0.5, 0.25, nan, inf, -inf, 1.0, 0.0])
    valid = np.array([[True, True, True, False]] * 2 + [[True, False, True, True]] * 5)
    expected = [python_rank(s.tolist(), t, v.tolist()) for s, t, v in zip(scores, target, valid, strict=True)]
    assert expected == [2, 1, 3, 3, 3, 2, 3]  # the cases above, counted by hand
    for dtype in (torch.float32, torch.float64):
        ranks = rank_of_target(torch.as_tensor(scores, dtype=dtype), torch.as_tensor(target, dtype=dtype),
                               torch.as_tensor(valid))
        assert ranks.tolist() == expected
        unmasked = [python_rank(s.tolist(), t, [True] * 4) for s, t in zip(scores, target, strict=True)]
        assert rank_of_target(torch.as_tensor(scores, dtype=dtype), torch.as_tensor(target, dtype=dtype)).tolist() \
            == unmasked
    # Random scores with many ties and some NaN, against the rule.
    scores = rng.integers(0, 4, size=(200, 30)).astype(np.float64)
    scores[rng.random(scores.shape) < 0.05] = nan
    target = rng.integers(0, 4, size=200).astype(np.float64)
    target[rng.random(200) < 0.1] = nan
    valid = rng.random(scores.shape) < 0.8
    expected = [python_rank(s.tolist(), t, v.tolist()) for s, t, v in zip(scores, target, valid, strict=True)]
    assert rank_of_target(torch.as_tensor(scores), torch.as_tensor(target), torch.as_tensor(valid)).tolist() == expected


def test_non_finite_targets_are_counted_and_warned_about_once():
    metric = RankingMetrics((10,), prefix="val/")
    metric.update(torch.tensor([0, 3]), torch.tensor([True, True]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all finite: no warning
        assert metric.compute()["val/hr@10"].item() == 1.0
    metric.update(torch.tensor([100]), torch.tensor([False]))
    with pytest.warns(UserWarning, match=r"val: 1 of 3 evaluated users got a non-finite"):
        assert metric.compute()["val/hr@10"].item() == pytest.approx(2 / 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per metric object
        metric.compute()
