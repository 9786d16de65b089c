"""Row-sparse ("lazy") Adam: the item tables update only the rows a step used.

A training step looks up a few thousand rows of the ``(I + 1, d)`` item table, but dense Adam
reads and writes every row of the table and of both moments each step: at a million items and
``d = 64`` that is ~1.8 GB of memory traffic per step for ~0.5 % of useful rows. :class:`LazyAdam`
keeps torch's Adam for the other (dense) parameters and, for the parameters of its row-sparse
param groups, updates only the *touched rows* ``r``::

    g_r = grad[r] + weight_decay * p[r]
    m[r] = beta1 * m[r] + (1 - beta1) * g_r
    v[r] = beta2 * v[r] + (1 - beta2) * g_r^2
    p[r] -= lr / (1 - beta1^t) * m[r] / (sqrt(v[r]) / sqrt(1 - beta2^t) + eps)

with ``t`` the parameter's step count (how many steps it had a gradient), i.e. the formulas of
``torch.optim.Adam`` restricted to the rows, as ``torch.optim.SparseAdam`` does (which places
``eps`` differently and has no weight decay).

**It is not the same optimizer as dense Adam.** Dense Adam also moves every untouched row: its
moments decay (``m <- beta1 * m``) and it keeps stepping along the decayed momentum. Here an
untouched row, its ``m`` and its ``v`` stay exactly as they are until the row is used again
(that is what makes it lazy), and weight decay, too, applies to touched rows only. With a large
catalogue and a sampled loss most rows are untouched in most steps, so the two drift apart; the
paper's dense Adam stays the default (``item_updates: dense``).

Which rows a step touched:

- the row lists kept by the table's :class:`~sasrec_lightning.row_grad.RowGradient`
  (``written_rows``), made unique, when they are known: the rows every lookup of the step used,
  the same rows a sparse ``nn.Embedding`` gradient would name;
- otherwise (DDP, whose all-reduce adds rows other processes touched; a dense gradient such as
  the ``ce`` loss's; ``row_gradients`` off) the rows of the dense gradient with a non-zero entry,
  found in one blocked read pass (cheaper than dense Adam's seven passes, not free). A row the
  step used whose gradient is exactly zero is then not updated (its moments do not decay either);
- a sparse gradient (``nn.Embedding(sparse=True)``): its coalesced indices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.adam import adam

from .row_grad import ItemEmbedding

__all__ = ["LazyAdam", "item_table_lazy_adam", "touched_rows"]

_BLOCK_ROWS = 8192  # rows per block when looking for non-zero rows: the block's |grad| stays in cache
RowLists = Callable[[Tensor], "Tensor | None"]  # parameter -> row ids its gradient was written to, or None


def touched_rows(grad: Tensor, row_ids: Tensor | None = None) -> Tensor:
    """The sorted unique rows a step updates: ``row_ids`` made unique, else the non-zero rows of ``grad``.

    Args:
        grad: ``(R, d)`` dense gradient.
        row_ids: ``(n,)`` row ids the gradient was written to (repeats allowed), or ``None`` if unknown.

    Returns:
        ``(r,)`` int64 row ids.
    """
    if row_ids is not None:
        return torch.unique(row_ids)
    # A row's sum of |entries| is 0 exactly when every entry is 0 (no cancellation, no underflow to 0;
    # NaN propagates and counts as touched). A plain sum would not do: a score gradient is a multiple
    # of a LayerNorm output, whose entries sum to ~0, and such rows were missed in a test. One BLAS
    # mat-vec per cache-sized block reads the gradient once; `grad.any(dim=1)` (3.3x) or amax/amin
    # (1.7x) took longer on 1M x 64 (docs/performance.md).
    ones = grad.new_ones(grad.size(1))
    l1 = grad.new_empty(grad.size(0))  # (R,)
    for start in range(0, grad.size(0), _BLOCK_ROWS):
        block = grad[start : start + _BLOCK_ROWS]  # (<= _BLOCK_ROWS, d)
        torch.mv(block.abs(), ones, out=l1[start : start + block.size(0)])
    return l1.nonzero().squeeze(1)


class LazyAdam(Optimizer):
    """Adam whose row-sparse param groups update only the rows each step touched (see the module docstring).

    Param groups with ``row_sparse: True`` hold 2-D tables; the other groups get ``torch.optim.Adam``'s
    update (``fused`` as there). The state per parameter is Adam's: ``step``, ``exp_avg``, ``exp_avg_sq``,
    so it goes into checkpoints through ``state_dict`` and a resumed run continues exactly.

    Args:
        params: parameters or param groups (a group may set ``row_sparse``).
        lr: learning rate.
        betas: ``(beta1, beta2)``.
        eps: term added to the bias-corrected ``sqrt(v)``, as in ``torch.optim.Adam``.
        weight_decay: L2 coefficient added to the gradient (``g + weight_decay * p``); touched rows only
            in row-sparse groups.
        row_lists: ``parameter -> row ids`` written to its gradient in this step (repeats allowed), or
            ``None`` when they are unknown; without it (or on ``None``) the non-zero rows are used.
        fused: fused Adam kernel for the dense groups (``torch.optim.Adam(fused=...)``).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        row_lists: RowLists | None = None,
        fused: bool | None = None,
    ) -> None:
        if not lr > 0 or not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"LazyAdam needs lr > 0, eps >= 0, weight_decay >= 0; got {lr}, {eps}, {weight_decay}")
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"LazyAdam betas must be two numbers in [0, 1), got {betas!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, row_sparse=False, fused=fused)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["row_sparse"]:
                shapes = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
                if shapes:
                    raise ValueError(f"LazyAdam row_sparse groups hold 2-D tables, got shapes {shapes}")
        self.row_lists = row_lists  # not state: rebuilt with the optimizer, not saved

    def _state(self, parameter: Tensor, fused: bool) -> dict:
        state = self.state[parameter]
        if not state:
            # As torch.optim.Adam: a float32 step count (on the parameter's device for the fused kernel).
            state["step"] = torch.zeros((), dtype=torch.float32, device=parameter.device if fused else None)
            state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        """One update of every parameter that has a gradient; returns the closure's loss, if any."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["row_sparse"]:
                for parameter in group["params"]:
                    if parameter.grad is not None:
                        self._row_step(parameter, group)
            else:
                self._dense_step(group)
        return loss

    def _dense_step(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        if any(p.grad.is_sparse for p in params):
            raise RuntimeError("LazyAdam: a sparse gradient in a dense param group; put the table in a "
                               "row_sparse group")
        fused = bool(group["fused"])
        states = [self._state(p, fused) for p in params]
        beta1, beta2 = group["betas"]
        adam(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
             [], [s["step"] for s in states], fused=group["fused"], amsgrad=False, beta1=beta1, beta2=beta2,
             lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)

    def _row_step(self, parameter: Tensor, group: dict) -> None:
        grad = parameter.grad
        state = self._state(parameter, bool(group["fused"]))
        if grad.is_sparse:  # (indices, values) of nn.Embedding(sparse=True): repeats summed by coalesce
            grad = grad.coalesce()
            rows, values = grad.indices()[0], grad.values()  # (r,), (r, d)
        else:
            rows = touched_rows(grad, self.row_lists(parameter) if self.row_lists is not None else None)  # (r,)
            values = grad.index_select(0, rows)  # (r, d)
        if rows.numel() == 0:
            state["step"] += 1  # the step count is the parameter's, as in torch's Adam
            return
        # Gather the rows, run torch's Adam on them (the same kernel and formulas as the dense groups;
        # it also increments the step count), write them back: ~5 passes over r rows instead of ~7 over all.
        weights, exp_avg, exp_avg_sq = (tensor.index_select(0, rows) for tensor in
                                        (parameter, state["exp_avg"], state["exp_avg_sq"]))  # (r, d) copies
        beta1, beta2 = group["betas"]
        adam([weights], [values], [exp_avg], [exp_avg_sq], [], [state["step"]], fused=group["fused"], amsgrad=False,
             beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
             maximize=False)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        parameter.index_copy_(0, rows, weights)


def item_table_lazy_adam(
    module: nn.Module, lr: float, betas: Sequence[float], weight_decay: float, eps: float = 1e-8,
) -> LazyAdam:
    """:class:`LazyAdam` for ``module``: its :class:`ItemEmbedding` tables row-sparse, everything else dense.

    The rows come from each table's :class:`~sasrec_lightning.row_grad.RowGradient` while its row
    gradients are kept (``row_gradients``), else from the non-zero rows of the gradient.

    Args:
        module: the model (e.g. ``SASRecModule``).
        lr: learning rate.
        betas: Adam betas.
        weight_decay: L2 coefficient (touched rows only for the tables).
        eps: Adam epsilon.

    Returns:
        The optimizer, fused for the dense parameters when they are all floating point on CPU/CUDA.
    """
    tables = [table for table in module.modules() if isinstance(table, ItemEmbedding)]
    table_weights = {id(table.weight) for table in tables}
    dense = [p for p in module.parameters() if id(p) not in table_weights]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in dense)

    def row_lists(parameter: Tensor) -> Tensor | None:
        for table in tables:  # one or two tables
            if table.weight is parameter:
                return None if table.row_gradient is None else table.row_gradient.written_rows()
        return None

    groups = [{"params": dense}, {"params": [table.weight for table in tables], "row_sparse": True}]
    return LazyAdam([group for group in groups if group["params"]], lr=lr, betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay, row_lists=row_lists, fused=fused or None)
