"""The users a model was trained on, by original id: their histories in a data module, for ``recommend_users``.

:class:`UserHistories` holds what answering "recommend for user X" needs from a
:class:`~sasrec_lightning.datamodule.SASRecDataModule`: the CSR item array of its sequences, where
each user's history starts and ends (``full``: every interaction, what ``predict`` feeds the model;
``train``: the training part only, without the held-out items), and the user id map. It is built once
per data module (the id map sorts every user id) and kept by the module (:meth:`~sasrec_lightning.
serving.ServingMixin.recommend_users`); :meth:`rows` then turns a request's user ids into CSR ranges
with one ``np.searchsorted``, no per-user loop.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence

import numpy as np

from ..data.vocabulary import IdMap, ItemVocabulary

__all__ = ["HISTORIES", "UserHistories"]

# recommend_users(history=...) -> the split stage whose input it is (Split.history_end)
HISTORIES = {"full": "predict", "train": "train"}


class UserHistories:
    """Every user's history in a data module, and the map from original user ids to them.

    Args:
        datamodule: a data module with ``sequences`` (:class:`~sasrec_lightning.preprocessing.SequenceData`)
            and ``split_data`` (:class:`~sasrec_lightning.splits.Split`), as ``SASRecDataModule`` has.
        history: ``full`` (every interaction: what ``predict`` uses) or ``train`` (the training part).
        vocabulary: the model's item ids, checked against the data module's (the histories are in
            internal ids, which mean the same items only if the two agree); ``None``: only the counts.
        num_items: the model's number of items.

    Raises:
        TypeError: ``datamodule`` has no ``sequences`` or ``split_data``.
        ValueError: ``history`` is not ``full`` or ``train``, or the data module's items are not the model's.
    """

    def __init__(self, datamodule, history: str, vocabulary: ItemVocabulary | None, num_items: int) -> None:
        if history not in HISTORIES:
            raise ValueError(f"recommend_users: history={history!r}; expected one of {sorted(HISTORIES)} (full: every "
                             "interaction, as predict uses; train: the training part only)")
        if not (hasattr(datamodule, "sequences") and hasattr(datamodule, "split_data")):
            raise TypeError(f"recommend_users: the data module ({type(datamodule).__name__}) has no `sequences` and "
                            "`split_data`; expected a SASRecDataModule, given as datamodule= or attached to the "
                            "trainer, holding the data the model was trained on")
        sequences, split = datamodule.sequences, datamodule.split_data
        _check_items(sequences.item_ids, vocabulary, num_items)
        self.history = history
        self.vocabulary = vocabulary  # the model's ids it was checked against
        self.items = sequences.items  # (n,) internal ids, users back to back
        self.starts = split.starts  # (U,)
        self.ends = split.history_end(HISTORIES[history])  # (U,)
        self.users = IdMap(sequences.user_ids)  # original id -> row
        self._sources = (weakref.ref(sequences), weakref.ref(split))

    def of(self, datamodule) -> bool:
        """Built from this data module's current sequences and split (a data module rebuilt gives new ones)."""
        sequences, split = self._sources
        return sequences() is getattr(datamodule, "sequences", None) and split() is getattr(datamodule, "split_data",
                                                                                              None)

    def rows(self, users: Sequence, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The CSR range of every user's history; an empty range ``(0, 0)`` for an unknown user.

        Integer ids against text ids (or the other way round) compare as text, as ``--data.predict_users``
        does; unknown ids are skipped with one warning naming the first five (``strict``: ``KeyError``).

        Returns:
            ``(B,)`` starts and ``(B,)`` ends into :attr:`items`.
        """
        rows, found = self.users.lookup(users)  # (B,), (B,)
        if not found.all():
            unknown = [users[int(index)] for index in np.flatnonzero(~found)[:5]]  # as given (a mixed list: as text)
            unknown = [value.item() if isinstance(value, np.generic) else value for value in unknown]
            count, total = int((~found).sum()), len(self.users)
            example = self.users.ids[0].item() if total else None
            if strict:
                kinds = sorted({type(user).__name__ for user in unknown})
                raise KeyError(
                    f"recommend_users(strict=True): {count} user id(s) not in the data module's {total} users "
                    f"(first: {unknown}, of type {', '.join(kinds)}); expected ids of users in the training data, "
                    f"e.g. {example!r} (type {type(example).__name__}). strict=False answers them with the "
                    "most-popular items"
                )
            warnings.warn(
                f"recommend_users: {count} unknown user id(s) not in the data module's {total} users (first: "
                f"{unknown}); answered with the most-popular items (fallback True)",
                stacklevel=3,  # the caller of SASRecModule.recommend_users
            )
        starts = np.where(found, self.starts[rows], 0)  # (B,)
        ends = np.where(found, self.ends[rows], 0)  # (B,)
        return starts, ends


def _check_items(item_ids: np.ndarray, vocabulary: ItemVocabulary | None, num_items: int) -> None:
    """Refuse a data module whose items are not the model's (its internal ids would name other items)."""
    data_items = len(item_ids) - 1
    if data_items != num_items:
        raise ValueError(f"recommend_users: the data module has {data_items} items but the model was trained on "
                         f"{num_items}; expected the data module of the data the model was trained on")
    if vocabulary is not None:
        ours = ItemVocabulary(item_ids).ids[1:]  # the same conversion as the model's ids (int64 or text)
        if ours.dtype != vocabulary.ids.dtype or not np.array_equal(ours, vocabulary.ids[1:]):
            differ = np.flatnonzero(ours.astype(str) != vocabulary.ids[1:].astype(str))
            first = int(differ[0]) + 1 if len(differ) else 1
            raise ValueError(
                f"recommend_users: the data module's item ids are not the model's (internal id {first} is "
                f"{ours[first - 1].item()!r} in the data and {vocabulary.ids[first].item()!r} in the model); "
                "expected the data module of the data the model was trained on (same file and preprocessing options)"
            )
