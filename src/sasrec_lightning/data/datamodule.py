"""``SASRecDataModule``: interactions -> chronological sequences -> leave-one-out batches."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader

from ..errors import DataError
from ..options import check_data_options
from .batches import EvalBatches, TrainBatches, TrainingStatistics, UserBatchSampler
from .cache import SequenceCache, cache_key, default_cache_root
from .loaders import ResumableLoader, batches_done_this_epoch
from .preprocessing import (
    PreprocessOptions,
    SequenceData,
    build_sequences,
    dataset_statistics,
    format_filters,
    format_statistics,
)
from .preprocessing import preprocess as preprocess_table
from .sampling import InteractionIndex
from .sources import (
    default_min_interactions,
    detect_format,
    download,
    load_interactions,
    local_path,
    source_identity,
)
from .splits import LeaveOneOutSplit, Split, TemporalSplit, temporal_cutoffs, training_popularity
from .synthetic import synthetic_interactions
from .vocabulary import read_user_list

__all__ = ["SASRecDataModule"]

log = logging.getLogger(__name__)


class SASRecDataModule(L.LightningDataModule):
    """Sequences for SASRec from a file, a hub dataset or the built-in synthetic log.

    Args:
        path: interactions file (SASRec ``.txt``, CSV/TSV, Parquet, JSON lines or one Python-literal
            dict per line as in the raw Steam/Amazon files, MovieLens ``ratings.dat`` or ``ml-*.zip``;
            ``.gz`` is read as is), a folder saved with ``save_to_disk``, or a hub dataset id. Empty:
            ``url`` when set, otherwise the built-in synthetic dataset.
        format: force a format (``sasrec``, ``csv``, ``tsv``, ``parquet``, ``json``, ``literal``,
            ``movielens``, ``disk``, ``hub``) instead of detecting it from the extension.
        user_column: user column (or dict key) in the source.
        item_column: item column (or dict key) in the source.
        timestamp_column: timestamp column used to order each user's actions (integers, numbers or
            ISO-8601 dates); empty keeps file order (SASRec text files are already chronological).
        name: hub dataset configuration name.
        split: hub dataset split (or the split of a ``save_to_disk`` DatasetDict).
        cache_dir: cache folder: the processed sequences go to ``<cache_dir>/sequences``, ``url``
            downloads and hub datasets to ``datasets``' cache here (local files are read through a
            temporary ``datasets`` cache that is removed afterwards). Empty: the ``datasets`` default
            and ``$SASREC_LIGHTNING_CACHE`` or ``~/.cache/sasrec_lightning``.
        rating_column: rating column (MovieLens files always have one); needed by ``min_rating``.
        url: when ``path`` is empty, download this file once into the cache (e.g. the Steam reviews
            published with the paper); offline this fails with a message naming the URL.
        min_user_interactions: drop users with fewer interactions. Empty: 5 (the paper) for raw
            logs, 0 for SASRec ``.txt`` files, which are already preprocessed.
        min_item_interactions: drop items with fewer interactions; empty: the same defaults.
        filter_mode: ``one_pass``: count once on the raw log and drop rare users' and items' rows
            (the paper's script); ``k_core``: repeat until every user and item meets the thresholds.
        min_rating: keep only interactions rated at least this (e.g. 4 for "positive" MovieLens ratings).
        deduplicate: keep only the earliest of repeated (user, item) interactions.
        holdout: ``leave_one_out`` (the paper: last item test, second-to-last validation) or
            ``temporal`` (global split: interactions after ``val_cutoff``/``test_cutoff`` are held out).
        val_cutoff: temporal split: validation starts at this time (Unix seconds or an ISO date).
            Empty: the ``temporal_quantiles[0]`` quantile of all timestamps.
        test_cutoff: temporal split: test starts at this time. Empty: the ``temporal_quantiles[1]`` quantile.
        temporal_quantiles: default cut-off quantiles of the temporal split.
        num_proc: processes for parsing Python-literal lines; empty: all CPU cores for large files.
        use_cache: cache the processed sequences on disk (keyed by the file's path, size, modification
            time, inode and a digest of 10 sampled 64 KiB blocks, and every preprocessing option) and
            reuse them on the next run.
        rebuild_cache: ignore a cached entry and preprocess again (the entry is replaced).
        hash_source: key the cache on a SHA-256 of every byte of the file instead of its modification
            time, inode and sampled blocks (slower on large files; sees any edit).
        print_statistics: print the dataset statistics (paper Table II) when the data is loaded.
        max_len: maximum sequence length ``n`` (the most recent ``n`` actions are kept).
        batch_size: training sequences per batch (paper: 128).
        eval_batch_size: users per evaluation batch.
        num_negatives: sampled negatives per training position (paper: 1).
        num_eval_negatives: sampled negatives per user for the sampled protocol (paper: 100).
        eval_negative_sampling: how those negatives are drawn: ``uniform`` (the paper) or
            ``popularity`` (proportional to item counts).
        seed: seed of the shuffling, the training negatives and the fixed evaluation negatives.
        num_workers: DataLoader worker processes (batches are built vectorized, 0 is usually fine).
        length_bucketing: batch sequences of similar length together and pad each batch only to
            its longest sequence (same outputs as padding to ``max_len``, much less work).
        synthetic_users: users of the built-in synthetic dataset.
        synthetic_items: items of the built-in synthetic dataset.
        predict_users: ``predict`` only these users: a file with one original user id per line (or
            Parquet / JSON lines with a ``user`` column). Empty: every user.
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
        rating_column: str | None = None,
        url: str | None = None,
        min_user_interactions: int | None = None,
        min_item_interactions: int | None = None,
        filter_mode: Literal["one_pass", "k_core"] = "one_pass",
        min_rating: float | None = None,
        deduplicate: bool = False,
        holdout: Literal["leave_one_out", "temporal"] = "leave_one_out",
        val_cutoff: int | str | None = None,
        test_cutoff: int | str | None = None,
        temporal_quantiles: tuple[float, float] = (0.8, 0.9),
        num_proc: int | None = None,
        use_cache: bool = True,
        rebuild_cache: bool = False,
        hash_source: bool = False,
        print_statistics: bool = True,
        max_len: int = 50,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_negatives: int = 1,
        num_eval_negatives: int = 100,
        eval_negative_sampling: Literal["uniform", "popularity"] = "uniform",
        seed: int = 42,
        num_workers: int = 0,
        length_bucketing: bool = True,
        synthetic_users: int = 2000,
        synthetic_items: int = 500,
        predict_users: str | None = None,
    ) -> None:
        super().__init__()
        check_data_options(max_len, batch_size, eval_batch_size, num_negatives, num_eval_negatives,
                           min_user_interactions, min_item_interactions, temporal_quantiles, num_proc, num_workers,
                           synthetic_users, synthetic_items)
        self.save_hyperparameters()
        self._sequences: SequenceData | None = None
        self._split: Split | None = None
        self._popularity: np.ndarray | None = None
        self._eval: dict[str, EvalBatches] = {}

    # ------------------------------------------------------------------------------- the data
    @property
    def sequences(self) -> SequenceData:
        """Per-user sequences, loaded on first use."""
        if self._sequences is None:
            hp = self.hparams
            if hp.path or hp.url:
                self._sequences = self._load_sequences()
            else:
                table = synthetic_interactions(hp.synthetic_users, hp.synthetic_items, seed=hp.seed)
                self._sequences = build_sequences(table, timestamp_column="timestamp")
            self._report_statistics()
        return self._sequences

    def item_ids(self) -> np.ndarray:
        """``(I + 1,)`` original item ids, internal id -> original id (index 0, padding, is a placeholder)."""
        return self.sequences.item_ids

    def preprocess_options(self, format: str) -> PreprocessOptions:
        """The preprocessing recipe for a source of ``format`` (its reader's filter default, e.g. 0 for SASRec text)."""
        hp = self.hparams
        default = default_min_interactions(format)
        min_user = default if hp.min_user_interactions is None else hp.min_user_interactions
        min_item = default if hp.min_item_interactions is None else hp.min_item_interactions
        return PreprocessOptions(min_user, min_item, hp.filter_mode, hp.min_rating, hp.deduplicate)

    def _load_sequences(self) -> SequenceData:
        """Source -> (cached) preprocessing -> sequences; nothing is cached when a step fails."""
        hp = self.hparams
        path = local_path(hp.path) if hp.path else download(hp.url, hp.cache_dir)
        format = hp.format or detect_format(path if hp.path else hp.url)  # downloads are stored under a hashed name
        options = self.preprocess_options(format)
        num_proc = hp.num_proc if hp.num_proc is not None else (os.cpu_count() or 1)
        if num_proc > 1 and os.path.isfile(path) and os.path.getsize(path) < (64 << 20):
            num_proc = None  # worker start-up costs more than it saves on small files
        timestamp_column = hp.timestamp_column or None

        def build() -> SequenceData:
            table = load_interactions(path, format, hp.user_column, hp.item_column, timestamp_column, hp.name,
                                      hp.split, hp.cache_dir, hp.rating_column, num_proc)
            return preprocess_table(table, options, source=path)

        if not hp.use_cache:
            return build()
        if format != "hub" and not os.path.exists(path):
            return build()  # raises the missing-file error before anything touches the cache
        recipe = {**asdict(options), "format": format, "user_column": hp.user_column, "item_column": hp.item_column,
                  "timestamp_column": timestamp_column, "rating_column": hp.rating_column}
        identity = source_identity(path, format, hp.name, hp.split, hp.hash_source)
        root = os.path.join(hp.cache_dir, "sequences") if hp.cache_dir else default_cache_root()
        return SequenceCache(root).get_or_build(
            cache_key(identity, recipe), build, meta={"source": identity, "recipe": recipe}, rebuild=hp.rebuild_cache
        )

    @rank_zero_only
    def _report_statistics(self) -> None:
        statistics = self.statistics
        log.info("dataset statistics: %s", statistics)
        if self.hparams.print_statistics:
            name = os.path.basename(str(self.hparams.path or self.hparams.url or "synthetic").rstrip("/"))
            cache = self._sequences.info.get("cache")
            origin = "" if cache is None else f" ({'from cache' if cache['hit'] else 'cached to'} {cache['path']})"
            print(f"[sasrec-lightning] dataset statistics{origin}:\n{format_statistics(statistics, name)}")
            filters = format_filters(self._sequences.info)  # what each filter removed, and its option
            if filters:
                print(filters)

    @property
    def statistics(self) -> dict[str, float]:
        """#users, #items, #actions and averages, as in the paper's Table II."""
        return dataset_statistics(self.sequences)

    @property
    def num_items(self) -> int:
        """Number of items (ids ``1..num_items``); linked into the model by the CLI."""
        return self.sequences.num_items

    @property
    def split_data(self) -> Split:
        """The train/validation/test split chosen by ``holdout``."""
        if self._split is None:
            hp = self.hparams
            if hp.holdout == "temporal":
                val_cutoff, test_cutoff = temporal_cutoffs(
                    self.sequences, _time(hp.val_cutoff, "val_cutoff"), _time(hp.test_cutoff, "test_cutoff"),
                    tuple(hp.temporal_quantiles),
                )
                self._split = TemporalSplit(self.sequences, val_cutoff, test_cutoff)
            else:
                self._split = LeaveOneOutSplit(self.sequences)
        return self._split

    def setup(self, stage: str | None = None) -> None:
        self.split_data  # noqa: B018  (load once per process, before the loaders are built)
        self._check_split(stage)
        trainer = self.trainer
        if trainer is not None and trainer.logger is not None and not getattr(self, "_logged_statistics", False):
            trainer.logger.log_hyperparams({f"data/{key}": value for key, value in self.statistics.items()})
            self._logged_statistics = True

    def eval_batches(self, stage: str) -> EvalBatches:
        """The (cached) evaluation batches of ``val``, ``test`` or ``predict``."""
        if stage not in self._eval:
            hp = self.hparams
            users = None  # the split's users of the stage
            if stage == "predict" and hp.predict_users:
                users = read_user_list(hp.predict_users, self.sequences.user_ids,
                                       self.sequences.info.get("filtered_users"))
            self._eval[stage] = EvalBatches(self.split_data, stage, hp.max_len, hp.num_eval_negatives, hp.seed,
                                            users=users, negative_sampling=hp.eval_negative_sampling,
                                            popularity=self.item_popularity())
            self._report_eval_users(self._eval[stage])
        return self._eval[stage]

    # ------------------------------------------------------------------ who is trained and evaluated
    def _source_name(self) -> str:
        hp = self.hparams
        return str(hp.path or hp.url or "the synthetic dataset")

    def _check_split(self, stage: str | None) -> None:
        """Stop on data that cannot train or evaluate; warn about users who are never evaluated.

        ``fit`` needs a user with a next-item pair in training (2 interactions under leave-one-out)
        and ``validate``/``test`` a user to evaluate (3 under leave-one-out); without them a run
        would "finish" on no batches, or report metrics averaged over nobody.
        """
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn (a str enum)
        split, name = self.split_data, self._source_name()
        leave_one_out = isinstance(split, LeaveOneOutSplit)
        if stage == "fit" and len(split.train_users) == 0:
            lengths = split.ends - split.starts
            need = ("a user whose training part has 2 interactions: one with exactly 2 (trained on, not evaluated) "
                    "or with at least 4 (the last two are held out for validation and test)") if leave_one_out else \
                f"a user with at least 2 interactions before val_cutoff ({split.val_cutoff})"
            raise DataError(f"{name}: no user has a next-item pair to train on ({split.data.num_users} users, "
                            f"{int(lengths.sum())} interactions, at most {int(lengths.max(initial=0))} per user); "
                            f"SASRec needs {need}")
        if stage == "fit":
            # Training negatives come from the items outside a user's training part: none for a user who
            # had every item there (sample_negatives would fail on the first batch with that user).
            index = InteractionIndex.from_csr(split.data.items, split.starts, split.train_ends, split.data.num_items)
            full = split.train_users[index.seen_counts(split.train_users) >= split.data.num_items]
            if len(full):
                raise DataError(f"{name}: {len(full)} users (e.g. {split.data.user_ids[full[:3]].tolist()}) "
                                f"interacted with every one of the {split.data.num_items} items in their training "
                                "part, so no negative item can be sampled for them; SASRec needs a catalogue "
                                "larger than any user's history (drop such users or add items)")
        if stage in ("validate", "test"):
            evaluated = self.eval_batches("val" if stage == "validate" else stage)
            if len(evaluated) == 0:
                need = "at least 3 interactions (the last two are held out)" if leave_one_out else \
                    "an interaction before and one after the cut-off"
                if evaluated.num_without_negatives:
                    need += (f" and an item they never interacted with ({evaluated.num_without_negatives} "
                             "users had every item)")
                raise DataError(f"{name}: no user can be evaluated at stage {stage!r}; under --data.holdout "
                                f"{self.hparams.holdout} a user needs {need}")
        if stage == "fit" and len(self.eval_batches("val")) == 0:
            rank_zero_warn(f"{name}: no user can be validated, so validation is skipped and val/ metrics are never "
                           "logged (a checkpoint or early stopping that monitors them will fail)")
        if stage in ("fit", "validate", "test") and leave_one_out and not getattr(self, "_reported_short", False):
            self._reported_short = True
            lengths = split.ends - split.starts
            two, one = int(np.sum(lengths == 2)), int(np.sum(lengths == 1))
            if two or one:
                rank_zero_warn(
                    f"{name}: {len(split.eval_users)} of {split.data.num_users} users are validated and tested; "
                    f"{two} with exactly 2 interactions only train (on one pair) and {one} with 1 interaction are "
                    "not used at all (leave-one-out holds out the last two items, so evaluation needs 3)"
                )

    def _report_eval_users(self, batches: EvalBatches) -> None:
        """Warn about evaluated users the sampled protocol cannot serve as configured."""
        if batches.stage == "predict":
            return
        stage, name, num_items = batches.stage, self._source_name(), self.sequences.num_items
        if batches.num_without_negatives:
            rank_zero_warn(
                f"{name}: {batches.num_without_negatives} {stage} users interacted with every one of the "
                f"{num_items} items, so there is no item to rank their held-out item against; they are left "
                f"out of {stage} under both protocols"
            )
        if batches.num_short_of_negatives:
            n = self.hparams.num_eval_negatives
            rank_zero_warn(
                f"{name}: --data.num_eval_negatives is {n}, but {batches.num_short_of_negatives} of "
                f"{len(batches)} {stage} users have fewer than {n} items they never interacted with (fewest: "
                f"{batches.fewest_unseen} of the {num_items} items), so their sampled negatives repeat items "
                "(drawn with replacement) and the sampled protocol ranks them against fewer distinct items than "
                f"the others; use at most {batches.fewest_unseen} negatives or --model.eval_protocol full"
            )

    # ---------------------------------------------------------------------------- the loaders
    def _world(self, train: bool = False) -> tuple[int, int]:
        """``(replicas, this replica)`` that the batches are sharded over.

        Training batches go to the data-parallel replicas the strategy names (its
        ``distributed_sampler_kwargs``): under ``ModelParallelStrategy`` with tensor-parallel tables
        (``tensor_parallel_size`` > 1) the processes of a tensor-parallel group train the same batch
        together. Evaluation batches go to every process (each user once; the model is gathered).
        """
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        sampler_kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) if train else None
        if sampler_kwargs:
            return sampler_kwargs["num_replicas"], sampler_kwargs["rank"]
        return trainer.world_size, trainer.global_rank

    def _loader(self, dataset, lengths: np.ndarray, batch_size: int, train: bool) -> DataLoader:
        world_size, rank = self._world(train)
        sampler = UserBatchSampler(
            lengths, batch_size, shuffle=train, seed=self.hparams.seed, num_replicas=world_size, rank=rank,
            bucket=self.hparams.length_bucketing, even=train,
        )
        # Own generator: creating a loader iterator draws a base seed, which must not consume the
        # global torch RNG (dropout), or a resumed run would diverge from an uninterrupted one.
        options = dict(batch_size=None, sampler=sampler, num_workers=self.hparams.num_workers,
                       persistent_workers=self.hparams.num_workers > 0,
                       generator=torch.Generator().manual_seed(self.hparams.seed))
        if train:  # checkpointable: ``fit --ckpt_path last`` resumes mid-epoch at the next batch
            return ResumableLoader(dataset, batches_done=self._train_batches_done, **options)
        return DataLoader(dataset, **options)

    def _train_batches_done(self) -> int:
        """Training batches of the current epoch this rank has finished (saved in checkpoints)."""
        trainer = self.trainer
        return 0 if trainer is None else batches_done_this_epoch(trainer)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        num_negatives = hp.num_negatives if self._negatives_needed() else 0
        dataset = TrainBatches(self.split_data, hp.max_len, num_negatives, hp.seed,
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

    # ----------------------------------------------------------------- what training asks for
    def item_popularity(self) -> np.ndarray:
        """Item popularity, computed once: ``(I + 1,)`` int64 training interactions per item.

        The package's one definition (:func:`~sasrec_lightning.splits.training_popularity`): every
        item of every user's training part, nothing held out. Used by the most-popular baseline,
        ``eval_negative_sampling: popularity`` and, through ``SASRecModule.setup``, the items
        ``recommend`` answers a sequence with no known item with. (The loss's sampling distribution
        is the training *target* counts of :meth:`training_statistics`, see ``TrainingStatistics``.)
        """
        if self._popularity is None:
            self._popularity = training_popularity(self.split_data)
        return self._popularity

    def training_statistics(self) -> TrainingStatistics:
        """The statistics of the training data a model's loss needs, in one public call.

        ``SASRecModule`` asks for them at its first training step and hands them to its loss
        (``Loss.setup``) and to ``loss_normalization: epoch``. Item counts (how often each item is
        a training target) are computed once; positions per batch follow this run's batch size,
        ``max_len`` and number of processes.

        Returns:
            :class:`~sasrec_lightning.batches.TrainingStatistics`.
        """
        hp, split = self.hparams, self.split_data
        if getattr(self, "_item_counts", None) is None:
            self._item_counts = TrainBatches.item_counts(split)
        lengths = TrainBatches.sequence_lengths(split, hp.max_len)  # (N,)
        world_size, rank = self._world(train=True)
        batches = len(UserBatchSampler(lengths, hp.batch_size, shuffle=True, num_replicas=world_size, rank=rank,
                                       even=True))  # per process, as the training loader has them
        # The widest batches: training batches are padded to their longest sequence (or to max_len without
        # length bucketing), evaluation batches to their longest history, at most the whole sequence.
        width = hp.max_len if not hp.length_bucketing else int(lengths.max(initial=1))
        eval_width = int(min(hp.max_len, (split.ends - split.starts).max(initial=1)))
        return TrainingStatistics(self._item_counts, float(np.sum(lengths)) / max(batches * world_size, 1),
                                  batch_shape=(min(hp.batch_size, max(len(lengths), 1)), width),
                                  eval_batch_shape=(min(hp.eval_batch_size, max(split.data.num_users, 1)), eval_width))

    def _negatives_needed(self) -> bool:
        """Whether the model being trained needs sampled negatives (its ``needs_negatives``; else yes)."""
        model = self.trainer.lightning_module if self.trainer is not None else None
        return bool(getattr(model, "needs_negatives", True))

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # Batches are flat dicts; when every tensor is already on the device (CPU training) skip
        # Lightning's generic walk over the collection (~0.1 ms a step). Here, not in the model:
        # Lightning warns when a LightningModule overrides it while a data module is in use.
        if isinstance(batch, dict) and all(not isinstance(value, torch.Tensor) or value.device == device
                                           for value in batch.values()):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


def _time(value: int | str | None, field: str) -> int | None:
    """A cut-off given as Unix seconds or an ISO-8601 date/time, as Unix seconds."""
    if value is None or isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return int(np.datetime64(value.rstrip("Z"), "s").astype(np.int64))
    except ValueError as error:
        raise DataError(f"--data.{field} {value!r} is neither Unix seconds nor an ISO-8601 date like "
                        "'2018-01-01'") from error
