"""One id map for users and items (vocabulary.IdMap) and the shared first-False helper."""

import numpy as np
import pyarrow as pa

from sasrec_lightning.data.formats import first_false
from sasrec_lightning.data.vocabulary import IdMap, ItemVocabulary


def test_user_rows_from_zero():
    users = IdMap(np.array([30, 10, 20]))  # row -> original id
    rows, found = users.lookup([20, 30, 99, 10])
    assert found.tolist() == [True, True, False, True]
    assert rows[found].tolist() == [2, 0, 1]
    assert users.to_original(np.array([0, 2])).tolist() == [30, 20]
    assert len(users) == 3


def test_text_ids_and_mixed_queries():
    users = IdMap(["b", "a", "10"])
    rows, found = users.lookup(["a", "zz", "10"])
    assert found.tolist() == [True, False, True] and rows[found].tolist() == [1, 2]
    rows, found = users.lookup(np.array([10]))  # an integer query against text ids compares as text
    assert found.tolist() == [True] and rows.tolist() == [2]


def test_items_skip_the_padding_entry():
    items = ItemVocabulary([0, 30, 10, 20])  # entry 0 is padding, never a match
    assert items.to_internal([0, 10, 30]).tolist() == [0, 2, 1]
    assert items.num_items == 3


def test_empty_lookups():
    rows, found = IdMap(np.array([], dtype=np.int64)).lookup([1, 2])
    assert found.tolist() == [False, False]
    assert IdMap(np.array([5])).lookup([])[1].tolist() == []


def test_first_false():
    assert first_false(pa.array([True, True, False, False])) == 2
    assert first_false(pa.array([True, None, True])) == 1  # a null counts as False
    assert first_false(pa.chunked_array([[True], [True]])) is None
