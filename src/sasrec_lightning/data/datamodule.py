"""``SASRecDataModule``: interactions -> chronological sequences -> leave-one-out batches."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, replace

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader

from ..errors import DataError, OptionError
from ..validation import at_least, option_group
from .batches import EvalBatches, TrainBatches, TrainingStatistics, UserBatchSampler
from .cache import SequenceCache, cache_key, default_cache_root
from .feature_table import load_item_features
from .features import ItemFeatures
from .loaders import ResumableLoader, batches_done_this_epoch
from .locations import detect_format, download, local_path, resolved_path, source_identity
from .memory import check_not_description, content_digest, describe, is_in_memory
from .options import CacheOptions, FeatureOptions, HoldoutOptions, LoaderOptions, PreprocessingOptions, SourceOptions
from .preprocessing import (
    PreprocessOptions,
    SequenceData,
    build_sequences,
    dataset_statistics,
    format_filters,
    format_statistics,
)
from .preprocessing import preprocess as preprocess_table
from .readers import default_min_interactions
from .sampling import InteractionIndex
from .sources import load_interactions
from .splits import (
    ColdItemSplit,
    LeaveOneOutSplit,
    Split,
    TemporalSplit,
    cold_items_by_time,
    temporal_cutoffs,
    training_popularity,
)
from .synthetic import synthetic_interactions, synthetic_item_features
from .vocabulary import read_item_list, read_user_list

__all__ = ["SASRecDataModule"]

log = logging.getLogger(__name__)


class SASRecDataModule(L.LightningDataModule):
    """Sequences for SASRec from a file, a hub dataset, a table in memory or the built-in synthetic log.

    Args:
        path: interactions file (SASRec ``.txt``, CSV/TSV, Parquet, JSON lines or one Python-literal
            dict per line as in the raw Steam/Amazon files, MovieLens ``ratings.dat`` or ``ml-*.zip``;
            ``.gz`` is read as is), a folder saved with ``save_to_disk``, or a hub dataset id. Empty:
            ``source.url`` when set, otherwise the built-in synthetic dataset. From Python also a table
            in memory: a ``datasets.Dataset`` or ``DatasetDict`` (split ``source.split``), a pandas
            ``DataFrame``, a ``pyarrow.Table`` or a dict of columns, read with the same ``source`` column
            options and checks as a file (a checkpoint records only its description, e.g.
            ``<pandas.DataFrame 353962 rows>``).
        max_len: maximum sequence length ``n`` (the most recent ``n`` actions are kept).
        seed: seed of the shuffling, the training negatives and the fixed evaluation negatives.
        source: what ``path`` holds: its format, column names, hub configuration, a URL to download,
            the synthetic dataset's size.
        preprocessing: the filters (minimum interactions per user and item, ratings, duplicates).
        holdout: the split (``leave_one_out``, the paper's, or ``temporal``).
        loader: batch sizes, negatives per training position and per evaluated user, workers.
        cache: where the processed sequences are kept, and how sources are read.
        features: the item table (attributes of the items: categories, tags, numbers, vectors) and how
            its columns are encoded; its items without interactions are added as cold-start items
            (docs/features.md). Empty ``path``: no item features.
        predict_users: ``predict`` only these users: a file with one original user id per line (or
            Parquet / JSON lines with a ``user`` column). Empty: every user.
        print_statistics: print the dataset statistics (paper Table II) when the data is loaded.
    """

    def __init__(
        self,
        path: str | None = None,
        max_len: int = 50,
        seed: int = 42,
        source: SourceOptions = SourceOptions(),
        preprocessing: PreprocessingOptions = PreprocessingOptions(),
        holdout: HoldoutOptions = HoldoutOptions(),
        loader: LoaderOptions = LoaderOptions(),
        cache: CacheOptions = CacheOptions(),
        features: FeatureOptions = FeatureOptions(),
        predict_users: str | None = None,
        print_statistics: bool = True,
    ) -> None:
        super().__init__()
        at_least("data", "max_len", max_len, 1)
        self.source = option_group(SourceOptions, source, "data.source")
        self.preprocessing = option_group(PreprocessingOptions, preprocessing, "data.preprocessing")
        self.holdout = option_group(HoldoutOptions, holdout, "data.holdout")
        self.loader = option_group(LoaderOptions, loader, "data.loader")
        self.cache = option_group(CacheOptions, cache, "data.cache")
        self.features = option_group(FeatureOptions, features, "data.features")
        if isinstance(self.features.path, os.PathLike):
            self.features = replace(self.features, path=os.fspath(self.features.path))
        if isinstance(path, os.PathLike):
            path = os.fspath(path)
        if is_in_memory(path) and self.source.format:
            raise OptionError(f"--data.source.format {self.source.format!r} names a file format, but path is "
                              f"{describe(path, self.source.split)}, a table in memory, which is read as it is; "
                              "leave source.format empty")
        self.path, self.max_len, self.seed = path, max_len, seed
        self.predict_users, self.print_statistics = predict_users, print_statistics
        # A checkpoint holds plain values (it loads with weights_only=True): a table in memory is saved as its
        # description, never pickled (save_hyperparameters reads the arguments from these local variables).
        path = describe(path, self.source.split) if is_in_memory(path) else path
        features = self.features.plain(path=_stored_path(self.features.path, self.features.split))  # likewise
        holdout = asdict(self.holdout)
        if holdout["cold_item_list"]:  # which items train: found from any folder, like the data path
            holdout["cold_item_list"] = resolved_path(holdout["cold_item_list"])
        self.save_hyperparameters()
        self.hparams.update(source=asdict(self.source), preprocessing=asdict(self.preprocessing),  # plain values
                            holdout=holdout, loader=asdict(self.loader), cache=asdict(self.cache),
                            features=features)
        if isinstance(path, str) and path:  # stored absolute: the checkpoint's data is found from any folder
            self.hparams["path"] = resolved_path(path)
        self._sequences: SequenceData | None = None
        self._item_features: ItemFeatures | None = None
        self._synthetic_item_table = None  # source.synthetic_features: the generated item table
        self._split: Split | None = None
        self._popularity: np.ndarray | None = None
        self._eval: dict[str, EvalBatches] = {}
        self._training_negatives = True  # until the model says it draws none (draw_training_negatives)

    # ------------------------------------------------------------------------------- the data
    @property
    def sequences(self) -> SequenceData:
        """Per-user sequences, loaded on first use."""
        if self._sequences is None:
            if self._reads_a_source():
                self._sequences = self._load_sequences()
            elif self.source.synthetic_features:  # the same path, with the item table kept for the features
                table, self._synthetic_item_table = synthetic_item_features(
                    self.source.synthetic_users, self.source.synthetic_items, seed=self.seed)
                self._sequences = build_sequences(table, timestamp_column="timestamp")
            else:
                table = synthetic_interactions(self.source.synthetic_users, self.source.synthetic_items, seed=self.seed)
                self._sequences = build_sequences(table, timestamp_column="timestamp")
            self._sequences = self._with_item_features(self._sequences)
            self._report_statistics()
        return self._sequences

    def item_ids(self) -> np.ndarray:
        """``(I + 1,)`` original item ids, internal id -> original id (index 0, padding, is a placeholder).

        With an item table, the cold-start items (table items without interactions) follow the
        interactions' items: ids ``I + 1..I + C``, in the order of their original ids.
        """
        return self.sequences.item_ids

    def _reads_a_source(self) -> bool:
        """The interactions come from ``path`` (a file, hub id or table in memory) or ``source.url``: not generated."""
        return bool(is_in_memory(self.path) or self.path or self.source.url)

    def _sequence_cache_root(self) -> str:
        """The processed sequences' cache folder (item tables go to its ``features`` folder)."""
        return os.path.join(self.cache.dir, "sequences") if self.cache.dir else default_cache_root()

    # ------------------------------------------------------------------------- item features
    def _item_table_source(self):
        """The item table to encode, or ``None``.

        ``features.path`` (a path, a hub id or a table in memory) or, with ``source.synthetic_features`` and
        no data path, the generated item table (a ``pyarrow.Table``).
        """
        path = self.features.path
        if path is not None and not (isinstance(path, str) and not path):
            return path
        if self._synthetic_item_table is None and self.source.synthetic_features and not self._reads_a_source():
            self.sequences  # noqa: B018  (generates the interactions and the item table together)
        return self._synthetic_item_table  # None unless the synthetic log was generated with its item table

    @property
    def item_features(self) -> ItemFeatures | None:
        """The encoded item table aligned with the internal item ids (cold-start items included), or ``None``."""
        self.sequences  # noqa: B018  (encoded with the sequences: the catalogue depends on it)
        return self._item_features

    @property
    def item_feature_spec(self) -> dict | None:
        """What a model's item representation is built from (``ItemFeatures.spec()``), or ``None`` without features."""
        features = self.item_features
        return None if features is None else features.spec()

    def _with_item_features(self, sequences: SequenceData) -> SequenceData:
        """Encode the item table against ``sequences``' items; the catalogue grows by its cold-start items.

        The interaction sequences (and their cache entry) stay as they are: only ``item_ids`` gets the
        cold-start items appended, so they have ids but no interaction.
        """
        source = self._item_table_source()
        if source is None:
            listed = self.features.columns
            if listed:
                raise OptionError(f"--data.features lists the columns {list(listed)}, but --data.features.path is "
                                  "empty; expected the item table holding them (--data.features.path FILE, or "
                                  "--data.source.synthetic_features true for the synthetic data)")
            return sequences
        if not self.features.columns:  # the synthetic item table is used only for the columns a config lists
            return sequences
        cache = self.cache
        root = os.path.join(self._sequence_cache_root(), "features") if cache.use else None
        features = load_item_features(source, self.features, sequences.item_ids, root, cache.dir,
                                      cache.hash_source, cache.rebuild)
        self._item_features = features
        cold = np.asarray(features.info["cold_item_ids"])
        if len(cold) == 0:
            return sequences
        item_ids = np.concatenate([np.asarray(sequences.item_ids, dtype=object if cold.dtype.kind not in "iu"
                                              else None), cold])  # (I + C + 1,)
        return replace(sequences, item_ids=item_ids, info={**sequences.info, "cold_items": len(cold)})

    def preprocess_options(self, format: str) -> PreprocessOptions:
        """The preprocessing recipe for a source of ``format`` (its reader's filter default, e.g. 0 for SASRec text)."""
        return self.preprocessing.recipe(default_min_interactions(format))

    def _load_sequences(self) -> SequenceData:
        """Source -> (cached) preprocessing -> sequences; nothing is cached when a step fails."""
        source, cache = self.source, self.cache
        if is_in_memory(self.path):
            return self._load_in_memory()
        if self.path:
            check_not_description(self.path)  # a checkpoint's record of a table in memory: not a file
        path = local_path(self.path) if self.path else download(source.url, cache.dir)
        format = source.format or detect_format(path if self.path else source.url)  # downloads: a hashed name
        options = self.preprocess_options(format)
        num_proc = cache.num_proc if cache.num_proc is not None else (os.cpu_count() or 1)
        if num_proc > 1 and os.path.isfile(path) and os.path.getsize(path) < (64 << 20):
            num_proc = None  # worker start-up costs more than it saves on small files
        timestamp_column = source.timestamp_column or None

        def build() -> SequenceData:
            table = load_interactions(path, format, source.user_column, source.item_column, timestamp_column,
                                      source.name, source.split, cache.dir, source.rating_column, num_proc)
            return preprocess_table(table, options, source=path)

        if not cache.use:
            return build()
        if format != "hub" and not os.path.exists(path):
            return build()  # raises the missing-file error before anything touches the cache
        identity = source_identity(path, format, source.name, source.split, cache.hash_source)
        return self._cached(identity, options, format, build)

    def _load_in_memory(self) -> SequenceData:
        """A table passed from Python: the files' canonical columns, cached under a digest of their content.

        A table in memory has no file identity (path, size, modification time), so the cache key holds
        a SHA-256 of the canonical columns (``memory.content_digest``): the same interactions hit the
        same entry whichever kind of table brings them, and any change to them builds a new one.
        """
        source, cache = self.source, self.cache
        name, options = describe(self.path, source.split), self.preprocess_options("memory")
        table = load_interactions(self.path, "memory", source.user_column, source.item_column,
                                  source.timestamp_column or None, split=source.split,
                                  rating_column=source.rating_column)

        def build() -> SequenceData:
            return preprocess_table(table, options, source=name)

        if not cache.use:
            return build()
        return self._cached({"in_memory_sha256": content_digest(table)}, options, "memory", build)

    def _cached(self, identity: dict, options: PreprocessOptions, format: str, build) -> SequenceData:
        """The sequences of ``identity`` under ``options`` from the cache, or ``build()`` them and cache them."""
        source, cache = self.source, self.cache
        recipe = {**asdict(options), "format": format, "user_column": source.user_column,
                  "item_column": source.item_column, "timestamp_column": source.timestamp_column or None,
                  "rating_column": source.rating_column}
        return SequenceCache(self._sequence_cache_root()).get_or_build(
            cache_key(identity, recipe), build, meta={"source": identity, "recipe": recipe}, rebuild=cache.rebuild
        )

    @rank_zero_only
    def _report_statistics(self) -> None:
        statistics = self.statistics
        log.info("dataset statistics: %s", statistics)
        if self.print_statistics:
            name = self._source_name() if is_in_memory(self.path) else \
                os.path.basename(str(self.path or self.source.url or "synthetic").rstrip("/"))
            cache = self._sequences.info.get("cache")
            origin = "" if cache is None else f" ({'from cache' if cache['hit'] else 'cached to'} {cache['path']})"
            print(f"[sasrec-lightning] dataset statistics{origin}:\n{format_statistics(statistics, name)}")
            filters = format_filters(self._sequences.info)  # what each filter removed, and its option
            if filters:
                print(filters)
            if self._item_features is not None:
                print(self._features_line())

    def _features_line(self) -> str:
        """What the item table brought: rows, columns by kind, cold-start items, items without a row."""
        features, num_items = self._item_features, self._sequences.num_items
        info, cache = features.info, features.info.get("cache")
        origin = "" if cache is None else f" ({'from cache' if cache['hit'] else 'cached to'} {cache['path']})"
        kinds = ", ".join(f"{column.kind} {column.name!r}" for column in features.columns)
        cold = info["cold_items"]
        added = (f"{cold} cold-start items added (items of the table without interactions: ids "
                 f"{num_items - cold + 1}..{num_items})") if cold else "no cold-start items"
        return (f"[sasrec-lightning] item features{origin}: {info['rows']:,} rows of {info['source']} ({kinds}); "
                f"{added}; {info['items_without_row']} items of the interactions have no row")

    @property
    def statistics(self) -> dict[str, float]:
        """#users, #items, #actions and averages, as in the paper's Table II (and the cold-start items added)."""
        sequences = self.sequences
        cold = sequences.info.get("cold_items", 0)
        if not cold:
            return dataset_statistics(sequences)
        statistics = dataset_statistics(replace(sequences, item_ids=sequences.item_ids[:-cold]))  # the interactions'
        return {**statistics, "cold_start_items": cold}

    @property
    def num_items(self) -> int:
        """Number of items (ids ``1..num_items``, cold-start items included); linked into the model by the CLI."""
        return self.sequences.num_items

    @property
    def split_data(self) -> Split:
        """The train/validation/test split chosen by ``holdout``."""
        if self._split is None:
            holdout = self.holdout
            if holdout.scheme == "temporal":
                val_cutoff, test_cutoff = temporal_cutoffs(
                    self.sequences, _time(holdout.val_cutoff, "val_cutoff"), _time(holdout.test_cutoff, "test_cutoff"),
                    tuple(holdout.temporal_quantiles),
                )
                self._split = TemporalSplit(self.sequences, val_cutoff, test_cutoff)
            else:
                self._split = LeaveOneOutSplit(self.sequences)
            cold = self._cold_items()
            if cold is not None:
                self._split = ColdItemSplit(self._split, cold)
        return self._split

    def _cold_items(self) -> np.ndarray | None:
        """``(I + 1,)`` bool, the cold items of ``holdout.cold_items`` / ``cold_item_list``; ``None`` when off."""
        holdout, data = self.holdout, self.sequences
        if holdout.cold_item_list:
            cold = np.zeros(data.num_items + 1, dtype=bool)
            cold[read_item_list(holdout.cold_item_list, data.item_ids)] = True
        elif holdout.cold_items:
            cold = cold_items_by_time(data, holdout.cold_items)
        else:
            return None
        chosen = f"--data.holdout.cold_item_list {holdout.cold_item_list!r}" if holdout.cold_item_list else \
            f"--data.holdout.cold_items {holdout.cold_items}"
        if cold.sum() >= data.num_items:
            raise DataError(f"{self._source_name()}: {chosen} makes all {data.num_items} items cold, so nothing is "
                            "left to train on; expected a smaller share (or fewer listed items)")
        if not cold.any():
            rank_zero_warn(f"{self._source_name()}: {chosen} makes no item cold (no item's first interaction is "
                           "that late), so the cold-item split holds out nothing; the val/cold/ metrics count only "
                           "the targets no training part has")
        return cold

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
            users = None  # the split's users of the stage
            if stage == "predict" and self.predict_users:
                users = read_user_list(self.predict_users, self.sequences.user_ids,
                                       self.sequences.info.get("filtered_users"))
            self._eval[stage] = EvalBatches(self.split_data, stage, self.max_len, self.loader.num_eval_negatives,
                                            self.seed, users=users,
                                            negative_sampling=self.loader.eval_negative_sampling,
                                            popularity=self.item_popularity(),
                                            target_cold=self._marks_cold_targets())
            self._report_eval_users(self._eval[stage])
        return self._eval[stage]

    def _marks_cold_targets(self) -> bool:
        """Evaluation batches carry ``target_cold`` when the data has item features (a cold split always does)."""
        return self.item_features is not None

    # ------------------------------------------------------------------ who is trained and evaluated
    def _source_name(self) -> str:
        if is_in_memory(self.path):
            return describe(self.path, self.source.split)
        return str(self.path or self.source.url or "the synthetic dataset")

    def _check_split(self, stage: str | None) -> None:
        """Stop on data that cannot train or evaluate; warn about users who are never evaluated.

        ``fit`` needs a user with a next-item pair in training (2 interactions under leave-one-out)
        and ``validate``/``test`` a user to evaluate (3 under leave-one-out); without them a run
        would "finish" on no batches, or report metrics averaged over nobody.
        """
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn (a str enum)
        split, name = self.split_data, self._source_name()
        leave_one_out = isinstance(getattr(split, "base", split), LeaveOneOutSplit)  # (a cold split wraps one)
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
            index = InteractionIndex.from_csr(split.train_items, split.starts, split.train_ends, split.data.num_items)
            drawable = split.data.num_items - (0 if split.cold is None else int(split.cold.sum()))  # warm items
            full = split.train_users[index.seen_counts(split.train_users) >= drawable]
            if len(full):
                raise DataError(f"{name}: {len(full)} users (e.g. {split.data.user_ids[full[:3]].tolist()}) "
                                f"interacted with every one of the {drawable} {'' if split.cold is None else 'warm '}"
                                "items in their training "
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
                raise DataError(f"{name}: no user can be evaluated at stage {stage!r}; under --data.holdout.scheme "
                                f"{self.holdout.scheme} a user needs {need}")
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
            n = self.loader.num_eval_negatives
            rank_zero_warn(
                f"{name}: --data.loader.num_eval_negatives is {n}, but {batches.num_short_of_negatives} of "
                f"{len(batches)} {stage} users have fewer than {n} items they never interacted with (fewest: "
                f"{batches.fewest_unseen} of the {num_items} items), so their sampled negatives repeat items "
                "(drawn with replacement) and the sampled protocol ranks them against fewer distinct items than "
                f"the others; use at most {batches.fewest_unseen} negatives or --model.evaluation.protocol full"
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
            lengths, batch_size, shuffle=train, seed=self.seed, num_replicas=world_size, rank=rank,
            bucket=self.loader.length_bucketing, even=train,
        )
        # Own generator: creating a loader iterator draws a base seed, which must not consume the
        # global torch RNG (dropout), or a resumed run would diverge from an uninterrupted one.
        options = dict(batch_size=None, sampler=sampler, num_workers=self.loader.num_workers,
                       persistent_workers=self.loader.num_workers > 0,
                       generator=torch.Generator().manual_seed(self.seed))
        if train:  # checkpointable: ``fit --ckpt_path last`` resumes mid-epoch at the next batch
            return ResumableLoader(dataset, batches_done=self._train_batches_done, **options)
        return DataLoader(dataset, **options)

    def _train_batches_done(self) -> int:
        """Training batches of the current epoch this rank has finished (saved in checkpoints)."""
        trainer = self.trainer
        return 0 if trainer is None else batches_done_this_epoch(trainer)

    def train_dataloader(self) -> DataLoader:
        num_negatives = self.loader.num_negatives if self._training_negatives else 0
        dataset = TrainBatches(self.split_data, self.max_len, num_negatives, self.seed,
                               pad_to_max_len=not self.loader.length_bucketing)
        return self._loader(dataset, dataset.lengths, self.loader.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        dataset = self.eval_batches("val")
        return self._loader(dataset, dataset.lengths, self.loader.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        dataset = self.eval_batches("test")
        return self._loader(dataset, dataset.lengths, self.loader.eval_batch_size, train=False)

    def predict_dataloader(self) -> DataLoader:
        dataset = self.eval_batches("predict")
        return self._loader(dataset, dataset.lengths, self.loader.eval_batch_size, train=False)

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
        loader, split = self.loader, self.split_data
        if getattr(self, "_item_counts", None) is None:
            self._item_counts = TrainBatches.item_counts(split)
        lengths = TrainBatches.sequence_lengths(split, self.max_len)  # (N,)
        world_size, rank = self._world(train=True)
        batches = len(UserBatchSampler(lengths, loader.batch_size, shuffle=True, num_replicas=world_size, rank=rank,
                                       even=True))  # per process, as the training loader has them
        # The widest batches: training batches are padded to their longest sequence (or to max_len without
        # length bucketing), evaluation batches to their longest history, at most the whole sequence.
        width = self.max_len if not loader.length_bucketing else int(lengths.max(initial=1))
        eval_width = int(min(self.max_len, (split.ends - split.starts).max(initial=1)))
        return TrainingStatistics(self._item_counts, float(np.sum(lengths)) / max(batches * world_size, 1),
                                  batch_shape=(min(loader.batch_size, max(len(lengths), 1)), width),
                                  eval_batch_shape=(min(loader.eval_batch_size, max(split.data.num_users, 1)),
                                                    eval_width))

    def draw_training_negatives(self, needed: bool) -> None:
        """Whether the training batches carry ``loader.num_negatives`` sampled negatives per position.

        The model's loss decides (``Loss.needs_negatives``) and tells the data module at set-up
        (``SASRecModule.setup``); until then they are drawn.
        """
        self._training_negatives = needed

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        # Batches are flat dicts; when every tensor is already on the device (CPU training) skip
        # Lightning's generic walk over the collection (~0.1 ms a step). Here, not in the model:
        # Lightning warns when a LightningModule overrides it while a data module is in use.
        if isinstance(batch, dict) and all(not isinstance(value, torch.Tensor) or value.device == device
                                           for value in batch.values()):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)


def _stored_path(path, split: str):
    """A path as hyper-parameters keep it: a table in memory as its description, a local path absolute."""
    if is_in_memory(path):
        return describe(path, split)
    return resolved_path(path) if isinstance(path, str) and path else path


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
