"""``dropout.FastDropout``: the distribution of ``nn.Dropout`` from 8 or 16 random bits per element."""

from __future__ import annotations

import pytest
import torch

from sasrec_lightning.dropout import DropoutMasks, FastDropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_keep_rate_and_mean_match_nn_dropout(p):
    torch.manual_seed(0)
    out = dropout(torch.ones(1_000_000), p)
    kept = out != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.003)  # ~6 standard deviations
    assert out.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted dropout keeps the expectation
    scale = out[kept].unique()
    assert scale.numel() == 1 and scale.item() == pytest.approx(1 / (1 - p), rel=1e-4)


@pytest.mark.parametrize("p, lanes", [(0.5, 8), (0.3, 4)])  # 8-bit lanes for multiples of 1/256, else 16-bit
def test_every_lane_of_a_draw_is_unbiased(p, lanes):
    # Several elements share one 64-bit draw; a lane with a fixed bit (e.g. a sign bit that is always 0)
    # would keep far more or fewer elements than the others.
    torch.manual_seed(1)
    kept = dropout(torch.ones(800_000), p) != 0
    rates = kept.view(-1, lanes).float().mean(dim=0)
    assert torch.allclose(rates, torch.full((lanes,), 1 - p), atol=0.006), rates


def test_shared_masks_hand_out_consecutive_views_and_fall_back_when_exhausted():
    torch.manual_seed(2)
    masks = DropoutMasks(10 + 6, 0.5)
    first, second = masks.take((2, 5), 0.5), masks.take((3, 2), 0.5)
    torch.testing.assert_close(torch.cat([first.flatten(), second.flatten()]), masks.buffer)
    assert set(masks.buffer.unique().tolist()) <= {0.0, 2.0}
    extra = masks.take((4,), 0.5)  # beyond the buffer: a fresh mask, not an error
    assert extra.shape == (4,) and set(extra.unique().tolist()) <= {0.0, 2.0}
    other = masks.take((1000,), 0.2)  # another probability: its own mask
    values = other.unique()
    assert values[0] == 0.0 and values[1].item() == pytest.approx(1 / (1 - 13107 / 65536)) and len(values) == 2


def test_identity_when_not_training_or_p_zero_and_dtype_kept():
    x = torch.randn(3, 5, 7)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    module = FastDropout(0.3).eval()
    assert module(x) is x
    assert dropout(x.bfloat16(), 0.3).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dropout probability"):
        FastDropout(1.0)


def test_masks_follow_the_torch_seed():
    x = torch.ones(7, 11)  # an element count that is not a multiple of 4
    torch.manual_seed(5)
    first = dropout(x, 0.4)
    torch.manual_seed(5)
    assert torch.equal(dropout(x, 0.4), first)
    assert not torch.equal(dropout(x, 0.4), first)  # the generator moved on
