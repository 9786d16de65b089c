"""``SASRecDataModule``: interactions -> chronological sequences -> leave-one-out batches."""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from .batches import EvalBatches, LeaveOneOutSplit, TrainBatches, UserBatchSampler
from .preprocessing import SequenceData, build_sequences, dataset_statistics
from .sources import load_interactions
from .synthetic import synthetic_interactions

__all__ = ["SASRecDataModule"]

log = logging.getLogger(__name__)


class SASRecDataModule(L.LightningDataModule):
    """Sequences for SASRec from a file, a hub dataset or the built-in synthetic log.

    Args:
        path: interactions file (SASRec ``.txt``, CSV/TSV, Parquet, JSON lines), a folder saved
            with ``save_to_disk``, or a hub dataset id. Empty: the built-in synthetic dataset.
        format: force a format (``sasrec``, ``csv``, ``tsv``, ``parquet``, ``json``, ``disk``,
            ``hub``) instead of detecting it from the extension.
        user_column: user column in the source.
        item_column: item column in the source.
        timestamp_column: timestamp column used to order each user's actions; empty keeps file
            order (SASRec text files are already chronological).
        name: hub dataset configuration name.
        split: hub dataset split.
        cache_dir: where ``datasets`` keeps its Arrow cache.
        max_len: maximum sequence length ``n`` (the most recent ``n`` actions are kept).
        batch_size: training sequences per batch (paper: 128).
        eval_batch_size: users per evaluation batch.
        num_negatives: sampled negatives per training position (paper: 1).
        num_eval_negatives: sampled negatives per user for the sampled protocol (paper: 100).
        seed: seed of the shuffling, the training negatives and the fixed evaluation negatives.
        num_workers: DataLoader worker processes (batches are built vectorized, 0 is usually fine).
        length_bucketing: batch sequences of similar length together and pad each batch only to
            its longest sequence (same outputs as padding to ``max_len``, much less work).
        synthetic_users: users of the built-in synthetic dataset.
        synthetic_items: items of the built-in synthetic dataset.
    """

    def __init__(
        self,
        path: str | None = None,
        format: str | None = None,
        user_column: str = "user",
        item_column: str = "item",
        timestamp_column: str | None = None,
        name: str | None = None,
        split: str = "train",
        cache_dir: str | None = None,
        max_len: int = 50,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_negatives: int = 1,
        num_eval_negatives: int = 100,
        seed: int = 42,
        num_workers: int = 0,
        length_bucketing: bool = True,
        synthetic_users: int = 2000,
        synthetic_items: int = 500,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._sequences: SequenceData | None = None
        self._split: LeaveOneOutSplit | None = None
        self._eval: dict[str, EvalBatches] = {}

    # ------------------------------------------------------------------------------- the data
    @property
    def sequences(self) -> SequenceData:
        """Per-user sequences, loaded on first use."""
        if self._sequences is None:
            hp = self.hparams
            if hp.path:
                table = load_interactions(
                    hp.path, hp.format, hp.user_column, hp.item_column, hp.timestamp_column or None,
                    hp.name, hp.split, hp.cache_dir,
                )
                timestamp = "timestamp" if hp.timestamp_column else None
            else:
                table = synthetic_interactions(hp.synthetic_users, hp.synthetic_items, seed=hp.seed)
                timestamp = "timestamp"
            self._sequences = build_sequences(table, timestamp_column=timestamp)
            log.info("dataset statistics: %s", self.statistics)
        return self._sequences

    @property
    def statistics(self) -> dict[str, float]:
        """#users, #items, #actions and averages, as in the paper's Table II."""
        return dataset_statistics(self.sequences)

    @property
    def num_items(self) -> int:
        """Number of items (ids ``1..num_items``); linked into the model by the CLI."""
        return self.sequences.num_items

    @property
    def split_data(self) -> LeaveOneOutSplit:
        if self._split is None:
            self._split = LeaveOneOutSplit(self.sequences)
        return self._split

    def setup(self, stage: str | None = None) -> None:
        self.split_data  # noqa: B018  (load once per process, before the loaders are built)

    def eval_batches(self, stage: str) -> EvalBatches:
        """The (cached) evaluation batches of ``val``, ``test`` or ``predict``."""
        if stage not in self._eval:
            hp = self.hparams
            self._eval[stage] = EvalBatches(self.split_data, stage, hp.max_len, hp.num_eval_negatives, hp.seed)
        return self._eval[stage]

    # ---------------------------------------------------------------------------- the loaders
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset, lengths: np.ndarray, batch_size: int, train: bool) -> DataLoader:
        world_size, rank = self._world()
        sampler = UserBatchSampler(
            lengths, batch_size, shuffle=train, seed=self.hparams.seed, num_replicas=world_size, rank=rank,
            bucket=self.hparams.length_bucketing, even=train,
        )
        return DataLoader(
            dataset, batch_size=None, sampler=sampler, num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        dataset = TrainBatches(self.split_data, hp.max_len, hp.num_negatives, hp.seed,
                               pad_to_max_len=not hp.length_bucketing)
        return self._loader(dataset, dataset.lengths, hp.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        dataset = self.eval_batches("val")
        return self._loader(dataset, dataset.lengths, self.hparams.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        dataset = self.eval_batches("test")
        return self._loader(dataset, dataset.lengths, self.hparams.eval_batch_size, train=False)

    def predict_dataloader(self) -> DataLoader:
        dataset = self.eval_batches("predict")
        return self._loader(dataset, dataset.lengths, self.hparams.eval_batch_size, train=False)
