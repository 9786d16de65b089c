"""Training losses on the hidden states of non-padded positions.

Every loss takes the hidden states already gathered at real positions, so no work is spent on
padding, and computes in fp32 even under mixed precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .encoder import SASRec

__all__ = ["bce_loss", "LOSSES"]


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
        positive = encoder.score_items(hidden, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
        negative = encoder.score_items(hidden, negatives)  # (N, k)
        # softplus(-x) = -log sigma(x); softplus(x) = -log(1 - sigma(x)), both numerically stable.
        return F.softplus(-positive).mean() + F.softplus(negative).mean(dim=-1).mean()


LOSSES = {"bce": bce_loss}
