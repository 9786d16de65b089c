"""Training losses on the hidden states of non-padded positions.

Every loss is a :class:`Loss`: it takes the hidden states already gathered at real positions, so
no work is spent on padding, computes in fp32 even under mixed precision, and has one call
signature, ``loss(items, hidden (N, d), targets (N,), negatives (N, k), generator=None, rows=None)
-> scalar``: ``items`` is the scored item representation (:class:`~.items.ItemRepresentation`:
``items(ids)`` are vectors, ``items.table()`` all of them, ``items.num_items`` the catalogue), the
generator seeds negatives a loss samples itself and ``rows`` is the sequence of each position, for
negatives shared per sequence. ``--model.loss`` takes a shorthand of :data:`LOSSES` or any
``Loss`` subclass by class path (``{class_path: my_losses.SmoothBCE, init_args: {...}}``), whose
``__init__`` arguments are its options:

* ``bce`` (:class:`BCELoss`) — the paper's binary cross-entropy, ``k`` negatives per position
  (``data.loader.num_negatives``);
* ``gbce`` (:class:`GBCELoss`) — gSASRec's generalized BCE (Petrov & Macdonald, RecSys 2023) with
  calibration ``t``, on the data module's negatives or on ``M`` uniform negatives shared by the
  batch or by each sequence (``shared_negatives``);
* ``bpr`` (:class:`BPRLoss`) — Bayesian personalized ranking (Rendle et al., UAI 2009);
* ``sampled_softmax`` (:class:`SampledSoftmaxLoss`) — softmax over the positive and ``M``
  negatives shared by the batch or by each sequence (uniform, popularity-proportional or in-batch
  mixed with uniform) with logQ correction;
* ``ce`` (:class:`FullCrossEntropyLoss`) — exact softmax over the whole catalogue, item-chunked
  (:mod:`.chunked_ce`).

The losses over shared negatives compute their logits in a submodule (:class:`SampledSoftmax`,
:class:`SharedGBCE`, :class:`ChunkedSoftmax`): written out here in plain PyTorch, and swapped by
the speed parts for fused ones with reused blocks (``fast/speed.py``, ``speed.fused_losses``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.core.mixins import HyperparametersMixin
from torch import Tensor, nn

from ..errors import OptionError
from ..validation import at_least, in_range, one_of
from .chunked_ce import BlockSource, chunked_cross_entropy
from .items import ItemRepresentation

if TYPE_CHECKING:
    from ..data.batches import TrainingStatistics

__all__ = [
    "Loss",
    "LOSSES",
    "resolve_loss",
    "loss_spec",
    "bce_loss",
    "gbce_loss",
    "gbce_beta",
    "bpr_loss",
    "sampled_softmax_loss",
    "gbce_shared_loss",
    "at_least_fp32",
    "BCELoss",
    "GBCELoss",
    "BPRLoss",
    "SampledSoftmaxLoss",
    "FullCrossEntropyLoss",
    "SampledSoftmax",
    "SharedGBCE",
    "ChunkedSoftmax",
]

Sampling = Literal["uniform", "popularity", "in_batch"]
Sharing = Literal["batch", "sequence"]


class Loss(HyperparametersMixin, nn.Module):
    """Base class of the training losses: the call signature plus what a loss declares.

    A loss's options are its ``__init__`` arguments (LightningCLI builds them from the config);
    calling ``self.save_hyperparameters()`` there lets a checkpoint rebuild it. It may set:

    * ``needs_negatives``: the training batches carry ``data.loader.num_negatives`` sampled negatives per
      position; when ``False`` the data module draws none and ``negatives`` is ``(N, 0)``;
    * ``reads_whole_table``: it reads every item's vector each step (``items.table()``), which a
      sharded item table cannot serve;
    * :meth:`setup`: take what the loss needs from the training data before the first step;
    * :meth:`peak_block`: the size of the largest block a step holds, when it is large.
    """

    needs_negatives: bool = False
    reads_whole_table: ClassVar[bool] = False

    def setup(self, statistics: TrainingStatistics | None) -> None:
        """Called before the first training step with the data module's ``training_statistics()``.

        Args:
            statistics: item counts and positions per batch, or ``None`` when the training data
                does not come from a data module that provides them.
        """

    def peak_block(self, positions: int, sequences: int, num_items: int, hidden_size: int) -> int:
        """Float values of the largest block one step holds (for the memory estimate); small losses: 0."""
        return 0

    def forward(self, items: ItemRepresentation, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        """The mean loss over positions.

        Args:
            items: the scored items (``items(ids)``, ``items.table()``, ``items.num_items``).
            hidden: ``(N, d)`` hidden states at real positions, row-major.
            targets: ``(N,)`` next items.
            negatives: ``(N, k)`` sampled negatives (``k = 0`` unless ``needs_negatives``).
            generator: seeds whatever the loss samples itself (one per training batch).
            rows: ``(N,)`` batch row (sequence) of each position.

        Returns:
            Scalar loss.
        """
        raise NotImplementedError


def at_least_fp32(tensor: Tensor) -> Tensor:
    """``tensor`` in fp32, or as it is when already fp64 (the losses compute in fp32 under mixed precision)."""
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _scores(items: ItemRepresentation, hidden: Tensor, item_ids: Tensor) -> Tensor:
    """Dot products of ``hidden (N, d)`` with the vectors of ``item_ids (N, C)``: ``(N, C)``."""
    return (items(item_ids) * hidden.unsqueeze(-2)).sum(dim=-1)


def _target_and_negative_scores(items: ItemRepresentation, hidden: Tensor, targets: Tensor,
                                negatives: Tensor) -> tuple[Tensor, Tensor]:
    """Scores of each position's target ``(N,)`` and negatives ``(N, k)`` from one item-table lookup.

    One lookup means one gradient accumulation into the item table's gradient buffer per step
    instead of two.
    """
    scores = _scores(items, hidden, torch.cat([targets.unsqueeze(-1), negatives], dim=-1))  # (N, 1 + k)
    return scores[:, 0], scores[:, 1:]


def bce_loss(items: ItemRepresentation, hidden: Tensor, targets: Tensor, negatives: Tensor) -> Tensor:
    """The paper's binary cross-entropy (Eq. 6): the next item against sampled negatives.

    ``-log sigma(r_pos) - mean_k log(1 - sigma(r_neg_k))``, averaged over positions; with one
    negative per position this is exactly the paper's loss.

    Args:
        items: the scored items (their vectors).
        hidden: ``(N, d)`` hidden states at non-padded positions.
        targets: ``(N,)`` next items.
        negatives: ``(N, k)`` sampled negative items.

    Returns:
        Scalar loss.
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        hidden = hidden.float()
        positive, negative = _target_and_negative_scores(items, hidden, targets, negatives)  # (N,), (N, k)
        # softplus(-x) = -log sigma(x); softplus(x) = -log(1 - sigma(x)), both numerically stable.
        return F.softplus(-positive).mean() + F.softplus(negative).mean(dim=-1).mean()


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """The power gSASRec puts on the positive probability: ``beta = alpha (t (1 - 1/alpha) + 1/alpha)``.

    ``alpha = k / (|I| - 1)`` is the negative sampling rate; ``t = 0`` gives ``beta = 1`` (plain
    BCE), ``t = 1`` gives ``beta = alpha`` (fully calibrated, paper Theorem 4.1).
    """
    alpha = num_negatives / max(num_items - 1, 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_loss(items: ItemRepresentation, hidden: Tensor, targets: Tensor, negatives: Tensor, t: float = 0.75) -> Tensor:
    """Generalized BCE (gSASRec, Petrov & Macdonald, RecSys 2023, Eq. 11).

    The positive probability is raised to ``beta``: ``sigma(s+)^beta``, i.e. the positive logit is
    replaced by ``log(1 / (sigma(s+)^-beta - 1))``; BCE is then averaged over the ``k + 1`` logits
    of each position as in the reference code. Since ``-log(sigma(s)^beta) = beta * softplus(-s)``
    the transformed term is computed in closed form, with no clamping.

    Args:
        items: the scored items.
        hidden: ``(N, d)`` hidden states at real positions.
        targets: ``(N,)`` next items.
        negatives: ``(N, k)`` sampled negatives.
        t: calibration parameter in ``[0, 1]``.

    Returns:
        Scalar loss.
    """
    beta = gbce_beta(negatives.size(-1), items.num_items, t)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        hidden = hidden.float()
        positive, negative = _target_and_negative_scores(items, hidden, targets, negatives)  # (N,), (N, k)
        per_position = beta * F.softplus(-positive) + F.softplus(negative).sum(dim=-1)  # (N,)
        return (per_position / (negatives.size(-1) + 1)).mean()


def gbce_shared_loss(items: ItemRepresentation, hidden: Tensor, targets: Tensor, shared: Tensor, beta: float,
                     rows: Tensor | None = None) -> Tensor:
    """GBCE over negatives shared by the batch ``(M,)`` or by each sequence ``(B, M)``, written out.

    ``(beta * softplus(-s_pos) + sum_j softplus(s_neg_j)) / (M + 1)`` per position, averaged; a
    negative equal to the position's target (an accidental hit) is left out of the sum.

    Args:
        items: the scored items.
        hidden: ``(N, d)`` hidden states at real positions (row-major).
        targets: ``(N,)`` next items.
        shared: ``(M,)`` or ``(B, M)`` negative item ids.
        beta: the power on the positive probability (:func:`gbce_beta` with ``k = M``).
        rows: ``(N,)`` sequence of each position (needed with ``(B, M)`` negatives).

    Returns:
        Scalar loss.
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        positive, negative = _shared_logits(items, at_least_fp32(hidden), targets, shared, rows)
        per_position = beta * F.softplus(-positive) + F.softplus(negative).sum(dim=-1)  # (N,)
        return (per_position / (shared.size(-1) + 1)).mean()


def bpr_loss(items: ItemRepresentation, hidden: Tensor, targets: Tensor, negatives: Tensor) -> Tensor:
    """Bayesian personalized ranking (Rendle et al., UAI 2009): ``-log sigma(r_pos - r_neg)``.

    Averaged over each position's ``k`` negatives, then over positions.

    Args:
        items: the scored items.
        hidden: ``(N, d)`` hidden states at real positions.
        targets: ``(N,)`` next items.
        negatives: ``(N, k)`` sampled negatives.

    Returns:
        Scalar loss.
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        positive, negative = _target_and_negative_scores(items, hidden.float(), targets, negatives)  # (N,), (N, k)
        return F.softplus(negative - positive.unsqueeze(-1)).mean()  # softplus(-x) = -log sigma(x)


def sequence_scores(hidden: Tensor, rows: Tensor, vectors: Tensor) -> Tensor:
    """Score each position against the item vectors of its own sequence in one batched matmul.

    Args:
        hidden: ``(N, d)`` hidden states of real positions in row-major order (as ``hidden[real]``).
        rows: ``(N,)`` sequence (batch row) of each position, non-decreasing.
        vectors: ``(B, M, d)`` item vectors of each sequence.

    Returns:
        ``(N, M)`` scores.
    """
    counts = torch.bincount(rows, minlength=vectors.size(0))  # (B,)
    column = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]  # (N,)
    padded = hidden.new_zeros(vectors.size(0), int(counts.max()), hidden.size(-1))  # (B, L', d)
    padded = padded.index_put((rows, column), hidden)  # positions back in their sequences
    return torch.bmm(padded, vectors.transpose(1, 2))[rows, column]  # (B, L', M) -> (N, M)


def _shared_logits(items: ItemRepresentation, hidden: Tensor, targets: Tensor, shared: Tensor, rows: Tensor | None,
                   log_q: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The written-out logits of the shared-negative losses: ``(N,)`` targets' and ``(N, M)`` negatives'.

    With ``log_q`` both are corrected by ``- log Q``; then a negative equal to its position's
    target (an accidental hit) is set to ``-inf``.
    """
    positive = (hidden * at_least_fp32(items(targets))).sum(dim=-1)  # (N,)
    if shared.dim() == 1:
        negative, negative_ids = hidden @ at_least_fp32(items(shared)).T, shared.unsqueeze(0)
    elif rows is None:
        raise ValueError("per-sequence negatives (B, M) need `rows`, the sequence of each position")
    else:
        vectors = at_least_fp32(items(shared))  # (B, M, d)
        negative, negative_ids = sequence_scores(hidden, rows, vectors), shared[rows]  # (N, M), (N, M)
    if log_q is not None:
        log_q = log_q.to(hidden.dtype)
        positive = positive - log_q[targets]
        negative = negative - log_q[negative_ids]
    negative = negative.masked_fill(negative_ids == targets.unsqueeze(-1), float("-inf"))  # (N, M)
    return positive, negative


def sampled_softmax_loss(items: ItemRepresentation, hidden: Tensor, targets: Tensor, shared: Tensor,
                         log_q: Tensor | None = None, rows: Tensor | None = None) -> Tensor:
    """Softmax cross-entropy of each target against sampled negatives shared by many positions.

    ``shared`` is either ``(M,)`` negatives for every position of the batch, or ``(B, M)``
    negatives per sequence, shared by that sequence's positions (``rows`` says which sequence each
    position belongs to; Klenitskiy & Vasilev's SASRec+ 3000 samples per sequence). Accidental hits
    (a negative equal to the position's target) are removed. With ``log_q`` (log expected count of
    each item in one sample of ``M``) the logQ correction ``s - log Q`` is applied to the positive
    and the negatives alike, which makes the sampled softmax an unbiased-in-the-limit estimate of
    the full one for non-uniform samplers.

    Args:
        items: the scored items.
        hidden: ``(N, d)`` hidden states at real positions (row-major, as ``hidden[real]``).
        targets: ``(N,)`` next items.
        shared: ``(M,)`` negative item ids for the whole batch or ``(B, M)`` per sequence.
        log_q: optional ``(I + 1,)`` log expected sample count of every item id.
        rows: ``(N,)`` sequence of each position; needed with per-sequence negatives.

    Returns:
        Scalar loss.
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        positive, negative = _shared_logits(items, at_least_fp32(hidden), targets, shared, rows, log_q)
        logits = torch.cat([positive.unsqueeze(-1), negative], dim=-1)  # (N, 1 + M)
        return (torch.logsumexp(logits, dim=-1) - positive).mean()


class BCELoss(Loss):
    """``bce``: the paper's loss with the data module's ``k`` negatives per position."""

    needs_negatives = True

    def forward(self, items: ItemRepresentation, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        return bce_loss(items, hidden, targets, negatives)


class BPRLoss(Loss):
    """``bpr``: pairwise ranking of the target above each of the data module's ``k`` negatives."""

    needs_negatives = True

    def forward(self, items: ItemRepresentation, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        return bpr_loss(items, hidden, targets, negatives)


def _shared_block(negatives: int, sharing: str, positions: int, sequences: int, hidden_size: int) -> int:
    """``(N, M)`` logits, their gradient and a work copy; the ``(draws, M, d)`` negative vectors and their gradient."""
    draws = sequences if sharing == "sequence" else 1
    return 3 * positions * negatives + 2 * draws * negatives * hidden_size


def _shared_shape(num_negatives: int, sharing: str, rows: Tensor | None) -> tuple[int, ...]:
    """``(M,)`` for negatives shared by the batch, ``(B, M)`` for negatives per sequence."""
    if sharing == "batch":
        return (num_negatives,)
    if rows is None:
        raise ValueError("negatives shared per sequence need `rows`, the sequence of each position")
    return (int(rows.max()) + 1 if rows.numel() else 1, num_negatives)


class SharedGBCE(nn.Module):
    """gBCE's logits over shared negatives, written out (:func:`gbce_shared_loss`); fused by the speed parts."""

    def forward(self, items: ItemRepresentation, hidden: Tensor, targets: Tensor, shared: Tensor, beta: float,
                rows: Tensor | None) -> Tensor:
        return gbce_shared_loss(items, hidden, targets, shared, beta, rows)


class GBCELoss(Loss):
    """``gbce``: generalized BCE with calibration ``t``.

    Args:
        t: calibration parameter in ``[0, 1]`` (gSASRec's default 0.75); 0 is plain BCE.
        shared_negatives: ``M`` uniform negatives drawn by the loss and shared by the batch or by each
            sequence (``sharing``) and scored as one logit block: many negatives for the price of a
            matrix product. ``0`` (the default, gSASRec's setup): the data module's
            ``data.loader.num_negatives`` per position.
        sharing: ``batch`` (one draw for every position of the batch) or ``sequence`` (one per
            sequence, shared by its positions).
    """

    def __init__(self, t: float = 0.75, shared_negatives: int = 0, sharing: Sharing = "batch") -> None:
        super().__init__()
        section = "model.loss"
        in_range(section, "t", t, 0.0, 1.0)
        at_least(section, "shared_negatives", shared_negatives, 0)
        one_of(section, "sharing", sharing, Sharing)
        self.save_hyperparameters()
        self.t, self.shared_negatives, self.sharing = t, shared_negatives, sharing
        self.needs_negatives = shared_negatives == 0  # with shared negatives the loss draws its own
        self.logits = SharedGBCE()

    def peak_block(self, positions: int, sequences: int, num_items: int, hidden_size: int) -> int:
        return _shared_block(self.shared_negatives, self.sharing, positions, sequences, hidden_size) \
            if self.shared_negatives else 0

    def forward(self, items: ItemRepresentation, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        if not self.shared_negatives:
            return gbce_loss(items, hidden, targets, negatives, self.t)
        shared = torch.randint(1, items.num_items + 1, _shared_shape(self.shared_negatives, self.sharing, rows),
                               device=targets.device, generator=generator)
        return self.logits(items, hidden, targets, shared, gbce_beta(self.shared_negatives, items.num_items, self.t),
                           rows)


class SampledSoftmax(nn.Module):
    """Sampled softmax's logits, written out (:func:`sampled_softmax_loss`); fused by the speed parts."""

    def forward(self, items: ItemRepresentation, hidden: Tensor, targets: Tensor, shared: Tensor,
                log_q: Tensor | None, rows: Tensor | None) -> Tensor:
        return sampled_softmax_loss(items, hidden, targets, shared, log_q, rows)


class SampledSoftmaxLoss(Loss):
    """``sampled_softmax``: ``negatives`` sampled negatives shared by the batch or by each sequence.

    Args:
        negatives: negatives ``M`` per batch or per sequence (e.g. 3000).
        sampling: ``uniform``; ``popularity`` (proportional to training frequency); ``in_batch``
            (other positions' targets, i.e. popularity-proportional for free) mixed with uniform.
        in_batch_fraction: share of the ``M`` negatives taken in-batch under ``in_batch``.
        logq_correction: subtract ``log Q``, the log expected count of each item in a draw (off only
            for ablations; a no-op for uniform sampling, where it cancels).
        sharing: ``batch``: one draw of ``M`` for every position of the batch (one ``(N, M)``
            matmul); ``sequence``: a draw of ``M`` per sequence, shared by its positions, as in
            Klenitskiy & Vasilev's SASRec+ (independent negatives across sequences: a less noisy
            batch gradient for ``B`` times the sampled item vectors).
    """

    def __init__(self, negatives: int = 3000, sampling: Sampling = "uniform", in_batch_fraction: float = 0.5,
                 logq_correction: bool = True, sharing: Sharing = "batch") -> None:
        super().__init__()
        section = "model.loss"
        at_least(section, "negatives", negatives, 1)
        one_of(section, "sampling", sampling, Sampling)
        in_range(section, "in_batch_fraction", in_batch_fraction, 0.0, 1.0)
        one_of(section, "sharing", sharing, Sharing)
        self.save_hyperparameters()
        self.num_negatives, self.sampling, self.in_batch_fraction = negatives, sampling, in_batch_fraction
        self.logq_correction, self.sharing = logq_correction, sharing
        self.logits = SampledSoftmax()
        # Training target frequency of every item id (row 0 unused), from `setup` (non-uniform sampling).
        self.register_buffer("frequencies", torch.zeros(0, dtype=torch.float64), persistent=False)
        self._cache: tuple | None = None  # (device, frequencies) -> popularity and log Q

    def peak_block(self, positions: int, sequences: int, num_items: int, hidden_size: int) -> int:
        return _shared_block(self.num_negatives, self.sharing, positions, sequences, hidden_size)

    def setup(self, statistics: TrainingStatistics | None) -> None:
        """Popularity and in-batch sampling: the training target counts (``statistics.item_counts``)."""
        if self.sampling == "uniform":
            return
        if statistics is None:
            raise OptionError(
                f"--model.loss.sampling {self.sampling}: needs item frequencies from a data module with "
                "training_statistics() (SASRecDataModule); use sampling: uniform otherwise"
            )
        self.set_frequencies(torch.from_numpy(statistics.item_counts))

    def set_frequencies(self, counts: Tensor) -> None:
        """Item counts ``(I + 1,)`` that define popularity sampling and the in-batch logQ."""
        counts = torch.as_tensor(counts, dtype=torch.float64, device=self.frequencies.device).clone()
        counts[0] = 0
        self.frequencies = counts
        self._cache = None

    def sample(self, targets: Tensor, num_items: int, generator: torch.Generator | None = None,
               shape: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
        """Negatives of ``shape`` and the ``(I + 1,)`` log expected count of every item in a draw of ``M``.

        ``shape`` is ``(M,)`` by default, ``(B, M)`` for negatives per sequence. Drawn from
        ``generator`` (the training batches seed one per batch) or the global torch RNG.
        """
        m, device = self.num_negatives, targets.device
        shape = shape or (m,)
        lead = shape[:-1]
        popularity, log_q = self._distributions(num_items, device)
        if self.sampling == "uniform":
            return torch.randint(1, num_items + 1, shape, device=device, generator=generator), log_q
        if self.sampling == "popularity":
            shared = torch.multinomial(popularity, math.prod(shape), replacement=True, generator=generator)
            return shared.view(shape), log_q
        in_batch = round(m * self.in_batch_fraction)
        picks = torch.randint(0, targets.numel(), (*lead, in_batch), device=device, generator=generator)
        uniform = torch.randint(1, num_items + 1, (*lead, m - in_batch), device=device, generator=generator)
        return torch.cat([targets[picks], uniform], dim=-1), log_q  # (..., M)

    def _distributions(self, num_items: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """The fp32 popularity ``(I + 1,)`` and the ``(I + 1,)`` log expected count of each item in a draw.

        Computed once per device and frequency table (a pass over the catalogue each step costs
        milliseconds at a million items).
        """
        key = (str(device), num_items, self.frequencies.data_ptr())
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        m = self.num_negatives
        frequencies = self.frequencies
        if frequencies.numel() != num_items + 1:  # uniform, or no statistics yet: every item once
            frequencies = torch.ones(num_items + 1, dtype=torch.float64)
            frequencies[0] = 0
        uniform_q = torch.full((num_items + 1,), 1.0 / num_items, dtype=torch.float64, device=device)
        popularity = (frequencies / frequencies.sum()).to(device)  # (I + 1,)
        if self.sampling == "uniform":
            expected = uniform_q * m
        elif self.sampling == "popularity":
            expected = popularity * m
        else:  # expected count of item i in the mixed sample: M_b p_pop(i) + M_u / I
            in_batch = round(m * self.in_batch_fraction)
            expected = in_batch * popularity + (m - in_batch) * uniform_q
        self._cache = (key, (popularity.float(), expected.log()))
        return self._cache[1]

    def forward(self, items: ItemRepresentation, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        shape = _shared_shape(self.num_negatives, self.sharing, rows)
        shared, log_q = self.sample(targets, items.num_items, generator, shape)
        # Under uniform sampling log Q is the same for every item and cancels: no pass over the block.
        correct = self.logq_correction and self.sampling != "uniform"
        return self.logits(items, hidden, targets, shared, log_q if correct else None, rows)


class ChunkedSoftmax(nn.Module):
    """The exact softmax over every item, item-chunked (:mod:`.chunked_ce`); the speed parts give it a reused block.

    Args:
        chunk_size: items per chunk (peak memory ~ positions x chunk).
        blocks: where the ``(N, C)`` logit blocks come from (``None``: fresh tensors).
    """

    def __init__(self, chunk_size: int, blocks: BlockSource | None = None) -> None:
        super().__init__()
        self.chunk_size, self.blocks = chunk_size, blocks

    def forward(self, items: ItemRepresentation, hidden: Tensor, targets: Tensor) -> Tensor:
        return chunked_cross_entropy(hidden.float(), items.table().float(), targets, self.chunk_size, self.blocks)


class FullCrossEntropyLoss(Loss):
    """``ce``: exact softmax over every item, item-chunked so memory stays bounded.

    Args:
        chunk_size: items per chunk (peak memory ~ positions x chunk).
    """

    reads_whole_table = True

    def __init__(self, chunk_size: int = 65536) -> None:
        super().__init__()
        at_least("model.loss", "chunk_size", chunk_size, 1)
        self.save_hyperparameters()
        self.logits = ChunkedSoftmax(chunk_size)

    def peak_block(self, positions: int, sequences: int, num_items: int, hidden_size: int) -> int:
        return 3 * positions * min(self.logits.chunk_size, num_items + 1)  # logits, their softmax and gradient

    def forward(self, items: ItemRepresentation, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.logits(items, hidden, targets)


#: The shipped losses by shorthand (``--model.loss bce``); any other ``Loss`` by class path.
LOSSES: dict[str, type[Loss]] = {
    "bce": BCELoss,
    "gbce": GBCELoss,
    "bpr": BPRLoss,
    "sampled_softmax": SampledSoftmaxLoss,
    "ce": FullCrossEntropyLoss,
}


def _imported_loss_class(class_path: str) -> type[Loss] | None:
    """The ``Loss`` subclass ``class_path`` names if its module is imported already (never imports)."""
    import sys

    module_name, _, name = class_path.rpartition(".")
    module = sys.modules.get(module_name)
    cls = getattr(module, name, None) if module is not None else None
    return cls if isinstance(cls, type) and issubclass(cls, Loss) else None


def resolve_loss(spec: Loss | str | Mapping[str, Any]) -> Loss:
    """The loss ``spec`` stands for: a :class:`Loss`, a shorthand of :data:`LOSSES`, or ``{class_path, init_args}``.

    A class path (the form a checkpoint stores) must name an already imported ``Loss`` subclass:
    importing a module named by a file could run its code (import yours before loading, as the
    CLI does for a class path given in a config).

    Raises:
        OptionError: an unknown shorthand or a class path that is no imported ``Loss``.
    """
    if isinstance(spec, Loss):
        return spec
    shipped = {**LOSSES, **{cls.__name__: cls for cls in LOSSES.values()}}  # shorthands and short class names
    if isinstance(spec, str) and spec in shipped:
        return shipped[spec]()
    if isinstance(spec, Mapping) and isinstance(spec.get("class_path"), str):
        cls = shipped.get(spec["class_path"]) or _imported_loss_class(spec["class_path"])
        if cls is not None:
            return cls(**dict(spec.get("init_args") or {}))
    shown = spec.get("class_path") if isinstance(spec, Mapping) else spec
    raise OptionError(f"--model.loss {shown!r}: expected one of {sorted(LOSSES)} or the class path of an imported "
                      "Loss subclass (e.g. {class_path: my_losses.SmoothBCE, init_args: {...}}; run with PYTHONPATH "
                      "set to its folder)")


def loss_spec(loss: Loss) -> dict[str, Any]:
    """``{class_path, init_args}`` of a loss: plain values, what a checkpoint stores to rebuild it."""
    cls = type(loss)
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(loss.hparams)}
