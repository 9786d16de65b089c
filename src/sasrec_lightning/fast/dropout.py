"""Dropout for the encoder: ``nn.Dropout``, or masks from one per-forward pool of cheap random bits.

SASRec on short sequences spends a surprising share of a CPU training step generating dropout
masks: ``nn.Dropout`` calls ``bernoulli_``, which on CPU costs about 3-4x as much per element as
``torch.rand``, and a step applies ~7 small dropouts of ~5 small ops each (``docs/performance.md``).
Two tricks cut that:

* **cheap bits** (:func:`dropout_mask`): each element gets 16 random bits, four per 64-bit draw of
  the generator, or 8 bits when ``p`` is a multiple of 1/256 (eight per draw). An element is kept
  when its value is at or above ``round(p * 2^b)``, i.e. with probability ``1 - p'`` where
  ``p' = round(p * 2^b) / 2^b`` is ``p`` to within ``1 / 131072`` (exactly ``p`` for multiples of
  1/256 such as 0.5), and kept values are scaled by ``1 / (1 - p')`` so the expectation is exactly
  preserved. The mask is built with float ops only (bool masks and mixed-dtype multiplies are ~4x
  slower on CPU). The bits come from the torch generator, so ``torch.manual_seed`` and the saved
  RNG state govern them.
* **one draw per forward pass** (:class:`MaskPool`): a pool is open for each training forward pass
  of the encoder; every pooled dropout called inside takes its mask as the next slice of one
  stream of such bits, so a dropout is a single multiply (in a residual connection, one
  ``addcmul``).

The pool is one switch (``speed.pooled_dropout``), applied to a built encoder by
:func:`use_pooled_dropout`: it swaps the encoder's dropouts, residual connections and attention
for their pooled versions (the same modules, the same state) and opens the pool around every
training forward pass with two hooks. With the pool closed (evaluation, or a pass it does not
serve) each swapped module computes exactly what the plain one does, SDPA's own attention dropout
included.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..model.encoder import CausalSelfAttention, Residual, SASRec

__all__ = ["dropout_mask", "MaskPool", "PooledDropout", "PooledResidual", "PooledAttention", "use_pooled_dropout"]


def _bits(p: float) -> int:
    """Random bits per element: 8 when ``p`` is a multiple of 1/256 (then ``p' = p``), else 16."""
    return 8 if float(p * 256).is_integer() else 16


def dropout_mask(numel: int, p: float, device: torch.device | str | None = None) -> Tensor:
    """A flat inverted-dropout mask: ``numel`` fp32 values, ``1 / (1 - p')`` where kept and 0 where dropped.

    Elements are consecutive lanes of 64-bit words drawn from the torch generator (``64 / b`` per
    word, see the module docstring), so masks drawn one after another are the same values as one
    mask of the summed size when every size but the last is a multiple of ``64 / b``.

    Args:
        numel: number of elements.
        p: drop probability in ``[0, 1)``.
        device: where to build it.

    Returns:
        ``(numel,)`` float32.
    """
    bits = _bits(p)
    levels = 1 << bits
    threshold = round(p * levels)  # drop an element when its b random bits (as unsigned) are below this
    if threshold >= levels:
        raise ValueError(f"dropout probability must be below 1 - 1/65536, got {p}")
    per_word = 64 // bits
    words = torch.empty((numel + per_word - 1) // per_word, dtype=torch.int64, device=device).random_(-(2**63), None)
    values = words.view(torch.int8 if bits == 8 else torch.int16)[:numel]  # uniform on [-levels/2, levels/2)
    cut = threshold - levels // 2  # keep iff value >= cut: P(keep) = 1 - threshold / levels
    # value - (cut - 1) is an integer, >= 1 when kept and <= 0 when dropped: clamped, exactly 1 or 0.
    return values.to(torch.float32).sub_(cut - 1).clamp_(0.0, 1.0).mul_(levels / (levels - threshold))


class MaskPool:
    """The dropout masks of one forward pass, handed out as consecutive slices of one random stream.

    :func:`use_pooled_dropout` opens the pool before each training forward pass of the encoder and
    closes it after. The pool remembers how many mask elements a pass over inputs of each shape took,
    so the next pass of that shape draws them all at once (one draw, one float conversion, then
    views). The first pass of a shape draws as it goes, keeping the unused lanes of the last word for
    the next mask; both ways give the same masks, because a mask is always the next elements of the
    same stream of random words. Nothing has to be counted by hand: any pooled module called while
    the pool is open is served.

    Args:
        p: drop probability of the masks (dropouts with another ``p`` draw their own).
    """

    def __init__(self, p: float) -> None:
        self.p = float(p)
        self._totals: dict[tuple, int] = {}  # input shape -> mask elements one pass took
        self._buffer: Tensor | None = None  # masks drawn in this pass; [_offset:] not yet handed out
        self._offset = 0
        self._taken = 0
        self._key: tuple | None = None  # the shape and device of the pass the pool is open for (None: closed)
        self._device = torch.device("cpu")

    @property
    def is_open(self) -> bool:
        return self._key is not None

    def open(self, inputs: Tensor) -> None:
        """Serve the dropouts of one forward pass over ``inputs`` (``(B, L)`` ids)."""
        key = (tuple(inputs.shape), inputs.device)
        total = self._totals.get(key)
        self._buffer = dropout_mask(total, self.p, inputs.device) if total else None
        self._offset = self._taken = 0
        self._device, self._key = inputs.device, key

    def close(self) -> None:
        """End the pass: remember how many mask elements it took."""
        if self._key is None:
            return
        if len(self._totals) > 4096:  # many shapes (e.g. no length bucketing): start over
            self._totals.clear()
        self._totals[self._key] = self._taken
        self._key, self._buffer = None, None

    def serves(self, module: nn.Module, p: float) -> bool:
        """Whether a pooled module in ``module``'s training mode with dropout ``p`` takes its mask from the pool now."""
        return self.is_open and module.training and p == self.p

    def take(self, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """The next mask of ``shape`` (fp32, ``0`` or ``1 / (1 - p')``)."""
        numel = math.prod(shape)
        buffer = self._buffer
        left = 0 if buffer is None else buffer.numel() - self._offset
        if numel > left:
            # Draw whole words only, so the stream continues where this draw stops.
            per_word = 64 // _bits(self.p)
            fresh = dropout_mask(-(-(numel - left) // per_word) * per_word, self.p, self._device)
            buffer = self._buffer = fresh if not left else torch.cat([buffer[self._offset :], fresh])
            self._offset = 0
        mask = buffer[self._offset : self._offset + numel].view(shape)
        self._offset += numel
        self._taken += numel
        return mask

    def __getstate__(self) -> dict:  # copies and pickles start closed and with no memory
        return {**self.__dict__, "_totals": {}, "_buffer": None, "_offset": 0, "_taken": 0, "_key": None}


class PooledDropout(nn.Dropout):
    """``nn.Dropout`` that takes its mask from its pool while the pool serves it."""

    def __init__(self, p: float, pool: MaskPool) -> None:
        super().__init__(p)
        self.pool = pool

    def forward(self, x: Tensor) -> Tensor:
        """Any shape -> same shape."""
        if not self.pool.serves(self, self.p):
            return super().forward(x)
        return x * self.pool.take(x.shape)


class PooledResidual(Residual):
    """:class:`~sasrec_lightning.model.encoder.Residual` as one ``addcmul`` with the pool's mask."""

    pool: MaskPool

    def forward(self, x: Tensor, update: Tensor) -> Tensor:
        if not self.pool.serves(self, self.dropout.p):
            return super().forward(x, update)
        mask = self.pool.take(update.shape)
        return torch.addcmul(x, update, mask) if self.enabled else update * mask  # x + update * mask in one op


class PooledAttention(CausalSelfAttention):
    """Attention written out while the pool serves it (SDPA's dropout cannot take the pool's masks).

    On CPU, SDPA with dropout is its unfused math path plus a Bernoulli mask: ~3 ms slower per
    Amazon step than the written-out attention with a pooled mask.
    """

    pool: MaskPool

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        if not self.pool.serves(self, self.dropout.p):
            return super().attend(q, k, v, mask)
        return self.explicit_attention(q, k, v, mask)[0]


def _swap_class(module: nn.Module, cls: type[nn.Module], **attributes: Any) -> None:
    """Make ``module`` an instance of ``cls``, a subclass of its class that adds only behaviour (same state)."""
    if not isinstance(module, cls):
        if not issubclass(cls, type(module)):
            raise TypeError(f"{cls.__name__} does not extend {type(module).__name__}")
        module.__class__ = cls
    for name, value in attributes.items():
        setattr(module, name, value)


def use_pooled_dropout(encoder: SASRec) -> MaskPool | None:
    """Swap the encoder's dropouts for pooled ones and open the pool around its training passes.

    Every ``nn.Dropout`` becomes a :class:`PooledDropout`, every residual connection a
    :class:`PooledResidual` and every attention a :class:`PooledAttention`, all sharing one
    :class:`MaskPool` of the encoder's dropout rate (no state changes: the state dict is the same).
    A second call does nothing.

    Returns:
        The pool, or ``None`` when the rate gives nothing to draw (``0``) or cannot be drawn with the
        cheap bits (``p`` within ``2^-16`` of 1).
    """
    if getattr(encoder, "dropout_pool", None) is not None:
        return encoder.dropout_pool
    p = encoder.options.dropout
    if not 0.0 < p or round(p * (1 << _bits(p))) >= (1 << _bits(p)):
        return None
    pool = MaskPool(p)
    for parent in list(encoder.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, PooledDropout(child.p, pool))
    for module in encoder.modules():
        if isinstance(module, Residual):
            _swap_class(module, PooledResidual, pool=pool)
        elif isinstance(module, CausalSelfAttention):
            _swap_class(module, PooledAttention, pool=pool)
    encoder.dropout_pool = pool
    encoder.register_forward_pre_hook(_opener(pool))
    encoder.register_forward_hook(lambda module, inputs, output: pool.close())
    return pool


def _opener(pool: MaskPool) -> Callable:
    def open_for_training(module: nn.Module, inputs: tuple) -> None:
        pool.close()  # a pass that raised left it open
        if module.training:
            pool.open(inputs[0])

    return open_for_training
