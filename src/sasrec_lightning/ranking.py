"""The rank of each held-out item, as pure functions of scores (evaluation's "scores -> rank" step).

Both protocols return 0-based ranks with the pessimistic rules of :mod:`~sasrec_lightning.metrics`
(ties and NaN scores count against the target; a non-finite target ranks last), which
:class:`~sasrec_lightning.metrics.RankingMetrics` turns into HR/NDCG/MRR. A rank-based metric is
added there; how a rank is computed lives here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .metrics import beats_target, rank_of_target

__all__ = ["sampled_ranks", "full_ranks"]


def sampled_ranks(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Ranks among sampled candidates whose column 0 is the target.

    The target and its negatives must come from one computation (e.g. one elementwise product and
    sum), so equal item vectors give bit-equal scores and a tie counts against the target.

    Args:
        scores: ``(B, 1 + n)`` scores of the target (column 0) and ``n`` negatives.

    Returns:
        ``(B,)`` int64 ranks and the ``(B,)`` target scores.
    """
    return rank_of_target(scores[:, 1:], scores[:, 0]), scores[:, 0]


def full_ranks(hidden: Tensor, weight: Tensor, targets: Tensor, seen_rows: Tensor, seen_items: Tensor,
               chunk: int, exclude_seen: bool = True) -> tuple[Tensor, Tensor]:
    """Rank of the target among all items, scored in chunks so memory stays bounded.

    The target's score comes from the same kind of matrix product as its competitors': every
    product has the shape ``(max(B, 2), d) x (d, chunk)`` (the last chunk overlaps the one before
    it instead of being narrower), because a product of another shape, or an elementwise product,
    can round the same dot product differently and break an exact tie in the target's favour. Two
    rows at least: a one-row product runs as a matrix-vector product, which rounds columns
    differently (measured on CPU).

    Args:
        hidden: ``(B, d)`` fp32 query vectors.
        weight: ``(I + 1, d)`` fp32 item table, row 0 = padding (never ranked).
        targets: ``(B,)`` held-out item ids.
        seen_rows: ``(S,)`` batch row of each history item.
        seen_items: ``(S,)`` the history items.
        chunk: items scored at once.
        exclude_seen: ignore the user's history items (except the target itself).

    Returns:
        ``(B,)`` int64 ranks and the ``(B,)`` target scores.
    """
    size = targets.size(0)
    if exclude_seen:
        keep = seen_items != targets[seen_rows]  # (S,) the target itself stays rankable
        seen_rows, seen_items = seen_rows[keep], seen_items[keep]
    rows_total = weight.size(0)
    chunk = max(1, min(chunk, rows_total))
    # Chunk starts; the last chunk ends at the table's end and overlaps its predecessor.
    starts = list(range(0, rows_total - chunk, chunk)) + [rows_total - chunk]
    queries = hidden if size > 1 else hidden.expand(2, -1)  # (max(B, 2), d)

    if len(starts) == 1:
        target_scores = None  # taken from the only chunk below
    else:  # the targets' vectors in blocks of the chunk's shape, zero-filled
        target_scores = torch.empty(size, dtype=hidden.dtype, device=hidden.device)
        for first in range(0, size, chunk):
            last = min(first + chunk, size)
            block = weight.new_zeros(chunk, weight.size(1))  # (chunk, d)
            block[: last - first] = weight[targets[first:last]]
            picked = torch.arange(first, last, device=hidden.device)
            target_scores[first:last] = (queries @ block.T)[picked, picked - first]  # (chunk_rows,)

    ranks = torch.zeros_like(targets)
    done = 0  # item ids below this were counted by an earlier chunk
    for start in starts:
        stop = start + chunk
        scores = (queries @ weight[start:stop].T)[:size]  # (B, C)
        if target_scores is None:
            target_scores = scores.gather(1, targets.unsqueeze(-1)).squeeze(-1)  # (B,)
        beats = beats_target(scores, target_scores)  # (B, C)
        beats[:, : max(done, 1) - start] = False  # padding (id 0) and ids already counted
        in_chunk = (targets >= start) & (targets < stop)  # (B,)
        rows = torch.nonzero(in_chunk).squeeze(-1)
        beats[rows, targets[rows] - start] = False  # the target does not outrank itself
        if exclude_seen:
            here = (seen_items >= start) & (seen_items < stop)  # (S,)
            beats[seen_rows[here], seen_items[here] - start] = False
        ranks += beats.sum(dim=-1)
        done = stop
    return ranks, target_scores
