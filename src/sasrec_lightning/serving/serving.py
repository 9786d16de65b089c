"""Serving a trained model: original item ids, the most-popular fallback, ``recommend`` and ``predict``.

:class:`ServingMixin` is the part of :class:`~sasrec_lightning.module.SASRecModule` that answers
requests rather than trains. It keeps

* ``item_vocabulary`` (:class:`~sasrec_lightning.vocabulary.ItemVocabulary`): the original item
  ids, saved in the checkpoint as plain values (``weights_only``-safe) and taken from the data
  module's public ``item_ids()`` at setup;
* ``item_popularity``: a buffer (saved with the weights) of training interactions per item, the
  data module's ``item_popularity()``, for the answer to a sequence with no known item;
* the user histories of a data module for ``recommend_users`` (:class:`~sasrec_lightning.serving.histories.
  UserHistories`) and the most-popular ranking (:class:`~sasrec_lightning.recommend.MostPopular`), built on
  first use and again when the data module or the counts change;
* the top-K of ``predict_step``, set by the prediction writer through :meth:`set_prediction`;
* the count of predicted users whose top-K is not finite: ``predict`` checks the weights when it
  starts and these counts when its last batch is done, before the writer writes (``divergence.py``).

The computations live in :mod:`~sasrec_lightning.recommend`; this class only holds their state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..data.vocabulary import ItemVocabulary
from ..errors import ModelError
from ..model.divergence import nonfinite_parameters, untrusted_rows, weights_error
from .histories import UserHistories
from .recommend import (
    MostPopular,
    Recommendations,
    check_k,
    predict_top_k,
    recommend,
    recommend_histories,
    servable_items,
    served_items,
)

__all__ = ["ServingMixin"]


class ServingMixin:
    """Item ids, item popularity, ``recommend`` and ``predict_step`` of a LightningModule with an encoder ``model``."""

    def _init_serving(self, num_items: int) -> None:
        self.register_buffer("item_popularity", torch.zeros(num_items + 1, dtype=torch.int64))
        self.item_vocabulary: ItemVocabulary | None = None
        self.predict_k, self.predict_exclude_seen = 10, True  # see set_prediction
        self._untrusted_users: Tensor | None = None  # predicted users with a non-finite top-K, on the device
        self._predicted_users = 0
        self._most_popular = MostPopular()  # recommend's fallback ranking, sorted once per item_popularity
        self._user_histories: dict[str, UserHistories] = {}  # recommend_users's, per history, of one data module

    def set_prediction(self, k: int = 10, exclude_seen: bool = True) -> None:
        """What ``predict_step`` returns: the top ``k`` items per user, the user's own items excluded or not.

        The prediction writer calls it with its config (``--prediction.k``), since LightningCLI
        rebuilds the model's hyper-parameters from ``--ckpt_path``.
        """
        self.predict_k, self.predict_exclude_seen = k, exclude_seen

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Top ``predict_k`` items per user in internal ids (``-inf`` score = no item left); see ``set_prediction``.

        Users whose top-K is not finite are counted on the device (no host sync); ``predict`` stops at its
        end when there are any (:meth:`on_predict_epoch_end`).
        """
        prediction = predict_top_k(self.model, batch, self.predict_k, self.predict_exclude_seen,
                                   self.evaluation.chunk_size)
        scores = prediction["scores"]  # (B, k)
        excluded = batch["seen_rows"].bincount(minlength=scores.size(0)) if self.predict_exclude_seen else None  # (B,)
        untrusted = untrusted_rows(scores, servable_items(self.model), excluded).sum()
        self._untrusted_users = untrusted if self._untrusted_users is None else self._untrusted_users + untrusted
        self._predicted_users += scores.size(0)
        return prediction

    def on_predict_start(self) -> None:
        """Refuse to predict with non-finite weights (a diverged checkpoint), once, before any user is scored."""
        self._untrusted_users, self._predicted_users = None, 0
        names = nonfinite_parameters(self, self.trainer.strategy)
        if names:
            raise weights_error(self._predict_run(), names, self,
                                "every score would be NaN, so nothing was written (an older output file stays)",
                                "Predict from a checkpoint saved before the training diverged, or train again "
                                "with a lower learning rate")

    def on_predict_epoch_end(self) -> None:
        """Stop before the prediction writer writes (its ``on_predict_end`` comes next) when a top-K was not finite."""
        counts = torch.tensor([0, self._predicted_users], device=self.device)  # (2,) untrusted, predicted
        if self._untrusted_users is not None:
            counts[0] = self._untrusted_users
        untrusted, predicted = self.trainer.strategy.reduce(counts, reduce_op="sum").tolist()  # over processes
        if untrusted:
            raise ModelError(
                f"{self._predict_run()}: {untrusted} of {predicted} users got a NaN or "
                "infinite score among their top items although the weights are finite, so the weights are large "
                "enough to overflow float32 scores (the model diverged); nothing was written (an older output file "
                "stays). Predict from an earlier checkpoint, or train again with a lower learning rate"
            )

    def _predict_run(self) -> str:
        """``predict --ckpt_path '<path>'`` (or ``predict``), to begin a message."""
        path = self.trainer.ckpt_path
        return "predict" if path is None else f"predict --ckpt_path {str(path)!r}"

    def set_item_vocabulary(self, item_ids, popularity=None) -> None:
        """Attach the original item ids (internal id -> original, index 0 unused) and item counts.

        Done at setup from a data module with ``item_ids()`` and ``item_popularity()``
        (``SASRecDataModule``); call it by hand for a model trained elsewhere.
        """
        self.item_vocabulary, counts = served_items(item_ids, popularity, self.model.num_items)
        if counts is not None:
            self.item_popularity.copy_(counts)

    def attach_item_ids(self, datamodule) -> None:
        """Take the original item ids and item counts from ``datamodule`` (its public ``item_ids()``).

        Called by the module's ``setup``; a data module without ``item_ids()`` leaves the model in
        internal ids (``recommend`` and ``predict`` then answer in them).
        """
        if self.item_vocabulary is None and hasattr(datamodule, "item_ids"):
            item_ids = datamodule.item_ids()
            if len(item_ids) == self.model.num_items + 1:
                popularity = getattr(datamodule, "item_popularity", None)  # the data module's one definition
                self.set_item_vocabulary(item_ids, None if popularity is None else popularity())

    def _datamodule(self):
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    def _save_item_ids(self, checkpoint: dict) -> None:
        if self.item_vocabulary is not None:
            checkpoint["item_ids"] = self.item_vocabulary.to_list()  # plain ints/strings: weights_only-safe

    def _load_item_ids(self, checkpoint: dict) -> None:
        """Take the checkpoint's item ids (checked against the data by the module, before its weights load)."""
        if checkpoint.get("item_ids") is not None:
            self.item_vocabulary = ItemVocabulary(checkpoint["item_ids"])
        state = checkpoint.get("state_dict")
        if state is not None and "item_popularity" not in state:  # written before the buffer existed
            state["item_popularity"] = torch.zeros_like(self.item_popularity)

    def recommend(self, sequences: Sequence[Sequence], k: int = 10, exclude_seen: bool = True,
                  strict: bool = False) -> Recommendations:
        """Top-``k`` items after each item sequence, without a Trainer (a notebook, a service).

        Args:
            sequences: item-id sequences, oldest first, in the dataset's original ids when the
                model knows them (trained from a data module or a checkpoint of one), otherwise
                internal ids ``1..num_items``. Unknown ids are skipped with a warning (``strict``:
                raise); a sequence with no known item gets the most-popular items.
            k: items per sequence.
            exclude_seen: never recommend an item already in the sequence.
            strict: raise ``KeyError`` on an unknown id instead of skipping it (services that must
                not answer a malformed request with most-popular items should pass ``True``).

        Returns:
            ``Recommendations(items, scores, fallback)``: per sequence the ids (best first), their
            scores, and whether it was answered with the most-popular items (no known item).
        """
        return recommend(self.model, sequences, k, exclude_seen, self.item_vocabulary, self.item_popularity,
                         strict=strict, chunk_size=self.evaluation.chunk_size, most_popular=self._most_popular)

    def recommend_users(self, users: Sequence, datamodule=None, k: int = 10, exclude_seen: bool = True,
                        strict: bool = False, history: str = "full") -> Recommendations:
        """Top-``k`` items for users of the training data, by their original ids: ``predict`` from Python.

        Each user's history is taken from ``datamodule`` (the data the model was trained on), so no
        sequence has to be rebuilt from the raw file. With ``history="full"`` the answer is the
        ``predict`` output's row for that user (the same batches, :func:`~sasrec_lightning.batches.
        history_batch`, and the same scoring, :func:`~sasrec_lightning.recommend.predict_top_k`).

        Args:
            users: original user ids (integers or strings, as in the data; an integer id and its text
                match, as in ``--data.predict_users``).
            datamodule: a ``SASRecDataModule`` of the training data; ``None``: the trainer's.
            k: items per user.
            exclude_seen: never recommend an item of the user's history (the whole history, as
                ``predict --prediction.exclude_seen``).
            strict: raise ``KeyError`` on a user id not in the data instead of answering it with the
                most-popular items (and one warning naming the first five unknown ids).
            history: ``full``: every interaction of the user (what ``predict`` uses); ``train``: the
                training part only (the held-out validation and test items left out).

        Returns:
            ``Recommendations(items, scores, fallback)``, one entry per user id, in input order:
            original item ids best first, their scores, and ``fallback`` ``True`` for an unknown user
            (answered with the most-popular items, scores = interaction counts).

        Raises:
            KeyError: ``strict`` and a user id is not in the data.
            ValueError: no data module, another dataset's, or an unknown ``history``; a diverged model
                (``ModelError``).
        """
        check_k(k)
        if isinstance(users, (str, bytes)) or not hasattr(users, "__len__"):
            raise TypeError(f"users must be a list of user ids, e.g. [17, 42]; got {users!r:.80}. For one user pass "
                            "[user]")
        histories = self._histories(datamodule, history)
        starts, ends = histories.rows(users, strict)  # (B,), (B,)
        return recommend_histories(self.model, histories.items, starts, ends, k, exclude_seen, self.item_vocabulary,
                                   self.item_popularity, chunk_size=self.evaluation.chunk_size,
                                   most_popular=self._most_popular)

    def _histories(self, datamodule, history: str) -> UserHistories:
        """The user histories of ``datamodule`` (or the trainer's), built on first use and kept while it is the same."""
        datamodule = datamodule if datamodule is not None else self._datamodule()
        if datamodule is None:
            raise ValueError("recommend_users: no data module; pass datamodule=SASRecDataModule(...) of the data the "
                             "model was trained on (the same path and preprocessing options), or call it on a module "
                             "attached to a trainer with one")
        kept = self._user_histories.get(history)
        if kept is None or not kept.of(datamodule) or kept.vocabulary is not self.item_vocabulary:
            kept = self._user_histories[history] = UserHistories(datamodule, history, self.item_vocabulary,
                                                                 self.model.num_items)
        return kept
