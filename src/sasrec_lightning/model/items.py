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

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.features import ItemFeatures
from .options import ItemFeatureOptions

__all__ = ["ItemRepresentation", "FeatureItems", "CategoricalColumn", "MultiColumn", "NumericColumn", "VectorColumn"]


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

    def blocked_items(self) -> Tensor | None:
        """``(I + 1,)`` bool: items that are never recommended (none here: ``None``)."""
        return None


# ------------------------------------------------------------------------------------------- item side features
def _column_module(column: dict, hidden_size: int) -> nn.Module:
    kind, size, width = column["kind"], int(column["size"]), int(column.get("width", 1))
    if kind == "categorical":
        return CategoricalColumn(size, hidden_size)
    if kind == "multi":
        return MultiColumn(size, width, hidden_size)
    if kind == "numeric":
        return NumericColumn(hidden_size)
    if kind == "vector":
        return VectorColumn(width, hidden_size)
    raise ValueError(f"item feature column {column.get('name')!r} has kind {kind!r}; expected categorical, multi, "
                     "numeric or vector")


def _lookup(weight: Tensor, codes: Tensor) -> Tensor:
    """Rows ``weight[codes]``: ``(...) -> (..., d)``.

    ``index_select``, whose backward adds the rows into a zero gradient, rather than ``nn.Embedding``,
    whose backward sorts the codes first: for the small feature tables the sort was most of the cost.
    """
    return weight.index_select(0, codes.reshape(-1)).view(*codes.shape, weight.size(-1))


class _WeightedBag(torch.autograd.Function):
    """``sum_j weights[n, j] * weight[codes[n, j]]``: ``(N, w)`` codes and weights -> ``(N, d)``.

    The forward is ``F.embedding_bag``'s (no ``(N, w, d)`` block); its own backward sorts the codes, so
    the gradient of the (small) table is added here row by row, for the entries of non-zero weight only.
    """

    @staticmethod
    def forward(ctx, weight: Tensor, codes: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(codes, weights)
        ctx.rows = weight.size(0)
        return F.embedding_bag(codes, weight, mode="sum", per_sample_weights=weights.to(weight.dtype))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        codes, weights = ctx.saved_tensors
        flat = weights.reshape(-1)  # (N * w,)
        entries = torch.nonzero(flat).squeeze(1)  # (E,) the values (weight 0: no value)
        rows = torch.div(entries, codes.size(1), rounding_mode="floor")  # (E,) the item of each
        contributions = grad.index_select(0, rows) * flat[entries].to(grad.dtype).unsqueeze(-1)  # (E, d)
        grad_weight = grad.new_zeros(ctx.rows, grad.size(1)).index_add_(0, codes.reshape(-1)[entries], contributions)
        return grad_weight, None, None


class CategoricalColumn(nn.Module):
    """One value per item: ``E[code]``, code 0 (unknown or missing) a learned vector of its own.

    Args:
        size: codes ``0..size - 1``.
        hidden_size: ``d``.
    """

    def __init__(self, size: int, hidden_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(size, hidden_size)  # (V, d); row 0 = unknown, learned (not padding)
        self.register_buffer("values", torch.zeros(0, dtype=torch.int64))  # (I + 1,) codes, set by load

    def forward(self, item_ids: Tensor) -> Tensor:
        """``(...) -> (..., d)``."""
        return _lookup(self.embedding.weight, self.values[item_ids])


class MultiColumn(nn.Module):
    """Several values per item: the mean of their vectors; an item with none gets the unknown vector ``E[0]``.

    Args:
        size: codes ``0..size - 1``.
        width: codes kept per item (0-padded).
        hidden_size: ``d``.
    """

    def __init__(self, size: int, width: int, hidden_size: int) -> None:
        super().__init__()
        self.width = width
        self.embedding = nn.Embedding(size, hidden_size)  # (V, d); row 0 = unknown (no value)
        self.register_buffer("values", torch.zeros(0, width, dtype=torch.int64))  # (I + 1, w) codes, 0 = none

    def forward(self, item_ids: Tensor) -> Tensor:
        """``(...) -> (..., d)``."""
        codes = self.values[item_ids.reshape(-1)]  # (N, w)
        present = (codes != 0).float()  # (N, w)
        count = present.sum(dim=-1, keepdim=True)  # (N, 1)
        # Weights 1 / count on the values, and for an item with none weight 1 on its first code (0, unknown):
        # the mean, or E[0], as one weighted sum (the weights are small: (N, w)).
        weights = (present / count.clamp(min=1.0)).index_add_(1, present.new_zeros(1, dtype=torch.long),
                                                               (count == 0).float())  # (N, w)
        mean = _WeightedBag.apply(self.embedding.weight, codes, weights)  # (N, d)
        return mean.view(*item_ids.shape, -1)


class NumericColumn(nn.Module):
    """One number per item (already standardized): ``value * w + b``; a missing value (NaN) a learned vector."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(1, hidden_size)  # w: (d, 1), b: (d,)
        self.missing = nn.Parameter(torch.empty(1, hidden_size))  # (1, d)
        self.register_buffer("values", torch.zeros(0))  # (I + 1,) float32, NaN = missing

    def forward(self, item_ids: Tensor) -> Tensor:
        """``(...) -> (..., d)``."""
        value = self.values[item_ids].unsqueeze(-1)  # (..., 1)
        missing = torch.isnan(value)  # (..., 1)
        # NaN zeroed before the product: torch.where alone would still send NaN * 0 gradients to w.
        scaled = torch.addcmul(self.linear.bias, value.masked_fill(missing, 0.0), self.linear.weight[:, 0])  # (..., d)
        return torch.where(missing, self.missing[0], scaled)


class VectorColumn(nn.Module):
    """A dense vector per item (e.g. a text embedding): ``Linear(width, d)``; a missing row (NaN) a learned vector."""

    def __init__(self, width: int, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, hidden_size)
        self.missing = nn.Parameter(torch.empty(1, hidden_size))  # (1, d)
        self.register_buffer("values", torch.zeros(0, width))  # (I + 1, width) float32, NaN row = missing

    def forward(self, item_ids: Tensor) -> Tensor:
        """``(...) -> (..., d)``."""
        rows = self.values[item_ids]  # (..., width)
        missing = torch.isnan(rows).any(dim=-1, keepdim=True)  # (..., 1)
        return torch.where(missing, self.missing[0], self.linear(rows.masked_fill(missing, 0.0)))  # (..., d)


def _weights_version(module: nn.Module) -> tuple:
    """What changes whenever a parameter or buffer of ``module`` is replaced or written in place.

    The one use of a private attribute (``Tensor._version``, the autograd version counter that every
    in-place write bumps: optimizer steps, ``load_state_dict``, ``copy_``); there is no public way to
    ask whether a tensor was written. ``tests/test_feature_model.py`` checks it.
    """
    return tuple((t.data_ptr(), t._version, t.dtype, tuple(t.shape))
                 for t in (*module.parameters(), *module.buffers()))


class FeatureItems(ItemRepresentation):
    """Items represented by their id and their side features, on the input side and for scoring alike.

    An item's vector combines its id vector ``M_i`` (``embedding``, as in the paper; row 0 padding)
    with one vector per feature column of the item table (``data/features.py``): summed, or
    concatenated and mapped to ``d`` by a linear layer. An item whose id was never trained
    (``id_known`` False: a cold-start item) takes the learned "unknown id" vector instead of ``M_i``,
    so its vector comes from its features; in training a share ``id_dropout`` of the ids looked up is
    replaced by it too, so that the model learns to score items that way. Padding (id 0) is the zero
    vector.

    The feature arrays are buffers (a checkpoint carries them); :meth:`load_features` fills them.

    In eval mode without autograd the whole table is computed once while the weights stay the same
    (:meth:`table`), and the vectors of ids are its rows: one table per evaluation pass, ``predict`` or
    ``recommend`` call, and ``forward(ids)`` equal to ``table()[ids]`` bit for bit.

    Args:
        num_items: number of items.
        hidden_size: ``d``.
        spec: the item table's description, :meth:`ItemFeatures.spec() <sasrec_lightning.data.features.
            ItemFeatures.spec>` (``{"columns": [{"name", "kind", "size", "width"}, ...]}``).
        options: how the parts are combined (:class:`~sasrec_lightning.model.options.ItemFeatureOptions`).
    """

    def __init__(self, num_items: int, hidden_size: int, spec: dict, options: ItemFeatureOptions | None = None) -> None:
        super().__init__(num_items, hidden_size)
        options = options or ItemFeatureOptions()
        self.options, self.spec = options, {"columns": [dict(column) for column in spec.get("columns", ())]}
        self.names = [column["name"] for column in self.spec["columns"]]
        if not options.use_ids:
            self.embedding = None  # no id vectors: every item is scored from its features
            if not self.names:
                raise ValueError("--model.features.use_ids false needs at least one item feature column; the item "
                                 "table has none")
        self.unknown_id = nn.Parameter(torch.empty(1, hidden_size)) if options.use_ids else None  # (1, d)
        self.columns = nn.ModuleList(_column_module(column, hidden_size) for column in self.spec["columns"])
        parts = len(self.columns) + int(options.use_ids)
        self.project = nn.Linear(parts * hidden_size, hidden_size) if options.combine == "concat" else None
        # Set by load_features: trained ids, and which items had a row in the item table.
        self.register_buffer("id_known", torch.ones(num_items + 1, dtype=torch.bool))  # (I + 1,)
        self.register_buffer("has_row", torch.ones(num_items + 1, dtype=torch.bool))  # (I + 1,)
        for column in self.columns:
            shape = (num_items + 1, *column.values.shape[1:])
            fill = 0 if column.values.dtype == torch.int64 else float("nan")
            column.values = torch.full(shape, fill, dtype=column.values.dtype)
        # Id dropout draws from a generator of its own, seeded per draw from these two (in the state dict, so a
        # resumed run draws the same): the torch generator's stream stays the encoder's dropout's alone.
        self.register_buffer("dropout_seed", torch.randint(0, 2**62, (), dtype=torch.int64))
        self.register_buffer("dropout_draws", torch.zeros((), dtype=torch.int64))
        self._cached: tuple[tuple, Tensor] | None = None  # (weights version, table) in eval mode

    @torch.no_grad()
    def load_features(self, item_features: ItemFeatures, trained: Tensor | np.ndarray | None = None) -> None:
        """Copy the encoded item table in, and which ids were trained.

        Args:
            item_features: the data's :class:`~sasrec_lightning.data.features.ItemFeatures`, of this model's
                spec and ``num_items``.
            trained: ``(I + 1,)`` bool, the item had training interactions (``item_popularity() > 0``);
                ``None``: every item.

        Raises:
            ValueError: another spec or item count than the model was built with.
        """
        if item_features.spec() != self.spec:
            raise ValueError(f"the item table's columns {item_features.spec()['columns']} are not the ones the model "
                             f"was built with {self.spec['columns']}")
        if item_features.num_items != self.num_items:
            raise ValueError(f"the item table covers {item_features.num_items} items but the model was built with "
                             f"num_items={self.num_items}")
        for name, column in zip(self.names, self.columns, strict=True):
            column.values.copy_(torch.as_tensor(np.asarray(item_features.values[name])).reshape(column.values.shape))
        has_row = item_features.has_row if item_features.has_row is not None else np.ones(self.num_items + 1, bool)
        self.has_row.copy_(torch.as_tensor(np.asarray(has_row, dtype=bool)))
        known = torch.ones(self.num_items + 1, dtype=torch.bool) if trained is None else torch.as_tensor(trained)
        self.id_known.copy_(known.to(torch.bool).reshape(-1))
        self.id_known[0] = True  # padding: the zero row of the id table

    def blocked_items(self) -> Tensor:
        """``(I + 1,)`` bool: items with neither a trained id nor a row in the item table, never recommended."""
        blocked = ~(self.id_known | self.has_row)  # (I + 1,)
        blocked[0] = False
        return blocked

    def forward(self, item_ids: Tensor) -> Tensor:
        """The vectors of ``item_ids``: ``(...) -> (..., d)``; id 0 gives the zero vector."""
        if self._cacheable():
            return F.embedding(item_ids, self.table())  # rows of the one table of these weights
        self._cached = None
        return self._vectors(item_ids)

    def table(self) -> Tensor:
        """The ``(num_items + 1, d)`` vectors of every item id (row 0 zero): the same computation on ``0..I``."""
        if not self._cacheable():
            self._cached = None
            return self._compute_table()
        key = (_weights_version(self), torch.is_inference_mode_enabled(), _autocast_state(self.id_known.device))
        if self._cached is None or self._cached[0] != key:
            self._cached = None  # let the old table go before the new one is built
            self._cached = (key, self._compute_table())
        return self._cached[1]

    def frozen(self) -> ItemRepresentation:
        """A plain :class:`ItemRepresentation` whose id table is this one's item table (for export)."""
        with torch.no_grad():
            table = self._compute_table().detach().clone()  # (I + 1, d)
        plain = ItemRepresentation(self.num_items, table.size(1))
        plain.embedding.weight.data = table
        return plain.to(table.device)

    def _cacheable(self) -> bool:
        return not self.training and not torch.is_grad_enabled()

    def _compute_table(self) -> Tensor:
        return self._vectors(torch.arange(self.num_items + 1, device=self.id_known.device))

    def _vectors(self, item_ids: Tensor) -> Tensor:
        """The vectors computed from the id and the features: ``(...) -> (..., d)``; padding (id 0) is zero.

        Only the real ids are computed (input sequences are mostly padding on short-sequence data), then
        put in place among zero rows.
        """
        flat = item_ids.reshape(-1)  # (N,)
        real = torch.nonzero(flat).squeeze(1)  # (n,)
        if real.numel() == flat.numel():
            return self._real_vectors(item_ids)
        vectors = self._real_vectors(flat.index_select(0, real))  # (n, d)
        out = vectors.new_zeros(flat.numel(), vectors.size(-1)).index_copy(0, real, vectors)  # (N, d)
        return out.view(*item_ids.shape, -1)

    def _real_vectors(self, item_ids: Tensor) -> Tensor:
        """The vectors of ids that are all non-zero: ``(...) -> (..., d)``."""
        parts = [column(item_ids) for column in self.columns]  # F x (..., d)
        if self.options.use_ids:
            parts.insert(0, self._id_vectors(item_ids))
        if self.project is not None:
            vectors = self.project(torch.cat(parts, dim=-1))  # (..., (1 + F) d) -> (..., d)
        else:
            vectors = parts[0]
            for part in parts[1:]:
                vectors = vectors + part  # (..., d)
        return vectors

    def _uniform(self, shape: torch.Size, device: torch.device) -> Tensor:
        """Uniform ``[0, 1)`` numbers of ``shape``, the next draw of the id dropout's own stream."""
        generator = torch.Generator(device=device).manual_seed(int(self.dropout_seed + self.dropout_draws))
        self.dropout_draws += 1
        return torch.rand(shape, generator=generator, device=device)

    def _id_vectors(self, item_ids: Tensor) -> Tensor:
        """``M_i``, or the unknown-id vector for an untrained id and, in training, a share ``id_dropout`` of ids."""
        unknown = ~self.id_known[item_ids]  # (...)
        if self.training and self.options.id_dropout > 0:
            unknown = unknown | (self._uniform(item_ids.shape, item_ids.device) < self.options.id_dropout)
        # An unknown id looks up the padding row (zero, no gradient): its own row learns nothing from it.
        ids = self.embedding(item_ids.masked_fill(unknown, 0))  # (..., d), zero where unknown
        return torch.addcmul(ids, unknown.unsqueeze(-1).to(ids.dtype), self.unknown_id[0])  # one pass, not a where


def _autocast_state(device: torch.device) -> tuple:
    kind = device.type
    return (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind)) if kind in ("cpu", "cuda") else ()
