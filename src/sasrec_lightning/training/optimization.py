"""How the model is optimized: the options (``--model.optimization.*``), the optimizer, the loss's scale.

The paper trains with Adam (lr 0.001; the authors' code: betas (0.9, 0.98)). :func:`build_optimizer`
builds it fused, or the row-sparse Adam of ``speed.item_updates`` (``fast/lazy_adam.py``), or the
user's own optimizer (``--model.optimizer``, LightningCLI's optimizer injection).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..errors import OptionError
from ..fast.lazy_adam import fused_adam_supported, item_table_lazy_adam
from ..fast.speed import SpeedOptions
from ..validation import in_range, one_of, positive
from .sharding import parameter_groups

__all__ = ["OptimizationOptions", "build_optimizer", "check_item_updates"]


@dataclass(frozen=True)
class OptimizationOptions:
    """Adam's settings, the item-table penalty and how a batch's loss is scaled (``--model.optimization.*``).

    Args:
        lr: Adam learning rate (paper: 0.001).
        betas: Adam betas (the original code uses (0.9, 0.98)).
        weight_decay: Adam weight decay on all parameters.
        l2_emb: L2 penalty ``l2_emb * ||M||^2 / 2`` on the input item table.
        loss_normalization: how a batch's loss is divided: ``epoch`` sums it over the batch's
            positions and divides by the mean number of positions per training batch (every position
            weighs the same across the epoch, also when length bucketing makes batches of short
            sequences); ``batch`` takes the mean over the batch's positions (the reference code,
            where a position in a batch of short sequences weighs more). With random batches the
            two agree in expectation. ``epoch`` needs the data module's ``training_statistics()``
            (``SASRecDataModule``); other training data falls back to ``batch`` with a warning.
    """

    lr: float = 0.001
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    l2_emb: float = 0.0
    loss_normalization: Literal["epoch", "batch"] = "epoch"

    def __post_init__(self) -> None:
        section = "model.optimization"
        positive(section, "lr", self.lr)
        if len(self.betas) != 2:
            raise OptionError(f"--{section}.betas {list(self.betas)!r}: expected two numbers in [0, 1)")
        for beta in self.betas:
            in_range(section, "betas", beta, 0.0, 1.0, high_open=True)
        positive(section, "weight_decay", self.weight_decay, allow_zero=True)
        positive(section, "l2_emb", self.l2_emb, allow_zero=True)
        one_of(section, "loss_normalization", self.loss_normalization, ("epoch", "batch"))


def check_item_updates(speed: SpeedOptions, optimization: OptimizationOptions, custom_optimizer: bool) -> None:
    """Refuse ``speed.item_updates`` other than ``dense`` with an option it cannot honour."""
    mode = speed.item_updates
    if mode == "dense":
        return
    if optimization.l2_emb:
        # The penalty's gradient l2_emb * M is non-zero on every row, so every row would be "touched".
        raise OptionError(f"--model.speed.item_updates {mode} with --model.optimization.l2_emb {optimization.l2_emb}: "
                          "the L2 term gives every item row a gradient, so every row would be updated each step; set "
                          "l2_emb 0 (weight_decay is applied to the rows a step used) or use item_updates dense")
    if custom_optimizer:
        raise OptionError(f"--model.speed.item_updates {mode} builds its own optimizer (lazy Adam from lr, betas, "
                          "weight_decay), so --model.optimizer cannot be given with it; drop --model.optimizer or use "
                          "item_updates dense")
    beta1, beta2 = optimization.betas
    if mode == "deferred" and not beta1 < beta2**0.5:
        # The closed-form catch-up sums dense Adam's moves along a momentum decaying as (beta1 / sqrt(beta2))^j.
        betas = list(optimization.betas)
        raise OptionError(f"--model.speed.item_updates deferred with --model.optimization.betas {betas}"
                          f": needs beta1 < sqrt(beta2) (here {beta1} >= {beta2 ** 0.5:.6g}), so that the steps a row "
                          "misses add up to a finite move; lower beta1, raise beta2, or use item_updates lazy or dense")


def build_optimizer(module: nn.Module, optimization: OptimizationOptions, item_updates: str,
                    factory: Callable[[Iterable], torch.optim.Optimizer] | None = None) -> torch.optim.Optimizer:
    """The optimizer of ``module``'s parameters.

    Args:
        module: the LightningModule (its item tables are found through its item representations).
        optimization: lr, betas, weight decay.
        item_updates: ``dense`` (fused Adam), ``lazy`` or ``deferred`` (row-sparse Adam for the item tables).
        factory: the user's optimizer (``--model.optimizer``), given the parameters (or, with tensor-parallel
            tables, a group per device mesh: foreach and fused kernels refuse a list mixing DTensors with
            plain tensors).
    """
    if factory is not None:
        groups = parameter_groups(module.parameters())
        return factory(groups if len(groups) > 1 else module.parameters())
    lr, betas, weight_decay = optimization.lr, tuple(optimization.betas), optimization.weight_decay
    if item_updates in ("lazy", "deferred"):
        return item_table_lazy_adam(module, lr, betas, weight_decay, catch_up=item_updates == "deferred")
    # Fused Adam: one pass over each parameter instead of ~10 foreach kernels. The dense item table
    # dominates the parameters, so this is most of a CPU step's optimizer cost (docs/performance.md);
    # the update is the same Adam. One group per device mesh (sharding.parameter_groups): the fused kernel
    # refuses a list that mixes tensor-parallel tables (DTensors) with plain tensors.
    return torch.optim.Adam(parameter_groups(module.parameters()), lr=lr, betas=betas, weight_decay=weight_decay,
                            fused=fused_adam_supported(module.parameters()) or None)


def scaled_loss(loss: Tensor, positions: int, positions_per_batch: float | None,
                optimization: OptimizationOptions) -> Tensor:
    """The batch's mean loss scaled as ``loss_normalization`` says (``epoch``: by its share of the epoch)."""
    if positions_per_batch is not None and optimization.loss_normalization == "epoch":
        return loss * (positions / positions_per_batch)
    return loss
