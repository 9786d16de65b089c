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

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .items import FeatureItems, ItemRepresentation
from .options import BlockLayout, EncoderOptions, ItemFeatureOptions

__all__ = ["SASRec", "SASRecBlock", "CausalSelfAttention", "PointWiseFeedForward", "Residual", "attention_bias"]


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
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)  # W_Q, W_K, W_V stacked
        self.out = nn.Linear(hidden_size, hidden_size) if output_projection else nn.Identity()
        self.dropout = nn.Dropout(dropout)

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
        hidden = x.size(-1)
        if context is None:
            q, k, v = self.qkv(x).split(hidden, dim=-1)  # 3 x (B, L, d)
        else:
            weight, bias = self.qkv.weight, self.qkv.bias  # (3d, d), (3d,)
            q = F.linear(x, weight[:hidden], bias[:hidden])  # (B, L, d)
            k, v = F.linear(context, weight[hidden:], bias[hidden:]).split(hidden, dim=-1)  # 2 x (B, L, d)
        if need_weights:
            y, weights = self.explicit_attention(q, k, v, mask)  # (B, L, d), (B, H, L, L)
            return self.out(y), weights
        return self.out(self.attend(q, k, v, mask)), None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
        """``Dropout(softmax(q k^T / sqrt(d/H) + mask)) v`` by PyTorch's fused kernel: ``(B, L, d)`` in and out."""
        batch, length, hidden = q.shape
        q, k, v = (t.view(batch, length, self.num_heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, L, d/H)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout.p if self.training else 0.0)
        return y.transpose(1, 2).reshape(batch, length, hidden)  # (B, L, d)

    def explicit_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The same, written out: ``(B, L, d)`` outputs and the ``(B, H, L, L)`` weights."""
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
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, L, d) -> (B, L, d)``."""
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class Residual(nn.Module):
    """The paper's sub-layer connection (Sec. III-C): ``x + Dropout(update)``.

    Args:
        dropout: dropout rate on the update.
        enabled: the residual connection; ``False`` gives ``Dropout(update)`` alone (ablation "remove RC").
    """

    def __init__(self, dropout: float, enabled: bool = True) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.enabled = enabled

    def forward(self, x: Tensor, update: Tensor) -> Tensor:
        """``(B, L, d)`` twice -> ``(B, L, d)``."""
        return x + self.dropout(update) if self.enabled else self.dropout(update)


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
        self.layout = layout
        self.attention_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.attention = CausalSelfAttention(hidden_size, num_heads, dropout, output_projection=layout == "paper")
        self.attention_residual = Residual(dropout, use_residual)
        self.feed_forward_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.feed_forward = PointWiseFeedForward(hidden_size, dropout)
        self.feed_forward_residual = Residual(dropout, use_residual)

    def forward(self, x: Tensor, mask: Tensor, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """``(B, L, d) -> (B, L, d)``, plus ``(B, H, L, L)`` weights if asked (``mask``: as for the attention)."""
        if self.layout == "reference":
            normed = self.attention_norm(x)  # (B, L, d)
            attended, weights = self.attention(normed, mask, need_weights, context=x)
            x = normed + attended if self.attention_residual.enabled else attended
            normed = self.feed_forward_norm(x)
            return self.feed_forward_residual(normed, self.feed_forward(normed)), weights
        attended, weights = self.attention(self.attention_norm(x), mask, need_weights)
        x = self.attention_residual(x, attended)
        x = self.feed_forward_residual(x, self.feed_forward(self.feed_forward_norm(x)))
        return x, weights


class SASRec(nn.Module):
    """Self-Attentive Sequential Recommendation encoder.

    Args:
        num_items: number of items; ids are ``1..num_items`` and ``0`` is padding.
        max_len: maximum sequence length ``n``; longer inputs must be cut to their last ``n`` items.
        options: the encoder's options (:class:`~sasrec_lightning.model.options.EncoderOptions`; its
            defaults when not given).
        item_features: the item table's spec (:meth:`~sasrec_lightning.data.features.ItemFeatures.spec`):
            items are then represented by their id and features (:class:`~.items.FeatureItems`) on both
            sides; ``None`` (the paper's model): by their id alone.
        feature_options: how ids and features are combined (with ``item_features``).
    """

    def __init__(self, num_items: int, max_len: int, options: EncoderOptions | None = None,
                 item_features: dict | None = None, feature_options: ItemFeatureOptions | None = None) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be at least 1, got {num_items}")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        options = options or EncoderOptions()
        d = options.hidden_size
        self.num_items, self.max_len, self.hidden_size, self.options = num_items, max_len, d, options
        self.item_features, self.feature_options = item_features, feature_options
        self.items = self.item_representation()  # M: the input items, and the scored ones when shared
        self.position_embedding = nn.Embedding(max_len, d) if options.use_positional else None
        self.output_items = None if options.share_item_embedding else self.item_representation()
        self.embedding_dropout = nn.Dropout(options.dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(d, options.num_heads, options.dropout, options.use_residual, options.block_layout)
            for _ in range(options.num_blocks)
        )
        self.final_norm = nn.LayerNorm(d, eps=1e-8)
        self.embedding_scale = math.sqrt(d) if options.scale_embedding else 1.0
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights by ``options.init``, zero biases, LayerNorm (1, 0), padding rows zero."""
        init, std = self.options.init, self.options.init_std
        for name, parameter in self.named_parameters():
            if "norm" in name:
                nn.init.ones_(parameter) if name.endswith("weight") else nn.init.zeros_(parameter)
            elif parameter.dim() < 2:
                nn.init.zeros_(parameter)
            elif init == "normal":
                nn.init.normal_(parameter, std=std)
            else:  # Xavier: the stacked (3d, d) W_Q, W_K, W_V as three (d, d) matrices
                xavier = nn.init.xavier_uniform_ if init == "xavier_uniform" else nn.init.xavier_normal_
                for matrix in parameter.split(self.hidden_size) if name.endswith("qkv.weight") else (parameter,):
                    xavier(matrix)
        with torch.no_grad():
            for items in (self.items, self.output_items):
                if items is not None and items.embedding is not None:
                    items.embedding.weight[0].zero_()

    def item_representation(self) -> ItemRepresentation:
        """The id table of the paper, or ids and side features when the item table's spec is given."""
        if self.item_features is None:
            return ItemRepresentation(self.num_items, self.hidden_size)
        return FeatureItems(self.num_items, self.hidden_size, self.item_features, self.feature_options)

    @property
    def scoring_items(self) -> ItemRepresentation:
        """The items that are scored: the input items (shared, the paper's) or the output ones."""
        return self.output_items or self.items

    @property
    def output_weight(self) -> Tensor:
        """``(num_items + 1, d)`` item vectors used for scoring (row 0 = padding)."""
        return self.scoring_items.table()

    def item_vectors(self, item_ids: Tensor) -> Tensor:
        """Output-side vectors of ``item_ids``: ``(...) -> (..., d)`` (row 0, padding, gets no gradient)."""
        return self.scoring_items(item_ids)

    def embed(self, input_ids: Tensor) -> Tensor:
        """Item plus right-aligned positional embedding, with dropout: ``(B, L) -> (B, L, d)``."""
        length = input_ids.size(1)
        if length > self.max_len:
            raise ValueError(
                f"input has {length} positions but the model was built with max_len={self.max_len}; "
                "keep the last max_len items of each sequence"
            )
        x = self.items(input_ids)  # (B, L, d)
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
