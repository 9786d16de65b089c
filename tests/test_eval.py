"""Evaluation protocols (sampled / full ranking), metrics and model-selection defaults."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from sasrec_lightning.batches import BatchKey, EvalBatches, LeaveOneOutSplit, UserBatchSampler
from sasrec_lightning.datamodule import SASRecDataModule
from sasrec_lightning.metrics import RankingMetrics, rank_of_target, ranking_metrics
from sasrec_lightning.module import SASRecModule
from sasrec_lightning.preprocessing import SequenceData
from sasrec_lightning.sampling import InteractionIndex, item_counts, sample_negatives

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# Five users, ten items; each row is one user's chronological sequence.
SEQUENCES = [[1, 2, 3, 4, 5], [2, 3, 2, 7], [9, 8, 7, 6, 5, 4, 3], [10, 1, 10], [4, 4, 6, 1]]


def tiny_split() -> LeaveOneOutSplit:
    lengths = [len(s) for s in SEQUENCES]
    data = SequenceData(
        items=np.concatenate(SEQUENCES).astype(np.int64),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        user_ids=np.arange(len(SEQUENCES)),
        item_ids=np.arange(11),
    )
    return LeaveOneOutSplit(data)


def tiny_module(**kwargs) -> SASRecModule:
    torch.manual_seed(0)
    module = SASRecModule(num_items=10, max_len=6, hidden_size=8, num_blocks=1, dropout=0.0, **kwargs)
    with torch.no_grad():
        module.model.item_embedding.weight.mul_(4.0)  # spread the scores so ranks differ
    return module.eval()


def eval_batch(stage: str = "test", num_negatives: int = 4) -> dict[str, torch.Tensor]:
    dataset = EvalBatches(tiny_split(), stage, max_len=6, num_negatives=num_negatives, seed=0)
    return dataset[BatchKey(rows=np.arange(len(dataset)), epoch=0, index=0)]


# ---------------------------------------------------------------------------------- full ranking
def brute_force_ranks(module: SASRecModule, batch: dict, exclude_seen: bool) -> list[int]:
    """Independent reference: score every item, drop padding / target / history, count ties against."""
    with torch.no_grad():
        scores = module.model.last_hidden(batch["input_ids"]) @ module.model.output_weight.T  # (B, I + 1)
    ranks = []
    for row, target in enumerate(batch["targets"].tolist()):
        history = set(batch["seen_items"][batch["seen_rows"] == row].tolist())
        count = 0
        for item in range(1, 11):
            if item == target or (exclude_seen and item in history):
                continue
            count += int(scores[row, item] >= scores[row, target])
        ranks.append(count)
    return ranks


@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 65536])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_full_ranking_in_chunks_equals_brute_force(chunk, exclude_seen):
    module = tiny_module(eval_protocol="full", exclude_seen=exclude_seen, eval_chunk_size=chunk)
    for stage in ("val", "test"):
        batch = eval_batch(stage)
        with torch.no_grad():
            ranks = module.target_ranks(batch)
        assert ranks.tolist() == brute_force_ranks(module, batch, exclude_seen)


def test_excluding_seen_items_never_worsens_a_rank():
    batch = eval_batch("test")
    with torch.no_grad():
        kept = tiny_module(eval_protocol="full", exclude_seen=False).target_ranks(batch)
        excluded = tiny_module(eval_protocol="full", exclude_seen=True).target_ranks(batch)
    assert torch.all(excluded <= kept)
    # User 2 has seen 6 other items, so at most 3 candidates remain besides the target.
    assert excluded[2] <= 10 - 7


def test_test_stage_history_contains_the_validation_item():
    batch = eval_batch("test")
    # User 0: sequence 1..5, test target 5, history 1..4 (4 = the validation item).
    assert batch["targets"][0] == 5
    assert sorted(batch["seen_items"][batch["seen_rows"] == 0].tolist()) == [1, 2, 3, 4]


def test_sampled_protocol_ranks_against_the_candidates():
    module = tiny_module(eval_protocol="sampled")
    batch = eval_batch("test", num_negatives=4)
    with torch.no_grad():
        ranks = module.target_ranks(batch)
        scores = module.model.score_items(module.model.last_hidden(batch["input_ids"]), batch["candidates"])
    expected = (scores[:, 1:] >= scores[:, :1]).sum(-1)
    assert ranks.tolist() == expected.tolist()
    assert torch.all(ranks <= 4)


# --------------------------------------------------------------------------------------- metrics
def test_ranking_metrics_against_numpy_reference():
    ranks = torch.tensor([0, 1, 4, 9, 10, 57])
    metrics = ranking_metrics(ranks, (1, 5, 10, 20))
    for k in (1, 5, 10, 20):
        hits = np.array([r < k for r in ranks.tolist()], dtype=float)
        ndcg = np.array([1 / math.log2(r + 2) if r < k else 0.0 for r in ranks.tolist()])
        np.testing.assert_allclose(metrics[f"hr@{k}"].numpy(), hits)
        np.testing.assert_allclose(metrics[f"ndcg@{k}"].numpy(), ndcg)
    np.testing.assert_allclose(metrics["mrr"].numpy(), 1 / (ranks.numpy() + 1.0))


def test_rank_of_target_counts_ties_against_and_respects_valid():
    scores = torch.tensor([[0.5, 0.9, 0.1], [0.2, 0.2, 0.2]])
    ranks = rank_of_target(scores, torch.tensor([0.5, 0.2]))
    assert ranks.tolist() == [2, 3]
    valid = torch.tensor([[True, False, True], [True, True, False]])
    assert rank_of_target(scores, torch.tensor([0.5, 0.2]), valid).tolist() == [1, 2]


def test_ranking_metric_states_sum_like_a_ddp_sync():
    a, b = RankingMetrics((1, 10), prefix="test/"), RankingMetrics((1, 10), prefix="test/")
    a.update(torch.tensor([0, 3]))
    b.update(torch.tensor([12]))
    merged = RankingMetrics((1, 10), prefix="test/")
    merged.sums, merged.count = a.sums + b.sums, a.count + b.count  # what dist_reduce_fx="sum" does
    reference = RankingMetrics((1, 10), prefix="test/")
    reference.update(torch.tensor([0, 3, 12]))
    assert merged.compute() == reference.compute()
    assert sorted(reference.compute()) == sorted(
        ["test/hr@1", "test/ndcg@1", "test/hr@10", "test/ndcg@10", "test/mrr"]
    )
    assert reference.compute()["test/hr@10"].item() == pytest.approx(2 / 3)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_eval_shards_count_every_user_exactly_once(world):
    lengths = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
    seen = []
    for rank in range(world):
        sampler = UserBatchSampler(lengths, batch_size=2, shuffle=False, num_replicas=world, rank=rank, even=False)
        keys = list(sampler)
        assert len(keys) == len(sampler)
        seen.extend(np.concatenate([key.rows for key in keys]).tolist() if keys else [])
    assert sorted(seen) == list(range(len(lengths)))


# ------------------------------------------------------------------------- eval negative sampling
def test_popularity_sampled_negatives_follow_counts_and_skip_seen_items():
    split = tiny_split()
    index = InteractionIndex.from_csr(split.data.items, split.starts, split.ends, split.data.num_items)
    weights = np.zeros(11)
    weights[[6, 8, 10]] = [1.0, 3.0, 0.0]
    rng = np.random.default_rng(0)
    negatives = sample_negatives(index, np.array([0, 0, 0]), (4000,), rng, probabilities=weights)  # user 0: 1..5
    assert set(np.unique(negatives)) == {6, 8}
    assert np.mean(negatives == 8) == pytest.approx(0.75, abs=0.02)
    counts = item_counts(split.data.items, split.starts, split.ends, 10)
    assert counts[4] == 4 and counts[10] == 2 and counts.sum() == len(split.data.items)
    popular = EvalBatches(split, "test", 6, num_negatives=3, seed=0, negative_sampling="popularity")
    for row, user in enumerate(popular.rows):
        history = set(SEQUENCES[user])
        assert not history & set(popular.candidates[row, 1:].tolist())
    with pytest.raises(ValueError, match="eval negative sampling"):
        EvalBatches(split, "test", 6, negative_sampling="zipf")


# ------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize(
    "loss, options",
    [
        ("bce", {}),
        ("gbce", {"gbce_t": 0.5}),
        ("sampled_softmax", {"sampled_negatives": 16, "negative_sampling": "in_batch"}),
        ("sampled_softmax", {"sampled_negatives": 16, "negative_sampling": "popularity"}),
        ("ce", {"ce_chunk_size": 7}),
    ],
)
def test_each_loss_trains_and_logs_protocol_metrics(tmp_path, loss, options):
    data = SASRecDataModule(synthetic_users=100, synthetic_items=100, max_len=8, batch_size=16, num_negatives=2,
                            eval_batch_size=16, num_eval_negatives=5)
    model = SASRecModule(num_items=data.num_items, max_len=8, hidden_size=8, num_blocks=1, loss=loss,
                         eval_protocol="full", top_k=(1, 5, 10, 20), **options)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    for name in ("val/hr@1", "val/ndcg@5", "val/ndcg@10", "val/hr@20", "val/mrr"):
        assert 0.0 <= metrics[name].item() <= 1.0
    assert metrics["val/hr@20"] >= metrics["val/hr@10"] >= metrics["val/hr@1"]


def test_ce_logits_block_is_kept_while_training_and_let_go_for_evaluation(tmp_path):
    seen = {"train": [], "val": []}

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["train"].append(pl_module.loss_fn.workspace._block is not None)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen["val"].append(pl_module.loss_fn.workspace._block is not None)

    data = SASRecDataModule(synthetic_users=60, synthetic_items=50, max_len=8, batch_size=16, eval_batch_size=16)
    model = SASRecModule(num_items=data.num_items, max_len=8, hidden_size=8, num_blocks=1, loss="ce",
                         eval_protocol="full")
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[Watch()], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    assert seen["train"] == [True] * 6, "reused from step to step while training"
    assert seen["val"] == [False] * 4, "not held while evaluating"
    assert model.loss_fn.workspace._block is None, "let go after training"


@pytest.mark.parametrize("name", ["beauty-bce.yaml", "beauty-ce.yaml", "beauty-sampled-softmax.yaml"])
def test_beauty_configs_select_on_validation_ndcg(name):
    config = yaml.safe_load((CONFIGS / name).read_text())
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c["init_args"] for c in config["trainer"]["callbacks"]}
    assert callbacks["ModelCheckpoint"]["monitor"] == "val/ndcg@10" and callbacks["ModelCheckpoint"]["mode"] == "max"
    assert callbacks["EarlyStopping"]["monitor"] == "val/ndcg@10" and callbacks["EarlyStopping"]["patience"] >= 1
    model = config["model"]["init_args"]
    assert model["eval_protocol"] == "full" and model["exclude_seen"] is True
    assert (model["hidden_size"], model["num_blocks"], model["num_heads"], model["dropout"]) == (64, 2, 1, 0.1)
    assert config["data"]["init_args"]["max_len"] == 50 and config["data"]["init_args"]["batch_size"] == 128
