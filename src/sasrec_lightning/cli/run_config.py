"""The run's ``config.yaml``, written beside its checkpoints, and the run's folders checked before training."""

from __future__ import annotations

import os

import lightning as L
from lightning.pytorch.cli import SaveConfigCallback

from ..atomic import check_writable_folder, write_text
from ..data.locations import resolved_path

__all__ = ["RunConfigCallback", "check_run_folders"]


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


class RunConfigCallback(SaveConfigCallback):
    """Save the run's ``config.yaml`` in the run's folder, never in the working directory, atomically.

    With a logger that is the logger's ``log_dir`` (as in LightningCLI); without one, the folder of
    the checkpoints; without either, nothing is saved (no run folder exists). Only ``fit`` starts a
    run: ``validate``/``test``/``predict`` save nothing.

    The file is written whole or not at all (``atomic.py``); a relative ``--data.path`` is written absolute, as
    the checkpoints store it (``data/locations.resolved_path``).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.already_saved or stage != "fit" or trainer.logger is None:
            return  # (without a logger: saved in on_fit_start, after ModelCheckpoint checked its folder is new)
        log_dir = trainer.log_dir  # (broadcast from rank 0)
        config_path = os.path.join(log_dir, self.config_filename)
        if not self.overwrite and trainer.strategy.broadcast(trainer.is_global_zero and os.path.isfile(config_path)):
            self._refuse_overwrite(config_path)  # (on every rank)
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

    def _refuse_overwrite(self, path: str) -> None:
        raise RuntimeError(f"{type(self).__name__} expected {path} to NOT exist. Aborting to avoid overwriting "
                           "results of a previous run.")

    def _save(self, path: str, skip_unset: bool = True) -> None:
        """Write the config to ``path`` atomically (a remote or multi-file config: jsonargparse's own save)."""
        if not self.overwrite and os.path.isfile(path):
            self._refuse_overwrite(path)
        config = self.config.clone()
        data_path = config.get("data.init_args.path")
        if isinstance(data_path, str) and data_path:  # as the checkpoint stores it: usable from any folder
            config["data.init_args.path"] = resolved_path(data_path)
        if "://" in path or self.multifile:
            self.parser.save(config, path, skip_unset=skip_unset, overwrite=self.overwrite, multifile=self.multifile)
            return
        write_text(path, self.parser.dump(config, skip_unset=skip_unset), "the run's config", RUN_FOLDER_OPTION)

