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
    (["--model.hidden_sise", "8"], "--model.hidden_sise: Option 'hidden_sise' is not accepted by "
                                   "sasrec_lightning.SASRecModule; did you mean hidden_size?"),
    (["--model.init_args.num_blockz", "1"], "did you mean num_blocks?"),
    (["--data.max_lenn", "8"], "--data.max_lenn: Option 'max_lenn' is not accepted by "
                               "sasrec_lightning.SASRecDataModule; did you mean max_len?"),
    (["--data.min_user_interaction", "3"], "did you mean min_user_interactions"),
])
def test_an_unknown_option_names_the_closest_valid_ones(capsys, args, expected):
    line = one_error_line(capsys, args)
    assert expected in line, line
    assert "--model.help SASRecModule" in line or "--data.help SASRecDataModule" in line


def test_a_typo_in_a_config_file_is_one_line_too(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    hiden_size: 3\n")
    line = one_error_line(capsys, ["-c", str(bad)])
    assert "--model.hiden_size: Option 'hiden_size' is not accepted" in line, line
    assert "did you mean hidden_size" in line, line
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
