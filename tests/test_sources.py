"""Every supported raw format, built tiny in ``tmp_path``: sequences, id maps and statistics exactly."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sasrec_lightning import SASRecDataModule
from sasrec_lightning.data.locations import detect_format
from sasrec_lightning.data.options import CacheOptions, PreprocessingOptions, SourceOptions
from sasrec_lightning.data.sources import load_interactions

datasets.disable_progress_bars()
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


#: Every user and item kept (the raw-log default drops users and items with < 5 actions).
UNFILTERED = PreprocessingOptions(min_user_interactions=0, min_item_interactions=0)


def _module(path, tmp_path, **groups) -> SASRecDataModule:
    return SASRecDataModule(path=str(path), print_statistics=False, cache=CacheOptions(dir=str(tmp_path / "cache")),
                            **groups)


def _sequences(data) -> dict:
    """Original user id -> list of original item ids, oldest first."""
    return {data.user_ids[u]: [data.item_ids[i] for i in data.sequence(u)] for u in range(data.num_users)}


def test_detect_format(tmp_path):
    names = {"a.txt": "sasrec", "a.csv.gz": "csv", "a.tsv": "tsv", "a.parquet": "parquet",
             "steam_reviews.json.gz": "json", "a.jsonl": "json", "ratings.dat": "movielens", "ml-1m.zip": "movielens"}
    for name, format in names.items():
        assert detect_format(str(tmp_path / name)) == format
    assert detect_format("someone/some-dataset") == "hub"
    assert detect_format(str(tmp_path)) == "disk"


def test_sasrec_text_keeps_ids_order_and_is_not_filtered(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("1 3\n1 1\n\n2 2\n1 2\n2 3 \n")  # blank line and trailing space are fine
    data = _module(path, tmp_path).sequences
    assert data.user_ids.tolist() == [1, 2]
    assert data.item_ids[1:].tolist() == [1, 2, 3]  # ids 1..N are kept
    assert data.items.tolist() == [3, 1, 2, 2, 3]  # file order is the chronological order
    assert data.offsets.tolist() == [0, 3, 5]
    assert data.timestamps is None


def _steam_lines() -> list[str]:
    rows = [
        {"username": "Alice", "product_id": "730", "date": "2017-12-18", "text": "it's fine", "hours": 1.5},
        {"username": "bob", "product_id": "440", "date": "2017-01-02", "text": 'say "hi"', "early_access": False},
        {"username": "Alice", "product_id": "440", "date": "2017-12-17", "text": "ok"},
        {"username": "bob", "product_id": "730", "date": "2017-01-02", "text": "tie, later in file"},
        {"username": "bob", "product_id": "10", "date": "2016-05-30", "text": "first"},
    ]
    return [repr(row) for row in rows]  # Python literals: single quotes, False, mixed quoting


def test_steam_literal_dicts_gzip(tmp_path):
    path = tmp_path / "steam_reviews.json.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(_steam_lines()) + "\n")
    module = _module(path, tmp_path, source=SourceOptions(user_column="username", item_column="product_id",
                                                          timestamp_column="date"), preprocessing=UNFILTERED)
    data = module.sequences
    assert data.user_ids.tolist() == ["Alice", "bob"]
    assert data.item_ids[1:].tolist() == ["10", "440", "730"]  # sorted original ids
    assert _sequences(data) == {"Alice": ["440", "730"], "bob": ["10", "440", "730"]}  # date tie keeps file order
    assert data.timestamps.tolist() == [1513468800, 1513555200, 1464566400, 1483315200, 1483315200]
    assert module.statistics == {"users": 2, "items": 3, "actions": 5, "avg_actions_per_user": 2.5,
                                 "avg_actions_per_item": 5 / 3}


def test_steam_literal_dicts_in_worker_processes(tmp_path):
    path = tmp_path / "steam.json"
    path.write_text("\n".join(_steam_lines() * 3) + "\n")
    table = load_interactions(str(path), None, "username", "product_id", "date", cache_dir=str(tmp_path / "hf"),
                              num_proc=2)
    assert table.column("user").to_pylist() == ["Alice", "bob", "Alice", "bob", "bob"] * 3
    assert table.column("line").to_pylist() == list(range(1, 16))


AMAZON = [
    {"reviewerID": "A2", "asin": "B001", "overall": 5.0, "unixReviewTime": 1400000000},
    {"reviewerID": "A1", "asin": "B002", "overall": 2.0, "unixReviewTime": 1300000000, "style": {"Size:": " L"}},
    {"reviewerID": "A1", "asin": "B001", "overall": 4.0, "unixReviewTime": 1200000000},
    {"reviewerID": "A2", "asin": "B002", "overall": 4.0, "unixReviewTime": 1100000000, "vote": "2"},
    {"reviewerID": "A3", "asin": "B002", "overall": 1.0, "unixReviewTime": 1000000000},
]


@pytest.mark.parametrize("variant", ["json", "literal"])
def test_amazon_reviews_both_variants(tmp_path, variant):
    path = tmp_path / "reviews_Beauty.json.gz"
    dump = json.dumps if variant == "json" else repr
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(dump(row) for row in AMAZON) + "\n")
    source = SourceOptions(user_column="reviewerID", item_column="asin", timestamp_column="unixReviewTime",
                           rating_column="overall")
    module = _module(path, tmp_path, source=source,
                     preprocessing=PreprocessingOptions(min_user_interactions=2, min_item_interactions=0))
    data = module.sequences
    assert _sequences(data) == {"A1": ["B001", "B002"], "A2": ["B002", "B001"]}  # A3 (1 review) dropped
    assert data.timestamps.tolist() == [1200000000, 1300000000, 1100000000, 1400000000]
    assert data.info["raw"] == {"actions": 5, "users": 3, "items": 2, "rows_read": 5}
    positive = _module(path, tmp_path, source=source, preprocessing=PreprocessingOptions(
        min_rating=4, min_user_interactions=0, min_item_interactions=0)).sequences
    assert _sequences(positive) == {"A1": ["B001"], "A2": ["B002", "B001"]}


def _ratings_dat() -> str:
    return "1::1193::5::978300760\n1::661::3::978302109\n1::914::3::978301968\n2::1193::4::978298413\n"


def test_movielens_ratings_dat_and_zip(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text(_ratings_dat())
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("ml-1m/movies.dat", "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n")
        handle.writestr("ml-1m/ratings.dat", _ratings_dat())
    for source in (path, archive):
        data = _module(source, tmp_path, preprocessing=UNFILTERED).sequences
        assert _sequences(data) == {1: [1193, 914, 661], 2: [1193]}
        assert data.item_ids[1:].tolist() == [661, 914, 1193]
        assert data.items.tolist() == [3, 2, 1, 3]
        assert data.timestamps.tolist() == [978300760, 978301968, 978302109, 978298413]
    liked = _module(path, tmp_path, preprocessing=PreprocessingOptions(
        min_rating=4, min_user_interactions=0, min_item_interactions=0)).sequences
    assert _sequences(liked) == {1: [1193], 2: [1193]}


def _generic_table() -> pa.Table:
    return pa.table({
        "uid": ["u2", "u1", "u2", "u1", "u2"],
        "iid": [30, 10, 20, 30, 10],
        "ts": [5, 9, 1, 2, 3],
        "extra": ["x"] * 5,
    })


def _expected_generic(data):
    assert _sequences(data) == {"u1": [30, 10], "u2": [20, 10, 30]}
    assert data.items.tolist() == [3, 1, 2, 1, 3]


@pytest.mark.parametrize("kind", ["csv", "tsv", "parquet", "jsonl", "disk"])
def test_generic_sources(tmp_path, kind):
    table = _generic_table()
    if kind in ("csv", "tsv"):
        sep = "," if kind == "csv" else "\t"
        path = tmp_path / f"log.{kind}"
        rows = zip(*table.to_pydict().values(), strict=True)
        path.write_text("\n".join([sep.join(table.column_names)] + [sep.join(map(str, row)) for row in rows]) + "\n")
    elif kind == "parquet":
        path = tmp_path / "log.parquet"
        pq.write_table(table, path)
    elif kind == "jsonl":
        path = tmp_path / "log.jsonl"
        path.write_text("\n".join(json.dumps(row) for row in table.to_pylist()) + "\n")
    else:
        path = tmp_path / "saved"
        datasets.DatasetDict({"train": datasets.Dataset(table)}).save_to_disk(str(path))
    data = _module(path, tmp_path, source=SourceOptions(user_column="uid", item_column="iid", timestamp_column="ts"),
                   preprocessing=UNFILTERED).sequences
    _expected_generic(data)


def test_iso_datetime_timestamps(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item,when\na,1,2020-01-02 10:00:00\na,2,2020-01-01\nb,1,2020-01-01T00:00:05Z\n")
    data = _module(path, tmp_path, source=SourceOptions(timestamp_column="when"), preprocessing=UNFILTERED).sequences
    assert _sequences(data) == {"a": [2, 1], "b": [1]}
    assert data.timestamps.tolist() == [1577836800, 1577959200, 1577836805]


def test_steam_config_loads_a_local_file(tmp_path):
    """configs/steam.yaml's data section, pointed at a tiny local file with --data.path."""
    import yaml

    from sasrec_lightning.cli.app import cli_main

    path = tmp_path / "steam_reviews.json.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(_steam_lines()) + "\n")
    config_path = str(CONFIGS / "steam.yaml")
    with open(config_path) as handle:
        config = yaml.safe_load(handle)["data"]["init_args"]
    assert config["source"]["url"].endswith("steam_reviews.json.gz")
    cli = cli_main(["-c", config_path, "--data.path", str(path), "--data.preprocessing.min_user_interactions", "0",
                    "--data.preprocessing.min_item_interactions", "0", "--data.cache.dir", str(tmp_path / "cache")],
                   run=False)
    assert cli.datamodule.num_items == 3
    assert cli.model.hparams.num_items == 3
    assert np.array_equal(cli.datamodule.sequences.offsets, [0, 2, 5])


TRICKY_LINES = [
    "{'username': 'u', 'date': '2017-12-17', 'text': 'None of it: True, False', 'early_access': False, 'x': None}",
    "{'a': 'it\\'s', 'b': \"say 'hi'\"}",
    "{'a': b'x'}", "{'a': (1, 2)}", "{'a': +1}", "{'a': 0x1f}", "{1: 'a'}", "{'a': 'x' 'y'}", "{'a': {1, 2}}",
    "{'a': [1, 2.5, -3e-05, {'b': None}], 'c': 'tab\there'}", "{'TrueName': 'True'}", "{'a': 12345678901234567890}",
    "{'a': 1.0, 'b': -0.0}", "{'a': 'é ü 中'}", "{'a': ''}", "{'a': 1,}", "{'a': 'x\\ny'}", "['a', 1]",
]


@pytest.mark.parametrize("line", TRICKY_LINES)
def test_literal_fast_path_equals_literal_eval(line):
    import ast

    from sasrec_lightning.data.formats import literal_eval_line

    expected = ast.literal_eval(line)
    assert repr(literal_eval_line(line)) == repr(expected)


@pytest.mark.parametrize("line", ["{'a': true}", "{'a': NaN}", "{'a': __import__('os')}", "{'a': x}"])
def test_literal_parser_rejects_what_literal_eval_rejects(line):
    from sasrec_lightning.data.formats import literal_eval_line

    with pytest.raises((ValueError, SyntaxError)):
        literal_eval_line(line)


def test_literal_fast_path_fuzz_against_literal_eval():
    """Random nested values with quotes, backslashes, newlines, unicode: repr -> parse == literal_eval."""
    import ast
    import random

    from sasrec_lightning.data.formats import literal_eval_line

    rng = random.Random(0)
    alphabet = ["a", " ", "'", '"', "\\", "\n", "\t", "é", "中", "\x00", "😀", "True", "None", ":", ",", "{", "]", "#"]

    def text():
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))

    def value(depth=0):
        kind = rng.randint(0, 7 if depth < 2 else 4)
        if kind == 0:
            return text()
        if kind == 1:
            return rng.randint(-10**20, 10**20)
        if kind == 2:
            return rng.choice([0.0, -0.0, 1e-300, 1e300, rng.random()])
        if kind == 3:
            return rng.choice([True, False, None])
        if kind == 4:
            return text()
        if kind == 5:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {text(): value(depth + 1) for _ in range(rng.randint(0, 3))}

    for _ in range(2000):
        line = repr({text(): value() for _ in range(rng.randint(0, 4))})
        assert repr(literal_eval_line(line)) == repr(ast.literal_eval(line)), line


def test_hub_id_passes_name_and_split(tmp_path, monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None, cache_dir=None):
        calls.append((path, name, split, cache_dir))
        return datasets.Dataset(_generic_table())

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    source = SourceOptions(format="hub", name="beauty", split="full", user_column="uid", item_column="iid",
                           timestamp_column="ts")
    module = _module("someone/reviews", tmp_path, source=source, preprocessing=UNFILTERED)
    _expected_generic(module.sequences)
    assert calls == [("someone/reviews", "beauty", "full", str(tmp_path / "cache"))]
    again = _module("someone/reviews", tmp_path, source=source, preprocessing=UNFILTERED)
    assert again.sequences.info["cache"]["hit"] and len(calls) == 1  # cached by (id, name, split)


# --------------------------------------------------------------- ids read as text keep their spelling
@pytest.mark.parametrize("kind", ["csv", "tsv", "txt"])
def test_ids_differing_only_by_leading_zeros_stay_distinct(tmp_path, kind):
    """``007``/``7`` and ``0042``/``42`` are two users and two items, not one (file order = time order)."""
    rows = [("007", "0042"), ("7", "42"), ("007", "42"), ("7", "0042"), ("7", "1")]
    sep = {"csv": ",", "tsv": "\t", "txt": " "}[kind]
    header = [] if kind == "txt" else [sep.join(("user", "item"))]
    path = tmp_path / f"log.{kind}"
    path.write_text("\n".join(header + [sep.join(row) for row in rows]) + "\n")
    data = _module(path, tmp_path, preprocessing=UNFILTERED).sequences
    assert data.user_ids.tolist() == ["007", "7"]
    assert data.item_ids[1:].tolist() == ["0042", "1", "42"]  # text order
    assert _sequences(data) == {"007": ["0042", "42"], "7": ["42", "0042", "1"]}


def test_plain_integer_csv_ids_stay_integers(tmp_path):
    """Without another spelling of a number (no leading zero, no '+'), ids are int64 and sort numerically."""
    path = tmp_path / "log.csv"
    path.write_text("user,item\n10,2\n10,10\n9,1\n-3,0\n")
    data = _module(path, tmp_path, preprocessing=UNFILTERED).sequences
    assert data.user_ids.dtype == np.int64 and data.user_ids.tolist() == [-3, 9, 10]
    assert data.item_ids[1:].tolist() == [0, 1, 2, 10]


def test_csv_id_beyond_int64_is_kept_exactly_as_text(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item\n1,99999999999999999999\n1,99999999999999999998\n")
    data = _module(path, tmp_path, preprocessing=UNFILTERED).sequences
    assert data.item_ids[1:].tolist() == ["99999999999999999998", "99999999999999999999"]


def test_csv_missing_ratings_are_missing_and_spaces_around_ids_ignored(tmp_path):
    """Rating cells NA/empty stay missing values (filtered out by min_rating); ' 7' is the id 7."""
    path = tmp_path / "log.csv"
    path.write_text("user,item,stars\n 7,1,NA\n7 ,2,4\n7,3,\n7,4,5.5\n")
    data = _module(path, tmp_path, source=SourceOptions(rating_column="stars"), preprocessing=PreprocessingOptions(
        min_rating=4, min_user_interactions=0, min_item_interactions=0)).sequences
    assert data.user_ids.tolist() == [7]
    assert _sequences(data) == {7: [2, 4]}


def test_csv_with_a_byte_order_mark(tmp_path):
    """Spreadsheet exports start with a UTF-8 byte-order mark; it is not part of the first column's name."""
    path = tmp_path / "log.csv"
    path.write_bytes(b"\xef\xbb\xbfuser,item\n1,2\n1,3\n")
    data = _module(path, tmp_path, preprocessing=UNFILTERED).sequences
    assert _sequences(data) == {1: [2, 3]}
