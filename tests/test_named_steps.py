"""The named steps of preprocessing.preprocess and recommend.recommend, each against hand-written values."""

import numpy as np
import pyarrow as pa
import torch

from sasrec_lightning.data.preprocessing import PreprocessOptions, _first_occurrences, _rating_filter, _renumbered
from sasrec_lightning.serving.recommend import _as_lists, _most_popular


def test_first_occurrences_keeps_the_earliest_row_of_each_pair():
    users = np.array([0, 0, 0, 1, 1])  # rows already in time order per user
    items = np.array([2, 1, 2, 2, 2])
    removed = []
    assert _first_occurrences(users, items, 3, removed).tolist() == [True, True, False, True, False]
    assert removed == [{"option": "deduplicate=True", "users": 0, "items": 0, "interactions": 2}]


def test_rating_filter_counts_what_it_removed():
    table = pa.table({"user": [1, 1, 2], "item": [5, 6, 6], "rating": [4.0, 2.0, None]})
    removed = []
    kept = _rating_filter(table, PreprocessOptions(min_rating=3.0), "f", removed)
    assert kept.column("item").to_pylist() == [5]
    assert removed == [{"option": "min_rating=3.0", "users": 1, "items": 1, "interactions": 2}]


def test_renumbered_builds_csr_with_padding_placeholder():
    user_vocab, item_vocab = pa.array(["u0", "u1", "u2"]), pa.array([10, 20, 30, 40])
    users = np.array([0, 0, 2])  # user code 1 and item code 1 no longer occur
    items = np.array([3, 0, 2])
    data = _renumbered(users, items, None, user_vocab, item_vocab)
    assert data.user_ids.tolist() == ["u0", "u2"]
    assert data.item_ids.tolist()[1:] == [10, 30, 40]  # internal 1..3
    assert data.items.tolist() == [3, 1, 2]
    assert data.offsets.tolist() == [0, 2, 3]


def test_most_popular_never_answers_padding():
    scores, items = _most_popular(torch.tensor([99.0, 1.0, 5.0, 3.0]), num_items=3, k=5)
    assert items.tolist() == [2, 3, 1] and scores.tolist() == [5.0, 3.0, 1.0]


def test_as_lists_drops_the_slots_without_an_item():
    ids = np.array([["a", "b"], ["c", "d"]])
    scores = torch.tensor([[2.0, 1.0], [3.0, float("-inf")]])
    assert _as_lists(ids, scores) == ([["a", "b"], ["c"]], [[2.0, 1.0], [3.0]])
