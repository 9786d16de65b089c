"""The memory a model needs, estimated from its options before it is allocated; what cannot fit is refused.

Two checks, each where its numbers are known (``SASRecModule`` calls both):

* :func:`check_parameter_memory`, in the constructor: the parameters, about to be allocated on the
  default device (the CPU). ``hidden_size`` 2^20 asks 13 TB for one block's ``W_Q, W_K, W_V``;
  torch's allocation error would reach the user wrapped in jsonargparse's "Does not validate against
  any of the Union subtypes".
* :func:`check_training_memory`, at fit start, with the data's largest batches
  (:class:`~sasrec_lightning.batches.TrainingStatistics`): gradients and Adam's two moments of every
  parameter, the first training step's activations (the attention weights ``B x H x L x L`` each
  block saves for backward, which grow with the square of the longest sequence: ``max_len`` 100,000
  with one long-history user asks terabytes) and the loss's logit block, or the first evaluation
  batch's, whichever is larger.

The estimates count float32 values and err high (every tensor a step holds at its peak, none freed
early), so a run that is refused would not have fit; they stay far below the memory of an ordinary
machine for the shipped configs (``tests/test_memory.py``). They are compared with the memory
available at the time of the check: Linux's ``MemAvailable`` (or ``os.sysconf``) for the CPU, the free
memory of a CUDA device (``torch.cuda.mem_get_info``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

from ..errors import OptionError
from ..model.encoder import SASRec
from ..model.options import EncoderOptions
from ..model.ranking import chunk_items

__all__ = ["available_memory", "parameter_memory", "check_parameter_memory", "training_memory", "peak",
           "check_training_memory", "check_fit_memory", "readable_size"]

_FLOAT = 4  # bytes of a float32 value


def readable_size(size: float) -> str:
    """``13194139533312`` -> ``'12.0 TiB'``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def available_memory(device: torch.device) -> tuple[int, str] | None:
    """Bytes that new tensors on ``device`` can take now, and where the number comes from (``None``: unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"free on {device}"
    if device.type != "cpu":
        return None  # meta (nothing is allocated), MPS, ...
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available on this machine (MemAvailable)"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free on this machine"
    except (AttributeError, ValueError, OSError):
        return None


# ----------------------------------------------------------------------------------- parameters
def parameter_memory(num_items: int, max_len: int, options: EncoderOptions) -> dict[str, int]:
    """Bytes of the encoder's parameters by part: ``item tables``, ``position table``, ``blocks``.

    The encoder is built on the meta device (shapes, no memory), so the count is its own.
    """
    with torch.device("meta"):
        encoder = SASRec(num_items, max_len, options)
    parts = {"item tables": 0, "position table": 0, "blocks": 0}
    for name, parameter in encoder.named_parameters():
        part = "item tables" if name.startswith(("items.", "output_items.")) else \
            "position table" if name.startswith("position_embedding") else "blocks"
        parts[part] += parameter.numel() * parameter.element_size()
    return parts


def check_parameter_memory(num_items: int, max_len: int, options: EncoderOptions,
                           device: torch.device | None = None) -> None:
    """Raise :class:`OptionError` when the encoder's parameters cannot be allocated on ``device``.

    Args:
        num_items: the catalogue's size.
        max_len: the longest input.
        options: the encoder's options.
        device: where the parameters will be allocated (default: torch's default device).
    """
    device = device if device is not None else torch.get_default_device()
    available = available_memory(device)
    if available is None:
        return
    parts = parameter_memory(num_items, max_len, options)
    if sum(parts.values()) <= available[0]:
        return
    largest = max(parts, key=parts.get)
    hint = {"item tables": f"--model.encoder.hidden_size (the catalogue has {num_items:,} items)",
            "position table": "--data.max_len or --model.encoder.hidden_size",
            "blocks": "--model.encoder.hidden_size or --model.encoder.num_blocks"}[largest]
    raise OptionError(
        f"--model.encoder.hidden_size {options.hidden_size}: the model's parameters need "
        f"{readable_size(sum(parts.values()))} ({_listed(parts)}), more than the {readable_size(available[0])} "
        f"{available[1]}; lower {hint}")


# ------------------------------------------------------------------------------------- training
def training_memory(module, parameters: int, batch_shape: tuple[int, int],
                    eval_batch_shape: tuple[int, int] | None = None) -> dict[str, int]:
    """Bytes the first training step and the first evaluation batch add to the allocated parameters, by part.

    Args:
        module: the ``SASRecModule`` (its encoder options, loss and evaluation options).
        parameters: number of parameter values.
        batch_shape: ``(B, L)`` sequences and padded width of the largest training batch.
        eval_batch_shape: ``(B, L)`` users and padded width of the largest evaluation batch.

    Returns:
        ``{"gradients and Adam moments": ..., "training attention": ..., ...}``; the training parts and
        the evaluation parts (``evaluation ...``) are not needed at the same time: see :func:`peak`.
    """
    encoder, evaluation, num_items = module.encoder_options, module.evaluation, module.model.num_items
    heads, blocks, hidden = encoder.num_heads, encoder.num_blocks, encoder.hidden_size
    batch, length = batch_shape
    positions = batch * length  # N
    # The (B, 1, L, L) float bias and its boolean masks, once; per block the scores and the softmax
    # (saved for backward), the dropout mask and the dropped weights, plus two (B, H, L, L) gradients.
    attention = batch * length * length * (6 + (3 * blocks + 2) * heads * _FLOAT)
    parts = {
        "gradients and Adam moments": 3 * parameters * _FLOAT,
        "training attention": attention,
        "training activations": (8 + 16 * blocks) * positions * hidden * _FLOAT,  # the (B, L, d) tensors saved
        "training loss": module.loss.peak_block(positions, batch, num_items, hidden) * _FLOAT,
    }
    if eval_batch_shape is not None:
        users, width = eval_batch_shape
        chunk = chunk_items(evaluation.chunk_size, users, num_items + 1) if evaluation.protocol == "full" else 0
        parts["evaluation attention"] = users * width * width * (6 + 3 * heads * _FLOAT)  # one block at a time
        parts["evaluation scores"] = 3 * users * chunk * _FLOAT  # a chunk of full-ranking scores, compared, masked
    return parts


def peak(parts: Mapping[str, int]) -> int:
    """What the parts of :func:`training_memory` need at once: the optimizer state plus the larger of both stages."""
    training = sum(size for name, size in parts.items() if name.startswith("training"))
    evaluation = sum(size for name, size in parts.items() if name.startswith("evaluation"))
    return parts["gradients and Adam moments"] + max(training, evaluation)


def check_training_memory(module, parameters: int, batch_shape: tuple[int, int],
                          eval_batch_shape: tuple[int, int] | None, device: torch.device,
                          processes: int = 1) -> str | None:
    """The one-line refusal when a training run cannot fit in the memory available on ``device``, else ``None``.

    Args:
        module: the ``SASRecModule``.
        parameters: number of parameter values (already allocated).
        batch_shape: ``(B, L)`` of the largest training batch.
        eval_batch_shape: ``(B, L)`` of the largest evaluation batch (``None``: not counted).
        device: the training device.
        processes: processes sharing this device's memory (the DDP processes of one machine on CPU).
    """
    available = available_memory(device)
    if available is None:
        return None
    parts = training_memory(module, parameters, batch_shape, eval_batch_shape)
    need = peak(parts) * processes
    if need <= available[0]:
        return None
    shown = {name: size for name, size in parts.items() if size}
    largest = max(shown, key=shown.get)
    batch, length = batch_shape
    max_len, hidden, items = module.model.max_len, module.encoder_options.hidden_size, module.model.num_items
    hints = {
        "gradients and Adam moments": f"--model.encoder.hidden_size (the catalogue has {items:,} items)",
        "training attention": f"--data.max_len ({max_len}) or --data.loader.batch_size",
        "training activations": f"--data.loader.batch_size or --model.encoder.hidden_size ({hidden})",
        "training loss": "the loss's block (--model.loss options: negatives or chunk_size)",
        "evaluation attention": f"--data.loader.eval_batch_size or --data.max_len ({max_len})",
        "evaluation scores": "--model.evaluation.chunk_size or --data.loader.eval_batch_size",
    }
    where = f" x {processes} processes" if processes > 1 else ""
    return (f"the largest training batch ({batch:,} sequences x {length:,} positions) needs about "
            f"{readable_size(need)}{where} besides the parameters ({_listed(shown)}), more than the "
            f"{readable_size(available[0])} {available[1]}; lower {hints[largest]}")


def check_fit_memory(module) -> None:
    """Refuse a run whose largest batch cannot fit in memory, on every process alike (``SASRecModule.on_fit_start``).

    Rank 0 decides and tells the others, so that no process is left waiting for one that stopped.
    """
    shapes, trainer = module.statistics, module.trainer
    if shapes is None or shapes.batch_shape is None:
        return  # a data module without the shapes of its batches: nothing to estimate from
    refusal = None
    if trainer.is_global_zero:
        processes = trainer.num_devices if module.device.type == "cpu" else 1  # sharing this machine's memory
        refusal = check_training_memory(module, sum(p.numel() for p in module.parameters()), shapes.batch_shape,
                                        shapes.eval_batch_shape, module.device, processes)
    refusal = trainer.strategy.broadcast(refusal)
    if refusal:
        raise OptionError(refusal)


def _listed(parts: Mapping[str, int]) -> str:
    """``'blocks 12.0 TiB, item tables 96.0 KiB'``: each part, largest first."""
    ordered = sorted(((size, name) for name, size in parts.items() if size), reverse=True)
    return ", ".join(f"{name} {readable_size(size)}" for size, name in ordered)
