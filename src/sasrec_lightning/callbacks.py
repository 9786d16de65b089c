"""``RowGradients``: the training callback that switches the item tables' row-wise gradients on and off."""

from __future__ import annotations

from typing import Literal

import lightning as L

from .row_grad import ItemEmbedding

__all__ = ["RowGradients"]


class RowGradients(L.Callback):
    """Keep every :class:`~sasrec_lightning.row_grad.ItemEmbedding` gradient row-wise while training.

    On from the start of training (before the first forward pass) to its end (or an exception);
    outside training the tables are ordinary embeddings. ``SASRecModule.configure_callbacks``
    returns one, switched by its ``row_gradients`` option.

    Args:
        enabled: ``True``, or ``"auto"``: only when the model trains on the CPU (on a GPU the dense
            gradient costs little and the plain path runs).
    """

    def __init__(self, enabled: bool | Literal["auto"] = "auto") -> None:
        if enabled not in (True, False, "auto"):
            raise ValueError(f"row_gradients must be true, false or 'auto', got {enabled!r}")
        self.enabled = enabled

    def _switch(self, module: L.LightningModule, on: bool, full_clear: bool = False) -> None:
        for table in module.modules():
            if isinstance(table, ItemEmbedding):
                table.keep_row_gradients(on, full_clear)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        on = pl_module.device.type == "cpu" if self.enabled == "auto" else self.enabled
        # Under DDP the all-reduce writes rows that other processes touched: clear whole buffers.
        self._switch(pl_module, on, full_clear=trainer.world_size > 1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._switch(pl_module, False)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._switch(pl_module, False)
