"""A checkpoint's data path works from any folder: stored absolute, and a missing one is named with its origin.

Before (0.3.0): the checkpoint and the run's config.yaml kept ``--data.path`` as typed (``../my_log.txt``),
so ``predict --ckpt_path`` from another folder read another file or none (``data file '../my_log.txt' does
not exist``), without saying the path came from the checkpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import CONFIGS, write_sasrec_txt
from sasrec_lightning.cli.app import main
from sasrec_lightning.data.locations import resolved_path

TINY = ["--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1", "--data.max_len",
        "8", "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture
def relative_run(tmp_path, monkeypatch):
    """(data file, checkpoint) of a fit run in ``tmp_path/train`` on ``--data.path ../data/my_log.txt``."""
    data = write_sasrec_txt((tmp_path / "data").mkdir() or tmp_path / "data" / "my_log.txt",
                            [(user, (user * 3 + step) % 25 + 1) for user in range(1, 41) for step in range(6)])
    (tmp_path / "train").mkdir()
    monkeypatch.chdir(tmp_path / "train")
    main(["fit", "-c", str(CONFIGS / "quickstart.yaml"), "--data.path", os.path.join("..", "data", "my_log.txt"),
          *TINY, "--trainer.max_epochs", "1", "--test_after_fit", "false", "--trainer.enable_checkpointing", "true",
          "--data.print_statistics", "false"])
    (checkpoint,) = (tmp_path / "train").rglob("*.ckpt")
    return data, checkpoint


def test_the_checkpoint_and_the_run_config_store_the_data_path_absolute(relative_run):
    data, checkpoint = relative_run
    assert torch.load(checkpoint, weights_only=True)["datamodule_hyper_parameters"]["path"] == str(data)
    config = yaml.safe_load((checkpoint.parent / "config.yaml").read_text())
    assert config["data"]["init_args"]["path"] == str(data)


def test_hub_ids_urls_and_absolute_paths_are_kept_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for kept in ("someone/beauty-interactions", "hf://datasets/someone/beauty", "file:///data/log.csv",
                 str(tmp_path / "log.csv")):
        assert resolved_path(kept) == kept
    assert resolved_path("missing.parquet") == str(tmp_path / "missing.parquet")  # a file by its extension
    (tmp_path / "someone" / "folder").mkdir(parents=True)
    assert resolved_path("someone/folder") == str(tmp_path / "someone" / "folder")  # an existing local folder


def test_predict_from_another_folder_finds_the_data_or_names_the_path_it_tried(relative_run, tmp_path, capsys,
                                                                               monkeypatch):
    data, checkpoint = relative_run
    elsewhere = tmp_path / "elsewhere" / "deeper"  # ../data/my_log.txt from here would be another (missing) file
    elsewhere.mkdir(parents=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "sasrec_lightning.cli", "predict", "--ckpt_path", str(checkpoint),
                             "--prediction.output", "recs.parquet", "--trainer.enable_progress_bar", "false"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (elsewhere / "recs.parquet").is_file()

    # The data moved: one line naming the path tried, that it is the checkpoint's, and --data.path.
    moved = data.rename(tmp_path / "moved.txt")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--ckpt_path", str(checkpoint), "--prediction.output", "recs2.parquet",
              "--trainer.enable_progress_bar", "false"])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: data file {str(data)!r} does not exist: it is the data path stored in --ckpt_path "
                      f"{str(checkpoint)!r} (where its training run read the data); pass --data.path to override it "
                      "with where the data is now"]
    main(["predict", "--ckpt_path", str(checkpoint), "--data.path", str(moved), "--prediction.output",
          "recs2.parquet", "--trainer.enable_progress_bar", "false"])
    assert (elsewhere / "recs2.parquet").is_file()


def test_a_relative_path_of_an_older_checkpoint_is_named_as_tried_from_here(relative_run, tmp_path, capsys,
                                                                            monkeypatch):
    """A 0.3.0 checkpoint holds the path as typed: the error shows it and the absolute path tried."""
    _, checkpoint = relative_run
    state = torch.load(checkpoint, weights_only=True)
    state["datamodule_hyper_parameters"]["path"] = "../my_log.txt"
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    monkeypatch.chdir(tmp_path / "train")
    with pytest.raises(SystemExit):
        main(["predict", "--ckpt_path", str(old), "--prediction.output", "recs.parquet"])
    (error,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    tried = str(tmp_path / "train" / ".." / "my_log.txt")
    assert error.startswith(f"error: data file {tried!r} ('../my_log.txt', relative to the folder its training ran "
                            "in, tried from here) does not exist: it is the data path stored in --ckpt_path"), error
