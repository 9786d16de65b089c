"""Item side features: the encoded table every part of the package shares (issue 26).

The data module reads a user's item table (one row per item: categories, tags, numbers, vectors)
and encodes it, aligned with the internal item ids ``0..I`` (row ``0`` is padding), into an
:class:`ItemFeatures`. The model's item representation (``model/items.py``) is built from its
:meth:`ItemFeatures.spec` (plain values, stored in a checkpoint's hyper-parameters) and takes its
arrays as buffers, so a checkpoint carries them and a model loaded from it needs no data module.

Codes are ``int64`` with ``0`` meaning "unknown or missing" (a learned vector of its own); the
vocabulary of a column maps code ``c`` to the original value ``vocabulary[c]`` (``vocabulary[0]`` is
the placeholder ``"<unknown>"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["FeatureKind", "FeatureColumn", "ItemFeatures", "UNKNOWN"]

FeatureKind = Literal["categorical", "multi", "numeric", "vector"]

#: The vocabulary entry of code 0: an unknown or missing value.
UNKNOWN = "<unknown>"


@dataclass(frozen=True)
class FeatureColumn:
    """One encoded feature column: what the model needs to build its part.

    Attributes:
        name: the column's name in the item table.
        kind: ``categorical`` (one value), ``multi`` (several values), ``numeric`` (one number) or
            ``vector`` (a dense vector of ``width`` numbers).
        size: ``categorical`` / ``multi``: codes ``0..size - 1`` (the vocabulary with code 0, unknown);
            ``numeric``: 1; ``vector``: ``width``.
        width: ``multi``: values kept per item (codes padded with 0); ``vector``: its length; otherwise 1.
    """

    name: str
    kind: FeatureKind
    size: int
    width: int = 1

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "size": int(self.size), "width": int(self.width)}


@dataclass
class ItemFeatures:
    """An item table encoded for the model, aligned with the internal item ids ``0..num_items``.

    Attributes:
        columns: the encoded columns, in the order the user listed them.
        values: column name -> array over item ids (row 0, padding, is 0 / NaN):
            ``categorical``: ``(I + 1,)`` int64 codes (0 = unknown or missing);
            ``multi``: ``(I + 1, width)`` int64 codes, 0-padded (an item with none: all 0);
            ``numeric``: ``(I + 1,)`` float32, already scaled (standardized), NaN = missing;
            ``vector``: ``(I + 1, width)`` float32, a row of NaN = missing.
        vocabularies: categorical / multi column name -> ``size`` original values as strings (index 0
            is :data:`UNKNOWN`).
        scaling: numeric column name -> ``(mean, std)`` the raw values were standardized with.
        has_row: ``(I + 1,)`` bool, the item had a row in the table (row 0: False).
        info: provenance (the table's path, how many rows, which items were added as cold-start items).
    """

    columns: tuple[FeatureColumn, ...]
    values: dict[str, np.ndarray]
    vocabularies: dict[str, list[str]] = field(default_factory=dict)
    scaling: dict[str, tuple[float, float]] = field(default_factory=dict)
    has_row: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        """``I``: the arrays have ``I + 1`` rows."""
        return len(next(iter(self.values.values()))) - 1 if self.values else 0

    def spec(self) -> dict:
        """The plain description a model is built from (and a checkpoint stores): ``{"columns": [...]}``."""
        return {"columns": [column.as_dict() for column in self.columns]}

    def state(self) -> dict:
        """What a checkpoint keeps besides the arrays: vocabularies and scaling (plain values, ``weights_only``)."""
        return {"spec": self.spec(), "vocabularies": {k: list(v) for k, v in self.vocabularies.items()},
                "scaling": {k: [float(a), float(b)] for k, (a, b) in self.scaling.items()}}
