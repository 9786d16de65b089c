"""The table of format readers in data/readers.py: defaults per format, and a new format as one entry."""

import pyarrow as pa
import pytest

from sasrec_lightning.data.locations import detect_format
from sasrec_lightning.data.readers import FORMATS, READERS, Reader, default_min_interactions
from sasrec_lightning.data.sources import load_interactions
from sasrec_lightning.errors import DataError


def test_filter_defaults_per_format():
    assert default_min_interactions("sasrec") == 0  # the SASRec text files are already 5-core
    assert {format: default_min_interactions(format) for format in READERS if format != "sasrec"} == dict.fromkeys(
        [format for format in READERS if format != "sasrec"], 5)


def test_format_columns_override_the_options(tmp_path):
    path = tmp_path / "ratings.dat"
    path.write_text("1::10::5::978300760\n2::20::3::978300761\n")
    table = load_interactions(str(path), user_column="uid", item_column="iid")  # ignored: movielens names its own
    assert table.column("user").to_pylist() == [1, 2]
    assert table.column("item").to_pylist() == [10, 20]
    assert table.column("timestamp").to_pylist() == [978300760, 978300761]
    assert table.column("rating").to_pylist() == [5.0, 3.0]


def test_a_new_format_is_one_reader(tmp_path, monkeypatch):
    def read_pipes(request):  # "user|item" lines, no header
        pairs = [line.split("|") for line in open(request.path).read().split()]
        return pa.table({"u": [int(u) for u, _ in pairs], "i": [int(i) for _, i in pairs]})

    monkeypatch.setitem(READERS, "pipes", Reader(read_pipes, (".pipes",), columns=("u", "i", None, None),
                                                 min_interactions=2))
    path = tmp_path / "log.pipes"
    path.write_text("1|7\n1|8\n2|7\n")
    assert detect_format(str(path)) == "pipes"
    assert default_min_interactions("pipes") == 2
    table = load_interactions(str(path))
    assert table.column("user").to_pylist() == [1, 1, 2]
    assert table.column("item").to_pylist() == [7, 8, 7]
    assert "timestamp" not in table.column_names


def test_unknown_format_lists_the_readers(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("user,item\n1,2\n")
    with pytest.raises(DataError, match=r"unknown format 'xml'.*'sasrec', 'csv'"):
        load_interactions(str(path), format="xml")
    assert FORMATS == tuple(READERS)
