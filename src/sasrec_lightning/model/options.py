"""The encoder's options: one typed group, checked where it is defined (``--model.encoder.*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import OptionError
from ..validation import at_least, in_range, one_of, positive

__all__ = ["EncoderOptions", "ItemFeatureOptions", "BlockLayout", "Init", "Combine"]

BlockLayout = Literal["paper", "reference"]
Init = Literal["normal", "xavier", "xavier_uniform"]
Combine = Literal["sum", "concat"]


@dataclass(frozen=True)
class EncoderOptions:
    """The SASRec encoder (paper Sec. III); the paper's settings are ``hidden_size`` 50, 2 blocks, 1 head.

    Args:
        hidden_size: embedding size ``d``.
        num_blocks: self-attention blocks ``b`` (0 allowed: embeddings only).
        num_heads: attention heads; ``hidden_size`` must be divisible by it.
        dropout: dropout rate on embeddings, attention weights and sub-layer outputs (paper: 0.2 for
            MovieLens-1M, 0.5 for the sparse datasets).
        use_positional: add the learned positional embedding (paper ablation "remove PE").
        share_item_embedding: score with the input item embedding ``M`` (the paper's default);
            ``false`` learns a separate output embedding (ablation "unshared IE").
        use_residual: residual connections (ablation "remove RC").
        scale_embedding: multiply item embeddings by ``sqrt(d)``, as the original TF code does.
        init: weight initialization (the paper does not specify one). ``normal``: every embedding and
            linear weight from ``N(0, init_std^2)`` (BERT, RecBole, the RecSys 2023 SASRec code); ``xavier``:
            Xavier-normal (the common PyTorch port), which scales with the table size, so on Amazon Beauty
            the input is mostly position and accuracy peaks far lower (``docs/results.md``);
            ``xavier_uniform``: Glorot-uniform, TF1's default and so what the authors' code uses.
            Both Xavier variants treat ``W_Q``, ``W_K`` and ``W_V`` as three ``d x d`` matrices, as the
            TF code's three dense layers are. Biases start at 0, LayerNorm at (1, 0).
        init_std: standard deviation of ``init: normal``.
        block_layout: ``paper`` (the paper's equations: pre-LayerNorm sub-layers with residuals on the
            un-normalized input, an attention output projection) or ``reference`` (what the authors'
            code computes: keys and values from the un-normalized input, no output projection,
            residuals on the normalized input); see ``docs/reproducing.md``.
    """

    hidden_size: int = 50
    num_blocks: int = 2
    num_heads: int = 1
    dropout: float = 0.2
    use_positional: bool = True
    share_item_embedding: bool = True
    use_residual: bool = True
    scale_embedding: bool = True
    init: Init = "normal"
    init_std: float = 0.02
    block_layout: BlockLayout = "paper"

    def __post_init__(self) -> None:
        section = "model.encoder"
        at_least(section, "hidden_size", self.hidden_size, 1)
        at_least(section, "num_blocks", self.num_blocks, 0)
        at_least(section, "num_heads", self.num_heads, 1)
        if self.hidden_size % self.num_heads:
            raise OptionError(f"--{section}.hidden_size {self.hidden_size} is not divisible by --{section}.num_heads "
                              f"{self.num_heads}: each head gets hidden_size / num_heads dimensions")
        in_range(section, "dropout", self.dropout, 0.0, 1.0, high_open=True)
        one_of(section, "init", self.init, Init)
        positive(section, "init_std", self.init_std)
        one_of(section, "block_layout", self.block_layout, BlockLayout)



@dataclass(frozen=True)
class ItemFeatureOptions:
    """How an item's vector is built from its id and its features (``--model.features.*``).

    Used only when the data gives an item table (``--data.features.*``); without one the model is the
    paper's, and these options change nothing. See ``docs/features.md``.

    Args:
        combine: ``sum``: the id vector plus one vector per feature column; ``concat``: the id and
            feature vectors side by side, mapped to ``hidden_size`` by a learned linear layer.
        id_dropout: share of item ids replaced, in each training step, by the learned "unknown id"
            vector (each position and each scored item drawn independently), so that the model learns
            to score an item from its features alone, as it must for a cold-start item (no training
            interaction). The default 0.1 keeps 90 % of each item's id signal (warm items lose little)
            while the unknown-id vector and the features alone are trained on a tenth of every step's
            positions and negatives, thousands per batch; 0 trains the unknown-id vector only on
            cold items (none unless the data has some). Ignored with ``use_ids: false``.
        use_ids: learn an id vector per item; ``false``: items are represented by their features
            only (every item is scored like a cold-start item).
    """

    combine: Combine = "sum"
    id_dropout: float = 0.1
    use_ids: bool = True

    def __post_init__(self) -> None:
        section = "model.features"
        one_of(section, "combine", self.combine, Combine)
        in_range(section, "id_dropout", self.id_dropout, 0.0, 1.0, high_open=True)
        if not isinstance(self.use_ids, bool):
            raise OptionError(f"--{section}.use_ids {self.use_ids!r}: expected true or false")
