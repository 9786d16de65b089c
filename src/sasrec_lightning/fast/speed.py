"""The CPU speed parts, chosen by one option group and applied to a built model from one place.

The model (``model/``) is plain PyTorch: ``nn.Dropout``, ``nn.Embedding`` item tables, SDPA, the
written-out losses. :class:`SpeedParts`, a callback the module returns, applies at the start of
``fit`` what :class:`SpeedOptions` switches on, each by swapping modules for versions that compute
the same thing faster (same parameters, same state dict):

* ``pooled_dropout``: dropout masks from one pool of cheap random bits per forward pass
  (:mod:`.dropout`);
* ``row_gradients``: item-table gradients kept row-wise, filled and cleared row by row
  (:mod:`.row_grad`), switched on for training only;
* ``fused_losses``: the losses over shared negatives as fused operations on reused blocks, and the
  full softmax's blocks reused (:mod:`.fused_sampled`, :mod:`.workspace`);
* ``item_updates``: row-sparse Adam for the item tables (:mod:`.lazy_adam`; the module's
  ``configure_optimizers`` builds it, since a callback cannot).

``auto`` means: on CPU only, where each was measured to pay (``docs/performance.md``); on a GPU
the plain path runs. The tests that show both paths compute the same are ``tests/test_seams.py``
and the tests of each part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import lightning as L
import torch
from torch import nn

from ..errors import OptionError
from ..model.encoder import SASRec
from ..model.losses import ChunkedSoftmax, SampledSoftmax, SharedGBCE
from ..validation import one_of
from .dropout import use_pooled_dropout
from .fused_sampled import FusedGBCE, FusedSampledSoftmax
from .row_grad import RowGradients, use_row_gradients
from .workspace import Workspace

__all__ = ["SpeedOptions", "SpeedParts", "apply_speed_parts", "use_fused_losses", "release_loss_memory"]

Switch = bool | Literal["auto"]
ItemUpdates = Literal["dense", "lazy", "deferred"]


@dataclass(frozen=True)
class SpeedOptions:
    """The CPU speed parts (``--model.speed.*``); none changes what is computed, except ``item_updates: lazy``.

    Args:
        pooled_dropout: a training pass's dropout masks from one pool of cheap random bits
            (``fast/dropout.py``); ``auto``: on CPU only; ``false``: ``nn.Dropout`` and SDPA's dropout.
        row_gradients: item-table gradients filled and cleared row by row while training
            (``fast/row_grad.py``); ``auto``: on CPU only, and off under a sharding strategy;
            ``false``: ordinary dense embedding gradients.
        fused_losses: the losses over shared negatives (``sampled_softmax``, ``gbce`` with
            ``shared_negatives``) as one fused operation on a reused logit block, and the full
            softmax's logit blocks reused (``fast/fused_sampled.py``); ``false``: the written-out losses
            (same values).
        item_updates: how Adam updates the item tables: ``dense`` (the paper's: every row and both
            moments every step) or ``lazy`` (``fast/lazy_adam.py``: only the rows a step used; the moments
            of untouched rows do not decay and weight decay reaches only the rows used, so it is a
            different optimizer) or ``deferred`` (lazy's cost, dense Adam's trajectory: a row used again
            first catches up in closed form on the zero-gradient steps it missed, and every row is
            brought up to date before validation and at the end of each epoch and of training; equal to
            dense Adam up to ``eps`` in the skipped steps when ``weight_decay`` is 0, except that a
            forward pass reads a row that missed steps as of its last update). ``lazy`` and
            ``deferred`` pay off with large catalogues and sampled losses; they need
            ``optimization.l2_emb: 0`` and no custom ``optimizer``; ``deferred`` needs
            ``beta1 < sqrt(beta2)``.
    """

    pooled_dropout: Switch = "auto"
    row_gradients: Switch = "auto"
    fused_losses: bool = True
    item_updates: ItemUpdates = "dense"

    def __post_init__(self) -> None:
        section = "model.speed"
        one_of(section, "pooled_dropout", self.pooled_dropout, (True, False, "auto"))
        one_of(section, "row_gradients", self.row_gradients, (True, False, "auto"))
        one_of(section, "item_updates", self.item_updates, ItemUpdates)


def _on(switch: Switch, cpu: bool) -> bool:
    return cpu if switch == "auto" else bool(switch)


def use_fused_losses(loss: nn.Module) -> None:
    """Swap the written-out logit parts of ``loss`` for fused ones, and give the full softmax a reused block."""
    for parent in list(loss.modules()):
        for name, child in parent.named_children():
            if type(child) is SampledSoftmax:
                setattr(parent, name, FusedSampledSoftmax())
            elif type(child) is SharedGBCE:
                setattr(parent, name, FusedGBCE())
            elif isinstance(child, ChunkedSoftmax) and child.blocks is None:
                child.blocks = Workspace()


def release_loss_memory(loss: nn.Module) -> None:
    """Let go of the blocks the loss keeps between steps (after training, before evaluation)."""
    for module in loss.modules():
        if isinstance(module, (FusedSampledSoftmax, FusedGBCE)):
            module.release_memory()
        elif isinstance(module, ChunkedSoftmax) and isinstance(module.blocks, Workspace):
            module.blocks.clear()


def apply_speed_parts(encoder: SASRec, loss: nn.Module, options: SpeedOptions, device: torch.device,
                      sharded: bool = False) -> list[str]:
    """Apply to a built model the speed parts ``options`` switch on for ``device``; returns their names.

    ``item_updates`` is the optimizer's (the module builds it). Row gradients are never applied to a
    sharded model (its table's gradient is the strategy's); ``row_gradients: true`` there is refused.
    """
    cpu = device.type == "cpu"
    applied = []
    if _on(options.pooled_dropout, cpu) and use_pooled_dropout(encoder) is not None:
        applied.append("pooled_dropout")
    if options.row_gradients is True and sharded:
        raise OptionError(
            "--model.speed.row_gradients true cannot be used with a sharding strategy: the sharded item table's "
            "gradient is the strategy's (FSDP reduces it, tensor parallelism splits it); expected auto (off under "
            "sharding) or false"
        )
    if _on(options.row_gradients, cpu) and not sharded:
        use_row_gradients(encoder)
        applied.append("row_gradients")
    if options.fused_losses:
        use_fused_losses(loss)
        applied.append("fused_losses")
    return applied


class SpeedParts(L.Callback):
    """Applies :class:`SpeedOptions` to the module's encoder and loss when ``fit`` starts, and owns their lifecycle.

    The module returns one from ``configure_callbacks``. Row gradients are kept during training
    only (:class:`~.row_grad.RowGradients`); the losses' kept blocks are let go before validation and
    after training.

    Args:
        options: the module's speed options.
        sharded: the strategy shards the item tables.
    """

    def __init__(self, options: SpeedOptions, sharded: bool = False) -> None:
        self.options, self.sharded = options, sharded
        self.row_gradients = RowGradients()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            apply_speed_parts(pl_module.model, pl_module.loss, self.options, trainer.strategy.root_device, self.sharded)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.row_gradients.on_train_start(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.row_gradients.on_train_end(trainer, pl_module)
        release_loss_memory(pl_module.loss)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.row_gradients.on_exception(trainer, pl_module, exception)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        release_loss_memory(pl_module.loss)  # evaluation inside fit does not need the training step's block
