"""Quiet runs and tidy outputs: no known-harmless noise, run folders named after the data, none for predict/test."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import pytest

from conftest import CONFIGS, write_sasrec_txt
from sasrec_lightning.cli.app import main
from sasrec_lightning.cli.warnings import quiet_known_warnings

QUICKSTART = str(CONFIGS / "quickstart.yaml")
TINY = ["--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
        "--data.max_len", "8", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
NOISE = ("💡 Tip", "litlogger", "LeafSpec", "torchvision is not installed", "dirpath has changed", "skip_none")


def log_file(tmp_path):
    return write_sasrec_txt(tmp_path / "my_log.txt", [(user, (user * 3 + step) % 25 + 1) for user in range(1, 41)
                                                      for step in range(6)])


def test_a_quickstart_fit_prints_none_of_the_known_harmless_warnings(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONWARNINGS", None)
    result = subprocess.run(
        [sys.executable, "-m", "sasrec_lightning.cli", "fit", "-c", QUICKSTART, *TINY, "--trainer.max_epochs", "1",
         "--data.source.synthetic_users", "60", "--data.source.synthetic_items", "30",
         "--data.loader.num_eval_negatives", "10", "--trainer.limit_train_batches", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "NDCG@10" in output
    assert not [noise for noise in NOISE if noise in output], output


def test_the_filters_drop_only_the_named_messages(caplog):
    quiet_known_warnings()
    with caplog.at_level(logging.INFO):
        logging.getLogger("torch.onnx._internal.exporter._registration").warning("torchvision is not installed. x")
        logging.getLogger("torch.onnx._internal.exporter._registration").warning("another warning")
        logging.getLogger("lightning.pytorch.utilities.rank_zero").info("💡 Tip: try a cloud service")
    assert "torchvision" not in caplog.text and "Tip" not in caplog.text and "another warning" in caplog.text
    with warnings.catch_warnings(record=True) as caught:
        quiet_known_warnings()  # (catch_warnings restored the filters it installs)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("some other deprecation", FutureWarning, stacklevel=1)
    assert [str(warning.message) for warning in caught] == ["some other deprecation"]


@pytest.fixture
def logged_run(tmp_path, monkeypatch):
    """A fit with a config whose CSVLogger is named `beauty`, on the user's own file: (folder, checkpoint)."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "logged.yaml"
    config.write_text("trainer:\n  enable_checkpointing: true\n  logger:\n    class_path: "
                      "lightning.pytorch.loggers.CSVLogger\n    init_args:\n      save_dir: lightning_logs\n"
                      "      name: beauty\n")
    main(["fit", "-c", QUICKSTART, "-c", str(config), "--data.path", str(log_file(tmp_path)), *TINY,
          "--trainer.max_epochs", "1", "--test_after_fit", "false"])
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    return tmp_path, config, checkpoint


def test_the_run_is_named_after_the_data_and_its_config_lands_in_the_run_folder(logged_run):
    root, _, checkpoint = logged_run
    assert sorted(path.name for path in (root / "lightning_logs").iterdir()) == ["my_log"]
    assert (root / "lightning_logs" / "my_log" / "version_0" / "config.yaml").is_file()
    assert checkpoint.parent == root / "lightning_logs" / "my_log" / "version_0" / "checkpoints"
    assert not (root / "config.yaml").exists()


@pytest.mark.parametrize("subcommand", ["predict", "test"])
def test_predict_and_test_with_a_checkpoint_start_no_new_run(logged_run, subcommand):
    root, config, checkpoint = logged_run
    before = sorted(path.relative_to(root) for path in root.rglob("*") if "sequence_cache" not in path.parts)
    main([subcommand, "-c", QUICKSTART, "-c", str(config), "--data.path", str(root / "my_log.txt"),
          "--ckpt_path", str(checkpoint), "--prediction.output", str(root / "out" / "recs.parquet"),
          "--trainer.enable_progress_bar", "false"])
    after = sorted(path.relative_to(root) for path in root.rglob("*") if "sequence_cache" not in path.parts)
    new = [path for path in after if path not in before and path.parts[0] != "out"]
    assert new == [], new


def test_without_a_logger_the_config_goes_beside_the_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "-c", QUICKSTART, "--data.path", str(log_file(tmp_path)), *TINY, "--trainer.max_epochs", "1",
          "--test_after_fit", "false", "--trainer.enable_checkpointing", "true"])
    assert (tmp_path / "checkpoints" / "config.yaml").is_file()
    assert not (tmp_path / "config.yaml").exists()
