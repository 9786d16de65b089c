"""The CPU speed-ups compute the plain PyTorch model: pooled dropout against ``nn.Dropout`` + SDPA."""

from __future__ import annotations

import pytest
import torch

from sasrec_lightning import SASRec
from sasrec_lightning.fast import dropout as dropout_module
from sasrec_lightning.fast.dropout import PooledDropout, use_pooled_dropout
from sasrec_lightning.model.options import EncoderOptions

ROWS = torch.tensor([[0, 0, 0, 3, 7, 1], [0, 5, 5, 8, 2, 9], [0, 0, 0, 0, 0, 11], [1, 2, 3, 4, 5, 6]])  # (4, 6)


def pair(dropout: float, plain_dropout: float | None = None, **options) -> tuple[SASRec, SASRec]:
    """The same weights twice: the pooled-dropout encoder and the plain one (``nn.Dropout``, SDPA).

    The plain one is what ``SASRec`` builds; the pooled one is the same model after ``use_pooled_dropout``
    (what ``speed.pooled_dropout`` applies at fit start).
    """
    torch.manual_seed(0)
    options = {"hidden_size": 16, "num_blocks": 2, "num_heads": 2, **options}
    pooled = SASRec(12, 6, EncoderOptions(dropout=dropout, **options)).train()
    assert use_pooled_dropout(pooled) is not None
    plain_dropout = dropout if plain_dropout is None else plain_dropout
    plain = SASRec(12, 6, EncoderOptions(dropout=plain_dropout, **options)).train()
    assert not any(isinstance(module, PooledDropout) for module in plain.modules())
    plain.load_state_dict(pooled.state_dict())
    return pooled, plain


def loss_of(encoder: SASRec) -> torch.Tensor:
    hidden = encoder(ROWS)  # (B, L, d)
    return encoder.score_all(hidden[ROWS != 0]).logsumexp(-1).mean()


@pytest.mark.parametrize("options", [{}, {"num_heads": 1}, {"use_residual": False}],
                         ids=["two_heads", "one_head", "no_residual"])
def test_without_dropping_both_paths_give_the_same_outputs_and_gradients(options, monkeypatch):
    """Pool masks that keep everything against dropout 0 (explicit attention and addcmul vs SDPA and +)."""
    pooled, plain = pair(0.25, plain_dropout=0.0, **options)
    taken = []
    monkeypatch.setattr(dropout_module, "dropout_mask",
                        lambda numel, p, device=None: taken.append(numel) or torch.ones(numel, device=device))
    losses = [loss_of(encoder) for encoder in (pooled, plain)]
    assert taken  # the pooled path really ran on pool masks
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for encoder in (pooled, plain):
        encoder.zero_grad()
    for loss in losses:
        loss.backward()
    for (name, a), (_, b) in zip(pooled.named_parameters(), plain.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_with_dropout_both_paths_give_the_same_loss_distribution_and_keep_rate():
    p = 0.3
    pooled, plain = pair(p)
    stats = {}
    for name, encoder in (("pooled", pooled), ("plain", plain)):
        dropped, seen, scales = [], [], []

        def record(module, inputs, output, dropped=dropped, seen=seen, scales=scales):
            real = inputs[0] != 0
            kept = real & (output != 0)
            dropped.append(int((output[real] == 0).sum()))
            seen.append(int(real.sum()))
            scales.append((output[kept] / inputs[0][kept]).mean().item())

        handle = encoder.embedding_dropout.register_forward_hook(record)
        torch.manual_seed(1)
        with torch.no_grad():
            losses = torch.stack([loss_of(encoder) for _ in range(400)])
        handle.remove()
        stats[name] = (losses.mean().item(), losses.std().item(), sum(dropped) / sum(seen))
        assert sum(scales) / len(scales) == pytest.approx(1 / (1 - p), rel=1e-4), name  # inverted dropout
    (mean_a, std_a, drop_a), (mean_b, std_b, drop_b) = stats["pooled"], stats["plain"]
    standard_error = (std_a**2 / 400 + std_b**2 / 400) ** 0.5
    assert abs(mean_a - mean_b) < 4 * standard_error, stats
    assert std_a == pytest.approx(std_b, rel=0.2), stats
    assert drop_a == pytest.approx(p, abs=0.01) and drop_b == pytest.approx(p, abs=0.01), stats
    # Dropout does something: the loss varies from pass to pass, unlike in eval mode.
    assert std_a > 0 and std_b > 0
