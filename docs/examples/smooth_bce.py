"""A loss written outside the package: the paper's BCE with label smoothing.

Choose it from a config by class path (``docs/examples/smooth_bce.yaml``), with this folder on
``PYTHONPATH`` so that ``smooth_bce`` can be imported::

    PYTHONPATH=docs/examples sasrec-lightning fit -c configs/quickstart.yaml -c docs/examples/smooth_bce.yaml

The test suite runs exactly that (``tests/test_worked_examples.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sasrec_lightning.model.losses import Loss


class SmoothBCE(Loss):
    """Binary cross-entropy of the next item against the batch's negatives, with smoothed labels.

    Args:
        smoothing: the positive's label is ``1 - smoothing`` and each negative's ``smoothing``.
    """

    needs_negatives = True  # the data module draws `data.loader.num_negatives` negatives per position

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= smoothing < 0.5:
            raise ValueError(f"--model.loss.smoothing {smoothing!r}: expected a number in [0, 0.5)")
        self.save_hyperparameters()  # the checkpoint stores {class_path, init_args} and rebuilds it
        self.smoothing = smoothing

    def forward(self, items, hidden: Tensor, targets: Tensor, negatives: Tensor,
                generator: torch.Generator | None = None, rows: Tensor | None = None) -> Tensor:
        hidden = hidden.float()  # (N, d) real positions
        positive = (hidden * items(targets).float()).sum(-1)  # (N,)
        negative = (hidden.unsqueeze(1) * items(negatives).float()).sum(-1)  # (N, k)
        positive_loss = F.binary_cross_entropy_with_logits(positive, torch.full_like(positive, 1 - self.smoothing))
        negative_loss = F.binary_cross_entropy_with_logits(negative, torch.full_like(negative, self.smoothing))
        return positive_loss + negative_loss
