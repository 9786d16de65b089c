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

from .dropout import DropoutMasks, FastDropout, dropout
from .row_grad import RowGradient

__all__ = ["SASRec", "SASRecBlock", "CausalSelfAttention", "PointWiseFeedForward", "attention_bias"]


def attention_mask(input_ids: Tensor) -> Tensor:
    """Boolean mask of the key positions each query may attend to.

    A query attends to itself and to earlier real (non-padding) items. Letting every position see
    itself keeps fully padded rows finite (softmax over one element) while no information flows
    from padding into real positions.

    Args:
        input_ids: ``(B, L)`` item ids, 0 = padding.

    Returns:
        ``(B, 1, L, L)`` boolean mask, ``True`` = may attend.
    """
    length = input_ids.size(1)
    causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril_()  # (L, L)
    diagonal = torch.eye(length, dtype=torch.bool, device=input_ids.device)  # (L, L)
    key_is_item = (input_ids != 0)[:, None, None, :]  # (B, 1, 1, L)
    return causal & (key_is_item | diagonal)  # (B, 1, L, L)


def attention_bias(input_ids: Tensor) -> Tensor:
    """:func:`attention_mask` as an additive fp32 bias: 0 where a query may attend, ``-inf`` elsewhere.

    Built once per forward pass and shared by the blocks (SDPA would otherwise convert a boolean
    mask in every block). Every row keeps its diagonal, so no softmax row is all ``-inf``.

    Args:
        input_ids: ``(B, L)`` item ids, 0 = padding.

    Returns:
        ``(B, 1, L, L)`` float32.
    """
    return _as_bias(attention_mask(input_ids))


def _as_bias(allowed: Tensor) -> Tensor:
    """A boolean attention mask (``True`` = may attend) as an additive fp32 bias (0 or ``-inf``)."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def _apply_dropout(x: Tensor, p: float, masks: DropoutMasks | None, training: bool) -> Tensor:
    """``x`` under inverted dropout, with the next mask of ``masks`` when given."""
    if not training or p == 0.0:
        return x
    if masks is None:
        return dropout(x, p)
    return x * masks.take(x.shape, p)


def _residual(x: Tensor, update: Tensor, p: float, masks: DropoutMasks | None, training: bool,
              use_residual: bool) -> Tensor:
    """``x + Dropout(update)`` (or just ``Dropout(update)`` without the residual), one op when possible."""
    if use_residual and training and p > 0.0 and masks is not None:
        return torch.addcmul(x, update, masks.take(update.shape, p))  # x + update * mask in one op
    update = _apply_dropout(update, p, masks, training)
    return x + update if use_residual else update


class CausalSelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention (paper Sec. III-B) with a causal padding mask."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"hidden_size must be divisible by num_heads, got hidden_size={hidden_size} "
                f"and num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.out = nn.Linear(hidden_size, hidden_size)
        self.dropout = dropout

    def forward(self, x: Tensor, mask: Tensor, need_weights: bool = False,
                masks: DropoutMasks | None = None) -> tuple[Tensor, Tensor | None]:
        """Attend.

        Args:
            x: ``(B, L, d)`` inputs.
            mask: ``(B, 1, L, L)``: boolean (``True`` = may attend) or an additive float bias
                (:func:`attention_bias`).
            need_weights: also return the attention probabilities (before dropout).
            masks: the forward pass's shared dropout masks (training); ``None`` draws its own.

        Returns:
            ``(B, L, d)`` outputs and, if asked, ``(B, H, L, L)`` attention weights.
        """
        batch, length, hidden = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).split(hidden, dim=-1)  # 3 x (B, L, d)
        drop = self.training and self.dropout > 0.0
        if not (need_weights or drop):
            # Inference: SDPA's fused kernel. (B, L, d) -> (B, H, L, d/H)
            q, k, v = (t.view(batch, length, heads, -1).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, d/H)
            return self.out(y.transpose(1, 2).reshape(batch, length, hidden)), None
        # Training with dropout (or weights asked for): an explicit softmax in as few ops as possible.
        # On CPU, SDPA's dropout path is its unfused math path plus a Bernoulli mask, which measured
        # ~3 ms slower per Amazon step over the whole encoder (docs/performance.md).
        if mask.dtype == torch.bool:
            mask = _as_bias(mask)
        if heads == 1:
            bias = mask.view(batch, length, length)  # (B, L, L)
        else:
            # (B, L, d) -> (B * H, L, d/H)
            q, k, v = (t.reshape(batch, length, heads, -1).transpose(1, 2).reshape(batch * heads, length, -1)
                       for t in (q, k, v))
            bias = mask.expand(batch, heads, length, length).reshape(batch * heads, length, length)
        scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=1.0 / math.sqrt(q.size(-1)))  # (BH, L, L)
        weights = scores.softmax(dim=-1)  # (B * H, L, L)
        y = torch.bmm(_apply_dropout(weights, self.dropout, masks, self.training), v)  # (B * H, L, d/H)
        if heads > 1:
            y = y.view(batch, heads, length, -1).transpose(1, 2).reshape(batch, length, hidden)  # (B, L, d)
        weights = weights.view(batch, heads, length, length) if need_weights else None
        return self.out(y), weights


class PointWiseFeedForward(nn.Module):
    """``F_i = ReLU(S_i W1 + b1) W2 + b2``, shared over positions (paper Eq. 4)."""

    def __init__(self, hidden_size: int, dropout: float, inner_size: int | None = None) -> None:
        super().__init__()
        inner_size = inner_size or hidden_size
        self.fc1 = nn.Linear(hidden_size, inner_size)
        self.fc2 = nn.Linear(inner_size, hidden_size)
        self.dropout = FastDropout(dropout)

    def forward(self, x: Tensor, masks: DropoutMasks | None = None) -> Tensor:
        """``(B, L, d) -> (B, L, d)``."""
        inner = _apply_dropout(F.relu(self.fc1(x)), self.dropout.p, masks, self.training)
        return self.fc2(inner)


class SASRecBlock(nn.Module):
    """One self-attention block: each sub-layer ``g`` is ``x + Dropout(g(LayerNorm(x)))`` (Sec. III-C)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float, use_residual: bool = True) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.attention = CausalSelfAttention(hidden_size, num_heads, dropout)
        self.feed_forward_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.feed_forward = PointWiseFeedForward(hidden_size, dropout)
        self.dropout = FastDropout(dropout)
        self.use_residual = use_residual

    def dropout_numel(self, batch: int, length: int) -> int:
        """Dropout-mask elements one training forward pass of this block takes from :class:`DropoutMasks`."""
        hidden = self.attention_norm.normalized_shape[0]
        inner = self.feed_forward.fc1.out_features
        return batch * (self.attention.num_heads * length * length + length * (2 * hidden + inner))

    def forward(self, x: Tensor, mask: Tensor, need_weights: bool = False,
                masks: DropoutMasks | None = None) -> tuple[Tensor, Tensor | None]:
        """``(B, L, d) -> (B, L, d)``, plus ``(B, H, L, L)`` attention weights if asked.

        ``mask`` is boolean or additive (see :class:`CausalSelfAttention`); ``masks`` are the
        forward pass's shared dropout masks (``None``: each dropout draws its own).
        """
        p, training, residual = self.dropout.p, self.training, self.use_residual
        attended, weights = self.attention(self.attention_norm(x), mask, need_weights, masks)
        x = _residual(x, attended, p, masks, training, residual)
        transformed = self.feed_forward(self.feed_forward_norm(x), masks)
        x = _residual(x, transformed, p, masks, training, residual)
        return x, weights


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
            linear weight from ``N(0, init_std^2)``, as BERT, RecBole and the RecSys 2023 SASRec code do;
            ``xavier``: Xavier-normal, as the original TF code and the widely used PyTorch port. Xavier
            scales with the table size: on Amazon Beauty the item table starts at std 0.006 against
            0.14 for the positions, so even after the ``sqrt(d)`` scaling the input is mostly
            position, and full-ranking accuracy peaked after 2-3 epochs far below the ``normal``
            runs (``docs/results.md``). Biases start at 0, LayerNorm at (1, 0).
        init_std: standard deviation of ``init: normal``.
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
        init: Literal["normal", "xavier"] = "normal",
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        if num_items < 1:
            raise ValueError(f"num_items must be at least 1, got {num_items}")
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        if init not in ("normal", "xavier"):
            raise ValueError(f"unknown init {init!r}; expected 'normal' or 'xavier'")
        self.num_items = num_items
        self.max_len = max_len
        self.hidden_size = hidden_size
        self.item_embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        self.position_embedding = nn.Embedding(max_len, hidden_size) if use_positional else None
        self.output_embedding = (
            None if share_item_embedding else nn.Embedding(num_items + 1, hidden_size, padding_idx=0)
        )
        self.embedding_dropout = FastDropout(dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(hidden_size, num_heads, dropout, use_residual) for _ in range(num_blocks)
        )
        self.final_norm = nn.LayerNorm(hidden_size, eps=1e-8)
        self.embedding_scale = math.sqrt(hidden_size) if scale_embedding else 1.0
        self.init, self.init_std = init, init_std
        # Item-table lookups write their gradients row-wise into dense buffers while RowGradients are
        # attached (the LightningModule does this in training; module row_grad.py).
        self.row_gradients: tuple[RowGradient, ...] = ()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights by ``init`` (normal or Xavier-normal), zero biases, LayerNorm (1, 0), padding rows zero."""
        for name, parameter in self.named_parameters():
            if "norm" in name:
                nn.init.ones_(parameter) if name.endswith("weight") else nn.init.zeros_(parameter)
            elif parameter.dim() < 2:
                nn.init.zeros_(parameter)
            elif self.init == "xavier":
                nn.init.xavier_normal_(parameter)
            else:
                nn.init.normal_(parameter, std=self.init_std)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
            if self.output_embedding is not None:
                self.output_embedding.weight[0].zero_()

    @property
    def sparse_item_grad(self) -> bool:
        """Whether item-table lookups currently go through attached :class:`RowGradient` s."""
        return bool(self.row_gradients)

    def use_row_gradients(self, row_gradients: tuple[RowGradient, ...] = ()) -> None:
        """Route lookups of these gradients' tables through them (``()``: plain lookups again)."""
        self.row_gradients = tuple(row_gradients)

    def lookup(self, ids: Tensor, weight: Tensor) -> Tensor:
        """Rows of an item table: ``F.embedding(ids, weight, padding_idx=0)``, row-wise gradients if attached."""
        for row_grad in self.row_gradients:
            if row_grad.parameter is weight:
                return row_grad.lookup(ids)
        return F.embedding(ids, weight, padding_idx=0)

    @property
    def output_weight(self) -> Tensor:
        """``(num_items + 1, d)`` item vectors used for scoring (row 0 = padding)."""
        return (self.output_embedding or self.item_embedding).weight

    def item_vectors(self, item_ids: Tensor) -> Tensor:
        """Output-embedding rows of ``item_ids``: ``(...) -> (..., d)`` (row 0, padding, gets no gradient)."""
        return self.lookup(item_ids, self.output_weight)

    def embed(self, input_ids: Tensor, masks: DropoutMasks | None = None) -> Tensor:
        """Item plus right-aligned positional embedding, with dropout: ``(B, L) -> (B, L, d)``.

        ``masks``: the forward pass's shared dropout masks (``None``: draw its own).
        """
        length = input_ids.size(1)
        if length > self.max_len:
            raise ValueError(
                f"input has {length} positions but the model was built with max_len={self.max_len}; "
                "keep the last max_len items of each sequence"
            )
        x = self.lookup(input_ids, self.item_embedding.weight)  # (B, L, d)
        if self.position_embedding is not None:
            # Right-aligned rows max_len - L .. max_len - 1; position + scale * item in one op.
            positions = self.position_embedding.weight[self.max_len - length :]  # (L, d)
            x = torch.add(positions, x, alpha=self.embedding_scale)  # (B, L, d)
        elif self.embedding_scale != 1.0:
            x = x * self.embedding_scale  # (B, L, d)
        return _apply_dropout(x, self.embedding_dropout.p, masks, self.training)

    def dropout_masks(self, input_ids: Tensor) -> DropoutMasks | None:
        """One draw of every dropout mask a training forward pass over ``input_ids`` uses (else None)."""
        p = self.embedding_dropout.p
        if not self.training or p == 0.0:
            return None
        batch, length = input_ids.shape
        numel = batch * length * self.hidden_size + sum(block.dropout_numel(batch, length) for block in self.blocks)
        return DropoutMasks(numel, p, input_ids.device)

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
        masks = self.dropout_masks(input_ids)
        x = self.embed(input_ids, masks)  # (B, L, d)
        mask = attention_bias(input_ids)  # (B, 1, L, L)
        weights = []
        for block in self.blocks:
            # Padded positions are never attended to by real ones (the mask), so what they carry
            # between blocks cannot reach a real position; they are zeroed once, below.
            x, block_weights = block(x, mask, need_weights, masks)
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
