"""Exact full-softmax cross-entropy over the whole catalogue, computed in item chunks.

The naive loss materializes an ``(N, I)`` logit matrix (positions x items) and keeps it, plus
its softmax, for the backward pass: at 1M items and a few thousand positions that is tens of
GiB. :class:`ChunkedCrossEntropy` instead walks over the items in chunks of ``C``:

* forward: an online log-sum-exp (running max ``m`` and running sum ``s``) gives ``lse`` per
  position; only ``hidden``, ``weight``, ``targets`` and ``lse`` ``(N,)`` are saved;
* backward: each chunk's logits are recomputed, ``p = exp(logits - lse)`` is the exact softmax
  of that chunk, and ``dh += p W_c``, ``dW_c = p^T h``; the target term ``-W[y]`` / ``-h`` is
  added once.

Peak extra memory is ``O(N * C)`` plus the dense ``(I + 1, d)`` weight gradient (which any
training step holds) instead of ``O(N * I)``, and the result equals the naive loss
up to float rounding. When the catalogue fits in a single chunk the exponentials ``exp(logits - m)``
and their row sums are kept from the forward pass, so the backward pass recomputes nothing and
divides its two ``(N, d)`` products by the sums instead of normalizing the ``(N, I)`` block.

The ``(N, C)`` blocks are large (160 MB for an average Amazon Beauty batch, over 1 GB for the
longest), and a freshly allocated block of that size is paid for again in page faults on first
touch each step; a speed part (``fast/workspace.py``) lends one kept block instead
(``docs/performance.md``).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

__all__ = ["BlockSource", "ChunkedCrossEntropy", "chunked_cross_entropy"]


class BlockSource(Protocol):
    """Where the ``(N, C)`` logit blocks come from (without one, each block is a fresh tensor).

    The speed parts' :class:`~sasrec_lightning.fast.workspace.Workspace` keeps one from step to step.
    """

    def take(self, numel: int, like: Tensor) -> tuple[Tensor, Any]:
        """A flat tensor of ``numel`` elements like ``like``, and a loan to give back (or ``None``)."""


def _give_back(loan: Any) -> None:
    if loan is not None:
        loan.give_back()


class ChunkedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``softmax(hidden @ weight[1:].T)`` against ``targets``, item-chunked."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int,
                workspace: BlockSource | None = None) -> Tensor:
        """Compute the loss.

        Args:
            ctx: autograd context.
            hidden: ``(N, d)`` fp32 hidden states of real positions.
            weight: ``(I + 1, d)`` fp32 item vectors; row 0 (padding) is never a class.
            targets: ``(N,)`` item ids in ``1..I``.
            chunk_size: items scored at once.
            workspace: where the ``(N, C)`` blocks come from (``None``: fresh tensors).

        Returns:
            Scalar mean loss.
        """
        num_rows = weight.size(0)
        running_max = hidden.new_full((hidden.size(0),), float("-inf"))  # (N,)
        running_sum = hidden.new_zeros(hidden.size(0))  # (N,)
        single = chunk_size >= num_rows - 1
        keep = single and any(ctx.needs_input_grad[:2])  # the backward pass reuses the exponentials
        block, loan = _block(workspace, hidden, chunk_size, num_rows)
        probs = None
        for start in range(1, num_rows, chunk_size):
            logits = _chunk_logits(hidden, weight[start : start + chunk_size], block)  # (N, C)
            chunk_max = logits.amax(dim=-1)  # (N,) (amax: a third of max()'s time, no indices)
            new_max = torch.maximum(running_max, chunk_max)  # (N,)
            logits.sub_(new_max.unsqueeze(-1)).exp_()  # (N, C) in place: exp(logit - m)
            running_sum = running_sum * torch.exp(running_max - new_max) + logits.sum(dim=-1)
            running_max = new_max
            if single:
                # exp(logit - m), not yet divided by the sum: the backward divides the two (N, d)
                # products instead of this (N, I) block (one pass over it less).
                probs = logits
        lse = running_max + running_sum.log()  # (N,)
        target_logits = (hidden * weight[targets]).sum(dim=-1)  # (N,)
        ctx.chunk_size, ctx.workspace = chunk_size, workspace
        saved = (probs, running_sum) if keep else (lse.new_empty(0), lse.new_empty(0))
        ctx.save_for_backward(hidden, weight, targets, lse, *saved)
        # The kept exponentials hold the block until the backward pass has used them (or the graph
        # is dropped without one: the loan goes with the context). Should a retained graph be run
        # backward again after the block was lent anew, autograd's version counter (shared by all
        # views of the block) refuses the overwritten exponentials instead of using them.
        ctx.loan = loan if keep else _give_back(loan)
        ctx.kept = keep
        return (lse - target_logits).mean()

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        hidden, weight, targets, lse, exps, sums = ctx.saved_tensors
        scale = grad_output / hidden.size(0)
        grad_weight = torch.zeros_like(weight)  # (I + 1, d); row 0 (padding) stays zero
        if ctx.kept:
            # softmax = exps / sums row-wise: (exps @ W) / sums and exps^T @ (hidden / sums).
            grad_hidden = (exps @ weight[1:]).div_(sums.unsqueeze(-1))  # (N, d)
            torch.mm(exps.T, hidden / sums.unsqueeze(-1), out=grad_weight[1:])  # (I, d)
            _give_back(ctx.loan)
        else:
            grad_hidden = torch.zeros_like(hidden)  # (N, d)
            chunk = ctx.chunk_size
            block, loan = _block(ctx.workspace, hidden, chunk, weight.size(0))
            for start in range(1, weight.size(0), chunk):
                w = weight[start : start + chunk]  # (C, d)
                p = _chunk_logits(hidden, w, block).sub_(lse.unsqueeze(-1)).exp_()  # (N, C) softmax of this chunk
                grad_hidden.addmm_(p, w)  # (N, d)
                grad_weight[start : start + chunk] = p.T @ hidden  # (C, d)
            _give_back(loan)
        grad_hidden.sub_(weight[targets])  # d(-target logit)/dh
        grad_weight.index_add_(0, targets, -hidden)  # d(-target logit)/dW[y]
        return grad_hidden.mul_(scale), grad_weight.mul_(scale), None, None, None  # in place: no second (I, d) copy


def _block(workspace: BlockSource | None, hidden: Tensor, chunk_size: int, num_rows: int) -> tuple[Tensor, Any]:
    """A flat scratch block for one chunk's ``(N, C)`` logits: from ``workspace`` when given, else a fresh tensor."""
    numel = hidden.size(0) * min(chunk_size, num_rows - 1)
    if workspace is None:
        return hidden.new_empty(numel), None
    return workspace.take(numel, hidden)


def _chunk_logits(hidden: Tensor, w: Tensor, block: Tensor) -> Tensor:
    """``hidden @ w.T`` written into the front of the flat ``block``: ``(N, d), (C, d) -> (N, C)``."""
    return torch.mm(hidden, w.T, out=block[: hidden.size(0) * w.size(0)].view(-1, w.size(0)))


def chunked_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int = 16384,
                          workspace: BlockSource | None = None) -> Tensor:
    """Exact full-catalogue cross-entropy in fp32 without an ``(N, I)`` logit matrix.

    Args:
        hidden: ``(N, d)`` hidden states at real positions.
        weight: ``(I + 1, d)`` item vectors, row 0 = padding (excluded from the softmax).
        targets: ``(N,)`` next items in ``1..I``.
        chunk_size: items per chunk; peak extra memory is about ``3 * N * chunk_size`` floats.
        workspace: reuse its block for the ``(N, C)`` logits from step to step (``None``: fresh).

    Returns:
        Scalar mean loss (fp32).
    """
    if chunk_size < 1:
        raise ValueError(f"ce chunk_size must be at least 1, got {chunk_size}")
    if hidden.size(0) == 0:
        return (hidden.sum() + weight.sum()) * 0.0
    return ChunkedCrossEntropy.apply(hidden.float(), weight.float(), targets, int(chunk_size), workspace)

