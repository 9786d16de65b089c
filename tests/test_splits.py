"""The split interface and the one item-popularity definition, from the data module to its consumers."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from sasrec_lightning.data.batches import EvalBatches
from sasrec_lightning.data.datamodule import SASRecDataModule
from sasrec_lightning.data.options import LoaderOptions
from sasrec_lightning.data.preprocessing import SequenceData
from sasrec_lightning.data.splits import LeaveOneOutSplit, Split, TemporalSplit
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.baselines import most_popular_metrics
from sasrec_lightning.training.module import SASRecModule

# tiny.txt (conftest): training parts under leave-one-out (the last two items of users with >= 3
# are held out): user 1: 1 2 3 | user 2: 2 | user 3: 5 1 | user 4: 6 | user 5: 1 6 | user 6: 3.
TINY_POPULARITY = [0, 3, 2, 2, 0, 1, 2]  # item id -> training interactions (item 4 is only held out)


def test_both_splits_declare_the_split_interface():
    data = SequenceData(items=np.array([1, 2, 3, 4, 2, 3]), offsets=np.array([0, 4, 6]), user_ids=np.arange(2),
                        item_ids=np.arange(5), timestamps=np.array([1, 2, 3, 4, 1, 3]))
    members = [name for name in dir(Split) if not name.startswith("_")] + list(Split.__annotations__)
    for split in (LeaveOneOutSplit(data), TemporalSplit(data, val_cutoff=3, test_cutoff=4)):
        assert all(hasattr(split, name) for name in members), type(split).__name__
    leave_one_out = LeaveOneOutSplit(data)
    assert leave_one_out.stage_users("test").tolist() == [0] and leave_one_out.stage_users("predict").tolist() == [0, 1]
    assert leave_one_out.history_end("val").tolist() == [2, 4]
    for split in (leave_one_out, TemporalSplit(data, val_cutoff=3, test_cutoff=4)):
        with pytest.raises(ValueError, match="unknown stage 'train'; expected val, test or predict"):
            split.stage_users("train")


def test_item_popularity_is_the_training_interactions_computed_once(tiny_txt):
    data = SASRecDataModule(path=str(tiny_txt), max_len=4, print_statistics=False,
                            loader=LoaderOptions(eval_negative_sampling="popularity", num_eval_negatives=2))
    data.setup("test")
    popularity = data.item_popularity()
    assert popularity.tolist() == TINY_POPULARITY
    assert data.item_popularity() is popularity  # computed once
    test = data.eval_batches("test")
    assert test.popularity is popularity  # the evaluation negatives and the baseline use the same array
    # Item 4 has no training interaction, so popularity-sampled negatives never draw it.
    assert 4 not in set(test.candidates[:, 1:].ravel().tolist())


def test_the_most_popular_baseline_ranks_by_the_popularity_it_is_given():
    data = SequenceData(items=np.array([1, 2, 3, 4, 5, 5, 4, 3, 2, 1]), offsets=np.array([0, 5, 10]),
                        user_ids=np.arange(2), item_ids=np.arange(8))
    split = LeaveOneOutSplit(data)  # test targets: 5 and 1
    for popularity, expected_hr1 in (([0, 1, 0, 0, 0, 9, 0, 0], 0.5), ([0, 9, 0, 0, 0, 8, 0, 0], 0.5),
                                     ([0, 0, 9, 9, 9, 0, 0, 0], 0.0), ([0, 3, 0, 0, 0, 3, 9, 9], 0.0)):
        batches = EvalBatches(split, "test", max_len=5, popularity=np.array(popularity))
        assert len(batches) == 2
        metrics = most_popular_metrics(batches, "full", exclude_seen=False, ks=(1,))
        assert metrics["hr@1"] == expected_hr1, popularity


def test_the_model_serves_the_data_module_popularity(tiny_txt):
    L.seed_everything(0, verbose=False)
    data = SASRecDataModule(path=str(tiny_txt), max_len=4, print_statistics=False, loader=LoaderOptions(batch_size=2))
    model = SASRecModule(num_items=data.num_items, max_len=4, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    assert model.item_popularity.tolist() == TINY_POPULARITY
    # A sequence with no known item gets the most popular training item (item 1).
    assert model.recommend([["unknown"]], k=1).items == [[1]]
    assert torch.equal(model.item_popularity, torch.tensor(TINY_POPULARITY))


def test_popularity_negatives_for_a_user_left_with_items_never_trained_on():
    # Items 4 and 5 occur only as held-out items (user 1's validation and test items); user 0 saw 1, 2
    # and 3, so only they are left to draw.
    data = SequenceData(items=np.array([1, 2, 3, 1, 2, 3, 4, 5]), offsets=np.array([0, 3, 8]), user_ids=np.arange(2),
                        item_ids=np.arange(6))
    split = LeaveOneOutSplit(data)
    assert split.history_end("test").tolist() == [2, 7]
    batches = EvalBatches(split, "test", max_len=5, num_negatives=20, negative_sampling="popularity")
    assert batches.popularity.tolist() == [0, 2, 1, 1, 0, 0]
    assert set(batches.candidates[0, 1:].tolist()) == {4, 5}
