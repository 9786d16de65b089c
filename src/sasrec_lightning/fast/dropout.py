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
* **one draw per forward pass** (:class:`MaskPool`): the encoder opens a pool once per training
  forward pass; every :class:`PooledDropout` called inside takes its mask as the next slice of one
  stream of such bits, so a dropout is a single multiply (or, with :func:`add_dropout`, one
  ``addcmul`` with its residual).

The pool is the encoder's one switch (``pooled_dropout``): ``auto`` opens it on CPU only, where it
pays; elsewhere (and with the switch off) :class:`PooledDropout` *is* ``nn.Dropout`` and attention
dropout runs inside SDPA.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["dropout_mask", "MaskPool", "PooledDropout", "add_dropout", "pooled"]

# The pool of the forward pass running in this thread (None: no pool open, plain dropout).
_OPEN_POOL: contextvars.ContextVar[MaskPool | None] = contextvars.ContextVar("sasrec_mask_pool", default=None)


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

    The encoder opens a :meth:`session` per training forward pass. The pool remembers how many
    mask elements a pass over inputs of each shape took, so the next pass of that shape draws them
    all at once (one draw, one float conversion, then views). The first pass of a shape draws as
    it goes, keeping the unused lanes of the last word for the next mask; both ways give the same
    masks, because a mask is always the next elements of the same stream of random words. Nothing
    has to be counted by hand: any :class:`PooledDropout` called inside the session is served.

    Args:
        p: drop probability of the masks (dropouts with another ``p`` draw their own).
        enabled: ``True``/``False``, or ``"auto"``: only for inputs on the CPU.
    """

    def __init__(self, p: float, enabled: bool | Literal["auto"] = "auto") -> None:
        if enabled not in (True, False, "auto"):
            raise ValueError(f"pooled_dropout must be true, false or 'auto', got {enabled!r}")
        self.p = float(p)
        self.enabled = enabled
        self._totals: dict[tuple, int] = {}  # input shape -> mask elements one pass took
        self._buffer: Tensor | None = None  # masks drawn in this session; [_offset:] not yet handed out
        self._offset = 0
        self._taken = 0
        self._device = torch.device("cpu")

    def usable(self, device: torch.device) -> bool:
        """Whether a session on ``device`` would open (the switch, and a ``p`` the cheap bits can represent)."""
        on = device.type == "cpu" if self.enabled == "auto" else self.enabled
        return on and 0.0 < self.p and round(self.p * (1 << _bits(self.p))) < (1 << _bits(self.p))

    @contextlib.contextmanager
    def session(self, inputs: Tensor, training: bool) -> Iterator[None]:
        """Serve the dropouts of one forward pass over ``inputs`` (no-op unless training and usable)."""
        if not training or _OPEN_POOL.get() is self or not self.usable(inputs.device):
            yield
            return
        key = (tuple(inputs.shape), inputs.device)
        total = self._totals.get(key)
        self._buffer = dropout_mask(total, self.p, inputs.device) if total else None
        self._offset = self._taken = 0
        self._device = inputs.device
        token = _OPEN_POOL.set(self)
        try:
            yield
            if len(self._totals) > 4096:  # many shapes (e.g. no length bucketing): start over
                self._totals.clear()
            self._totals[key] = self._taken
        finally:
            _OPEN_POOL.reset(token)
            self._buffer = None

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

    def __getstate__(self) -> dict:  # copies and pickles start with no session and no memory
        return {"p": self.p, "enabled": self.enabled, "_totals": {}, "_buffer": None, "_offset": 0, "_taken": 0,
                "_device": torch.device("cpu")}


class PooledDropout(nn.Dropout):
    """``nn.Dropout`` that takes its mask from the open :class:`MaskPool` while training, if there is one."""

    def forward(self, x: Tensor) -> Tensor:
        """Any shape -> same shape."""
        pool = _OPEN_POOL.get()
        if pool is None or not self.training or self.p != pool.p:
            return super().forward(x)
        return x * pool.take(x.shape)


def pooled(dropout: nn.Module) -> bool:
    """Whether ``dropout`` draws from an open mask pool right now (the encoder then skips SDPA)."""
    pool = _OPEN_POOL.get()
    return pool is not None and isinstance(dropout, PooledDropout) and dropout.training and dropout.p == pool.p


def add_dropout(x: Tensor, update: Tensor, dropout: nn.Module) -> Tensor:
    """``x + dropout(update)``; one ``addcmul`` when the mask comes from the pool."""
    if pooled(dropout):
        return torch.addcmul(x, update, _OPEN_POOL.get().take(update.shape))  # x + update * mask in one op
    return x + dropout(update)
