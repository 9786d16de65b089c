"""Item tables (issue 26, data side): reading, encoding, alignment, cold-start items, cache, and bad tables."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import sys

import datasets
import huggingface_hub.constants
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import REPO, assert_one_error_line
from feature_helpers import make_item_features
from sasrec_lightning import SASRecDataModule
from sasrec_lightning.cli.app import main
from sasrec_lightning.data import feature_table
from sasrec_lightning.data.options import CacheOptions, FeatureOptions, PreprocessingOptions, SourceOptions
from sasrec_lightning.errors import DataError, OptionError

datasets.disable_progress_bars()

# 6 users, 5 interactions each, on items 1..8 (every item has an interaction); timestamps in file order.
INTERACTIONS = [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5),
                (2, 2), (2, 3), (2, 6), (2, 7), (2, 8),
                (3, 5), (3, 1), (3, 2), (3, 3), (3, 6),
                (4, 6), (4, 4), (4, 2), (4, 8), (4, 1),
                (5, 1), (5, 6), (5, 7), (5, 3), (5, 2),
                (6, 3), (6, 8), (6, 7), (6, 5), (6, 4)]

# Items 1..6 and 9, 10 (cold: no interaction); items 7 and 8 have no row.
ITEMS_CSV = """item,genre,tags,price,emb
1,Drama,a|b,10,0.5 1.5
2,Action,b,,"[1.0, 2.0]"
3,Action,c|a|b,30,
4,,,20,0 0
5,Comedy,b|b,NaN,1 1
6,Drama,a,40,2 2
10,Action,c,50,3 3
9,Comedy,,,
"""
KINDS = dict(categorical=["genre"], multi=["tags"], numeric=["price"], vector=["emb"])


def _interactions(tmp_path, text_ids: bool = False):
    """The log as CSV; ``text_ids``: item 1 written ``01``, so every item id is read as text."""
    path = tmp_path / "log.csv"
    path.write_text("user,item,ts\n" + "".join(f"{user},{'01' if text_ids and item == 1 else item},{position}\n"
                                               for position, (user, item) in enumerate(INTERACTIONS)))
    return path


def _module(tmp_path, features=None, cache=True, **kwargs) -> SASRecDataModule:
    return SASRecDataModule(
        path=str(kwargs.pop("path", None) or _interactions(tmp_path)), max_len=5, print_statistics=False,
        source=SourceOptions(timestamp_column="ts"),
        preprocessing=PreprocessingOptions(min_user_interactions=0, min_item_interactions=0),
        cache=CacheOptions(dir=str(tmp_path / "cache"), use=cache), features=features or FeatureOptions(), **kwargs)


def _items(tmp_path, content: str = ITEMS_CSV, name: str = "items.csv"):
    path = tmp_path / name
    path.write_text(content)
    return path


def _features(tmp_path, **kwargs) -> FeatureOptions:
    options = {**KINDS, **kwargs}
    if "path" not in options:
        path = tmp_path / "items.csv"
        options["path"] = str(path if path.exists() else _items(tmp_path))  # written once: one identity
    return FeatureOptions(**options)


# ----------------------------------------------------------------------------------- encoding
def test_every_kind_is_encoded_and_aligned_with_the_internal_ids(tmp_path):
    module = _module(tmp_path, _features(tmp_path))
    features = module.item_features
    assert module.item_ids().tolist()[1:] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # cold 9, 10 after the 8 items
    assert module.num_items == 10 and features.num_items == 10
    assert features.vocabularies == {"genre": ["<unknown>", "Action", "Comedy", "Drama"],
                                     "tags": ["<unknown>", "a", "b", "c"]}
    #                    pad 1  2  3  4  5  6  7  8  9  10
    assert features.values["genre"].tolist() == [0, 3, 1, 1, 0, 2, 3, 0, 0, 2, 1]
    assert features.values["tags"].tolist() == [[0, 0, 0], [1, 2, 0], [2, 0, 0], [3, 1, 2], [0, 0, 0], [2, 2, 0],
                                                [1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [3, 0, 0]]
    prices = np.array([10, 30, 20, 40, 50], dtype=np.float64)  # items 1, 3, 4, 6, 10; the others missing
    mean, std = prices.mean(), prices.std()
    assert features.scaling == {"price": (mean, std)}
    price = features.values["price"]
    assert np.isnan(price[[0, 2, 5, 7, 8, 9]]).all()
    np.testing.assert_array_equal(price[[1, 3, 4, 6, 10]], ((prices - mean) / std).astype(np.float32))
    emb = features.values["emb"]
    assert emb.shape == (11, 2) and emb.dtype == np.float32
    np.testing.assert_array_equal(emb[[1, 2, 4, 5, 6, 10]], [[0.5, 1.5], [1, 2], [0, 0], [1, 1], [2, 2], [3, 3]])
    assert np.isnan(emb[[0, 3, 7, 8, 9]]).all()
    assert features.has_row.tolist() == [False, True, True, True, True, True, True, False, False, True, True]
    assert features.spec() == {"columns": [
        {"name": "genre", "kind": "categorical", "size": 4, "width": 1},
        {"name": "tags", "kind": "multi", "size": 4, "width": 3},
        {"name": "price", "kind": "numeric", "size": 1, "width": 1},
        {"name": "emb", "kind": "vector", "size": 2, "width": 2}]}
    assert module.item_feature_spec == features.spec()
    assert features.info["cold_items"] == 2 and features.info["items_without_row"] == 2


def test_cold_items_extend_the_catalogue_but_not_the_sequences(tmp_path):
    plain, featured = _module(tmp_path), _module(tmp_path, _features(tmp_path))
    assert featured.sequences.items.tolist() == plain.sequences.items.tolist()
    assert featured.sequences.offsets.tolist() == plain.sequences.offsets.tolist()
    assert featured.sequences.info["cache"]["key"] == plain.sequences.info["cache"]["key"]  # the same entry
    assert plain.num_items == 8 and featured.num_items == 10
    assert featured.item_popularity().tolist()[9:] == [0, 0]  # no interaction
    assert featured.statistics == {**plain.statistics, "cold_start_items": 2}


def test_cold_items_are_sorted_by_original_id_and_refused_when_not_wanted(tmp_path):
    table = "item,genre\n30,x\n1,y\n12,z\n"
    module = _module(tmp_path, FeatureOptions(path=str(_items(tmp_path, table)), categorical=["genre"]))
    assert module.item_ids().tolist()[9:] == [12, 30]  # numerically, not as text ("12" < "30" either way)
    assert module.item_features.values["genre"].tolist()[9:] == [3, 1]  # z, x (vocabulary x, y, z)
    strict = FeatureOptions(path=str(_items(tmp_path, table)), categorical=["genre"], add_cold_items=False)
    with pytest.raises(DataError, match=r"2 item ids in column 'item' have no interaction \(e.g. \[12, 30\], "
                                        r"first on line 2\).*add_cold_items true"):
        _module(tmp_path, strict).item_features  # noqa: B018


def test_multi_values_as_a_list_column_equal_the_delimited_text(tmp_path):
    text = _module(tmp_path, FeatureOptions(path=str(_items(tmp_path)), multi=["tags"])).item_features
    table = pa.table({"item": [1, 2, 3, 4, 5, 6, 10, 9],
                      "tags": [["a", "b"], ["b"], ["c", "a", "b"], None, ["b", "b"], ["a"], ["c"], []]})
    pq.write_table(table, tmp_path / "items.parquet")
    lists = _module(tmp_path, FeatureOptions(path=str(tmp_path / "items.parquet"), multi=["tags"])).item_features
    assert lists.values["tags"].tolist() == text.values["tags"].tolist()
    assert lists.vocabularies == text.vocabularies


def test_multi_values_beyond_max_values_are_cut_with_one_warning(tmp_path):
    options = _features(tmp_path, max_values=2)
    with pytest.warns(UserWarning, match=r"multi column 'tags' has more than --data.features.max_values 2 values "
                                         r"for 1 items \(at most 3\)") as caught:
        features = _module(tmp_path, options).item_features
    assert sum("max_values" in str(warning.message) for warning in caught) == 1
    assert features.values["tags"][3].tolist() == [3, 1]  # c|a|b: the first two


def test_numeric_empty_nan_and_null_are_missing(tmp_path):
    table = "item,price\n1,NaN\n2,\n3,nan\n4,2\n5,4\n6,NA\n"
    features = _module(tmp_path, FeatureOptions(path=str(_items(tmp_path, table)), numeric=["price"])).item_features
    price = features.values["price"]
    assert np.isnan(price[[1, 2, 3, 6]]).all()
    assert price[4] == -1.0 and price[5] == 1.0  # (2 - 3) / 1, (4 - 3) / 1
    assert features.scaling["price"] == (3.0, 1.0)


def test_a_constant_numeric_column_is_centred_not_divided_by_zero(tmp_path):
    table = "item,price\n1,5\n2,5\n"
    features = _module(tmp_path, FeatureOptions(path=str(_items(tmp_path, table)), numeric=["price"])).item_features
    assert features.values["price"][1:3].tolist() == [0.0, 0.0] and features.scaling["price"] == (5.0, 1.0)


def test_text_interaction_ids_match_integer_table_ids(tmp_path):
    table = "item,genre\n2,x\n1,y\n99,z\n"  # read as integers (every id plain), compared as text
    module = _module(tmp_path, FeatureOptions(path=str(_items(tmp_path, table)), categorical=["genre"]),
                     path=_interactions(tmp_path, text_ids=True))
    ids = module.item_ids().tolist()
    assert ids[1:] == ["01", "2", "3", "4", "5", "6", "7", "8", "1", "99"]  # "1" is not "01": a cold item
    assert module.item_features.values["genre"].tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 0, 2, 3]


def test_a_table_in_memory_gives_what_its_file_gives(tmp_path):
    from_file = _module(tmp_path, _features(tmp_path)).item_features
    frame = pd.read_csv(tmp_path / "items.csv", dtype=str, keep_default_na=False)  # the file's cells as text
    frame["item"] = frame["item"].astype(int)
    frame["price"] = pd.to_numeric(frame["price"], errors="coerce")  # empty, NaN: missing
    frame["emb"] = [None if not cell else [float(x) for x in cell.strip("[]").replace(",", " ").split()]
                    for cell in frame["emb"]]
    frame["tags"] = [[value for value in cell.split("|") if value] if cell else None for cell in frame["tags"]]
    in_memory = _module(tmp_path, FeatureOptions(path=frame, **KINDS))
    features = in_memory.item_features
    for name, values in from_file.values.items():
        np.testing.assert_array_equal(features.values[name], values)
    assert features.vocabularies == from_file.vocabularies and features.scaling == from_file.scaling
    assert in_memory.hparams["features"]["path"] == "<pandas.DataFrame 8 rows>"  # a description, never the table
    assert in_memory.hparams_initial["features"]["path"] == "<pandas.DataFrame 8 rows>"  # what loggers are given
    assert _module(tmp_path, FeatureOptions(path=frame, **KINDS)).item_features.info["cache"]["hit"] is True


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "disk", "tsv", "hub folder"])
def test_every_format_gives_what_the_csv_gives(tmp_path, kind):
    rows = {"item": [3, 1, 9], "genre": ["x", None, "y"], "price": [1.0, None, 3.0]}
    csv = _items(tmp_path, "item,genre,price\n3,x,1\n1,,\n9,y,3\n")
    if kind == "jsonl":
        path = _items(tmp_path, _jsonl([dict(zip(rows, values, strict=True)) for values in zip(*rows.values(),
                                                                                              strict=True)]),
                      "items.jsonl")
    elif kind == "parquet":
        path = tmp_path / "items.parquet"
        pq.write_table(pa.table(rows), path)
    elif kind == "tsv":
        path = _items(tmp_path, "item\tgenre\tprice\n3\tx\t1\n1\t\t\n9\ty\t3\n", "items.tsv")
    elif kind == "hub folder":  # a folder of data files read as a hub dataset (offline)
        path = tmp_path / "hub"
        path.mkdir()
        pq.write_table(pa.table(rows), path / "items.parquet")
    else:
        path = tmp_path / "items_folder"
        datasets.DatasetDict({"catalogue": datasets.Dataset.from_dict(rows)}).save_to_disk(str(path))
    split = "catalogue" if kind == "disk" else "train"
    expected = _module(tmp_path, FeatureOptions(path=str(csv), categorical=["genre"], numeric=["price"])).item_features
    features = _module(tmp_path, FeatureOptions(path=str(path), categorical=["genre"], numeric=["price"], split=split,
                                                format="hub" if kind == "hub folder" else None)).item_features
    for name, values in expected.values.items():
        np.testing.assert_array_equal(features.values[name], values)
    assert features.has_row.tolist() == expected.has_row.tolist() and features.info["cold_items"] == 1


def test_features_cached_beside_the_sequences_are_not_read_again(tmp_path, monkeypatch):
    reads = []
    read = feature_table.read_item_table

    def counted(*args, **kwargs):
        reads.append(args[0])
        return read(*args, **kwargs)

    monkeypatch.setattr(feature_table, "read_item_table", counted)
    first = _module(tmp_path, _features(tmp_path)).item_features
    second = _module(tmp_path, _features(tmp_path)).item_features
    assert len(reads) == 1
    assert first.info["cache"]["hit"] is False and second.info["cache"]["hit"] is True
    assert second.info["cache"]["path"].startswith(str(tmp_path / "cache" / "sequences" / "features"))
    for name, values in first.values.items():
        np.testing.assert_array_equal(second.values[name], values)
    assert second.has_row.tolist() == first.has_row.tolist() and second.spec() == first.spec()
    assert second.state() == first.state() and second.info["cold_item_ids"].tolist() == [9, 10]
    with pytest.warns(UserWarning, match="max_values 1"):
        _module(tmp_path, _features(tmp_path, max_values=1)).item_features  # noqa: B018  (another option: another key)
    (tmp_path / "items.csv").write_text(ITEMS_CSV.replace("Drama", "Horror"))  # another content: another key
    assert _module(tmp_path, _features(tmp_path)).item_features.vocabularies["genre"][-1] == "Horror"
    assert len(reads) == 3


def test_without_features_nothing_changes(tmp_path):
    module = _module(tmp_path)
    assert module.item_features is None and module.item_feature_spec is None
    assert module.num_items == 8 and "cold_start_items" not in module.statistics
    assert not (tmp_path / "cache" / "sequences" / "features").exists()
    assert module.hparams["features"] == FeatureOptions().plain()
    assert module._item_table_source() is None


def test_a_bad_table_leaves_no_feature_cache_entry(tmp_path):
    bad = _items(tmp_path, "item,genre,price\n1,x,cheap\n")
    with pytest.raises(DataError):
        _module(tmp_path, FeatureOptions(path=str(bad), numeric=["price"])).item_features  # noqa: B018
    folder = tmp_path / "cache" / "sequences" / "features"
    assert [path.name for path in folder.iterdir()] == [] if folder.exists() else True


def test_statistics_print_the_cold_start_items(tmp_path, capsys):
    module = _module(tmp_path, _features(tmp_path))
    module.print_statistics = True
    module.sequences  # noqa: B018
    out = capsys.readouterr().out
    assert "| 8 |" in out  # the interactions' items in the paper's table
    assert "[sasrec-lightning] item features (cached to" in out
    assert "8 rows of " in out and "2 cold-start items added (items of the table without interactions: ids 9..10)" \
        in out and "2 items of the interactions have no row" in out


def test_the_helper_builds_what_the_data_module_would(tmp_path):
    built = make_item_features(3, categorical={"genre": [1, 2, 0]}, multi={"tags": [[1], [1, 2], []]},
                               numeric={"price": [0.5, None, -0.5]}, vector={"emb": [[1, 2], None, [3, 4]]},
                               has_row=[True, True, False])
    assert built.num_items == 3
    assert built.spec() == {"columns": [{"name": "genre", "kind": "categorical", "size": 3, "width": 1},
                                        {"name": "tags", "kind": "multi", "size": 3, "width": 2},
                                        {"name": "price", "kind": "numeric", "size": 1, "width": 1},
                                        {"name": "emb", "kind": "vector", "size": 2, "width": 2}]}
    assert built.values["tags"].tolist() == [[0, 0], [1, 0], [1, 2], [0, 0]]
    assert math.isnan(built.values["price"][2]) and built.has_row.tolist() == [False, True, True, False]


# ----------------------------------------------------------------------------------- options
OPTION_CASES = {
    "two kinds": (dict(categorical=["genre"], multi=["genre"]),
                  "--data.features: column 'genre' is listed under both --data.features.categorical and "
                  "--data.features.multi"),
    "twice in one kind": (dict(numeric=["price", "price"]), "listed twice under --data.features.numeric"),
    "empty name": (dict(vector=[""]), "--data.features.vector ['']: a column name is empty"),
    "max_values 0": (dict(multi=["tags"], max_values=0), "--data.features.max_values 0: expected an integer >= 1"),
    "empty delimiter": (dict(multi=["tags"], delimiter=""), "--data.features.delimiter '': expected a non-empty"),
    "item column as a feature": (dict(categorical=["item"]), "lists 'item', the item id column"),
    "no column listed": (dict(), "--data.features.path is set, but no column is listed"),
    "interaction format": (dict(categorical=["genre"], format="sasrec"), "--data.features.format 'sasrec': expected "
                                                                         "one of 'csv', 'tsv'"),
    "a string, not a list": (dict(categorical="genre"), "--data.features.categorical 'genre': expected a list"),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_bad_feature_options_name_the_option(case):
    options, message = OPTION_CASES[case]
    with pytest.raises(OptionError) as error:
        FeatureOptions(path="items.csv", **options)
    assert message in str(error.value)


def test_an_empty_table_in_memory_is_an_error(tmp_path):
    empty = pa.table({"item": pa.array([], pa.int64()), "genre": pa.array([], pa.string())})
    with pytest.raises(DataError, match=r"^<pyarrow.Table 0 rows>: the item table has no rows; expected one row per "
                                        r"item with the columns \['item', 'genre'\]$"):
        _module(tmp_path, FeatureOptions(path=empty, categorical=["genre"])).item_features  # noqa: B018


def test_columns_without_a_table_are_an_error(tmp_path):
    with pytest.raises(OptionError, match=r"--data.features lists the columns \['genre'\], but --data.features.path "
                                          "is empty"):
        _module(tmp_path, FeatureOptions(categorical=["genre"])).num_items  # noqa: B018


# ----------------------------------------------------------------------------------- bad tables
def _parquet(table):
    return lambda path: pq.write_table(table, path)


def _jsonl(rows):
    return "".join(json.dumps(row) + "\n" for row in rows)


# name -> (file name or None, content, feature options, fragments of the message). The interactions are
# INTERACTIONS (integer items 1..8).
BAD_TABLES = {
    "listed column not in the table": (
        "items.csv", "item,genre\n1,x\n", dict(categorical=["genre"], multi=["tags"]),
        ["items.csv: item table column(s) 'tags' (--data.features.multi) not found; the columns are ['item', "
         "'genre']"]),
    "item column not in the table": (
        "items.csv", "item_id,genre\n1,x\n", dict(categorical=["genre"]),
        ["column(s) 'item' (--data.features.item_column) not found; the columns are ['item_id', 'genre']"]),
    "item ids that are lists": (
        "items.parquet", _parquet(pa.table({"item": [[1]], "genre": ["x"]})), dict(categorical=["genre"]),
        ["items.parquet: the item field 'item' has type list<", "expected one integer or text id per row, not a "
         "list, a record or raw bytes (point --data.features.item_column at a column of plain ids)"]),
    "duplicate item ids": (
        "items.csv", "item,genre\n1,x\n2,y\n\n1,z\n", dict(categorical=["genre"]),
        ["items.csv, line 2 and line 5: item id 1 (column 'item') appears twice; expected one row per item"]),
    "empty item id": (
        "items.csv", "item,genre\n1,x\n,y\n", dict(categorical=["genre"]),
        ["items.csv, line 3: the item field 'item' is empty (missing); expected an id on every row"]),
    "null item id (JSON)": (
        "items.jsonl", _jsonl([{"item": 1, "genre": "x"}, {"item": None, "genre": "y"}]), dict(categorical=["genre"]),
        ["items.jsonl, line 2: the item field 'item' is null (missing)"]),
    "vectors of different lengths": (
        "items.csv", "item,emb\n1,0.1 0.2\n2,0.3 0.4 0.5\n", dict(vector=["emb"]),
        ["items.csv, line 3: vector column 'emb' has 3 numbers, but line 2 has 2; expected every vector the same "
         "length"]),
    "non-numeric number": (
        "items.csv", "item,price\n1,9.5\n2,cheap\n", dict(numeric=["price"]),
        ["items.csv, line 3: numeric column 'price' is 'cheap', not a number"]),
    "infinite number": (
        "items.csv", "item,price\n1,inf\n", dict(numeric=["price"]),
        ["items.csv, line 2: numeric column 'price' is inf, not a finite number"]),
    "non-numeric vector element": (
        "items.csv", "item,emb\n1,0.1 0.2\n2,0.3 x\n", dict(vector=["emb"]),
        ["items.csv, line 3: vector column 'emb' has the element 'x', not a number"]),
    "vector of text (JSON)": (
        "items.jsonl", _jsonl([{"item": 1, "emb": ["a", "b"]}]), dict(vector=["emb"]),
        ["items.jsonl, line 1: vector column 'emb' has the element 'a', not a number"]),
    "record in a categorical column": (
        "items.jsonl", _jsonl([{"item": 1, "genre": {"main": "x"}}]), dict(categorical=["genre"]),
        ["items.jsonl: categorical column 'genre' (--data.features.categorical) has type struct<main: string>; "
         "expected one value per row"]),
    "list in a categorical column": (
        "items.parquet", _parquet(pa.table({"item": [1], "genre": [["a", "b"]]})), dict(categorical=["genre"]),
        ["items.parquet: categorical column 'genre' (--data.features.categorical) has type list<",
         "expected one value per row (text, an integer or a boolean); a list of "
         "values per item goes under --data.features.multi"]),
    "number under multi": (
        "items.jsonl", _jsonl([{"item": 1, "tags": 3}]), dict(multi=["tags"]),
        ["multi column 'tags' (--data.features.multi) has type int64; expected a list of values per row, or text "
         "with the values separated by --data.features.delimiter '|'"]),
    "vector column without a vector": (
        "items.csv", "item,emb\n1,\n2,\n", dict(vector=["emb"]),
        ["items.csv: vector column 'emb' has no vector on any row, so its length is unknown"]),
    "only a header": (
        "items.csv", "item,genre\n", dict(categorical=["genre"]),
        ["items.csv: only a header line, no data rows"]),
    "Parquet without rows": (
        "items.parquet", _parquet(pa.table({"item": pa.array([], pa.int64()), "genre": pa.array([], pa.string())})),
        dict(categorical=["genre"]), ["items.parquet: the Parquet file has no rows"]),
    "empty file": (
        "items.csv", "", dict(categorical=["genre"]),
        ["item table ", "items.csv' is empty; expected one row per item with the columns ['item', 'genre'] (csv "
         "format)"]),
    "missing file": (
        None, None, dict(categorical=["genre"]),
        ["item table", "absent.csv' does not exist; point --data.features.path at an existing file"]),
    "interaction format": (
        "items.txt", "1 2\n", dict(categorical=["genre"]),
        ["has the sasrec format, which holds interactions, not item attributes; expected one of ['csv', 'tsv', "
         "'parquet', 'json', 'disk', 'hub'] (set --data.features.format"]),
    "unknown ids with add_cold_items false": (
        "items.csv", "item,genre\n1,x\n41,y\n40,z\n", dict(categorical=["genre"], add_cold_items=False),
        ["items.csv: 2 item ids in column 'item' have no interaction (e.g. [40, 41], first on line 3)",
         "--data.features.add_cold_items true"]),
    "text ids against integer interactions": (
        "items.csv", "item,genre\n1,x\nB00X,y\n", dict(categorical=["genre"]),
        ["items.csv, line 3: item id 'B00X' in column 'item' is not an integer (1 of the table's 2 ids are not), "
         "but the interactions' item ids are integers (e.g. [1, 2, 3])"]),
    "ids with leading zeros against integer interactions": (
        "items.csv", "item,genre\n0001,x\n", dict(categorical=["genre"]),
        ["items.csv, line 2: item id '0001' in column 'item' is not an integer"]),
    "wrong number of fields": (
        "items.csv", "item,genre\n1,x,extra\n", dict(categorical=["genre"]),
        ["items.csv, line 2: 3 fields, but the header line has 2"]),
    "a named pipe": (
        "items.csv", lambda path: os.mkfifo(path), dict(categorical=["genre"]),
        ["data path ", "items.csv' is a named pipe (FIFO), not a regular file", "pass that with --data.features.path"]),
    "hub id while offline": (
        "hub:nobody/no-such-items", None, dict(categorical=["genre"], format="hub"),
        ["hub dataset 'nobody/no-such-items' (name=None, split='train') could not be loaded (offline mode: "
         "HF_HUB_OFFLINE=1)", "for a local file check --data.features.path"]),
    "JSON types that change": (
        "items.jsonl", _jsonl([{"item": 1, "genre": "x"}, {"item": 2, "genre": ["y"]}]), dict(categorical=["genre"]),
        ["items.jsonl, line 2: field 'genre' is a list (['y']), but on line 1 it is a string"]),
}


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _bad_table(tmp_path, case):
    name, content, options, fragments = BAD_TABLES[case]
    if name and name.startswith("hub:"):
        return name.removeprefix("hub:"), options, fragments
    path = tmp_path / (name or "absent.csv")
    if callable(content):
        content(path)
    elif content is not None:
        path.write_text(content)
    return path, options, fragments


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_item_table_is_one_data_error(tmp_path, offline, case):
    path, options, fragments = _bad_table(tmp_path, case)
    module = _module(tmp_path, FeatureOptions(path=str(path), **options))
    with pytest.raises(DataError) as error:
        module.item_features  # noqa: B018
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "\n" not in message and "--data.source." not in message and "--data.path" not in message
    folder = tmp_path / "cache" / "sequences" / "features"
    assert not folder.exists() or [path.name for path in folder.iterdir()] == []  # nothing cached, no lock left


def _flag(value) -> str:
    return "[" + ", ".join(value) + "]" if isinstance(value, list) else str(value).lower() \
        if isinstance(value, bool) else str(value)


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_item_table_through_the_cli_exits_2_with_one_line(tmp_path, monkeypatch, capsys, offline, case):
    path, options, fragments = _bad_table(tmp_path, case)
    argv = ["sasrec-lightning", "validate", "--seed_everything", "0", "--model", "sasrec_lightning.SASRecModule",
            "--model.encoder.hidden_size", "8", "--model.encoder.num_blocks", "1", "--model.encoder.num_heads", "1",
            "--data.path", str(_interactions(tmp_path)), "--data.max_len", "5", "--data.source.timestamp_column", "ts",
            "--data.preprocessing.min_user_interactions", "0", "--data.preprocessing.min_item_interactions", "0",
            "--data.cache.dir", str(tmp_path / "cache"), "--data.features.path", str(path),
            "--trainer.logger", "false", "--trainer.accelerator", "cpu"]
    for key, value in options.items():
        argv += [f"--data.features.{key}", _flag(value)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    assert_one_error_line(capsys.readouterr().err, fragments)


def test_the_worked_example_of_docs_features_md(tmp_path, monkeypatch, capsys):
    """The example's files, config and printed lines are what the package reads and prints."""
    doc = (REPO / "docs" / "features.md").read_text()
    example = doc[doc.index("### A worked example"):]
    blocks = re.findall(r"```(\w+)\n(.*?)```", example, re.S)
    files = [text for language, text in blocks if language == "csv"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "interactions.csv").write_text(files[0])
    (tmp_path / "movies.csv").write_text(files[1])
    config = next(text for language, text in blocks if language == "yaml")
    (tmp_path / "features.yaml").write_text(config.replace("max_epochs: 1", "max_epochs: 1, fast_dev_run: true"))
    monkeypatch.setattr(sys, "argv", ["sasrec-lightning", "fit", "-c", "features.yaml", "--test_after_fit", "false",
                                      "--trainer.enable_progress_bar", "false"])
    main()
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(("[sasrec", "|"))]
    quoted = [text for language, text in blocks if language == "text"][0].splitlines()
    key = re.compile(r"(sequences(/features)?)/[0-9a-f]{32}")
    assert [key.sub(r"\1/<key>", line) for line in printed] == quoted
    code = next(text for language, text in blocks if language == "python")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "docs/features.md", "exec"), {})  # noqa: S102  (the doc's own example)
    expected = [line.split("  # ", 1)[1] for line in code.splitlines() if line.startswith("print(")]
    assert out.getvalue().splitlines() == expected
