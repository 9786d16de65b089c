"""Train / validation / test splits of the sequences: one :class:`Split` interface, two protocols.

A split is arrays of offsets into :attr:`SequenceData.items` (nothing is copied): user ``u``
trains on ``items[starts[u]:train_ends[u]]``, and at each evaluation stage its input ends at
``history_end(stage)[u]``, where the held-out target sits. :class:`LeaveOneOutSplit` is the
paper's protocol, :class:`TemporalSplit` the global-time one; ``TrainBatches``, ``EvalBatches``,
the most-popular baseline and the data module use only what :class:`Split` declares.

:class:`ColdItemSplit` wraps either one for the cold-start protocol (issue 26): the items of
:func:`cold_items_by_time` (or a given list) are taken out of every training part, so they have no
training interaction at all, while the evaluation inputs keep them and their targets can be them.
Training reads ``split.train_items`` (``data.items`` itself without a cold split), evaluation ``data.items``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import DataError
from .csr import item_counts, segment_positions
from .preprocessing import SequenceData

__all__ = ["Split", "LeaveOneOutSplit", "TemporalSplit", "ColdItemSplit", "temporal_cutoffs", "training_popularity",
           "cold_items_by_time"]


class Split(Protocol):
    """What every split provides (all arrays ``(U,)`` over user rows unless said otherwise).

    Attributes:
        data: the sequences the offsets point into.
        starts: index of each user's first item in ``data.items``.
        ends: one past each user's last item.
        train_items: ``(n,)`` the flat items training reads: user ``u`` trains on
            ``train_items[starts[u]:train_ends[u]]``. ``data.items`` itself, except under a
            :class:`ColdItemSplit`, whose training parts skip the cold items.
        train_ends: one past each user's last training item (training is ``starts..train_ends`` of ``train_items``).
        train_users: ``(N,)`` rows with a next-item pair in training (at least 2 training items).
        eval_users: ``(E,)`` rows evaluated at the test stage.
        cold: ``(I + 1,)`` bool, the items kept out of every training part (:class:`ColdItemSplit`);
            ``None`` without a cold split.
    """

    data: SequenceData
    starts: np.ndarray
    ends: np.ndarray
    train_items: np.ndarray
    train_ends: np.ndarray
    train_users: np.ndarray
    eval_users: np.ndarray
    cold: np.ndarray | None

    def history_end(self, stage: str) -> np.ndarray:
        """``(U,)`` one past the last input item of every user at ``stage`` (the target sits there)."""
        ...

    def stage_users(self, stage: str) -> np.ndarray:
        """The user rows evaluated at ``val``/``test`` (everyone for ``predict``)."""
        ...


def training_popularity(split: Split) -> np.ndarray:
    """Item popularity, the package's one definition: ``(I + 1,)`` int64 training interactions per item.

    Every item of every user's training part (``train_items[starts[u]:train_ends[u]]``) counts once per
    occurrence; index 0 (padding) is 0. Validation and test items never count, so nothing held out
    leaks into what is built from it: the most-popular baseline, the ``popularity`` evaluation
    negatives, and the items ``recommend`` answers a sequence with no known item with. Under a
    :class:`ColdItemSplit` the cold items count 0: they are in no training part.
    """
    return item_counts(split.train_items, split.starts, split.train_ends, split.data.num_items)


@dataclass
class LeaveOneOutSplit:
    """The paper's split: last item = test, second-to-last = validation, the rest = training.

    Users with fewer than 3 interactions are used for training only.
    """

    data: SequenceData

    def __post_init__(self) -> None:
        self.starts = self.data.offsets[:-1]  # (U,)
        self.ends = self.data.offsets[1:]  # (U,)
        self.train_items = self.data.items  # (n,) training reads the sequences themselves
        self.cold = None
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
        self.train_items = self.data.items  # (n,) training reads the sequences themselves
        self.cold = None
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


def cold_items_by_time(data: SequenceData, share: float) -> np.ndarray:
    """The items first interacted with in the last ``share`` of the log's time: ``(I + 1,)`` bool.

    "The last share of time" is measured in interactions, as the temporal split's default cut-offs
    are: the cut-off is the ``1 - share`` quantile of all timestamps (``method="higher"``), and an item
    is cold when its first interaction, over every user, is at or after it. With ``share`` equal to
    ``1 - temporal_quantiles[1]`` the cold items are those the test period brings first. Row order is
    no time (a SASRec text file lists users one after the other), so the log must have timestamps.

    Args:
        data: the sequences, with timestamps.
        share: in ``(0, 1)``.

    Raises:
        DataError: the data has no timestamps.
    """
    if data.timestamps is None:
        raise DataError("--data.holdout.cold_items needs timestamps (an item is cold when its first interaction is "
                        "in the last share of time), but the source has none selected: set "
                        "--data.source.timestamp_column, or name the cold items in a file with "
                        "--data.holdout.cold_item_list")
    first = np.full(data.num_items + 1, np.iinfo(np.int64).max, dtype=np.int64)  # (I + 1,)
    np.minimum.at(first, data.items, data.timestamps)
    cutoff = np.quantile(data.timestamps, 1 - share, method="higher") if len(data.timestamps) else 0
    cold = first >= cutoff  # (I + 1,) an item without any interaction (never first seen) counts as cold
    cold[0] = False
    return cold


class ColdItemSplit:
    """A split whose training parts skip the ``cold`` items: the cold-start protocol (issue 26).

    Evaluation is the wrapped split's, unchanged (the same users, inputs and targets; an input may hold
    a cold item and a target may be one). Training reads :attr:`train_items`, an array the size of
    ``data.items`` in which each user's training part, with its cold items removed and the order kept,
    starts at the same ``starts[u]`` and ends at the new ``train_ends[u]``: so the training sequences,
    the training negatives' "seen" items, :func:`training_popularity` and the training statistics never
    see a cold item, and a user left with fewer than 2 training items is not trained on. The data-side
    training negatives are drawn from the warm items only (``TrainBatches``).

    Args:
        base: the split to wrap (``LeaveOneOutSplit`` or ``TemporalSplit``).
        cold: ``(I + 1,)`` bool, the cold items (index 0, padding, must be False).
    """

    def __init__(self, base: Split, cold: np.ndarray) -> None:
        cold = np.asarray(cold, dtype=bool)
        if cold.shape != (base.data.num_items + 1,) or cold[0]:
            raise ValueError(f"cold must be {base.data.num_items + 1} booleans over the item ids, padding "
                             f"(id 0) False; got shape {cold.shape}")
        self.base, self.cold = base, cold
        self.data, self.starts, self.ends = base.data, base.starts, base.ends
        self.eval_users = base.eval_users
        positions = segment_positions(base.starts, base.train_ends)  # (S,) every training slot, users in order
        owner = np.repeat(np.arange(self.data.num_users), np.maximum(base.train_ends - base.starts, 0))  # (S,)
        kept = ~cold[base.train_items[positions]]  # (S,)
        self.train_ends = base.starts + np.bincount(owner[kept], minlength=self.data.num_users)  # (U,)
        self.train_items = base.train_items.copy()  # (n,)
        self.train_items[positions] = 0  # the dropped slots at each part's end are never read; 0 all the same
        self.train_items[segment_positions(self.starts, self.train_ends)] = base.train_items[positions[kept]]
        self.train_users = np.flatnonzero(self.train_ends - self.starts >= 2)

    @property
    def num_cold(self) -> int:
        """How many items are cold."""
        return int(self.cold.sum())

    def stage_users(self, stage: str) -> np.ndarray:
        """The wrapped split's users of ``stage``."""
        return self.base.stage_users(stage)

    def history_end(self, stage: str) -> np.ndarray:
        """The wrapped split's: an input history is read from ``data.items``, cold items kept.

        For ``train`` too (``recommend_users(history="train")``): the user's training period in the real
        sequence. Training itself reads ``train_items[starts:train_ends]``, never this.
        """
        return self.base.history_end(stage)

    def __getattr__(self, name: str):
        # The wrapped split's own attributes (TemporalSplit's val_cutoff, val_users, ...) read through.
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)
