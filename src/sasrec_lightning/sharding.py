"""The sharding plan: which parts of the :class:`~sasrec_lightning.encoder.SASRec` encoder FSDP2 shards.

Plain PyTorch (``torch.distributed.fsdp.fully_shard``); Lightning's ``ModelParallelStrategy`` calls
it through ``SASRecModule.configure_model``. Past a few million items the item table is nearly all
of the model (``(I + 1) x d`` against ``~12 d^2`` per block), so the plan is:

* each item table (the input table ``M``, and the output table when it is not shared) is its own
  FSDP unit. ``fully_shard`` splits a parameter along its first dimension, so rank ``r`` of ``N``
  keeps rows ``r * ceil((I + 1) / N)`` onward: a row shard of the table, its gradient and its Adam
  moments. The table is all-gathered for the lookups of a forward or backward pass and freed again
  afterwards (``reshard_after_forward``), and its gradient is reduce-scattered back to row shards;
* each self-attention block is a unit, so its gather overlaps the previous block's compute;
* the encoder itself is the root unit for what is left (positional embedding, final LayerNorm).

The numbers (what is kept per device and what is gathered for a step) are in ``docs/scaling.md``.
"""

from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from .encoder import SASRec
from .errors import OptionError

__all__ = ["check_sharding_options", "is_sharded", "shard_encoder", "gather", "reshard"]


def check_sharding_options(loss: str, l2_emb: float, tensor_parallel_size: int, world_size: int) -> None:
    """Refuse the options that read the whole item table outside its lookups, which a shard cannot serve.

    Args:
        loss: the model's ``loss``; ``ce`` multiplies every position with the whole output table.
        l2_emb: the model's ``l2_emb``; a penalty on the whole table, added after the forward pass.
        tensor_parallel_size: ``ModelParallelStrategy``'s; the model has no tensor-parallel plan.
        world_size: number of processes (for the message).
    """
    if tensor_parallel_size != 1:
        raise OptionError(
            f"--trainer.strategy.init_args.tensor_parallel_size {tensor_parallel_size}: SASRec is sharded by FSDP2 "
            f"only; expected tensor_parallel_size 1 and data_parallel_size {world_size} (the number of processes), "
            "as configs/trainer/fsdp.yaml sets them"
        )
    if loss == "ce":
        raise OptionError(
            "--model.init_args.loss ce: the exact softmax multiplies every position with the whole output table, "
            "which a sharded model does not hold outside its lookups; under ModelParallelStrategy use "
            "sampled_softmax, bce, gbce or bpr"
        )
    if l2_emb:
        raise OptionError(
            f"--model.init_args.l2_emb {l2_emb}: the penalty reads the whole item table after the forward pass, "
            "which a sharded model does not hold; under ModelParallelStrategy set l2_emb 0 (weight_decay is "
            "applied by the optimizer to each shard)"
        )


def is_sharded(encoder: SASRec) -> bool:
    """Whether :func:`shard_encoder` has already been applied (``configure_model`` runs once per stage)."""
    return isinstance(encoder, FSDPModule)


def shard_encoder(encoder: SASRec, mesh: DeviceMesh) -> None:
    """Shard the encoder's parameters in place across the processes of a 1-D ``mesh`` (FSDP2).

    Args:
        encoder: the model; its parameters become ``DTensor`` row shards (``Shard(0)``).
        mesh: the data-parallel device mesh (every process trains on its own batches, as under DDP).
    """
    if mesh.ndim != 1:
        raise ValueError(f"shard_encoder needs a 1-D device mesh, got {mesh.ndim} dimensions ({mesh})")
    tables = [encoder.item_embedding] + ([encoder.output_embedding] if encoder.output_embedding is not None else [])
    for module in (*tables, *encoder.blocks):
        fully_shard(module, mesh=mesh)
    fully_shard(encoder, mesh=mesh)


def _units(encoder: SASRec) -> list[FSDPModule]:
    return [module for module in encoder.modules() if isinstance(module, FSDPModule)]


def gather(encoder: SASRec) -> None:
    """All-gather every unit and keep it whole until :func:`reshard` (evaluation and prediction).

    Full ranking scores every item with the table itself (``encoder.output_weight``), outside any unit's
    forward pass, and evaluation shards are uneven (every user counted once), so a process may run
    more batches than another: with the parameters gathered once, no per-batch collective is left to
    wait for. Costs the full parameters on each device for the evaluation (``docs/scaling.md``).
    """
    for unit in _units(encoder):
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)


def reshard(encoder: SASRec) -> None:
    """Undo :func:`gather`: back to row shards, gathered again for each forward pass.

    The root unit (positions, final LayerNorm) stays gathered from its forward to its backward pass,
    FSDP2's default for the root.
    """
    for unit in _units(encoder):
        unit.reshard()
        unit.set_reshard_after_forward(unit is not encoder, recurse=False)
