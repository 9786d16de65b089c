"""The run's ``config.yaml``, written beside its checkpoints, and the run's folders checked before training."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from ..atomic import check_writable_folder, write_text
from ..data.locations import resolved_path

__all__ = ["RunConfigCallback", "check_run_folders", "run_folder"]


RUN_FOLDER_OPTION = "--trainer.default_root_dir"


def check_run_folders(trainer: L.Trainer) -> None:
    """Fail before training, with one line, when the folders ``fit`` writes to cannot be written.

    The logger's folder (where the config and, by default, the checkpoints go), else the run's
    folder when checkpoints are saved, and every checkpoint callback's own ``dirpath``. A read-only
    mount would otherwise stop the run with a traceback when the logger first writes, or after the
    first epoch when the first checkpoint is saved.

    Raises:
        OutputError: naming the folder and the reason.
    """
    folders = {}
    if trainer.loggers:
        folders[trainer.log_dir] = "the run's log folder"
    elif trainer.checkpoint_callback is not None:
        folders[trainer.default_root_dir] = "the run's folder"
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "dirpath", None):
            folders[callback.dirpath] = "the checkpoint folder"
    for folder, what in folders.items():
        if folder and "://" not in str(folder):
            check_writable_folder(folder, what, RUN_FOLDER_OPTION + (" or the checkpoint callback's dirpath"
                                                                     if what == "the checkpoint folder" else ""))


def run_folder(trainer: L.Trainer) -> str:
    """The folder of the run's files with a logger: where ``ModelCheckpoint`` puts ``checkpoints/`` by default.

    TensorBoard and CSV: the logger's ``log_dir`` (``save_dir/name/version_N``). Other loggers (W&B, MLflow,
    ...): ``save_dir/name/version`` as ``ModelCheckpoint`` builds it (W&B: ``save_dir/project/run id``), not
    ``trainer.log_dir``, which is their ``save_dir`` shared by every run (the working folder for
    ``configs/logger/wandb.yaml``). Every process gets rank 0's folder.
    """
    logger = trainer.loggers[0]
    if isinstance(logger, (TensorBoardLogger, CSVLogger)):
        return trainer.log_dir  # (broadcast from rank 0)
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return trainer.strategy.broadcast(os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name),
                                                   version))


def free_name(path: str) -> str:
    """``path``, or ``config-1.yaml``, ``config-2.yaml``, ... beside it when that file exists."""
    stem, suffix = os.path.splitext(path)
    candidate, number = path, 1
    while os.path.exists(candidate):
        candidate, number = f"{stem}-{number}{suffix}", number + 1
    return candidate


class RunConfigCallback(SaveConfigCallback):
    """Save the run's ``config.yaml`` in the run's folder, never in the working directory, atomically.

    With a logger that is the run's version folder (:func:`run_folder`: the logger's ``log_dir``, or for
    W&B ``save_dir/project/run id``, beside ``checkpoints/``); without one, the folder of the checkpoints;
    without either, nothing is saved (no run folder exists). Only ``fit`` starts a run:
    ``validate``/``test``/``predict`` save nothing.

    Another run's config is never overwritten: when the folder holds a ``config.yaml`` already (a resumed
    run's checkpoint folder, a reused version), this run's is written beside it as ``config-1.yaml``,
    ``config-2.yaml``, ... and one line says so (``save_config_kwargs={"overwrite": True}`` replaces it).

    The file is written whole or not at all (``atomic.py``); a relative ``--data.path`` is written absolute, as
    the checkpoints store it (``data/locations.resolved_path``).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved or stage != "fit" or trainer.logger is None:
            return  # (without a logger: saved in on_fit_start, after ModelCheckpoint checked its folder is new)
        config_path = os.path.join(run_folder(trainer), self.config_filename)
        if trainer.is_global_zero:
            self._save(config_path, skip_unset=False)  # (as LightningCLI saves it: every option, null ones too)
            self.save_config(trainer, pl_module, stage)
        self.already_saved = trainer.strategy.broadcast(True)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.already_saved or trainer.logger is not None:
            return
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and trainer.is_global_zero:
            folder = checkpoint.dirpath or os.path.join(trainer.default_root_dir, "checkpoints")
            self._save(os.path.join(folder, self.config_filename))
        self.already_saved = True

    def _save(self, path: str, skip_unset: bool = True) -> None:
        """Write the config to ``path`` atomically, or beside another run's config there.

        A remote or multi-file config is saved by jsonargparse itself.
        """
        if not self.overwrite and "://" not in path and os.path.exists(path):
            taken, path = path, free_name(path)
            rank_zero_info(f"[sasrec-lightning] {taken} holds an earlier run's config (kept); this run's config is "
                           f"{os.path.basename(path)} beside it")
        config = self.config.clone()
        data_path = config.get("data.init_args.path")
        if isinstance(data_path, str) and data_path:  # as the checkpoint stores it: usable from any folder
            config["data.init_args.path"] = resolved_path(data_path)
        if "://" in path or self.multifile:
            self.parser.save(config, path, skip_unset=skip_unset, overwrite=self.overwrite, multifile=self.multifile)
            return
        write_text(path, self.parser.dump(config, skip_unset=skip_unset), "the run's config", RUN_FOLDER_OPTION)

