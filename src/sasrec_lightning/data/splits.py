"""Train / validation / test splits of the sequences: one :class:`Split` interface, two protocols.

A split is arrays of offsets into :attr:`SequenceData.items` (nothing is copied): user ``u``
trains on ``items[starts[u]:train_ends[u]]``, and at each evaluation stage its input ends at
``history_end(stage)[u]``, where the held-out target sits. :class:`LeaveOneOutSplit` is the
paper's protocol, :class:`TemporalSplit` the global-time one; ``TrainBatches``, ``EvalBatches``,
the most-popular baseline and the data module use only what :class:`Split` declares.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import DataError
from .csr import item_counts
from .preprocessing import SequenceData

__all__ = ["Split", "LeaveOneOutSplit", "TemporalSplit", "temporal_cutoffs", "training_popularity"]


class Split(Protocol):
    """What every split provides (all arrays ``(U,)`` over user rows unless said otherwise).

    Attributes:
        data: the sequences the offsets point into.
        starts: index of each user's first item in ``data.items``.
        ends: one past each user's last item.
        train_ends: one past each user's last training item (training is ``starts..train_ends``).
        train_users: ``(N,)`` rows with a next-item pair in training (at least 2 training items).
        eval_users: ``(E,)`` rows evaluated at the test stage.
    """

    data: SequenceData
    starts: np.ndarray
    ends: np.ndarray
    train_ends: np.ndarray
    train_users: np.ndarray
    eval_users: np.ndarray

    def history_end(self, stage: str) -> np.ndarray:
        """``(U,)`` one past the last input item of every user at ``stage`` (the target sits there)."""
        ...

    def stage_users(self, stage: str) -> np.ndarray:
        """The user rows evaluated at ``val``/``test`` (everyone for ``predict``)."""
        ...


def training_popularity(split: Split) -> np.ndarray:
    """Item popularity, the package's one definition: ``(I + 1,)`` int64 training interactions per item.

    Every item of every user's training part (``items[starts[u]:train_ends[u]]``) counts once per
    occurrence; index 0 (padding) is 0. Validation and test items never count, so nothing held out
    leaks into what is built from it: the most-popular baseline, the ``popularity`` evaluation
    negatives, and the items ``recommend`` answers a sequence with no known item with.
    """
    return item_counts(split.data.items, split.starts, split.train_ends, split.data.num_items)


@dataclass
class LeaveOneOutSplit:
    """The paper's split: last item = test, second-to-last = validation, the rest = training.

    Users with fewer than 3 interactions are used for training only.
    """

    data: SequenceData

    def __post_init__(self) -> None:
        self.starts = self.data.offsets[:-1]  # (U,)
        self.ends = self.data.offsets[1:]  # (U,)
        lengths = self.ends - self.starts
        self.eval_users = np.flatnonzero(lengths >= 3)  # (U_eval,)
        held_out = np.where(lengths >= 3, 2, 0)
        self.train_ends = self.ends - held_out  # (U,)
        self.train_users = np.flatnonzero(self.train_ends - self.starts >= 2)  # users with a next-item pair

    def stage_users(self, stage: str) -> np.ndarray:
        """The users evaluated at ``stage``: those with 3 interactions or more (everyone for ``predict``)."""
        if stage in ("val", "validate", "test"):
            return self.eval_users
        if stage == "predict":
            return np.arange(self.data.num_users)
        raise ValueError(f"unknown stage {stage!r}; expected val, test or predict")

    def history_end(self, stage: str) -> np.ndarray:
        """One past the last input item of every user at ``stage`` (the target sits there)."""
        if stage == "train":
            return self.train_ends
        if stage in ("val", "validate"):
            return self.ends - 2
        if stage == "test":
            return self.ends - 1
        if stage == "predict":
            return self.ends
        raise ValueError(f"unknown stage {stage!r}; expected train, val, test or predict")


def temporal_cutoffs(data: SequenceData, val_cutoff: int | None, test_cutoff: int | None,
                     quantiles: tuple[float, float] = (0.8, 0.9)) -> tuple[int, int]:
    """The (validation, test) cut-off times: given ones, or the ``quantiles`` of all timestamps."""
    if data.timestamps is None:
        raise DataError("the temporal split needs timestamps; set --data.source.timestamp_column (the source has none "
                        "selected) or use --data.holdout.scheme leave_one_out")
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
            raise DataError("the temporal split needs timestamps; set --data.source.timestamp_column")
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
