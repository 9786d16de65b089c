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

**Deferred updates** (``catch_up=True``, ``item_updates: deferred``): lazy cost, dense Adam's
trajectory. With dense Adam one gradient keeps moving a row for ~``1 / (1 - beta1)`` more steps
through the decaying momentum; lazy Adam applies only the first step of that, so rarely used rows
move ~10x less. In deferred mode each row-sparse parameter also keeps ``last_step`` ``(R,)``
(int64, in the optimizer state): the step at which the row was last brought up to date. When a
step ``t`` touches row ``r`` with ``t0 = last_step[r]`` and ``k = t - 1 - t0`` skipped steps, the
row first gets, in closed form, what dense Adam would have done in those ``k`` zero-gradient
steps, then the ordinary update with this step's gradient::

    m[r] <- beta1^k m[r],  v[r] <- beta2^k v[r]                                  (exact)
    p[r] -= lr * S(t0, k) * m0[r] / sqrt(v0[r])
    S(t0, k) = sum_{j=1..k} rho^j sqrt(1 - beta2^(t0+j)) / (1 - beta1^(t0+j)),  rho = beta1 / sqrt(beta2)

(dense Adam's skipped step ``s`` moves the row by ``lr * m_hat_s / (sqrt(v_hat_s) + eps)`` with
``m_s = beta1^j m0``, ``v_s = beta2^j v0``; the sum drops ``eps`` in the skipped steps, and its
terms with ``rho^j < 1e-12`` are cut off, which needs ``rho < 1``, i.e. ``beta1 < sqrt(beta2)``).
``S`` is a per-row scalar that, at a given step, depends on ``t0`` only: :class:`SkippedSteps` looks
it up in two small tables, so a catch-up costs a few passes over the touched rows.
:meth:`LazyAdam.flush` brings every row up to date (the module calls it before validation, at the
end of each training epoch and of training, so evaluation, epoch-end checkpoints and predictions
see dense-Adam-like weights). What remains different from dense Adam:

- ``eps`` inside the skipped steps (negligible while ``sqrt(v_hat)`` is well above ``eps``);
- weight decay in the skipped steps is not modelled (deferred equals dense Adam only without
  weight decay);
- a forward pass reads a row that missed steps as it was at its last update (its catch-up happens
  at the next optimizer step that touches it, or at a flush), where dense Adam would have moved it.

The catch-up is exact to compose (catching up ``k1`` then ``k2`` steps equals ``k1 + k2`` at once),
so flushing at any time does not change the trajectory beyond rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.adam import adam

from ..model.items import ItemRepresentation
from .row_grad import RowGradEmbedding

__all__ = ["LazyAdam", "SkippedSteps", "fused_adam_supported", "item_table_lazy_adam", "skipped_steps_factor",
           "touched_rows"]

_BLOCK_ROWS = 8192  # rows per block when looking for non-zero rows: the block's |grad| stays in cache
_FACTOR_ROWS = 4096  # rows per block of skipped_steps_factor: bounds its (rows, J) float64 matrix
_FLUSH_ROWS = 4096  # rows per block of a flush: the block's temporaries stay in cache
_CUT_OFF = 1e-12  # S's terms with rho^j below this are dropped
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


def skipped_steps_factor(t0: Tensor, k: Tensor, beta1: float, beta2: float) -> Tensor:
    """``S(t0, k) = sum_{j=1..k} rho^j sqrt(1 - beta2^(t0+j)) / (1 - beta1^(t0+j))``, ``rho = beta1 / sqrt(beta2)``.

    Dense Adam's parameter movement over ``k`` zero-gradient steps after step ``t0`` is
    ``lr * S(t0, k) * m0 / sqrt(v0)`` (``eps`` ignored; see the module docstring). Terms with
    ``rho^j < 1e-12`` are dropped, so at most ``J = ceil(log(1e-12) / log(rho))`` terms per row
    (~260 for betas (0.9, 0.999)).

    Args:
        t0: ``(r,)`` int64 step at which each row was last updated (``>= 0``).
        k: ``(r,)`` int64 number of skipped steps (``>= 0``).
        beta1: Adam's ``beta1``.
        beta2: Adam's ``beta2``; ``beta1 < sqrt(beta2)`` is required.

    Returns:
        ``(r,)`` float64.
    """
    rho = beta1 / beta2**0.5
    if not rho < 1.0:
        raise ValueError(f"deferred Adam needs beta1 < sqrt(beta2), got betas ({beta1}, {beta2})")
    out = torch.zeros(t0.shape, dtype=torch.float64, device=t0.device)
    if rho == 0.0 or t0.numel() == 0:  # beta1 = 0: no momentum, a skipped step does not move the row
        return out
    terms = min(int(k.max()), math.ceil(math.log(_CUT_OFF) / math.log(rho)))  # J, at most the longest gap
    if terms == 0:
        return out
    j = torch.arange(1, terms + 1, dtype=torch.float64, device=t0.device)  # (J,)
    rho_j, beta1_j, beta2_j = rho**j, beta1**j, beta2**j  # (J,)
    for start in range(0, t0.numel(), _FACTOR_ROWS):
        block_t0 = t0[start : start + _FACTOR_ROWS].double()  # (b,)
        # beta^(t0 + j) as an outer product: two products instead of two pow() over the (b, J) matrix.
        c1 = 1.0 - torch.outer(beta1**block_t0, beta1_j)  # (b, J) bias corrections 1 - beta1^s
        c2 = 1.0 - torch.outer(beta2**block_t0, beta2_j)  # (b, J)
        term = c2.sqrt_().div_(c1).mul_(rho_j)  # (b, J)
        term.masked_fill_(j > k[start : start + _FACTOR_ROWS, None], 0.0)  # j <= k only
        out[start : start + block_t0.numel()] = term.sum(dim=1)
    return out


class SkippedSteps:
    """``S(t0, upto - t0)`` for many rows at once by table look-up (:func:`skipped_steps_factor`'s values).

    All rows caught up at one time go to the same step ``upto``, so ``S`` is a function of ``t0`` alone:

    - rows behind by fewer than ``J`` steps: ``t0`` in ``(upto - J, upto]``, a ``(J, J)`` matrix once per step;
    - rows behind by ``J`` or more: all ``J`` terms, ``S(t0, J)``, which does not depend on ``upto``: a
      table over ``t0`` grown as training goes, and constant from the step ``T`` on where both
      ``beta^s`` are below ``2^-60`` (the bias corrections are then exactly 1 in float64).

    So a step costs one look-up per row instead of ``J`` terms per row.

    Args:
        beta1: Adam's ``beta1``.
        beta2: Adam's ``beta2`` (``beta1 < sqrt(beta2)``).
        device: where the tables live (the rows' ``last_step`` device).
    """

    def __init__(self, beta1: float, beta2: float, device: torch.device) -> None:
        self.beta1, self.beta2, self.device = beta1, beta2, device
        rho = beta1 / beta2**0.5
        self.terms = 1 if rho == 0.0 else math.ceil(math.log(_CUT_OFF) / math.log(rho))  # J
        self.constant_from = max(math.ceil(-60 * math.log(2) / math.log(beta)) if beta > 0 else 0
                                 for beta in (beta1, beta2))  # T
        self.far = torch.zeros(0, dtype=torch.float64, device=device)  # (n,) S(t0, J) for t0 < n
        self.near_upto, self.near = None, None  # (J,) S(t0, upto - t0) for t0 = upto - J + 1 .. upto

    def _far(self, needed: int) -> None:
        """Grow the far table to cover ``t0 <= needed`` (at most up to ``T``), doubling."""
        needed = min(needed, self.constant_from)
        if needed < self.far.numel():
            return
        size = min(max(needed + 1, 2 * self.far.numel()), self.constant_from + 1)
        t0 = torch.arange(self.far.numel(), size, device=self.device)  # (new,)
        extra = skipped_steps_factor(t0, torch.full_like(t0, self.terms), self.beta1, self.beta2)
        self.far = torch.cat([self.far, extra])

    def __call__(self, t0: Tensor, upto: int) -> Tensor:
        """``(r,)`` float64 ``S(t0, upto - t0)`` for ``(r,)`` int64 ``t0 <= upto``."""
        if self.near_upto != upto:
            near_t0 = torch.arange(upto - self.terms + 1, upto + 1, device=self.device).clamp_(min=0)  # (J,)
            self.near = skipped_steps_factor(near_t0, upto - near_t0, self.beta1, self.beta2)
            self.near_upto = upto
        behind = upto - t0  # (r,) k
        is_far = behind >= self.terms  # (r,)
        out = self.near[(t0 - (upto - self.terms + 1)).clamp_(min=0)]  # (r,) right where not far
        if bool(is_far.any()):
            self._far(int(t0[is_far].max()))
            far = self.far[t0.clamp(max=self.far.numel() - 1)]  # (r,) t0 >= T: the constant S(T, J)
            out = torch.where(is_far, far, out)
        return out


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
        catch_up: deferred mode: a touched row first catches up on the steps it missed, as dense Adam
            would have moved it with zero gradients (see the module docstring); needs
            ``beta1 < sqrt(beta2)``. Adds ``last_step`` to a row-sparse parameter's state.
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
        catch_up: bool = False,
    ) -> None:
        if not lr > 0 or not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"LazyAdam needs lr > 0, eps >= 0, weight_decay >= 0; got {lr}, {eps}, {weight_decay}")
        if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"LazyAdam betas must be two numbers in [0, 1), got {betas!r}")
        if catch_up and not betas[0] < betas[1] ** 0.5:
            # Dense Adam's moves along a decaying momentum sum to a finite S only if rho = beta1 / sqrt(beta2) < 1.
            raise ValueError(f"LazyAdam(catch_up=True) needs beta1 < sqrt(beta2) (the momentum must decay faster "
                             f"than the root of the second moment), got betas {tuple(betas)!r}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, row_sparse=False, fused=fused)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["row_sparse"]:
                shapes = [tuple(p.shape) for p in group["params"] if p.dim() != 2]
                if shapes:
                    raise ValueError(f"LazyAdam row_sparse groups hold 2-D tables, got shapes {shapes}")
        self.row_lists = row_lists  # not state: rebuilt with the optimizer, not saved
        self.catch_up = catch_up
        self._skipped: dict[tuple, SkippedSteps] = {}  # look-up tables of S per (betas, device); not state

    def _state(self, parameter: Tensor, fused: bool, row_sparse: bool = False) -> dict:
        state = self.state[parameter]
        if not state:
            # As torch.optim.Adam: a float32 step count (on the parameter's device for the fused kernel).
            state["step"] = torch.zeros((), dtype=torch.float32, device=parameter.device if fused else None)
            state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        if row_sparse and self.catch_up and "last_step" not in state:
            # Every row is up to date at the current step (0 when new; a lazy run's state continues from here).
            state["last_step"] = torch.full((parameter.size(0),), int(state["step"]), dtype=torch.int64,
                                            device=parameter.device)  # (R,)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``Optimizer.load_state_dict``, keeping ``last_step`` int64.

        torch casts every state tensor but ``step`` to its parameter's dtype; a float32 ``last_step``
        would hold step numbers exactly only up to 2^24.
        """
        last_steps = {key: state["last_step"] for key, state in state_dict["state"].items() if "last_step" in state}
        stripped = {**state_dict, "state": {key: {name: value for name, value in state.items() if name != "last_step"}
                                            for key, state in state_dict["state"].items()}}
        super().load_state_dict(stripped)
        saved_ids = [index for group in state_dict["param_groups"] for index in group["params"]]
        parameters = [parameter for group in self.param_groups for parameter in group["params"]]
        by_id = dict(zip(saved_ids, parameters, strict=True))
        for key, last_step in last_steps.items():
            parameter = by_id[key]
            self.state[parameter]["last_step"] = last_step.to(device=parameter.device, dtype=torch.int64)

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

    @torch.no_grad()
    def flush(self) -> None:
        """Deferred mode: bring every row of the row-sparse tables up to the current step (no-op otherwise).

        The rows behind (``last_step < step``) catch up on the steps they missed: one in-place pass
        over the table and both moments, in cache-sized blocks of consecutive rows (after an epoch
        most rows are behind, so gathering them would cost more than it saves; a row already up to
        date has ``k = 0``, ``S = 0``, and stays bit for bit).
        """
        if not self.catch_up:
            return
        for group in self.param_groups:
            if not group["row_sparse"]:
                continue
            for parameter in group["params"]:
                state = self.state.get(parameter)
                if not state or "last_step" not in state:
                    continue
                step, last_step = int(state["step"]), state["last_step"]  # (R,)
                for start in range(0, parameter.size(0), _FLUSH_ROWS):
                    rows = slice(start, start + _FLUSH_ROWS)
                    if bool((last_step[rows] < step).any()):  # views: updated in place
                        self._catch_up_rows(parameter[rows], state["exp_avg"][rows], state["exp_avg_sq"][rows],
                                            last_step[rows], step, group)
                last_step.fill_(step)

    def _catch_up_rows(self, weights: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, last_step: Tensor, upto: int,
                       group: dict) -> None:
        """In place on gathered rows: dense Adam's zero-gradient steps ``last_step + 1 .. upto``, in closed form.

        Args:
            weights: ``(r, d)`` rows of the table, updated in place.
            exp_avg: ``(r, d)`` their first moments, decayed in place.
            exp_avg_sq: ``(r, d)`` their second moments, decayed in place.
            last_step: ``(r,)`` int64 step of each row's last update.
            upto: the step to bring the rows to.
            group: the param group (lr, betas).
        """
        beta1, beta2 = group["betas"]
        skipped = upto - last_step  # (r,) k
        key = (beta1, beta2, last_step.device)
        if key not in self._skipped:
            self._skipped[key] = SkippedSteps(beta1, beta2, last_step.device)
        factor = self._skipped[key](last_step, upto) * group["lr"]  # (r,) float64: lr * S
        # m0 / sqrt(v0). An entry with v0 = 0 has m0 = 0 (no gradient yet) and must not move: sqrt(v0) is
        # raised to the smallest normal number, below the root of any non-zero v0, so it gives 0 / tiny = 0
        # instead of 0 / 0 (cheaper than a where()).
        direction = exp_avg / exp_avg_sq.sqrt().clamp_(min=torch.finfo(exp_avg_sq.dtype).tiny)  # (r, d)
        weights.addcmul_(direction, factor.to(weights.dtype)[:, None], value=-1.0)
        exp_avg.mul_(torch.pow(beta1, skipped.to(exp_avg.dtype))[:, None])  # m <- beta1^k m
        exp_avg_sq.mul_(torch.pow(beta2, skipped.to(exp_avg_sq.dtype))[:, None])  # v <- beta2^k v

    def _row_step(self, parameter: Tensor, group: dict) -> None:
        grad = parameter.grad
        state = self._state(parameter, bool(group["fused"]), row_sparse=True)
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
        if self.catch_up:  # first the steps these rows missed (up to the previous step), then this step's update
            step = int(state["step"]) + 1
            self._catch_up_rows(weights, exp_avg, exp_avg_sq, state["last_step"][rows], step - 1, group)
            state["last_step"][rows] = step
        beta1, beta2 = group["betas"]
        adam([weights], [values], [exp_avg], [exp_avg_sq], [], [state["step"]], fused=group["fused"], amsgrad=False,
             beta1=beta1, beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
             maximize=False)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        parameter.index_copy_(0, rows, weights)


def fused_adam_supported(parameters: Iterable[Tensor]) -> bool:
    """Whether torch's fused Adam kernel takes all of ``parameters`` (floating point, on CPU or CUDA)."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in parameters)


def item_table_lazy_adam(
    module: nn.Module, lr: float, betas: Sequence[float], weight_decay: float, eps: float = 1e-8,
    catch_up: bool = False,
) -> LazyAdam:
    """:class:`LazyAdam` for ``module``: its item tables row-sparse, everything else dense.

    The item tables are the embeddings of its :class:`~sasrec_lightning.model.items.ItemRepresentation`
    parts. The rows come from each table's :class:`~sasrec_lightning.fast.row_grad.RowGradient` while its row
    gradients are kept (``row_gradients``), else from the non-zero rows of the gradient.

    Args:
        module: the model (e.g. ``SASRecModule``).
        lr: learning rate.
        betas: Adam betas.
        weight_decay: L2 coefficient (touched rows only for the tables).
        eps: Adam epsilon.
        catch_up: deferred mode (``item_updates: deferred``): rows catch up on the steps they missed.

    Returns:
        The optimizer, fused for the dense parameters when they are all floating point on CPU/CUDA.
    """
    tables = [items.embedding for items in module.modules()
              if isinstance(items, ItemRepresentation) and items.embedding is not None]  # None: features only
    table_weights = {id(table.weight) for table in tables}
    dense = [p for p in module.parameters() if id(p) not in table_weights]
    fused = fused_adam_supported(dense)

    def row_lists(parameter: Tensor) -> Tensor | None:
        for table in tables:  # one or two tables
            if table.weight is parameter and isinstance(table, RowGradEmbedding) and table.row_gradient is not None:
                return table.row_gradient.written_rows()
        return None

    groups = [{"params": dense}, {"params": [table.weight for table in tables], "row_sparse": True}]
    return LazyAdam([group for group in groups if group["params"]], lr=lr, betas=tuple(betas), eps=eps,
                    weight_decay=weight_decay, row_lists=row_lists, fused=fused or None, catch_up=catch_up)
