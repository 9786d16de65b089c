"""``StopOnSigterm``: a run ends cleanly on SIGTERM, also under DDP; ``CheckBatches``: the batch contract, checked once.

(The other lifecycles around the module have their own homes: the speed parts' in
``fast/speed.py``, the gathered evaluation of a sharded model in ``sharding.py``.)
"""

from __future__ import annotations

import signal
import threading

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..data.contract import check_batch

__all__ = ["StopOnSigterm", "CheckBatches"]


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


class CheckBatches(L.Callback):
    """Check the first batch of each stage against the batch contract (:mod:`~sasrec_lightning.data.contract`).

    ``SASRecModule.configure_callbacks`` adds it, so a data module that is not ours gets one
    :class:`~sasrec_lightning.errors.DataError` naming the missing or malformed key instead of a
    ``KeyError`` or a shape error deep inside a step. One check per stage and run: no cost per step.
    """

    def __init__(self) -> None:
        self.checked: set[str] = set()

    def _check(self, trainer: L.Trainer, module: L.LightningModule, batch, stage: str) -> None:
        if stage in self.checked:
            return
        self.checked.add(stage)
        datamodule = trainer.datamodule
        source = type(datamodule).__name__ if datamodule is not None else "the dataloader"
        exclude_seen = module.predict_exclude_seen if stage == "predict" else module.evaluation.exclude_seen
        check_batch(batch, stage, module.model.num_items, module.loss.needs_negatives, module.evaluation.protocol,
                    exclude_seen, source)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._check(trainer, pl_module, batch, "train")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._check(trainer, pl_module, batch, "validate")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._check(trainer, pl_module, batch, "test")

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self._check(trainer, pl_module, batch, "predict")
