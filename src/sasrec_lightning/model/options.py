"""The encoder's options: one typed group, checked where it is defined (``--model.encoder.*``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import OptionError
from ..validation import at_least, in_range, one_of, positive

__all__ = ["EncoderOptions", "BlockLayout", "Init"]

BlockLayout = Literal["paper", "reference"]
Init = Literal["normal", "xavier", "xavier_uniform"]


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

