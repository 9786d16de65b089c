"""The SASRec encoder: causality, padding invariance, finiteness, ablation switches, attention weights."""

from __future__ import annotations

import pytest
import torch

from sasrec_lightning import SASRec
from sasrec_lightning.errors import OptionError
from sasrec_lightning.fast.dropout import use_pooled_dropout
from sasrec_lightning.model.options import EncoderOptions

NUM_ITEMS, MAX_LEN = 20, 8


def make_encoder(pooled_dropout: bool = False, **kwargs) -> SASRec:
    """The plain encoder, or with ``pooled_dropout`` the same one with the pooled dropout swapped in."""
    torch.manual_seed(0)
    options = {"hidden_size": 16, "num_blocks": 2, "num_heads": 2, "dropout": 0.3, **kwargs}
    encoder = SASRec(NUM_ITEMS, MAX_LEN, EncoderOptions(**options)).eval()
    if pooled_dropout:
        assert use_pooled_dropout(encoder) is not None
    return encoder


def left_pad(rows: list[list[int]], width: int) -> torch.Tensor:
    return torch.tensor([[0] * (width - len(row)) + row for row in rows])


ROWS = [[3, 7, 1, 9, 4, 2], [5, 5, 8], [11], [1, 2, 3, 4, 5, 6, 7, 8]]


@pytest.mark.parametrize("t", range(MAX_LEN))
def test_future_items_never_change_earlier_outputs(t):
    encoder = make_encoder()
    ids = torch.randint(1, NUM_ITEMS + 1, (4, MAX_LEN), generator=torch.Generator().manual_seed(t))
    changed = ids.clone()
    changed[:, t + 1 :] = torch.randint(1, NUM_ITEMS + 1, changed[:, t + 1 :].shape)
    changed[:, t + 1 :] = torch.where(changed[:, t + 1 :] == ids[:, t + 1 :], changed[:, t + 1 :] % NUM_ITEMS + 1,
                                      changed[:, t + 1 :])
    with torch.no_grad():
        before, after = encoder(ids), encoder(changed)
    torch.testing.assert_close(before[:, : t + 1], after[:, : t + 1], rtol=0, atol=1e-6)
    if t + 1 < MAX_LEN:
        assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])  # the change is visible later


def test_more_left_padding_never_changes_real_positions():
    encoder = make_encoder()
    with torch.no_grad():
        reference = encoder(left_pad(ROWS, MAX_LEN))  # padded to max_len
        for width in (len(max(ROWS, key=len)),):  # padded only to the longest row
            narrow = encoder(left_pad(ROWS, width))
            torch.testing.assert_close(narrow, reference[:, -width:], rtol=0, atol=1e-5)
        for row in ROWS:  # every row alone, padded only to its own length, then more
            for width in range(len(row), MAX_LEN + 1):
                alone = encoder(left_pad([row], width))[0, -len(row) :]
                torch.testing.assert_close(alone, reference[ROWS.index(row), -len(row) :], rtol=0, atol=1e-5)


def test_padding_in_the_batch_never_leaks_into_real_positions():
    encoder = make_encoder()
    ids = left_pad(ROWS, MAX_LEN)
    with torch.no_grad():
        reference = encoder(ids)
        # Item embedding of the padding row is irrelevant: perturb it and nothing real changes.
        encoder.items.embedding.weight[0].normal_()
        perturbed = encoder(ids)
    real = ids != 0
    torch.testing.assert_close(perturbed[real], reference[real], rtol=0, atol=1e-6)


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_fully_padded_rows_are_finite(training, pooled):
    encoder = make_encoder(pooled_dropout=pooled)
    encoder.train(training)
    ids = torch.cat([left_pad(ROWS, MAX_LEN), torch.zeros(2, MAX_LEN, dtype=torch.long)])
    hidden = encoder(ids)
    assert torch.isfinite(hidden).all()
    hidden.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)
    with torch.no_grad():
        assert torch.isfinite(encoder(torch.zeros(3, 1, dtype=torch.long))).all()


ABLATIONS = {
    "no_positions": {"use_positional": False},
    "unshared_embeddings": {"share_item_embedding": False},
    "no_residual": {"use_residual": False},
    "zero_blocks": {"num_blocks": 0},
    "multi_head": {"num_heads": 4},
    "one_head": {"num_heads": 1},
}


@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_switches_construct_run_and_train(name, pooled):
    encoder = make_encoder(pooled_dropout=pooled, **ABLATIONS[name]).train()
    ids = left_pad(ROWS, MAX_LEN)
    hidden = encoder(ids)  # (B, L, d)
    assert hidden.shape == (len(ROWS), MAX_LEN, 16) and torch.isfinite(hidden).all()
    scores = encoder.score_all(hidden[:, -1])  # (B, I + 1)
    assert scores.shape == (len(ROWS), NUM_ITEMS + 1)
    picked = encoder.score_items(hidden[:, -1], torch.tensor([[1, 2]] * len(ROWS)))  # (B, 2)
    torch.testing.assert_close(picked, scores[:, 1:3])
    scores.sum().backward()
    assert encoder.items.embedding.weight.grad is not None
    if name == "unshared_embeddings":
        assert encoder.output_weight is not encoder.items.embedding.weight
        assert encoder.output_weight is encoder.output_items.embedding.weight
        assert encoder.output_items.embedding.weight.grad is not None
    else:
        assert encoder.output_items is None and encoder.output_weight is encoder.items.embedding.weight
    if name == "no_positions":
        assert encoder.position_embedding is None
    if name == "zero_blocks":
        assert len(encoder.blocks) == 0


def test_heads_must_divide_hidden_size():
    with pytest.raises(ValueError, match="divisible"):
        SASRec(NUM_ITEMS, MAX_LEN, EncoderOptions(hidden_size=10, num_heads=3))


def test_too_long_input_names_max_len():
    with pytest.raises(ValueError, match="max_len=8"):
        make_encoder()(torch.ones(1, MAX_LEN + 1, dtype=torch.long))


def test_attention_weights_are_causal_distributions_and_match_fast_path():
    encoder = make_encoder(num_blocks=2, num_heads=2)
    ids = left_pad(ROWS, MAX_LEN)
    with torch.no_grad():
        hidden, weights = encoder(ids, need_weights=True)
        fast = encoder(ids)
    torch.testing.assert_close(hidden, fast, rtol=0, atol=1e-5)  # explicit softmax == SDPA
    assert len(weights) == 2
    future = torch.ones(MAX_LEN, MAX_LEN, dtype=torch.bool).triu(1)  # (L, L) key after query
    key_is_pad = (ids == 0)[:, None, None, :]  # (B, 1, 1, L)
    query_is_real = (ids != 0)[:, None, :, None]  # (B, 1, L, 1)
    for block_weights in weights:
        assert block_weights.shape == (len(ROWS), 2, MAX_LEN, MAX_LEN)
        torch.testing.assert_close(block_weights.sum(-1), torch.ones(len(ROWS), 2, MAX_LEN))
        assert (block_weights[..., future] == 0).all()
        assert (block_weights.masked_select(key_is_pad & query_is_real) == 0).all()  # no weight on padding


@pytest.mark.parametrize("init", ["normal", "xavier", "xavier_uniform"])
def test_initialization_schemes(init):
    torch.manual_seed(0)
    encoder = SASRec(num_items=5000, max_len=20,
                     options=EncoderOptions(hidden_size=32, num_blocks=2, init=init, init_std=0.05))
    table = encoder.items.embedding.weight
    assert not table[0].any()  # padding row
    expected = 0.05 if init == "normal" else (2 / (5001 + 32)) ** 0.5
    assert table[1:].std().item() == pytest.approx(expected, rel=0.03)
    qkv = encoder.blocks[0].attention.qkv.weight  # (3d, d)
    # Xavier treats W_Q, W_K, W_V as three (d, d) matrices, as the TF code's three dense layers are
    # (uniform and normal Xavier have the same std).
    assert qkv.std().item() == pytest.approx(0.05 if init == "normal" else (2 / (32 + 32)) ** 0.5, rel=0.1)
    assert not encoder.blocks[0].attention.qkv.bias.any()
    assert torch.equal(encoder.final_norm.weight, torch.ones(32)) and not encoder.final_norm.bias.any()
    with pytest.raises(OptionError, match="--model.encoder.init 'kaiming': expected one of 'normal', 'xavier'"):
        SASRec(num_items=5, max_len=4, options=EncoderOptions(init="kaiming"))


@pytest.mark.parametrize(
    "options",
    [{}, {"num_heads": 1}, {"use_residual": False}, {"num_blocks": 0}, {"use_positional": False}],
    ids=["default", "one_head", "no_residual", "zero_blocks", "no_positions"],
)
def test_training_forward_takes_every_dropout_mask_from_one_pool_draw(options, monkeypatch):
    """Every dropout of a training forward pass is served by the pool; once the shape is known, in one draw."""
    from sasrec_lightning.fast import dropout as dropout_module

    encoder = make_encoder(pooled_dropout=True, **options).train()
    draws = []
    original_draw = dropout_module.dropout_mask

    def counted_draw(numel, p, device=None):
        draws.append(numel)
        return original_draw(numel, p, device)

    monkeypatch.setattr(dropout_module, "dropout_mask", counted_draw)

    def no_plain_dropout(x, p=0.5, training=True, inplace=False):
        assert not training, "nn.Dropout drew its own mask in training"
        return x

    monkeypatch.setattr(torch.nn.functional, "dropout", no_plain_dropout)
    ids = left_pad(ROWS, MAX_LEN)  # (4, 8)
    batch, length, hidden, heads = 4, MAX_LEN, 16, options.get("num_heads", 2)
    blocks = options.get("num_blocks", 2)
    # Written out: embeddings (B, L, d); per block attention weights (B, H, L, L), two residual
    # outputs (B, L, d) and the feed-forward's inner activations (B, L, d).
    expected = batch * length * hidden + blocks * batch * (heads * length * length + 3 * length * hidden)
    encoder(ids).sum().backward()  # first pass of this shape: drawn as it goes
    assert sum(draws) >= expected and encoder.dropout_pool._totals[(tuple(ids.shape), ids.device)] == expected
    draws.clear()
    hidden_states = encoder(ids)
    assert draws == [expected]  # one draw, no fallback
    hidden_states.sum().backward()
    encoder.eval()
    encoder(ids)
    assert draws == [expected]  # nothing drawn in inference


def test_pooled_masks_are_one_random_stream_however_it_is_drawn(monkeypatch):
    """First pass (mask by mask) or later ones (one draw): the same values and RNG state as one draw.

    The masks handed out are the next elements of one stream: equal to one ``dropout_mask`` of the
    pass's total size, with the generator left where that one draw leaves it.
    """
    from sasrec_lightning.fast import dropout as dropout_module

    encoder = make_encoder(pooled_dropout=True).train()
    taken = []
    original_take = dropout_module.MaskPool.take
    monkeypatch.setattr(dropout_module.MaskPool, "take",
                        lambda pool, shape: taken.append(original_take(pool, shape).flatten()) or taken[-1].view(shape))
    ids = left_pad(ROWS[:3], 7)  # (3, 7): attention weights 3 x 2 x 7 x 7 = 294 elements, not whole words
    for first in (True, False):
        taken.clear()
        torch.manual_seed(11)
        encoder(ids)
        after = torch.rand(3)
        masks = torch.cat(taken)
        torch.manual_seed(11)
        reference = dropout_module.dropout_mask(masks.numel(), 0.3)
        assert torch.equal(masks, reference), f"first pass: {first}"
        torch.testing.assert_close(torch.rand(3), after, rtol=0, atol=0)  # no random word wasted or skipped
