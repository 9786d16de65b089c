"""A DataLoader that Lightning can checkpoint, so ``fit --ckpt_path last`` resumes mid-epoch exactly.

Lightning saves the ``state_dict`` of every training loader that has one (``_Stateful``) in the
checkpoint and, when it restarts an unfinished epoch, hands it back through ``load_state_dict``
before iterating. Without it the resumed epoch would start again from its first batch: the model
would see those batches twice and the remaining ones with the wrong batch indices.

The state is two integers (checkpoint-safe under ``torch.load(weights_only=True)``): the epoch and
how many batches of it this rank finished. The count comes from the trainer's progress tracker,
not from the iterator, because Lightning fetches a batch ahead of the one being trained on.
Lightning has no public API for that count, so :func:`batches_done_this_epoch` is the package's
only access to a private Lightning attribute, and ``tests/test_resume.py`` fails loudly when
Lightning changes it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from .batches import UserBatchSampler

__all__ = ["ResumableLoader", "batches_done_this_epoch"]


class ResumableLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` over a :class:`UserBatchSampler` with resumable state.

    Args:
        *args: passed to ``DataLoader``; ``sampler`` must be a :class:`UserBatchSampler`.
        batches_done: returns how many batches of the current epoch were trained on (e.g. from
            :func:`batches_done_this_epoch`); ``None`` saves 0 (resume at the epoch start).
        **kwargs: passed to ``DataLoader``.
    """

    def __init__(self, *args: Any, batches_done: Callable[[], int] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, UserBatchSampler):
            raise TypeError(f"ResumableLoader needs a UserBatchSampler, got {type(self.sampler).__name__}")
        self.batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        done = int(self.batches_done()) if self.batches_done is not None else 0
        return {"epoch": int(self.sampler.epoch), "batches_done": done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.skip_once(state["epoch"], state["batches_done"])


def batches_done_this_epoch(trainer: L.Trainer) -> int:
    """Training batches of the current epoch this rank has finished (its optimizer step included).

    Reads Lightning's private progress tracker (``fit_loop.epoch_loop.batch_progress``): the
    trainer exposes no public count that is exact under gradient accumulation and restarts, and a
    callback counting ``on_train_batch_end`` would have to run before every checkpointing
    callback. Kept in this one function so a Lightning upgrade that moves it fails here, by name.

    Raises:
        RuntimeError: this Lightning version keeps the count elsewhere.
    """
    try:
        return int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
    except AttributeError as error:
        raise RuntimeError(
            f"Lightning {L.__version__} has no trainer.fit_loop.epoch_loop.batch_progress.current.processed, which "
            "sasrec_lightning.loaders.batches_done_this_epoch reads to resume a run mid-epoch; update that function "
            "for this Lightning version"
        ) from error
