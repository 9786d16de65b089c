"""``block_layout: reference`` against the authors' TF code written out as plain tensor equations.

The transcription below follows ``model.py`` / ``modules.py`` of kang205/SASRec line by line
(issue list of the equations: embedding x sqrt(d) + positions, zeroed padding; per block
``Q = dense(LN(x))``, ``K = dense(x)``, ``V = dense(x)``, key masking, causality, softmax, query
masking, no output projection, ``x = attn + LN(x)``, then ``x = FFN(LN(x)) + LN(x)`` zeroed at
padding; a final LayerNorm). It reads the encoder's parameters as plain tensors and calls none of
its code.
"""

from __future__ import annotations

import math

import pytest
import torch

from sasrec_lightning import SASRec
from sasrec_lightning.model.options import EncoderOptions


def layer_norm(x, gamma, beta, eps=1e-8):
    """TF ``normalize``: ``gamma * (x - mean) / sqrt(var + eps) + beta`` over the last axis."""
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return gamma * (x - mean) / (variance + eps) ** 0.5 + beta


def reference_forward(input_ids, p, num_blocks, num_heads):
    """The TF graph for ``(B, n)`` ids padded to ``maxlen = n``; ``p``: parameter name -> tensor."""
    batch, length = input_ids.shape
    d = p["items.embedding.weight"].shape[1]
    mask = (input_ids != 0).double().unsqueeze(-1)  # (B, n, 1)
    table = p["items.embedding.weight"].clone()
    table[0] = 0.0  # zero_pad=True
    seq = table[input_ids] * d**0.5 + p["position_embedding.weight"][torch.arange(length)]  # positions 0..n-1
    seq = seq * mask  # (dropout off)
    for b in range(num_blocks):
        pre = f"blocks.{b}."
        queries = layer_norm(seq, p[pre + "attention_norm.weight"], p[pre + "attention_norm.bias"])
        keys = seq
        w, bias = p[pre + "attention.qkv.weight"], p[pre + "attention.qkv.bias"]  # (3d, d): W_Q, W_K, W_V
        Q = queries @ w[:d].T + bias[:d]
        K = keys @ w[d : 2 * d].T + bias[d : 2 * d]
        V = keys @ w[2 * d :].T + bias[2 * d :]
        # split heads along channels, concat along the batch: (h*B, n, d/h)
        Q_, K_, V_ = (torch.cat(t.split(d // num_heads, dim=2), dim=0) for t in (Q, K, V))
        outputs = Q_ @ K_.transpose(1, 2) / math.sqrt(d // num_heads)  # (h*B, n, n)
        key_masks = torch.sign(keys.abs().sum(-1)).repeat(num_heads, 1)  # (h*B, n)
        key_masks = key_masks.unsqueeze(1).expand(-1, length, -1)
        paddings = torch.full_like(outputs, -(2.0**32) + 1)
        outputs = torch.where(key_masks == 0, paddings, outputs)
        tril = torch.ones(length, length, dtype=torch.double).tril()
        outputs = torch.where(tril.expand_as(outputs) == 0, paddings, outputs)
        outputs = outputs.softmax(-1)
        query_masks = torch.sign(queries.abs().sum(-1)).repeat(num_heads, 1)  # (h*B, n)
        outputs = outputs * query_masks.unsqueeze(-1)
        outputs = outputs @ V_  # (h*B, n, d/h)
        outputs = torch.cat(outputs.split(batch, dim=0), dim=2)  # (B, n, d)
        seq = outputs + queries  # residual on the normalized queries
        inputs = layer_norm(seq, p[pre + "feed_forward_norm.weight"], p[pre + "feed_forward_norm.bias"])
        inner = torch.relu(inputs @ p[pre + "feed_forward.fc1.weight"].T + p[pre + "feed_forward.fc1.bias"])
        seq = inner @ p[pre + "feed_forward.fc2.weight"].T + p[pre + "feed_forward.fc2.bias"] + inputs
        seq = seq * mask
    return layer_norm(seq, p["final_norm.weight"], p["final_norm.bias"])


@pytest.mark.parametrize("num_heads", [1, 2])
def test_reference_layout_equals_the_authors_equations(num_heads):
    torch.manual_seed(0)
    options = EncoderOptions(hidden_size=8, num_blocks=2, num_heads=num_heads, dropout=0.0,
                             block_layout="reference", init="xavier_uniform")
    model = SASRec(num_items=30, max_len=7, options=options).double().eval()
    with torch.no_grad():  # non-trivial LayerNorm and bias values, so every term is exercised
        for name, parameter in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    input_ids = torch.tensor([[0, 0, 0, 4, 9, 2, 17],  # left-padded rows of different lengths
                              [0, 0, 0, 0, 0, 0, 5],
                              [3, 1, 30, 8, 8, 12, 6]])
    with torch.no_grad():
        ours = model(input_ids)
        expected = reference_forward(input_ids, dict(model.named_parameters()), 2, num_heads)
    real = input_ids != 0
    torch.testing.assert_close(ours[real], expected[real], atol=1e-6, rtol=0)
    # Padded positions: both give the final LayerNorm of a zero row.
    torch.testing.assert_close(ours[~real], expected[~real], atol=1e-6, rtol=0)
    # And the layout matters: the paper layout with the same weights computes something else.
    paper_options = EncoderOptions(hidden_size=8, num_blocks=2, num_heads=num_heads, dropout=0.0)
    paper = SASRec(num_items=30, max_len=7, options=paper_options).double()
    paper.load_state_dict({k: v for k, v in model.state_dict().items()}, strict=False)
    assert not torch.allclose(paper.eval()(input_ids)[real], expected[real], atol=1e-3)


def test_reference_layout_has_no_output_projection_and_glorot_uniform_init():
    model = SASRec(num_items=1000, max_len=20,
                   options=EncoderOptions(hidden_size=16, block_layout="reference", init="xavier_uniform"))
    names = {name for name, _ in model.named_parameters()}
    assert not any(".attention.out." in name for name in names)
    limit = math.sqrt(6 / (1001 + 16))  # TF glorot_uniform of the (vocab, d) table
    table = model.items.embedding.weight[1:]
    assert table.abs().max() <= limit and table.abs().max() > 0.9 * limit
    assert abs(table.std().item() - limit / math.sqrt(3)) < 0.05 * limit
    qkv = model.blocks[0].attention.qkv.weight  # three (d, d) kernels: limit sqrt(6 / (d + d))
    assert qkv.abs().max() <= math.sqrt(6 / 32) and qkv.abs().max() > 0.9 * math.sqrt(6 / 32)


def test_reference_layout_trains_with_dropout_and_reads_out_attention():
    torch.manual_seed(1)
    model = SASRec(num_items=30, max_len=7,
                   options=EncoderOptions(hidden_size=8, num_blocks=2, dropout=0.5, block_layout="reference"))
    input_ids = torch.tensor([[0, 0, 0, 4, 9, 2, 17], [3, 1, 30, 8, 8, 12, 6]])
    model.train()
    hidden = model(input_ids)
    hidden.sum().backward()
    assert torch.isfinite(hidden).all()
    assert model.blocks[0].attention.qkv.weight.grad.abs().sum() > 0
    model.eval()
    _, weights = model(input_ids, need_weights=True)
    assert len(weights) == 2 and weights[0].shape == (2, 1, 7, 7)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(2, 1, 7))
