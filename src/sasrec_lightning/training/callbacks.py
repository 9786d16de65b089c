"""Callbacks that own a lifecycle around the module.

``RowGradients`` switches the item tables' row-wise gradients on and off while training;
``GatheredEvaluation`` keeps a sharded model gathered while it is evaluated or predicts;
``StopOnSigterm`` ends a run cleanly on SIGTERM, also under DDP.
"""

from __future__ import annotations

import signal
import threading
from typing import Literal

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..errors import OptionError
from ..fast.row_grad import ItemEmbedding
from .sharding import gather, is_sharded, reshard

__all__ = ["RowGradients", "GatheredEvaluation", "StopOnSigterm", "shards_parameters"]


def shards_parameters(strategy: Strategy) -> bool:
    """Whether ``strategy`` shards the parameters across processes (FSDP, or ``ModelParallelStrategy``).

    Under ``ModelParallelStrategy`` that is FSDP2 or the tensor-parallel item tables (``sharding.py``).
    """
    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))


class RowGradients(L.Callback):
    """Keep every :class:`~sasrec_lightning.row_grad.ItemEmbedding` gradient row-wise while training.

    On from the start of training (before the first forward pass) to its end (or an exception);
    outside training the tables are ordinary embeddings. ``SASRecModule.configure_callbacks``
    returns one, switched by its ``row_gradients`` option.

    Args:
        enabled: ``True``, or ``"auto"``: only when the model trains on the CPU (on a GPU the dense
            gradient costs little and the plain path runs) and is not sharded.

    Under a sharding strategy (FSDP, or tensor parallelism under ``ModelParallelStrategy``) the table is
    a ``DTensor`` whose gradient the strategy owns, so the row-wise buffer cannot work: ``auto`` is off
    there, and ``True`` is an error.
    """

    def __init__(self, enabled: bool | Literal["auto"] = "auto") -> None:
        if enabled not in (True, False, "auto"):
            raise ValueError(f"row_gradients must be true, false or 'auto', got {enabled!r}")
        self.enabled = enabled

    def _switch(self, module: L.LightningModule, on: bool, full_clear: bool = False) -> None:
        for table in module.modules():
            if isinstance(table, ItemEmbedding):
                table.keep_row_gradients(on, full_clear)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.enabled is True and shards_parameters(trainer.strategy):
            raise OptionError(
                f"--model.init_args.row_gradients true cannot be used with {type(trainer.strategy).__name__}: the "
                "sharded item table's gradient is the strategy's (FSDP reduces it, tensor parallelism splits it); "
                "expected auto (off under sharding) or false"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        on = self.enabled
        if on == "auto":
            on = pl_module.device.type == "cpu" and not shards_parameters(trainer.strategy)
        # Under DDP the all-reduce writes rows that other processes touched: clear whole buffers.
        self._switch(pl_module, on, full_clear=trainer.world_size > 1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._switch(pl_module, False)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._switch(pl_module, False)


class GatheredEvaluation(L.Callback):
    """Under ``ModelParallelStrategy``, gather the sharded encoder once for validation, test and predict.

    Evaluation shards users unevenly (each counted once), so processes run different numbers of
    batches, and full ranking reads the whole output table outside a forward pass: both need the
    parameters whole, not gathered batch by batch (:func:`~sasrec_lightning.sharding.gather`: FSDP2
    units, or the tensor-parallel tables). They are resharded when the stage ends, before checkpoints
    are written. ``SASRecModule.configure_callbacks`` returns one when the model is sharded.
    """

    def __init__(self) -> None:
        self.sharded_tables: dict = {}  # tensor-parallel table weights set aside while gathered

    def _gather(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if is_sharded(pl_module.model):
            self.sharded_tables = gather(pl_module.model)

    def _reshard(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if is_sharded(pl_module.model):
            reshard(pl_module.model, self.sharded_tables)
            self.sharded_tables = {}

    on_validation_start = on_test_start = on_predict_start = _gather
    on_validation_end = on_test_end = on_predict_end = _reshard


class StopOnSigterm(L.Callback):
    """On SIGTERM, stop at the end of the current batch with Lightning's ``SIGTERMException``, in every process.

    Replaces Lightning's own SIGTERM handler while the loops run. That one also broadcasts from inside
    the signal handler (Lightning 2.6), a collective that the other DDP processes are not running at that
    moment: when the signal lands mid-step the processes wait for each other for good (Lightning issue
    #20806; here 4 of 15 runs, with either process signalled). This handler only takes note and forwards
    the signal to the processes this one started (rank 0 of a ``ddp`` run launches the others); each
    process then stops at its next batch end, and a process whose peer stopped first gets gloo's closed
    connection in its next collective. ``cli.exit_on_reported_errors`` turns both into one ``error:``
    line. Not installed under SLURM with auto-requeue, where Lightning's handling of the signal is what
    requeues the job.
    """

    def __init__(self) -> None:
        self.received = False

    def _install(self, trainer: L.Trainer, *_) -> None:
        environment = getattr(trainer.strategy, "cluster_environment", None)
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            return
        if threading.current_thread() is threading.main_thread():  # (signals can only be set there)
            # After Lightning registered its handlers (at the start of each run); it restores the earlier
            # ones when the run ends, and this one with them.
            signal.signal(signal.SIGTERM, lambda signum, frame: self._on_sigterm(trainer, signum))

    def _on_sigterm(self, trainer: L.Trainer, signum: int) -> None:
        if not self.received and trainer.strategy.launcher is not None:
            trainer.strategy.launcher.kill(signum)  # the processes this one started (none elsewhere)
        self.received = True

    def _stop_if_asked(self, *_) -> None:
        if self.received:
            raise SIGTERMException()

    on_sanity_check_start = on_train_start = on_validation_start = on_test_start = on_predict_start = _install
    on_train_batch_end = on_validation_batch_end = on_test_batch_end = on_predict_batch_end = _stop_if_asked
