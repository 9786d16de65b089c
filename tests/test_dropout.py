"""``dropout.py``: masks with the distribution of ``nn.Dropout`` from 8 or 16 random bits, and the mask pool."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from sasrec_lightning.errors import OptionError
from sasrec_lightning.fast.dropout import (
    MaskPool,
    PooledAttention,
    PooledDropout,
    PooledResidual,
    dropout_mask,
    use_pooled_dropout,
)
from sasrec_lightning.fast.speed import SpeedOptions, apply_speed_parts
from sasrec_lightning.model.encoder import SASRec
from sasrec_lightning.model.options import EncoderOptions


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 0.9])
def test_keep_rate_and_mean_match_nn_dropout(p):
    torch.manual_seed(0)
    mask = dropout_mask(1_000_000, p)
    kept = mask != 0
    assert kept.float().mean().item() == pytest.approx(1 - p, abs=0.003)  # ~6 standard deviations
    assert mask.mean().item() == pytest.approx(1.0, abs=0.01)  # inverted dropout keeps the expectation
    scale = mask[kept].unique()
    assert scale.numel() == 1 and scale.item() == pytest.approx(1 / (1 - p), rel=1e-4)


@pytest.mark.parametrize("p, lanes", [(0.5, 8), (0.3, 4)])  # 8-bit lanes for multiples of 1/256, else 16-bit
def test_the_lanes_of_a_draw_are_unbiased_and_independent(p, lanes):
    # Several elements share one 64-bit draw. A lane with a fixed bit (e.g. a sign bit that is always 0)
    # would keep far more or fewer elements than the others; lanes copying (or complementing) each
    # other's bits would keep together (or apart) far more often than (1 - p)^2.
    torch.manual_seed(1)
    kept = (dropout_mask(800_000, p) != 0).view(-1, lanes).float()  # (words, lanes)
    rates = kept.mean(dim=0)
    assert torch.allclose(rates, torch.full((lanes,), 1 - p), atol=0.006), rates
    both = kept.T @ kept / kept.size(0)  # (lanes, lanes): share of words keeping lanes i and j
    off_diagonal = both[~torch.eye(lanes, dtype=torch.bool)]
    assert torch.allclose(off_diagonal, torch.full_like(off_diagonal, (1 - p) ** 2), atol=0.006), both


def test_masks_follow_the_torch_seed():
    torch.manual_seed(5)
    first = dropout_mask(77, 0.4)  # an element count that is not a multiple of 4
    torch.manual_seed(5)
    assert torch.equal(dropout_mask(77, 0.4), first)
    assert not torch.equal(dropout_mask(77, 0.4), first)  # the generator moved on
    with pytest.raises(ValueError, match="dropout probability must be below"):
        dropout_mask(4, 1.0)


def test_pool_hands_out_consecutive_slices_of_one_stream_and_remembers_the_total():
    pool = MaskPool(0.5)
    inputs = torch.zeros(2, 3, dtype=torch.long)
    torch.manual_seed(2)
    pool.open(inputs)
    first, second = pool.take((2, 5)), pool.take((3, 2))  # 10 + 6 elements, drawn as they are asked for
    pool.close()
    torch.manual_seed(2)
    reference = dropout_mask(16, 0.5)
    torch.testing.assert_close(torch.cat([first.flatten(), second.flatten()]), reference, rtol=0, atol=0)
    assert set(reference.unique().tolist()) <= {0.0, 2.0}
    assert pool._totals == {((2, 3), inputs.device): 16}
    torch.manual_seed(2)
    pool.open(inputs)  # the remembered total is drawn at once: the same stream
    again = pool.take((16,))
    torch.testing.assert_close(again, reference, rtol=0, atol=0)
    extra = pool.take((4,))  # more than the remembered total: drawn on, not an error
    pool.close()
    assert extra.shape == (4,) and pool._totals[((2, 3), inputs.device)] == 20


def test_pooled_modules_take_from_the_pool_only_while_it_is_open_in_training_and_at_its_rate():
    pool = MaskPool(0.5)
    dropout = PooledDropout(0.5, pool).train()
    other_rate = PooledDropout(0.2, pool).train()
    assert not pool.serves(dropout, dropout.p)  # closed
    pool.open(torch.zeros(1, 1, dtype=torch.long))
    assert pool.serves(dropout, dropout.p)
    assert not pool.serves(other_rate, other_rate.p)  # another probability draws its own mask
    assert not pool.serves(dropout.eval(), dropout.p)
    pool.close()
    with pytest.raises(OptionError, match=r"--model.speed.pooled_dropout 'yes': expected one of True, False, 'auto'"):
        SpeedOptions(pooled_dropout="yes")


def _encoder(dropout: float) -> SASRec:
    torch.manual_seed(0)
    return SASRec(num_items=9, max_len=4, options=EncoderOptions(hidden_size=8, num_blocks=2, dropout=dropout))


def test_use_pooled_dropout_swaps_every_dropout_and_keeps_the_state():
    encoder = _encoder(0.25)
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    dropouts = sum(type(m) is torch.nn.Dropout for m in encoder.modules())
    pool = use_pooled_dropout(encoder)
    assert pool is not None and pool.p == 0.25 and use_pooled_dropout(encoder) is pool  # a second call: nothing
    assert sum(isinstance(m, PooledDropout) for m in encoder.modules()) == dropouts > 0
    assert not any(type(m) is torch.nn.Dropout for m in encoder.modules())
    assert sum(isinstance(m, PooledResidual) for m in encoder.modules()) == 4  # 2 blocks x 2 sub-layers
    assert sum(isinstance(m, PooledAttention) for m in encoder.modules()) == 2
    assert (all(torch.equal(v, state[k]) for k, v in encoder.state_dict().items())
            and state.keys() == encoder.state_dict().keys())
    assert use_pooled_dropout(_encoder(0.0)) is None  # nothing to draw
    plain = _encoder(0.25)
    apply_speed_parts(plain, torch.nn.Module(), SpeedOptions(pooled_dropout=False), torch.device("cpu"))
    assert not any(isinstance(m, PooledDropout) for m in plain.modules())
    auto = _encoder(0.25)
    assert "pooled_dropout" in apply_speed_parts(auto, torch.nn.Module(), SpeedOptions(), torch.device("cpu"))
    assert any(isinstance(m, PooledDropout) for m in auto.modules())  # auto: on for CPU


def test_pooled_modules_are_the_plain_ones_outside_a_pool():
    x = torch.ones(1000)
    pool = MaskPool(0.3)
    dropout = PooledDropout(0.3, pool)
    torch.manual_seed(3)
    plain = dropout(x)
    torch.manual_seed(3)
    assert torch.equal(plain, torch.nn.Dropout(0.3)(x))
    assert torch.equal(dropout.eval()(x), x)
    pool.open(torch.zeros(1, 1))
    assert torch.equal(dropout(x), x)  # eval: identity, nothing taken
    assert pool._taken == 0
    pool.close()
    pooled, reference = _encoder(0.3), _encoder(0.3)
    use_pooled_dropout(pooled)
    ids = torch.tensor([[0, 3, 4, 5], [1, 2, 8, 9]])
    pooled.eval(), reference.eval()  # evaluation: the pool stays closed, the swapped modules are the plain ones
    torch.testing.assert_close(pooled(ids), reference(ids), rtol=0, atol=0)
    assert not pooled.dropout_pool.is_open


def test_the_pooled_residual_is_x_plus_masked_update_and_plain_outside_the_pool():
    encoder = _encoder(0.5)
    pool = use_pooled_dropout(encoder)
    residual = next(m for m in encoder.modules() if isinstance(m, PooledResidual))
    residual.train()
    x, update = torch.randn(4, 5), torch.randn(4, 5)
    torch.manual_seed(4)
    pool.open(torch.zeros(1, 1))
    fused = residual(x, update)
    pool.close()
    torch.manual_seed(4)
    torch.testing.assert_close(fused, x + update * dropout_mask(20, 0.5).view(4, 5))
    torch.manual_seed(4)
    plain = residual(x, update)  # no pool: x + nn.Dropout(update)
    torch.manual_seed(4)
    torch.testing.assert_close(plain, x + torch.nn.functional.dropout(update, 0.5))


def test_pool_copies_start_closed_and_empty():
    encoder = _encoder(0.5).train()
    pool = use_pooled_dropout(encoder)
    encoder(torch.tensor([[0, 3, 4, 5], [1, 2, 8, 9]]))
    assert pool._totals != {}
    for clone in (copy.deepcopy(pool), pickle.loads(pickle.dumps(pool))):
        assert clone._totals == {} and clone.p == 0.5 and not clone.is_open and clone._buffer is None
