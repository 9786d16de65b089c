"""Export a trained SASRec for serving: TorchScript and ONNX.

The exported graph is the encoder plus the item embedding table: left-padded item ids in, a
score for every item and the user vector out. Batch size and sequence length are dynamic
(``1 <= L <= max_len``; right-aligned positions make a short batch exact, see ``encoder.py``).
Ids are internal (``1..num_items``, 0 = padding); the command writes the original item ids next
to the model (``<output>.items.json``, index = internal id) so a service can translate both ways.
Every file is written whole or not at all (``atomic.py``).

The command ``sasrec-lightning-export`` (``cli/export.py``) exports a checkpoint. ONNX needs the
optional extra: ``pip install "sasrec-lightning[onnx]"``.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..atomic import atomic_path, atomic_write
from ..errors import MissingPackageError, ModelError
from ..model.divergence import nonfinite_parameters, weights_error
from ..model.encoder import SASRec
from ..model.items import FeatureItems

__all__ = [
    "ServingModel", "freeze_item_features", "check_exportable", "export_torchscript", "export_onnx", "example_input",
    "require_onnx_exporter",
]

INPUT_NAMES = ["input_ids"]
OUTPUT_NAMES = ["scores", "user_vectors"]


class ServingModel(nn.Module):
    """Encoder + item embeddings in eval mode, the graph that is exported.

    Args:
        encoder: a trained :class:`SASRec` (copied, so the original keeps training).

    Raises:
        ModelError: the encoder's weights or its scores are not finite (a diverged model would answer NaN),
            so nothing is exported (:func:`check_exportable`).
    """

    def __init__(self, encoder: SASRec) -> None:
        super().__init__()
        check_exportable(encoder)
        # Inference only: parameters that do not require grad give outputs that do not either (a traced
        # module otherwise returns scores with requires_grad=True to every caller).
        self.encoder = copy.deepcopy(encoder).eval().requires_grad_(False)
        # Padding, and items the model never recommends (no trained id and no features), score -inf.
        blocked = torch.arange(encoder.num_items + 1, device=encoder.output_weight.device) == 0  # (I + 1,)
        never = encoder.scoring_items.blocked_items()
        self.register_buffer("padding_column", blocked if never is None else blocked | never, persistent=False)
        freeze_item_features(self.encoder)
        self.eval()

    def forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Score every item after each sequence.

        Args:
            input_ids: ``(B, L)`` int64 internal item ids, left-padded with 0, any ``L >= 1``: a longer
                sequence is cut to its last ``max_len`` items, as the data module does in training.

        Returns:
            ``scores`` ``(B, num_items + 1)`` (column 0, padding, is ``-inf``) and ``user_vectors``
            ``(B, d)``, the hidden state at the last position (for nearest-neighbour serving against
            the item embeddings).
        """
        recent = input_ids[:, -self.encoder.max_len :]  # (B, min(L, n)): the model's window, most recent last
        hidden = self.encoder(recent)[:, -1]  # (B, d)
        scores = hidden @ self.encoder.output_weight.T  # (B, I + 1)
        return scores.masked_fill(self.padding_column, float("-inf")), hidden  # (B, I + 1), (B, d)


def freeze_item_features(encoder: SASRec) -> None:
    """Replace item representations with side features by their computed item table (an id table).

    The exported graph then looks up and scores rows of one fixed ``(I + 1, d)`` table, as the model
    in eval mode does (``FeatureItems.table``), with no feature arrays or per-request feature work.
    """
    for name in ("items", "output_items"):
        items = getattr(encoder, name)
        if isinstance(items, FeatureItems):
            setattr(encoder, name, items.frozen().requires_grad_(False))


def check_exportable(encoder: SASRec, where: str = "export") -> None:
    """Raise :class:`ModelError` when ``encoder``'s weights, or its scores of :func:`example_input`, are not finite.

    The scores catch finite weights so large that every score overflows float32 (one Adam step at ``lr``
    1e10 moves each weight by about 1e10). ``where`` begins the message.
    """
    remedy = "Export a checkpoint saved before the training diverged, or train again with a lower learning rate"
    names = nonfinite_parameters(encoder)
    if names:
        raise weights_error(where, names, encoder, "every score of the exported model would be NaN, so nothing "
                            "was exported", remedy)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            scores = encoder.score_all(encoder.last_hidden(example_input(encoder)))[:, 1:]  # (2, I) without padding
    finally:
        encoder.train(was_training)
    if not bool(torch.isfinite(scores).all()):
        raise ModelError(f"{where}: the model's weights are finite, but its scores of an example sequence are not "
                         "(they overflow float32, a diverged model), so nothing was exported. " + remedy)


def example_input(encoder: SASRec, batch: int = 2) -> Tensor:
    """A ``(batch, max_len)`` example with a left-padded row, for tracing/exporting."""
    ids = torch.arange(batch * encoder.max_len).reshape(batch, encoder.max_len) % encoder.num_items + 1  # (B, n)
    ids[0, : encoder.max_len // 2] = 0
    return ids


def require_onnx_exporter() -> None:
    """Raise :class:`MissingPackageError` naming the ``onnx`` extra when ``onnx`` or ``onnxscript`` is missing.

    Called before any work, so the command fails in one line instead of deep inside ``torch.onnx.export``.
    """
    for name in ("onnx", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise MissingPackageError(
                f"ONNX export needs the optional packages onnx and onnxscript, and {name} is not installed "
                f"({error}): pip install \"sasrec-lightning[onnx]\" (also installs onnxruntime, to run the "
                "exported model), or export to TorchScript with --output model.pt, which needs no extra package"
            ) from error


def export_torchscript(encoder: SASRec, path: str | Path) -> Path:
    """Trace :class:`ServingModel` and save it with ``torch.jit.save``.

    Tracing records tensor shapes symbolically, so the saved module accepts any batch size and
    length ``L <= max_len`` (checked by the tests). ``torch.jit`` is deprecated in recent PyTorch
    releases but still the format many serving stacks load; its deprecation warning is silenced.
    """
    model = ServingModel(encoder)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation + "converting a tensor to a Python integer" notes
        traced = torch.jit.trace(model, example_input(encoder))
    with atomic_write(path, "the TorchScript export", "--output") as handle:
        torch.jit.save(traced, handle)
    return Path(path)


def export_onnx(encoder: SASRec, path: str | Path, opset_version: int | None = None) -> Path:
    """Export :class:`ServingModel` to ONNX with the ``torch.export``-based exporter.

    The exporter needs ``onnxscript`` (``pip install "sasrec-lightning[onnx]"``); batch and length
    are dynamic axes, the length bounded by ``max_len``.
    """
    require_onnx_exporter()
    from torch.export import Dim

    model = ServingModel(encoder)
    batch, length = Dim("batch", min=1), Dim("length", min=1)
    with torch.no_grad():
        program = torch.onnx.export(
            model, (example_input(encoder),), dynamo=True, input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
            dynamic_shapes=({0: batch, 1: length},), opset_version=opset_version, verbose=False,
        )
    with atomic_path(path, "the ONNX export", "--output") as temporary:
        program.save(str(temporary))
    return Path(path)
