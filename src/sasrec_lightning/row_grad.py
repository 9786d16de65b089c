"""Dense item-table gradients that are filled and cleared row by row.

A SASRec training step touches a few thousand rows of the ``(I + 1, d)`` item table (the batch's
inputs, targets and negatives), yet plain ``nn.Embedding`` lookups each build a dense ``(I + 1, d)``
gradient: a zero fill of the whole table per lookup plus a dense add per extra lookup. On Amazon
Beauty (54,543 x 50) that was about a quarter of a CPU training step (``docs/performance.md``).

:class:`RowGradient` keeps ``parameter.grad`` as one persistent dense buffer instead. Its
:meth:`RowGradient.lookup` is an embedding lookup whose backward pass adds the rows' gradients
straight into that buffer with one ``index_add_`` (row 0, padding, never gets any) and hands autograd
an empty sparse gradient, so the parameter's gradient hooks (e.g. DDP's all-reduce) still fire but
nothing else is accumulated. :meth:`RowGradient.zero_` clears only the rows written since the last
clear. The optimizer still sees an ordinary dense gradient, so any optimizer (and the paper's dense
Adam) works unchanged and the update is the same.

(An earlier version used ``F.embedding(..., sparse=True)`` and let autograd add the sparse
gradients into the buffer; on CPU that built, summed and row-by-row added COO tensors, ~1 ms per
Amazon step more than the ``index_add_``.)

A dense gradient arriving for the parameter (e.g. the full-softmax loss scores every item) or a
distributed all-reduce (which writes rows other processes touched) makes the next clear a full one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import unserializable_hook

__all__ = ["RowGradient"]


class RowGradient:
    """Keep ``parameter.grad`` dense and clear only the rows that received gradient.

    Args:
        parameter: a 2-D parameter whose gradients arrive mostly as sparse row updates.
    """

    def __init__(self, parameter: nn.Parameter) -> None:
        if parameter.dim() != 2:
            raise ValueError(f"RowGradient needs a 2-D parameter, got shape {tuple(parameter.shape)}")
        self.parameter = parameter
        self.rows: list[Tensor] = []  # row indices written since the last clear
        self.dirty = True  # unknown rows written (or no buffer yet): clear everything
        self.handle = parameter.register_hook(self._record)

    @unserializable_hook
    def _record(self, grad: Tensor) -> Tensor:
        # Called with every gradient computed for the parameter, before it is added to ``.grad``.
        if grad.is_sparse:
            if grad._nnz():  # a sparse gradient from elsewhere (lookup() hands over empty ones)
                self.rows.append(grad._indices()[0])
        else:
            self.dirty = True
        return grad

    def lookup(self, ids: Tensor) -> Tensor:
        """``F.embedding(ids, parameter, padding_idx=0)`` whose gradient goes row-wise into the buffer.

        Args:
            ids: any shape of row ids; 0 is padding (its row gets no gradient).

        Returns:
            ``(*ids.shape, d)`` rows of the parameter.
        """
        return _RowLookup.apply(self.parameter, ids, self)

    def buffer(self) -> Tensor:
        """The dense gradient buffer, allocated (zeros) if the parameter has none yet."""
        parameter = self.parameter
        grad = parameter.grad
        if grad is None or grad.is_sparse or grad.shape != parameter.shape:
            parameter.grad = grad = torch.zeros_like(parameter)
            self.dirty = False
            self.rows.clear()
        return grad

    def add_rows(self, ids: Tensor, values: Tensor) -> None:
        """``buffer[ids[i]] += values[i]`` for every ``i`` (repeats add up); row 0 stays zero."""
        buffer = self.buffer()
        buffer.index_add_(0, ids, values.to(buffer.dtype))
        buffer[0].zero_()  # padding_idx=0: the padding row never has a gradient
        self.rows.append(ids)

    def zero_(self, full: bool = False) -> None:
        """Clear the gradient buffer (allocated on first use) before the next backward pass.

        Args:
            full: clear every row, e.g. after a distributed all-reduce wrote rows from other processes.
        """
        parameter = self.parameter
        grad = parameter.grad
        if grad is None or grad.is_sparse or grad.shape != parameter.shape:
            parameter.grad = torch.zeros_like(parameter)
        elif full or self.dirty:
            grad.zero_()
        elif self.rows:
            grad.index_fill_(0, torch.cat(self.rows), 0.0)
        self.rows.clear()
        self.dirty = False

    def remove(self) -> None:
        """Detach from the parameter (its gradient becomes an ordinary one again)."""
        self.handle.remove()
        self.rows.clear()
        self.dirty = True


class _RowLookup(torch.autograd.Function):
    """Embedding lookup whose weight gradient is added row-wise into a :class:`RowGradient` buffer."""

    @staticmethod
    def forward(ctx, weight: Tensor, ids: Tensor, row_grad: RowGradient) -> Tensor:
        ctx.save_for_backward(ids)
        ctx.row_grad = row_grad
        return F.embedding(ids, weight)  # (..., d); row 0 of the table is zero, as with padding_idx

    @staticmethod
    def backward(ctx, grad: Tensor):
        (ids,) = ctx.saved_tensors
        row_grad = ctx.row_grad
        row_grad.add_rows(ids.reshape(-1), grad.reshape(-1, grad.size(-1)))
        parameter = row_grad.parameter
        # An empty sparse gradient: autograd's accumulation (and DDP's hooks on it) still run, but add nothing.
        empty = torch.sparse_coo_tensor(
            torch.empty(1, 0, dtype=torch.long, device=parameter.device),
            torch.empty(0, parameter.size(1), dtype=parameter.dtype, device=parameter.device),
            parameter.shape, check_invariants=True, is_coalesced=True,  # nothing to check: no entries
        )
        return empty, None, None
