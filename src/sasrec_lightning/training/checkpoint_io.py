"""Lightning's checkpoint files, written so a crash cannot empty them and read with the package's checks.

:class:`SafeCheckpointIO` is a ``CheckpointIO`` plugin (Lightning's ``TorchCheckpointIO`` for local
files, changed in two places):

* **saving**: ``torch.save`` into a temporary file beside the checkpoint, flushed and renamed over it
  (:mod:`~sasrec_lightning.atomic`). Lightning's own saving writes to a temporary file in ``$TMPDIR``
  and moves it; when ``$TMPDIR`` is another file system (a tmpfs, node-local scratch) the move is a
  copy over the old checkpoint, and a kill during it leaves ``last.ckpt`` empty or cut.
* **loading**: :func:`~sasrec_lightning.checkpoints.read_checkpoint`, always with ``weights_only=True``:
  an empty or cut file, a compression bomb or a pickled object gets one paragraph naming the file,
  also for ``--ckpt_path last`` / ``best``, which Lightning resolves and loads itself.

``sasrec-lightning`` installs it in every Trainer that uses Lightning's default plugin; in your own
code: ``Trainer(plugins=[SafeCheckpointIO()])``. Remote paths (``s3://...``) keep Lightning's
``fsspec`` path (with ``weights_only=True``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..atomic import atomic_write, remove_stale_temporaries
from ..errors import CheckpointError
from .checkpoints import read_checkpoint

__all__ = ["SafeCheckpointIO", "use_safe_checkpoint_io"]


def _remote(path) -> bool:
    text = str(path)
    return "://" in text and not text.startswith("file://")


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local saves and checked, ``weights_only`` loads (see the module)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` whole or not at all.

        Raises:
            OutputError: the disk is full, the file-size limit is reached or the folder is read-only; the
                previous file at ``path`` is left as it was.
        """
        if storage_options is not None or _remote(path):
            super().save_checkpoint(checkpoint, path, storage_options)  # (Lightning's error for storage_options)
            return
        remove_stale_temporaries(path, suffix=".ckpt")  # (a killed save of epoch=3-step=40.ckpt too)
        with atomic_write(path, "checkpoint", "--trainer.default_root_dir or the checkpoint callback's dirpath"
                          ) as handle:
            torch.save(checkpoint, handle)

    def load_checkpoint(self, path, map_location: Callable | str | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Read ``path`` with :func:`~sasrec_lightning.checkpoints.read_checkpoint` (``weights_only=True``).

        Raises:
            CheckpointError: ``weights_only=False`` was asked for, or the file is no usable checkpoint.
            FileNotFoundError: there is no file at ``path`` (as Lightning's plugin).
        """
        if weights_only is False:
            raise CheckpointError(f"checkpoint {str(path)!r}: weights_only=False was asked for, but checkpoints are "
                                  "only loaded with weights_only=True (unpickling anything else could run "
                                  "arbitrary code)")
        if _remote(path):
            return super().load_checkpoint(path, map_location=map_location or "cpu", weights_only=True)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return read_checkpoint(path, map_location=map_location or "cpu")


def use_safe_checkpoint_io(trainer: L.Trainer) -> None:
    """Give ``trainer`` a :class:`SafeCheckpointIO` when it uses Lightning's default plugin.

    A plugin of the user's own (``--trainer.plugins``, or the strategy's ``checkpoint_io``) is kept.
    """
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = SafeCheckpointIO()
