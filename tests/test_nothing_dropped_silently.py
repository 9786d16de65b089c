"""What the filters removed is reported, per option; a filtered-out user in predict_users is named as such."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from sasrec_lightning import SASRecDataModule
from sasrec_lightning.data.options import PreprocessingOptions
from sasrec_lightning.data.preprocessing import PreprocessOptions, format_filters, preprocess
from sasrec_lightning.serving.prediction import read_user_list

# (user, item, rating), in time order. With min_rating=3, deduplicate, min_user=3, min_item=2 (one pass):
#   min_rating=3 drops u5's only row (1 user, 1 interaction);
#   deduplicate drops u2's second i1 (1 interaction);
#   min_user_interactions=3 drops u3 (2 interactions: i1, i2);
#   min_item_interactions=2 drops i4 (u1's) and i9 (u4's): 2 items, 2 interactions; u1 and u4 stay.
ROWS = [("u1", "i1", 5), ("u1", "i2", 5), ("u1", "i3", 5), ("u1", "i4", 5),
        ("u2", "i1", 5), ("u2", "i2", 5), ("u2", "i3", 5), ("u2", "i1", 5),
        ("u3", "i1", 5), ("u3", "i2", 5),
        ("u4", "i1", 5), ("u4", "i2", 5), ("u4", "i9", 5),
        ("u5", "i1", 1)]
OPTIONS = PreprocessOptions(min_user_interactions=3, min_item_interactions=2, min_rating=3, deduplicate=True)


def table() -> pa.Table:
    users, items, ratings = zip(*ROWS, strict=True)
    return pa.table({"user": list(users), "item": list(items), "rating": list(ratings),
                     "timestamp": np.arange(len(ROWS))})


def test_each_filter_reports_what_it_removed():
    data = preprocess(table(), OPTIONS)
    assert data.info["removed"] == [
        {"option": "min_rating=3", "users": 1, "items": 0, "interactions": 1},
        {"option": "deduplicate=True", "users": 0, "items": 0, "interactions": 1},
        {"option": "min_user_interactions=3", "users": 1, "items": 0, "interactions": 2},
        {"option": "min_item_interactions=2", "users": 0, "items": 2, "interactions": 2},
    ]
    assert data.info["filtered_users"]["min_user_interactions=3"] == ["u3"]
    assert sorted(data.user_ids.tolist()) == ["u1", "u2", "u4"] and len(data.items) == 14 - 6
    text = format_filters(data.info)
    assert "14 interactions read" in text
    assert "min_user_interactions=3: removed 1 users, 0 items, 2 interactions" in text
    assert "min_item_interactions=2: removed 0 users, 2 items, 2 interactions" in text


def test_fit_prints_the_filters_with_the_data_summary(tmp_path, capsys):
    path = tmp_path / "log.csv"
    path.write_text("user,item\n" + "".join(f"{user},{item}\n" for user, item, _ in ROWS if user != "u5"))
    SASRecDataModule(path=str(path),  # noqa: B018
                     preprocessing=PreprocessingOptions(min_user_interactions=3, min_item_interactions=2)).sequences
    out = capsys.readouterr().out
    assert "| log.csv | 3 |" in out
    assert "min_user_interactions=3: removed 1 users, 0 items, 2 interactions" in out, out


def test_an_unknown_predict_user_is_reported_as_filtered_out(tmp_path, caplog):
    data = preprocess(table(), OPTIONS)
    users = tmp_path / "users.txt"
    users.write_text("u1\nu3\nnobody\n")
    with caplog.at_level(logging.WARNING):
        rows = read_user_list(str(users), data.user_ids, data.info["filtered_users"])
    assert data.user_ids[rows].tolist() == ["u1"]
    assert "2 id(s) not in the data were skipped" in caplog.text
    assert "1 filtered out by min_user_interactions=3 (e.g. ['u3'])" in caplog.text
    assert "nobody" not in caplog.text.split("filtered out")[1]
