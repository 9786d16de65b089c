"""The global temporal split: everything after a cut-off time is held out (a leakage-free protocol).

It exposes the same arrays as :class:`~sasrec_lightning.batches.LeaveOneOutSplit` (``data``,
``starts``, ``ends``, ``train_ends``, ``train_users``, ``eval_users``, ``history_end``), so
``TrainBatches`` and ``EvalBatches`` work with it unchanged; ``stage_users`` says who is evaluated
at each stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import DataError
from .preprocessing import SequenceData

__all__ = ["TemporalSplit", "temporal_cutoffs"]


def temporal_cutoffs(data: SequenceData, val_cutoff: int | None, test_cutoff: int | None,
                     quantiles: tuple[float, float] = (0.8, 0.9)) -> tuple[int, int]:
    """The (validation, test) cut-off times: given ones, or the ``quantiles`` of all timestamps."""
    if data.timestamps is None:
        raise DataError("the temporal split needs timestamps; set --data.timestamp_column (the source has none "
                        "selected) or use --data.holdout leave_one_out")
    if val_cutoff is None:
        val_cutoff = int(np.quantile(data.timestamps, quantiles[0], method="higher"))
    if test_cutoff is None:
        test_cutoff = int(np.quantile(data.timestamps, quantiles[1], method="higher"))
    if val_cutoff > test_cutoff:
        raise DataError(f"val_cutoff ({val_cutoff}) must not be after test_cutoff ({test_cutoff})")
    return int(val_cutoff), int(test_cutoff)


@dataclass
class TemporalSplit:
    """Global temporal split at two times ``val_cutoff <= test_cutoff``.

    - train: every interaction before ``val_cutoff``;
    - val: users with a training interaction and one in ``[val_cutoff, test_cutoff)``; the target is
      their first interaction at or after ``val_cutoff``, the input everything before it;
    - test: users with an interaction before ``test_cutoff`` and one at or after it; the target is
      their first interaction at or after ``test_cutoff``, the input everything before it (validation
      period included: it is in the past at test time).

    No interaction at or after a cut-off is ever an input at that stage, and the model never trains
    on anything after ``val_cutoff``.
    """

    data: SequenceData
    val_cutoff: int
    test_cutoff: int

    def __post_init__(self) -> None:
        if self.data.timestamps is None:
            raise DataError("the temporal split needs timestamps; set --data.timestamp_column")
        self.starts = self.data.offsets[:-1]  # (U,)
        self.ends = self.data.offsets[1:]  # (U,)
        lengths = self.ends - self.starts  # (U,)
        owner = np.repeat(np.arange(self.data.num_users), lengths)  # (n,)
        stamps = self.data.timestamps

        def first_at_or_after(cutoff: int) -> np.ndarray:  # (U,) index of a user's first action >= cutoff
            before = np.bincount(owner, weights=stamps < cutoff, minlength=self.data.num_users)
            return self.starts + before.astype(np.int64)

        self.val_positions = first_at_or_after(self.val_cutoff)  # (U,)
        self.test_positions = first_at_or_after(self.test_cutoff)  # (U,)
        self.train_ends = self.val_positions  # (U,)
        self.train_users = np.flatnonzero(self.train_ends - self.starts >= 2)
        in_val = self.val_positions < self.test_positions  # an action in [val_cutoff, test_cutoff)
        self.val_users = np.flatnonzero((self.val_positions > self.starts) & in_val)
        self.test_users = np.flatnonzero((self.test_positions > self.starts) & (self.test_positions < self.ends))
        self.eval_users = self.test_users

    def stage_users(self, stage: str) -> np.ndarray:
        """The users evaluated at ``stage`` (everyone for ``predict``)."""
        if stage in ("val", "validate"):
            return self.val_users
        if stage == "test":
            return self.test_users
        if stage == "predict":
            return np.arange(self.data.num_users)
        raise ValueError(f"unknown stage {stage!r}; expected val, test or predict")

    def history_end(self, stage: str) -> np.ndarray:
        """One past the last input item of every user at ``stage`` (the target sits there)."""
        if stage == "train":
            return self.train_ends
        if stage in ("val", "validate"):
            return self.val_positions
        if stage == "test":
            return self.test_positions
        if stage == "predict":
            return self.ends
        raise ValueError(f"unknown stage {stage!r}; expected train, val, test or predict")
