"""``sasrec-lightning predict``: top-K per user in original ids, to Parquet / JSON lines, single process and DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.cli.app import cli_main
from sasrec_lightning.data.options import CacheOptions, SourceOptions
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.serving.prediction import PredictionWriter, read_user_list, recommendations_table, write_table
from sasrec_lightning.training.evaluation import EvaluationOptions

QUICKSTART = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
TINY = [
    "--data.source.synthetic_users", "60", "--data.source.synthetic_items", "120", "--data.max_len", "8",
    "--data.cache.use", "false", "--data.print_statistics", "false",
    "--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
    "--prediction.k", "5", "--trainer.enable_progress_bar", "false",
]


def read_output(path: Path) -> pa.Table:
    if path.suffix == ".parquet":
        return pq.read_table(path)
    return pa.Table.from_pylist([json.loads(line) for line in path.read_text().splitlines()])


def test_recommendations_table_maps_ids_and_drops_empty_slots():
    table = recommendations_table(
        user_rows=np.array([1, 0]),
        items=np.array([[2, 1], [3, 2]]),
        scores=np.array([[0.5, float("-inf")], [0.9, 0.1]], dtype=np.float32),
        user_ids=np.array(["ann", "bob"]),
        item_ids=np.array([0, 10, 20, 30]),
    )
    assert table.to_pylist() == [
        {"user": "bob", "items": [20], "scores": [0.5]},
        {"user": "ann", "items": [30, 20], "scores": [pytest.approx(0.9), pytest.approx(0.1)]},
    ]


@pytest.mark.parametrize("name", ["out.parquet", "out.jsonl"])
def test_write_table_by_extension(tmp_path, name):
    table = recommendations_table(np.array([0]), np.array([[1]]), np.array([[1.5]], np.float32), np.array(["u"]),
                                  np.array(["", "i"]))
    write_table(table, str(tmp_path / name))
    assert read_output(tmp_path / name).to_pylist() == [{"user": "u", "items": ["i"], "scores": [1.5]}]


def test_unknown_output_extension_fails_at_configuration():
    with pytest.raises(ValueError, match=r"prediction.output 'recs.csv'.*\.parquet"):
        PredictionWriter("recs.csv")


def test_read_user_list_skips_unknown_ids(tmp_path, caplog):
    path = tmp_path / "users.txt"
    path.write_text("30\n10\nnobody\n10\n99\n")
    assert read_user_list(str(path), np.array([10, 20, 30])).tolist() == [0, 2]
    assert "2 id(s) not in the data" in caplog.text
    path.write_text("b\nzz\n")
    assert read_user_list(str(path), np.array(["a", "b"])).tolist() == [1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny quickstart model trained for one epoch, checkpointed."""
    root = tmp_path_factory.mktemp("fit")
    cli_main(["fit", "-c", QUICKSTART, *TINY, "--trainer.max_epochs", "1", "--test_after_fit", "false",
              "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(root)])
    (path,) = root.rglob("*.ckpt")
    return str(path)


def tiny_data() -> SASRecDataModule:
    return SASRecDataModule(max_len=8, print_statistics=False,
                            source=SourceOptions(synthetic_users=60, synthetic_items=120),
                            cache=CacheOptions(use=False))


def test_predict_writes_every_user_in_original_ids_matching_a_brute_force(checkpoint, tmp_path):
    output = tmp_path / "recs.parquet"
    cli_main(["predict", "-c", QUICKSTART, *TINY, "--ckpt_path", checkpoint, "--prediction.output", str(output)])
    table = pq.read_table(output)
    sequences = tiny_data().sequences
    assert table.column("user").to_pylist() == sequences.user_ids.tolist()  # everyone, once, in order
    # Independent reference: the encoder's last hidden state of each history (the last 8 items,
    # left-padded by hand), a dot product with every row of the item table in numpy, the history
    # and the padding id removed, sorted best first, mapped to the original ids.
    module = SASRecModule.load_from_checkpoint(checkpoint, weights_only=True).eval()
    histories = [np.asarray(sequences.sequence(row)) for row in range(sequences.num_users)]  # internal ids
    inputs = np.zeros((len(histories), 8), dtype=np.int64)
    for row, history in enumerate(histories):
        inputs[row, 8 - len(history[-8:]):] = history[-8:]
    with torch.no_grad():
        hidden = module.model.last_hidden(torch.from_numpy(inputs)).numpy()  # (U, d)
    table_weights = module.model.output_weight.detach().numpy()  # (I + 1, d)
    for row, record in enumerate(table.to_pylist()):
        scores = (hidden[row][None, :] * table_weights).sum(axis=1)  # (I + 1,)
        candidates = [item for item in range(1, sequences.num_items + 1) if item not in set(histories[row].tolist())]
        best = sorted(candidates, key=lambda item: -scores[item])[:5]
        assert record["items"] == sequences.item_ids[best].tolist(), row
        assert record["scores"] == pytest.approx(scores[best].tolist(), rel=1e-4, abs=1e-5)
        assert not set(record["items"]) & set(sequences.item_ids[histories[row]].tolist())


def test_predict_user_list_json_lines_and_seen_items_switch(checkpoint, tmp_path):
    sequences = tiny_data().sequences
    chosen = sequences.user_ids[[3, 7]].tolist()
    users = tmp_path / "users.txt"
    users.write_text("\n".join(str(u) for u in chosen) + "\nnot-a-user\n")
    output = tmp_path / "recs.jsonl"
    cli_main(["predict", "-c", QUICKSTART, *TINY, "--ckpt_path", checkpoint, "--prediction.output", str(output),
              "--data.predict_users", str(users), "--prediction.exclude_seen", "false",
              "--prediction.k", "200"])
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["user"] for r in records] == chosen
    for record, row in zip(records, (3, 7), strict=True):
        assert len(record["items"]) == sequences.num_items  # the whole catalog: seen items are not excluded
        assert set(sequences.item_ids[sequences.sequence(row)].tolist()) <= set(record["items"])
        assert record["scores"] == sorted(record["scores"], reverse=True)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_predict_under_ddp_merges_one_file_without_duplicates(checkpoint, tmp_path):
    single, merged = tmp_path / "single.parquet", tmp_path / "ddp.parquet"
    cli_main(["predict", "-c", QUICKSTART, *TINY, "--ckpt_path", checkpoint, "--prediction.output", str(single)])
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "sasrec_lightning.cli", "predict", "-c", QUICKSTART, *TINY,
               "--ckpt_path", checkpoint, "--prediction.output", str(merged), "--trainer.devices", "2",
               "--trainer.strategy", "ddp", "--data.loader.eval_batch_size", "16", "--return_predictions", "false"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "merged 2 ranks" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if "part" in p.name) == []  # parts cleaned up
    expected, got = pq.read_table(single).to_pylist(), pq.read_table(merged).to_pylist()
    assert [r["user"] for r in got] == [r["user"] for r in expected]  # every user exactly once, in order
    for a, b in zip(got, expected, strict=True):
        assert a["items"] == b["items"]
        assert a["scores"] == pytest.approx(b["scores"], rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("chunk", [16, 45, 4096])  # 8 chunks with an overlapping last one, 3, one
def test_predict_step_and_recommend_in_item_chunks_match_a_numpy_brute_force(chunk):
    """``predict_step`` and ``recommend`` score the catalogue ``eval_chunk_size`` items at a time."""
    torch.manual_seed(0)
    module = SASRecModule(num_items=120, max_len=8, encoder=EncoderOptions(hidden_size=8, num_blocks=1),
                          evaluation=EvaluationOptions(chunk_size=chunk)).eval()
    histories = [[3, 17, 64, 119], [120], [5, 5, 90, 33, 2, 71], [1, 2, 3, 4, 5, 6, 7, 8, 9]]  # internal ids
    inputs = np.zeros((len(histories), 8), dtype=np.int64)
    for row, history in enumerate(histories):
        inputs[row, 8 - len(history[-8:]):] = history[-8:]
    rows = [row for row, history in enumerate(histories) for _ in history]
    batch = {"input_ids": torch.from_numpy(inputs), "users": torch.arange(4),
             "seen_rows": torch.tensor(rows), "seen_items": torch.tensor([i for h in histories for i in h])}
    module.set_prediction(k=12, exclude_seen=True)
    with torch.no_grad():
        out = module.predict_step(batch, 0)
        hidden = module.model.last_hidden(batch["input_ids"]).double().numpy()  # (B, d)
    recommended = module.recommend(histories, k=12)
    table = module.model.output_weight.detach().double().numpy()  # (I + 1, d)
    for row, history in enumerate(histories):
        scores = table @ hidden[row]  # (I + 1,)
        candidates = np.array([item for item in range(1, 121) if item not in set(history)])
        best = candidates[np.argsort(-scores[candidates], kind="stable")[:12]]
        assert out["items"][row].tolist() == best.tolist(), row
        np.testing.assert_allclose(out["scores"][row].numpy(), scores[best], rtol=1e-5, atol=1e-6)
        assert recommended.items[row] == best.tolist(), row
