"""Inverted dropout with a cheaper random mask than ``torch.bernoulli`` on CPU.

SASRec on short sequences spends a surprising share of a CPU training step generating dropout
masks: ``nn.Dropout`` calls ``bernoulli_``, which on CPU costs about 3-4x as much per element as
``torch.rand`` (measured in ``docs/performance.md``). Here each element gets 16 random bits, four per
64-bit draw of the generator (a quarter of the generator calls of ``torch.rand``), or 8 bits when
``p`` is a multiple of 1/256 (eight per draw): an element is kept when its value is at or above
``round(p * 2^b)``, i.e. with probability ``1 - p'`` where ``p' = round(p * 2^b) / 2^b`` is ``p`` to
within ``1 / 131072`` (exactly ``p`` for multiples of 1/256 such as 0.5), and kept values are scaled
by ``1 / (1 - p')`` so the expectation is exactly preserved. The random bits come from the torch
generator, so ``torch.manual_seed`` and the saved RNG state govern them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["dropout", "dropout_mask", "DropoutMasks", "FastDropout"]


def dropout_mask(numel: int, p: float, device: torch.device | str | None = None) -> Tensor:
    """A flat inverted-dropout mask: ``numel`` fp32 values, ``1 / (1 - p')`` where kept and 0 where dropped.

    Each element gets ``b`` random bits: 8 when ``p`` is a multiple of 1/256 (0.5, 0.25, ...; then
    ``p' = p`` exactly), else 16 (``p'`` is ``p`` rounded to a multiple of 1/65536). The mask is
    built with float ops only (bool masks and mixed-dtype multiplies are ~4x slower on CPU).

    Args:
        numel: number of elements.
        p: drop probability in ``[0, 1)``.
        device: where to build it.

    Returns:
        ``(numel,)`` float32.
    """
    bits = 8 if float(p * 256).is_integer() else 16
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


class DropoutMasks:
    """Every dropout mask of one forward pass, drawn at once and handed out in order.

    A SASRec step on short sequences applies ~7 small dropouts; drawing them separately costs ~5
    small ops each (``docs/performance.md``). This draws one flat mask for all of them and hands
    out views, so each dropout is then a single multiply (or an ``addcmul`` with the residual).

    Args:
        numel: total elements of all masks to be taken.
        p: drop probability shared by the masks.
        device: where to build them.
    """

    def __init__(self, numel: int, p: float, device: torch.device | str | None = None) -> None:
        self.p = float(p)
        self.buffer = dropout_mask(numel, p, device)
        self.offset = 0

    def take(self, shape: tuple[int, ...], p: float) -> Tensor:
        """The next mask of ``shape`` (``p`` must be the masks' probability; else a fresh mask is drawn)."""
        numel = math.prod(shape)
        if p != self.p or self.offset + numel > self.buffer.numel():
            return dropout_mask(numel, p, self.buffer.device).view(shape)
        mask = self.buffer[self.offset : self.offset + numel].view(shape)
        self.offset += numel
        return mask


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``x * mask / (1 - p)`` with ``mask ~ Bernoulli(1 - p)`` elementwise; identity when not training.

    Args:
        x: any shape.
        p: drop probability in ``[0, 1)``.
        training: apply dropout (``False``: return ``x``).

    Returns:
        Tensor of ``x``'s shape and dtype.
    """
    if not training or p == 0.0:
        return x
    return x * dropout_mask(x.numel(), p, x.device).view(x.shape).to(x.dtype)


class FastDropout(nn.Module):
    """Drop-in for :class:`torch.nn.Dropout` (same semantics, no parameters, same state dict).

    Args:
        p: drop probability in ``[0, 1)``.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        """Any shape -> same shape."""
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
