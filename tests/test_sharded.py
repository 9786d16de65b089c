"""The sharded item table (FSDP2 via Lightning's ``ModelParallelStrategy``) on CPU: 2 processes, gloo.

The same tiny training runs twice in subprocesses (the strategies' launcher re-executes the script
for rank 1): once sharded, once under DDP with a replicated table, with the same seed and the same
per-rank batches. FSDP averages gradients over the processes as DDP does, so the two runs compute
the same steps; only the order of fp32 sums differs (reduce-scatter against all-reduce, the dense
embedding backward against the row-wise one), ~1e-7 relative per step.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap

import lightning as L
import pytest
import torch

from conftest import REPO, run_cli
from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.data.options import LoaderOptions
from sasrec_lightning.errors import CheckpointError, OptionError
from sasrec_lightning.fast.row_grad import RowGradEmbedding
from sasrec_lightning.fast.speed import SpeedOptions, apply_speed_parts
from sasrec_lightning.model.losses import BCELoss, FullCrossEntropyLoss, SampledSoftmaxLoss
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.evaluation import EvaluationOptions
from sasrec_lightning.training.sharding import check_sharding_options, regroup_optimizer_state

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.strategies import ModelParallelStrategy
    from sasrec_lightning import SASRecDataModule, SASRecModule
    from sasrec_lightning.data.options import LoaderOptions
    from sasrec_lightning.model.losses import SampledSoftmaxLoss
    from sasrec_lightning.model.options import EncoderOptions
    from sasrec_lightning.training.evaluation import EvaluationOptions


    class Record(L.Callback):
        \"\"\"Per rank: each step's loss, and how much of the item table (and a row-wise buffer) the rank holds.\"\"\"

        def __init__(self, kind):
            self.kind, self.losses, self.table, self.gradient = kind, [], None, None

        def setup(self, trainer, module, stage):
            if self.kind == "tp" and stage == "fit" and trainer.global_rank == 1:
                torch.rand(3)  # rank 1's random state moves on after seeding (as any rank-dependent draw would)

        def on_before_optimizer_step(self, trainer, module, optimizer):
            grad = module.model.items.embedding.weight.grad
            local = grad.to_local() if hasattr(grad, "to_local") else grad
            self.gradient = {"kind": type(grad).__name__, "local_shape": list(local.shape),
                             "placements": [repr(p) for p in getattr(grad, "placements", [])]}

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))
            weight = module.model.items.embedding.weight
            local = weight.to_local() if hasattr(weight, "to_local") else weight
            self.table = {"kind": type(weight).__name__, "local_shape": list(local.shape),
                          "global_shape": list(weight.shape),
                          "row_sharded": [p.is_shard(0) for p in getattr(weight, "placements", [])],
                          "placements": [repr(p) for p in getattr(weight, "placements", [])],
                          "row_gradients": getattr(module.model.items.embedding, "row_gradient", None) is not None}


    def main():
        data_path, out, kind = sys.argv[1:4]
        # Under tensor parallelism the processes are seeded differently on purpose: the replicated
        # weights and the dropout masks must still be rank 0's (sharding.synchronize_replicas, share_random_state).
        L.seed_everything(3 + (int(os.environ.get("LOCAL_RANK", 0)) if kind == "tp" else 0), verbose=False)
        data = SASRecDataModule(path=data_path, max_len=8, seed=3, print_statistics=False,
                                loader=LoaderOptions(batch_size=8, eval_batch_size=16))
        model = SASRecModule(num_items=data.num_items, max_len=8,
                             encoder=EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.1),
                             loss=SampledSoftmaxLoss(negatives=10),
                             evaluation=EvaluationOptions(protocol="full", top_k=(1, 5)))
        devices = 1 if kind == "single" else 2
        if kind == "sharded":
            strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1,
                                             save_distributed_checkpoint=False)
        elif kind == "tp":
            strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2,
                                             save_distributed_checkpoint=False)
        else:  # ddp, or single: one process under DDP, seeded (reset_seed) as the multi-process runs are
            strategy = "ddp"
        record = Record(kind)
        checkpoint = ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), save_last=True, save_top_k=0)
        # One replica (tp, single): validation after steps 3 and 6, so training goes on after the
        # table was gathered for evaluation and put back.
        validation = dict(val_check_interval=3, limit_val_batches=2) if devices == 1 or kind == "tp" else \
            dict(limit_val_batches=0)
        trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=6, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            callbacks=[record, checkpoint], **validation)
        trainer.fit(model, datamodule=data)
        result = {"losses": record.losses, "table": record.table, "gradient": record.gradient,
                  "world_size": trainer.world_size}
        if kind in ("sharded", "tp"):  # evaluation of the sharded model: uneven user shards, full ranking
            result["test"] = trainer.test(model, datamodule=data, ckpt_path=os.path.join(out, "ckpt", "last.ckpt"),
                                          verbose=False)[0]
        with open(os.path.join(out, f"rank{trainer.global_rank}.json"), "w") as handle:
            json.dump(result, handle)


    if __name__ == "__main__":
        main()
    """
)


def _run(tmp_path, data_path, kind, processes=2):
    out = tmp_path / kind
    out.mkdir()
    script = out / "run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    result = subprocess.run([sys.executable, str(script), str(data_path), str(out), kind], cwd=out, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{kind} run failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    ranks = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(processes)]
    return ranks, out / "ckpt" / "last.ckpt"


def test_sharded_table_trains_like_the_replicated_one(synthetic_txt, tmp_path):
    sharded, sharded_ckpt = _run(tmp_path, synthetic_txt, "sharded")
    replicated, replicated_ckpt = _run(tmp_path, synthetic_txt, "ddp")
    rows = SASRecDataModule(path=str(synthetic_txt), max_len=8, print_statistics=False).num_items + 1  # with padding

    # Each rank holds a row shard of the table: ceil(rows / 2) and the rest, together every row once.
    local_rows = [rank["table"]["local_shape"][0] for rank in sharded]
    assert local_rows == [-(-rows // 2), rows - -(-rows // 2)]
    for rank in sharded:
        assert rank["table"]["kind"] == "DTensor" and rank["table"]["row_sharded"] == [True]
        assert rank["table"]["global_shape"] == [rows, 8] and rank["table"]["local_shape"][1] == 8
        assert not rank["table"]["row_gradients"]  # row_gradients: auto is off under sharding
    for rank in replicated:
        assert rank["table"]["local_shape"] == [rows, 8]
        assert rank["table"]["row_gradients"]  # ... and on under DDP on the CPU: the two gradient paths agree

    # Step for step, each rank's loss equals the replicated run's (fp32 summation order only, see the docstring).
    for rank in range(2):
        assert len(sharded[rank]["losses"]) == 6
        assert sharded[rank]["losses"] == pytest.approx(replicated[rank]["losses"], rel=1e-5, abs=1e-6)
    assert sharded[0]["losses"] != sharded[1]["losses"]  # the ranks trained on different batches

    # The checkpoint holds the full (gathered) state dict: it loads in one process, equal to DDP's weights,
    # and tested alone it gives the metrics the two sharded processes computed together.
    state = _checkpoint_alone(sharded_ckpt, replicated_ckpt, sharded[:1], synthetic_txt, tmp_path)
    initial = SASRecModule(num_items=rows - 1, max_len=8, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    assert not torch.allclose(state["model.items.embedding.weight"], initial.model.items.embedding.weight)


def _data(synthetic_txt) -> SASRecDataModule:
    """The data module of the runs in ``SCRIPT``, in this process."""
    return SASRecDataModule(path=str(synthetic_txt), max_len=8, seed=3, print_statistics=False,
                            loader=LoaderOptions(batch_size=8, eval_batch_size=16))


def _checkpoint_alone(checkpoint, reference_checkpoint, ranks, synthetic_txt, tmp_path) -> dict:
    """Load ``checkpoint`` in this one process: the reference run's weights, and each rank's test metrics.

    Returns:
        The loaded model's state dict.
    """
    model = SASRecModule.load_from_checkpoint(checkpoint, weights_only=True)
    reference = torch.load(reference_checkpoint, weights_only=True)["state_dict"]
    state = model.state_dict()
    assert set(state) == set(reference)
    for name, value in reference.items():
        torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6, msg=name)
    data = _data(synthetic_txt)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    alone = trainer.test(model, datamodule=data, verbose=False)[0]
    for rank in ranks:
        assert set(alone) == set(rank["test"])
        for name, value in alone.items():
            assert rank["test"][name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    return state


def test_tensor_parallel_table_trains_like_one_process(synthetic_txt, tmp_path):
    """``tensor_parallel_size`` 2, ``data_parallel_size`` 1: both processes train one model on the same batches.

    The reference is one process (DDP with one device, seeded as the launched processes are). The two
    tensor-parallel processes are seeded differently (3 and 4) and rank 1 draws extra random numbers
    after seeding, so equal losses on both ranks also show that the replicated weights, the batches,
    the loss's negatives (``sample_seed``) and the dropout masks (dropout 0.1) are rank 0's everywhere.
    """
    parallel, parallel_ckpt = _run(tmp_path, synthetic_txt, "tp")
    single, single_ckpt = _run(tmp_path, synthetic_txt, "single", processes=1)
    rows = SASRecDataModule(path=str(synthetic_txt), max_len=8, print_statistics=False).num_items + 1  # with padding

    # Each rank holds only its half of the table (4 of the 8 columns of every row), and of its gradient.
    for rank in parallel:
        assert rank["table"]["kind"] == "DTensor" and rank["table"]["placements"] == ["Shard(dim=1)"]
        assert rank["table"]["global_shape"] == [rows, 8] and rank["table"]["local_shape"] == [rows, 4]
        assert rank["gradient"]["kind"] == "DTensor" and rank["gradient"]["placements"] == ["Shard(dim=1)"]
        assert rank["gradient"]["local_shape"] == [rows, 4]
        assert not rank["table"]["row_gradients"]
    assert single[0]["table"]["local_shape"] == [rows, 8]

    # Step for step, both ranks' losses equal the single process's (fp32 summation order only).
    assert len(single[0]["losses"]) == 6
    for rank in parallel:
        assert rank["losses"] == pytest.approx(single[0]["losses"], rel=1e-5, abs=1e-6)

    # The checkpoint holds the whole model: it loads in one process, equal to the single process's weights,
    # and tested alone it gives the metrics the two processes computed together (table gathered once).
    _checkpoint_alone(parallel_ckpt, single_ckpt, parallel, synthetic_txt, tmp_path)

    # Training resumes from it in one process: Adam's two groups (tables, the rest) become the one
    # group of this run with every moment in place, and two more steps give the single run's weights.
    resumed, restored = _resume_alone(parallel_ckpt, synthetic_txt, tmp_path / "resume_tp")
    saved = torch.load(parallel_ckpt, weights_only=True)["optimizer_states"][0]
    assert len(saved["param_groups"]) == 2 and len(restored["param_groups"]) == 1
    for index, moments in saved["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(restored["state"][index][name], moments[name], rtol=0, atol=0)
    reference, _ = _resume_alone(single_ckpt, synthetic_txt, tmp_path / "resume_single")
    for name, value in reference.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)


def _resume_alone(checkpoint, synthetic_txt, root) -> tuple[dict, dict]:
    """Resume ``fit`` from ``checkpoint`` in this process for 2 more steps.

    Returns:
        The model's state dict at the end and the optimizer's state dict as restored (before any step).
    """

    class Restored(L.Callback):
        def on_train_start(self, trainer, module):
            self.state = copy.deepcopy(trainer.optimizers[0].state_dict())  # its tensors are updated in place

    data = _data(synthetic_txt)
    model = SASRecModule(num_items=data.num_items, max_len=8, loss=SampledSoftmaxLoss(negatives=10),
                         encoder=EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.1),
                         evaluation=EvaluationOptions(protocol="full", top_k=(1, 5)))
    restored = Restored()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=8, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        callbacks=[restored], default_root_dir=root)
    trainer.fit(model, datamodule=data, ckpt_path=checkpoint)
    assert trainer.global_step == 8
    return {name: value.detach().clone() for name, value in model.state_dict().items()}, restored.state


def _adam_state(parameters, groups, lrs):
    """One Adam step over ``parameters`` in ``groups`` (indexes) with learning rates ``lrs``: its state dict."""
    optimizer = torch.optim.Adam([{"params": [parameters[i] for i in group], "lr": lr}
                                  for group, lr in zip(groups, lrs, strict=True)])
    sum((parameter**2).sum() for parameter in parameters).backward()
    optimizer.step()
    return optimizer.state_dict()


def test_regroup_optimizer_state_rebuilds_the_groups_and_keeps_every_moment():
    parameters = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2)),
                  torch.nn.Parameter(torch.randn(4))]
    saved = _adam_state(parameters, [[0], [1, 2]], [0.01, 0.01])  # a tensor-parallel run's layout
    regrouped = regroup_optimizer_state(saved, parameters)
    assert [group["params"] for group in regrouped["param_groups"]] == [[0, 1, 2]]
    assert regrouped["param_groups"][0]["lr"] == 0.01
    optimizer = torch.optim.Adam(parameters, lr=0.5)
    optimizer.load_state_dict(regrouped)
    assert optimizer.param_groups[0]["lr"] == 0.01
    for index, parameter in enumerate(parameters):
        torch.testing.assert_close(optimizer.state[parameter]["exp_avg"], saved["state"][index]["exp_avg"])

    same = _adam_state(parameters, [[0, 1, 2]], [0.01])
    assert regroup_optimizer_state(same, parameters) is same  # already this run's groups
    foreign = _adam_state(parameters[:2], [[0, 1]], [0.01])  # a custom optimizer over some parameters
    assert regroup_optimizer_state(foreign, parameters) is foreign


def test_regroup_optimizer_state_refuses_groups_with_different_settings():
    parameters = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2))]
    saved = _adam_state(parameters, [[0], [1]], [0.01, 0.02])
    with pytest.raises(CheckpointError, match=r"2 parameter groups with different lr, and this run puts its .* in 1"):
        regroup_optimizer_state(saved, parameters)


def test_row_gradients_true_is_refused_under_sharding():
    def encoder():
        return SASRecModule(num_items=5, max_len=4, encoder=EncoderOptions(hidden_size=8, num_blocks=1)).model

    cpu = torch.device("cpu")
    with pytest.raises(OptionError,
                       match=r"--model.speed.row_gradients true cannot be used with a sharding strategy.*auto"):
        apply_speed_parts(encoder(), BCELoss(), SpeedOptions(row_gradients=True), cpu, sharded=True)
    auto = encoder()
    assert "row_gradients" not in apply_speed_parts(auto, BCELoss(), SpeedOptions(), cpu, sharded=True)  # auto: off
    assert type(auto.items.embedding) is torch.nn.Embedding
    replicated = encoder()
    assert "row_gradients" in apply_speed_parts(replicated, BCELoss(), SpeedOptions(row_gradients=True), cpu)
    assert isinstance(replicated.items.embedding, RowGradEmbedding)  # not sharded: allowed


@pytest.mark.parametrize(("options", "message"), [
    ({"loss": FullCrossEntropyLoss()}, r"--model.loss FullCrossEntropyLoss: .*use sampled_softmax, bce, gbce or bpr"),
    ({"l2_emb": 0.01}, r"--model.optimization.l2_emb 0.01: .*set l2_emb 0"),
    ({"loss": FullCrossEntropyLoss(), "tensor_parallel_size": 4, "data_parallel_size": 1},
     r"--model.loss FullCrossEntropyLoss: "),
    ({"l2_emb": 0.5, "tensor_parallel_size": 4, "data_parallel_size": 1}, r"--model.optimization.l2_emb 0.5: "),
    ({"tensor_parallel_size": 2, "data_parallel_size": 2},
     r"tensor_parallel_size 2 with data_parallel_size 2: .*expected tensor_parallel_size 4 and data_parallel_size 1, "
     r"or tensor_parallel_size 1 and data_parallel_size 4"),
    ({"tensor_parallel_size": 4, "data_parallel_size": 1, "item_updates": "lazy"},
     r"--model.speed.item_updates lazy: .*use item_updates dense"),
    ({"tensor_parallel_size": 4, "data_parallel_size": 1, "item_updates": "deferred"},
     r"--model.speed.item_updates deferred: "),
], ids=["ce", "l2_emb", "tp-ce", "tp-l2_emb", "tp-and-dp", "tp-lazy", "tp-deferred"])
def test_options_that_read_the_whole_table_are_refused_under_sharding(options, message):
    settings = {"loss": SampledSoftmaxLoss(), "l2_emb": 0.0, "tensor_parallel_size": 1, "data_parallel_size": 4,
                **options}
    with pytest.raises(OptionError, match=message):
        check_sharding_options(**settings)
    check_sharding_options(SampledSoftmaxLoss(), 0.0, 1, 4)  # the supported combinations pass
    check_sharding_options(SampledSoftmaxLoss(), 0.0, 4, 1)
    check_sharding_options(BCELoss(), 0.0, 1, 4, "lazy")  # FSDP2 as before


@pytest.mark.slow
@pytest.mark.parametrize(("fragment", "flags"), [
    ("fsdp.yaml", ["--trainer.strategy.init_args.data_parallel_size", "2"]),
    # A custom optimizer too: its foreach kernels refuse a group mixing the split tables with plain tensors.
    ("tp.yaml", ["--trainer.precision", "32", "--trainer.strategy.init_args.tensor_parallel_size", "2",
                 "--model.init_args.optimizer", "torch.optim.AdamW", "--model.init_args.optimizer.init_args.foreach",
                 "true"]),
])
def test_cli_fit_and_test_with_a_sharding_fragment_on_two_cpu_processes(synthetic_txt, tmp_path, fragment, flags):
    """The documented commands: ``-c configs/trainer/<fragment>`` with the CPU overrides (fit, then test)."""
    result = run_cli(
        ["fit", "-c", str(REPO / "configs" / "quickstart.yaml"), "-c", str(REPO / "configs" / "trainer" / fragment),
         "--trainer.accelerator", "cpu", "--trainer.devices", "2", *flags, "--data.init_args.path", str(synthetic_txt),
         "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
         "--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
         "--trainer.default_root_dir", str(tmp_path)],
        cwd=tmp_path,
    )
    assert result.stdout.count("test (sampled protocol)") == 1  # printed by rank 0 only


@pytest.mark.slow
def test_cli_refuses_l2_emb_with_the_tp_fragment(synthetic_txt, tmp_path):
    args = ["fit", "-c", str(REPO / "configs" / "quickstart.yaml"), "-c", str(REPO / "configs" / "trainer" / "tp.yaml"),
            "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.precision", "32",
            "--trainer.strategy.init_args.tensor_parallel_size", "2", "--data.init_args.path", str(synthetic_txt),
            "--model.init_args.optimization.l2_emb", "0.01", "--trainer.default_root_dir", str(tmp_path)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    result = subprocess.run([sys.executable, "-m", "sasrec_lightning.cli", *args], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: --model.optimization.l2_emb 0.01: the penalty reads the whole item table" in result.stderr
    assert "Traceback" not in result.stderr
