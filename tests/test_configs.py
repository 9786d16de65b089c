"""Every shipped YAML in ``configs/`` runs ``fit`` with ``fast_dev_run`` (tiny dims, tiny data)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from conftest import CONFIGS, TINY_LINES, TINY_MODEL, TINY_TRAINER, write_sasrec_txt
from sasrec_lightning import SASRecDataModule
from sasrec_lightning.cli.app import cli_main

ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("paper/*.yaml"))
PAPER = {"steam.yaml": (50, 0.5), "beauty.yaml": (50, 0.5), "games.yaml": (50, 0.5), "ml-1m.yaml": (200, 0.2)}


def test_the_shipped_configs_are_found():
    assert {path.name for path in ALL_CONFIGS} >= {"quickstart.yaml", *PAPER}
    assert {path.name for path in CONFIGS.glob("paper/*.yaml")} == set(PAPER)  # one reference recipe each


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=lambda path: str(path.relative_to(CONFIGS)))
def test_config_runs_with_fast_dev_run(config, tmp_path, monkeypatch, synthetic_txt):
    monkeypatch.chdir(tmp_path)  # loggers and config dumps land in tmp_path
    data = yaml.safe_load(config.read_text()).get("data", {}).get("init_args", {})
    args = ["fit", "-c", str(config), *TINY_MODEL, *TINY_TRAINER, "--trainer.fast_dev_run", "true",
            "--trainer.default_root_dir", str(tmp_path), "--data.init_args.max_len", "10",
            "--data.init_args.cache.dir", str(tmp_path / "cache")]
    if data.get("path") or data.get("source", {}).get("url"):  # a dataset config: point it at a tiny SASRec file
        args += ["--data.path", str(synthetic_txt)]
    else:
        args += ["--data.init_args.source.synthetic_users", "60", "--data.init_args.source.synthetic_items", "30"]
    cli = cli_main(args)
    assert cli.trainer.state.finished
    assert cli.model.model.num_items == cli.datamodule.num_items  # linked, never typed
    assert cli.model.model.max_len == 10


@pytest.mark.parametrize("name", sorted(PAPER))
def test_dataset_configs_carry_the_papers_settings(name):
    config = yaml.safe_load((CONFIGS / name).read_text())
    model, data = config["model"]["init_args"], config["data"]["init_args"]
    encoder, optimization = model["encoder"], model["optimization"]
    max_len, dropout = PAPER[name]
    assert (data["max_len"], encoder["dropout"]) == (max_len, dropout)
    assert (encoder["hidden_size"], encoder["num_blocks"], encoder["num_heads"]) == (50, 2, 1)
    assert optimization["lr"] == 0.001
    assert data["loader"]["batch_size"] == 128 and tuple(optimization.get("betas", (0.9, 0.98))) == (0.9, 0.98)
    protocol = model.get("evaluation", {}).get("protocol", "sampled")
    assert model.get("loss", "bce") == "bce" and protocol == "sampled"
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c["init_args"] for c in config["trainer"]["callbacks"]}
    assert callbacks["ModelCheckpoint"]["monitor"] == "val/ndcg@10" and callbacks["ModelCheckpoint"]["mode"] == "max"
    assert callbacks["EarlyStopping"]["monitor"] == "val/ndcg@10" and callbacks["EarlyStopping"]["patience"] >= 1


def _data_options(path):
    return yaml.safe_load(path.read_text()).get("data", {}).get("init_args", {})


@pytest.mark.parametrize("config", [path for path in ALL_CONFIGS if _data_options(path).get("path")
                                    or _data_options(path).get("source", {}).get("url")], ids=lambda path: path.name)
def test_dataset_configs_do_not_filter_a_sasrec_text_file_again(config, tmp_path):
    """A SASRec ``.txt`` is already preprocessed: every dataset config keeps all its rows (raw files get 5/5)."""
    tiny = write_sasrec_txt(tmp_path / "tiny.txt", TINY_LINES)  # users with 1-5 actions, items with 2-4
    options = _data_options(config)
    source = {key: value for key, value in options.get("source", {}).items() if key != "url"}
    data = SASRecDataModule(**{**options, "path": str(tiny), "source": source,
                               "cache": {**options.get("cache", {}), "dir": str(tmp_path / "cache")},
                               "print_statistics": False})
    assert data.statistics["actions"] == len(TINY_LINES)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_reference_recipes_carry_the_authors_code_settings(name):
    """configs/paper/*.yaml: the paper's settings plus what the authors' code does (issue list in the header)."""
    recipe = yaml.safe_load((CONFIGS / "paper" / name).read_text())
    recommended = yaml.safe_load((CONFIGS / name).read_text())
    model, data, trainer = recipe["model"]["init_args"], recipe["data"]["init_args"], recipe["trainer"]
    encoder, optimization, loader = model["encoder"], model["optimization"], data["loader"]
    max_len, dropout = PAPER[name]
    assert (data["max_len"], encoder["dropout"], loader["batch_size"]) == (max_len, dropout, 128)
    assert (encoder["hidden_size"], encoder["num_blocks"], encoder["num_heads"]) == (50, 2, 1)
    assert optimization["lr"] == 0.001
    assert tuple(optimization["betas"]) == (0.9, 0.98) and optimization["l2_emb"] == 0.0
    assert (encoder["block_layout"], encoder["init"], model["loss"]) == ("reference", "xavier_uniform", "bce")
    assert optimization["loss_normalization"] == "batch" and loader["length_bucketing"] is False
    assert (loader["num_negatives"], loader["num_eval_negatives"]) == (1, 100)
    assert model["evaluation"]["protocol"] == "sampled"
    assert trainer["max_epochs"] == 200 and trainer["check_val_every_n_epoch"] == 20
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c["init_args"] for c in trainer["callbacks"]}
    assert "EarlyStopping" not in callbacks and callbacks["ModelCheckpoint"].get("monitor") is None
    # The same data as the recommended config: only the recipe differs.
    def where(options):  # the data's path and how it is read: path, source.url and the source's columns
        source = options.get("source", {})
        return {"path": options.get("path"), **{key: source.get(key) for key in ("url", "user_column", "item_column")}}

    assert where(recommended["data"]["init_args"]) == where(data)


def test_the_resumable_fragment_composes_with_a_config_that_turns_checkpointing_off(tmp_path):
    """`-c quickstart -c trainer/resumable` (quickstart turns checkpointing off) trains and leaves last.ckpt."""
    tiny = ["--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
            "--data.max_len", "8", "--data.source.synthetic_users", "40", "--data.source.synthetic_items", "30",
            "--data.loader.num_eval_negatives", "10", "--trainer.max_epochs", "1", "--trainer.limit_train_batches",
            "2", "--trainer.enable_progress_bar", "false", "--test_after_fit", "false"]
    result = subprocess.run([sys.executable, "-m", "sasrec_lightning.cli", "fit", "-c", "quickstart", "-c",
                             "trainer/resumable", *tiny], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "checkpoints" / "last" / "last.ckpt").is_file()


def test_trainer_options_lightning_refuses_together_are_one_error_line(tmp_path):
    """Lightning's MisconfigurationException at trainer creation is one `error:` line, exit 2, no traceback."""
    result = subprocess.run([sys.executable, "-m", "sasrec_lightning.cli", "fit", "-c", "quickstart",
                             "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
                             "--data.source.synthetic_users", "40", "--trainer.max_epochs", "1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "enable_checkpointing=False" in lines[0] and "the trainer options do not fit together" in lines[0]
