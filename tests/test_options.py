"""Options out of range stop the CLI with one ``error:`` line naming the option (no traceback, no usage text).

Each case goes through the real entry point (``sasrec_lightning.cli.app``, the console script),
in process; one case also runs as a subprocess to see exactly what a user's terminal shows.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sasrec_lightning
from conftest import CONFIGS
from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.cli.app import main
from sasrec_lightning.data.options import CacheOptions, HoldoutOptions, LoaderOptions, PreprocessingOptions
from sasrec_lightning.errors import OptionError
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.evaluation import EvaluationOptions

QUICKSTART = str(CONFIGS / "quickstart.yaml")
TINY = ["--data.source.synthetic_users", "30", "--data.source.synthetic_items", "40", "--data.max_len", "8",
        "--data.cache.use", "false", "--data.print_statistics", "false",
        "--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.max_epochs", "1", "--test_after_fit", "false"]

# (flags, the option the message must name, a word of what is allowed)
BAD_OPTIONS = [
    (["--data.max_len", "0"], "data.max_len", ">= 1"),
    (["--model.init_args.encoder.dropout", "1.5"], "model.encoder.dropout", "[0.0, 1.0)"),
    (["--model.init_args.encoder.hidden_size", "30", "--model.init_args.encoder.num_heads", "4"],
     "model.encoder.num_heads", "divisible"),
    (["--model.init_args.evaluation.top_k", "[0]"], "model.evaluation.top_k", ">= 1"),
    (["--model.init_args.evaluation.top_k", "[]"], "model.evaluation.top_k", "non-empty"),
    (["--data.loader.num_negatives", "0"], "data.loader.num_negatives", ">= 1"),
    (["--model.init_args.encoder.hidden_size", "0"], "model.encoder.hidden_size", ">= 1"),
    (["--data.loader.batch_size", "0"], "data.loader.batch_size", ">= 1"),
    (["--data.preprocessing.min_user_interactions=-1"], "data.preprocessing.min_user_interactions", ">= 0"),
    (["--data.holdout.temporal_quantiles", "[1.5, 2]"], "data.holdout.temporal_quantiles", "[0, 1]"),
    (["--data.holdout.temporal_quantiles", "[0.9, 0.8]"], "data.holdout.temporal_quantiles", "not above"),
    (["--data.loader.num_eval_negatives", "0"], "data.loader.num_eval_negatives", ">= 1"),
    (["--model.init_args.encoder.num_heads", "0"], "model.encoder.num_heads", ">= 1"),
    (["--model.init_args.encoder.num_blocks=-1"], "model.encoder.num_blocks", ">= 0"),
    (["--model.init_args.optimization.lr", "0"], "model.optimization.lr", "> 0"),
    (["--model.init_args.loss", "GBCELoss", "--model.init_args.loss.init_args.t", "2"], "model.loss.t", "[0.0, 1.0]"),
    (["--model.init_args.evaluation.chunk_size", "0"], "model.evaluation.chunk_size", ">= 1"),
    (["--data.loader.eval_batch_size", "0"], "data.loader.eval_batch_size", ">= 1"),
    (["--prediction.k", "0"], "prediction.k", ">= 1"),
    (["--model.init_args.evaluation.top_k", "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]"], "model.evaluation.top_k",
     "at most 10"),
    # Full ranking over TINY's 40 items: every user is a hit at K = 100.
    (["--model.init_args.evaluation.protocol", "full", "--model.init_args.evaluation.top_k", "[10, 100]"],
     "model.evaluation.top_k", "cut-off 100 is above the catalogue's 40 items"),
]


@pytest.mark.parametrize(("flags", "option", "allowed"), BAD_OPTIONS, ids=lambda value: str(value))
def test_a_bad_option_is_one_error_line(capsys, tmp_path, flags, option, allowed):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", QUICKSTART, *TINY, "--trainer.default_root_dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err and "usage:" not in err and "Union subtypes" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert f"--{option}" in lines[0] and allowed in lines[0], lines[0]
    assert not list(tmp_path.rglob("*.ckpt"))  # stopped before training


# Non-finite numbers: YAML's .inf / .nan (and negative or 0 where a positive number is expected).
NONFINITE_OPTIONS = [
    (["--model.init_args.optimization.lr", ".inf"], "--model.optimization.lr inf: expected a finite number > 0"),
    (["--model.init_args.optimization.lr", ".nan"], "--model.optimization.lr nan: expected a finite number > 0"),
    (["--model.init_args.optimization.lr=-1"], "--model.optimization.lr -1.0: expected a finite number > 0"),
    (["--model.init_args.optimization.weight_decay", ".inf"],
     "--model.optimization.weight_decay inf: expected a finite number >= 0"),
    (["--model.init_args.optimization.l2_emb", ".inf"],
     "--model.optimization.l2_emb inf: expected a finite number >= 0"),
    (["--model.init_args.encoder.init_std", ".inf"], "--model.encoder.init_std inf: expected a finite number > 0"),
    (["--model.init_args.loss", "GBCELoss", "--model.init_args.loss.init_args.t", ".nan"],
     "--model.loss.t nan: expected a number in [0.0, 1.0]"),
    (["--model.init_args.encoder.dropout", ".nan"], "--model.encoder.dropout nan: expected a number in [0.0, 1.0)"),
]


@pytest.mark.parametrize(("flags", "expected"), NONFINITE_OPTIONS, ids=lambda value: str(value))
def test_a_non_finite_number_is_one_error_line(capsys, tmp_path, flags, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", QUICKSTART, *TINY, "--trainer.default_root_dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: {expected}"], err
    assert "Traceback" not in err and not list(tmp_path.rglob("*.ckpt")), err


# Each float option of the model by its group: (group, option, the loss class that has it, for loss options).
FLOAT_OPTIONS = [("optimization", "lr", None), ("encoder", "init_std", None), ("optimization", "weight_decay", None),
                 ("optimization", "l2_emb", None), ("loss", "t", "GBCELoss"), ("encoder", "dropout", None),
                 ("loss", "in_batch_fraction", "SampledSoftmaxLoss"), ("optimization", "betas", None)]


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=str)
@pytest.mark.parametrize(("group", "name", "loss"), FLOAT_OPTIONS, ids=lambda value: str(value))
def test_every_float_option_refuses_a_non_finite_value(group, name, loss, value):
    """Every float option of the model, from Python too: ``inf`` no longer passes where ``nan`` was refused."""
    option = {name: (value, 0.98) if name == "betas" else value}
    groups = {"encoder": {"hidden_size": 8, "num_blocks": 0}}
    if loss is not None:
        groups["loss"] = {"class_path": loss, "init_args": option}
    else:
        groups[group] = {**groups.get(group, {}), **option}
    with pytest.raises(OptionError, match=rf"--model\.{group}\.{name} \(?{value}"):
        SASRecModule(num_items=5, max_len=4, **groups)


def test_the_terminal_shows_one_line(tmp_path):
    """As a user runs it: ``python -m sasrec_lightning.cli``, stderr is the one line (plus Lightning's seed note)."""
    # The package under test, whatever the working directory (a relative PYTHONPATH would not follow cwd).
    package_root = str(Path(sasrec_lightning.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SASREC_LIGHTNING_CACHE": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "sasrec_lightning.cli", "fit", "-c", QUICKSTART, *TINY,
         "--model.init_args.encoder.hidden_size", "30", "--model.init_args.encoder.num_heads", "4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("Seed set to")]
    assert lines == ["error: --model.encoder.hidden_size 30 is not divisible by --model.encoder.num_heads 4: each head "
                     "gets hidden_size / num_heads dimensions"], result.stderr


def test_the_constructors_raise_value_errors_naming_the_option():
    with pytest.raises(ValueError, match=r"--model\.max_len 0: expected an integer >= 1"):
        SASRecModule(num_items=5, max_len=0)
    with pytest.raises(OptionError, match=r"--data\.loader\.num_eval_negatives 0"):
        SASRecDataModule(loader=LoaderOptions(num_eval_negatives=0))
    SASRecModule(num_items=5, max_len=4, encoder=EncoderOptions(hidden_size=8, num_blocks=0, dropout=0.0),
                 evaluation=EvaluationOptions(top_k=[1, 5]))  # edges allowed
    SASRecDataModule(preprocessing=PreprocessingOptions(min_user_interactions=0),
                     holdout=HoldoutOptions(temporal_quantiles=(0.5, 0.5)), cache=CacheOptions(num_proc=None))


def test_top_k_is_bounded_and_checked_against_a_real_catalogue_only():
    with pytest.raises(OptionError, match=r"--model\.evaluation\.top_k has 11 cut-offs; expected at most 10"):
        SASRecModule(num_items=50, evaluation=EvaluationOptions(top_k=list(range(1, 12))))
    with pytest.raises(OptionError, match=r"--model\.evaluation\.top_k \[1, 5, 10\]: cut-off 10 is above the "
                       r"catalogue's 5 items, so under --model\.evaluation\.protocol full every user would count as "
                       r"a hit at it"):
        SASRecModule(num_items=5, evaluation=EvaluationOptions(protocol="full", top_k=[1, 5, 10]))
    SASRecModule(num_items=5, evaluation=EvaluationOptions(protocol="full", top_k=[1, 5]))  # K = num_items is allowed
    # The placeholder catalogue of SASRecModule() (num_items=1, the CLI links the data's): not checked.
    SASRecModule(evaluation=EvaluationOptions(protocol="full"))
    # Under the sampled protocol a target is ranked among its 1 + num_eval_negatives candidates, not the catalogue.
    SASRecModule(num_items=5, evaluation=EvaluationOptions(top_k=[10]))


# Values of the wrong type are rejected while parsing (jsonargparse), before any constructor runs.
BAD_TYPES = [
    (["--data.max_len", "abc"], "--data.max_len: Expected a <class 'int'>. Got value: abc"),
    (["--trainer.max_epochs", "abc"], "--trainer.max_epochs: Expected a <class 'int'>"),
    # A loss is a shorthand or a class path: an unknown name is refused when the loss is resolved, still one line.
    (["--model.init_args.loss", "foo"],
     "--model.loss 'foo': expected one of ['bce', 'bpr', 'ce', 'gbce', 'sampled_softmax'] or the class path"),
    (["--model.init_args.evaluation.chunk_size", "abc"], "--model.evaluation.chunk_size: Expected an int or 'auto'"),
    (["--model.init_args.speed.pooled_dropout", "abc"], "--model.speed.pooled_dropout: Expected a bool or 'auto'"),
    (["--data.maxlen", "5"], "Option 'maxlen' is not accepted"),
    (["--no_such_option", "1"], "unrecognized arguments: --no_such_option 1"),
]


@pytest.mark.parametrize(("flags", "expected"), BAD_TYPES, ids=lambda value: str(value))
def test_a_value_of_the_wrong_type_is_one_error_line(capsys, flags, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", QUICKSTART, *TINY, *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "usage:" not in err and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
