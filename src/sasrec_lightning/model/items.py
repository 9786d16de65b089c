"""The item representation: one part that gives the vectors of items, for the input and for scoring.

SASRec as published represents an item by one row of an embedding table ``M`` (row 0 is padding)
and uses the same table on both sides: the input sequence is ``M[s]`` and the score of item ``i``
is ``F_t . M_i`` (paper Sec. III-A and III-E, the "shared item embedding"). The encoder, the
losses and ranking reach the items only through this part's two questions: the vectors of some ids
(:meth:`ItemRepresentation.forward`) and the whole table for scoring every item
(:meth:`ItemRepresentation.table`), so another representation (item side features, or an
embedding swapped in by the speed parts) changes nothing of theirs.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ItemRepresentation"]


class ItemRepresentation(nn.Module):
    """The vectors of items ``1..num_items``; id ``0`` is padding, whose vector is zero and never learns.

    Args:
        num_items: number of items.
        hidden_size: vector size ``d``.
    """

    def __init__(self, num_items: int, hidden_size: int) -> None:
        super().__init__()
        self.num_items = num_items
        self.embedding = nn.Embedding(num_items + 1, hidden_size, padding_idx=0)  # M: (I + 1, d)

    def forward(self, item_ids: Tensor) -> Tensor:
        """The vectors of ``item_ids``: ``(...) -> (..., d)``."""
        return self.embedding(item_ids)

    def table(self) -> Tensor:
        """The ``(num_items + 1, d)`` vectors of every item id, row 0 (padding) included, for scoring them all."""
        return self.embedding.weight
