"""The sharding plans of the :class:`~sasrec_lightning.encoder.SASRec` encoder: FSDP2, or tensor-parallel item tables.

Plain PyTorch (``torch.distributed.fsdp.fully_shard`` and ``torch.distributed.tensor.parallel``);
Lightning's ``ModelParallelStrategy`` calls it through ``SASRecModule.configure_model``. Past a few
million items the item table is nearly all of the model (``(I + 1) x d`` against ``~12 d^2`` per
block). With ``tensor_parallel_size`` 1 (``configs/trainer/fsdp.yaml``) the plan is FSDP2:

* each item table (the input table ``M``, and the output table when it is not shared) is its own
  FSDP unit. ``fully_shard`` splits a parameter along its first dimension, so rank ``r`` of ``N``
  keeps rows ``r * ceil((I + 1) / N)`` onward: a row shard of the table, its gradient and its Adam
  moments. The table is all-gathered for the lookups of a forward or backward pass and freed again
  afterwards (``reshard_after_forward``), and its gradient is reduce-scattered back to row shards;
* each self-attention block is a unit, so its gather overlaps the previous block's compute;
* the encoder itself is the root unit for what is left (positional embedding, final LayerNorm).

With ``tensor_parallel_size`` ``T`` > 1 and ``data_parallel_size`` 1 (``configs/trainer/tp.yaml``)
the item tables are never gathered while training (:func:`shard_tables`): torch's
``ColwiseParallel`` makes each table a ``DTensor`` split into ``T`` slices of its ``d`` columns; a
lookup hands every process the same ids, each looks up its columns of those rows and the
``(..., d / T)`` slices are all-gathered into ordinary ``(..., d)`` tensors. The backward pass of a
lookup then stays local and gives each process the gradient of its own columns, so the table, its
gradient and its Adam moments are ``1/T`` of their size on every process. (Splitting by rows with
``RowwiseParallel`` keeps the weights and moments as row shards too, but torch computes its backward
pass as a replicated, whole ``(I + 1, d)`` gradient on every process: measured with torch 2.13,
``docs/scaling.md``.) The rest of the encoder is replicated and every process trains on the same
batch with the same negatives and dropout masks (the data module shards batches by the
data-parallel rank, :func:`synchronize_replicas` and :func:`share_random_state` align the initial
weights and the random state), so the replicas compute the same steps: memory scales with ``T``,
compute does not.

The numbers (what is kept per device and what is gathered for a step) are in ``docs/scaling.md``.
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy, Strategy
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

from ..errors import CheckpointError, OptionError
from ..model.encoder import SASRec
from .checkpoints import restore_rng_states, save_rng_states

__all__ = ["check_sharding_options", "is_sharded", "shard_encoder", "shard_tables", "synchronize_replicas",
           "share_random_state", "parameter_groups", "regroup_optimizer_state", "gather", "reshard", "shard_model",
           "shards_parameters", "tensor_parallel", "regroup_for_resume", "GatheredEvaluation"]


def check_sharding_options(loss, l2_emb: float, tensor_parallel_size: int, data_parallel_size: int,
                           item_updates: str = "dense") -> None:
    """Refuse the options that read the whole item table outside its lookups, which a shard cannot serve.

    Args:
        loss: the model's loss; one that ``reads_whole_table`` (``ce``) multiplies every position with the whole
            output table.
        l2_emb: the model's ``l2_emb``; a penalty on the whole table, added after the forward pass.
        tensor_parallel_size: ``ModelParallelStrategy``'s; above 1 the tables are tensor-parallel.
        data_parallel_size: ``ModelParallelStrategy``'s; must be 1 when ``tensor_parallel_size`` is not.
        item_updates: the model's ``item_updates``; ``lazy`` and ``deferred`` read the rows of the whole
            table's gradient, which a tensor-parallel table does not have.
    """
    processes = tensor_parallel_size * data_parallel_size
    if tensor_parallel_size != 1 and data_parallel_size != 1:
        raise OptionError(
            f"--trainer.strategy.init_args.tensor_parallel_size {tensor_parallel_size} with data_parallel_size "
            f"{data_parallel_size}: the item table is split over all processes by tensor parallelism "
            "(data_parallel_size 1, configs/trainer/tp.yaml) or sharded by FSDP2 (tensor_parallel_size 1, "
            f"configs/trainer/fsdp.yaml), not both; expected tensor_parallel_size {processes} and "
            f"data_parallel_size 1, or tensor_parallel_size 1 and data_parallel_size {processes}"
        )
    if tensor_parallel_size != 1 and item_updates != "dense":
        raise OptionError(
            f"--model.speed.item_updates {item_updates}: the row-sparse Adam reads the rows of the whole item "
            "table's gradient, which a tensor-parallel table (tensor_parallel_size "
            f"{tensor_parallel_size}) does not hold; use item_updates dense"
        )
    if loss.reads_whole_table:
        raise OptionError(
            f"--model.loss {type(loss).__name__}: it reads the whole output table every step (the exact softmax "
            "multiplies every position with it), which a sharded model does not hold outside its lookups; under "
            "ModelParallelStrategy use sampled_softmax, bce, gbce or bpr"
        )
    if l2_emb:
        raise OptionError(
            f"--model.optimization.l2_emb {l2_emb}: the penalty reads the whole item table after the forward pass, "
            "which a sharded model does not hold; under ModelParallelStrategy set l2_emb 0 (weight_decay is "
            "applied by the optimizer to each shard)"
        )


def _table_names(encoder: SASRec) -> list[str]:
    """The encoder's item tables (embeddings of its item representations): the input one, the output one if unshared."""
    return ["items.embedding"] + (["output_items.embedding"] if encoder.output_items is not None else [])


def is_sharded(encoder: SASRec) -> bool:
    """Whether a plan has already been applied (``configure_model`` runs once per stage)."""
    return isinstance(encoder, FSDPModule) or isinstance(encoder.items.table(), DTensor)


def shard_encoder(encoder: SASRec, mesh: DeviceMesh) -> None:
    """Shard the encoder's parameters in place across the processes of a 1-D ``mesh`` (FSDP2).

    Args:
        encoder: the model; its parameters become ``DTensor`` row shards (``Shard(0)``).
        mesh: the data-parallel device mesh (every process trains on its own batches, as under DDP).
    """
    if mesh.ndim != 1:
        raise ValueError(f"shard_encoder needs a 1-D device mesh, got {mesh.ndim} dimensions ({mesh})")
    for module in (*(encoder.get_submodule(name) for name in _table_names(encoder)), *encoder.blocks):
        fully_shard(module, mesh=mesh)
    fully_shard(encoder, mesh=mesh)


def shard_tables(encoder: SASRec, mesh: DeviceMesh) -> None:
    """Split each item table over a 1-D tensor-parallel ``mesh`` with torch's ``ColwiseParallel``, in place.

    Process ``r`` of ``T`` keeps columns ``r * ceil(d / T)`` onward of every row (a ``DTensor``,
    ``Shard(1)``), and so does the table's gradient: a lookup takes the same ids on every process
    (``Replicate``), each looks up its columns and the slices are all-gathered into an ordinary
    ``(..., d)`` tensor, so the rest of the encoder and the losses run unchanged; in the backward pass
    each process keeps its columns of the output gradient and builds its ``(I + 1, d / T)`` slice of the
    table's gradient without communication. The row-wise gradient speed part is off under sharding
    (``fast/speed.py``), so a lookup is ``nn.Embedding``'s ``F.embedding`` on the ``DTensor``.

    Not ``RowwiseParallel``: it splits the rows, but torch runs the backward pass of a row-wise lookup
    on the replicated output gradient and ids, which gives every process the whole ``(I + 1, d)``
    gradient (torch 2.13; ``docs/scaling.md``).

    Args:
        encoder: the model; every parameter outside the tables stays an ordinary, replicated tensor.
        mesh: the tensor-parallel device mesh.
    """
    if mesh.ndim != 1:
        raise ValueError(f"shard_tables needs a 1-D device mesh, got {mesh.ndim} dimensions ({mesh})")
    plan = {name: ColwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
            for name in _table_names(encoder)}
    parallelize_module(encoder, mesh, plan)


def synchronize_replicas(encoder: SASRec, mesh: DeviceMesh) -> None:
    """Copy the replicated parameters and buffers (all but the tensor-parallel tables) from the mesh's first process.

    The processes of a tensor-parallel group train one model: its replicated part must start equal
    everywhere (as DDP broadcasts rank 0's weights), also when the processes were not seeded alike.
    Called after :func:`shard_tables` (whose ``distribute_tensor`` sends each process its slice of the
    first process's tables), so only the small replicated part is sent.
    """
    group = mesh.get_group()
    tensors = [tensor for tensor in (*encoder.parameters(), *encoder.buffers()) if not isinstance(tensor, DTensor)]
    with torch.no_grad():
        for tensor in tensors:  # on the mesh's device for the collective (NCCL: a GPU), back where it was
            copy = tensor.detach().to(mesh.device_type)
            torch.distributed.broadcast(copy, group=group, group_src=0)
            tensor.copy_(copy)


def share_random_state(strategy, device: torch.device) -> None:
    """Give every process rank 0's torch (and CUDA) random state: the same dropout masks on every replica.

    Args:
        strategy: the Lightning strategy (its ``broadcast``).
        device: the module's device (for the CUDA state).
    """
    state: dict = {}
    save_rng_states(state, device)
    restore_rng_states(strategy.broadcast(state, src=0), device)


def parameter_groups(parameters: Iterable[Tensor]) -> list[dict]:
    """``parameters`` as optimizer groups, one per device mesh (ordinary tensors in a group of their own).

    Adam's fused and foreach kernels take one list of tensors per group, and the list may not mix
    ``DTensor`` s with ordinary tensors (fused: "aten._fused_adam_.default got mixed torch.Tensor and
    DTensor"), which tensor-parallel tables next to the replicated encoder would. Without ``DTensor`` s,
    or with all of them on one mesh (FSDP2), this is one group, as before.
    """
    groups: dict[int | None, list[Tensor]] = {}
    for parameter in parameters:
        key = id(parameter.device_mesh) if isinstance(parameter, DTensor) else None
        groups.setdefault(key, []).append(parameter)
    return [{"params": params} for params in groups.values()]


def regroup_optimizer_state(state_dict: dict, parameters: Iterable[Tensor]) -> dict:
    """A saved Adam state with its parameter groups laid out as :func:`parameter_groups` lays out ``parameters``.

    A tensor-parallel run saves two groups (the split tables, then the rest), one process or DDP
    one; ``torch.optim.Optimizer.load_state_dict`` refuses a different number of groups, so without
    this a tensor-parallel checkpoint could not resume in one process. Both save parameter ids in the
    order of ``module.parameters()`` (Lightning's ``ModelParallelStrategy`` re-keys its full state dict
    that way; a single group of ``parameters()`` numbers them so), so the per-parameter state stays
    as it is and only the groups are rebuilt. The state comes back unchanged when the groups already
    match or hold other ids (a custom optimizer's: its own ``load_state_dict`` decides).

    Args:
        state_dict: ``optimizer.state_dict()`` as saved (``state`` and ``param_groups``).
        parameters: the module's parameters, in ``module.parameters()`` order.

    Returns:
        The state dict with the groups of this run (a new dict; ``state`` is shared).

    Raises:
        CheckpointError: the saved groups differ in a setting (``lr``, ``betas``, ...), so one setting
            per new group cannot be chosen.
    """
    parameters = list(parameters)
    index = {id(parameter): position for position, parameter in enumerate(parameters)}
    layout = [[index[id(parameter)] for parameter in group["params"]] for group in parameter_groups(parameters)]
    saved = state_dict.get("param_groups", [])
    if [group["params"] for group in saved] == layout:
        return state_dict
    if sorted(i for group in saved for i in group["params"]) != list(range(len(parameters))):
        return state_dict
    settings = [_plain({key: value for key, value in group.items() if key != "params"}) for group in saved]
    if any(setting != settings[0] for setting in settings[1:]):
        differing = sorted(key for key in settings[0] if any(s.get(key) != settings[0][key] for s in settings[1:]))
        raise CheckpointError(
            f"the checkpoint's optimizer has {len(saved)} parameter groups with different {', '.join(differing)}, "
            f"and this run puts its parameters in {len(layout)} group(s): resume with the strategy that wrote it "
            "(the same tensor_parallel_size)"
        )
    first = {key: value for key, value in saved[0].items() if key != "params"}
    return {**state_dict, "param_groups": [{**first, "params": group} for group in layout]}


def _plain(value):
    """Tuples as lists, recursively (a saved state's ``betas`` is a tuple or, after a round trip, a list)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _units(encoder: SASRec) -> list[FSDPModule]:
    return [module for module in encoder.modules() if isinstance(module, FSDPModule)]


def gather(encoder: SASRec) -> dict[str, nn.Module]:
    """All-gather every unit (or tensor-parallel table) and keep it whole until :func:`reshard` (evaluation).

    Full ranking scores every item with the table itself (``encoder.output_weight``), outside any unit's
    forward pass, and evaluation shards are uneven (every user counted once), so a process may run
    more batches than another: with the parameters gathered once, no per-batch collective is left to
    wait for. Costs the full parameters on each device for the evaluation (``docs/scaling.md``).

    A tensor-parallel table (a ``ColwiseParallel`` embedding) is set aside and replaced by a plain
    ``nn.Embedding`` holding its whole weight, so the model evaluates as the plain PyTorch it is; the
    sharded modules are returned for :func:`reshard` to put back (the optimizer holds their weights).
    """
    for unit in _units(encoder):
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    sharded = {}
    for name in _table_names(encoder):
        table = encoder.get_submodule(name)
        if isinstance(table.weight, DTensor) and not isinstance(encoder, FSDPModule):
            whole = table.weight.detach().full_tensor()  # (I + 1, d), gathered once
            # from_pretrained: no initialization, so the random state training continues from is untouched
            plain = nn.Embedding.from_pretrained(whole, freeze=True, padding_idx=table.padding_idx)
            sharded[name] = table
            encoder.set_submodule(name, plain)
    return sharded


def reshard(encoder: SASRec, sharded: dict[str, nn.Module] | None = None) -> None:
    """Undo :func:`gather`: back to row shards, gathered again for each forward pass.

    The root unit (positions, final LayerNorm) stays gathered from its forward to its backward pass,
    FSDP2's default for the root.

    Args:
        encoder: the model.
        sharded: what :func:`gather` returned: the tensor-parallel tables to put back.
    """
    for unit in _units(encoder):
        unit.reshard()
        unit.set_reshard_after_forward(unit is not encoder, recurse=False)
    for name, table in (sharded or {}).items():
        encoder.set_submodule(name, table)


def shards_parameters(strategy: Strategy) -> bool:
    """Whether ``strategy`` shards the parameters across processes (FSDP, or ``ModelParallelStrategy``).

    Under ``ModelParallelStrategy`` that is FSDP2 or the tensor-parallel item tables (``sharding.py``).
    """
    return isinstance(strategy, (FSDPStrategy, ModelParallelStrategy))


def tensor_parallel(strategy) -> bool:
    """Whether ``strategy`` splits the item tables by tensor parallelism (``ModelParallelStrategy``, size > 1)."""
    return isinstance(strategy, ModelParallelStrategy) and strategy.device_mesh["tensor_parallel"].size() > 1


def shard_model(encoder: SASRec, mesh: DeviceMesh, loss, l2_emb: float, item_updates: str) -> None:
    """Apply the sharding plan ``ModelParallelStrategy``'s mesh asks for (``SASRecModule.configure_model``).

    ``tensor_parallel_size`` 1: FSDP2 over the data-parallel processes, tables split by rows
    (``configs/trainer/fsdp.yaml``); ``tensor_parallel_size`` > 1 with ``data_parallel_size`` 1: the
    tables split by columns with torch's ``ColwiseParallel`` and never gathered while training, the
    rest replicated (``configs/trainer/tp.yaml``). A no-op once sharded (Lightning calls the hook for
    every stage). Options a shard cannot serve are refused first (:func:`check_sharding_options`).
    """
    if is_sharded(encoder):
        return
    tensor = mesh["tensor_parallel"]
    check_sharding_options(loss, l2_emb, tensor.size(), mesh["data_parallel"].size(), item_updates)
    if tensor.size() > 1:
        shard_tables(encoder, tensor)
        synchronize_replicas(encoder, tensor)
    else:
        shard_encoder(encoder, mesh["data_parallel"])


def regroup_for_resume(checkpoint: dict, parameters: Iterable[Tensor], ckpt_path, row_sparse: bool) -> None:
    """Lay out the checkpoint's optimizer groups as this run's (:func:`regroup_optimizer_state`), when resuming.

    A tensor-parallel run's two groups (or one run's single group, the other way) become the groups of
    this run's optimizer, which Lightning loads after ``on_load_checkpoint``. Row-sparse Adam's groups
    never depend on the strategy.
    """
    states = checkpoint.get("optimizer_states")
    if not states or row_sparse:
        return
    try:
        states[0] = regroup_optimizer_state(states[0], parameters)
    except CheckpointError as error:
        raise CheckpointError(f"--ckpt_path {ckpt_path}: {error}") from None


class GatheredEvaluation(L.Callback):
    """Under ``ModelParallelStrategy``, gather the sharded encoder once for validation, test and predict.

    Evaluation shards users unevenly (each counted once), so processes run different numbers of
    batches, and full ranking reads the whole output table outside a forward pass: both need the
    parameters whole, not gathered batch by batch (:func:`~sasrec_lightning.sharding.gather`: FSDP2
    units, or the tensor-parallel tables). They are resharded when the stage ends, before checkpoints
    are written. ``SASRecModule.configure_callbacks`` returns one when the model is sharded.
    """

    def __init__(self) -> None:
        self.sharded_tables: dict = {}  # tensor-parallel table weights set aside while gathered

    def _gather(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if is_sharded(pl_module.model):
            self.sharded_tables = gather(pl_module.model)

    def _reshard(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.sharded_tables or is_sharded(pl_module.model):  # gathered tensor-parallel tables are plain ones
            reshard(pl_module.model, self.sharded_tables)
            self.sharded_tables = {}

    on_validation_start = on_test_start = on_predict_start = _gather
    on_validation_end = on_test_end = on_predict_end = _reshard


