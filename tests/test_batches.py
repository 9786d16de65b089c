"""Leave-one-out split and hand-written expected left-padded batches (RecTools style), via the data module."""

from __future__ import annotations

import numpy as np
import pytest

from sasrec_lightning import SASRecDataModule
from sasrec_lightning.data.batches import BatchKey, EvalBatches, LeaveOneOutSplit, TrainBatches, UserBatchSampler


def tiny_split(path) -> LeaveOneOutSplit:
    data = SASRecDataModule(path=str(path), print_statistics=False)
    return data.split_data


def key(rows) -> BatchKey:
    return BatchKey(rows=np.asarray(rows), epoch=0, index=0)


def test_sequences_are_read_in_file_order(tiny_txt):
    data = SASRecDataModule(path=str(tiny_txt), print_statistics=False).sequences
    assert data.num_users == 6 and data.num_items == 6
    assert [data.sequence(u).tolist() for u in range(6)] == [[1, 2, 3, 4, 5], [2, 3, 6], [5, 1, 2, 3], [6, 4, 2],
                                                             [1, 6], [3]]


def test_leave_one_out_split_by_hand(tiny_txt):
    split = tiny_split(tiny_txt)
    items = split.data.items
    train = [items[s:e].tolist() for s, e in zip(split.starts, split.train_ends, strict=True)]
    assert train == [[1, 2, 3], [2], [5, 1], [6], [1, 6], [3]]  # users with < 3 actions keep everything
    assert split.eval_users.tolist() == [0, 1, 2, 3]
    assert split.train_users.tolist() == [0, 2, 4]  # at least one (input, next item) pair
    assert items[split.history_end("val")[split.eval_users]].tolist() == [4, 3, 2, 4]  # second-to-last
    assert items[split.history_end("test")[split.eval_users]].tolist() == [5, 6, 3, 2]  # last


def test_training_batch_is_left_padded_to_the_longest_sequence(tiny_txt):
    split = tiny_split(tiny_txt)
    batch = TrainBatches(split, max_len=3)[key([0, 1, 2])]  # users 1, 3, 5
    assert batch["input_ids"].tolist() == [[1, 2], [0, 5], [0, 1]]
    assert batch["targets"].tolist() == [[2, 3], [0, 1], [0, 6]]
    assert batch["users"].tolist() == [0, 2, 4]
    assert batch["negatives"].shape == (3, 2, 1)
    assert (batch["negatives"][batch["targets"] == 0] == 0).all()
    assert (batch["negatives"][batch["targets"] != 0] > 0).all()


def test_training_batch_padded_to_max_len_and_truncated(tiny_txt):
    split = tiny_split(tiny_txt)
    padded = TrainBatches(split, max_len=3, pad_to_max_len=True)[key([0, 1, 2])]
    assert padded["input_ids"].tolist() == [[0, 1, 2], [0, 0, 5], [0, 0, 1]]
    assert padded["targets"].tolist() == [[0, 2, 3], [0, 0, 1], [0, 0, 6]]
    cut = TrainBatches(split, max_len=1)[key([0, 1, 2])]  # the most recent inputs are kept
    assert cut["input_ids"].tolist() == [[2], [5], [1]]
    assert cut["targets"].tolist() == [[3], [1], [6]]


def test_evaluation_batches_by_hand(tiny_txt):
    split = tiny_split(tiny_txt)
    val = EvalBatches(split, "val", max_len=3, num_negatives=2, seed=0)[key([0, 1, 2, 3])]
    assert val["input_ids"].tolist() == [[1, 2, 3], [0, 0, 2], [0, 5, 1], [0, 0, 6]]
    assert val["targets"].tolist() == [4, 3, 2, 4]
    test = EvalBatches(split, "test", max_len=3, num_negatives=2, seed=0)[key([0, 1, 2, 3])]
    # The validation item joins the input; user 1's four actions are cut to the last three.
    assert test["input_ids"].tolist() == [[2, 3, 4], [0, 2, 3], [5, 1, 2], [0, 6, 4]]
    assert test["targets"].tolist() == [5, 6, 3, 2]
    assert test["candidates"][:, 0].tolist() == [5, 6, 3, 2] and test["candidates"].shape == (4, 3)
    # The full protocol's seen items: the whole (uncut) history of each user.
    seen = sorted(zip(test["seen_rows"].tolist(), test["seen_items"].tolist(), strict=True))
    assert seen == sorted([(0, 1), (0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (2, 5), (2, 1), (2, 2), (3, 6), (3, 4)])
    predict = EvalBatches(split, "predict", max_len=3)[key([0, 4, 5])]
    assert predict["input_ids"].tolist() == [[3, 4, 5], [0, 1, 6], [0, 0, 3]] and "targets" not in predict


@pytest.mark.parametrize("stage", ["train", "val", "test"])
def test_sampled_negatives_never_hit_the_users_items(synthetic_txt, stage):
    split = tiny_split(synthetic_txt)
    items, num_items = split.data.items, split.data.num_items
    # The item sets training negatives must avoid (the training sequence, as in the paper's code)
    # and evaluation negatives must avoid (everything the user ever interacted with).
    ends = split.train_ends if stage == "train" else split.ends
    owned = np.zeros((split.data.num_users, num_items + 1), dtype=bool)
    for user, (start, end) in enumerate(zip(split.starts, ends, strict=True)):
        owned[user, items[start:end]] = True
    if stage == "train":
        dataset = TrainBatches(split, max_len=20, num_negatives=3, seed=1)
        for epoch in range(3):
            batch = dataset[BatchKey(rows=np.arange(len(dataset)), epoch=epoch, index=0)]
            real = batch["targets"] != 0  # (B, L)
            users = batch["users"][:, None, None].expand_as(batch["negatives"])[real].numpy()
            negatives = batch["negatives"][real].numpy()  # (N, k)
            assert negatives.min() >= 1 and negatives.max() <= num_items
            assert not owned[users, negatives].any()
    else:
        dataset = EvalBatches(split, stage, max_len=20, num_negatives=100, seed=1)
        negatives = dataset.candidates[:, 1:]  # (U, 100)
        assert negatives.min() >= 1 and negatives.max() <= num_items
        assert not owned[dataset.rows[:, None], negatives].any()
        again = EvalBatches(split, stage, max_len=20, num_negatives=100, seed=1)
        assert np.array_equal(again.candidates, dataset.candidates)  # seeded: fixed candidates


def test_sampler_covers_every_user_once_and_buckets(rng):
    lengths = rng.integers(1, 50, size=103)
    sampler = UserBatchSampler(lengths, batch_size=10, shuffle=False)
    rows = np.concatenate([k.rows for k in sampler])
    assert sorted(rows.tolist()) == list(range(103)) and len(sampler) == 11
    assert np.all(np.diff(lengths[rows]) <= 0)  # evaluation: longest first, one bucket per batch
