"""The batch contract: what ``SASRecModule`` reads from a batch, for a data module that is not ours.

Any ``LightningDataModule`` (or plain dataloaders) can train and evaluate the model if its batches are
dicts with these keys (``docs/data-contract.md`` walks a minimal one). Item ids are ``int64`` in
``0..num_items``, ``0`` is padding; sequences are **left**-padded (the last column is the most recent
item); ``B`` is the batch size, ``L`` the padded length (at most ``max_len``; it may differ per batch).

The module checks the first batch of each stage with :func:`check_batch` and stops with one
:class:`~sasrec_lightning.errors.DataError` naming the missing or malformed key.

What else a data module may offer, each optional (without it the module warns once and goes on):

* ``training_statistics() -> TrainingStatistics``: item counts and positions per batch, for
  ``optimization.loss_normalization: epoch`` (else each batch's mean) and popularity sampling;
* ``item_ids() -> list`` (original ids by internal id, ``[0]`` for padding): ``recommend`` and
  ``predict`` answer in original ids (else in internal ids);
* ``eval_batches(stage) -> EvalBatches``: the CLI prints the most-popular baseline beside the test
  metrics (else it prints the model's metrics alone).

Evaluation batches may also mark which targets are cold (``target_cold``, see :class:`EvaluationBatch`):
the module then logs ``val/warm/...`` and ``val/cold/...`` beside the overall metrics.
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch
from torch import Tensor

from ..errors import DataError

__all__ = ["TrainingBatch", "EvaluationBatch", "PredictionBatch", "check_batch"]


class TrainingBatch(TypedDict, total=False):
    """A training batch (``training_step``).

    Keys:
        input_ids: ``(B, L)`` int64, required: each sequence's items, left-padded with 0.
        targets: ``(B, L)`` int64, required: the next item at each position (``input_ids`` shifted
            by one); 0 where there is no target (padding). The loss is taken over the non-zero ones.
        negatives: ``(B, L, k)`` int64, required when the loss ``needs_negatives`` (``bce``, ``bpr``,
            ``gbce`` without shared negatives): ``k`` sampled items per position, never the target.
            Optional otherwise (``sampled_softmax`` and ``ce`` draw or score their own).
        users: ``(B,)`` int64, optional: the rows' users (not used by the loss).
        sample_seed: int, optional: seeds what the loss samples itself, so a resumed run or another
            process draws the same; without it the loss uses the global torch generator.
    """

    input_ids: Tensor
    targets: Tensor
    negatives: Tensor
    users: Tensor
    sample_seed: int


class EvaluationBatch(TypedDict, total=False):
    """A validation or test batch (``validation_step``, ``test_step``): one held-out item per user.

    Keys:
        input_ids: ``(B, L)`` int64, required: the history before the held-out item, left-padded.
        targets: ``(B,)`` int64, required: the held-out item.
        candidates: ``(B, 1 + n)`` int64, required under ``evaluation.protocol: sampled``: column 0
            is the target, the rest ``n`` sampled negatives (the paper: 100).
        seen_rows, seen_items: ``(S,)`` int64 each, required under ``protocol: full`` with
            ``exclude_seen``: the pairs (batch row, item) of each user's history, which full ranking
            leaves out (the target itself is never left out).
        users: ``(B,)`` int64, optional.
        target_cold: ``(B,)`` bool, optional: the target item has no training interaction (a cold-start
            item). ``SASRecDataModule`` sends it when the data has item features or a cold-item split
            (``--data.holdout.cold_items``); with it the module logs ``val/warm/...`` and ``val/cold/...``
            (hr@K, ndcg@K, mrr and the users of each group) beside the overall metrics.
    """

    input_ids: Tensor
    targets: Tensor
    candidates: Tensor
    seen_rows: Tensor
    seen_items: Tensor
    users: Tensor
    target_cold: Tensor


class PredictionBatch(TypedDict, total=False):
    """A predict batch (``predict_step``): top-K items for each user's next step.

    Keys:
        input_ids: ``(B, L)`` int64, required: each user's history, left-padded.
        users: ``(B,)`` int64, required: written beside each user's recommendations.
        seen_rows, seen_items: ``(S,)`` int64 each, required with ``exclude_seen``: the history to leave out.
    """

    input_ids: Tensor
    users: Tensor
    seen_rows: Tensor
    seen_items: Tensor


#: key -> (number of dimensions, shape given in messages)
_SHAPES = {
    "input_ids": (2, "(B, L)"), "negatives": (3, "(B, L, k)"), "users": (1, "(B,)"), "candidates": (2, "(B, 1 + n)"),
    "seen_rows": (1, "(S,)"), "seen_items": (1, "(S,)"),
}
_DOCS = "see sasrec_lightning.data.contract and docs/data-contract.md"


def _required(stage: str, needs_negatives: bool, protocol: str, exclude_seen: bool) -> dict[str, str]:
    """Keys the stage reads, each with why."""
    if stage == "train":
        keys = {"input_ids": "the sequences", "targets": "the next items"}
        if needs_negatives:
            keys["negatives"] = "the loss draws its negatives from the batch (needs_negatives)"
        return keys
    if stage == "predict":
        keys = {"input_ids": "the histories", "users": "the users the recommendations are for"}
    else:
        keys = {"input_ids": "the histories", "targets": "the held-out items"}
        if protocol == "sampled":
            keys["candidates"] = "evaluation.protocol sampled ranks the target among them"
    if exclude_seen and (stage == "predict" or protocol == "full"):
        keys["seen_rows"] = keys["seen_items"] = "exclude_seen leaves each user's history out"
    return keys


def check_batch(batch: Any, stage: str, num_items: int, needs_negatives: bool = False, protocol: str = "sampled",
                exclude_seen: bool = True, source: str = "the data module") -> None:
    """Raise one :class:`DataError` if ``batch`` breaks the contract for ``stage``.

    Args:
        batch: the batch as the module receives it.
        stage: ``train``, ``validate``, ``test`` or ``predict``.
        num_items: the model's catalogue size (ids must be in ``0..num_items``).
        needs_negatives: the loss's ``needs_negatives`` (training).
        protocol: ``evaluation.protocol`` (validation and test).
        exclude_seen: whether the history is left out (full ranking, predict).
        source: what produced the batch, for the message.

    Raises:
        DataError: the first key that is missing or malformed, with the shape, dtype and range expected.
    """
    where = f"the first {stage} batch from {source}"
    if not isinstance(batch, dict):
        raise DataError(f"{where} is a {type(batch).__name__}; expected a dict of tensors with the keys "
                        f"{sorted(_required(stage, needs_negatives, protocol, exclude_seen))} ({_DOCS})")
    for key, why in _required(stage, needs_negatives, protocol, exclude_seen).items():
        if key not in batch:
            raise DataError(f"{where} has no key {key!r} ({why}); it has {sorted(batch)} ({_DOCS})")
    if "target_cold" in batch and stage in ("validate", "test"):
        _check_flags(where, "target_cold", batch["target_cold"], batch)
    for key, value in batch.items():
        if key == "sample_seed" or (key not in _SHAPES and key != "targets"):
            continue  # extra keys are the data module's own
        _check_tensor(where, key, value, stage, batch, num_items)


def _check_flags(where: str, key: str, value: Any, batch: dict) -> None:
    """A ``(B,)`` bool key (``target_cold``): one flag per row of ``input_ids``."""
    inputs = batch["input_ids"].shape if isinstance(batch.get("input_ids"), Tensor) else None
    if not isinstance(value, Tensor) or value.dtype != torch.bool or value.dim() != 1 or (
            inputs is not None and value.size(0) != inputs[0]):
        found = f"a {type(value).__name__}" if not isinstance(value, Tensor) else \
            f"shape {tuple(value.shape)} and dtype {value.dtype}"
        given = "" if inputs is None else f" ('input_ids' {tuple(inputs)})"
        raise DataError(f"{where}: {key!r} has {found}; expected a (B,) bool tensor{given}, True where the target "
                        f"item has no training interaction ({_DOCS})")


def _check_tensor(where: str, key: str, value: Any, stage: str, batch: dict, num_items: int) -> None:
    dims, shape = _SHAPES.get(key, (2, "(B, L)") if stage == "train" else (1, "(B,)"))  # targets by stage
    expected = f"expected a {shape} int64 tensor"
    if not isinstance(value, Tensor):
        raise DataError(f"{where}: {key!r} is a {type(value).__name__}; {expected} ({_DOCS})")
    if value.dtype not in (torch.int64, torch.int32):
        raise DataError(f"{where}: {key!r} has dtype {value.dtype}; {expected} of item ids ({_DOCS})")
    inputs = batch["input_ids"].shape if isinstance(batch.get("input_ids"), Tensor) else None
    rows_differ = key not in ("seen_rows", "seen_items") and inputs is not None and value.size(0) != inputs[0]
    length_differs = stage == "train" and key in ("targets", "negatives") and inputs is not None and (
        value.dim() < 2 or value.size(1) != inputs[1])
    if value.dim() != dims or rows_differ or length_differs:
        given = "" if inputs is None or key == "input_ids" else f" and 'input_ids' {tuple(inputs)}"
        raise DataError(f"{where}: {key!r} has shape {tuple(value.shape)}{given}; {expected} ({_DOCS})")
    if key in ("seen_rows", "users") or value.numel() == 0:
        return
    low, high = int(value.min()), int(value.max())
    if low < 0 or high > num_items:
        raise DataError(f"{where}: {key!r} holds item ids from {low} to {high}; expected ids in 0..{num_items} "
                        f"(0 = padding; the model's num_items is {num_items}) ({_DOCS})")
