"""Item tables whose dense gradient is filled and cleared row by row.

A SASRec training step touches a few thousand rows of the ``(I + 1, d)`` item table (the batch's
inputs, targets and negatives), yet plain ``nn.Embedding`` lookups each build a dense ``(I + 1, d)``
gradient: a zero fill of the whole table per lookup plus a dense add per extra lookup, and
``zero_grad`` frees it so the next step allocates (and page-faults) it again. On Amazon Beauty
(54,543 x 50) that was about a quarter of a CPU training step (``docs/performance.md``).

:class:`RowGradEmbedding` is the item representation's ``nn.Embedding(num_items + 1, d,
padding_idx=0)``, swapped in place by :func:`use_row_gradients`; while its row gradients are
kept (:meth:`RowGradEmbedding.keep_row_gradients`, switched by the :class:`RowGradients` callback)
it owns a :class:`RowGradient`: ``weight.grad`` is one persistent
dense buffer, and a lookup's backward pass adds the rows' gradients straight into it with one
``index_add_`` (row 0, padding, never gets any) and hands autograd an empty sparse gradient, so the
parameter's gradient hooks (e.g. DDP's all-reduce) still fire but nothing else is accumulated.
When ``optimizer.zero_grad()`` has set the gradient to ``None``, the next backward pass takes the
buffer back and clears only the rows written since it was last cleared. The optimizer still sees an
ordinary dense gradient, so any optimizer (and the paper's dense Adam) works unchanged, and
gradient accumulation (no ``zero_grad`` between backward passes) adds up as usual.

(An earlier version used ``F.embedding(..., sparse=True)`` and let autograd add the sparse
gradients into the buffer; on CPU that built, summed and row-by-row added COO tensors, ~1 ms per
Amazon step more than the ``index_add_``.)

A dense gradient arriving for the parameter (e.g. the full-softmax loss scores every item), a
buffer the table did not allocate, or a distributed all-reduce (which writes rows other processes
touched) makes the next clear a full one.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import unserializable_hook

from ..model.items import ItemRepresentation

__all__ = ["RowGradEmbedding", "RowGradient", "RowGradients", "use_row_gradients", "row_grad_tables"]

_FULL_CLEAR_MIN_ROWS = 4096  # below this a row-wise clear is always cheap
_MAX_PENDING = 1024  # row lists kept between clears before a full clear is cheaper to track


class RowGradient:
    """Keep ``parameter.grad`` in one dense buffer and clear only the rows that received gradient.

    Args:
        parameter: a 2-D parameter whose gradients arrive mostly as row updates.
        full_clear: always clear the whole buffer (under DDP the all-reduce writes every row).
    """

    def __init__(self, parameter: nn.Parameter, full_clear: bool = False) -> None:
        if parameter.dim() != 2:
            raise ValueError(f"RowGradient needs a 2-D parameter, got shape {tuple(parameter.shape)}")
        self.parameter = parameter
        self.full_clear = full_clear
        self.rows: list[Tensor] = []  # row indices written since the last clear
        self.dirty = True  # unknown rows written (or no buffer yet): clear everything
        self.kept: Tensor | None = None  # the buffer, also while zero_grad has set .grad to None
        self.handle = parameter.register_hook(self._record)

    @unserializable_hook
    def _record(self, grad: Tensor) -> Tensor:
        # Called with the parameter's summed gradient of a backward pass, before it is added to ``.grad``.
        if grad.is_sparse:
            if grad._nnz():  # a sparse gradient from elsewhere (lookups hand over empty ones)
                self._note(grad._indices()[0])
        else:
            self.dirty = True
        return grad

    def _note(self, ids: Tensor) -> None:
        self.rows.append(ids)
        if len(self.rows) > _MAX_PENDING:  # never cleared row-wise (e.g. zero_grad(set_to_none=False))
            self.rows.clear()
            self.dirty = True

    def lookup(self, ids: Tensor) -> Tensor:
        """``F.embedding(ids, parameter, padding_idx=0)`` whose gradient goes row-wise into the buffer.

        Args:
            ids: any shape of row ids; 0 is padding (its row gets no gradient).

        Returns:
            ``(*ids.shape, d)`` rows of the parameter.
        """
        return _RowLookup.apply(self.parameter, ids, self)

    def buffer(self) -> Tensor:
        """The dense gradient to add rows into: ``.grad``, or the kept buffer cleared if ``.grad`` was reset."""
        parameter, grad = self.parameter, self.parameter.grad
        if grad is None and self.kept is not None and self.kept.shape == parameter.shape:
            self.zero_()  # zero_grad(set_to_none=True) ran: a new accumulation starts
            grad = parameter.grad
        elif grad is None or grad.is_sparse or grad.shape != parameter.shape:
            parameter.grad = grad = torch.zeros_like(parameter)
            self.kept, self.dirty = grad, False
            self.rows.clear()
        elif grad is not self.kept:  # someone else's dense tensor: its other rows are unknown
            self.kept, self.dirty = grad, True
        return grad

    def add_rows(self, ids: Tensor, values: Tensor) -> None:
        """``buffer[ids[i]] += values[i]`` for every ``i`` (repeats add up); row 0 stays zero."""
        buffer = self.buffer()
        buffer.index_add_(0, ids, values.to(buffer.dtype))
        buffer[0].zero_()  # padding_idx=0: the padding row never has a gradient
        self._note(ids)

    def written_rows(self) -> Tensor | None:
        """The row ids (with repeats, row 0 included) whose gradient this accumulation wrote, or ``None`` if unknown.

        Unknown when a dense gradient or a foreign buffer arrived (``dirty``), or under ``full_clear``
        (DDP's all-reduce adds the rows other processes touched); the caller then has to look at
        the gradient itself. A row-sparse optimizer (``lazy_adam.py``) reads this before its step.
        """
        if self.dirty or self.full_clear or self.kept is None or self.parameter.grad is not self.kept:
            return None
        if not self.rows:
            return torch.empty(0, dtype=torch.long, device=self.parameter.device)
        return torch.cat(self.rows)

    def zero_(self, full: bool = False) -> None:
        """Clear the kept buffer (written rows only, unless ``full``) and make it ``parameter.grad`` again.

        Args:
            full: clear every row.
        """
        parameter, buffer = self.parameter, self.kept
        if buffer is None or buffer.shape != parameter.shape:
            buffer = self.kept = torch.zeros_like(parameter)
        elif full or self.full_clear or self.dirty or self._many_rows(buffer.size(0)):
            buffer.zero_()
        elif self.rows:
            buffer.index_fill_(0, torch.cat(self.rows), 0.0)
        parameter.grad = buffer
        self.rows.clear()
        self.dirty = False

    def _many_rows(self, table_rows: int) -> bool:
        """Whether a step wrote more rows than a quarter of a large table (e.g. negatives per sequence).

        Then one pass beats a scattered fill of that many rows (a profile showed 44 ms a step for the
        387k rows of 128 x 3,000 negatives per sequence in a 54,543-row table).
        """
        return table_rows >= _FULL_CLEAR_MIN_ROWS and sum(r.numel() for r in self.rows) > table_rows // 4

    def remove(self) -> None:
        """Detach from the parameter (its gradient becomes an ordinary one again)."""
        self.handle.remove()
        self.rows.clear()
        self.kept = None
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


class RowGradEmbedding(nn.Embedding):
    """An item table ``(num_items + 1, d)`` with padding row 0 that can keep its gradient row-wise.

    Exactly ``nn.Embedding`` (same state dict: it is the model's own table, swapped in place by
    :func:`use_row_gradients`) until :meth:`keep_row_gradients` is switched on; then lookups under
    autograd route their weight gradient through a :class:`RowGradient`.
    """

    row_gradient: RowGradient | None = None

    def forward(self, ids: Tensor) -> Tensor:
        """``(...) -> (..., d)``."""
        if self.row_gradient is None or not (torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(ids)
        return _RowLookup.apply(self.weight, ids, self.row_gradient)

    def keep_row_gradients(self, on: bool = True, full_clear: bool = False) -> None:
        """Switch row-wise gradients on (``full_clear``: under DDP) or back to ordinary ones."""
        if self.row_gradient is not None:
            self.row_gradient.remove()
            self.row_gradient = None
        if on:
            self.row_gradient = RowGradient(self.weight, full_clear)

    def __getstate__(self) -> dict:  # copies and pickles are ordinary embeddings (the hook is not copied)
        return {**self.__dict__, "row_gradient": None}


def use_row_gradients(model: nn.Module) -> list[RowGradEmbedding]:
    """Make every item table of ``model`` (each :class:`ItemRepresentation`'s embedding) a :class:`RowGradEmbedding`.

    The same module and weights (its class is swapped); row gradients stay off until switched on
    (the :class:`RowGradients` callback does it for training).
    """
    tables = []
    for items in model.modules():
        if isinstance(items, ItemRepresentation):
            if type(items.embedding) is nn.Embedding:
                items.embedding.__class__ = RowGradEmbedding
            if isinstance(items.embedding, RowGradEmbedding):
                tables.append(items.embedding)
    return tables


def row_grad_tables(model: nn.Module) -> list[RowGradEmbedding]:
    """The item tables of ``model`` that can keep row gradients."""
    return [module for module in model.modules() if isinstance(module, RowGradEmbedding)]


class RowGradients(L.Callback):
    """Keep every :class:`RowGradEmbedding` gradient row-wise while training.

    On from the start of training (before the first forward pass) to its end (or an exception);
    outside training the tables are ordinary embeddings. Under DDP the all-reduce writes rows that
    other processes touched, so whole buffers are cleared.
    """

    def _switch(self, module: L.LightningModule, on: bool, full_clear: bool = False) -> None:
        for table in row_grad_tables(module):
            table.keep_row_gradients(on, full_clear)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._switch(pl_module, True, full_clear=trainer.world_size > 1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._switch(pl_module, False)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._switch(pl_module, False)
