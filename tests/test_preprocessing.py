"""The preprocessing recipe (filters, de-duplication, ordering, id maps), statistics and the splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sasrec_lightning import SASRecDataModule
from sasrec_lightning.data.batches import EvalBatches, LeaveOneOutSplit, TrainBatches
from sasrec_lightning.data.options import (
    CacheOptions,
    HoldoutOptions,
    LoaderOptions,
    PreprocessingOptions,
    SourceOptions,
)
from sasrec_lightning.data.preprocessing import (
    PreprocessOptions,
    build_sequences,
    dataset_statistics,
    format_statistics,
    preprocess,
)
from sasrec_lightning.data.splits import TemporalSplit, temporal_cutoffs
from sasrec_lightning.errors import DataError

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "beauty.txt"


def _table(rows: list[tuple]) -> pa.Table:
    users, items, times = zip(*rows, strict=True)
    return pa.table({"user": list(users), "item": list(items), "timestamp": list(times)})


def _sequences(data) -> dict:
    return {data.user_ids[u]: [data.item_ids[i] for i in data.sequence(u)] for u in range(data.num_users)}


# u1: 3 actions, u2: 2, u3: 1. Item "a": 3 users, "b": 2, "c": 1.
CHAIN = _table([("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 3), ("u2", "a", 1), ("u2", "b", 2), ("u3", "a", 5)])


def test_one_pass_filter_counts_the_raw_log_once():
    data = preprocess(CHAIN, PreprocessOptions(min_user_interactions=2, min_item_interactions=2))
    # u3 (1 action) and c (1 user) are dropped in the same pass; u1 keeps 2 actions.
    assert _sequences(data) == {"u1": ["a", "b"], "u2": ["a", "b"]}
    assert data.info["filter_passes"] == 1


def test_k_core_iterates_to_a_fixpoint():
    rows = [("u1", "a", 1), ("u1", "b", 2), ("u2", "a", 1), ("u2", "c", 2), ("u3", "b", 1), ("u3", "c", 2),
            ("u4", "a", 1), ("u4", "d", 2)]
    one_pass = preprocess(_table(rows), PreprocessOptions(2, 2, "one_pass"))
    # One pass drops item d only, leaving u4 with a single action.
    assert _sequences(one_pass)["u4"] == ["a"]
    k_core = preprocess(_table(rows), PreprocessOptions(2, 2, "k_core"))
    assert _sequences(k_core) == {"u1": ["a", "b"], "u2": ["a", "c"], "u3": ["b", "c"]}
    assert k_core.info["filter_passes"] == 3  # drop d, then u4, then nothing changes
    assert k_core.lengths.min() >= 2 and np.bincount(k_core.items)[1:].min() >= 2


def test_stable_chronological_order_and_id_maps():
    table = _table([("b", 30, 7), ("a", 20, 5), ("b", 10, 7), ("a", 10, 1), ("b", 20, 2)])
    data = preprocess(table, PreprocessOptions(0, 0))
    assert data.user_ids.tolist() == ["a", "b"]
    assert data.item_ids[1:].tolist() == [10, 20, 30]  # sorted original ids -> 1..3
    assert data.items.tolist() == [1, 2, 2, 3, 1]  # b's tie at t=7 keeps file order (30 before 10)
    assert data.offsets.tolist() == [0, 2, 5]
    assert data.timestamps.tolist() == [1, 5, 2, 7, 7]


def test_deduplicate_keeps_the_earliest():
    table = _table([("a", 1, 3), ("a", 2, 2), ("a", 1, 1), ("a", 3, 4)])
    assert preprocess(table, PreprocessOptions(0, 0)).items.tolist() == [1, 2, 1, 3]
    assert preprocess(table, PreprocessOptions(0, 0, deduplicate=True)).items.tolist() == [1, 2, 3]


def test_rating_threshold_needs_a_rating_column():
    table = CHAIN.append_column("rating", pa.array([5.0, 1.0, 4.0, 3.0, 4.0, 5.0]))
    data = preprocess(table, PreprocessOptions(0, 0, min_rating=4))
    assert _sequences(data) == {"u1": ["a", "c"], "u2": ["b"], "u3": ["a"]}
    with pytest.raises(DataError, match="min_rating=4.*rating column"):
        preprocess(CHAIN, PreprocessOptions(0, 0, min_rating=4))


def test_statistics_and_table_ii_row():
    data = preprocess(CHAIN, PreprocessOptions(0, 0))
    statistics = dataset_statistics(data)
    assert statistics == {"users": 3, "items": 3, "actions": 6, "avg_actions_per_user": 2.0,
                          "avg_actions_per_item": 2.0}
    assert format_statistics(statistics, "chain").splitlines()[-1] == "| chain | 3 | 3 | 2.00 | 2.00 | 6 |"


def test_build_sequences_is_unfiltered_preprocessing():
    data = build_sequences(CHAIN, timestamp_column="timestamp")
    assert data.num_users == 3 and data.num_items == 3 and len(data.items) == 6


def test_leave_one_out_is_the_default_split(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("1 1\n1 2\n1 3\n1 4\n2 2\n2 3\n")
    module = SASRecDataModule(path=str(path), print_statistics=False, cache=CacheOptions(dir=str(tmp_path / "cache")))
    split = module.split_data
    assert isinstance(split, LeaveOneOutSplit)
    assert split.train_ends.tolist() == [2, 6] and split.eval_users.tolist() == [0]


def _temporal_data():
    # user a: t=1,2,3,4 ; b: t=2,5 ; c: t=6 ; d: t=1,2 ; e: t=1 (item 5, so a has unseen items)
    rows = [("a", 1, 1), ("a", 2, 2), ("a", 3, 3), ("a", 4, 4), ("b", 2, 2), ("b", 3, 5), ("c", 1, 6),
            ("d", 1, 1), ("d", 4, 2), ("e", 5, 1)]
    return preprocess(_table(rows), PreprocessOptions(0, 0))


def test_temporal_split_holds_out_everything_after_the_cutoffs():
    data = _temporal_data()
    split = TemporalSplit(data, val_cutoff=3, test_cutoff=4)
    assert split.train_ends.tolist() == [2, 5, 6, 9, 10]  # a: t<3 -> 2 actions; b: 1; c: 0; d: 2; e: 1
    assert split.train_users.tolist() == [0, 3]
    assert split.val_users.tolist() == [0]  # a's t=3 is in [3, 4); b's t=5 is after the test cutoff
    assert split.test_users.tolist() == [0, 1]  # a (t=4), b (t=5); c has no history before t=4
    assert split.history_end("val")[0] == 2 and split.history_end("test").tolist()[:2] == [3, 5]
    test = EvalBatches(split, "test", max_len=5, num_negatives=2, seed=0, users=split.stage_users("test"))
    assert test.candidates[:, 0].tolist() == [4, 3]  # targets: a -> item 4, b -> item 3
    train = TrainBatches(split, max_len=5)
    assert len(train) == 2
    assert temporal_cutoffs(data, None, None, (0.5, 0.9)) == (2, 6)  # "higher" quantiles of [1,1,1,2,2,2,3,4,5,6]


def test_temporal_holdout_through_the_datamodule(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,date\na,1,2020-01-01\na,2,2020-02-01\na,3,2020-03-01\nb,1,2020-01-15\n"
                    "b,2,2020-03-02\nc,4,2020-01-01\n")
    module = SASRecDataModule(path=str(path), print_statistics=False, source=SourceOptions(timestamp_column="date"),
                              holdout=HoldoutOptions(scheme="temporal", val_cutoff="2020-02-01",
                                                     test_cutoff="2020-03-01"),
                              preprocessing=PreprocessingOptions(min_user_interactions=0, min_item_interactions=0),
                              cache=CacheOptions(dir=str(tmp_path / "cache")),
                              loader=LoaderOptions(num_eval_negatives=1))
    assert module.split_data.val_users.tolist() == [0]
    assert module.eval_batches("test").rows.tolist() == [0, 1]
    assert module.eval_batches("test").candidates[:, 0].tolist() == [3, 2]


def test_temporal_split_needs_timestamps(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("1 1\n1 2\n1 3\n")
    module = SASRecDataModule(path=str(path), print_statistics=False, holdout=HoldoutOptions(scheme="temporal"),
                              cache=CacheOptions(dir=str(tmp_path / "cache")))
    with pytest.raises(DataError, match="timestamp_column"):
        module.split_data  # noqa: B018


@pytest.mark.skipif(not BEAUTY.exists(), reason="../shared/data/beauty.txt not present")
def test_beauty_txt_is_not_filtered_again(tmp_path):
    module = SASRecDataModule(path=str(BEAUTY), print_statistics=False, cache=CacheOptions(dir=str(tmp_path / "cache")))
    statistics = module.statistics
    assert (statistics["users"], statistics["items"], statistics["actions"]) == (40_226, 54_542, 353_962)
