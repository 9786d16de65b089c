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
from sasrec_lightning.errors import OptionError

QUICKSTART = str(CONFIGS / "quickstart.yaml")
TINY = ["--data.synthetic_users", "30", "--data.synthetic_items", "40", "--data.max_len", "8",
        "--data.use_cache", "false", "--data.print_statistics", "false",
        "--model.init_args.hidden_size", "8", "--model.init_args.num_blocks", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.max_epochs", "1", "--test_after_fit", "false"]

# (flags, the option the message must name, a word of what is allowed)
BAD_OPTIONS = [
    (["--data.max_len", "0"], "data.max_len", ">= 1"),
    (["--model.init_args.dropout", "1.5"], "model.dropout", "[0.0, 1.0)"),
    (["--model.init_args.hidden_size", "30", "--model.init_args.num_heads", "4"], "model.num_heads", "divisible"),
    (["--model.init_args.top_k", "[0]"], "model.top_k", ">= 1"),
    (["--model.init_args.top_k", "[]"], "model.top_k", "non-empty"),
    (["--data.num_negatives", "0"], "data.num_negatives", ">= 1"),
    (["--model.init_args.hidden_size", "0"], "model.hidden_size", ">= 1"),
    (["--data.batch_size", "0"], "data.batch_size", ">= 1"),
    (["--data.min_user_interactions=-1"], "data.min_user_interactions", ">= 0"),
    (["--data.temporal_quantiles", "[1.5, 2]"], "data.temporal_quantiles", "[0, 1]"),
    (["--data.temporal_quantiles", "[0.9, 0.8]"], "data.temporal_quantiles", "not above"),
    (["--data.num_eval_negatives", "0"], "data.num_eval_negatives", ">= 1"),
    (["--model.init_args.num_heads", "0"], "model.num_heads", ">= 1"),
    (["--model.init_args.num_blocks=-1"], "model.num_blocks", ">= 0"),
    (["--model.init_args.lr", "0"], "model.lr", "> 0"),
    (["--model.init_args.gbce_t", "2"], "model.gbce_t", "[0.0, 1.0]"),
    (["--model.init_args.eval_chunk_size", "0"], "model.eval_chunk_size", ">= 1"),
    (["--data.eval_batch_size", "0"], "data.eval_batch_size", ">= 1"),
    (["--prediction.k", "0"], "prediction.k", ">= 1"),
    (["--model.init_args.top_k", "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]"], "model.top_k", "at most 10"),
    # Full ranking over TINY's 40 items: every user is a hit at K = 100.
    (["--model.init_args.eval_protocol", "full", "--model.init_args.top_k", "[10, 100]"], "model.top_k",
     "cut-off 100 is above the catalogue's 40 items"),
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
    (["--model.init_args.lr", ".inf"], "--model.lr inf: expected a finite number > 0"),
    (["--model.init_args.lr", ".nan"], "--model.lr nan: expected a finite number > 0"),
    (["--model.init_args.lr=-1"], "--model.lr -1.0: expected a finite number > 0"),
    (["--model.init_args.weight_decay", ".inf"], "--model.weight_decay inf: expected a finite number >= 0"),
    (["--model.init_args.l2_emb", ".inf"], "--model.l2_emb inf: expected a finite number >= 0"),
    (["--model.init_args.init_std", ".inf"], "--model.init_std inf: expected a finite number > 0"),
    (["--model.init_args.gbce_t", ".nan"], "--model.gbce_t nan: expected a number in [0.0, 1.0]"),
    (["--model.init_args.dropout", ".nan"], "--model.dropout nan: expected a number in [0.0, 1.0)"),
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


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")], ids=str)
@pytest.mark.parametrize("name", ["lr", "init_std", "weight_decay", "l2_emb", "gbce_t", "dropout",
                                  "in_batch_fraction", "betas"])
def test_every_float_option_refuses_a_non_finite_value(name, value):
    """Every float option of the model, from Python too: ``inf`` no longer passes where ``nan`` was refused."""
    options = {name: (value, 0.98) if name == "betas" else value}
    with pytest.raises(OptionError, match=rf"--model\.{name} \(?{value}"):
        SASRecModule(num_items=5, max_len=4, hidden_size=8, num_blocks=0, **options)


def test_the_terminal_shows_one_line(tmp_path):
    """As a user runs it: ``python -m sasrec_lightning.cli``, stderr is the one line (plus Lightning's seed note)."""
    # The package under test, whatever the working directory (a relative PYTHONPATH would not follow cwd).
    package_root = str(Path(sasrec_lightning.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SASREC_LIGHTNING_CACHE": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "sasrec_lightning.cli", "fit", "-c", QUICKSTART, *TINY,
         "--model.init_args.hidden_size", "30", "--model.init_args.num_heads", "4"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("Seed set to")]
    assert lines == ["error: --model.hidden_size 30 is not divisible by --model.num_heads 4: each head gets "
                     "hidden_size / num_heads dimensions"], result.stderr


def test_the_constructors_raise_value_errors_naming_the_option():
    with pytest.raises(ValueError, match=r"--model\.max_len 0: expected an integer >= 1"):
        SASRecModule(num_items=5, max_len=0)
    with pytest.raises(OptionError, match=r"--data\.num_eval_negatives 0"):
        SASRecDataModule(num_eval_negatives=0)
    SASRecModule(num_items=5, max_len=4, hidden_size=8, num_blocks=0, dropout=0.0, top_k=[1, 5])  # edges allowed
    SASRecDataModule(min_user_interactions=0, temporal_quantiles=(0.5, 0.5), num_proc=None)


def test_top_k_is_bounded_and_checked_against_a_real_catalogue_only():
    with pytest.raises(OptionError, match=r"--model\.top_k has 11 cut-offs; expected at most 10"):
        SASRecModule(num_items=50, top_k=list(range(1, 12)))
    with pytest.raises(OptionError, match=r"--model\.top_k \[1, 5, 10\]: cut-off 10 is above the catalogue's 5 items, "
                       r"so under --model\.eval_protocol full every user would count as a hit at it"):
        SASRecModule(num_items=5, eval_protocol="full", top_k=[1, 5, 10])
    SASRecModule(num_items=5, eval_protocol="full", top_k=[1, 5])  # K = num_items is allowed
    # The placeholder catalogue of SASRecModule() (num_items=1, the CLI links the data's): not checked.
    SASRecModule(eval_protocol="full")
    # Under the sampled protocol a target is ranked among its 1 + num_eval_negatives candidates, not the catalogue.
    SASRecModule(num_items=5, top_k=[10])


# Values of the wrong type are rejected while parsing (jsonargparse), before any constructor runs.
BAD_TYPES = [
    (["--data.max_len", "abc"], "--data.max_len: Expected a <class 'int'>. Got value: abc"),
    (["--trainer.max_epochs", "abc"], "--trainer.max_epochs: Expected a <class 'int'>"),
    (["--model.init_args.loss", "foo"],
     "--model.loss: Expected a typing.Literal['bce', 'gbce', 'bpr', 'sampled_softmax', 'ce']"),
    (["--model.init_args.eval_chunk_size", "abc"], "--model.eval_chunk_size: Expected an int or 'auto'"),
    (["--model.init_args.pooled_dropout", "abc"], "--model.pooled_dropout: Expected a bool or 'auto'"),
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
