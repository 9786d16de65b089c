"""Top-K recommendations for raw item-id sequences, without a Trainer.

This is what :meth:`SASRecModule.recommend` runs: map original ids to internal ones (unknown ids
are skipped with one warning, or raise with ``strict=True``), left-pad the last ``max_len`` items of
every sequence, encode, score every item, drop the padding id and (optionally) the items already in
the sequence, and take the top K (in item chunks, :func:`~sasrec_lightning.ranking.full_top_k`). A
sequence left empty gets the most-popular items instead (the encoder has nothing to attend to).
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..data.batches import history_batch
from ..data.vocabulary import ItemVocabulary
from ..errors import ModelError
from ..model.divergence import described_parameters, nonfinite_parameters, untrusted_rows
from ..model.encoder import SASRec
from ..model.ranking import full_top_k

__all__ = ["Recommendations", "recommend", "recommend_histories", "predict_top_k", "served_items", "MostPopular",
           "check_k", "servable_items", "tensor_state"]


class Recommendations(NamedTuple):
    """Per input sequence, the recommended item ids (best first) and their scores.

    ``items[b]`` and ``scores[b]`` are plain lists of equal length ``<= k`` (shorter only when
    fewer than ``k`` items are left after excluding the sequence's own items). For a sequence
    with no known item, the items are the most popular ones and the scores their training
    interaction counts (the data module's ``item_popularity()``, saved with the weights);
    ``fallback[b]`` is ``True`` for exactly those sequences.
    """

    items: list[list]
    scores: list[list[float]]
    fallback: list[bool]


def predict_top_k(encoder: SASRec, batch: dict[str, Tensor], k: int, exclude_seen: bool,
                  chunk_size: int | str = "auto") -> dict[str, Tensor]:
    """``predict_step`` of a prediction batch: the top ``k`` internal ids per user (``-inf`` score = no item left).

    Args:
        encoder: the trained encoder.
        batch: ``input_ids (B, L)``, ``users (B,)`` and the seen pairs ``seen_rows``/``seen_items (S,)``.
        k: items per user.
        exclude_seen: mask the user's own items.
        chunk_size: items scored at once, or ``"auto"`` (:func:`~sasrec_lightning.ranking.chunk_items`).

    Returns:
        ``{"users": (B,), "items": (B, k), "scores": (B, k)}``.
    """
    if batch["input_ids"].size(0) == 0:  # a DDP rank without users (UserBatchSampler)
        empty = torch.zeros(0, k, device=batch["users"].device)
        return {"users": batch["users"], "items": empty.long(), "scores": empty}
    hidden = encoder.last_hidden(batch["input_ids"]).float()  # (B, d)
    seen = (batch["seen_rows"], batch["seen_items"]) if exclude_seen else (None, None)
    with torch.autocast(device_type=hidden.device.type, enabled=False):  # fp32 scores under mixed precision
        top_scores, top_items = full_top_k(hidden, encoder.output_weight.float(), k, *seen, chunk=chunk_size,
                                           blocked=encoder.scoring_items.blocked_items())  # (B, k), (B, k)
    return {"users": batch["users"], "items": top_items, "scores": top_scores}


def servable_items(encoder: SASRec) -> int:
    """How many items ``predict`` and ``recommend`` may answer with: all but the blocked ones (``blocked_items``)."""
    blocked = encoder.scoring_items.blocked_items()
    return encoder.num_items - (0 if blocked is None else int(blocked.sum()))


def served_items(item_ids: Sequence, popularity: Sequence | Tensor | None,
                 num_items: int) -> tuple[ItemVocabulary, Tensor | None]:
    """The id map and ``(I + 1,)`` int64 item counts a model of ``num_items`` items answers with.

    Raises:
        ValueError: the ids or counts are not of ``num_items`` items (index 0 = padding).
    """
    vocabulary = ItemVocabulary(item_ids)
    if vocabulary.num_items != num_items:
        raise ValueError(f"item vocabulary has {vocabulary.num_items} items but the model was built with "
                         f"num_items={num_items}; expected the id map of the training data")
    if popularity is None:
        return vocabulary, None
    counts = torch.as_tensor(popularity, dtype=torch.int64).reshape(-1)  # (I + 1,)
    if counts.numel() != num_items + 1:
        raise ValueError(f"popularity has {counts.numel()} entries; expected num_items + 1 = "
                         f"{num_items + 1} (index 0 = padding)")
    return vocabulary, counts


def _internal_sequences(sequences: Sequence[Sequence], vocabulary: ItemVocabulary | None,
                        num_items: int, strict: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Flat internal ids and CSR offsets of the known items of every sequence.

    Raises:
        KeyError: ``strict`` and an id is not in the model's vocabulary.
    """
    lengths = np.array([len(sequence) for sequence in sequences], dtype=np.int64)  # (B,)
    flat = [item for sequence in sequences for item in sequence]
    if vocabulary is not None:
        internal = vocabulary.to_internal(flat)  # (n,)
    else:
        internal = np.asarray(flat, dtype=np.int64).reshape(-1)
        internal = np.where((internal >= 1) & (internal <= num_items), internal, 0)
    known = internal != 0  # (n,)
    if not known.all():
        unknown = [flat[i] for i in np.flatnonzero(~known)[:5]]
        if strict:
            kinds = sorted({type(item).__name__ for item in unknown})
            example = vocabulary.item_ids[1] if vocabulary is not None and num_items else 1
            example = example.item() if isinstance(example, np.generic) else example  # 'i0', not np.str_('i0')
            raise KeyError(
                f"recommend(strict=True): {int((~known).sum())} item id(s) not in the model's vocabulary of "
                f"{num_items} items (first: {unknown}, of type {', '.join(kinds)}); expected ids seen in training, "
                f"e.g. {example!r} (type {type(example).__name__}). strict=False skips them"
            )
        warnings.warn(
            f"recommend: skipped {int((~known).sum())} unknown item id(s) not in the model's vocabulary "
            f"of {num_items} items (first: {unknown}); expected ids seen in training",
            stacklevel=4,  # the caller of SASRecModule.recommend
        )
    row_of = np.repeat(np.arange(len(sequences)), lengths)  # (n,)
    kept_lengths = np.bincount(row_of[known], minlength=len(sequences)).astype(np.int64)  # (B,)
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    np.cumsum(kept_lengths, out=offsets[1:])
    return internal[known], offsets


def check_k(k: int) -> None:
    """Refuse ``k < 1``."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")


def _check_arguments(sequences: Sequence[Sequence], k: int) -> None:
    """Refuse ``k < 1`` and a flat sequence or string where a list of sequences is expected."""
    check_k(k)
    if isinstance(sequences, (str, bytes)) or any(
        isinstance(sequence, (str, bytes)) or not hasattr(sequence, "__len__") for sequence in sequences[:1]
    ):
        raise TypeError(f"sequences must be a list of item-id sequences, e.g. [[3, 7, 9]]; got {sequences!r:.80}. "
                        "For one user pass [sequence]")


def _most_popular(popularity: Tensor | None, num_items: int, k: int) -> tuple[Tensor, Tensor]:
    """The fallback answer: the ``k`` most popular items (ties: lower id first), ``(k,)`` float64 counts, ``(k,)`` ids.

    ``popularity`` is ``(num_items + 1,)`` (index 0, padding, is never answered) or ``None`` (every item ties).
    """
    counts = popularity if popularity is not None else torch.zeros(num_items + 1)
    counts = counts.detach().to("cpu", torch.float64)[1:]  # (I,) without the padding id
    order = torch.sort(counts, descending=True, stable=True).indices[:k]  # (k,)
    return counts[order], order + 1


def tensor_state(tensor: Tensor) -> tuple[int, int] | None:
    """Whether ``tensor`` still holds what it held: its identity and its count of in-place writes.

    ``Tensor._version`` is PyTorch's counter of in-place writes (``copy_``, ``load_state_dict``, an
    optimizer step, ``+=``). There is no public equivalent, so the private attribute is read here only
    (``tests/test_recommend_users.py`` checks that it still counts). ``None`` (never equal to a kept
    state) for an inference tensor, which keeps no counter.
    """
    if tensor.is_inference():
        return None
    return id(tensor), tensor._version


class MostPopular:
    """The fallback answer (a sequence with no known item): the items by training interactions, sorted once.

    Sorting the counts is an ``O(I log I)`` pass that depends on no request (in 0.3.0 a ``topk`` per
    call: a third of a ``recommend`` call at a million items), so it is done when the counts are first needed and again
    only when they changed (:func:`tensor_state`: another buffer, or the same one written in place,
    as ``load_state_dict`` and ``set_item_vocabulary`` do). Ties go to the lower item id.
    """

    def __init__(self) -> None:
        self._source: weakref.ref | None = None  # the counts the ranking was built from
        self._state: tuple[int, int] | None = None
        # (I,) float64 counts, best first, and (I,) int64 their internal ids: one attribute, so a call in
        # another thread never sees the counts of one ranking with the ids of another
        self._ranking: tuple[Tensor, Tensor] | None = None

    def top(self, popularity: Tensor | None, num_items: int, k: int) -> tuple[Tensor, Tensor]:
        """The ``min(k, num_items)`` most popular items: their counts ``(k,)`` float64 and ids ``(k,)`` int64.

        Args:
            popularity: ``(num_items + 1,)`` training interactions per item (index 0: padding), or
                ``None`` (no counts: every item ties, so the lowest ids).
            num_items: items of the model.
            k: items wanted.
        """
        if popularity is None:
            popularity = torch.zeros(num_items + 1, dtype=torch.int64)
        if not self._holds(popularity):
            self._ranking = _most_popular(popularity, num_items, num_items)  # (I,), (I,) every item, ranked
            self._source, self._state = weakref.ref(popularity), tensor_state(popularity)
        scores, items = self._ranking
        return scores[:k], items[:k]

    def _holds(self, popularity: Tensor) -> bool:
        """The kept ranking is of these very counts, unchanged since."""
        state = tensor_state(popularity)
        return (self._ranking is not None and self._source is not None and self._source() is popularity
                and state is not None and state == self._state)


@contextmanager
def _eval_mode(encoder: SASRec) -> Iterator[None]:
    """Dropout off for the call: the submodules in training mode are switched to eval and back after.

    Only those are touched, so a model already in eval mode (a service) pays one walk over its
    modules, not two ``train()`` calls that set every module's flag (about a sixth of a call at 10^4
    items and one history).
    """
    training = [module for module in encoder.modules() if module.training]
    for module in training:
        module.training = False
    try:
        yield
    finally:
        for module in training:
            module.training = True


def _as_lists(ids: np.ndarray, scores: Tensor) -> tuple[list[list], list[list[float]]]:
    """Per row, the ids and scores as lists, without the ``-inf`` slots (no item left after exclusion)."""
    out_items, out_scores = ids.tolist(), scores.tolist()
    for row in np.flatnonzero(~torch.isfinite(scores).all(dim=-1).numpy()):
        kept = torch.isfinite(scores[row]).numpy()  # (k,)
        out_items[row] = ids[row][kept].tolist()
        out_scores[row] = scores[row][kept].tolist()
    return out_items, out_scores


def recommend(
    encoder: SASRec,
    sequences: Sequence[Sequence],
    k: int = 10,
    exclude_seen: bool = True,
    vocabulary: ItemVocabulary | None = None,
    popularity: Tensor | None = None,
    batch_size: int = 1024,
    strict: bool = False,
    chunk_size: int | str = "auto",
    most_popular: MostPopular | None = None,
) -> Recommendations:
    """Recommend the top ``k`` items after each item sequence (oldest item first).

    Args:
        encoder: a trained encoder (its dropout is off for the call and restored after).
        sequences: item-id sequences, original ids when ``vocabulary`` is given, otherwise internal
            ids ``1..num_items``.
        k: items per sequence.
        exclude_seen: never recommend an item already in the sequence.
        vocabulary: original <-> internal id map; ``None`` answers in internal ids.
        popularity: ``(num_items + 1,)`` interaction counts for the empty-sequence fallback.
        batch_size: sequences encoded at once.
        strict: raise ``KeyError`` on an id not in the vocabulary instead of skipping it (with a
            warning). Either way ``Recommendations.fallback`` marks the sequences answered with the
            most-popular items.
        chunk_size: items scored at once, or ``"auto"`` (:func:`~sasrec_lightning.ranking.chunk_items`).
        most_popular: the fallback's ranking kept between calls (the module's); ``None`` sorts the
            counts for this call.

    Returns:
        :class:`Recommendations`, one entry per input sequence, in input order.

    Raises:
        KeyError: ``strict`` and a sequence holds an unknown id.
        ModelError: a sequence answered by the model got a NaN or infinite score among its top ``k`` (a
            diverged model; a ``ValueError``).
    """
    _check_arguments(sequences, k)
    items, offsets = _internal_sequences(sequences, vocabulary, encoder.num_items, strict)
    out = recommend_histories(encoder, items, offsets[:-1], offsets[1:], k, exclude_seen, vocabulary, popularity,
                              batch_size, chunk_size, most_popular)
    empty = sum(out.fallback)
    if empty:
        warnings.warn(
            f"recommend: {empty} sequence(s) had no known item; answered with the "
            "most-popular items (scores are interaction counts)",
            stacklevel=3,
        )
    return out


def recommend_histories(
    encoder: SASRec,
    items: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    k: int,
    exclude_seen: bool,
    vocabulary: ItemVocabulary | None,
    popularity: Tensor | None,
    batch_size: int = 1024,
    chunk_size: int | str = "auto",
    most_popular: MostPopular | None = None,
) -> Recommendations:
    """The top ``k`` items after each history ``items[starts[b]:ends[b]]`` (internal ids, CSR), as ``predict`` does.

    Each batch is built by :func:`~sasrec_lightning.batches.history_batch` and scored by
    :func:`predict_top_k`, the two steps of ``predict``; an empty history gets the most-popular items.

    Raises:
        ModelError: a history answered by the model got a NaN or infinite score among its top ``k``.
    """
    most_popular = most_popular if most_popular is not None else MostPopular()
    empty = ends - starts == 0  # (B,) nothing known to attend to: the most-popular items
    popular_scores, popular_items = most_popular.top(popularity, encoder.num_items, k)  # (k,), (k,)
    out_items: list[list] = []
    out_scores: list[list[float]] = []
    untrusted = 0  # histories answered by the model whose top-k is not finite
    with _eval_mode(encoder), torch.no_grad():
        device = encoder.output_weight.device  # in eval mode: the item table every batch scores with
        served = servable_items(encoder)
        for begin in range(0, len(starts), batch_size):
            rows = slice(begin, begin + batch_size)
            batch = history_batch(items, starts[rows], ends[rows], encoder.max_len,
                                  np.arange(begin, begin + len(starts[rows])))
            batch = {key: value.to(device) for key, value in batch.items()}
            prediction = predict_top_k(encoder, batch, k, exclude_seen, chunk_size)
            top_scores, top_items = prediction["scores"].cpu(), prediction["items"].cpu()  # (B, k), (B, k)
            fallback = torch.from_numpy(empty[rows])  # (B,)
            excluded = torch.from_numpy(ends[rows] - starts[rows]) if exclude_seen else None  # (B,)
            untrusted += int((untrusted_rows(top_scores, served, excluded) & ~fallback).sum())
            top_items[fallback] = popular_items
            top_scores[fallback] = popular_scores.to(top_scores.dtype)
            ids = top_items.numpy() if vocabulary is None else vocabulary.to_original(top_items.numpy())
            batch_items, batch_scores = _as_lists(ids, top_scores)
            out_items += batch_items
            out_scores += batch_scores
    if untrusted:
        raise _untrusted_error(encoder, untrusted, int((~empty).sum()))
    return Recommendations(out_items, out_scores, empty.tolist())


def _untrusted_error(encoder: SASRec, untrusted: int, answered: int) -> ModelError:
    """Why ``untrusted`` of the ``answered`` sequences got a non-finite top-k: the weights, named, or an overflow."""
    names = nonfinite_parameters(encoder)  # only now: the per-call check is the top-k's
    cause = (f"the model's weights are not finite (NaN or infinite values in {described_parameters(names, encoder)})"
             if names else "the weights are finite but large enough to overflow float32 scores")
    return ModelError(f"recommend: {untrusted} of {answered} sequences got a NaN or infinite score among their top "
                      f"items: {cause}; the model diverged in training. Load a checkpoint saved before it diverged, "
                      "or train again with a lower learning rate")
