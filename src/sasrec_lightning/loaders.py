"""A DataLoader that Lightning can checkpoint, so ``fit --ckpt_path last`` resumes mid-epoch exactly.

Lightning saves the ``state_dict`` of every training loader that has one (``_Stateful``) in the
checkpoint and, when it restarts an unfinished epoch, hands it back through ``load_state_dict``
before iterating. Without it the resumed epoch would start again from its first batch: the model
would see those batches twice and the remaining ones with the wrong batch indices.

The state is two integers (checkpoint-safe under ``torch.load(weights_only=True)``): the epoch and
how many batches of it this rank finished. The count comes from the trainer's progress tracker,
not from the iterator, because Lightning fetches a batch ahead of the one being trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader

from .batches import UserBatchSampler

__all__ = ["ResumableLoader"]


class ResumableLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` over a :class:`UserBatchSampler` with resumable state.

    Args:
        *args: passed to ``DataLoader``; ``sampler`` must be a :class:`UserBatchSampler`.
        batches_done: returns how many batches of the current epoch were trained on (e.g. from
            ``trainer.fit_loop.epoch_loop.batch_progress``); ``None`` saves 0 (resume at the epoch start).
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
