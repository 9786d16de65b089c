"""Callbacks of a run's lifecycle: stopping, saving where it stopped, the resumed epoch's bar, the batch contract.

``StopOnSigterm``: a run ends cleanly on SIGTERM, also under DDP; ``SaveOnInterrupt``: Ctrl-C and SIGTERM save
``last.ckpt`` where the run stopped, and ``last.ckpt`` is the final state after ``fit``; ``ResumedEpochProgress``: a
resumed epoch is named in the progress bar; ``CheckBatches``: the batch contract, checked once.

(The other lifecycles around the module have their own homes: the speed parts' in
``fast/speed.py``, the gathered evaluation of a sharded model in ``sharding.py``.)
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import lightning as L
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.trainer.states import RunningStage, TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..data.contract import check_batch
from ..data.loaders import batches_done_this_epoch
from ..model.divergence import described_parameters, nonfinite_parameters

__all__ = ["StopOnSigterm", "SaveOnInterrupt", "ResumedEpochProgress", "CheckBatches"]


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


def _last_checkpoints(trainer: L.Trainer, new_names: bool = True) -> list[str]:
    """Where each ``ModelCheckpoint`` with ``save_last`` keeps its ``last.ckpt``.

    The file the callback wrote in this run (or the resumed one's); otherwise ``last.ckpt`` in its folder, or
    ``last-v1.ckpt``, ... when another run's is there (as ``ModelCheckpoint`` names it).
    """
    paths = []
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint) or not callback.save_last or not callback.dirpath:
            continue
        path = callback.last_model_path
        if not path and new_names:
            metrics = {**trainer.callback_metrics, "epoch": torch.tensor(trainer.current_epoch),
                       "step": torch.tensor(trainer.global_step)}
            path = callback.format_checkpoint_name(metrics, callback.CHECKPOINT_NAME_LAST)
            version = callback.STARTING_VERSION
            while _version_counter_on(callback) and os.path.exists(path):
                path = callback.format_checkpoint_name(metrics, callback.CHECKPOINT_NAME_LAST, ver=version)
                version += 1
            callback.last_model_path = path  # (part of the state it saves: a resumed run keeps the name)
        paths.append(path)
    return paths


def _version_counter_on(callback: ModelCheckpoint) -> bool:
    """``ModelCheckpoint(enable_version_counter=...)``: whether it names a file ``last-v1.ckpt`` beside an existing one.

    The option is kept only in a private attribute (Lightning 2.6); this is the one place that reads it
    (``tests/test_interrupt_and_resume.py`` fails when Lightning moves it). Without it: on, Lightning's default.
    """
    return bool(getattr(callback, "_enable_version_counter", True))


def _saved_step(path: str) -> int | None:
    """The ``global_step`` of the checkpoint at ``path`` (``None``: none there, or unreadable); tensors stay on disk."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # noqa: BLE001  (any unreadable file: it is written anew)
        return None


class SaveOnInterrupt(L.Callback):
    """Ctrl-C or SIGTERM during ``fit`` saves ``last.ckpt`` where training stopped; after ``fit`` it is the final state.

    Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when it saves a checkpoint (every
    ``every_n_train_steps``, at an epoch end): an interrupted run resumed from the periodic one, possibly epochs
    earlier, and after ``fit`` ``last.ckpt`` could be steps behind the final weights. This callback:

    * **Ctrl-C** (SIGINT, single-process runs): the first one stops training at the end of the current batch and
      saves ``last.ckpt`` of every ``ModelCheckpoint`` with ``save_last``, through the trainer's checkpoint IO
      (atomic with :class:`~sasrec_lightning.training.checkpoint_io.SafeCheckpointIO`), in the same state the
      periodic save writes there, so ``fit --ckpt_path last`` continues with the next batch. A second Ctrl-C stops
      at once without saving (Lightning ignores Ctrl-C while it shuts down, and an atomic save cannot be cut).
    * **SIGTERM** (:class:`StopOnSigterm`, at a training batch end): the same save, in single-process runs.
    * **The end of fit**: ``last.ckpt`` is written again when it does not hold the final step (every process).

    Non-finite weights are never saved (the save is skipped with a warning, the earlier ``last.ckpt`` stays).
    Under DDP an interrupt saves nothing (saving is a collective, and the other processes may be elsewhere): the
    periodic ``last.ckpt`` is what resumes.
    """

    def __init__(self) -> None:
        self.interrupted = False  # a Ctrl-C arrived: stop at the next training batch end
        self._stopping = False  # this callback raised the KeyboardInterrupt (the state is a batch end's)
        self._previous = None

    # ------------------------------------------------------------------ Ctrl-C: stop at the next batch end
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.interrupted = self._stopping = False
        if trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: object) -> None:
        if self.interrupted:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without saving
        self.interrupted = True
        sys.stderr.write("\n[sasrec-lightning] Ctrl-C: stopping after this batch and saving last.ckpt (Ctrl-C again "
                         "to stop at once without saving)\n")

    def _restore_sigint(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous)
        self._previous = None

    def on_train_batch_end(self, trainer: L.Trainer, *_) -> None:
        if self.interrupted:
            self._stopping = True
            raise KeyboardInterrupt  # Lightning's graceful shutdown: on_exception, then exit status 1

    # ------------------------------------------------------------------ the saves
    def _save_last(self, trainer: L.Trainer, pl_module: L.LightningModule, paths: list[str], when: str,
                   strategy=None) -> None:
        if not paths:
            return
        names = nonfinite_parameters(pl_module, strategy)
        if names:
            rank_zero_warn(f"not saving last.ckpt {when}: the model's weights are not finite "
                           f"({described_parameters(names, pl_module)}); the last.ckpt saved before keeps finite ones")
            return
        for path in paths:
            trainer.save_checkpoint(path, weights_only=False)  # (the full state: resumable)
        rank_zero_info(f"[sasrec-lightning] saved {', '.join(paths)} {when} (step {trainer.global_step}); continue "
                       "with fit --ckpt_path last")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()
        if trainer.fast_dev_run or trainer.state.fn != TrainerFn.FITTING:
            return
        # A ModelCheckpoint that wrote no last.ckpt in this run (or the resumed one) writes it in its own
        # on_train_end, after this one: only the ones it wrote earlier may be behind.
        paths = [path for path in _last_checkpoints(trainer, new_names=False) if path]
        behind = any(_saved_step(path) != trainer.global_step for path in paths) if trainer.is_global_zero else False
        if trainer.strategy.broadcast(behind):  # (every process saves, or none)
            self._save_last(trainer, pl_module, paths, "at the end of fit", trainer.strategy)
        if self.interrupted:  # Ctrl-C during the last validation: fit ended anyway, but stop before testing
            self._stopping = False
            raise KeyboardInterrupt

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        graceful = (isinstance(exception, KeyboardInterrupt) and self._stopping) or (
            isinstance(exception, SIGTERMException) and trainer.state.stage == RunningStage.TRAINING)
        if not graceful or trainer.state.fn != TrainerFn.FITTING or trainer.fast_dev_run:
            return
        if trainer.world_size > 1:
            rank_zero_info("[sasrec-lightning] interrupted: a DDP run saves no checkpoint at the interrupt; "
                           "fit --ckpt_path last resumes from the last periodic one")
            return
        self._save_last(trainer, pl_module, _last_checkpoints(trainer), "at the interrupt")


class ResumedEpochProgress(L.Callback):
    """Name the epoch in Lightning's progress bar also when ``fit --ckpt_path`` resumes in the middle of it.

    Lightning's ``TQDMProgressBar`` sets ``Epoch N`` and the number of batches in ``on_train_epoch_start``,
    which a run resumed mid-epoch skips for that epoch, so its bar read ``Training: 61/?``. Here the bar of
    the resumed epoch gets them at ``on_train_start`` (after the bar's own), counting from the batches done.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar = trainer.progress_bar_callback
        if not isinstance(bar, TQDMProgressBar) or bar.is_disabled:
            return
        tqdm = bar.train_progress_bar
        tqdm.reset(total=bar.total_train_batches if bar.total_train_batches != float("inf") else None)
        tqdm.initial = tqdm.n = batches_done_this_epoch(trainer)  # (the rate counts the batches of this run)
        tqdm.set_description(f"Epoch {trainer.current_epoch}")


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
