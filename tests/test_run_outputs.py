"""Where a run's config goes and what a short run prints: W&B runs keep their own config, no known notes.

Before (0.3.0): with ``configs/logger/wandb.yaml`` the run's ``config.yaml`` was written into the working
folder (the W&B logger's ``save_dir``) and the next run overwrote it silently; every short run printed
W&B's "anonymous setting" notice and Lightning's ``log_every_n_steps`` note, and a CPU DDP run six
``sync_dist=True`` warnings for metrics that torchmetrics had already summed over the processes.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import yaml

from conftest import CONFIGS
from sasrec_lightning.cli.app import main
from sasrec_lightning.cli.warnings import no_wandb_anonymous_setting

QUICKSTART = str(CONFIGS / "quickstart.yaml")
SHORT = ["--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1", "--data.max_len",
         "8", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--data.source.synthetic_users", "60", "--data.source.synthetic_items", "30", "--trainer.max_epochs", "1",
         "--data.print_statistics", "false"]
# The notes silenced (each by its exact text), and a warning of the package's own that must still show:
# 100 sampled negatives out of 30 items repeat items.
SILENCED = ("anonymous setting", "log_every_n_steps", "sync_dist=True")
STILL_SHOWN = "--data.loader.num_eval_negatives is 100, but"


def _fit(args: list[str], cwd, timeout: float = 300) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(cwd)}
    env.pop("PYTHONWARNINGS", None)
    env.pop("WANDB_SILENT", None)
    result = subprocess.run([sys.executable, "-m", "sasrec_lightning.cli", "fit", "-c", QUICKSTART, *SHORT, *args],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def test_a_wandb_run_keeps_its_config_in_its_own_folder_and_prints_no_known_notes(tmp_path):
    pytest.importorskip("wandb")
    output = _fit(["-c", str(CONFIGS / "logger" / "wandb.yaml"), "--trainer.enable_checkpointing", "true"], tmp_path)
    assert not [note for note in SILENCED if note in output], output
    assert STILL_SHOWN in output
    assert not (tmp_path / "config.yaml").exists()
    (run,) = (tmp_path / "sasrec-lightning").iterdir()  # save_dir/project/run id, as ModelCheckpoint's folder
    assert sorted(path.name for path in run.iterdir()) == ["checkpoints", "config.yaml"]
    assert run.name in [path.name.rsplit("-", 1)[-1] for path in (tmp_path / "wandb").glob("offline-run-*")]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["trainer"]["logger"]["class_path"] == "lightning.pytorch.loggers.WandbLogger"


def test_another_runs_config_is_never_overwritten(tmp_path, monkeypatch, caplog):
    """Two runs into one checkpoint folder (no logger): the second config goes beside the first, and says so."""
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO)
    for epochs in ("1", "2"):
        main(["fit", "-c", QUICKSTART, *SHORT, "--trainer.enable_checkpointing", "true", "--test_after_fit", "false",
              "--trainer.max_epochs", epochs])
    folder = tmp_path / "checkpoints"
    assert yaml.safe_load((folder / "config.yaml").read_text())["trainer"]["max_epochs"] == 1
    assert yaml.safe_load((folder / "config-1.yaml").read_text())["trainer"]["max_epochs"] == 2
    assert (f"[sasrec-lightning] {folder / 'config.yaml'} holds an earlier run's config (kept); this run's config is "
            "config-1.yaml beside it") in caplog.text


def test_the_wandb_logger_passes_no_anonymous_setting_unless_set():
    from lightning.pytorch.loggers import WandbLogger

    unset, chosen = WandbLogger(project="p", offline=True), WandbLogger(project="p", offline=True, anonymous=True)
    assert "anonymous" in unset._wandb_init  # (Lightning's private init arguments: fails when they move)
    no_wandb_anonymous_setting(unset)
    no_wandb_anonymous_setting(chosen)
    assert "anonymous" not in unset._wandb_init and chosen._wandb_init["anonymous"] == "allow"


@pytest.mark.slow
def test_a_cpu_ddp_run_prints_no_sync_dist_advice_for_metrics_already_reduced(tmp_path):
    output = _fit(["-c", str(CONFIGS / "trainer" / "cpu-ddp.yaml")], tmp_path)
    assert "NDCG@10" in output  # (fit and test ran)
    assert not [note for note in SILENCED if note in output], output
    assert STILL_SHOWN in output
