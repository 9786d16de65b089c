"""Data from memory (issue 25): ``SASRecDataModule(path=table)``, a Dataset, DatasetDict, DataFrame, Table or dict.

Each kind takes the files' way (the same column options, typed columns, checks and preprocessing), so
its sequences must equal those of the same rows written to a CSV file; the cache keys it on a digest of
its content; a checkpoint keeps a description of it, never the table.
"""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import datasets
import lightning as L
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.cli.app import main
from sasrec_lightning.data.options import CacheOptions, PreprocessingOptions, SourceOptions
from sasrec_lightning.errors import DataError, OptionError
from sasrec_lightning.model.options import EncoderOptions

datasets.disable_progress_bars()

SOURCE = SourceOptions(user_column="uid", item_column="sku", timestamp_column="ts")
NO_CACHE = CacheOptions(use=False)


def interactions(ids: str = "str") -> pd.DataFrame:
    """48 interactions of 8 users on 6 items, and one of a rare item (filtered out by the default 5/5).

    The rows are shuffled, so only the timestamps give the order.
    """
    rows = [(user, (user * 5 + step * 2) % 6, 100 * step + user) for user in range(8) for step in range(6)]
    rows.append((3, 99, 1000))  # the rare item: 1 interaction
    frame = pd.DataFrame(rows, columns=["uid", "sku", "ts"]).sample(frac=1.0, random_state=0).reset_index(drop=True)
    if ids == "str":
        frame["uid"] = "user-" + frame["uid"].astype(str)
        frame["sku"] = "sku-" + frame["sku"].astype(str)
    else:
        frame[["uid", "sku"]] += 1000  # ints that are not 1..N
    return frame


class ArrowStream:
    """A table known only by the Arrow PyCapsule interface, as a polars or DuckDB result is."""

    def __init__(self, table: pa.Table) -> None:
        self._table = table

    def __arrow_c_stream__(self, requested_schema=None):
        return self._table.__arrow_c_stream__(requested_schema)


KINDS = {
    "DataFrame": lambda frame: frame,
    "Table": lambda frame: pa.Table.from_pandas(frame, preserve_index=False),
    "Dataset": lambda frame: datasets.Dataset.from_pandas(frame, preserve_index=False),
    "DatasetDict": lambda frame: datasets.DatasetDict(
        other=datasets.Dataset.from_pandas(frame.head(3), preserve_index=False),
        train=datasets.Dataset.from_pandas(frame, preserve_index=False)),
    "dict": lambda frame: {column: frame[column].tolist() for column in frame.columns},
    "ArrowStream": lambda frame: ArrowStream(pa.Table.from_pandas(frame, preserve_index=False)),
}


def module(path, **options) -> SASRecDataModule:
    options = {"source": SOURCE, "cache": NO_CACHE, "print_statistics": False, "max_len": 8, **options}
    return SASRecDataModule(path=path, **options)


def assert_same_sequences(data, reference) -> None:
    """Equal by construction: the same CSR arrays, id maps (values and dtypes) and timestamps."""
    for field in ("items", "offsets", "user_ids", "item_ids", "timestamps"):
        got, expected = getattr(data, field), getattr(reference, field)
        assert got.dtype == expected.dtype, field
        np.testing.assert_array_equal(got, expected, err_msg=field)


def from_csv(frame: pd.DataFrame, tmp_path: Path, **options):
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    return module(str(path), **options).sequences


@pytest.mark.parametrize("ids", ["str", "int"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_gives_the_sequences_of_the_same_rows_in_a_csv_file(kind, ids, tmp_path):
    frame = interactions(ids)
    data = module(KINDS[kind](frame)).sequences
    assert_same_sequences(data, from_csv(frame, tmp_path))
    assert data.num_items == 6  # the rare item was filtered as in the file (min_item_interactions 5)
    assert data.user_ids.tolist()[:2] == (["user-0", "user-1"] if ids == "str" else [1000, 1001])


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_trains_a_tiny_model(kind):
    data = module(KINDS[kind](interactions()), loader={"batch_size": 4, "num_eval_negatives": 3})
    model = SASRecModule(num_items=data.num_items, max_len=8,
                         encoder=EncoderOptions(hidden_size=8, num_blocks=1, num_heads=1))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, data)
    assert trainer.state.finished and torch.isfinite(trainer.callback_metrics["train/loss"])
    assert data.split_data.data.num_users == 8


def test_a_dataset_is_read_with_its_selection_not_its_whole_table(tmp_path):
    """select/shuffle/filter keep the whole Arrow table and an index: the selected rows are the data."""
    frame = interactions()
    dataset = datasets.Dataset.from_pandas(frame, preserve_index=False)
    keep = [row for row in range(len(frame)) if frame["uid"][row] != "user-5"]
    subset = dataset.shuffle(seed=1).filter(lambda row: row["uid"] != "user-5")
    data = module(subset, preprocessing=PreprocessingOptions(min_item_interactions=0)).sequences
    assert "user-5" not in data.user_ids.tolist()
    reference = from_csv(frame.iloc[keep], tmp_path, preprocessing=PreprocessingOptions(min_item_interactions=0))
    assert_same_sequences(data, reference)


def test_a_datasetdict_split_is_chosen_with_source_split():
    frame = interactions()
    data = module(KINDS["DatasetDict"](frame), source=SourceOptions(
        user_column="uid", item_column="sku", timestamp_column="ts", split="other"),
        preprocessing=PreprocessingOptions(min_user_interactions=0, min_item_interactions=0)).sequences
    assert len(data.items) == 3


def test_a_pathlib_path_is_a_path(tmp_path):
    frame = interactions()
    frame.to_csv(tmp_path / "log.csv", index=False)
    data = module(tmp_path / "log.csv")
    assert data.hparams["path"] == str(tmp_path / "log.csv")
    assert_same_sequences(data.sequences, from_csv(frame, tmp_path))


# ------------------------------------------------------------------------------------------ errors
def _refused(path, error=DataError, **options) -> str:
    with pytest.raises(error) as raised:
        module(path, **options).sequences  # noqa: B018
    message = str(raised.value)
    assert "\n" not in message  # one paragraph
    return message


def test_a_missing_column_names_the_columns_there_are():
    frame = interactions().rename(columns={"sku": "product"})
    message = _refused(frame)
    assert message.startswith("<pandas.DataFrame 49 rows>: column(s) ['sku'] not found; the columns are "
                              "['uid', 'product', 'ts']. Set source=SourceOptions(user_column=...")


@pytest.mark.parametrize("kind", ["DataFrame", "Dataset", "dict"])
def test_no_rows_is_an_error(kind):
    message = _refused(KINDS[kind](interactions().head(0)))
    assert "no interactions found (the table has no rows)" in message and "0 rows>" in message


def test_a_missing_id_names_its_row():
    frame = interactions()
    frame.loc[6, "uid"] = None
    assert _refused(frame).startswith("<pandas.DataFrame 49 rows>, row 7: the user field 'uid' is null (missing); "
                                      "expected an id on every row")


def test_wrong_types_are_errors():
    frame = interactions()
    frame["uid"] = [[1, 2]] * len(frame)
    assert "the user field 'uid' has type list<item: int64>; expected one integer or text id per row" in \
        _refused(frame)
    mixed = interactions()
    mixed["sku"] = mixed["sku"].astype(object)
    mixed.loc[0, "sku"] = 7  # an int among strings
    assert "cannot be converted to an Arrow table" in _refused(mixed)
    bad_time = interactions()
    bad_time["ts"] = bad_time["ts"].astype(str)
    bad_time.loc[2, "ts"] = "yesterday"
    assert "row 3: timestamp field 'ts' is 'yesterday'; expected integers" in _refused(bad_time)
    assert "expected columns of equal length" in _refused({"uid": [1, 2, 3], "sku": [1, 2], "ts": [1, 2, 3]})


def test_objects_that_are_not_tables_are_refused():
    assert "expected a file path, a hub dataset id, or in memory a datasets.Dataset" in _refused([(1, 2), (1, 3)])
    streamed = datasets.Dataset.from_pandas(interactions(), preserve_index=False).to_iterable_dataset()
    assert "a streamed dataset has no rows in memory" in _refused(streamed)
    assert "split 'test' not found; the splits are ['other', 'train'] (--data.source.split)" in _refused(
        KINDS["DatasetDict"](interactions()), source=SourceOptions(user_column="uid", item_column="sku", split="test"))
    with pytest.raises(OptionError, match="names a file format, but path is <pandas.DataFrame 49 rows>, a table in"):
        module(interactions(), source=SourceOptions(format="csv", user_column="uid", item_column="sku"))


# ------------------------------------------------------------------------------------------- cache
def test_the_cache_is_keyed_on_the_content(tmp_path):
    cache = CacheOptions(dir=str(tmp_path / "cache"))
    frame = interactions()
    first = module(frame, cache=cache).sequences.info["cache"]
    again = module(KINDS["Dataset"](frame), cache=cache).sequences.info["cache"]  # same rows, another kind
    assert not first["hit"] and again["hit"] and again["key"] == first["key"]
    edited = frame.copy()
    edited.loc[0, "ts"] = -1  # one timestamp: another order
    changed = module(edited, cache=cache)
    assert not changed.sequences.info["cache"]["hit"] and changed.sequences.info["cache"]["key"] != first["key"]
    assert_same_sequences(changed.sequences, module(edited).sequences)


def test_the_digest_reads_only_a_slice_and_sees_every_value():
    from sasrec_lightning.data.memory import content_digest  # (new in 0.4: imported here, the other tests run on 0.3)

    table = pa.table({"user": pa.array([f"u{i}" for i in range(50)]), "item": pa.array(np.arange(50))})
    assert content_digest(table.slice(10, 20)) == content_digest(pa.table(table.slice(10, 20).to_pydict()))
    assert content_digest(pa.concat_tables([table.slice(0, 25), table.slice(25)])) == content_digest(table)
    assert content_digest(table.slice(0, 25)) != content_digest(table.slice(25))
    edited = table.set_column(0, "user", pa.array([f"u{i}" for i in range(49)] + ["u0"]))
    assert content_digest(edited) != content_digest(table)
    with_null = pa.table({"rating": pa.array([1.0, None, 3.0])})
    assert content_digest(with_null) != content_digest(pa.table({"rating": pa.array([1.0, 2.0, 3.0])}))


# ------------------------------------------------------------------------------------- checkpoints
def test_the_hyper_parameters_hold_a_description_not_the_table():
    from sasrec_lightning.data.memory import describe

    frame = interactions()
    data = module(frame)
    assert data.path is frame
    assert data.hparams["path"] == data.hparams_initial["path"] == "<pandas.DataFrame 49 rows>"
    assert describe(KINDS["DatasetDict"](frame)) == "<datasets.DatasetDict['train'] 49 rows>"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of a tiny model trained in Python on a DataFrame, and the same rows as a CSV file."""
    root = tmp_path_factory.mktemp("in_memory_run")
    frame = interactions()
    frame.to_csv(root / "log.csv", index=False)
    data = module(frame, loader={"batch_size": 4, "num_eval_negatives": 3})
    model = SASRecModule(num_items=data.num_items, max_len=8,
                         encoder=EncoderOptions(hidden_size=8, num_blocks=1, num_heads=1))
    trainer = L.Trainer(max_epochs=1, logger=False, default_root_dir=root, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1)
    trainer.fit(model, data)
    return root, Path(trainer.checkpoint_callback.best_model_path)


def test_a_checkpoint_loads_weights_only_and_predict_asks_for_the_data_again(trained, tmp_path, capsys,
                                                                             monkeypatch):
    root, checkpoint = trained
    saved = torch.load(checkpoint, weights_only=True)["datamodule_hyper_parameters"]
    assert saved["path"] == "<pandas.DataFrame 49 rows>"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sasrec-lightning", "predict", "--ckpt_path", str(checkpoint),
                                      "--trainer.enable_progress_bar", "false"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert lines == [lines[-1]] and err.rstrip("\n").endswith(lines[-1])
    assert lines[0].startswith("error: data path '<pandas.DataFrame 49 rows>' is not a file but the record of a "
                               "table that was in memory in training") and "--data.path FILE" in lines[0]
    assert not (tmp_path / "predictions.parquet").exists()
    # given again (as a file), it predicts with the run's columns and filters
    main(["predict", "--ckpt_path", str(checkpoint), "--data.path", str(root / "log.csv"),
          "--prediction.output", str(tmp_path / "recs.parquet"), "--trainer.enable_progress_bar", "false"])
    assert pd.read_parquet(tmp_path / "recs.parquet")["user"].nunique() == 8


def test_the_cli_still_takes_a_path_string(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data.help", "SASRecDataModule"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--data.path PATH" in help_text and "From Python also a table in memory" in help_text
    assert "(type: str | null, default: null)" in help_text and "--data.path.help" not in help_text


def test_the_docs_example_runs(tmp_path, monkeypatch, capsys):
    page = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    match = re.search(r"<!-- datasets-example: in_memory.py -->\s*```python\n(.*?)```", page, re.S)
    assert match, "docs/datasets.md lost its in-memory example"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in_memory.py").write_text(match.group(1))
    runpy.run_path(str(tmp_path / "in_memory.py"), run_name="__main__")
    assert "{'users': 20, 'items': 8," in capsys.readouterr().out  # the toy log, not the synthetic data
