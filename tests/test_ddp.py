"""Multi-process DDP on CPU (gloo, 2 processes): fit, validate, test and predict (``ddp`` strategy).

The 2-process part runs in a subprocess (Lightning's ``ddp`` launcher re-executes the script for
rank 1). It records, per rank, which users each stage saw and which training batches it drew,
and returns the synced metrics; this process then evaluates the same checkpoint alone and
compares.
"""

from __future__ import annotations

import json
import textwrap

import lightning as L
import numpy as np
import pytest
import torch

from conftest import REPO, run_cli, run_ddp_script, write_sasrec_txt
from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.data.options import HoldoutOptions, LoaderOptions
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.evaluation import EvaluationOptions

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from dataclasses import replace
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from sasrec_lightning import SASRecDataModule, SASRecModule
    from sasrec_lightning.model.options import EncoderOptions
    from sasrec_lightning.training.evaluation import EvaluationOptions


    class Record(L.Callback):
        \"\"\"Per rank and stage: the users of every batch (and the negatives drawn in training).\"\"\"

        def __init__(self, out):
            self.out, self.seen = out, []

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            self.seen.append([int(trainer.current_epoch), batch["users"].tolist(), int(batch["negatives"].sum()),
                              batch["sample_seed"]])

        def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            if trainer.state.fn == "validate":
                self.seen += batch["users"].tolist()

        def on_test_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            self.seen += batch["users"].tolist()

        def on_predict_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
            self.seen += batch["users"].tolist()

        def teardown(self, trainer, module, stage):  # runs in every process, also under ddp_spawn
            stage = getattr(stage, "value", stage)  # "fit", "validate", "test", "predict"
            with open(os.path.join(self.out, f"{stage}_rank{trainer.global_rank}.json"), "w") as handle:
                json.dump(self.seen, handle)
            self.seen = []


    def main():
        data_path, out, strategy, protocol = sys.argv[1:5]
        holdout = {"cold_item_list": sys.argv[5]} if len(sys.argv) > 5 else {}  # the cold-item split (issue 26)
        L.seed_everything(3, verbose=False)
        data = SASRecDataModule(path=data_path, max_len=8, loader={"batch_size": 8, "eval_batch_size": 16}, seed=3,
                                print_statistics=False, holdout=holdout)
        model = SASRecModule(num_items=data.num_items, max_len=8,
                             encoder=EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.2),
                             evaluation=EvaluationOptions(protocol=protocol, top_k=(1, 5)))
        checkpoint = ModelCheckpoint(dirpath=os.path.join(out, "ckpt"), save_last=True, save_top_k=0)
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_epochs=2, logger=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            callbacks=[Record(out), checkpoint], num_sanity_val_steps=0)
        trainer.fit(model, datamodule=data)
        ckpt = os.path.join(out, "ckpt", "last.ckpt")
        results = {"world_size": trainer.world_size}
        for name in ("sampled", "full"):  # the protocol trained with last, so the recorded users are its
            if name == protocol:
                continue
            # The same model evaluated under the other protocol (its weights: the checkpoint's).
            other = SASRecModule(num_items=data.num_items, max_len=8, encoder=model.encoder_options,
                                 evaluation=replace(model.evaluation, protocol=name))
            results[name] = {"validate": trainer.validate(other, datamodule=data, ckpt_path=ckpt, verbose=False)[0],
                             "test": trainer.test(other, datamodule=data, ckpt_path=ckpt, verbose=False)[0]}
        results[protocol] = {
            "validate": trainer.validate(model, datamodule=data, ckpt_path=ckpt, verbose=False)[0],
            "test": trainer.test(model, datamodule=data, ckpt_path=ckpt, verbose=False)[0],
        }
        trainer.predict(model, datamodule=data, ckpt_path=ckpt, return_predictions=False)
        if trainer.global_rank == 0:
            with open(os.path.join(out, "results.json"), "w") as handle:
                json.dump(results, handle)


    if __name__ == "__main__":
        main()
    """
)


def _run_ddp(tmp_path, data_path, strategy="ddp", protocol="sampled", cold_item_list=None):
    script = tmp_path / "ddp_run.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    cold = [cold_item_list] if cold_item_list else []
    run_ddp_script(script, [data_path, out, strategy, protocol, *cold], tmp_path)
    seen = {stage: [json.loads((out / f"{stage}_rank{rank}.json").read_text()) for rank in range(2)]
            for stage in ("fit", "validate", "test", "predict")}
    return seen, json.loads((out / "results.json").read_text()), out / "ckpt" / "last.ckpt"


def _single_process(data_path, ckpt, protocol, cold_item_list=None):
    data = SASRecDataModule(path=str(data_path), max_len=8, seed=3, print_statistics=False,
                            loader=LoaderOptions(batch_size=8, eval_batch_size=16),
                            holdout=HoldoutOptions(cold_item_list=str(cold_item_list) if cold_item_list else None))
    saved = torch.load(ckpt, weights_only=True)["hyper_parameters"]["evaluation"]
    # The checkpoint's model and evaluation options, under ``protocol``.
    model = SASRecModule.load_from_checkpoint(ckpt, weights_only=True, evaluation={**saved, "protocol": protocol})
    assert model.evaluation.protocol == protocol and model.evaluation.top_k == (1, 5)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    return {
        "validate": trainer.validate(model, datamodule=data, verbose=False)[0],
        "test": trainer.test(model, datamodule=data, verbose=False)[0],
    }, data


def test_ddp_two_processes_match_single_process(synthetic_txt, tmp_path, strategy="ddp", protocol="full"):
    seen, results, ckpt = _run_ddp(tmp_path, synthetic_txt, strategy, protocol)
    assert results["world_size"] == 2
    single, data = _single_process(synthetic_txt, ckpt, protocol)

    # Every user is evaluated exactly once across the two processes (no padding duplicates).
    for stage, split_stage in (("validate", "val"), ("test", "test")):
        users = seen[stage][0] + seen[stage][1]
        assert sorted(users) == sorted(data.eval_batches(split_stage).rows.tolist()), stage
        assert seen[stage][0] and seen[stage][1]  # both ranks did work
    assert sorted(seen["predict"][0] + seen["predict"][1]) == list(range(data.sequences.num_users))

    # Synced metrics equal the single-process numbers on the same checkpoint, under both protocols.
    for evaluated in ("sampled", "full"):
        alone = single if evaluated == protocol else _single_process(synthetic_txt, ckpt, evaluated)[0]
        for stage in ("validate", "test"):
            assert set(results[evaluated][stage]) == set(alone[stage])
            for name, value in alone[stage].items():
                assert results[evaluated][stage][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (evaluated, name)
    assert results["sampled"]["test"] != results["full"]["test"]  # the protocols were really switched

    # Training: each rank drew its own batches (and so its own negatives), the same number of them.
    train = seen["fit"]
    assert len(train[0]) == len(train[1]) > 0
    for epoch in (0, 1):
        users = [{u for e, batch, *_ in steps if e == epoch for u in batch} for steps in train]
        assert users[0] and users[1] and users[0] != users[1]
        # Together the ranks cover every training user in the epoch (the even split may repeat a batch).
        assert users[0] | users[1] == set(data.split_data.train_users.tolist())
    assert [n for _, _, n, _ in train[0]] != [n for _, _, n, _ in train[1]]
    # The seeds of what a loss samples itself (sampled-softmax negatives) differ between the ranks too.
    assert [seed for *_, seed in train[0]] != [seed for *_, seed in train[1]]


def test_ddp_warm_and_cold_metrics_match_single_process(synthetic_txt, tmp_path):
    cold = tmp_path / "cold.txt"
    cold.write_text("".join(f"{item}\n" for item in range(1, 41, 5)))  # 8 of the 40 items
    _, results, ckpt = _run_ddp(tmp_path, synthetic_txt, "ddp", "full", cold)
    single, data = _single_process(synthetic_txt, ckpt, "full", cold)
    assert data.split_data.num_cold == 8
    for stage, prefix in (("validate", "val/"), ("test", "test/")):
        alone = single[stage]
        assert alone[f"{prefix}cold/users"] > 0 and alone[f"{prefix}warm/users"] > 0
        assert alone[f"{prefix}cold/users"] + alone[f"{prefix}warm/users"] == len(data.eval_batches(prefix[:-1]))
        assert set(results["full"][stage]) == set(alone)
        for name, value in alone.items():
            assert results["full"][stage][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (stage, name)


@pytest.mark.slow
def test_cli_fit_and_test_with_two_devices(synthetic_txt, tmp_path):
    """The documented command line: ``--trainer.devices 2 --trainer.strategy ddp`` (fit then test)."""
    result = run_cli(
        ["fit", "-c", str(REPO / "configs" / "quickstart.yaml"),
         "-c", str(REPO / "configs" / "trainer" / "cpu-ddp.yaml"),
         "--data.init_args.path", str(synthetic_txt), "--trainer.max_epochs", "1",
         "--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
         "--trainer.default_root_dir", str(tmp_path)],
        cwd=tmp_path,
    )
    assert "test (sampled protocol)" in result.stdout
    assert result.stdout.count("test (sampled protocol)") == 1  # printed by rank 0 only


def test_eval_sampler_shards_are_uneven_and_disjoint():
    from sasrec_lightning.data.batches import UserBatchSampler

    lengths = np.arange(1, 51)  # 50 users, batch 8 -> 7 batches: 4 + 3
    shards = [list(UserBatchSampler(lengths, 8, shuffle=False, num_replicas=2, rank=r)) for r in range(2)]
    assert [len(shard) for shard in shards] == [4, 3]
    rows = np.concatenate([key.rows for shard in shards for key in shard])
    assert sorted(rows.tolist()) == list(range(50))
    train = [list(UserBatchSampler(lengths, 8, shuffle=True, num_replicas=2, rank=r, even=True)) for r in range(2)]
    assert len(train[0]) == len(train[1]) == 4  # even in training so gradient syncs line up
    rows = np.concatenate([key.rows for shard in train for key in shard])
    assert sorted(set(rows.tolist())) == list(range(50))  # every user trained on; 7 batches padded to 8


FEW_USERS_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import lightning as L
    from sasrec_lightning import SASRecDataModule, SASRecModule
    from sasrec_lightning.model.options import EncoderOptions
    from sasrec_lightning.training.evaluation import EvaluationOptions


    def main():
        data_path, out = sys.argv[1:3]
        data = SASRecDataModule(path=data_path, max_len=8, loader={"eval_batch_size": 16, "num_eval_negatives": 3},
                                seed=3, print_statistics=False)
        L.seed_everything(3, verbose=False)
        model = SASRecModule(num_items=data.num_items, max_len=8, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                            enable_model_summary=False)
        results = {}
        for protocol in ("sampled", "full"):
            evaluated = SASRecModule(num_items=data.num_items, max_len=8, encoder=model.encoder_options,
                                     evaluation=EvaluationOptions(protocol=protocol, top_k=(1, 5)))
            evaluated.load_state_dict(model.state_dict())  # the same weights under each protocol
            results[protocol] = {"validate": trainer.validate(evaluated, datamodule=data, verbose=False)[0],
                                 "test": trainer.test(evaluated, datamodule=data, verbose=False)[0]}
        if trainer.global_rank == 0:
            with open(os.path.join(out, "results.json"), "w") as handle:
                json.dump(results, handle)


    if __name__ == "__main__":
        main()
    """
)


def test_ddp_with_fewer_evaluated_users_than_processes(tmp_path):
    """One evaluated user, two processes.

    The rank without users takes part in the metric sync with an empty batch (it used to crash with
    "DataLoader within local rank has zero length").
    """
    data_path = write_sasrec_txt(tmp_path / "few.txt", [(1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6), (3, 7), (3, 8)])
    script = tmp_path / "few_users.py"
    script.write_text(FEW_USERS_SCRIPT)
    run_ddp_script(script, [data_path, tmp_path], tmp_path, timeout=300)
    results = json.loads((tmp_path / "results.json").read_text())
    data = SASRecDataModule(path=str(data_path), max_len=8, seed=3, print_statistics=False,
                            loader=LoaderOptions(eval_batch_size=16, num_eval_negatives=3))
    assert len(data.eval_batches("val")) == len(data.eval_batches("test")) == 1
    L.seed_everything(3, verbose=False)
    model = SASRecModule(num_items=data.num_items, max_len=8, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    for protocol in ("sampled", "full"):
        evaluated = SASRecModule(num_items=data.num_items, max_len=8, encoder=model.encoder_options,
                                 evaluation=EvaluationOptions(protocol=protocol, top_k=(1, 5)))
        evaluated.load_state_dict(model.state_dict())  # the same weights under each protocol
        alone = {"validate": trainer.validate(evaluated, datamodule=data, verbose=False)[0],
                 "test": trainer.test(evaluated, datamodule=data, verbose=False)[0]}
        for stage in ("validate", "test"):
            assert results[protocol][stage] == pytest.approx(alone[stage], rel=1e-6), (protocol, stage)


FRAGMENTS = sorted((REPO / "configs" / "trainer").glob("*.yaml")) + sorted((REPO / "configs" / "logger").glob("*.yaml"))


@pytest.mark.parametrize("fragment", FRAGMENTS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_config_fragments_compose_with_a_main_config(fragment, capsys):
    """Every trainer/logger fragment parses on top of a main config (GPU ones are not instantiated here)."""
    import yaml

    from sasrec_lightning.cli.app import cli_main

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "-c", str(REPO / "configs" / "quickstart.yaml"), "-c", str(fragment), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    for key, value in yaml.safe_load(fragment.read_text())["trainer"].items():
        if isinstance(value, dict) and "class_path" in value:  # a class (strategy): printed with its defaults too
            assert printed["trainer"][key]["class_path"] == value["class_path"], key
            assert value.get("init_args", {}).items() <= printed["trainer"][key]["init_args"].items(), key
        else:
            assert printed["trainer"][key] == value or key in ("logger", "callbacks"), key
