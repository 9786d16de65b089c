"""Training losses on the hidden states of non-padded positions.

Every loss is a :class:`Loss`: it takes the hidden states already gathered at real positions, so
no work is spent on padding, computes in fp32 even under mixed precision, and has one call
signature, ``loss(encoder, hidden (N, d), targets (N,), negatives (N, k), generator=None,
rows=None) -> scalar`` (the generator seeds negatives a loss samples itself; ``rows`` is the
sequence of each position, for negatives shared per sequence). The module's ``loss`` field names
one of :data:`LOSSES`:

* ``bce`` — the paper's binary cross-entropy, ``k`` negatives per position (``data.num_negatives``);
* ``gbce`` — gSASRec's generalized BCE (Petrov & Macdonald, RecSys 2023) with calibration ``t``,
  on the data module's ``k`` negatives per position or on ``M`` uniform negatives shared by the
  batch or by each sequence (``gbce_shared_negatives``);
* ``bpr`` — Bayesian personalized ranking (Rendle et al., UAI 2009), the same negatives;
* ``sampled_softmax`` — softmax over the positive and ``M`` negatives shared by the whole batch or
  by each sequence (uniform, popularity-proportional or in-batch mixed with uniform) with logQ
  correction;
* ``ce`` — exact softmax over the whole catalogue, item-chunked (:mod:`.chunked_ce`).

The losses over shared negatives run fused by default (:mod:`.fused_sampled`: one reused logit
block, a backward pass of two products); the functions below are the plain-PyTorch reference,
selected with ``fused_loss: false``.

Adding a loss is one :class:`Loss` subclass under ``@register_loss("name")`` (``docs/architecture.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fast.fused_sampled import at_least_fp32, fused_gbce, fused_sampled_softmax
from .chunked_ce import Workspace, chunked_cross_entropy
from .encoder import SASRec

if TYPE_CHECKING:
    from ..data.batches import TrainingStatistics

__all__ = [
    "Loss",
    "LOSSES",
    "LossName",
    "register_loss",
    "build_loss",
    "bce_loss",
    "gbce_loss",
    "gbce_beta",
    "bpr_loss",
    "sampled_softmax_loss",
    "gbce_shared_loss",
    "BCELoss",
    "GBCELoss",
    "BPRLoss",
    "SampledSoftmaxLoss",
    "FullCrossEntropyLoss",
]

Sampling = Literal["uniform", "popularity", "in_batch"]


class Loss(nn.Module):
    """Base class of the training losses: the call signature plus three optional hooks.

    Class attributes and hooks a loss may override:

    * ``needs_negatives``: the training batches carry ``data.num_negatives`` sampled negatives per
      position; when ``False`` the data module draws none and ``negatives`` is ``(N, 0)``;
    * :meth:`from_options`: build the loss from the module's options (``SASRecModule`` fields);
    * :meth:`setup`: take what the loss needs from the training data before the first step;
    * :meth:`release_memory`: let go of memory kept between training steps.
    """

    needs_negatives: ClassVar[bool] = False

    @classmethod
    def from_options(cls, num_items: int, options: Mapping[str, Any]) -> Loss:
        """The loss for ``num_items`` items from the module's options (by default: no options)."""
        return cls()

    def setup(self, statistics: TrainingStatistics | None) -> None:
        """Called before the first training step with the data module's ``training_statistics()``.

        Args:
            statistics: item counts and positions per batch, or ``None`` when the training data
                does not come from a data module that provides them.
        """

    def release_memory(self) -> None:
        """Free memory kept from step to step (called after training and before evaluation)."""

    def forward(self, encoder: SASRec, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        """The mean loss over positions.

        Args:
            encoder: the model (item vectors: ``score_items``, ``item_vectors``, ``output_weight``).
            hidden: ``(N, d)`` hidden states at real positions, row-major.
            targets: ``(N,)`` next items.
            negatives: ``(N, k)`` sampled negatives (``k = 0`` unless ``needs_negatives``).
            generator: seeds whatever the loss samples itself (one per training batch).
            rows: ``(N,)`` batch row (sequence) of each position.

        Returns:
            Scalar loss.
        """
        raise NotImplementedError


LOSSES: dict[str, type[Loss]] = {}


def register_loss(name: str) -> Callable[[type[Loss]], type[Loss]]:
    """Class decorator: make a :class:`Loss` selectable as ``--model.loss name``."""

    def register(cls: type[Loss]) -> type[Loss]:
        if name in LOSSES and LOSSES[name] is not cls:
            raise ValueError(f"a loss named {name!r} is already registered ({LOSSES[name].__qualname__})")
        LOSSES[name] = cls
        return cls

    return register


def build_loss(name: str, num_items: int, **options: Any) -> Loss:
    """The registered loss ``name`` for ``num_items`` items, configured from ``options`` (module fields)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[name].from_options(num_items, options)


def _target_and_negative_scores(encoder: SASRec, hidden: Tensor, targets: Tensor,
                                negatives: Tensor) -> tuple[Tensor, Tensor]:
    """Scores of each position's target ``(N,)`` and negatives ``(N, k)`` from one item-table lookup.

    One lookup means one gradient accumulation into the item table's gradient buffer per step
    instead of two.
    """
    scores = encoder.score_items(hidden, torch.cat([targets.unsqueeze(-1), negatives], dim=-1))  # (N, 1 + k)
    return scores[:, 0], scores[:, 1:]


def bce_loss(encoder: SASRec, hidden: Tensor, targets: Tensor, negatives: Tensor) -> Tensor:
    """The paper's binary cross-entropy (Eq. 6): the next item against sampled negatives.

    ``-log sigma(r_pos) - mean_k log(1 - sigma(r_neg_k))``, averaged over positions; with one
    negative per position this is exactly the paper's loss.

    Args:
        encoder: the model (for its item embeddings).
        hidden: ``(N, d)`` hidden states at non-padded positions.
        targets: ``(N,)`` next items.
        negatives: ``(N, k)`` sampled negative items.

    Returns:
        Scalar loss.
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        hidden = hidden.float()
        positive, negative = _target_and_negative_scores(encoder, hidden, targets, negatives)  # (N,), (N, k)
        # softplus(-x) = -log sigma(x); softplus(x) = -log(1 - sigma(x)), both numerically stable.
        return F.softplus(-positive).mean() + F.softplus(negative).mean(dim=-1).mean()


def gbce_beta(num_negatives: int, num_items: int, t: float) -> float:
    """The power gSASRec puts on the positive probability: ``beta = alpha (t (1 - 1/alpha) + 1/alpha)``.

    ``alpha = k / (|I| - 1)`` is the negative sampling rate; ``t = 0`` gives ``beta = 1`` (plain
    BCE), ``t = 1`` gives ``beta = alpha`` (fully calibrated, paper Theorem 4.1).
    """
    alpha = num_negatives / max(num_items - 1, 1)
    return alpha * (t * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def gbce_loss(encoder: SASRec, hidden: Tensor, targets: Tensor, negatives: Tensor, t: float = 0.75) -> Tensor:
    """Generalized BCE (gSASRec, Petrov & Macdonald, RecSys 2023, Eq. 11).

    The positive probability is raised to ``beta``: ``sigma(s+)^beta``, i.e. the positive logit is
    replaced by ``log(1 / (sigma(s+)^-beta - 1))``; BCE is then averaged over the ``k + 1`` logits
    of each position as in the reference code. Since ``-log(sigma(s)^beta) = beta * softplus(-s)``
    the transformed term is computed in closed form, with no clamping.

    Args:
        encoder: the model.
        hidden: ``(N, d)`` hidden states at real positions.
        targets: ``(N,)`` next items.
        negatives: ``(N, k)`` sampled negatives.
        t: calibration parameter in ``[0, 1]``.

    Returns:
        Scalar loss.
    """
    beta = gbce_beta(negatives.size(-1), encoder.num_items, t)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        hidden = hidden.float()
        positive, negative = _target_and_negative_scores(encoder, hidden, targets, negatives)  # (N,), (N, k)
        per_position = beta * F.softplus(-positive) + F.softplus(negative).sum(dim=-1)  # (N,)
        return (per_position / (negatives.size(-1) + 1)).mean()


def gbce_shared_loss(encoder: SASRec, hidden: Tensor, targets: Tensor, shared: Tensor, beta: float,
                     rows: Tensor | None = None) -> Tensor:
    """GBCE over negatives shared by the batch ``(M,)`` or by each sequence ``(B, M)``, written out.

    ``(beta * softplus(-s_pos) + sum_j softplus(s_neg_j)) / (M + 1)`` per position, averaged; a
    negative equal to the position's target (an accidental hit) is left out of the sum.

    Args:
        encoder: the model.
        hidden: ``(N, d)`` hidden states at real positions (row-major).
        targets: ``(N,)`` next items.
        shared: ``(M,)`` or ``(B, M)`` negative item ids.
        beta: the power on the positive probability (:func:`gbce_beta` with ``k = M``).
        rows: ``(N,)`` sequence of each position (needed with ``(B, M)`` negatives).

    Returns:
        Scalar loss.
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        positive, negative = _shared_logits(encoder, at_least_fp32(hidden), targets, shared, rows)
        per_position = beta * F.softplus(-positive) + F.softplus(negative).sum(dim=-1)  # (N,)
        return (per_position / (shared.size(-1) + 1)).mean()


def bpr_loss(encoder: SASRec, hidden: Tensor, targets: Tensor, negatives: Tensor) -> Tensor:
    """Bayesian personalized ranking (Rendle et al., UAI 2009): ``-log sigma(r_pos - r_neg)``.

    Averaged over each position's ``k`` negatives, then over positions.

    Args:
        encoder: the model.
        hidden: ``(N, d)`` hidden states at real positions.
        targets: ``(N,)`` next items.
        negatives: ``(N, k)`` sampled negatives.

    Returns:
        Scalar loss.
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        positive, negative = _target_and_negative_scores(encoder, hidden.float(), targets, negatives)  # (N,), (N, k)
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


def _shared_logits(encoder: SASRec, hidden: Tensor, targets: Tensor, shared: Tensor, rows: Tensor | None,
                   log_q: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The written-out logits of the shared-negative losses: ``(N,)`` targets' and ``(N, M)`` negatives'.

    With ``log_q`` both are corrected by ``- log Q``; then a negative equal to its position's
    target (an accidental hit) is set to ``-inf``.
    """
    positive = (hidden * at_least_fp32(encoder.item_vectors(targets))).sum(dim=-1)  # (N,)
    if shared.dim() == 1:
        negative, negative_ids = hidden @ at_least_fp32(encoder.item_vectors(shared)).T, shared.unsqueeze(0)
    elif rows is None:
        raise ValueError("per-sequence negatives (B, M) need `rows`, the sequence of each position")
    else:
        vectors = at_least_fp32(encoder.item_vectors(shared))  # (B, M, d)
        negative, negative_ids = sequence_scores(hidden, rows, vectors), shared[rows]  # (N, M), (N, M)
    if log_q is not None:
        log_q = log_q.to(hidden.dtype)
        positive = positive - log_q[targets]
        negative = negative - log_q[negative_ids]
    negative = negative.masked_fill(negative_ids == targets.unsqueeze(-1), float("-inf"))  # (N, M)
    return positive, negative


def sampled_softmax_loss(encoder: SASRec, hidden: Tensor, targets: Tensor, shared: Tensor,
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
        encoder: the model.
        hidden: ``(N, d)`` hidden states at real positions (row-major, as ``hidden[real]``).
        targets: ``(N,)`` next items.
        shared: ``(M,)`` negative item ids for the whole batch or ``(B, M)`` per sequence.
        log_q: optional ``(I + 1,)`` log expected sample count of every item id.
        rows: ``(N,)`` sequence of each position; needed with per-sequence negatives.

    Returns:
        Scalar loss.
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        positive, negative = _shared_logits(encoder, at_least_fp32(hidden), targets, shared, rows, log_q)
        logits = torch.cat([positive.unsqueeze(-1), negative], dim=-1)  # (N, 1 + M)
        return (torch.logsumexp(logits, dim=-1) - positive).mean()


@register_loss("bce")
class BCELoss(Loss):
    """``bce``: the paper's loss with the data module's ``k`` negatives per position."""

    needs_negatives = True

    def forward(self, encoder: SASRec, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        return bce_loss(encoder, hidden, targets, negatives)


@register_loss("gbce")
class GBCELoss(Loss):
    """``gbce``: generalized BCE with calibration ``t`` (``gbce_t``).

    Negatives: the data module's ``k`` per position (``gbce_shared_negatives: 0``, gSASRec's
    setup), or ``M = gbce_shared_negatives`` uniform negatives drawn by the loss and shared by the
    batch or by each sequence (``negative_sharing``), scored as one logit block: many negatives
    for the price of a matrix product (fused by default, ``fused_loss``).
    """

    needs_negatives = True

    def __init__(self, t: float = 0.75, num_items: int | None = None, shared_negatives: int = 0,
                 sharing: Literal["batch", "sequence"] = "batch", fused: bool = True) -> None:
        super().__init__()
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"gbce_t must be in [0, 1], got {t}")
        if shared_negatives < 0:
            raise ValueError(f"gbce_shared_negatives must be at least 0, got {shared_negatives}")
        if shared_negatives and num_items is None:
            raise ValueError("gbce with shared negatives needs num_items")
        if sharing not in ("batch", "sequence"):
            raise ValueError(f"unknown negative sharing {sharing!r}; expected batch or sequence")
        self.t = t
        self.num_items = num_items
        self.shared_negatives = shared_negatives
        self.sharing = sharing
        self.fused = fused
        self.needs_negatives = shared_negatives == 0  # with shared negatives the loss draws its own
        self.workspace = Workspace()  # the fused loss's logit block, reused from step to step
        self.grid_workspace = Workspace()  # per sequence: the (B, M, d) negative vectors, reused too

    @classmethod
    def from_options(cls, num_items: int, options: Mapping[str, Any]) -> GBCELoss:
        return cls(options.get("gbce_t", 0.75), num_items, options.get("gbce_shared_negatives", 0),
                   options.get("negative_sharing", "batch"), options.get("fused_loss", True))

    def release_memory(self) -> None:
        self.workspace.clear()
        self.grid_workspace.clear()

    def forward(self, encoder: SASRec, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        if not self.shared_negatives:
            return gbce_loss(encoder, hidden, targets, negatives, self.t)
        shared = torch.randint(1, self.num_items + 1, _shared_shape(self.shared_negatives, self.sharing, rows),
                               device=targets.device, generator=generator)
        beta = gbce_beta(self.shared_negatives, self.num_items, self.t)
        if self.fused:
            return fused_gbce(encoder, hidden, targets, shared, beta, rows, self.workspace, self.grid_workspace)
        return gbce_shared_loss(encoder, hidden, targets, shared, beta, rows)


def _shared_shape(num_negatives: int, sharing: str, rows: Tensor | None) -> tuple[int, ...]:
    """``(M,)`` for negatives shared by the batch, ``(B, M)`` for negatives per sequence."""
    if sharing == "batch":
        return (num_negatives,)
    if rows is None:
        raise ValueError("negatives shared per sequence need `rows`, the sequence of each position")
    return (int(rows.max()) + 1 if rows.numel() else 1, num_negatives)


@register_loss("bpr")
class BPRLoss(Loss):
    """``bpr``: pairwise ranking of the target above each of the data module's ``k`` negatives."""

    needs_negatives = True

    def forward(self, encoder: SASRec, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        return bpr_loss(encoder, hidden, targets, negatives)


@register_loss("sampled_softmax")
class SampledSoftmaxLoss(Loss):
    """``sampled_softmax``: ``num_negatives`` sampled negatives shared by the batch or by each sequence.

    Args:
        num_items: catalogue size ``I``.
        num_negatives: negatives ``M`` per batch or per sequence (e.g. 3000).
        sampling: ``uniform``; ``popularity`` (proportional to training frequency); ``in_batch``
            (other positions' targets, i.e. popularity-proportional for free) mixed with uniform.
        in_batch_fraction: share of the ``M`` negatives taken in-batch under ``in_batch``.
        logq_correction: subtract ``log Q`` (off only for ablations; a no-op for uniform).
        sharing: ``batch``: one draw of ``M`` for every position of the batch (one ``(N, M)``
            matmul); ``sequence``: a draw of ``M`` per sequence, shared by its positions, as in
            Klenitskiy & Vasilev's SASRec+ (independent negatives across sequences: a less noisy
            batch gradient for ``B`` times the sampled item vectors).
        fused: compute the loss as one fused operation (:mod:`.fused_sampled`, the default) or
            with the written-out :func:`sampled_softmax_loss` (same value).
    """

    def __init__(self, num_items: int, num_negatives: int = 3000, sampling: Sampling = "uniform",
                 in_batch_fraction: float = 0.5, logq_correction: bool = True,
                 sharing: Literal["batch", "sequence"] = "batch", fused: bool = True) -> None:
        super().__init__()
        if num_negatives < 1:
            raise ValueError(f"sampled_softmax needs at least 1 negative, got num_negatives={num_negatives}")
        if sampling not in ("uniform", "popularity", "in_batch"):
            raise ValueError(f"unknown negative sampling {sampling!r}; expected uniform, popularity or in_batch")
        if not 0.0 <= in_batch_fraction <= 1.0:
            raise ValueError(f"in_batch_fraction must be in [0, 1], got {in_batch_fraction}")
        if sharing not in ("batch", "sequence"):
            raise ValueError(f"unknown negative sharing {sharing!r}; expected batch or sequence")
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.sampling = sampling
        self.in_batch_fraction = in_batch_fraction
        self.logq_correction = logq_correction
        self.sharing = sharing
        self.fused = fused
        self.workspace = Workspace()  # the fused loss's logit block, reused from step to step
        self.grid_workspace = Workspace()  # per sequence: the (B, M, d) negative vectors, reused too
        # Training target frequency of every item id (row 0 unused); uniform until set_frequencies.
        counts = torch.ones(num_items + 1, dtype=torch.float64)
        counts[0] = 0
        self.register_buffer("frequencies", counts, persistent=False)
        self._cache: tuple | None = None  # (device, frequencies) -> popularity and log Q

    @classmethod
    def from_options(cls, num_items: int, options: Mapping[str, Any]) -> SampledSoftmaxLoss:
        return cls(num_items, options.get("sampled_negatives", 3000), options.get("negative_sampling", "uniform"),
                   options.get("in_batch_fraction", 0.5), options.get("logq_correction", True),
                   options.get("negative_sharing", "batch"), options.get("fused_loss", True))

    def release_memory(self) -> None:
        """Let go of the kept logit block (``positions x negatives`` floats) and negative grid until the next step."""
        self.workspace.clear()
        self.grid_workspace.clear()

    def setup(self, statistics: TrainingStatistics | None) -> None:
        """Popularity and in-batch sampling: the training target counts (``statistics.item_counts``)."""
        if self.sampling == "uniform":
            return
        if statistics is None:
            raise ValueError(
                f"negative_sampling={self.sampling!r} needs item frequencies from a data module with "
                "training_statistics() (SASRecDataModule); use negative_sampling: uniform otherwise"
            )
        self.set_frequencies(torch.from_numpy(statistics.item_counts))

    def set_frequencies(self, counts: Tensor) -> None:
        """Item counts ``(I + 1,)`` that define popularity sampling and the in-batch logQ."""
        counts = torch.as_tensor(counts, dtype=torch.float64, device=self.frequencies.device).clone()
        if counts.shape != self.frequencies.shape:
            raise ValueError(f"expected {tuple(self.frequencies.shape)} item counts, got {tuple(counts.shape)}")
        counts[0] = 0
        self.frequencies = counts
        self._cache = None

    def sample(self, targets: Tensor, generator: torch.Generator | None = None,
               shape: tuple[int, ...] | None = None) -> tuple[Tensor, Tensor]:
        """Negatives of ``shape`` and the ``(I + 1,)`` log expected count of every item in a draw of ``M``.

        ``shape`` is ``(M,)`` by default, ``(B, M)`` for negatives per sequence. Drawn from
        ``generator`` (the training batches seed one per batch) or the global torch RNG.
        """
        m, num_items, device = self.num_negatives, self.num_items, targets.device
        shape = shape or (m,)
        lead = shape[:-1]
        popularity, log_q = self._distributions(device)
        if self.sampling == "uniform":
            return torch.randint(1, num_items + 1, shape, device=device, generator=generator), log_q
        if self.sampling == "popularity":
            shared = torch.multinomial(popularity, math.prod(shape), replacement=True, generator=generator)
            return shared.view(shape), log_q
        in_batch = round(m * self.in_batch_fraction)
        picks = torch.randint(0, targets.numel(), (*lead, in_batch), device=device, generator=generator)
        uniform = torch.randint(1, num_items + 1, (*lead, m - in_batch), device=device, generator=generator)
        return torch.cat([targets[picks], uniform], dim=-1), log_q  # (..., M)

    def _distributions(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The fp32 popularity ``(I + 1,)`` and the ``(I + 1,)`` log expected count of each item in a draw.

        Computed once per device and frequency table (a pass over the catalogue each step costs
        milliseconds at a million items).
        """
        key = (str(device), self.frequencies.data_ptr())
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        m, num_items = self.num_negatives, self.num_items
        uniform_q = torch.full((num_items + 1,), 1.0 / num_items, dtype=torch.float64, device=device)
        popularity = (self.frequencies / self.frequencies.sum()).to(device)  # (I + 1,)
        if self.sampling == "uniform":
            expected = uniform_q * m
        elif self.sampling == "popularity":
            expected = popularity * m
        else:  # expected count of item i in the mixed sample: M_b p_pop(i) + M_u / I
            in_batch = round(m * self.in_batch_fraction)
            expected = in_batch * popularity + (m - in_batch) * uniform_q
        self._cache = (key, (popularity.float(), expected.log()))
        return self._cache[1]

    def forward(self, encoder: SASRec, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        shared, log_q = self.sample(targets, generator, _shared_shape(self.num_negatives, self.sharing, rows))
        if self.fused:
            # Under uniform sampling log Q is the same for every item and cancels: no pass over the block.
            correct = self.logq_correction and self.sampling != "uniform"
            return fused_sampled_softmax(encoder, hidden, targets, shared, log_q if correct else None, rows,
                                         self.workspace, self.grid_workspace)
        return sampled_softmax_loss(encoder, hidden, targets, shared,
                                    log_q if self.logq_correction else None, rows)


@register_loss("ce")
class FullCrossEntropyLoss(Loss):
    """``ce``: exact softmax over every item, item-chunked (``ce_chunk_size``) so memory stays bounded."""

    def __init__(self, chunk_size: int = 65536) -> None:
        super().__init__()
        if chunk_size < 1:
            raise ValueError(f"ce_chunk_size must be at least 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.workspace = Workspace()  # the (N, C) logits block, reused from step to step

    @classmethod
    def from_options(cls, num_items: int, options: Mapping[str, Any]) -> FullCrossEntropyLoss:
        return cls(options.get("ce_chunk_size", 65536))

    def release_memory(self) -> None:
        """Let go of the kept logits block (up to ~1 GB on Beauty) until the next training step."""
        self.workspace.clear()

    def forward(self, encoder: SASRec, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return chunked_cross_entropy(hidden.float(), encoder.output_weight.float(), targets, self.chunk_size,
                                         self.workspace)


# The names ``--model.loss`` accepts, from the registry (validated when the command line is parsed).
LossName = Literal[tuple(LOSSES)]  # type: ignore[valid-type]
