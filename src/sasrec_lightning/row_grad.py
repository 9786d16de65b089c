"""Dense item-table gradients that are filled and cleared row by row.

A SASRec training step touches a few thousand rows of the ``(I + 1, d)`` item table (the batch's
inputs, targets and negatives), yet plain ``nn.Embedding`` lookups each build a dense ``(I + 1, d)``
gradient: a zero fill of the whole table per lookup plus a dense add per extra lookup. On Amazon
Beauty (54,543 x 50) that was about a quarter of a CPU training step (``docs/performance.md``).

:class:`RowGradient` keeps ``parameter.grad`` as one persistent dense buffer instead. The lookups
produce sparse gradients (``F.embedding(..., sparse=True)``), which autograd adds into the dense
buffer in place (only the touched rows are written), and :meth:`RowGradient.zero_` clears only the
rows written since the last clear. The optimizer still sees an ordinary dense gradient, so any
optimizer (and the paper's dense Adam) works unchanged and the update is the same.

A dense gradient arriving for the parameter (e.g. the full-softmax loss scores every item) or a
distributed all-reduce (which writes rows other processes touched) makes the next clear a full one.
"""

from __future__ import annotations

import torch
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
            self.rows.append(grad._indices()[0])
        else:
            self.dirty = True
        return grad

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
