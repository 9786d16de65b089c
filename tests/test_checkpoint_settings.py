"""A checkpoint carries its training run's data settings: predict/test/attention need only the data to read."""

from __future__ import annotations

import sys

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from conftest import CONFIGS
from sasrec_lightning.cli.app import cli_main, main
from sasrec_lightning.cli.attention import main as attention_main

QUICKSTART = str(CONFIGS / "quickstart.yaml")
TINY = ["--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
# Options of the training run that the later commands never repeat (``--data.`` + the key).
RUN_OPTIONS = {"source.user_column": "uid", "source.item_column": "sku", "source.timestamp_column": "ts", "max_len": 6,
               "preprocessing.min_user_interactions": 4, "loader.num_eval_negatives": 10}


def write_log(path):
    """A CSV with non-default column names: users u0..u29 with 5-9 actions, users x0..x2 with 2 (filtered out)."""
    lines = ["uid,sku,ts"]
    for user in range(30):
        lines += [f"u{user},i{(user * 7 + step * 3) % 25},{step}" for step in range(5 + user % 5)]
    lines += [f"x{user},i{step},{step}" for user in range(3) for step in range(2)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(folder, data file, checkpoint, the run's saved config.yaml) of one tiny `fit` with a CSV logger."""
    root = tmp_path_factory.mktemp("run")
    data = write_log(root / "log.csv")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["sasrec-lightning"])
        patch.chdir(root)
        options = [arg for key, value in RUN_OPTIONS.items() for arg in (f"--data.{key}", str(value))]
        main(["fit", "-c", QUICKSTART, "--data.path", str(data), *options, *TINY, "--trainer.max_epochs", "1",
              "--test_after_fit", "false", "--trainer.enable_checkpointing", "true", "--trainer.logger", "true",
              "--trainer.default_root_dir", str(root)])
    (checkpoint,) = root.rglob("*.ckpt")
    (config,) = root.rglob("config.yaml")
    return root, data, checkpoint, config


def test_the_checkpoint_stores_the_data_settings(run):
    *_, checkpoint, _ = run
    saved = torch.load(checkpoint, weights_only=True)["datamodule_hyper_parameters"]

    def value(key):  # "source.user_column" -> saved["source"]["user_column"]: the groups are stored as plain dicts
        *groups, name = key.split(".")
        options = saved
        for group in groups:
            options = options[group]
        return options[name]

    assert {key: value(key) for key in RUN_OPTIONS} == RUN_OPTIONS


@pytest.mark.parametrize("config", [[], ["-c", QUICKSTART]], ids=["no config", "quickstart config"])
def test_predict_with_only_the_checkpoint_and_the_data_reuses_the_run_settings(run, config, tmp_path, capsys,
                                                                               monkeypatch):
    _, data, checkpoint, _ = run
    monkeypatch.chdir(tmp_path)
    output = tmp_path / "recs.parquet"
    main(["predict", *config, "--ckpt_path", str(checkpoint), "--data.path", str(data),
          "--prediction.output", str(output), "--trainer.enable_progress_bar", "false"])
    out = capsys.readouterr().out
    assert "data options of the checkpoint's training run" in out and "user_column='uid'" in out
    users = pq.read_table(output).column("user").to_pylist()
    assert sorted(users) == sorted(f"u{user}" for user in range(30))  # min_user_interactions=4 dropped x0..x2
    assert not (tmp_path / "lightning_logs").exists()  # predicting starts no training-run folder


def test_an_option_given_on_the_command_line_wins_and_the_error_names_what_differs(run, capsys, tmp_path,
                                                                                  monkeypatch):
    _, data, checkpoint, _ = run
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:  # items seen fewer than 9 times are dropped: 12 of 25 are left
        main(["test", "--ckpt_path", str(checkpoint), "--data.path", str(data),
              "--data.preprocessing.min_item_interactions", "9"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert "num_items=25" in line and "min_item_interactions: None in the checkpoint, 9 here" in line, line
    assert "user_column" not in line  # taken from the checkpoint, so not a difference


def test_test_with_only_the_checkpoint_reads_the_training_data(run, capsys, tmp_path, monkeypatch):
    *_, checkpoint, _ = run
    monkeypatch.chdir(tmp_path)
    main(["test", "--ckpt_path", str(checkpoint), "--trainer.enable_progress_bar", "false"])
    assert "test/ndcg@10" in capsys.readouterr().out


@pytest.mark.parametrize("with_config", [False, True], ids=["checkpoint only", "run's config.yaml"])
def test_attention_works_with_the_checkpoint_or_the_run_config(run, with_config, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    *_, checkpoint, config = run
    args = ["-c", str(config)] if with_config else []
    attention_main([*args, "--ckpt_path", str(checkpoint), "--attention.output_dir", str(tmp_path / "heatmaps"),
                    "--data.print_statistics", "false"])
    assert (tmp_path / "heatmaps" / "attention.png").is_file(), capsys.readouterr()


def test_print_config_shows_the_optimizer_once(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "-c", QUICKSTART, "--print_config"])
    text = capsys.readouterr().out
    assert text.count("optimizer: null") == 1 and text.count("lr_scheduler: null") == 1, text
    assert yaml.safe_load(text)["model"]["init_args"]["optimizer"] is None
