"""Item features from two CSV files through the CLI: fit, a checkpoint with the item table, predict and recommend.

The data side (tests/test_item_features.py) and the model side (tests/test_feature_model.py) are tested
apart; here the real reader, the CLI's link and the checkpoint meet: a cold-start item (a row of the item
table without interactions) is scored from its features in ``predict`` and ``recommend``, in original ids,
from the checkpoint alone.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from conftest import run_cli
from sasrec_lightning import SASRecModule
from sasrec_lightning.model.items import FeatureItems


def write_files(folder, rng) -> None:
    """60 users over items 101..124 (categories by item // 10); item 999 is in the table only (cold)."""
    rows, time = ["user,item,ts"], 0
    for user in range(60):
        category = user % 3  # users follow a category
        for item in rng.choice(np.arange(category * 8, category * 8 + 8) + 101, size=6, replace=False):
            time += 1
            rows.append(f"u{user},{item},{time}")
    (folder / "log.csv").write_text("\n".join(rows) + "\n")
    items = ["item,genre,tags,price"]
    for item in range(101, 125):
        genre = "abc"[(item - 101) // 8]
        items.append(f"{item},{genre},{genre}1|{genre}2,{item % 7}.5")
    items.append("999,b,b1|b2,3.5")  # the cold-start item: a row, no interaction
    (folder / "items.csv").write_text("\n".join(items) + "\n")


def test_fit_predict_and_recommend_with_an_item_table_and_a_cold_item(tmp_path, rng):
    write_files(tmp_path, rng)
    data = ["--data.path", "log.csv", "--data.source.timestamp_column", "ts", "--data.max_len", "8",
            "--data.preprocessing.min_user_interactions", "0", "--data.preprocessing.min_item_interactions", "0",
            "--data.features.path", "items.csv", "--data.features.categorical", "[genre]",
            "--data.features.multi", "[tags]", "--data.features.numeric", "[price]", "--data.cache.dir", "cache"]
    run_cli(["fit", "--model", "sasrec_lightning.SASRecModule", "--model.encoder.hidden_size", "8",
             "--model.encoder.num_blocks", "1", "--model.evaluation.protocol", "full", *data,
             "--trainer.max_epochs", "2", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
             "--trainer.default_root_dir", "run", "--seed_everything", "0"], tmp_path)
    checkpoint = next((tmp_path / "run").rglob("*.ckpt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert [c["name"] for c in saved["hyper_parameters"]["item_features"]["columns"]] == ["genre", "tags", "price"]
    assert saved["item_features"]["vocabularies"]["genre"] == ["<unknown>", "a", "b", "c"]

    # predict from the checkpoint, in original ids: the cold item is among the items it can answer with.
    run_cli(["predict", "--ckpt_path", str(checkpoint), *data, "--trainer.logger", "false",
             "--trainer.enable_progress_bar", "false", "--prediction.k", "25", "--prediction.exclude_seen", "false",
             "--prediction.output", "out.jsonl"], tmp_path)
    answers = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(answers) == 60
    assert all(999 in answer["items"] or "999" in answer["items"] for answer in answers)  # 25 of 25 items: all

    # recommend from the checkpoint alone (no data module): a sequence holding the cold item is accepted.
    module = SASRecModule.load_from_checkpoint(checkpoint, weights_only=True)
    items = module.model.items
    assert isinstance(items, FeatureItems)
    cold = int(np.flatnonzero(np.asarray(module.item_vocabulary.item_ids, dtype=object) == 999)[0])
    assert not bool(items.id_known[cold]) and bool(items.has_row[cold])
    answer = module.recommend([[109, 999], [999]], k=25, exclude_seen=False)
    scores = dict(zip(answer.items[1], answer.scores[1], strict=True))
    assert 999 in scores and np.isfinite(scores[999])
    # Its vector is its features' (the unknown id plus genre 'b', tags b1|b2, price 3.5): the table's row
    # equals a warm item's recomputed with the unknown id and the same features.
    module.eval()
    with torch.no_grad():
        table = items.table()
        expected = items.unknown_id[0] + sum(column(torch.tensor([cold]))[0] for column in items.columns)
    assert torch.equal(table[cold], expected) or torch.allclose(table[cold], expected, rtol=0, atol=1e-6)
