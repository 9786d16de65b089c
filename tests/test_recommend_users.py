"""``SASRecModule.recommend_users``: recommendations by user id from the data module, as ``predict`` writes them.

Also what a ``recommend`` call keeps between calls (the most-popular ranking, the user histories) and
that it follows the weights and counts when they change, and ``benchmarks/recommend_latency.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.data.options import CacheOptions, LoaderOptions, SourceOptions
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.serving.prediction import PredictionWriter
from sasrec_lightning.serving.recommend import MostPopular, tensor_state

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "recommend_latency.py"


def tiny_data(eval_batch_size: int = 256, items: int = 40) -> SASRecDataModule:
    return SASRecDataModule(max_len=6, print_statistics=False, seed=0,
                            source=SourceOptions(synthetic_users=24, synthetic_items=items),
                            loader=LoaderOptions(eval_batch_size=eval_batch_size), cache=CacheOptions(use=False))


def tiny_module(data: SASRecDataModule, seed: int = 0) -> SASRecModule:
    torch.manual_seed(seed)
    module = SASRecModule(num_items=data.num_items, max_len=6, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    module.set_item_vocabulary(data.item_ids(), data.item_popularity())
    return module


def trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


def test_recommend_users_agrees_with_the_predict_file_item_for_item(tmp_path):
    # One user per predict batch and per call: the same shapes on both sides, so the same numbers by construction.
    data = tiny_data(eval_batch_size=1)
    module = tiny_module(data)
    output = tmp_path / "predictions.parquet"
    trainer(callbacks=[PredictionWriter(str(output), k=5)]).predict(module, datamodule=data, return_predictions=False)
    written = pq.read_table(output).to_pylist()
    assert len(written) == data.sequences.num_users
    for record in written:
        answer = module.recommend_users([record["user"]], datamodule=data, k=5)
        assert answer.items == [record["items"]], record["user"]
        assert np.float32(answer.scores[0]).tolist() == record["scores"], record["user"]
        assert answer.fallback == [False]
    # The trainer's data module is used when none is given; a batch of users answers in input order, as
    # recommend does for their whole histories (the same batch on both sides).
    sequences = data.sequences
    histories = [sequences.item_ids[sequences.sequence(row)].tolist() for row in (3, 0)]
    assert module.recommend_users(sequences.user_ids[[3, 0]], k=5) == module.recommend(histories, k=5)


def test_history_train_is_the_training_part_and_exclude_seen_follows(tmp_path):
    data = tiny_data()
    module = tiny_module(data)
    sequences, split = data.sequences, data.split_data
    users = sequences.user_ids[[0, 5, 9]]
    rows = [0, 5, 9]
    train = [sequences.item_ids[sequences.items[split.starts[r]:split.train_ends[r]]].tolist() for r in rows]
    full = [sequences.item_ids[sequences.items[split.starts[r]:split.ends[r]]].tolist() for r in rows]
    assert any(len(a) < len(b) for a, b in zip(train, full, strict=True))  # the held-out items make a difference
    assert module.recommend_users(users, data, k=7, history="train") == module.recommend(train, k=7)
    kept = module.recommend_users(users, data, k=40, exclude_seen=False)
    assert kept == module.recommend(full, k=40, exclude_seen=False)
    assert all(set(history) <= set(items) for history, items in zip(full, kept.items, strict=True))
    with pytest.raises(ValueError, match="history='last'; expected one of \\['full', 'train'\\]"):
        module.recommend_users(users, data, history="last")


def test_unknown_users_get_the_most_popular_items_with_one_warning_or_raise_when_strict():
    data = tiny_data()
    module = tiny_module(data)
    known = data.sequences.user_ids[2].item()
    assert isinstance(known, int)
    with pytest.warns(UserWarning, match=r"2 unknown user id\(s\) not in the data module's 24 users \(first: "
                                         r"\[999, 'nobody'\]\)") as record:
        out = module.recommend_users([999, known, "nobody"], data, k=3)
    assert record[0].filename == __file__  # the warning points at the caller's line
    assert out.fallback == [True, False, True]
    popular = np.argsort(-data.item_popularity()[1:], kind="stable")[:3] + 1
    assert out.items[0] == out.items[2] == data.item_ids()[popular].tolist()
    assert out.scores[0] == data.item_popularity()[popular].astype(float).tolist()
    # An id given as text matches an integer id, as in --data.predict_users.
    assert module.recommend_users([str(known)], data, k=3) == module.recommend_users([known], data, k=3)
    with pytest.raises(KeyError, match=r"strict=True\): 1 user id\(s\) not in the data module's 24 users \(first: "
                                       r"\['nobody'\], of type str\); expected ids of users in the training data, "
                                       rf"e.g. {data.sequences.user_ids[0]} \(type int\)"):
        module.recommend_users([known, "nobody"], data, k=3, strict=True)
    with pytest.raises(TypeError, match="users must be a list of user ids"):
        module.recommend_users(known, data)


def test_another_data_module_or_none_is_refused():
    data = tiny_data()
    module = tiny_module(data)
    with pytest.raises(ValueError, match="recommend_users: no data module; pass datamodule="):
        module.recommend_users([0])
    smaller = tiny_data(items=30)
    with pytest.raises(ValueError, match=f"the data module has {smaller.num_items} items but the model was trained "
                                         f"on {data.num_items}; expected the data module of the data"):
        module.recommend_users([0], smaller)
    other = tiny_data()
    other.sequences.item_ids[[1, 2]] = other.sequences.item_ids[[2, 1]]
    with pytest.raises(ValueError, match="the data module's item ids are not the model's \\(internal id 1 is"):
        module.recommend_users([0], other)
    # The histories kept for a data module are checked again when the model gets other item ids.
    module.recommend_users(data.sequences.user_ids[:1], data)
    module.set_item_vocabulary(other.item_ids())
    with pytest.raises(ValueError, match="the data module's item ids are not the model's"):
        module.recommend_users(data.sequences.user_ids[:1], data)


def test_recommend_restores_each_submodules_mode():
    data = tiny_data()
    module = tiny_module(data).train()
    module.model.blocks[0].eval()  # a mixed state: the call must leave it as it was
    before = {name: part.training for name, part in module.named_modules()}
    first = module.recommend([data.item_ids()[[1, 2]].tolist()], k=3)
    assert {name: part.training for name, part in module.named_modules()} == before
    assert module.recommend([data.item_ids()[[1, 2]].tolist()], k=3) == first  # dropout was off


def test_tensor_state_counts_in_place_writes():
    counts = torch.zeros(5, dtype=torch.int64)
    state = tensor_state(counts)
    assert tensor_state(counts) == state
    counts.copy_(torch.arange(5))
    assert tensor_state(counts) != state
    state = tensor_state(counts)
    counts[2] += 1
    assert tensor_state(counts) != state
    assert tensor_state(counts.clone()) != tensor_state(counts)
    with torch.inference_mode():
        assert tensor_state(torch.zeros(2)) is None  # no counter: never taken as unchanged


def test_the_most_popular_ranking_is_sorted_once_and_again_when_the_counts_change():
    ranking = MostPopular()
    counts = torch.tensor([0, 5, 9, 9, 1])
    scores, items = ranking.top(counts, 4, 3)
    assert items.tolist() == [2, 3, 1] and scores.tolist() == [9.0, 9.0, 5.0]  # ties: lower id first
    kept = ranking._ranking
    assert ranking.top(counts, 4, 2)[1].tolist() == [2, 3] and ranking._ranking is kept  # not sorted again
    counts.copy_(torch.tensor([0, 1, 2, 3, 4]))  # as load_state_dict and set_item_vocabulary write it
    assert ranking.top(counts, 4, 3)[1].tolist() == [4, 3, 2]
    assert ranking.top(torch.tensor([0, 7, 0, 0, 8]), 4, 2)[1].tolist() == [4, 1]  # another buffer
    assert ranking.top(None, 4, 9)[1].tolist() == [1, 2, 3, 4]  # no counts: every item ties


def test_after_a_training_step_and_a_new_state_recommend_answers_like_a_freshly_loaded_module():
    data = tiny_data()
    module = tiny_module(data)
    sequences = [data.item_ids()[[1, 2, 3]].tolist(), data.item_ids()[[7]].tolist(), []]
    users = data.sequences.user_ids[:4].tolist()
    with pytest.warns(UserWarning, match="most-popular"):
        before = module.recommend(sequences, k=5)  # fills what recommend keeps between calls
    before_users = module.recommend_users(users, data, k=5)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.5)
    module.train()
    hidden = module.model(torch.tensor([[1, 2, 3]]))[:, -1]  # (1, d)
    (hidden @ module.model.output_weight.T).logsumexp(-1).sum().backward()
    optimizer.step()
    module.item_popularity.copy_(torch.arange(data.num_items + 1).flip(0))  # new counts, in place

    fresh = SASRecModule(num_items=data.num_items, max_len=6, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    fresh.set_item_vocabulary(data.item_ids())
    fresh.load_state_dict(module.state_dict())
    with pytest.warns(UserWarning, match="most-popular"):
        after = module.recommend(sequences, k=5)
    with pytest.warns(UserWarning, match="most-popular"):
        assert after == fresh.recommend(sequences, k=5)
    assert after.items[0] != before.items[0] and after.items[2] != before.items[2]  # the step and the counts
    assert after.items[2] == data.item_ids()[1:6].tolist()  # the new counts: the lowest ids first
    after_users = module.recommend_users(users, data, k=5)
    assert after_users == fresh.recommend_users(users, data, k=5) and after_users != before_users
    assert module.training  # restored


def test_the_latency_benchmark_runs_at_a_tiny_size_and_prints_its_table(capsys):
    spec = importlib.util.spec_from_file_location("recommend_latency", BENCHMARK)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    threads = torch.get_num_threads()
    try:
        script.main(["--items", "1000", "--batch", "1", "2", "--calls", "3", "--warmup", "1", "--length", "4"])
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("recommend latency, torch threads 1, 3 calls per case")
    assert lines[1].split() == ["items", "batch", "p50", "ms", "p99", "ms", "mean", "ms"]
    rows = [line.split() for line in lines[2:]]
    assert [row[:2] for row in rows] == [["1000", "1"], ["1000", "2"]] and all(len(row) == 5 for row in rows)
    assert all(float(value) > 0 for row in rows for value in row[2:])
