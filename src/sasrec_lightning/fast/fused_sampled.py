"""Sampled losses over shared negatives as one fused operation: the logits block, computed once.

With ``M`` negatives shared by a batch (or by each sequence), the loss of ``N`` positions is a
function of one ``(N, M)`` logit block (``(B, L', M)`` per sequence). Written with ordinary
tensor operations (:func:`~sasrec_lightning.losses.sampled_softmax_loss`) that block is copied,
concatenated, masked and exponentiated into fresh ``(N, 1 + M)`` tensors about ten times per step,
and autograd keeps several of them for the backward pass; at 3,000 x 3,000 the block is 36 MB, so
these passes (and their page faults: fresh blocks above glibc's mmap threshold are returned to the
kernel when freed) took most of the step while the matrix products took ~15 %.

Here the block lives in one reused :class:`~sasrec_lightning.fast.workspace.Workspace` buffer:

* forward: the product is written into it; the logQ correction of the negatives is subtracted
  in place (skipped for uniform sampling, where it is a constant and cancels); accidental hits (a
  negative equal to the position's target) are set to ``-inf`` at their few ``(row, column)``
  pairs, found by binary search in the sorted negatives; then ``exp(s_neg - s_pos)`` in place,
  each row shifted by its own positive logit (no pass for the row maximum; the loss is
  ``log1p`` of the row sum; a negative ~88 above its positive would overflow, and then the block is
  computed again and shifted by the row maximum), and the row sums, so the softmax is never
  divided out;
* backward: no pass over the block at all. With ``e`` the kept exponentials, ``s`` their row sums
  (with the positive's ``exp``), the gradients are two products plus row-wise terms:
  ``dh = (e @ W_neg) / s + (p_pos - 1) w_pos`` and ``dW_neg = e^T @ (h / s)``, scaled by ``1 / N``.

:class:`FusedGBCE` does the same for gSASRec's generalized BCE over shared negatives (its
backward needs ``sigmoid`` of the block: one in-place pass).

The plain-PyTorch losses in :mod:`~sasrec_lightning.losses` stay the reference (the tests compare
values and gradients in float64); ``fused_loss: false`` selects them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..model.losses import at_least_fp32
from .workspace import Workspace, give_back

__all__ = ["SharedNegatives", "accidental_hits", "fused_sampled_softmax", "fused_gbce", "FusedSampledSoftmax",
           "FusedGBCE"]


class SharedNegatives:
    """Where each position's shared negatives are: one set for the batch, or one per sequence.

    The logit block has one row per position (``batch``) or per *slot* of a ``(B, L')`` grid that
    holds each sequence's positions in order (``sequence``; ``L'`` is the longest sequence's count,
    the other slots are padding and are ignored).

    Args:
        ids: ``(M,)`` negatives of the batch, or ``(B, M)`` of each sequence.
        rows: ``(N,)`` sequence of each position, non-decreasing (needed for ``(B, M)`` ids).
        table_rows: rows of the item table (``num_items + 1``); per sequence, at most ``B * M`` of
            them means each distinct item is looked up once (``lookup``, ``inverse``), ``None`` never.
    """

    def __init__(self, ids: Tensor, rows: Tensor | None = None, table_rows: int | None = None) -> None:
        self.ids = ids
        self.per_sequence = ids.dim() == 2
        if not self.per_sequence:
            self.lookup, self.inverse = ids, None  # (M,) one vector per negative
            return
        if rows is None:
            raise ValueError("per-sequence negatives (B, M) need `rows`, the sequence of each position")
        counts = torch.bincount(rows, minlength=ids.size(0))  # (B,)
        self.rows = rows
        self.column = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]  # (N,)
        self.width = int(counts.max()) if rows.numel() else 0  # L'
        self.slot = rows * self.width + self.column  # (N,) flat slot of each position in (B, L')
        # With more draws than table rows (B M >= I: Beauty's 128 x 3,000 of 54,543 rows) items repeat
        # and nearly every item is drawn: each distinct item is looked up once (U <= I vectors) and
        # copied out to the (B, M) grid in a reused buffer. Otherwise (large catalogues, few repeats)
        # every cell is looked up, as for batch-shared negatives.
        self.lookup, self.inverse = ids.reshape(-1), None  # (B * M,): the grid's own vectors
        if table_rows is not None and table_rows <= ids.numel():
            self.lookup, self.inverse = distinct_ids(ids.reshape(-1), table_rows)  # (U,), (B * M,)

    def block_rows(self, num_positions: int) -> int:
        """Rows of the logit block: ``N``, or ``B * L'`` slots per sequence."""
        return self.ids.size(0) * self.width if self.per_sequence else num_positions

    def to_slots(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """``(N, ...)`` per-position values laid out on the ``(B * L', ...)`` slots (others ``fill``)."""
        if not self.per_sequence:
            return values
        out = values.new_full((self.ids.size(0) * self.width, *values.shape[1:]), fill)
        return out.index_copy_(0, self.slot, values)


def distinct_ids(ids: Tensor, table_rows: int) -> tuple[Tensor, Tensor]:
    """``torch.unique(ids, sorted=True, return_inverse=True)`` by one pass over the table's rows, no sort.

    A presence mask of the rows and its running count: at 387k ids in Amazon Beauty's 54,543 rows
    1.8 ms against 11 ms for ``torch.unique`` (2 threads); with many more rows than ids, sorting wins.

    Args:
        ids: ``(n,)`` int64 row ids, each below ``table_rows``.
        table_rows: rows of the table the ids index.

    Returns:
        The ``(U,)`` sorted distinct ids and the ``(n,)`` index of each id among them.
    """
    present = torch.zeros(table_rows, dtype=torch.int64, device=ids.device).index_fill_(0, ids, 1)  # (R,)
    position = torch.cumsum(present, 0).sub_(1)  # (R,) index of each present row among them
    return present.nonzero().squeeze(1), position[ids]


def accidental_hits(negatives: SharedNegatives, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Block ``(row, column)`` of every negative equal to its position's target.

    Vectorized. Batch negatives are sorted once, each target is looked up with two binary searches
    and the few matches (``N M / I`` expected) are expanded; per-sequence negatives are compared
    with the targets of their sequence.

    Args:
        negatives: the shared negatives.
        targets: ``(N,)`` next items.

    Returns:
        Two ``(H,)`` int64 tensors: block rows (positions or slots) and negative columns.
    """
    ids = negatives.ids
    if negatives.per_sequence:
        # A comparison of the (B, L', M) grid (cheaper than sorting every row), then the columns of
        # only the few slots with a hit: nonzero over the whole grid took twice the comparison.
        grid = negatives.to_slots(targets, fill=-1).view(ids.size(0), negatives.width, 1)  # (B, L', 1)
        equal = ids.unsqueeze(1) == grid  # (B, L', M)
        sequence, slot = torch.nonzero(equal.any(dim=-1), as_tuple=True)  # slots with at least one hit
        hit, column = torch.nonzero(equal[sequence, slot], as_tuple=True)  # (H,) in (slot, column) order
        return (sequence * negatives.width + slot)[hit], column
    order = torch.argsort(ids, stable=True)  # (M,)
    ordered = ids[order]
    low = torch.searchsorted(ordered, targets, side="left")  # (N,)
    counts = torch.searchsorted(ordered, targets, side="right") - low  # (N,) hits of each position
    hit_rows = torch.repeat_interleave(torch.arange(counts.numel(), device=ids.device), counts)  # (H,)
    # k-th hit of a position: sorted position low[row] + k.
    offsets = torch.arange(hit_rows.numel(), device=ids.device) - (torch.cumsum(counts, 0) - counts)[hit_rows]
    return hit_rows, order[low[hit_rows] + offsets]


_GRID_SLICE = 1 << 21  # floats of the per-sequence negatives' gradient computed at once (8 MB in fp32)


def _logit_block(hidden: Tensor, negative_vectors: Tensor, negatives: SharedNegatives,
                 workspace: Workspace | None) -> tuple[Tensor, object]:
    """The ``(R, M)`` logits ``hidden @ W_neg^T`` (per sequence: a batched product on the slots)."""
    rows = negatives.block_rows(hidden.size(0))
    m = negatives.ids.size(-1)
    if workspace is None:
        block, loan = hidden.new_empty(rows * m), None
    else:
        block, loan = workspace.take(rows * m, hidden)
    block = block.view(rows, m)
    _write_logits(block, hidden, negative_vectors, negatives)
    return block, loan


def _write_logits(block: Tensor, hidden: Tensor, negative_vectors: Tensor, negatives: SharedNegatives) -> None:
    """Write ``hidden @ W_neg^T`` into the ``(R, M)`` block."""
    if negatives.per_sequence:
        slots = negatives.to_slots(hidden).view(negatives.ids.size(0), negatives.width, -1)  # (B, L', d)
        out = block.view(negatives.ids.size(0), negatives.width, -1)  # (B, L', M)
        torch.bmm(slots, negative_vectors.transpose(1, 2), out=out)
    else:
        torch.mm(hidden, negative_vectors.T, out=block)


def _correct_logits(block: Tensor, negatives: SharedNegatives, targets: Tensor, log_q: Tensor | None) -> None:
    """In place: ``- log Q`` of each negative, and ``-inf`` where a negative is its position's target."""
    if log_q is not None:
        correction = log_q[negatives.ids]  # (M,) or (B, M)
        if negatives.per_sequence:
            block.view(negatives.ids.size(0), negatives.width, -1).sub_(correction.unsqueeze(1))
        else:
            block.sub_(correction)
    hit_rows, hit_columns = accidental_hits(negatives, targets)
    block.index_put_((hit_rows, hit_columns), block.new_tensor(float("-inf")))


def _negative_gradients(exps: Tensor, hidden_scaled: Tensor, negative_vectors: Tensor,
                        negatives: SharedNegatives, out: Tensor) -> Tensor:
    """``e @ W_neg`` per position ``(N, d)``; ``e^T @ h_scaled`` per looked-up negative written into ``out``.

    ``hidden_scaled`` is ``(N, d)``: each position's hidden state times its row weight. ``out`` is
    ``(M, d)``, per sequence ``(B * M, d)``, or ``(U, d)`` when each distinct item was looked up once:
    then the gradient of the ``(B, M, d)`` grid is summed per item, a few sequences at a time (a slice
    of ~8 MB, not a second grid).
    """
    if negatives.per_sequence:
        b, width, m = negatives.ids.size(0), negatives.width, negatives.ids.size(-1)
        e = exps.view(b, width, m)  # (B, L', M)
        per_position = torch.bmm(e, negative_vectors).view(b * width, -1).index_select(0, negatives.slot)  # (N, d)
        slots = negatives.to_slots(hidden_scaled).view(b, width, -1)  # (B, L', d), padding slots zero
        if negatives.inverse is None:  # every cell looked up: its gradient goes straight into `out`
            torch.bmm(e.transpose(1, 2), slots, out=out.view(b, m, -1))  # (B, M, d)
            return per_position
        d = slots.size(-1)
        step = max(1, _GRID_SLICE // max(1, m * d))  # sequences per slice
        cells = negatives.inverse.view(b, m)
        part = slots.new_empty(min(step, b), m, d)
        out.zero_()
        for start in range(0, b, step):
            stop = min(start + step, b)
            grid = torch.bmm(e[start:stop].transpose(1, 2), slots[start:stop], out=part[: stop - start])  # (s, M, d)
            out.index_add_(0, cells[start:stop].reshape(-1), grid.view(-1, d))  # (U, d)
        return per_position
    torch.mm(exps.T, hidden_scaled, out=out)  # (M, d)
    return exps @ negative_vectors  # (N, d)


class _FusedSampledSoftmax(torch.autograd.Function):
    """Mean over positions of ``logsumexp([s_pos, s_neg]) - s_pos`` with logQ and hit masking."""

    @staticmethod
    def forward(ctx, hidden: Tensor, vectors: Tensor, negatives: SharedNegatives, targets: Tensor,
                log_q: Tensor | None, workspace: Workspace | None, grid_workspace: Workspace | None) -> Tensor:
        positive_vectors, negative_vectors, grid_loan = _negative_grid(vectors, negatives, grid_workspace)
        block, loan = _logit_block(hidden, negative_vectors, negatives, workspace)  # (R, M)
        positive = (hidden * positive_vectors).sum(dim=-1)  # (N,)
        if log_q is not None:
            positive = positive - log_q[targets]
        _correct_logits(block, negatives, targets, log_q)
        positive_rows = negatives.to_slots(positive)  # (R,) slots: padding slots 0 (ignored)
        # Each row shifted by its own positive logit: no pass for the row maximum. The row's sum then
        # includes the positive's exp(0) = 1, so nothing that matters underflows, and the loss is
        # log1p(sum over the negatives). Only a negative more than ~88 above its positive overflows
        # exp; then the block is computed again and shifted by the row maximum.
        block.sub_(positive_rows.unsqueeze(-1)).exp_()  # (R, M) exp(s_neg - s_pos); hits -> 0
        negative_sums = block.sum(dim=-1)  # (R,)
        if bool(torch.isfinite(negative_sums).all()):
            positive_exp = torch.ones_like(negative_sums)  # (R,)
            losses = torch.log1p(negative_sums)  # (R,) logsumexp - s_pos
        else:
            _write_logits(block, hidden, negative_vectors, negatives)
            _correct_logits(block, negatives, targets, log_q)
            row_max = torch.maximum(block.amax(dim=-1), positive_rows)  # (R,)
            block.sub_(row_max.unsqueeze(-1)).exp_()  # (R, M) exp(logit - max)
            positive_exp = torch.exp(positive_rows - row_max)  # (R,)
            negative_sums = block.sum(dim=-1)
            losses = row_max - positive_rows + (negative_sums + positive_exp).log()  # (R,)
        sums = negative_sums + positive_exp  # (R,) the softmax's denominator, in units of the shift
        if negatives.per_sequence:
            losses, sums, positive_exp = (t.index_select(0, negatives.slot) for t in (losses, sums, positive_exp))
        ctx.save_for_backward(hidden, vectors, negative_vectors, block, sums, positive_exp)
        ctx.negatives, ctx.loans = negatives, (loan, grid_loan)
        return losses.mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        hidden, vectors, negative_vectors, exps, sums, positive_exp = ctx.saved_tensors
        negatives = ctx.negatives
        positive_vectors = vectors[: hidden.size(0)]
        scale = grad_output / hidden.size(0)  # d mean / d position loss
        inverse = (scale / sums).unsqueeze(-1)  # (N, 1): softmax = exps / sums
        grad_vectors = torch.empty_like(vectors)  # (N + M', d): one buffer, no concatenation
        grad_positive, grad_negative = grad_vectors.split([hidden.size(0), negatives.lookup.numel()])
        negative_part = _negative_gradients(exps, hidden * inverse, negative_vectors, negatives, grad_negative)
        for loan in ctx.loans:
            give_back(loan)
        positive_weight = positive_exp.unsqueeze(-1) * inverse - scale  # (N, 1): (p_pos - 1) / N
        grad_hidden = negative_part.mul_(inverse).addcmul_(positive_weight, positive_vectors)  # (N, d)
        torch.mul(hidden, positive_weight, out=grad_positive)  # (N, d)
        return grad_hidden, grad_vectors, None, None, None, None, None


class _FusedGBCE(torch.autograd.Function):
    """Mean over positions of ``(beta softplus(-s_pos) + sum_j softplus(s_neg_j)) / (M + 1)``, hits left out."""

    @staticmethod
    def forward(ctx, hidden: Tensor, vectors: Tensor, negatives: SharedNegatives, targets: Tensor, beta: float,
                workspace: Workspace | None, grid_workspace: Workspace | None) -> Tensor:
        positive_vectors, negative_vectors, grid_loan = _negative_grid(vectors, negatives, grid_workspace)
        block, loan = _logit_block(hidden, negative_vectors, negatives, workspace)  # (R, M)
        _correct_logits(block, negatives, targets, None)  # hits -> -inf: softplus(-inf) = 0
        positive = (hidden * positive_vectors).sum(dim=-1)  # (N,)
        negative_sums = _softplus_row_sums(block)  # (R,)
        if negatives.per_sequence:
            negative_sums = negative_sums.index_select(0, negatives.slot)  # (N,)
        per_position = beta * torch.nn.functional.softplus(-positive) + negative_sums  # (N,)
        ctx.save_for_backward(hidden, vectors, negative_vectors, block, positive)
        ctx.negatives, ctx.loans, ctx.beta = negatives, (loan, grid_loan), beta
        return per_position.mean() / (negatives.ids.size(-1) + 1)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        hidden, vectors, negative_vectors, block, positive = ctx.saved_tensors
        negatives = ctx.negatives
        positive_vectors = vectors[: hidden.size(0)]
        scale = grad_output / (hidden.size(0) * (negatives.ids.size(-1) + 1))
        sigmoid = block.sigmoid_()  # (R, M) d softplus(s) / ds; hits: sigmoid(-inf) = 0
        grad_vectors = torch.empty_like(vectors)  # (N + M', d)
        grad_positive, grad_negative = grad_vectors.split([hidden.size(0), negatives.lookup.numel()])
        negative_part = _negative_gradients(sigmoid, hidden * scale, negative_vectors, negatives, grad_negative)
        for loan in ctx.loans:
            give_back(loan)
        positive_weight = (-ctx.beta * torch.sigmoid(-positive)).unsqueeze(-1) * scale  # (N, 1)
        grad_hidden = negative_part.mul_(scale).addcmul_(positive_weight, positive_vectors)
        torch.mul(hidden, positive_weight, out=grad_positive)
        return grad_hidden, grad_vectors, None, None, None, None, None


def _softplus_row_sums(block: Tensor, rows_per_slice: int = 256) -> Tensor:
    """``softplus(block).sum(-1)`` through slices of rows, so the temporary stays a few MB.

    A whole-block temporary (36 MB at 3,072 x 3,000) is above glibc's mmap threshold, so each step
    would pay for it again in page faults; slices of 256 rows (3 MB) are reused from the heap.
    """
    if block.size(0) == 0:
        return block.new_zeros(0)
    return torch.cat([torch.nn.functional.softplus(part).sum(dim=-1) for part in block.split(rows_per_slice)])


def _vectors(items, targets: Tensor, negatives: SharedNegatives) -> Tensor:
    """Item vectors ``(N + M', d)`` of the targets, then the negatives, from one lookup (at least fp32).

    ``M'`` is ``M`` shared by the batch, or per sequence the ``U`` distinct items of the ``(B, M)``
    draws. One lookup: one gradient accumulation into the item table per step; the fused backward
    hands back one ``(N + M', d)`` gradient, so nothing is concatenated.
    """
    return at_least_fp32(items(torch.cat([targets, negatives.lookup])))


def _negative_grid(vectors: Tensor, negatives: SharedNegatives,
                   workspace: Workspace | None) -> tuple[Tensor, Tensor, object]:
    """The target vectors ``(N, d)``, the negatives' ``(M, d)`` or ``(B, M, d)``, and the loan of the latter.

    Shared by the batch, or per sequence with every cell looked up, the negatives are a view of
    ``vectors``. When each distinct item was looked up once, its vector is copied to its cells of the
    ``(B, M, d)`` grid, in a reused buffer (at 128 x 3,000 x 64 it is 98 MB, and a fresh one each step
    is paid for again in page faults, like the logit block).
    """
    positive, negative = vectors.split([vectors.size(0) - negatives.lookup.numel(), negatives.lookup.numel()])
    if negatives.inverse is None:
        return positive, negative.view(*negatives.ids.shape, -1), None
    cells = negatives.inverse.numel()
    if workspace is None:
        buffer, loan = negative.new_empty(cells * negative.size(-1)), None
    else:
        buffer, loan = workspace.take(cells * negative.size(-1), negative)
    grid = torch.index_select(negative, 0, negatives.inverse, out=buffer.view(cells, -1))  # (B * M, d)
    return positive, grid.view(*negatives.ids.shape, -1), loan


def fused_sampled_softmax(items, hidden: Tensor, targets: Tensor, shared: Tensor, log_q: Tensor | None = None,
                          rows: Tensor | None = None, workspace: Workspace | None = None,
                          grid_workspace: Workspace | None = None) -> Tensor:
    """Sampled softmax over shared negatives as one fused operation (same value as ``sampled_softmax_loss``).

    Args:
        items: the scored items (:class:`~sasrec_lightning.model.items.ItemRepresentation`).
        hidden: ``(N, d)`` hidden states at real positions, row-major.
        targets: ``(N,)`` next items.
        shared: ``(M,)`` negatives of the batch or ``(B, M)`` of each sequence.
        log_q: optional ``(I + 1,)`` log expected count of each item in a draw (``None``: no
            correction; pass ``None`` for uniform sampling, where it cancels).
        rows: ``(N,)`` sequence of each position (needed with ``(B, M)`` negatives).
        workspace: reused buffer of the logit block (``None``: a fresh one).
        grid_workspace: reused buffer of the ``(B, M, d)`` negative vectors per sequence.

    Returns:
        Scalar mean loss (fp32).
    """
    hidden = at_least_fp32(hidden)
    log_q = None if log_q is None else log_q.to(hidden.dtype)
    return _apply_fused(_FusedSampledSoftmax, items, hidden, targets, shared, rows, log_q, workspace,
                        grid_workspace)


def fused_gbce(items, hidden: Tensor, targets: Tensor, shared: Tensor, beta: float, rows: Tensor | None = None,
               workspace: Workspace | None = None, grid_workspace: Workspace | None = None) -> Tensor:
    """GSASRec's generalized BCE over shared negatives, fused (value of ``gbce_shared_loss``).

    Args:
        items: the scored items.
        hidden: ``(N, d)`` hidden states at real positions.
        targets: ``(N,)`` next items.
        shared: ``(M,)`` or ``(B, M)`` negatives.
        beta: the power on the positive probability (:func:`~sasrec_lightning.losses.gbce_beta`).
        rows: ``(N,)`` sequence of each position (with ``(B, M)`` negatives).
        workspace: reused buffer of the logit block.
        grid_workspace: reused buffer of the ``(B, M, d)`` negative vectors per sequence.

    Returns:
        Scalar mean loss (fp32).
    """
    return _apply_fused(_FusedGBCE, items, at_least_fp32(hidden), targets, shared, rows, float(beta), workspace,
                        grid_workspace)


def _apply_fused(function: type[torch.autograd.Function], items, hidden: Tensor, targets: Tensor, shared: Tensor,
                 rows: Tensor | None, *options) -> Tensor:
    """``function(hidden, vectors, negatives, targets, *options)`` in fp32 (autocast off), after one lookup.

    With no position the loss is a zero that still reaches the hidden states and the item table.
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        negatives = SharedNegatives(shared, rows, items.num_items + 1)
        vectors = _vectors(items, targets, negatives)
        if hidden.size(0) == 0:
            return (hidden.sum() + vectors.sum()) * 0.0
        return function.apply(hidden, vectors, negatives, targets, *options)


class FusedSampledSoftmax(nn.Module):
    """The fused sampled softmax, with its reused blocks: swapped for the written-out one by ``fast/speed.py``.

    Called as :class:`~sasrec_lightning.model.losses.SampledSoftmax` is:
    ``(items, hidden, targets, shared, log_q, rows) -> loss``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.workspace = Workspace()  # the logit block, reused from step to step
        self.grid_workspace = Workspace()  # per sequence: the (B, M, d) negative vectors, reused too

    def forward(self, items, hidden: Tensor, targets: Tensor, shared: Tensor, log_q: Tensor | None,
                rows: Tensor | None) -> Tensor:
        return fused_sampled_softmax(items, hidden, targets, shared, log_q, rows, self.workspace, self.grid_workspace)

    def release_memory(self) -> None:
        self.workspace.clear()
        self.grid_workspace.clear()


class FusedGBCE(nn.Module):
    """The fused gBCE over shared negatives, with its reused blocks (swapped for ``losses.SharedGBCE``)."""

    def __init__(self) -> None:
        super().__init__()
        self.workspace = Workspace()
        self.grid_workspace = Workspace()

    def forward(self, items, hidden: Tensor, targets: Tensor, shared: Tensor, beta: float,
                rows: Tensor | None) -> Tensor:
        return fused_gbce(items, hidden, targets, shared, beta, rows, self.workspace, self.grid_workspace)

    def release_memory(self) -> None:
        self.workspace.clear()
        self.grid_workspace.clear()
