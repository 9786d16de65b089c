"""Batch building from a :class:`~sasrec_lightning.splits.Split`, and the length-aware, rank-aware batch sampler.

A batch is built in one go from the CSR arrays of :class:`~sasrec_lightning.preprocessing.SequenceData`
(the gathers of :mod:`~sasrec_lightning.csr`, no per-user loop) and padded on the left only to the
longest sequence in the batch. The encoder counts positions from the right, so this gives the same
outputs as padding to ``max_len`` while doing far less work on short sequences (Amazon users
average 7-9 actions).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from .csr import csr_gather, item_counts, left_padded
from .sampling import InteractionIndex, sample_negatives
from .splits import LeaveOneOutSplit, Split, training_popularity

__all__ = [
    "LeaveOneOutSplit",  # re-exported: it lived here before splits.py
    "left_padded",  # re-exported from csr.py
    "TrainBatches",
    "TrainingStatistics",
    "EvalBatches",
    "history_batch",
    "UserBatchSampler",
    "BatchKey",
]


@dataclass(frozen=True)
class BatchKey:
    """What the sampler hands the dataset: the rows of one batch and where it stands in the epoch."""

    rows: np.ndarray
    epoch: int
    index: int


@dataclass(frozen=True)
class TrainingStatistics:
    """What training needs to know about the training data as a whole (``SASRecDataModule.training_statistics``).

    Attributes:
        item_counts: ``(I + 1,)`` int64: how often each item id is a training *target* (every item of
            a training sequence but its first; index 0, padding, is 0). Not item popularity
            (:func:`~sasrec_lightning.splits.training_popularity` also counts each sequence's first
            item): the in-batch negatives of ``sampled_softmax`` are other positions' targets, so
            their logQ correction needs the target distribution, and ``popularity`` sampling draws
            from the same one so both non-uniform samplers share one ``q``.
        positions_per_batch: real (non-padded) positions per training batch, averaged over an epoch
            of every process (what ``loss_normalization: epoch`` divides by).
        batch_shape: ``(B, L)`` sequences and padded width of the largest training batch: what the
            model estimates its memory from before the first step (``memory.py``); ``None`` when
            unknown (then nothing is estimated).
        eval_batch_shape: ``(B, L)`` users and padded width of the largest evaluation batch, at most
            (the same use).
    """

    item_counts: np.ndarray
    positions_per_batch: float
    batch_shape: tuple[int, int] | None = None
    eval_batch_shape: tuple[int, int] | None = None


class TrainBatches(Dataset):
    """Training batches: inputs ``s_1..s_{t-1}``, next-item targets and sampled negatives.

    Each item of this dataset is a whole batch, selected by a :class:`BatchKey`. Negatives are
    drawn from items outside the user's training sequence, afresh every epoch, seeded by
    ``(seed, epoch, batch index)`` so a run is reproducible and resumable; with
    ``num_negatives=0`` (a loss that needs none) nothing is drawn.

    Batch keys: ``input_ids`` ``(B, L)``, ``targets`` ``(B, L)`` (0 where padded), ``negatives``
    ``(B, L, k)``, ``users`` ``(B,)`` and ``sample_seed`` (an ``int`` seeding the loss's own sampling).
    """

    def __init__(self, split: Split, max_len: int, num_negatives: int = 1, seed: int = 0,
                 pad_to_max_len: bool = False) -> None:
        self.split = split
        self.max_len = max_len
        self.num_negatives = num_negatives
        self.seed = seed
        self.pad_to_max_len = pad_to_max_len
        self.rows = split.train_users
        data = split.data
        self.index = InteractionIndex.from_csr(split.train_items, split.starts, split.train_ends, data.num_items) \
            if num_negatives else None
        # Under a cold-item split the negatives come from the warm items only (a cold item has no training
        # interaction to be a negative of); without one, uniform over the catalogue as in the paper.
        self.weights = None if split.cold is None else (~split.cold).astype(np.float64)  # (I + 1,)
        self.lengths = self.sequence_lengths(split, max_len)  # (N,)

    @staticmethod
    def sequence_lengths(split: Split, max_len: int) -> np.ndarray:
        """Real positions (next-item pairs, at most ``max_len``) of every training sequence: ``(N,)``."""
        rows = split.train_users
        return np.minimum(split.train_ends[rows] - split.starts[rows] - 1, max_len)

    @staticmethod
    def item_counts(split: Split) -> np.ndarray:
        """``(I + 1,)`` training target counts (see :class:`TrainingStatistics`)."""
        return item_counts(split.train_items, split.starts + 1, split.train_ends, split.data.num_items)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: BatchKey) -> dict[str, torch.Tensor]:
        users = self.rows[key.rows]  # (B,)
        starts, ends = self.split.starts[users], self.split.train_ends[users]
        width = self.max_len if self.pad_to_max_len else int(min(self.max_len, (ends - starts - 1).max()))
        items = self.split.train_items
        inputs = left_padded(items, starts, ends - 1, width)  # (B, L)
        targets = left_padded(items, starts + 1, ends, width)  # (B, L)
        rng = np.random.default_rng((self.seed, key.epoch, key.index))
        if self.index is None:
            negatives = np.zeros((len(users), width, 0), dtype=np.int64)  # (B, L, 0)
        else:
            negatives = sample_negatives(self.index, users, (width, self.num_negatives), rng,
                                         probabilities=self.weights)  # (B, L, k)
            negatives[targets == 0] = 0
        return {
            "input_ids": torch.from_numpy(inputs),
            "targets": torch.from_numpy(targets),
            "negatives": torch.from_numpy(negatives),
            "users": torch.from_numpy(users),
            # Seeds whatever the loss samples itself (sampled-softmax negatives): like the negatives
            # above it depends on (seed, epoch, batch index) only, so it differs between DDP ranks and
            # is the same after a resume.
            "sample_seed": int(rng.integers(2**62)),
        }


class EvalBatches(Dataset):
    """Validation / test / predict batches.

    For ``val`` the input is the training sequence and the target the second-to-last item; for
    ``test`` the validation item joins the input and the target is the last item (paper Sec. IV-B);
    for ``predict`` the whole sequence is the input and there is no target.

    Candidates for the sampled protocol are fixed once per split from ``seed``: column 0 is the
    target, then ``num_negatives`` items the user never interacted with (anywhere in the sequence),
    so evaluating the same checkpoint twice gives identical numbers. ``negative_sampling`` is
    ``uniform`` (the paper) or ``popularity`` (proportional to ``popularity``, the training
    interactions per item of :func:`~sasrec_lightning.splits.training_popularity`, at least 1, as
    in e.g. BERT4Rec's popularity-sampled evaluation but without the held-out items). Negatives
    are drawn with replacement, as in the paper's code, so a user with fewer unseen items than
    ``num_negatives`` gets repeats (counted in ``num_short_of_negatives``). A user who interacted
    with every item has nothing to rank the target against (its rank would be 0 under either
    protocol, a free hit): such users are left out of ``val``/``test`` and counted in
    ``num_without_negatives``.

    Batch keys: ``input_ids`` ``(B, L)``, ``users`` ``(B,)``; with a target also ``targets``
    ``(B,)`` and ``candidates`` ``(B, 1 + num_negatives)``; ``seen_rows``/``seen_items`` ``(S,)``
    list the items of each user's history (to exclude them under full ranking). With
    ``target_cold`` on (the data module sets it when the data has item features) and always under a
    :class:`~sasrec_lightning.data.splits.ColdItemSplit`, ``val``/``test`` batches also carry
    ``target_cold`` ``(B,)`` bool: the target has no training interaction (``popularity`` 0), what the
    module's ``val/warm/...`` and ``val/cold/...`` metrics and the baselines split on.

    ``users`` defaults to ``split.stage_users(stage)``; ``popularity`` (``(I + 1,)``, the data
    module's, computed once) to ``training_popularity(split)``, computed when first needed.
    """

    def __init__(self, split: Split, stage: str, max_len: int, num_negatives: int = 100,
                 seed: int = 0, users: np.ndarray | None = None, negative_sampling: str = "uniform",
                 popularity: np.ndarray | None = None, target_cold: bool = False) -> None:
        if negative_sampling not in ("uniform", "popularity"):
            raise ValueError(f"unknown eval negative sampling {negative_sampling!r}; expected uniform or popularity")
        self.split = split
        self.stage = stage
        self.max_len = max_len
        self.history_ends = split.history_end(stage)
        self.rows = np.asarray(split.stage_users(stage) if users is None else users, dtype=np.int64)
        self._popularity = popularity
        self.target_cold = stage != "predict" and (target_cold or split.cold is not None)
        self.num_without_negatives = 0  # users left out: they interacted with every item
        self.num_short_of_negatives = 0  # users with fewer unseen items than num_negatives (repeats)
        self.fewest_unseen: int | None = None  # unseen items of the poorest evaluated user
        self.candidates = None
        if stage != "predict":
            index = InteractionIndex.from_csr(split.data.items, split.starts, split.ends, split.data.num_items)
            unseen = split.data.num_items - index.seen_counts(self.rows)  # (N,)
            self.num_without_negatives = int(np.sum(unseen == 0))
            self.rows, unseen = self.rows[unseen > 0], unseen[unseen > 0]
            self.num_short_of_negatives = int(np.sum(unseen < num_negatives))
            self.fewest_unseen = int(unseen.min()) if len(unseen) else None
        starts = split.starts[self.rows]
        self.lengths = np.minimum(self.history_ends[self.rows] - starts, max_len)  # (N,)
        if stage != "predict":
            # Salt the seed with the stage so validation and test negatives differ.
            rng = np.random.default_rng((seed, 1 if stage == "test" else 0))
            weights = None
            if negative_sampling == "popularity":  # an item only ever held out weighs as one interaction,
                weights = np.maximum(self.popularity, 1)  # so a user left with only such items can still draw
                weights[0] = 0
            negatives = sample_negatives(index, self.rows, (num_negatives,), rng, probabilities=weights) \
                if num_negatives else \
                np.zeros((len(self.rows), 0), np.int64)
            targets = split.data.items[self.history_ends[self.rows]]  # (N,)
            self.candidates = np.concatenate([targets[:, None], negatives], axis=1)  # (N, 1 + n)

    @property
    def popularity(self) -> np.ndarray:
        """``(I + 1,)`` training interactions per item (:func:`~sasrec_lightning.splits.training_popularity`)."""
        if self._popularity is None:
            self._popularity = training_popularity(self.split)
        return self._popularity

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: BatchKey) -> dict[str, torch.Tensor]:
        users = self.rows[key.rows]  # (B,)
        batch = history_batch(self.split.data.items, self.split.starts[users], self.history_ends[users],
                              self.max_len, users)
        if self.candidates is not None:
            candidates = self.candidates[key.rows]  # (B, 1 + n)
            batch["targets"] = torch.from_numpy(candidates[:, 0].copy())
            batch["candidates"] = torch.from_numpy(candidates)
            if self.target_cold:
                batch["target_cold"] = torch.from_numpy(self.cold_targets[key.rows])  # (B,)
        return batch

    @property
    def cold_targets(self) -> np.ndarray:
        """``(N,)`` bool over :attr:`rows`: the user's target has no training interaction (``popularity`` 0)."""
        if getattr(self, "_cold_targets", None) is None:  # once per stage, not per batch
            self._cold_targets = self.popularity[self.candidates[:, 0]] == 0
        return self._cold_targets


def history_batch(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_len: int,
                  users: np.ndarray) -> dict[str, torch.Tensor]:
    """The input of ``predict_step`` for the histories ``items[starts[b]:ends[b]]`` (the prediction batch).

    The last ``max_len`` items of every history, left-padded to the longest of the batch, and every
    history item as a (row, item) pair, to exclude under full ranking. ``predict`` builds its batches
    here (:class:`EvalBatches`) and so does ``recommend_users``, so the two answer alike.

    Args:
        items: ``(n,)`` flat internal item ids (CSR).
        starts: ``(B,)`` first index of each history.
        ends: ``(B,)`` one past its last index (``starts == ends``: an empty history, all padding).
        max_len: the most recent items kept per history.
        users: ``(B,)`` the batch's user rows.

    Returns:
        ``input_ids`` ``(B, L)``, ``users`` ``(B,)``, ``seen_rows``/``seen_items`` ``(S,)``.
    """
    width = max(1, int(min(max_len, (ends - starts).max(initial=0))))  # (an empty batch: width 1)
    source = items if len(items) else np.zeros(1, np.int64)  # a gather of all-padding rows needs one index
    seen_rows, seen_items = csr_gather(items, starts, ends)  # (S,), (S,) each user's history
    return {
        "input_ids": torch.from_numpy(left_padded(source, starts, ends, width)),  # (B, L)
        "users": torch.from_numpy(np.asarray(users, dtype=np.int64)),
        "seen_rows": torch.from_numpy(seen_rows),
        "seen_items": torch.from_numpy(seen_items),
    }


class UserBatchSampler(DistributedSampler):
    """Yields :class:`BatchKey` s of user rows, shuffled, length-bucketed and sharded by rank.

    Subclassing :class:`~torch.utils.data.DistributedSampler` tells Lightning the sampler already
    shards by rank, so it is not wrapped again (a wrapper would pad evaluation with duplicate users
    and count them twice).

    Args:
        lengths: ``(N,)`` sequence length of each sample (for bucketing).
        batch_size: samples per batch.
        shuffle: reshuffle every epoch (training).
        seed: base seed of the shuffle.
        num_replicas: number of processes.
        rank: this process.
        bucket: group samples of similar length into a batch to cut padding. With shuffling the
            grouping is done inside random windows of ``bucket_window`` batches, so batches stay random.
        even: give every rank the same number of batches (needed in training so DDP gradient
            syncs line up); evaluation shards are uneven so every user counts exactly once. A rank
            left without users (fewer users than processes) gets one empty batch, so it still runs
            the evaluation epoch and its metric sync (Lightning refuses an empty loader); with no
            user at all every rank has no batch and Lightning skips the stage everywhere.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, shuffle: bool, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, bucket: bool = True, even: bool = False, bucket_window: int = 64) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.bucket = bucket
        self.even = even
        self.bucket_window = bucket_window
        self.epoch = 0
        self.resume_epoch: int | None = None  # mid-epoch resume: skip this rank's first
        self.resume_skip = 0  # ``resume_skip`` batches of epoch ``resume_epoch`` (once)

    def skip_once(self, epoch: int, batches: int) -> None:
        """On the next pass over ``epoch``, skip this rank's first ``batches`` batches (already trained on)."""
        self.resume_epoch, self.resume_skip = int(epoch), int(batches)

    def _batches(self) -> list[np.ndarray]:
        n = len(self.lengths)
        if self.shuffle:
            rng = np.random.default_rng((self.seed, self.epoch))
            order = rng.permutation(n)
            if self.bucket:
                window = self.batch_size * self.bucket_window
                keys = np.arange(n) // window * (self.lengths.max() + 1) + self.lengths[order]
                order = order[np.argsort(keys, kind="stable")]
        else:
            order = np.argsort(-self.lengths, kind="stable") if self.bucket else np.arange(n)
        size = self._batch_size()
        batches = [order[i : i + size] for i in range(0, n, size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[BatchKey]:
        batches = self._batches()
        if self.even and self.num_replicas > 1 and batches:
            per_rank = -(-len(batches) // self.num_replicas)
            batches += batches[: per_rank * self.num_replicas - len(batches)]
        indices = range(self.rank, len(batches), self.num_replicas)
        if not self.even and self.num_replicas > 1 and not indices and len(self.lengths):
            yield BatchKey(rows=np.zeros(0, np.int64), epoch=self.epoch, index=self.rank)  # no users here
            return
        if self.resume_epoch is not None:
            if self.resume_epoch == self.epoch:
                # The order is a pure function of (seed, epoch), so the skipped batches are exactly the
                # ones the interrupted run consumed, and the rest keep their indices (and negatives).
                indices = indices[self.resume_skip :]
            self.resume_epoch, self.resume_skip = None, 0
        for index in indices:
            yield BatchKey(rows=batches[index], epoch=self.epoch, index=index)

    def _batch_size(self) -> int:
        # Uneven (evaluation) shards: use smaller batches when there are fewer batches than processes,
        # so no process gets an empty loader (it would skip the epoch-end metric sync and hang the rest).
        if self.even or self.num_replicas == 1:
            return self.batch_size
        return max(1, min(self.batch_size, -(-len(self.lengths) // self.num_replicas)))

    def __len__(self) -> int:
        total = -(-len(self.lengths) // self._batch_size())
        if self.even:
            return -(-total // self.num_replicas)
        if self.num_replicas > 1 and total:
            return max(1, len(range(self.rank, total, self.num_replicas)))  # an empty batch, see __iter__
        return len(range(self.rank, total, self.num_replicas))
