"""The data module's options: one typed group per step of the data's way, each checked where it is defined.

``--data.source.*`` (what to read and how its columns are named), ``--data.preprocessing.*`` (the
filters), ``--data.holdout.*`` (the split), ``--data.loader.*`` (batches and negatives) and
``--data.cache.*`` (where processed data is kept) and ``--data.features.*`` (the item table: attributes of
the items, docs/features.md). ``path``, ``max_len`` and ``seed`` stay on the data module itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

from ..errors import OptionError
from ..validation import at_least, in_range, one_of
from .preprocessing import PreprocessOptions

__all__ = ["SourceOptions", "PreprocessingOptions", "HoldoutOptions", "LoaderOptions", "CacheOptions",
           "FeatureOptions", "FEATURE_KINDS", "ITEM_TABLE_FORMATS", "RUNTIME_OPTIONS"]


@dataclass(frozen=True)
class SourceOptions:
    """What ``path`` holds and how to read it (``--data.source.*``).

    Args:
        format: force a format (``sasrec``, ``csv``, ``tsv``, ``parquet``, ``json``, ``literal``,
            ``movielens``, ``disk``, ``hub``) instead of detecting it from the extension.
        user_column: user column (or dict key) in the source.
        item_column: item column (or dict key) in the source.
        timestamp_column: timestamp column used to order each user's actions (integers, numbers or
            ISO-8601 dates); empty keeps file order (SASRec text files are already chronological).
        rating_column: rating column (MovieLens files always have one); needed by ``min_rating``.
        name: hub dataset configuration name.
        split: hub dataset split (or the split of a ``save_to_disk`` DatasetDict).
        url: when ``path`` is empty, download this file once into the cache (e.g. the Steam reviews
            published with the paper); offline this fails with a message naming the URL.
        synthetic_users: users of the built-in synthetic dataset (used when neither ``path`` nor ``url`` is set).
        synthetic_items: items of the built-in synthetic dataset.
        synthetic_features: the built-in synthetic dataset with item attributes whose behaviour follows them
            (``data/synthetic.py`` ``synthetic_item_features``: a category, tags, a price, a small vector, and
            a tenth of the items released late); its item table is the item features' source when
            ``features.path`` is empty (docs/features.md).
    """

    format: str | None = None
    user_column: str = "user"
    item_column: str = "item"
    timestamp_column: str | None = None
    rating_column: str | None = None
    name: str | None = None
    split: str = "train"
    url: str | None = None
    synthetic_users: int = 2000
    synthetic_items: int = 500
    synthetic_features: bool = False

    def __post_init__(self) -> None:
        at_least("data.source", "synthetic_users", self.synthetic_users, 1)
        at_least("data.source", "synthetic_items", self.synthetic_items, 1)


@dataclass(frozen=True)
class PreprocessingOptions:
    """How the raw log is filtered before the sequences are built (``--data.preprocessing.*``).

    Args:
        min_user_interactions: drop users with fewer interactions. Empty: 5 (the paper) for raw
            logs, 0 for SASRec ``.txt`` files, which are already preprocessed.
        min_item_interactions: drop items with fewer interactions; empty: the same defaults.
        filter_mode: ``one_pass``: count once on the raw log and drop rare users' and items' rows
            (the paper's script); ``k_core``: repeat until every user and item meets the thresholds.
        min_rating: keep only interactions rated at least this (e.g. 4 for "positive" MovieLens ratings).
        deduplicate: keep only the earliest of repeated (user, item) interactions.
    """

    min_user_interactions: int | None = None
    min_item_interactions: int | None = None
    filter_mode: Literal["one_pass", "k_core"] = "one_pass"
    min_rating: float | None = None
    deduplicate: bool = False

    def __post_init__(self) -> None:
        section = "data.preprocessing"
        at_least(section, "min_user_interactions", self.min_user_interactions, 0, optional=True)
        at_least(section, "min_item_interactions", self.min_item_interactions, 0, optional=True)
        one_of(section, "filter_mode", self.filter_mode, ("one_pass", "k_core"))

    def recipe(self, default_minimum: int) -> PreprocessOptions:
        """The recipe for a source whose reader filters at ``default_minimum`` by default (0 for SASRec text)."""
        users = default_minimum if self.min_user_interactions is None else self.min_user_interactions
        items = default_minimum if self.min_item_interactions is None else self.min_item_interactions
        return PreprocessOptions(users, items, self.filter_mode, self.min_rating, self.deduplicate)


@dataclass(frozen=True)
class HoldoutOptions:
    """Which interactions are held out for validation and test (``--data.holdout.*``).

    Args:
        scheme: ``leave_one_out`` (the paper: the last item is the test target, the second-to-last the
            validation one) or ``temporal`` (global split: interactions after ``val_cutoff`` /
            ``test_cutoff`` are held out).
        val_cutoff: temporal split: validation starts at this time (Unix seconds or an ISO date).
            Empty: the ``temporal_quantiles[0]`` quantile of all timestamps.
        test_cutoff: temporal split: test starts at this time. Empty: the ``temporal_quantiles[1]`` quantile.
        temporal_quantiles: default cut-off quantiles of the temporal split.
        cold_items: the cold-item split (docs/features.md): items whose first interaction, over the whole
            log, is in the last ``cold_items`` share of time (the ``1 - cold_items`` quantile of all
            timestamps; needs timestamps) are taken out of every training part, while evaluation keeps
            them in the inputs and as targets. ``0``: off.
        cold_item_list: the cold-item split with the cold items named in a file: one original item id per
            line (or Parquet / JSON lines with an ``item`` column). Empty: off.
    """

    scheme: Literal["leave_one_out", "temporal"] = "leave_one_out"
    val_cutoff: int | str | None = None
    test_cutoff: int | str | None = None
    temporal_quantiles: tuple[float, float] = (0.8, 0.9)
    cold_items: float = 0.0
    cold_item_list: str | None = None

    def __post_init__(self) -> None:
        one_of("data.holdout", "scheme", self.scheme, ("leave_one_out", "temporal"))
        in_range("data.holdout", "cold_items", self.cold_items, 0, 1, high_open=True)
        if self.cold_items and self.cold_item_list:
            raise OptionError(f"--data.holdout.cold_items {self.cold_items!r} and --data.holdout.cold_item_list "
                              f"{self.cold_item_list!r} both choose the cold items; give one of them")
        quantiles = list(self.temporal_quantiles)
        valid = len(quantiles) == 2 and all(
            isinstance(q, (int, float)) and not isinstance(q, bool) and 0 <= q <= 1 for q in quantiles)
        if not valid or quantiles[0] > quantiles[1]:
            raise OptionError(f"--data.holdout.temporal_quantiles {quantiles!r}: expected two quantiles in [0, 1], "
                              "the validation one first and not above the test one (e.g. [0.8, 0.9])")


@dataclass(frozen=True)
class LoaderOptions:
    """Batches and their negatives (``--data.loader.*``).

    Args:
        batch_size: training sequences per batch (paper: 128).
        eval_batch_size: users per evaluation batch.
        num_negatives: sampled negatives per training position (paper: 1), for the losses that take
            them from the data (``bce``, ``bpr``, ``gbce`` without shared negatives).
        num_eval_negatives: sampled negatives per user for the sampled protocol (paper: 100).
        eval_negative_sampling: how those negatives are drawn: ``uniform`` (the paper) or
            ``popularity`` (proportional to item counts).
        num_workers: DataLoader worker processes (batches are built vectorized, 0 is usually fine).
        length_bucketing: batch sequences of similar length together and pad each batch only to
            its longest sequence (same outputs as padding to ``max_len``, much less work).
    """

    #: The fields that say how to run, not which data a model was trained on (never taken from a checkpoint).
    RUNTIME: ClassVar[tuple[str, ...]] = ("batch_size", "eval_batch_size", "num_workers")

    batch_size: int = 128
    eval_batch_size: int = 256
    num_negatives: int = 1
    num_eval_negatives: int = 100
    eval_negative_sampling: Literal["uniform", "popularity"] = "uniform"
    num_workers: int = 0
    length_bucketing: bool = True

    def __post_init__(self) -> None:
        section = "data.loader"
        at_least(section, "batch_size", self.batch_size, 1)
        at_least(section, "eval_batch_size", self.eval_batch_size, 1)
        at_least(section, "num_negatives", self.num_negatives, 1)
        # 0 would rank every target first among no candidates: HR = NDCG = 1 for any model.
        at_least(section, "num_eval_negatives", self.num_eval_negatives, 1)
        one_of(section, "eval_negative_sampling", self.eval_negative_sampling, ("uniform", "popularity"))
        at_least(section, "num_workers", self.num_workers, 0)


@dataclass(frozen=True)
class CacheOptions:
    """Where processed data is kept, and how sources are read (``--data.cache.*``).

    Args:
        dir: cache folder: the processed sequences go to ``<dir>/sequences``, ``url`` downloads and hub
            datasets to ``datasets``' cache here (local files are read through a temporary ``datasets``
            cache that is removed afterwards). Empty: the ``datasets`` default and
            ``$SASREC_LIGHTNING_CACHE`` or ``~/.cache/sasrec_lightning``.
        use: cache the processed sequences on disk and reuse them on the next run. The key holds every
            preprocessing option and the source's identity: its path, size, modification time, inode,
            symlink target and a hash of sampled blocks of its content.
        rebuild: ignore a cached entry and preprocess again (the entry is replaced).
        hash_source: key the cache on a SHA-256 of the whole content instead of sampled blocks.
        num_proc: processes for parsing Python-literal lines; empty: all CPU cores for large files.
    """

    dir: str | None = None
    use: bool = True
    rebuild: bool = False
    hash_source: bool = False
    num_proc: int | None = None

    def __post_init__(self) -> None:
        at_least("data.cache", "num_proc", self.num_proc, 1, optional=True)


#: The kinds of item-feature columns, in the order their options are listed (``--data.features.<kind>``).
FEATURE_KINDS = ("categorical", "multi", "numeric", "vector")

#: The formats an item table can have (the interaction-only line formats hold no item attributes).
ITEM_TABLE_FORMATS = ("csv", "tsv", "parquet", "json", "disk", "hub")


@dataclass(frozen=True)
class FeatureOptions:
    """The item table: attributes of the items, one row per item (``--data.features.*``, docs/features.md).

    Args:
        path: item table: CSV/TSV, Parquet, JSON lines, a folder saved with ``save_to_disk`` or a hub dataset
            id; from Python also a table in memory (as ``data.path``). Empty: no item features.
        format: force a format (``csv``, ``tsv``, ``parquet``, ``json``, ``disk``, ``hub``) instead of
            detecting it from the extension.
        item_column: the item id column, in the interactions' original ids.
        name: hub dataset configuration name.
        split: hub dataset split (or the split of a ``save_to_disk`` DatasetDict or a DatasetDict in memory).
        categorical: columns with one value per item (a category, a brand): each value gets a code;
            empty or missing: the unknown code 0.
        multi: columns with several values per item (genres, tags): a list, or one text split at
            ``delimiter`` (``Action|Comedy``); at most ``max_values`` values are kept per item.
        numeric: columns with one number per item (price, year), standardized with the table's mean and
            standard deviation; empty, NaN or missing: a learned "missing" value.
        vector: columns with a dense vector per item (e.g. a text embedding): a list of numbers, or text
            of numbers separated by spaces or commas (``[0.1, 0.2]``); every row the same length; empty:
            missing.
        delimiter: separates the values of a ``multi`` column given as one text.
        max_values: values kept per item in a ``multi`` column; longer lists are cut (with one warning).
        add_cold_items: items in the table that have no interaction become cold-start items (internal
            ids after the interactions' items, in order of their original ids); false: such items are
            an error.
    """

    path: str | None = None  # from Python also a table in memory (kept as it is, never copied)
    format: str | None = None
    item_column: str = "item"
    name: str | None = None
    split: str = "train"
    categorical: list[str] = field(default_factory=list)
    multi: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    vector: list[str] = field(default_factory=list)
    delimiter: str = "|"
    max_values: int = 10
    add_cold_items: bool = True

    def __post_init__(self) -> None:
        section = "data.features"
        if self.format is not None:
            one_of(section, "format", self.format, ITEM_TABLE_FORMATS)
        if not isinstance(self.item_column, str) or not self.item_column:
            raise OptionError(f"--{section}.item_column {self.item_column!r}: expected the name of the item id column")
        seen: dict[str, str] = {}
        for kind in FEATURE_KINDS:
            names = getattr(self, kind)
            if isinstance(names, str) or not all(isinstance(name, str) for name in names):
                raise OptionError(f"--{section}.{kind} {names!r}: expected a list of column names, e.g. [genre]")
            for name in names:
                if not name.strip():
                    raise OptionError(f"--{section}.{kind} {list(names)!r}: a column name is empty; expected the "
                                      "names of the item table's columns")
                if name == self.item_column:
                    raise OptionError(f"--{section}.{kind} lists {name!r}, the item id column "
                                      f"(--{section}.item_column); expected attribute columns")
                if name in seen:
                    where = f"twice under --{section}.{kind}" if seen[name] == kind else \
                        f"under both --{section}.{seen[name]} and --{section}.{kind}"
                    raise OptionError(f"--{section}: column {name!r} is listed {where}; expected each column "
                                      "once, under one kind")
                seen[name] = kind
        if not isinstance(self.delimiter, str) or not self.delimiter:
            raise OptionError(f"--{section}.delimiter {self.delimiter!r}: expected a non-empty separator of the values "
                              "of a multi column given as text (e.g. '|')")
        at_least(section, "max_values", self.max_values, 1)
        if _given(self.path) and not seen:
            raise OptionError(f"--{section}.path is set, but no column is listed under --{section}.categorical / "
                              f"multi / numeric / vector; expected at least one feature column of the item table")

    @property
    def columns(self) -> dict[str, str]:
        """Feature column -> its kind, in the order the kinds and the columns are listed."""
        return {name: kind for kind in FEATURE_KINDS for name in getattr(self, kind)}

    def plain(self, path: Any = None) -> dict:
        """The options as plain values (hyper-parameters, a cache key), with ``path`` replaced by ``path``."""
        values = {option.name: getattr(self, option.name) for option in fields(self)}  # no deepcopy of a table
        values.update({kind: list(values[kind]) for kind in FEATURE_KINDS}, path=path)
        return values


def _given(path: Any) -> bool:
    """Whether a feature ``path`` names a table: a non-empty path or a table in memory."""
    return path is not None and not (isinstance(path, str) and not path)


#: Options that say how to run, not which data a model was trained on: never taken from a checkpoint,
#: never named as a difference (dotted: a group, or a group's field).
RUNTIME_OPTIONS = ("cache", "predict_users", "print_statistics",
                   *(f"loader.{name}" for name in LoaderOptions.RUNTIME))
