"""Build an :class:`~sasrec_lightning.data.features.ItemFeatures` by hand, for tests of the parts that use one.

The model's and the protocol's tests need an encoded item table without reading a file:
``make_item_features(4, categorical={"genre": [1, 2, 1, 0]})`` is what the data module would give for
four items whose genres are the first, second, first and an unknown value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sasrec_lightning.data.features import UNKNOWN, FeatureColumn, ItemFeatures


def make_item_features(
    num_items: int,
    categorical: dict[str, Sequence[int]] | None = None,
    multi: dict[str, Sequence[Sequence[int]]] | None = None,
    numeric: dict[str, Sequence[float | None]] | None = None,
    vector: dict[str, Sequence[Sequence[float] | None]] | None = None,
    has_row: Sequence[bool] | None = None,
    sizes: dict[str, int] | None = None,
) -> ItemFeatures:
    """An encoded item table over items ``1..num_items`` (row 0, padding: code 0 / NaN).

    Args:
        num_items: ``I``; every value list has one entry per item, item 1 first.
        categorical: column -> ``I`` codes (0 = unknown).
        multi: column -> ``I`` lists of codes (padded with 0 to the longest list).
        numeric: column -> ``I`` already-scaled numbers (``None`` or NaN = missing).
        vector: column -> ``I`` vectors of one length (``None`` = missing).
        has_row: ``I`` flags; default: every item has a row.
        sizes: categorical / multi column -> vocabulary size (default: the largest code + 1).

    Returns:
        The :class:`ItemFeatures`, columns in the order categorical, multi, numeric, vector; vocabularies
        ``["<unknown>", "<column>=1", ...]``, scaling ``(0.0, 1.0)``.
    """
    sizes = dict(sizes or {})
    columns, values, vocabularies, scaling = [], {}, {}, {}

    def vocabulary(name: str, largest: int) -> int:
        size = sizes.get(name, largest + 1)
        vocabularies[name] = [UNKNOWN, *(f"{name}={code}" for code in range(1, size))]
        return size

    for name, codes in (categorical or {}).items():
        array = np.zeros(num_items + 1, dtype=np.int64)  # (I + 1,)
        array[1:] = np.asarray(codes, dtype=np.int64)
        columns.append(FeatureColumn(name, "categorical", vocabulary(name, int(array.max(initial=0)))))
        values[name] = array
    for name, lists in (multi or {}).items():
        width = max(1, max((len(codes) for codes in lists), default=1))
        array = np.zeros((num_items + 1, width), dtype=np.int64)  # (I + 1, width)
        for item, codes in enumerate(lists, start=1):
            array[item, : len(codes)] = codes
        columns.append(FeatureColumn(name, "multi", vocabulary(name, int(array.max(initial=0))), width))
        values[name] = array
    for name, numbers in (numeric or {}).items():
        array = np.full(num_items + 1, np.nan, dtype=np.float32)  # (I + 1,)
        array[1:] = [np.nan if number is None else number for number in numbers]
        columns.append(FeatureColumn(name, "numeric", 1))
        values[name] = array
        scaling[name] = (0.0, 1.0)
    for name, rows in (vector or {}).items():
        width = len(next(row for row in rows if row is not None))
        array = np.full((num_items + 1, width), np.nan, dtype=np.float32)  # (I + 1, width)
        for item, row in enumerate(rows, start=1):
            if row is not None:
                array[item] = row
        columns.append(FeatureColumn(name, "vector", width, width))
        values[name] = array
    flags = np.zeros(num_items + 1, dtype=bool)  # (I + 1,)
    flags[1:] = True if has_row is None else np.asarray(has_row, dtype=bool)
    info = {"source": "<by hand>", "rows": int(flags.sum()), "cold_items": 0,
            "items_without_row": int((~flags[1:]).sum()), "cold_item_ids": np.zeros(0, dtype=np.int64)}
    return ItemFeatures(tuple(columns), values, vocabularies, scaling, flags, info)
