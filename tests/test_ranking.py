"""The ranking functions on their own: no module, no encoder, only tensors in and ranks out."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sasrec_lightning.model import metrics
from sasrec_lightning.model.ranking import AUTO_CHUNK_SCORES, chunk_items, full_ranks, full_top_k, sampled_ranks


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
    # One-dimensional vectors and queries of 1: each candidate's score is its vector (column 0: the target).
    ranks, target_scores = sampled_ranks(torch.ones(3, 1), scores.unsqueeze(-1))
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


# ------------------------------------------------------------------ many chunks, NaN, top-k
def integer_table(items: int, dim: int, seed: int, nan_items=()) -> torch.Tensor:
    """``(I + 1, d)`` small-integer item vectors: every dot product is exact, so ties are real ties."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randint(-2, 3, (items + 1, dim), generator=generator).float()
    weight[0] = 0.0
    weight[list(nan_items)] = float("nan")
    return weight


def pessimistic_ranks(scores: np.ndarray, targets, seen: dict[int, set], exclude_seen: bool) -> list[int]:
    """Written-out rule: count items 1..I (not the target, not seen) that do not score below the target.

    A NaN item counts against the target; a non-finite target ranks after every counted item.
    """
    ranks = []
    for row, target in enumerate(targets):
        target_score = scores[row, target]
        count = 0
        for item in range(1, scores.shape[1]):
            if item == target or (exclude_seen and item in seen.get(row, set())):
                continue
            if not np.isfinite(target_score) or not scores[row, item] < target_score:
                count += 1
        ranks.append(count)
    return ranks


@pytest.mark.parametrize("chunk", [7, 16, 32, 51])  # 8 chunks with an overlapping last one, ..., one chunk
@pytest.mark.parametrize("batch", [1, 5])
def test_full_ranks_over_many_chunks_with_nan_items_nan_users_and_spread_seen_items(chunk, batch):
    weight = integer_table(50, 6, seed=chunk, nan_items=(13, 44))  # NaN items in two different chunks
    weight[30] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, math.inf])  # +inf for users 0, 1, 4; -inf for user 2
    hidden = torch.randint(-2, 3, (5, 6), generator=torch.Generator().manual_seed(1)).float()[:batch]
    if batch > 1:
        hidden[3] = float("nan")  # a diverged user: its target ranks last
    targets = torch.tensor([3, 30, 27, 9, 44])[:batch]  # user 1's target scores +inf, user 4's is a NaN item
    # Histories spread over the table (several chunks), a repeated item, a NaN item, the user's own target.
    seen = {0: {1, 8, 22, 49, 50, 3}, 1: {2, 45, 46}, 2: {13, 27, 40}, 3: {10, 11}, 4: {7, 36}}
    seen_rows = torch.tensor([row for row in range(batch) for _ in sorted(seen[row])] + [0])
    seen_items = torch.tensor([item for row in range(batch) for item in sorted(seen[row])] + [8])  # 8 twice
    scores = hidden.double().numpy() @ weight.double().numpy().T  # (B, I + 1) exact
    assert batch == 1 or scores[1, 30] == math.inf  # a non-finite target that is not NaN: it ranks last too
    for exclude_seen in (True, False):
        ranks, target_scores = full_ranks(hidden, weight, targets, seen_rows, seen_items, chunk, exclude_seen)
        assert ranks.tolist() == pessimistic_ranks(scores, targets.tolist(), seen, exclude_seen), exclude_seen
        expected = scores[np.arange(batch), targets.numpy()]
        np.testing.assert_array_equal(target_scores.double().numpy(), expected)


def brute_force_top_k(scores: np.ndarray, k: int, seen: dict[int, set]) -> tuple[list, list]:
    """Per row: NaN scores first, then decreasing score, ties to the lower id; padding and seen items removed.

    Rows with fewer than ``k`` items left (or items scoring -inf) are filled with (-inf, id 0).
    """
    out_scores, out_ids = [], []
    for row in range(scores.shape[0]):
        items = [item for item in range(1, scores.shape[1]) if item not in seen.get(row, set())]
        items = [item for item in items if not scores[row, item] == -np.inf]
        items.sort(key=lambda item: (0, 0.0, item) if np.isnan(scores[row, item]) else (1, -scores[row, item], item))
        items = items[:k]
        out_ids.append(items + [0] * (k - len(items)))
        out_scores.append([scores[row, item] for item in items] + [-np.inf] * (k - len(items)))
    return out_scores, out_ids


@pytest.mark.parametrize(("items", "chunk"), [(50, 7), (50, 51), (300, 64), (300, 96), (1000, 128)])
@pytest.mark.parametrize("k", [1, 3, 10, 70])
def test_full_top_k_equals_a_brute_force_sort_with_ties_nan_and_seen_items(items, chunk, k):
    """Chunks of several sizes (group maxima over 32-column groups from 64 on), k beyond a chunk, B = 1."""
    weight = integer_table(items, 4, seed=items + chunk + k, nan_items=(5, items - 2))
    generator = torch.Generator().manual_seed(k)
    hidden = torch.randint(-2, 3, (4, 4), generator=generator).float()  # (B, d)
    hidden[2] = float("nan")  # every score NaN: the lowest ids first
    hidden[3] = 0.0  # every score 0: all tied, the lowest unseen ids first
    # Seen items in different chunks, repeated, including a NaN item; user 1 has none.
    seen = {0: {1, 2, 5, 7, 8, items // 2, items - 1, items}, 2: {1, 3}, 3: {2, 4, items - 3}}
    rows = [row for row in seen for _ in sorted(seen[row])] + [0]
    picked = [item for row in seen for item in sorted(seen[row])] + [7]  # item 7 twice for user 0
    scores = hidden.double().numpy() @ weight.double().numpy().T  # (B, I + 1) exact
    for batch in (4, 1):
        seen_rows, seen_items = torch.tensor(rows), torch.tensor(picked)
        keep = seen_rows < batch
        top_scores, top_ids = full_top_k(hidden[:batch], weight, k, seen_rows[keep], seen_items[keep], chunk)
        expected_scores, expected_ids = brute_force_top_k(scores[:batch], min(k, items), seen)
        assert top_ids.tolist() == expected_ids, batch
        np.testing.assert_array_equal(top_scores.double().numpy(), np.array(expected_scores))


def test_full_top_k_of_random_scores_is_the_top_k_of_the_full_score_matrix():
    """Real-valued scores over 37 chunks, merges under way: the same items and scores as sorting every score."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(5001, 16, generator=generator)  # (I + 1, d)
    hidden = torch.randn(9, 16, generator=generator)  # (B, d)
    seen_rows = torch.arange(9).repeat_interleave(40)  # (S,)
    seen_items = torch.randint(1, 5001, (360,), generator=generator)  # (S,)
    seen = {row: set(seen_items[seen_rows == row].tolist()) for row in range(9)}
    top_scores, top_ids = full_top_k(hidden, weight, 25, seen_rows, seen_items, chunk=137)
    scores = (hidden @ weight.T).numpy()  # (B, I + 1)
    for row in range(9):
        allowed = np.array([item not in seen[row] for item in range(5001)])
        allowed[0] = False
        candidates = np.flatnonzero(allowed)
        best = candidates[np.argsort(-scores[row, candidates], kind="stable")[:25]]
        assert top_ids[row].tolist() == best.tolist(), row
        np.testing.assert_allclose(top_scores[row].numpy(), scores[row, best], rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ eval_chunk_size: auto
@pytest.mark.parametrize(("rows", "items"), [(256, 1_000_001), (1024, 1_000_001), (256, 54_543), (1, 1_000_001),
                                             (100_000, 1_000_001), (256, 3000), (7, 1)])
def test_auto_chunks_aim_at_the_block_size_and_spread_the_catalogue_evenly(rows, items):
    width = chunk_items("auto", rows, items)
    target = min(65536, max(4096, AUTO_CHUNK_SCORES // rows))  # items per chunk the block size asks for
    chunks = -(-items // width)
    assert 1 <= width <= items
    assert chunks == -(-items // target)  # as many chunks as the target width needs, no more
    if width < items:
        assert width % 64 == 0  # top-k's column groups: a power of two up to 32 divides it
        assert width - 64 < items / chunks  # even: the overlapping last chunk repeats less than 64 per chunk
    assert chunk_items(500, rows, items) == min(500, items) and chunk_items(10**9, rows, items) == items


def test_auto_chunks_of_a_million_items():
    assert chunk_items("auto", 256, 1_000_001) == 8192  # 123 chunks of 8131 or more, rounded up to 64
    assert chunk_items("auto", 1024, 1_000_001) == 4096  # the floor: 245 chunks
    assert chunk_items("auto", 16, 1_000_001) == 62528  # the ceiling (65536): 16 chunks of 62501, rounded up
    assert chunk_items("auto", 256, 54_543) == 7808  # Beauty: 7 chunks, not 7 x 8192 with 2,800 repeated


def test_auto_chunks_rank_and_pick_the_top_k_as_a_brute_force_sort():
    """1024 users: 4096-item chunks over 9000 items (an overlapping last chunk), ties, NaN, seen items."""
    items, batch = 9000, 1024
    weight = integer_table(items, 4, seed=3, nan_items=(17, 4000))
    hidden = torch.randint(-2, 3, (batch, 4), generator=torch.Generator().manual_seed(2)).float()
    assert chunk_items("auto", batch, items + 1) == 3008  # three chunks: 0, 3008, 5993
    generator = torch.Generator().manual_seed(4)
    targets = torch.randint(1, items + 1, (batch,), generator=generator)
    seen_rows = torch.arange(batch).repeat_interleave(3)  # (S,)
    seen_items = torch.randint(1, items + 1, (3 * batch,), generator=generator)  # (S,) spread over the chunks
    seen = {row: set(seen_items[3 * row : 3 * row + 3].tolist()) for row in range(batch)}
    scores = hidden.double().numpy() @ weight.double().numpy().T  # (B, I + 1) exact
    ranks, _ = full_ranks(hidden, weight, targets, seen_rows, seen_items, "auto", True)
    check = range(0, batch, 41)  # the written-out rule is slow: every 41st user
    assert ranks[list(check)].tolist() == pessimistic_ranks(scores[list(check)], targets[list(check)].tolist(),
                                                            {i: seen[row] for i, row in enumerate(check)}, True)
    top_scores, top_ids = full_top_k(hidden, weight, 5, seen_rows, seen_items, "auto")
    expected_scores, expected_ids = brute_force_top_k(scores[list(check)], 5,
                                                      {i: seen[row] for i, row in enumerate(check)})
    assert top_ids[list(check)].tolist() == expected_ids
    np.testing.assert_array_equal(top_scores[list(check)].double().numpy(), np.array(expected_scores))
