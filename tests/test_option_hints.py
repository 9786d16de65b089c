"""Short, helpful option errors: the closest valid names for a typo, PYTHONPATH for a missing module."""

from __future__ import annotations

import pytest

from conftest import CONFIGS
from sasrec_lightning.cli.app import cli_main

QUICKSTART = str(CONFIGS / "quickstart.yaml")


def one_error_line(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", "-c", QUICKSTART, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" not in err and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    return line


@pytest.mark.parametrize(("args", "expected"), [
    (["--model.encoder.hidden_sise", "8"],
     "--model.encoder.hidden_sise: Option 'encoder.hidden_sise' is not accepted by sasrec_lightning.SASRecModule; "
     "did you mean encoder.hidden_size?"),
    (["--model.init_args.encoder.num_blockz", "1"], "did you mean encoder.num_blocks?"),
    (["--data.max_lenn", "8"], "--data.max_lenn: Option 'max_lenn' is not accepted by "
                               "sasrec_lightning.SASRecDataModule; did you mean max_len or features.max_values?"),
    # A prefix of an option is a typo too (no abbreviations): refused, not expanded to the option it starts.
    (["--data.preprocessing.min_user_interaction", "3"], "did you mean preprocessing.min_user_interactions"),
    # A misspelt 0.2 name: the closest option, in its group.
    (["--model.hidden_sise", "8"], "--model.hidden_sise: Option 'hidden_sise' is not accepted by "
                                   "sasrec_lightning.SASRecModule; did you mean encoder.hidden_size?"),
    (["--model.dropot", "0.3"], "did you mean encoder.dropout or"),  # close to the option's own name, not its path
])
def test_an_unknown_option_names_the_closest_valid_ones(capsys, args, expected):
    line = one_error_line(capsys, args)
    assert expected in line, line
    assert "--model.help SASRecModule" in line or "--data.help SASRecDataModule" in line


def test_an_unknown_loss_option_names_the_loss_options(capsys):
    line = one_error_line(capsys, ["--model.loss", "GBCELoss", "--model.loss.tt", "0.5"])
    assert line == ("error: --model.loss.tt: Option 'tt' is not accepted by sasrec_lightning.model.losses.GBCELoss; "
                    "did you mean t? (every option: --model.loss.help GBCELoss)"), line


@pytest.mark.parametrize(("args", "expected"), [
    (["--model.gbce_t", "0.5"], "error: --model.gbce_t is --model.loss.init_args.t (with loss: GBCELoss) since "
                                "sasrec-lightning 0.3"),
    (["--model.init_args.hidden_size", "8"], "error: --model.hidden_size is --model.encoder.hidden_size since "
                                             "sasrec-lightning 0.3"),
    (["--data.user_column", "u"], "error: --data.user_column is --data.source.user_column since sasrec-lightning 0.3"),
    # A 0.2 option whose name is now its group's: the value goes to the group's option.
    (["--data.holdout", "temporal"], "error: --data.holdout temporal is --data.holdout.scheme temporal since "
                                     "sasrec-lightning 0.3"),
    # A loss shorthand takes no options: the loss is named by its class to set them.
    (["--model.loss", "gbce", "--model.loss.t", "0.5"], "error: --model.loss gbce is a shorthand, which takes no "
                                                        "options: to set the loss's options name its class "
                                                        "(--model.loss GBCELoss --model.loss.OPTION VALUE"),
])
def test_a_0_2_option_names_its_new_spelling(capsys, args, expected):
    line = one_error_line(capsys, args)
    assert line.startswith(expected), line


def test_a_typo_in_a_config_file_is_one_line_too(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    encoder:\n      hiden_size: 3\n")
    line = one_error_line(capsys, ["-c", str(bad)])
    assert "--model.encoder.hiden_size: Option 'encoder.hiden_size' is not accepted" in line, line
    assert "did you mean encoder.hidden_size" in line, line
    assert "Got value" not in line


def test_a_missing_module_points_to_pythonpath(capsys):
    line = one_error_line(capsys, ["--model.class_path", "my_recsys_not_here.MySASRec"])
    assert "no module named 'my_recsys_not_here'" in line and "PYTHONPATH=." in line, line


def test_fit_help_points_to_the_model_and_data_help(capsys):
    with pytest.raises(SystemExit):
        cli_main(["fit", "--help"])
    out = capsys.readouterr().out
    head = " ".join(" ".join(out.splitlines()[:8]).split())  # help text is wrapped
    assert "--model.help SASRecModule" in head and "--data.help SASRecDataModule" in head, head
    assert out.index("options:") < 1000  # the usage line no longer lists every trainer flag
