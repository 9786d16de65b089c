"""The cold-start protocol (issue 26): the cold-item split, ``target_cold``, warm/cold metrics and the baselines."""

from __future__ import annotations

import math
import pickle

import lightning as L
import numpy as np
import pyarrow as pa
import pytest
import torch

from sasrec_lightning.cli.app import print_test_summary, warm_cold_table
from sasrec_lightning.data.batches import BatchKey, EvalBatches, TrainBatches
from sasrec_lightning.data.contract import check_batch
from sasrec_lightning.data.datamodule import SASRecDataModule
from sasrec_lightning.data.features import FeatureColumn, ItemFeatures
from sasrec_lightning.data.options import (
    CacheOptions,
    HoldoutOptions,
    LoaderOptions,
    PreprocessingOptions,
    SourceOptions,
)
from sasrec_lightning.data.splits import ColdItemSplit, LeaveOneOutSplit, TemporalSplit, training_popularity
from sasrec_lightning.data.synthetic import synthetic_item_features
from sasrec_lightning.errors import DataError, OptionError
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.baselines import category_popularity_metrics, category_scores, most_popular_metrics
from sasrec_lightning.training.cold_start import WarmColdMetrics
from sasrec_lightning.training.evaluation import EvaluationOptions
from sasrec_lightning.training.module import SASRecModule

# (user, item, time). Under leave-one-out the training parts are u1: 1 2 3 | u2: 2 7 | u3: 7 1 | u4: 3 8 1.
# First times: 1:1 2:1 3:2 7:7 6:9 4:10 5:11 8:12; the 0.7 quantile of the 18 times (method "higher") is 11,
# so cold_items 0.3 makes items 5 and 8 cold: u4 trains on 3 1, and item 8 stays in u4's evaluation inputs.
LOG = [(1, 1, 1), (1, 2, 2), (1, 3, 3), (1, 7, 9), (1, 4, 10),
       (2, 2, 1), (2, 7, 8), (2, 3, 9), (2, 5, 11),
       (3, 7, 7), (3, 1, 8), (3, 6, 9), (3, 2, 12),
       (4, 3, 2), (4, 8, 12), (4, 1, 13), (4, 4, 14), (4, 5, 15)]


def _data(holdout: HoldoutOptions = HoldoutOptions(), timestamps: bool = True, log=LOG, **kwargs) -> SASRecDataModule:
    columns = {"user": [u for u, _, _ in log], "item": [i for _, i, _ in log]}
    if timestamps:
        columns["timestamp"] = [t for _, _, t in log]
    return SASRecDataModule(path=columns, max_len=5, print_statistics=False, holdout=holdout,
                            source=SourceOptions(timestamp_column="timestamp" if timestamps else None),
                            preprocessing=PreprocessingOptions(min_user_interactions=0, min_item_interactions=0),
                            cache=CacheOptions(use=False), loader=LoaderOptions(num_eval_negatives=2), **kwargs)


def _batch(dataset, rows=None, epoch=0, index=0) -> dict:
    rows = np.arange(len(dataset)) if rows is None else rows
    return dataset[BatchKey(rows=rows, epoch=epoch, index=index)]


def _parts(split) -> list[list[int]]:
    return [split.train_items[a:b].tolist() for a, b in zip(split.starts, split.train_ends, strict=True)]


# ------------------------------------------------------------------------------------ the split
def test_cold_items_by_time_leave_every_training_part_and_stay_in_evaluation():
    data = _data(HoldoutOptions(cold_items=0.3))
    split = data.split_data
    assert data.sequences.item_ids.tolist()[1:] == list(range(1, 9))  # internal id == original id here
    assert isinstance(split, ColdItemSplit) and np.flatnonzero(split.cold).tolist() == [5, 8]
    assert _parts(split) == [[1, 2, 3], [2, 7], [7, 1], [3, 1]]
    assert split.train_users.tolist() == [0, 1, 2, 3]
    assert training_popularity(split).tolist() == [0, 3, 2, 2, 0, 0, 0, 2, 0]  # item 8 counted 1 without the split
    assert TrainBatches.item_counts(split).tolist() == [0, 2, 1, 1, 0, 0, 0, 1, 0]  # targets: all but the first
    test = _batch(data.eval_batches("test"))
    assert test["input_ids"][3].tolist() == [3, 8, 1, 4]  # evaluation inputs keep the cold item
    assert test["targets"].tolist() == [4, 5, 2, 5]  # and targets can be one
    copy = pickle.loads(pickle.dumps(split))  # as DataLoader workers receive it
    assert _parts(copy) == _parts(split) and copy.stage_users("val").tolist() == split.stage_users("val").tolist()
    plain = LeaveOneOutSplit(data.sequences)
    for stage in ("train", "val", "test", "predict"):  # input histories are read from data.items, cold items kept
        assert split.history_end(stage).tolist() == plain.history_end(stage).tolist(), stage


def test_a_cold_item_list_names_the_cold_items_and_an_unknown_id_is_one_error_naming_the_line(tmp_path):
    listed = tmp_path / "cold.txt"
    listed.write_text("8\n\n5\n")
    split = _data(HoldoutOptions(cold_item_list=str(listed))).split_data
    assert np.flatnonzero(split.cold).tolist() == [5, 8] and _parts(split) == [[1, 2, 3], [2, 7], [7, 1], [3, 1]]
    listed.write_text("8\n\nx9\n12\n")
    with pytest.raises(DataError, match=r"^--data.holdout.cold_item_list '.*cold.txt', line 3: item 'x9' is not an "
                                        r"item of the data \(2 of the 3 listed ids are not: \['x9', '12'\]\)"):
        _ = _data(HoldoutOptions(cold_item_list=str(listed))).split_data


def test_the_temporal_split_takes_the_cold_items_out_too():
    data = _data(HoldoutOptions(scheme="temporal", val_cutoff=12, test_cutoff=14, cold_items=0.3))
    split, plain = data.split_data, TemporalSplit(data.sequences, 12, 14)
    assert split.val_cutoff == 12  # the wrapped split's own attributes read through
    assert _parts(plain) == [[1, 2, 3, 7, 4], [2, 7, 3, 5], [7, 1, 6], [3]]
    assert _parts(split) == [[1, 2, 3, 7, 4], [2, 7, 3], [7, 1, 6], [3]]
    assert split.train_users.tolist() == [0, 1, 2]
    assert split.stage_users("test").tolist() == plain.stage_users("test").tolist()


def test_cold_items_by_time_need_timestamps_and_the_options_are_checked():
    with pytest.raises(DataError, match=r"--data.holdout.cold_items needs timestamps .* set "
                                        r"--data.source.timestamp_column, or name the cold items in a file with "
                                        r"--data.holdout.cold_item_list"):
        _ = _data(HoldoutOptions(cold_items=0.3), timestamps=False).split_data
    for share in (1.0, -0.1, 1.5):
        with pytest.raises(OptionError, match=rf"--data.holdout.cold_items {share!r}: expected a number in \[0, 1\)"):
            HoldoutOptions(cold_items=share)
    with pytest.raises(OptionError, match="both choose the cold items; give one of them"):
        HoldoutOptions(cold_items=0.1, cold_item_list="cold.txt")


def test_without_the_options_the_split_and_the_batches_are_todays():
    data = _data()
    split = data.split_data
    assert type(split) is LeaveOneOutSplit and split.cold is None and split.train_items is data.sequences.items
    assert "target_cold" not in _batch(data.eval_batches("val"))


# ------------------------------------------------------------------------------- training batches
def test_training_batches_and_their_negatives_never_hold_a_cold_item():
    split = _data(HoldoutOptions(cold_items=0.3)).split_data
    batches = TrainBatches(split, max_len=5, num_negatives=20)
    for epoch in range(5):
        batch = _batch(batches, epoch=epoch)
        for key in ("input_ids", "targets", "negatives"):
            assert not np.isin(batch[key].numpy(), [5, 8]).any(), (key, epoch)
        assert (batch["negatives"][batch["targets"] > 0] > 0).all()
    assert batch["targets"].tolist() == [[2, 3], [0, 7], [0, 1], [0, 1]]  # u4: 3 1 (8 skipped)


def test_a_user_who_had_every_warm_item_in_training_is_refused_at_fit():
    log = [(1, 1, 1), (1, 2, 2), (1, 1, 3), (1, 2, 4), (1, 1, 5), (1, 3, 6), (2, 1, 1), (2, 3, 9)]  # item 3 cold
    data = _data(HoldoutOptions(cold_items=0.3), log=log)
    assert np.flatnonzero(data.split_data.cold).tolist() == [3]
    with pytest.raises(DataError, match=r"interacted with every one of the 2 warm items in their training part"):
        data.setup("fit")


# ------------------------------------------------------------------------------- evaluation batches
def test_evaluation_batches_mark_the_targets_without_a_training_interaction():
    data = _data(HoldoutOptions(cold_items=0.3))
    val = _batch(data.eval_batches("val"))
    assert val["targets"].tolist() == [7, 3, 6, 4]
    assert val["target_cold"].tolist() == [False, False, True, True]  # 6 and 4 are only ever held out
    assert _batch(data.eval_batches("test"))["target_cold"].tolist() == [True, True, False, True]
    assert "target_cold" not in _batch(data.eval_batches("predict"))
    plain = LeaveOneOutSplit(data.sequences)  # the data module's flag (item features) marks them without a cold split
    flagged = _batch(EvalBatches(plain, "val", 5, num_negatives=2, target_cold=True))
    assert flagged["target_cold"].tolist() == [False, False, True, True]
    assert "target_cold" not in _batch(EvalBatches(plain, "val", 5, num_negatives=2))


def test_the_contract_checks_target_cold():
    batch = {"input_ids": torch.ones(3, 2, dtype=torch.long), "targets": torch.ones(3, dtype=torch.long),
             "candidates": torch.ones(3, 4, dtype=torch.long), "target_cold": torch.tensor([True, False, True])}
    check_batch(batch, "validate", num_items=5)
    for bad, found in ((torch.tensor([1, 0, 1]), r"shape \(3,\) and dtype torch.int64"),
                       (torch.tensor([True, False]), r"shape \(2,\) and dtype torch.bool"), ([True] * 3, "a list")):
        with pytest.raises(DataError, match=rf"'target_cold' has {found}; expected a \(B,\) bool tensor "
                                            r"\('input_ids' \(3, 2\)\), True where the target item has no training"):
            check_batch({**batch, "target_cold": bad}, "test", num_items=5)


# ------------------------------------------------------------------------------------- metrics
def _reference(ranks: np.ndarray, k: int) -> tuple[float, float]:
    """NDCG@k and HR@k written out, one user at a time."""
    ndcg = [1 / math.log2(r + 2) if r < k else 0.0 for r in ranks]
    return sum(ndcg) / len(ranks), sum(r < k for r in ranks) / len(ranks)


def test_warm_and_cold_metrics_match_the_written_out_formula_and_an_empty_group_is_nan():
    ranks = np.array([0, 3, 12, 1, 40, 9, 2])
    cold = np.array([False, True, True, False, False, True, False])
    metric = WarmColdMetrics((10,), prefix="val/", sync_on_compute=False)
    metric.update(torch.from_numpy(ranks[:4]), torch.from_numpy(cold[:4]))  # two batches, as in an epoch
    metric.update(torch.from_numpy(ranks[4:]), torch.from_numpy(cold[4:]))
    out = metric.compute()
    for group, members in (("warm", ~cold), ("cold", cold)):
        ndcg, hit = _reference(ranks[members], 10)
        assert out[f"val/{group}/ndcg@10"].item() == pytest.approx(ndcg, rel=1e-6)
        assert out[f"val/{group}/hr@10"].item() == pytest.approx(hit, rel=1e-6)
        assert out[f"val/{group}/users"].item() == members.sum()
    warm_only = WarmColdMetrics((10,), sync_on_compute=False)
    warm_only.update(torch.tensor([0, 5]), torch.tensor([False, False]))
    out = warm_only.compute()
    assert math.isnan(out["cold/ndcg@10"]) and math.isnan(out["cold/hr@10"]) and out["cold/users"] == 0
    assert out["warm/hr@10"] == 1.0


def test_the_module_logs_warm_and_cold_metrics_only_when_the_batches_mark_them():
    torch.manual_seed(0)
    results = {}
    for holdout in (HoldoutOptions(cold_items=0.3), HoldoutOptions()):
        data = _data(holdout)
        model = SASRecModule(num_items=data.num_items, max_len=5,
                             encoder=EncoderOptions(hidden_size=8, num_blocks=1, num_heads=1),
                             evaluation=EvaluationOptions(protocol="full", top_k=(1, 5)))
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
        results[holdout.cold_items] = trainer.validate(model, datamodule=data, verbose=False)[0]
    logged = results[0.3]
    assert logged["val/warm/users"] == 2 and logged["val/cold/users"] == 2
    for name in ("hr@1", "ndcg@5", "mrr"):  # the overall mean is the users' mean of the two groups
        assert logged[f"val/{name}"] == pytest.approx((logged[f"val/warm/{name}"] + logged[f"val/cold/{name}"]) / 2)
    assert not any("warm" in key or "cold" in key for key in results[0.0])


# ------------------------------------------------------------------------------------ baselines
def _features(categories: list[int], tags: list[list[int]] | None = None) -> ItemFeatures:
    """A hand-built table over items 0..8 (row 0 padding): a categorical column and a multi-valued one."""
    values = {"category": np.array([0, *categories], dtype=np.int64)}
    columns = [FeatureColumn("category", "categorical", max(categories) + 1)]
    if tags is not None:
        width = max(len(t) for t in tags)
        values["tags"] = np.array([[0] * width] + [t + [0] * (width - len(t)) for t in tags], dtype=np.int64)
        columns.append(FeatureColumn("tags", "multi", max(max(t, default=0) for t in tags) + 1, width))
    return ItemFeatures(tuple(columns), values)


def _category_ranks(batches: EvalBatches, codes: list[list[int]], exclude_seen: bool) -> np.ndarray:
    """The category-popularity ranks written out with Python loops (the reference)."""
    popularity = batches.popularity.tolist()
    popularity += [0] * (len(codes) + 1 - len(popularity))  # items after the data's: no interaction
    groups = [c if any(c) else [0] for c in codes]  # item id - 1 -> its codes (none: the unknown group 0)
    totals = {}
    for item, mine in enumerate(groups, start=1):
        for code in set(code for code in mine if code or mine == [0]):
            totals[code] = totals.get(code, 0) + popularity[item]
    tie = np.random.default_rng(0).random(len(popularity))
    key = {item: (max(totals[c] for c in mine if c or mine == [0]), popularity[item], tie[item])
           for item, mine in enumerate(groups, start=1)}
    ranks = []
    for row, user in enumerate(batches.rows):
        target = int(batches.candidates[row, 0])
        history = set(batches.split.data.items[batches.split.starts[user]:batches.history_ends[user]].tolist())
        ranks.append(sum(1 for item in key if item != target and key[item] > key[target]
                         and not (exclude_seen and item in history)))
    return np.array(ranks)


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_category_popularity_ranks_by_the_category_then_the_item_and_splits_warm_and_cold(exclude_seen):
    data = _data(HoldoutOptions(cold_items=0.3))
    batches = data.eval_batches("test")
    categories = [1, 2, 1, 3, 2, 3, 1, 2]  # items 1..8
    tags = [[1, 2], [2], [], [3], [1, 3], [2], [1], [3, 2]]
    for column, codes in (("category", [[c] for c in categories]), ("tags", tags)):
        got = category_popularity_metrics(batches, _features(categories, tags), column, "full", exclude_seen,
                                          ks=(1, 3), prefix="test/")
        ranks = _category_ranks(batches, codes, exclude_seen)
        cold = batches.cold_targets
        assert cold.tolist() == [True, True, False, True]
        for group, members in (("", np.ones(4, bool)), ("warm/", ~cold), ("cold/", cold)):
            ndcg, hit = _reference(ranks[members], 3)
            assert got[f"test/{group}ndcg@3"] == pytest.approx(ndcg, rel=1e-6), (column, group)
            assert got[f"test/{group}hr@3"] == pytest.approx(hit, rel=1e-6), (column, group)


def test_an_items_category_score_is_its_most_popular_categorys_training_interactions():
    popularity = np.array([0, 5, 1, 2, 4])  # items 1..4
    multi = np.array([[0, 0], [1, 2], [2, 0], [0, 0], [3, 0]])  # item 3 has none: the unknown group
    # categories: 1 = {1}: 5, 2 = {1, 2}: 6, 3 = {4}: 4, unknown = {3}: 2; item 1 takes its best, 6 (not 5 + 6)
    assert category_scores(multi, popularity).tolist() == [-np.inf, 6, 6, 2, 4]
    assert category_scores(np.array([0, 1, 1, 0, 2]), popularity).tolist() == [-np.inf, 6, 6, 2, 4]


def test_the_baselines_rank_the_items_an_item_table_adds_after_the_datas_too():
    batches = _data(HoldoutOptions(cold_items=0.3)).eval_batches("test")
    categories = [1, 2, 1, 3, 2, 3, 1, 2, 2, 3]  # items 9 and 10: in the item table, never interacted with
    got = category_popularity_metrics(batches, _features(categories), None, "full", ks=(1, 3))
    ranks = _category_ranks(batches, [[c] for c in categories], exclude_seen=True)
    for group, members in (("", np.ones(4, bool)), ("cold/", batches.cold_targets)):
        assert got[f"{group}ndcg@3"] == pytest.approx(_reference(ranks[members], 3)[0], rel=1e-6), group
    unknown = _features([0] * 10)  # one group: the ranking is the most-popular one over the 10 items
    over_ten = most_popular_metrics(batches, "full", ks=(1, 3), num_items=10)
    assert category_popularity_metrics(batches, unknown, None, "full", ks=(1, 3)) == over_ten
    assert over_ten != most_popular_metrics(batches, "full", ks=(1, 3))  # items 9 and 10 pass cold targets


def test_category_popularity_without_any_known_category_is_the_most_popular_ranking():
    batches = _data(HoldoutOptions(cold_items=0.3)).eval_batches("test")
    unknown = _features([0] * 8)
    for protocol in ("sampled", "full"):
        assert category_popularity_metrics(batches, unknown, None, protocol, ks=(1, 2, 5)) == \
            most_popular_metrics(batches, protocol, ks=(1, 2, 5))


def test_most_popular_reports_warm_and_cold_targets_apart():
    batches = _data(HoldoutOptions(cold_items=0.3)).eval_batches("test")
    got = most_popular_metrics(batches, "full", ks=(3,), prefix="p/")
    assert got["p/cold/users"] == 3 and got["p/warm/users"] == 1
    assert got["p/hr@3"] == pytest.approx((got["p/warm/hr@3"] + 3 * got["p/cold/hr@3"]) / 4)
    assert "p/warm/hr@3" not in most_popular_metrics(_data().eval_batches("test"), "full", ks=(3,), prefix="p/")


def test_the_test_summary_prints_overall_warm_and_cold_for_the_model_and_both_baselines(capsys):
    features = _features([1, 2, 1, 3, 2, 3, 1, 2])

    class WithFeatures(SASRecDataModule):
        item_features = property(lambda self: features)

    data = WithFeatures(path={"user": [u for u, _, _ in LOG], "item": [i for _, i, _ in LOG],
                              "timestamp": [t for _, _, t in LOG]}, max_len=5, print_statistics=False,
                        source=SourceOptions(timestamp_column="timestamp"), holdout=HoldoutOptions(cold_items=0.3),
                        preprocessing=PreprocessingOptions(min_user_interactions=0, min_item_interactions=0),
                        cache=CacheOptions(use=False), loader=LoaderOptions(num_eval_negatives=2))
    results = {"test/ndcg@10": 0.5, "test/hr@10": 0.75, "test/warm/ndcg@10": 0.625, "test/warm/hr@10": 1.0,
               "test/cold/ndcg@10": 0.375, "test/cold/hr@10": 0.5, "test/warm/users": 2.0, "test/cold/users": 2.0}
    print_test_summary(results, EvaluationOptions(protocol="full"), data)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[sasrec-lightning] test (full protocol): NDCG@10 0.5000, HR@10 0.7500 | most-popular")
    assert lines[1] == ("[sasrec-lightning] test by target (full protocol; 2 warm and 2 cold targets; cold: no "
                        "training interaction):")
    assert lines[3] == " " * 21 + "     all    warm    cold |     all    warm    cold"
    assert lines[4] == "  model" + " " * 16 + "0.5000  0.6250  0.3750 |  0.7500  1.0000  0.5000"
    assert lines[5].startswith("  most-popular ") and lines[6].startswith("  category-popularity ")
    assert len(lines) == 7


def test_the_warm_cold_table_says_n_a_for_a_group_without_users():
    table = warm_cold_table({"model": ("test/", {"test/ndcg@10": 0.5, "test/hr@10": 1.0, "test/warm/ndcg@10": 0.5,
                                                 "test/warm/hr@10": 1.0, "test/cold/ndcg@10": float("nan"),
                                                 "test/cold/hr@10": float("nan"), "test/warm/users": 3.0,
                                                 "test/cold/users": 0.0})}, 10, "sampled")
    assert table.splitlines()[-1] == "  model  0.5000  0.5000     n/a |  1.0000  1.0000     n/a"
    assert "3 warm and 0 cold targets" in table.splitlines()[0]


# ------------------------------------------------------------------------------ synthetic data
def test_synthetic_item_features_drive_behaviour_and_the_late_items_are_the_cold_ones():
    kwargs = dict(num_users=300, num_items=80, num_categories=4, tags_per_category=2, max_length=15, seed=1)
    interactions, items = synthetic_item_features(**kwargs)
    again, items_again = synthetic_item_features(**kwargs)
    assert interactions.equals(again) and items.equals(items_again)
    assert items.column_names == ["item", "category", "tags", "price", "embedding", "late"]
    assert items.column("price").null_count > 0 and pa.types.is_list(items.schema.field("tags").type)
    item, time = interactions.column("item").to_numpy(), interactions.column("timestamp").to_numpy()
    late = items.column("late").to_numpy(zero_copy_only=False)
    first = np.full(81, np.iinfo(np.int64).max)
    np.minimum.at(first, item, time)
    cold = first[1:] >= np.quantile(time, 0.9, method="higher")  # what cold_items 0.1 picks
    picked = first[1:] < np.iinfo(np.int64).max
    assert late.sum() == 8 and (cold[picked] == late[picked]).all() and late[picked].sum() >= 6
    category = np.array([int(c[1:]) for c in items.column("category").to_pylist()])  # users follow categories:
    same = category[item[1:] - 1] == category[item[:-1] - 1]  # consecutive actions (a user's) in one category
    users = interactions.column("user").to_numpy()
    assert same[users[1:] == users[:-1]].mean() > 0.7  # 0.79; 0.57 when taste picks ignore the category


def test_the_data_module_generates_the_synthetic_features_and_their_item_table():
    data = SASRecDataModule(print_statistics=False, source=SourceOptions(synthetic_users=200, synthetic_items=60,
                                                                          synthetic_features=True))
    table = data._item_table_source()
    interactions, items = synthetic_item_features(200, 60, seed=42)
    assert table.equals(items) and data.sequences.items.size == interactions.num_rows
    assert data.sequences.timestamps is not None
    assert SASRecDataModule(print_statistics=False)._item_table_source() is None


def test_a_cold_item_list_is_stored_absolute_so_a_checkpoint_finds_it_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cold.txt").write_text("3\n")
    data = SASRecDataModule(path="log.txt", holdout=HoldoutOptions(cold_item_list="cold.txt"), print_statistics=False)
    assert data.hparams["holdout"]["cold_item_list"] == str(tmp_path / "cold.txt")
    assert data.holdout.cold_item_list == "cold.txt"  # this run reads it as given
    assert SASRecDataModule(print_statistics=False).hparams["holdout"]["cold_item_list"] is None
