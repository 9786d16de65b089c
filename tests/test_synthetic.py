"""The built-in synthetic log: deterministic from its seed, valid for small catalogues, popularity-skewed."""

from __future__ import annotations

import numpy as np
import pytest

from sasrec_lightning.data.synthetic import synthetic_interactions


def test_same_seed_same_log_other_seed_other_log():
    first, second = synthetic_interactions(50, 100, seed=1), synthetic_interactions(50, 100, seed=1)
    assert first.equals(second)
    assert not first.equals(synthetic_interactions(50, 100, seed=2))


@pytest.mark.parametrize("num_items", [20, 30, 60])  # fewer items than 3 per cluster: some cluster drew none
def test_small_catalogues_are_valid(num_items):
    table = synthetic_interactions(60, num_items, num_clusters=20, seed=0)
    items = table.column("item").to_numpy()
    assert items.min() >= 1 and items.max() <= num_items
    lengths = np.bincount(table.column("user").to_numpy())[1:]
    assert len(lengths) == 60 and lengths.min() >= 5 and lengths.max() <= 40


def test_popularity_is_skewed():
    counts = np.sort(np.bincount(synthetic_interactions(500, 200, seed=0).column("item").to_numpy()))[::-1]
    assert counts[:20].sum() > 0.3 * counts.sum()  # the top 10% of items take well over 10% of actions
