"""The SASRec encoder (Kang & McAuley, ICDM 2018) in plain PyTorch.

Nothing here imports Lightning: the encoder can be dropped into any training loop.

Conventions used throughout the package:

* item ids are ``1..num_items``; id ``0`` is padding;
* sequences are *left*-padded, so the most recent action is always the last column;
* positions are counted from the right: the last column always uses positional embedding
  ``max_len - 1`` (the paper's right-aligned ``P_n``), whatever the padded width ``L <= max_len``
  of the batch. A batch padded only to its longest sequence therefore gives exactly the same
  outputs at real positions as one padded to ``max_len``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from ..fast.dropout import MaskPool, PooledDropout, add_dropout, pooled
from ..fast.row_grad import ItemEmbedding

__all__ = ["SASRec", "SASRecBlock", "CausalSelfAttention", "PointWiseFeedForward", "attention_bias"]


def attention_bias(input_ids: Tensor) -> Tensor:
    """Additive fp32 attention mask: 0 where a query may attend, ``-inf`` elsewhere.

    A query attends to itself and to earlier real (non-padding) items. Letting every position see
    itself keeps fully padded rows finite (softmax over one element) while no information flows
    from padding into real positions. Built once per forward pass and shared by the blocks (SDPA
    would otherwise convert a boolean mask in every block).

    Args:
        input_ids: ``(B, L)`` item ids, 0 = padding.

    Returns:
        ``(B, 1, L, L)`` float32.
    """
    length = input_ids.size(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril_()  # (L, L)
    diagonal = torch.eye(length, dtype=torch.bool, device=input_ids.device)  # (L, L)
    key_is_item = (input_ids != 0)[:, None, None, :]  # (B, 1, 1, L)
    allowed = causal & (key_is_item | diagonal)  # (B, 1, L, L)
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill_(~allowed, float("-inf"))


class CausalSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (paper Sec. III-B) with a causal padding mask.

    Args:
        hidden_size: ``d``.
        num_heads: heads ``H``; ``d`` must be divisible by it.
        dropout: dropout on the attention weights.
        output_projection: a final ``d x d`` linear map of the heads' outputs (the paper's layout and
            Transformers'); the authors' code has none (``block_layout: reference``).
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, output_projection: bool = True) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"hidden_size must be divisible by num_heads, got hidden_size={hidden_size} "
                f"and num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)  # W_Q, W_K, W_V stacked
        self.out = nn.Linear(hidden_size, hidden_size) if output_projection else nn.Identity()
        self.dropout = PooledDropout(dropout)

    def forward(self, x: Tensor, mask: Tensor, need_weights: bool = False,
                context: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Attend.

        Args:
            x: ``(B, L, d)`` inputs: the queries, and the keys and values unless ``context`` is given.
            mask: ``(B, 1, L, L)`` additive bias (:func:`attention_bias`) or boolean (``True`` = may attend).
            need_weights: also return the attention probabilities (before dropout).
            context: ``(B, L, d)`` inputs of the keys and values when they differ from the queries'
                (the authors' code: queries from ``LayerNorm(x)``, keys and values from ``x``).

        Returns:
            ``(B, L, d)`` outputs and, if asked, ``(B, H, L, L)`` attention weights.
        """
        batch, length, hidden = x.shape
        if context is None:
            q, k, v = self.qkv(x).split(hidden, dim=-1)  # 3 x (B, L, d)
        else:
            weight, bias = self.qkv.weight, self.qkv.bias  # (3d, d), (3d,)
            q = F.linear(x, weight[:hidden], bias[:hidden])  # (B, L, d)
            k, v = F.linear(context, weight[hidden:], bias[hidden:]).split(hidden, dim=-1)  # 2 x (B, L, d)
        if need_weights or pooled(self.dropout):
            # Written out: for the weights, or for the pool's dropout masks (on CPU, SDPA with dropout
            # is its unfused math path plus a Bernoulli mask: ~3 ms slower per Amazon step).
            y, weights = self.explicit_attention(q, k, v, mask)  # (B, L, d), (B, H, L, L)
            return self.out(y), weights if need_weights else None
        q, k, v = (t.view(batch, length, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, L, d/H)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout.p if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(batch, length, hidden)), None  # (B, L, d)

    def explicit_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``Dropout(softmax(q k^T / sqrt(d/H) + mask)) v``: ``(B, L, d)`` outputs, ``(B, H, L, L)`` weights."""
        batch, length, hidden = q.shape
        heads = self.num_heads
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, float("-inf"))
        if heads == 1:
            bias = mask.view(batch, length, length)  # (B, L, L)
        else:  # (B, L, d) -> (B * H, L, d/H)
            q, k, v = (t.reshape(batch, length, heads, -1).transpose(1, 2).reshape(batch * heads, length, -1)
                       for t in (q, k, v))
            bias = mask.expand(batch, heads, length, length).reshape(batch * heads, length, length)
        # Scale, q k^T and the bias in one op (few ops matter on CPU, docs/performance.md).
        weights = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=1.0 / math.sqrt(q.size(-1))).softmax(-1)  # (BH, L, L)
        y = torch.bmm(self.dropout(weights), v)  # (B * H, L, d/H)
        if heads > 1:
            y = y.view(batch, heads, length, -1).transpose(1, 2).reshape(batch, length, hidden)  # (B, L, d)
        return y, weights.view(batch, heads, length, length)


class PointWiseFeedForward(nn.Module):
    """``F_i = ReLU(S_i W1 + b1) W2 + b2``, shared over positions (paper Eq. 4)."""

    def __init__(self, hidden_size: int, dropout: float, inner_size: int | None = None) -> None:
        super().__init__()
        inner_size = inner_size or hidden_size
        self.fc1 = nn.Linear(hidden_size, inner_size)
        self.fc2 = nn.Linear(inner_size, hidden_size)
        self.dropout = PooledDropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, L, d) -> (B, L, d)``."""
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


BlockLayout = Literal["paper", "reference"]


class SASRecBlock(nn.Module):
    """One self-attention block, in one of two layouts.

    ``paper`` (Sec. III-C): each sub-layer ``g`` is ``x + Dropout(g(LayerNorm(x)))``, and the
    attention has an output projection.

    ``reference`` (what the authors' TF code computes): queries from ``LayerNorm(x)``, keys and
    values from ``x`` itself, no output projection, and each residual added to the *normalized*
    input: ``x = Attention(LN(x), x) + LN(x)``, then ``x = Dropout(FFN(LN(x))) + LN(x)``. Its only
    attention dropout is on the weights.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, use_residual: bool = True,
                 layout: BlockLayout = "paper") -> None:
        super().__init__()
        if layout not in ("paper", "reference"):
            raise ValueError(f"unknown block_layout {layout!r}; expected 'paper' or 'reference'")
        self.layout = layout
        self.attention_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.attention = CausalSelfAttention(hidden_size, num_heads, dropout, output_projection=layout == "paper")
        self.feed_forward_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.feed_forward = PointWiseFeedForward(hidden_size, dropout)
        self.dropout = PooledDropout(dropout)
        self.use_residual = use_residual

    def forward(self, x: Tensor, mask: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """``(B, L, d) -> (B, L, d)``, plus ``(B, H, L, L)`` weights if asked (``mask``: as for the attention)."""
        if self.layout == "reference":
            normed = self.attention_norm(x)  # (B, L, d)
            attended, weights = self.attention(normed, mask, need_weights, context=x)
            x = normed + attended if self.use_residual else attended
            normed = self.feed_forward_norm(x)
            return self.residual(normed, self.feed_forward(normed)), weights
        attended, weights = self.attention(self.attention_norm(x), mask, need_weights)
        x = self.residual(x, attended)
        x = self.residual(x, self.feed_forward(self.feed_forward_norm(x)))
        return x, weights

    def residual(self, x: Tensor, update: Tensor) -> Tensor:
        """``x + Dropout(update)``, or ``Dropout(update)`` without residual connections (ablation)."""
        return add_dropout(x, update, self.dropout) if self.use_residual else self.dropout(update)


class SASRec(nn.Module):
    """Self-Attentive Sequential Recommendation encoder.

    Args:
        num_items: number of items; ids are ``1..num_items`` and ``0`` is padding.
        max_len: maximum sequence length ``n``; longer inputs must be cut to their last ``n`` items.
        hidden_size: embedding size ``d``.
        num_blocks: number of self-attention blocks ``b`` (0 allowed: embeddings only).
        num_heads: attention heads (the paper uses 1).
        dropout: dropout rate on embeddings, attention weights and sub-layer outputs.
        use_positional: add the learned positional embedding (paper ablation "remove PE").
        share_item_embedding: score with the input item embedding ``M`` (the paper's default);
            ``False`` learns a separate output embedding (ablation "unshared IE").
        use_residual: residual connections (ablation "remove RC").
        scale_embedding: multiply item embeddings by ``sqrt(d)`` as the original TF code does.
        init: weight initialization (the paper does not specify one). ``normal``: every embedding and
            linear weight from ``N(0, init_std^2)`` (BERT, RecBole, the RecSys 2023 SASRec code); ``xavier``:
            Xavier-normal (the common PyTorch port), which scales with the table size, so on Amazon Beauty
            the input is mostly position and accuracy peaks far lower (``docs/results.md``);
            ``xavier_uniform``: Glorot-uniform, TF1's default and so what the authors' code uses.
            Both Xavier variants treat ``W_Q``, ``W_K`` and ``W_V`` as three ``d x d`` matrices, as the
            TF code's three dense layers are. Biases start at 0, LayerNorm at (1, 0).
        init_std: standard deviation of ``init: normal``.
        pooled_dropout: draw a training forward pass's dropout masks from one pool of cheap random
            bits (``dropout.MaskPool``, same distribution as ``nn.Dropout``): ``auto`` on CPU only,
            where it measured faster; otherwise ``nn.Dropout`` and SDPA's own attention dropout.
        block_layout: ``paper`` (the paper's equations, the default) or ``reference`` (the authors'
            code: see :class:`SASRecBlock`).
    """

    def __init__(
        self,
        num_items: int,
        max_len: int,
        hidden_size: int = 50,
        num_blocks: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
        use_positional: bool = True,
        share_item_embedding: bool = True,
        use_residual: bool = True,
        scale_embedding: bool = True,
        init: Literal["normal", "xavier", "xavier_uniform"] = "normal",
        init_std: float = 0.02,
        pooled_dropout: bool | Literal["auto"] = "auto",
        block_layout: BlockLayout = "paper",
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be at least 1, got {num_items}")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        if init not in ("normal", "xavier", "xavier_uniform"):
            raise ValueError(f"unknown init {init!r}; expected 'normal', 'xavier' or 'xavier_uniform'")
        self.num_items, self.max_len, self.hidden_size = num_items, max_len, hidden_size
        self.item_embedding = ItemEmbedding(num_items, hidden_size)
        self.position_embedding = nn.Embedding(max_len, hidden_size) if use_positional else None
        self.output_embedding = None if share_item_embedding else ItemEmbedding(num_items, hidden_size)
        self.embedding_dropout = PooledDropout(dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(hidden_size, num_heads, dropout, use_residual, block_layout) for _ in range(num_blocks)
        )
        self.final_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.embedding_scale = math.sqrt(hidden_size) if scale_embedding else 1.0
        self.init, self.init_std = init, init_std
        self.dropout_pool = MaskPool(dropout, pooled_dropout)  # opened once per training forward pass
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights by ``init``, zero biases, LayerNorm (1, 0), padding rows zero."""
        for name, parameter in self.named_parameters():
            if "norm" in name:
                nn.init.ones_(parameter) if name.endswith("weight") else nn.init.zeros_(parameter)
            elif parameter.dim() < 2:
                nn.init.zeros_(parameter)
            elif self.init == "normal":
                nn.init.normal_(parameter, std=self.init_std)
            else:  # Xavier: the stacked (3d, d) W_Q, W_K, W_V as three (d, d) matrices
                xavier = nn.init.xavier_uniform_ if self.init == "xavier_uniform" else nn.init.xavier_normal_
                for matrix in parameter.split(self.hidden_size) if name.endswith("qkv.weight") else (parameter,):
                    xavier(matrix)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
            if self.output_embedding is not None:
                self.output_embedding.weight[0].zero_()

    @property
    def output_weight(self) -> Tensor:
        """``(num_items + 1, d)`` item vectors used for scoring (row 0 = padding).

        A tensor-parallel table (a ``DTensor``, ``sharding.shard_tables``) is returned whole:
        no communication once it is gathered for evaluation (replicated), an all-gather otherwise.
        """
        weight = (self.output_embedding or self.item_embedding).weight
        return weight.full_tensor() if isinstance(weight, DTensor) else weight

    def item_vectors(self, item_ids: Tensor) -> Tensor:
        """Output-embedding rows of ``item_ids``: ``(...) -> (..., d)`` (row 0, padding, gets no gradient)."""
        return (self.output_embedding or self.item_embedding)(item_ids)

    def embed(self, input_ids: Tensor) -> Tensor:
        """Item plus right-aligned positional embedding, with dropout: ``(B, L) -> (B, L, d)``."""
        length = input_ids.size(1)
        if length > self.max_len:
            raise ValueError(
                f"input has {length} positions but the model was built with max_len={self.max_len}; "
                "keep the last max_len items of each sequence"
            )
        x = self.item_embedding(input_ids)  # (B, L, d)
        if self.position_embedding is not None:
            # Right-aligned rows max_len - L .. max_len - 1; position + scale * item in one op.
            positions = self.position_embedding.weight[self.max_len - length :]  # (L, d)
            x = torch.add(positions, x, alpha=self.embedding_scale)  # (B, L, d)
        elif self.embedding_scale != 1.0:
            x = x * self.embedding_scale  # (B, L, d)
        return self.embedding_dropout(x)

    def forward(self, input_ids: Tensor, need_weights: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Encode left-padded item sequences.

        Args:
            input_ids: ``(B, L)`` item ids with ``L <= max_len``, left-padded with 0.
            need_weights: also return each block's attention weights (paper Fig. 4).

        Returns:
            ``(B, L, d)`` hidden states; position ``t`` summarizes items ``<= t``. Padded positions
            are zero before the final LayerNorm. With ``need_weights`` a pair
            ``(hidden, [ (B, H, L, L) per block ])``.
        """
        with self.dropout_pool.session(input_ids, self.training):  # every dropout mask of this pass
            x = self.embed(input_ids)  # (B, L, d)
            mask = attention_bias(input_ids)  # (B, 1, L, L)
            weights = []
            for block in self.blocks:
                # Padded positions are never attended to by real ones (the mask), so what they carry
                # between blocks cannot reach a real position; they are zeroed once, below.
                x, block_weights = block(x, mask, need_weights)
                weights.append(block_weights)
        hidden = self.final_norm(x * (input_ids != 0).unsqueeze(-1))  # (B, L, d)
        return (hidden, weights) if need_weights else hidden

    def score_items(self, hidden: Tensor, item_ids: Tensor) -> Tensor:
        """Dot-product scores of given items: ``hidden (..., d)``, ``item_ids (..., C) -> (..., C)``."""
        return (self.item_vectors(item_ids) * hidden.unsqueeze(-2)).sum(dim=-1)  # (..., C, d) -> (..., C)

    def score_all(self, hidden: Tensor) -> Tensor:
        """Scores of every item id: ``hidden (..., d) -> (..., num_items + 1)``; column 0 is padding."""
        return hidden @ self.output_weight.T

    def last_hidden(self, input_ids: Tensor) -> Tensor:
        """Hidden state at the most recent position: ``(B, L) -> (B, d)``."""
        return self(input_ids)[:, -1]
