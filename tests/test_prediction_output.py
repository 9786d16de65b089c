"""``predict``'s output file: never stale, never half-written, and a bad path fails before predicting."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import CONFIGS
from sasrec_lightning import SASRecModule
from sasrec_lightning.cli.app import main
from sasrec_lightning.serving.prediction import read_user_list, recommendations_table, write_table

QUICKSTART = str(CONFIGS / "quickstart.yaml")
TINY = ["--data.source.synthetic_users", "30", "--data.source.synthetic_items", "40", "--data.max_len", "8",
        "--data.cache.use", "false", "--data.print_statistics", "false",
        "--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("fit")
    with pytest.MonkeyPatch.context() as patch:  # (module scope: the autouse argv reset has not run yet)
        patch.setattr(sys, "argv", ["sasrec-lightning"])
        main(["fit", "-c", QUICKSTART, *TINY, "--trainer.max_epochs", "1", "--test_after_fit", "false",
              "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(root)])
    (path,) = root.rglob("*.ckpt")
    return str(path)


@pytest.mark.parametrize("name", ["recs.parquet", "recs.jsonl"])
def test_only_unknown_users_write_an_empty_file_over_an_old_one(checkpoint, tmp_path, name):
    output = tmp_path / name
    output.write_text("an older run's output\n")
    users = tmp_path / "users.txt"
    users.write_text("nobody\n99999\n")
    main(["predict", "-c", QUICKSTART, *TINY, "--ckpt_path", checkpoint, "--prediction.output", str(output),
          "--data.predict_users", str(users)])
    if name.endswith(".parquet"):
        table = pq.read_table(output)  # a valid Parquet file with the usual columns and no row
        assert table.num_rows == 0 and table.column_names == ["user", "items", "scores"]
    else:
        assert output.read_text() == ""  # JSON lines with no line
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no temporary left


def test_an_output_under_a_file_fails_before_any_user_is_predicted(checkpoint, tmp_path, capsys, monkeypatch):
    (tmp_path / "taken").write_text("a file, not a folder")
    predicted = []
    original = SASRecModule.predict_step
    monkeypatch.setattr(SASRecModule, "predict_step",
                        lambda self, *args: predicted.append(1) or original(self, *args))
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "-c", QUICKSTART, *TINY, "--ckpt_path", checkpoint,
              "--prediction.output", str(tmp_path / "taken" / "recs.parquet")])
    assert predicted == [], "users were predicted before the output path was checked"
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "--prediction.output" in lines[0] and "is a file, not a folder" in lines[0]


def test_an_output_that_is_a_folder_fails_before_predicting(checkpoint, tmp_path, capsys):
    (tmp_path / "recs.parquet").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "-c", QUICKSTART, *TINY, "--ckpt_path", checkpoint,
              "--prediction.output", str(tmp_path / "recs.parquet")])
    assert exit_info.value.code == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["recs.parquet", "recs.jsonl"])
def test_a_write_interrupted_midway_leaves_the_old_file_whole(tmp_path, monkeypatch, name):
    """What a kill during the write would leave: the final path keeps the old file, no partial one."""
    output = tmp_path / name
    output.write_text("old\n")
    table = recommendations_table(np.arange(3), np.ones((3, 2), np.int64), np.ones((3, 2), np.float32))

    def killed(*args, **kwargs):
        target = args[1] if len(args) > 1 else kwargs.get("where")
        if target is None:  # the JSON-lines writer: killed while converting, after the file was opened
            raise KeyboardInterrupt
        if hasattr(target, "write"):
            target.write(b"PAR1 partial")
        else:
            with open(target, "wb") as handle:
                handle.write(b"PAR1 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", killed)
    monkeypatch.setattr("pandas.DataFrame.to_json", lambda *args, **kwargs: killed())
    with pytest.raises(KeyboardInterrupt):
        write_table(table, str(output))
    assert output.read_text() == "old\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == [name]  # the temporary file was removed


def test_write_table_replaces_the_file_whole(tmp_path):
    output = tmp_path / "deep" / "recs.jsonl"
    table = recommendations_table(np.array([0]), np.array([[1]]), np.array([[1.5]], np.float32), np.array(["u"]),
                                  np.array(["", "i"]))
    write_table(table, str(output))
    write_table(table, str(output))
    assert [json.loads(line) for line in output.read_text().splitlines()] == [{"user": "u", "items": ["i"],
                                                                               "scores": [1.5]}]
    assert sorted(path.name for path in output.parent.iterdir()) == ["recs.jsonl"]


def test_unknown_user_ids_are_reported_as_given(tmp_path, caplog):
    path = tmp_path / "users.txt"
    path.write_text("20\nnobody\nuser-7\n-3\n")
    with caplog.at_level(logging.WARNING):
        assert read_user_list(str(path), np.array([10, 20, 30])).tolist() == [1]
    assert "3 id(s) not in the data" in caplog.text
    assert "['nobody', 'user-7', '-3']" in caplog.text


@pytest.mark.parametrize(("name", "content"), [("users.jsonl", "user\n"), ("users.parquet", "not parquet")])
def test_an_unreadable_user_list_is_a_data_error(tmp_path, name, content):
    from sasrec_lightning.errors import DataError

    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=rf"--data.predict_users .*{name}.* is not a readable"):
        read_user_list(str(tmp_path / name), np.array([1, 2]))
