"""Scores over the whole catalogue turned into ranks and top-k lists, in item chunks.

Evaluation's "scores -> rank" step: both protocols return 0-based ranks with the pessimistic rules
of :mod:`~sasrec_lightning.metrics` (ties and NaN scores count against the target; a non-finite
target ranks last), which :class:`~sasrec_lightning.metrics.RankingMetrics` turns into HR/NDCG/MRR.
A rank-based metric is added there; how a rank is computed lives here. ``predict`` and
``recommend`` take their top-k lists from :func:`full_top_k`.

Full ranking and top-k score the catalogue one ``(B, d) x (d, C)`` product at a time into one
reused ``(B, C)`` block, and whatever follows each product reads that block once or twice right
after it (no fresh allocation, no users x items matrix), so both run close to the speed of the products
(docs/performance.md, "Full ranking and predict at a million items"): counting is an in-place
comparison and a row sum; top-k compares group maxima of the block with the running k-th best
score and looks closer only at the few groups above it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .metrics import rank_of_target

__all__ = ["sampled_ranks", "full_ranks", "full_top_k", "chunk_items"]


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


# A float32 row sum of 0/1 values is exact while every partial sum is an integer below 2**24.
MAX_CHUNK = 2**24


# ``eval_chunk_size: auto`` sizes the (B, C) block to about this many scores (8 MB of fp32), and never
# below 4096 items: measured on a 2-core AVX-512 CPU (docs/performance.md), wider chunks than 4096
# make top-k 15-40 % faster at B = 256 (fewer chunks, so fewer small operations per item), while
# blocks of 16M scores and more slow the products themselves (B = 1024: 257 -> 155 GFLOP/s from
# C = 4096 to 16384) and, on Beauty's 54,543 x 50 table, 16M-score blocks made the ranks ~12 % slower.
AUTO_CHUNK_SCORES = 2**21
_AUTO_CHUNK_LIMITS = (4096, 65536)
_CHUNK_ALIGN = 64  # chunks a multiple of this (top-k's column groups need a power of two dividing C)


def chunk_items(chunk: int | str, rows: int, items: int) -> int:
    """Items per chunk: ``chunk`` itself, or for ``"auto"`` a size from the batch and the catalogue.

    ``auto`` aims at ``AUTO_CHUNK_SCORES`` scores per ``(rows, C)`` block (at least 4096 and at most
    65536 items), then spreads the catalogue evenly over that many chunks, so the last chunk does not
    repeat most of its predecessor (every chunk has the same width, see :func:`_chunk_starts`).

    Args:
        chunk: an item count, or ``"auto"``.
        rows: users scored at once (``B``).
        items: table rows to score (``I + 1``).

    Returns:
        The chunk width, at most ``items``.
    """
    if chunk != "auto":
        return max(1, min(int(chunk), items))
    low, high = _AUTO_CHUNK_LIMITS
    target = min(high, max(low, AUTO_CHUNK_SCORES // max(rows, 1)))
    count = -(-items // target)  # chunks needed at the target width
    width = -(-items // count)  # the same count of chunks, as even as they can be
    return min(items, -(-width // _CHUNK_ALIGN) * _CHUNK_ALIGN)


def _chunk_starts(rows_total: int, chunk: int) -> list[int]:
    """Where each chunk of ``chunk`` table rows starts; the last one ends at the table's end.

    The last chunk overlaps its predecessor instead of being narrower, so every product has the same
    shape (see :func:`full_ranks`).
    """
    return list(range(0, rows_total - chunk, chunk)) + [rows_total - chunk]


class _PairsByItem:
    """``(row, item)`` pairs sorted by item, so the pairs of each chunk are one contiguous slice."""

    def __init__(self, rows: Tensor, items: Tensor, starts: list[int], chunk: int) -> None:
        order = torch.argsort(items)
        items = items[order]  # (S,)
        self.flat = rows[order] * chunk + items  # (S,) position in a (B, C) block, plus the chunk's start
        edges = torch.tensor(starts, dtype=items.dtype, device=items.device)  # (chunks,)
        first = torch.searchsorted(items, edges).tolist()  # first pair of each chunk [start, start + C)
        last = torch.searchsorted(items, edges + chunk).tolist()  # one past its last pair
        self.spans = list(zip(first, last, strict=True))

    def of_chunk(self, index: int, start: int) -> Tensor | None:
        """``(n,)`` positions in the flattened ``(B, C)`` block of chunk ``index`` (``None``: no pair)."""
        first, last = self.spans[index]
        if first == last:
            return None
        return self.flat[first:last] - start


def _target_scores(queries: Tensor, weight: Tensor, targets: Tensor, block: Tensor) -> Tensor:
    """``(B,)`` scores of the targets from products of the chunks' own shape, into the same block.

    The targets' vectors are stacked into zero-filled ``(C, d)`` tables, so a target's score is a
    column of a ``(max(B, 2), d) x (d, C)`` product like its competitors' and rounds the same way.
    """
    size, chunk = targets.size(0), block.size(1)
    scores = queries.new_empty(size)  # (B,)
    table = weight.new_zeros(chunk, weight.size(1))  # (C, d)
    for first in range(0, size, chunk):
        last = min(first + chunk, size)
        table[: last - first] = weight[targets[first:last]]
        torch.mm(queries, table.T, out=block)  # (max(B, 2), C)
        picked = torch.arange(first, last, device=block.device)
        scores[first:last] = block[picked, picked - first]  # (chunk_rows,)
    return scores


def full_ranks(hidden: Tensor, weight: Tensor, targets: Tensor, seen_rows: Tensor, seen_items: Tensor,
               chunk: int | str = "auto", exclude_seen: bool = True) -> tuple[Tensor, Tensor]:
    """Rank of the target among all items, scored in chunks so memory stays bounded.

    The target's score comes from the same kind of matrix product as its competitors': every
    product has the shape ``(max(B, 2), d) x (d, chunk)`` (the last chunk overlaps the one before
    it instead of being narrower), because a product of another shape, or an elementwise product,
    can round the same dot product differently and break an exact tie in the target's favour. Two
    rows at least: a one-row product runs as a matrix-vector product, which rounds columns
    differently (measured on CPU).

    Each chunk is one product into a reused ``(B, C)`` block, then two passes over it:
    ``block.lt_(target)`` (in place: 1.0 where an item scores strictly below the
    target; a NaN item or a non-finite target, mapped to NaN, compares false and so counts against
    the target, the rule of :func:`~sasrec_lightning.metrics.beats_target`) and a row sum. Items
    that are no competitors (the target itself, seen items, the padding id, ids an earlier chunk
    counted) are not masked out of the block: their few positions are set to 1.0 ("below") and the
    leading columns are left out of the sum.

    Args:
        hidden: ``(B, d)`` fp32 query vectors.
        weight: ``(I + 1, d)`` fp32 item table, row 0 = padding (never ranked).
        targets: ``(B,)`` held-out item ids.
        seen_rows: ``(S,)`` batch row of each history item.
        seen_items: ``(S,)`` the history items.
        chunk: items scored at once (at most ``2**24``, where a float32 count stays exact), or ``"auto"``
            (:func:`chunk_items`).
        exclude_seen: ignore the user's history items (except the target itself).

    Returns:
        ``(B,)`` int64 ranks and the ``(B,)`` target scores.
    """
    size = targets.size(0)
    rows_total = weight.size(0)
    chunk = min(chunk_items(chunk, size, rows_total), MAX_CHUNK)
    starts = _chunk_starts(rows_total, chunk)
    queries = hidden if size > 1 else hidden.expand(2, -1)  # (max(B, 2), d)
    block = hidden.new_empty(queries.size(0), chunk)  # (max(B, 2), C), reused by every product
    scores = block[:size]  # (B, C) the users' rows

    # Never competitors: each target (it does not outrank itself) and, optionally, the history.
    # Excluding a history item that is the target is excluding the target: harmless.
    user_rows = torch.arange(size, device=targets.device)  # (B,)
    rows, items = (torch.cat([user_rows, seen_rows]), torch.cat([targets, seen_items])) if exclude_seen \
        else (user_rows, targets)
    excluded = _PairsByItem(rows, items, starts, chunk)

    target_scores = _target_scores(queries, weight, targets, block) if len(starts) > 1 else None
    # Each chunk's count of competitors below the target, written in place (exact: integers below 2**24).
    below = block.new_empty(len(starts), size)  # (chunks, B)
    competitors = 0  # columns counted so far (the same for every user)
    done = 0  # item ids below this were counted by an earlier chunk
    for index, start in enumerate(starts):
        torch.mm(queries, weight[start : start + chunk].T, out=block)  # (max(B, 2), C)
        if target_scores is None:  # a single chunk: the targets' scores are in it
            target_scores = scores.gather(1, targets.unsqueeze(-1)).squeeze(-1)  # (B,)
        if index == 0:
            threshold = torch.where(torch.isfinite(target_scores), target_scores, torch.nan)  # (B,) NaN: last
            threshold = threshold.unsqueeze(-1)  # (B, 1)
        scores.lt_(threshold)  # (B, C) 1.0: below the target; 0.0: at or above it, or NaN
        pairs = excluded.of_chunk(index, start)
        if pairs is not None:
            scores.view(-1).index_fill_(0, pairs, 1.0)
        skip = max(done, 1) - start  # padding (id 0) and ids already counted: left out of the sum
        torch.sum(scores[:, skip:] if skip > 0 else scores, dim=-1, out=below[index])  # (B,)
        competitors += chunk - skip
        done = start + chunk
    ranks = (competitors - below.sum(dim=0, dtype=torch.float64)).to(torch.int64)  # (B,) at or above the target
    return ranks, target_scores


def _beats(scores: Tensor, threshold: Tensor) -> Tensor:
    """Which scores may come before ``threshold`` in top-k order (NaN first, then descending).

    ``~(score <= threshold)``, one comparison and an in-place negation.

    True for scores strictly above it and for every NaN score: exact while ``threshold`` is a number
    (:func:`full_top_k` makes a NaN k-th score +inf, so the later NaN items, which lose to the earlier
    ones, are only let through to the merge).
    """
    return torch.le(scores, threshold).logical_not_()


def _order_key(rows: Tensor, scores: Tensor) -> Tensor:
    """``(n,)`` int64 keys that sort by row, then score descending with NaN first (as ``topk`` does).

    A float32's bits, read as an int32 with the magnitude bits of negative numbers flipped, order
    like the floats; -0.0 is made +0.0 first (they tie) and every NaN the same positive NaN (above
    +inf).
    """
    scores = scores + 0.0  # -0.0 + 0.0 = +0.0
    scores = torch.where(torch.isnan(scores), torch.nan, scores)
    bits = scores.view(torch.int32).to(torch.int64)  # (n,)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # increases with the float
    return rows * 2**32 + (2**31 - 1 - ordered)  # second term in [0, 2**32): larger score, smaller key


class _TopK:
    """The running top-k of every row: ``(B, k)`` scores and ids, plus candidates not merged yet.

    Candidates arrive chunk by chunk in increasing item id (sorted by row and id within a chunk),
    and are merged with one stable sort: laid out as [current best, candidates in arrival order],
    equal scores of a row stand in increasing id order, so the stable sort keeps the lower id first
    among ties.
    """

    def __init__(self, size: int, k: int, like: Tensor) -> None:
        self.size, self.k = size, k
        self.scores = like.new_full((size, k), float("-inf"))  # (B, k) -inf: no item (yet)
        self.ids = torch.zeros(size, k, dtype=torch.int64, device=like.device)  # (B, k)
        self.slot_rows = torch.arange(size, device=like.device).repeat_interleave(k)  # (B * k,)
        self.pending: list[tuple[Tensor, Tensor, Tensor]] = []  # (rows, ids, scores) of each chunk
        self.pending_count = 0

    def kth(self) -> Tensor:
        """``(B, 1)`` the k-th best score merged so far (``-inf`` while fewer than k)."""
        return self.scores[:, -1:]

    def add(self, rows: Tensor, ids: Tensor, scores: Tensor) -> None:
        self.pending.append((rows, ids, scores))
        self.pending_count += rows.numel()

    def merge(self) -> None:
        """Fold the pending candidates into the best ``k`` of every row."""
        if not self.pending:
            return
        rows = torch.cat([self.slot_rows, *(p[0] for p in self.pending)])  # (n,)
        ids = torch.cat([self.ids.reshape(-1), *(p[1] for p in self.pending)])  # (n,)
        scores = torch.cat([self.scores.reshape(-1), *(p[2] for p in self.pending)])  # (n,)
        self.pending, self.pending_count = [], 0
        order = torch.sort(_order_key(rows, scores), stable=True).indices  # (n,)
        rows, ids, scores = rows[order], ids[order], scores[order]
        counts = torch.bincount(rows, minlength=self.size)  # (B,) every row holds >= k (its slots)
        first = torch.cumsum(counts, 0) - counts  # (B,) where each row's run starts
        place = torch.arange(rows.numel(), device=rows.device) - first[rows]  # (n,) place within the row
        keep = place < self.k
        self.scores[rows[keep], place[keep]] = scores[keep]
        self.ids[rows[keep], place[keep]] = ids[keep]


def _group_size(chunk: int, k: int) -> int:
    """Columns per group of the top-k pre-filter: a power of two <= 32 dividing ``chunk``.

    Smaller when needed to leave at least ``2k`` groups, so that the k-th best group maximum of the
    first chunk is a useful threshold (with ``k`` groups or fewer it says nothing).
    """
    group = math.gcd(chunk, 32)
    while group > 1 and chunk // group < 2 * k:
        group //= 2
    return group


def full_top_k(hidden: Tensor, weight: Tensor, k: int, seen_rows: Tensor | None = None,
               seen_items: Tensor | None = None, chunk: int | str = "auto") -> tuple[Tensor, Tensor]:
    """The ``k`` best items of every row over the whole table, scored in chunks so memory stays bounded.

    The same result as ``(hidden @ weight.T)`` with column 0 and the seen pairs set to ``-inf``,
    then ``topk``: NaN scores first (as ``torch.topk`` orders them), then by decreasing score; among
    equal scores the lower item id comes first. Slots with no item left (every item excluded) have
    score ``-inf`` and id 0; so do items scoring ``-inf``.

    Each chunk is one ``(B, d) x (d, C)`` product into a reused block; the padding id, the ids an
    earlier chunk covered and the seen pairs are set to ``-inf`` there. Then one pass takes the
    maxima of groups of columns, and only the groups whose maximum comes before the running k-th
    best score of the row are looked at element by element; their items become candidates, merged
    into the running top-k (:class:`_TopK`) once about ``B * k`` of them are waiting. A stale k-th
    score is a lower bound of the current one, so filtering with it only lets more candidates
    through. The first chunk filters with the k-th best of its group maxima (k items score at least
    that), so the first merge sees a few ``k`` candidates per row rather than the whole chunk.

    Args:
        hidden: ``(B, d)`` fp32 query vectors.
        weight: ``(I + 1, d)`` fp32 item table, row 0 = padding (never returned).
        k: items per row (capped at ``I``).
        seen_rows: ``(S,)`` row of each excluded (row, item) pair.
        seen_items: ``(S,)`` item id of each excluded pair.
        chunk: items scored at once, or ``"auto"`` (:func:`chunk_items`).

    Returns:
        ``(B, k)`` scores and ``(B, k)`` int64 item ids, best first.
    """
    size, rows_total = hidden.size(0), weight.size(0)
    k = max(0, min(int(k), rows_total - 1))
    chunk = chunk_items(chunk, size, rows_total)
    starts = _chunk_starts(rows_total, chunk)
    group = _group_size(chunk, k)
    best = _TopK(size, k, hidden)
    if k == 0 or size == 0:
        return best.scores, best.ids
    excluded = None
    if seen_rows is not None and seen_items is not None and seen_rows.numel():
        excluded = _PairsByItem(seen_rows, seen_items, starts, chunk)
    block = hidden.new_empty(size, chunk)  # (B, C), reused by every product
    # Group j holds columns j, j + G, j + 2G, ...: the maxima are then an elementwise maximum of g
    # contiguous (B, G) slices (vectorized), not g-wide reductions along the rows (1.4x slower).
    spread = chunk // group  # G
    groups = block.view(size, group, spread)  # (B, g, G)
    flat = block.view(-1)  # (B * C,)
    members = torch.arange(group, device=hidden.device) * spread  # (g,) column offsets within a group
    done = 0
    for index, start in enumerate(starts):
        torch.mm(hidden, weight[start : start + chunk].T, out=block)  # (B, C)
        skip = max(done, 1) - start
        if skip > 0:
            block[:, :skip] = float("-inf")  # padding (id 0) and ids an earlier chunk covered
        pairs = None if excluded is None else excluded.of_chunk(index, start)
        if pairs is not None:
            flat.index_fill_(0, pairs, float("-inf"))
        maxima = groups.amax(dim=1)  # (B, G) NaN where a group holds a NaN
        if index == 0 and k <= spread:
            # The k-th best group maximum: k items score at least that much, so the k-th best item
            # does too. Let this chunk through from there: the float just below it (so "strictly
            # before" means "at least"); when it is NaN, +inf (only NaN passes).
            kth = maxima.topk(k, dim=-1).values[:, -1:]  # (B, 1)
            threshold = torch.where(torch.isnan(kth), torch.inf, torch.nextafter(kth, kth.new_tensor(-math.inf)))
        elif index == 0:
            threshold = block.new_full((size, 1), float("-inf"))  # k beyond the groups: every item passes
        else:
            threshold = best.kth().nan_to_num(math.inf, math.inf, -math.inf)  # (B, 1)
        hit = torch.nonzero(_beats(maxima, threshold))  # (n, 2) row, group
        done = start + chunk
        if hit.size(0):
            rows, cols = hit[:, 0], hit[:, 1]  # (n,), (n,)
            values = flat.take((rows * chunk + cols).unsqueeze(-1) + members)  # (n, g) the hit groups' scores
            inside = torch.nonzero(_beats(values, threshold[rows]))  # (m, 2)
            first, offset = inside[:, 0], inside[:, 1]  # (m,), (m,)
            rows, columns, values = rows[first], offset * spread + cols[first], values[first, offset]  # (m,) x 3
            order = torch.argsort(rows * chunk + columns)  # by row, then id: what the merge's tie rule needs
            best.add(rows[order], start + columns[order], values[order])
        if best.pending_count >= size * k or index == len(starts) - 1:
            best.merge()
    return best.scores, best.ids
