"""``dropout.py``: masks with the distribution of ``nn.Dropout`` from 8 or 16 random bits, and the mask pool."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from sasrec_lightning.fast.dropout import MaskPool, PooledDropout, add_dropout, dropout_mask, pooled


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
    pool = MaskPool(0.5, enabled=True)
    inputs = torch.zeros(2, 3, dtype=torch.long)
    torch.manual_seed(2)
    with pool.session(inputs, training=True):
        first, second = pool.take((2, 5)), pool.take((3, 2))  # 10 + 6 elements, drawn as they are asked for
    torch.manual_seed(2)
    reference = dropout_mask(16, 0.5)
    torch.testing.assert_close(torch.cat([first.flatten(), second.flatten()]), reference, rtol=0, atol=0)
    assert set(reference.unique().tolist()) <= {0.0, 2.0}
    assert pool._totals == {((2, 3), inputs.device): 16}
    with pool.session(inputs, training=True):
        pool.take((16,))
        extra = pool.take((4,))  # more than the remembered total: drawn on, not an error
    assert extra.shape == (4,) and pool._totals[((2, 3), inputs.device)] == 20


def test_pool_opens_only_for_training_on_a_usable_device_and_p():
    inputs = torch.zeros(1, 1, dtype=torch.long)
    dropout = PooledDropout(0.5).train()
    for pool, training in [(MaskPool(0.5, True), False), (MaskPool(0.5, False), True), (MaskPool(0.0, True), True)]:
        with pool.session(inputs, training):
            assert not pooled(dropout)
    with MaskPool(0.5, "auto").session(inputs, True):  # auto: on for CPU inputs
        assert pooled(dropout)
        assert not pooled(PooledDropout(0.2).train())  # another probability draws its own mask
        assert not pooled(torch.nn.Dropout(0.5).train())
    assert not pooled(dropout)  # closed again
    with pytest.raises(ValueError, match="pooled_dropout must be true, false or 'auto'"):
        MaskPool(0.5, "yes")


def test_pooled_dropout_is_nn_dropout_outside_a_pool():
    x = torch.ones(1000)
    dropout = PooledDropout(0.3)
    torch.manual_seed(3)
    plain = dropout(x)
    torch.manual_seed(3)
    assert torch.equal(plain, torch.nn.Dropout(0.3)(x))
    assert torch.equal(dropout.eval()(x), x)
    pool = MaskPool(0.3, True)
    with pool.session(torch.zeros(1, 1), training=True):
        assert torch.equal(dropout(x), x)  # eval: identity, nothing taken
        assert pool._taken == 0


def test_add_dropout_is_x_plus_dropout_update_in_and_out_of_the_pool():
    x, update = torch.randn(4, 5), torch.randn(4, 5)
    dropout = PooledDropout(0.5).train()
    pool = MaskPool(0.5, True)
    torch.manual_seed(4)
    with pool.session(torch.zeros(1, 1), training=True):
        fused = add_dropout(x, update, dropout)
    torch.manual_seed(4)
    torch.testing.assert_close(fused, x + update * dropout_mask(20, 0.5).view(4, 5))
    torch.manual_seed(4)
    plain = add_dropout(x, update, dropout)  # no pool: x + nn.Dropout(update)
    torch.manual_seed(4)
    torch.testing.assert_close(plain, x + torch.nn.functional.dropout(update, 0.5))


def test_a_failed_pass_is_not_remembered_and_copies_start_empty():
    pool = MaskPool(0.5, True)
    inputs = torch.zeros(3, 2, dtype=torch.long)
    with pytest.raises(RuntimeError, match="boom"), pool.session(inputs, training=True):
        pool.take((5,))
        raise RuntimeError("boom")
    assert pool._totals == {} and pool._buffer is None
    with pool.session(inputs, training=True):
        pool.take((6,))
    for clone in (copy.deepcopy(pool), pickle.loads(pickle.dumps(pool))):
        assert clone._totals == {} and clone.p == 0.5 and clone.enabled is True
