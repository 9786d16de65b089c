"""Plug-in use: subclasses defined here run through the CLI with a shipped config (``--model.class_path``)."""

from __future__ import annotations

import torch

from conftest import CONFIGS, TINY_TRAINER
from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.cli.app import cli_main
from sasrec_lightning.data.preprocessing import build_sequences
from sasrec_lightning.data.synthetic import synthetic_interactions


class MySASRec(SASRecModule):
    """Adds a typed option (so it becomes a flag) and an auxiliary L2 term on the hidden states."""

    def __init__(self, hidden_l2: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.hidden_l2 = hidden_l2
        self.steps_seen = 0

    def training_step(self, batch, batch_idx):
        self.steps_seen += 1
        loss = super().training_step(batch, batch_idx)
        real = batch["input_ids"] != 0
        return loss + self.hidden_l2 * self.model(batch["input_ids"])[real].square().mean()


class MyDataModule(SASRecDataModule):
    """Sequences built by the user's own code (here: a small in-memory table) instead of a file."""

    def __init__(self, table_users: int = 40, **kwargs) -> None:
        super().__init__(**kwargs)
        self.table_users = table_users

    @property
    def sequences(self):
        if self._sequences is None:
            table = synthetic_interactions(self.table_users, 25, num_clusters=5, seed=7)
            self._sequences = build_sequences(table, timestamp_column="timestamp")
        return self._sequences


def test_subclasses_run_with_the_shipped_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main([
        "fit", "-c", str(CONFIGS / "quickstart.yaml"),
        "--model.class_path", f"{__name__}.MySASRec", "--model.init_args.hidden_l2", "0.01",
        "--model.init_args.encoder.hidden_size", "8",
        "--data.class_path", f"{__name__}.MyDataModule", "--data.init_args.table_users", "30",
        "--data.init_args.max_len", "12",
        *TINY_TRAINER, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(tmp_path),
    ])
    model, data = cli.model, cli.datamodule
    assert type(model).__name__ == "MySASRec" and type(data).__name__ == "MyDataModule"
    assert model.hidden_l2 == 0.01 and model.steps_seen >= 1
    assert data.table_users == 30 and data.sequences.num_users == 30
    assert model.model.num_items == data.num_items and model.model.max_len == 12  # still linked
    assert model.hparams.hidden_l2 == 0.01 and model.hparams.encoder["hidden_size"] == 8  # saved for the checkpoint

    path = tmp_path / "my.ckpt"
    cli.trainer.save_checkpoint(path)
    restored = MySASRec.load_from_checkpoint(path)
    assert restored.hidden_l2 == 0.01
    for name, value in model.state_dict().items():
        torch.testing.assert_close(restored.state_dict()[name], value)
