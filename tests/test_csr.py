"""The CSR gathers against a per-row Python loop."""

from __future__ import annotations

import numpy as np
import pytest

from sasrec_lightning.data.csr import csr_gather, item_counts, left_padded, segment_positions

ITEMS = np.array([5, 1, 2, 3, 9, 4, 4, 7, 8, 6])


@pytest.mark.parametrize("starts, ends", [
    ([0, 3, 3, 7], [3, 3, 7, 10]),  # back to back, an empty row
    ([6, 1, 8], [9, 2, 8]),  # any order, overlapping, empty at the end
    ([4, 2], [2, 5]),  # ends before starts: an empty row
    ([], []),
])
def test_gathers_equal_a_per_row_loop(starts, ends):
    starts, ends = np.array(starts, dtype=np.int64), np.array(ends, dtype=np.int64)
    rows = [list(range(s, e)) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    assert segment_positions(starts, ends).tolist() == [p for row in rows for p in row]
    owner, values = csr_gather(ITEMS, starts, ends)
    assert owner.tolist() == [r for r, row in enumerate(rows) for _ in row]
    assert values.tolist() == [int(ITEMS[p]) for row in rows for p in row]
    expected = np.zeros(10 + 1, np.int64)
    for row in rows:
        for p in row:
            expected[ITEMS[p]] += 1
    assert item_counts(ITEMS, starts, ends, 10).tolist() == expected.tolist()


def test_left_padded_keeps_the_last_items_of_each_row():
    padded = left_padded(ITEMS, np.array([0, 3, 5]), np.array([3, 4, 10]), 4)
    assert padded.tolist() == [[0, 5, 1, 2], [0, 0, 0, 3], [4, 7, 8, 6]]
