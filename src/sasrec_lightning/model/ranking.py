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

__all__ = ["sampled_ranks", "full_ranks", "full_top_k", "chunk_items", "tie_margin", "max_vector_norm",
           "exact_scores"]


def sampled_ranks(hidden: Tensor, vectors: Tensor) -> tuple[Tensor, Tensor]:
    """Ranks of the target among sampled candidates, ties settled exactly (:func:`tie_margin`).

    Args:
        hidden: ``(B, d)`` fp32 query vectors.
        vectors: ``(B, 1 + n, d)`` fp32 vectors of the target (column 0) and its ``n`` negatives.

    Returns:
        ``(B,)`` int64 ranks and the ``(B,)`` target scores.
    """
    scores = (vectors[:, 1:] * hidden.unsqueeze(1)).sum(dim=-1)  # (B, n)
    exact = exact_scores(hidden, vectors[:, 0])  # (B,) float64
    margin = tie_margin(hidden, max_vector_norm(vectors.reshape(-1, vectors.size(-1))))  # (B,)
    low, high = _band(exact, margin)  # (B, 1) x 2
    below = torch.lt(scores, low)  # (B, n) certainly below the target
    band = torch.le(scores, high) & ~below  # (B, n) too close to tell from the fp32 scores
    if band.any():
        rows, columns = torch.nonzero(band, as_tuple=True)  # (m,), (m,)
        at_least = _scores_at_least(hidden[rows], vectors[rows, columns + 1], vectors[rows, 0])  # (m,)
        below[rows[~at_least], columns[~at_least]] = True
    return (scores.size(1) - below.sum(dim=-1)).to(torch.int64), exact.to(scores.dtype)


def max_vector_norm(table: Tensor) -> Tensor:
    """An upper bound of the Euclidean norm of every finite row of ``table`` ``(N, d)``: a float64 0-dim tensor.

    The norms are taken in the table's precision and the largest is raised by ``2 d u`` of itself (the
    worst rounding of a norm of ``d`` terms). Rows holding NaN or infinity are left out: their scores
    are NaN or infinite, and comparisons with those are exact (see :func:`tie_margin`).
    """
    norms = torch.linalg.vector_norm(table, dim=-1)  # (N,)
    norms = torch.where(torch.isfinite(norms), norms, 0.0)
    largest = norms.max().double() if norms.numel() else norms.new_zeros((), dtype=torch.float64)
    return largest * (1.0 + 2.0 * table.size(-1) * torch.finfo(table.dtype).eps)


def exact_scores(hidden: Tensor, vectors: Tensor) -> Tensor:
    """``(B,)`` dot products of ``(B, d)`` fp32 rows in float64: exact up to one float64 rounding per term."""
    return (hidden.double() * vectors.double()).sum(dim=-1)


def _unit_roundoff() -> float:
    """The unit roundoff of fp32 matrix products: 2^-24, coarser when lower-precision kernels are allowed."""
    return {"highest": 2.0**-24, "high": 2.0**-11}.get(torch.get_float32_matmul_precision(), 2.0**-8)


def tie_margin(hidden: Tensor, table_norm: Tensor | float) -> Tensor:
    """``(B,)`` float64 half-width of the band around each target's score where fp32 scores cannot order items.

    A dot product of length ``d`` computed in fp32, in any order and with or without fused
    multiply-adds, is within ``g_d * sum_j |h_j v_j| <= g_d * |h| * |v|`` of its exact value, with
    ``g_d = d u / (1 - d u)`` and ``u`` the unit roundoff (Higham, *Accuracy and Stability of Numerical
    Algorithms*, 2002, Eq. 3.5). The target's own score is taken in float64 (:func:`exact_scores`), so
    a candidate whose fp32 score lies further than ``g_d |h| R`` from it (``R`` the largest
    item-vector norm) has its exact score on the same side, on every CPU and GPU. Candidates inside
    the band are settled exactly (:func:`_scores_at_least`). The bound is widened by one part in
    10^6 for the rounding of the float64 terms and of the norms.

    Args:
        hidden: ``(B, d)`` query vectors.
        table_norm: ``R``, the largest norm of an item vector that can be scored.

    Returns:
        ``(B,)`` float64 margins (not finite when the query is not).
    """
    length, unit = hidden.size(-1), _unit_roundoff()
    gamma = length * unit / (1.0 - length * unit) * (1.0 + 1e-6)
    return gamma * torch.linalg.vector_norm(hidden.double(), dim=-1) * table_norm  # (B,)


def _band(target_scores: Tensor, margin: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, 1)`` fp32 ends of each target's tie band, rounded outwards; NaN for a non-finite target or margin.

    ``target_scores`` and ``margin`` are float64; each end is rounded away from the target, so the fp32
    band holds the exact one. Every comparison with NaN is false, so a non-finite target has no
    candidate below it and ranks last (the rule of :func:`~sasrec_lightning.metrics.beats_target`).
    """
    finite = torch.isfinite(target_scores) & torch.isfinite(margin)  # (B,)
    low, high = (target_scores - margin).float(), (target_scores + margin).float()  # (B,) round to nearest
    low = torch.nextafter(low, torch.full_like(low, -math.inf))  # one float below: covers the rounding
    high = torch.nextafter(high, torch.full_like(high, math.inf))
    low, high = torch.where(finite, low, torch.nan), torch.where(finite, high, torch.nan)
    return low.unsqueeze(-1), high.unsqueeze(-1)


def _scores_at_least(hidden: Tensor, candidates: Tensor, targets: Tensor) -> Tensor:
    """Whether each candidate scores at least its target, decided on the vectors: ``(m,)`` bool.

    ``(v_c - v_t) . h`` in float64: the difference of two fp32 vectors and each product with an fp32
    query are exact there, so identical vectors give exactly 0 (a tie, counted against the target)
    and vectors differing in one coordinate give the exact sign; only the float64 sum of ``d`` terms
    rounds. Computed a bounded number of pairs at a time.

    Args:
        hidden: ``(m, d)`` queries.
        candidates: ``(m, d)`` candidate vectors.
        targets: ``(m, d)`` target vectors.
    """
    out = torch.empty(hidden.size(0), dtype=torch.bool, device=hidden.device)
    step = max(1, 2**22 // max(hidden.size(-1), 1))  # pairs per slice: ~32 MB of float64 differences
    for first in range(0, hidden.size(0), step):
        part = slice(first, first + step)
        difference = candidates[part].double() - targets[part].double()  # (s, d)
        out[part] = (difference * hidden[part].double()).sum(dim=-1) >= 0  # (s,)
    return out


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


def full_ranks(hidden: Tensor, weight: Tensor, targets: Tensor, seen_rows: Tensor, seen_items: Tensor,
               chunk: int | str = "auto", exclude_seen: bool = True,
               table_norm: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """Rank of the target among all items, scored in chunks so memory stays bounded.

    Ties are decided by construction, not by how a matrix product rounds: a CPU's BLAS can round
    the same dot product differently in two columns of one product, so equal item vectors need not
    get equal fp32 scores. The target's score is taken in float64; an item whose fp32 score lies
    outside the target's tie band (:func:`tie_margin`: wider than any rounding of the product) is
    ordered by its score, and an item inside the band is settled on the vectors themselves
    (:func:`_scores_at_least`: an exact tie counts against the target, one ulp apart in one
    coordinate is ordered exactly). The rank counts the items not below the target: above it, tied
    with it, or NaN (a NaN score counts against the target, the rule of
    :func:`~sasrec_lightning.metrics.beats_target`); a non-finite target ranks after every competitor.

    Each chunk is one ``(B, d) x (d, C)`` product into a reused ``(B, C)`` block, where the items that
    are no competitors (the target itself, seen items, the padding id, ids an earlier chunk counted)
    are set to ``-inf``; then two comparisons and two row counts (:class:`_BandCounter`). This costs
    one comparison and one count more per chunk than ordering by the fp32 scores alone
    (docs/performance.md).

    Args:
        hidden: ``(B, d)`` fp32 query vectors.
        weight: ``(I + 1, d)`` fp32 item table, row 0 = padding (never ranked).
        targets: ``(B,)`` held-out item ids.
        seen_rows: ``(S,)`` batch row of each history item.
        seen_items: ``(S,)`` the history items.
        chunk: items scored at once (at most ``2**24``, where a float32 count stays exact), or ``"auto"``
            (:func:`chunk_items`).
        exclude_seen: ignore the user's history items (except the target itself).
        table_norm: the largest norm of a row of ``weight`` (:func:`max_vector_norm`), when the caller
            knows it already (e.g. once per evaluation pass); computed here otherwise.

    Returns:
        ``(B,)`` int64 ranks and the ``(B,)`` target scores.
    """
    size = targets.size(0)
    rows_total = weight.size(0)
    chunk = min(chunk_items(chunk, size, rows_total), MAX_CHUNK)
    starts = _chunk_starts(rows_total, chunk)
    target_vectors = weight[targets]  # (B, d)
    target_scores = exact_scores(hidden, target_vectors)  # (B,) float64
    if table_norm is None:
        table_norm = max_vector_norm(weight)
    low, high = _band(target_scores, tie_margin(hidden, table_norm))  # (B, 1) x 2, fp32 (NaN: target not finite)
    ranked = torch.isfinite(low.squeeze(1))  # (B,) rows whose items are counted
    low, high = torch.where(ranked.unsqueeze(1), low, math.inf), torch.where(ranked.unsqueeze(1), high, math.inf)
    counter = _BandCounter(hidden, weight, target_vectors, low, high, chunk)

    # Never competitors: each target (it does not outrank itself) and, optionally, the history.
    # Excluding a history item that is the target is excluding the target: harmless.
    user_rows = torch.arange(size, device=targets.device)  # (B,)
    rows, items = (torch.cat([user_rows, seen_rows]), torch.cat([targets, seen_items])) if exclude_seen \
        else (user_rows, targets)
    excluded = _PairsByItem(rows, items, starts, chunk)
    done = 0  # item ids below this were counted by an earlier chunk
    for index, start in enumerate(starts):
        block = counter.product(start)  # (B, C)
        pairs = excluded.of_chunk(index, start)
        if pairs is not None:
            block.view(-1).index_fill_(0, pairs, -math.inf)
        skip = max(done, 1) - start  # padding (id 0) and ids already counted: no competitors
        if skip > 0:
            block[:, :skip] = -math.inf
        counter.count(start)
        done = start + chunk
    # A non-finite target ranks after every competitor: the items 1..I but its excluded ones.
    keys = torch.unique(rows * rows_total + items)  # (S',) distinct (row, item) pairs
    competitors = (rows_total - 1) - torch.bincount(keys // rows_total, minlength=size)  # (B,)
    ranks = torch.where(ranked, counter.ranks(), competitors)
    return ranks, target_scores.to(hidden.dtype)


class _BandCounter:
    """Counts, chunk by chunk, the items of each row that score at least its target (see :func:`full_ranks`).

    Each chunk's block is compared with both ends of every row's band, the certainly-below result
    into a second reused block and the below-or-in-the-band one in place, and each is counted per row
    by a product with a column of ones (exact: integers below ``2**24``). Only the items inside a
    band (the rows whose two counts differ) are then decided on the vectors
    (:func:`_scores_at_least`). Non-competitors are ``-inf``, below any band; a NaN score compares
    false with either end, so it counts against the target.

    Args:
        hidden: ``(B, d)`` queries.
        weight: ``(I + 1, d)`` item table.
        target_vectors: ``(B, d)`` each row's target vector.
        low: ``(B, 1)`` lower end of each row's tie band (``+inf``: nothing of the row is counted).
        high: ``(B, 1)`` its upper end.
        chunk: items per chunk ``C``.
    """

    def __init__(self, hidden: Tensor, weight: Tensor, target_vectors: Tensor, low: Tensor, high: Tensor,
                 chunk: int) -> None:
        self.hidden, self.weight, self.target_vectors, self.low, self.high = hidden, weight, target_vectors, low, high
        self.block = hidden.new_empty(hidden.size(0), chunk)  # (B, C) the products, then "below or in the band"
        self.mask = torch.empty_like(self.block)  # (B, C) "certainly below"
        self.ones = hidden.new_ones(chunk, 1)  # (C, 1): a row count as a product, fast on any block
        self.at_least = hidden.new_zeros(hidden.size(0), dtype=torch.float64)  # (B,) counted so far

    def product(self, start: int) -> Tensor:
        """The chunk's ``(B, C)`` scores, in the reused block (for the caller to mark non-competitors)."""
        return torch.mm(self.hidden, self.weight[start : start + self.block.size(1)].T, out=self.block)

    def ranks(self) -> Tensor:
        """``(B,)`` int64 counts so far."""
        return self.at_least.round().to(torch.int64)

    def count(self, start: int) -> None:
        """Add the chunk starting at item ``start`` (its block filled by :meth:`product`) to the counts."""
        block, mask = self.block, self.mask
        torch.lt(block, self.low, out=mask)  # (B, C) 1.0: certainly below
        block.le_(self.high)  # (B, C) 1.0: below or in the band
        below, near = torch.mm(mask, self.ones).squeeze(1), torch.mm(block, self.ones).squeeze(1)  # (B,) x 2
        self.at_least += block.size(1) - below.double()  # not below: above, in the band, or NaN
        if not torch.equal(near, below):  # some rows have items in their band: settle those items
            rows = torch.nonzero(near != below).squeeze(1)  # (R,)
            band = block.index_select(0, rows) > mask.index_select(0, rows)  # (R, C)
            picked, columns = torch.nonzero(band, as_tuple=True)  # (m,), (m,)
            rows, items = rows[picked], start + columns  # (m,), (m,)
            at_least = _scores_at_least(self.hidden[rows], self.weight[items], self.target_vectors[rows])  # (m,)
            self.at_least.index_add_(0, rows, (~at_least).double(), alpha=-1.0)


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
               seen_items: Tensor | None = None, chunk: int | str = "auto",
               blocked: Tensor | None = None) -> tuple[Tensor, Tensor]:
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
        blocked: ``(I + 1,)`` bool, items never returned to any row (scored ``-inf``), or ``None``.

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
        if blocked is not None:
            block.masked_fill_(blocked[start : start + chunk], float("-inf"))  # (C,) over every row
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
