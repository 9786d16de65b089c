"""Evaluation protocols (sampled / full ranking), metrics and model-selection defaults."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from conftest import write_sasrec_txt
from sasrec_lightning.data.batches import BatchKey, EvalBatches, LeaveOneOutSplit, UserBatchSampler
from sasrec_lightning.data.datamodule import SASRecDataModule
from sasrec_lightning.data.options import LoaderOptions, SourceOptions
from sasrec_lightning.data.preprocessing import SequenceData
from sasrec_lightning.data.sampling import InteractionIndex, item_counts, sample_negatives
from sasrec_lightning.errors import DataError
from sasrec_lightning.model.metrics import RankingMetrics, rank_of_target, ranking_metrics
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.evaluation import EvaluationOptions
from sasrec_lightning.training.module import SASRecModule

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
    module = SASRecModule(num_items=10, max_len=6, encoder=EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.0),
                          **kwargs)
    with torch.no_grad():
        module.model.items.embedding.weight.mul_(4.0)  # spread the scores so ranks differ
    return module.eval()


def eval_batch(stage: str = "test", num_negatives: int = 4) -> dict[str, torch.Tensor]:
    dataset = EvalBatches(tiny_split(), stage, max_len=6, num_negatives=num_negatives, seed=0)
    return dataset[BatchKey(rows=np.arange(len(dataset)), epoch=0, index=0)]


# ---------------------------------------------------------------------------------- full ranking
def python_rank(scores: list[float], target: float) -> int:
    """The documented rule, one candidate at a time.

    Ties and NaN candidates count against the target; a non-finite target ranks after every candidate.
    """
    if not math.isfinite(target):
        return len(scores)
    return sum(1 for s in scores if math.isnan(s) or s >= target)


def brute_force_ranks(scores: np.ndarray, batch: dict, exclude_seen: bool, num_items: int = 10) -> list[int]:
    """Independent reference: per user, every item but padding, the target and (optionally) the history."""
    ranks = []
    for row, target in enumerate(batch["targets"].tolist()):
        history = set(batch["seen_items"][batch["seen_rows"] == row].tolist())
        others = [i for i in range(1, num_items + 1) if i != target and not (exclude_seen and i in history)]
        ranks.append(python_rank([float(scores[row, i]) for i in others], float(scores[row, target])))
    return ranks


def single_rows(batch: dict) -> list[dict]:
    """The batch as one-user batches (a one-row product takes another code path in BLAS)."""
    out = []
    for row in range(len(batch["targets"])):
        keep = batch["seen_rows"] == row
        one = {name: batch[name][row : row + 1] for name in ("input_ids", "users", "targets", "candidates")}
        one["seen_rows"], one["seen_items"] = batch["seen_rows"][keep] * 0, batch["seen_items"][keep]
        out.append(one)
    return out


@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 65536])
@pytest.mark.parametrize("exclude_seen", [True, False])
def test_full_ranking_in_chunks_equals_brute_force(chunk, exclude_seen):
    module = tiny_module(evaluation=EvaluationOptions(protocol="full", exclude_seen=exclude_seen, chunk_size=chunk))
    for stage in ("val", "test"):
        batch = eval_batch(stage)
        with torch.no_grad():
            ranks = module.target_ranks(batch)
            # float64: the reference must not depend on how an fp32 product rounds (the ranks are exact)
            hidden = module.model.last_hidden(batch["input_ids"]).double()
            scores = (hidden @ module.model.output_weight.double().T).numpy()
        assert ranks.tolist() == brute_force_ranks(scores, batch, exclude_seen)


# Output-table rows ``a_i * v``: power-of-two factors scale a dot product exactly, so item i scores
# exactly ``a_i * (h . v)`` whatever the summation order: equal factors are exact ties, NaN is NaN.
FACTORS = [0.0, 1.0, 2.0, 2.0, 4.0, 0.5, 1.0, 8.0, 2.0, 0.25, 1.0]  # index = item id (0 = padding)


def factor_module(factors: list[float], seed: int = 0, hidden_size: int = 8, **kwargs) -> SASRecModule:
    torch.manual_seed(seed)
    encoder = EncoderOptions(hidden_size=hidden_size, num_blocks=1, dropout=0.0, share_item_embedding=False)
    module = SASRecModule(num_items=len(factors) - 1, max_len=6, encoder=encoder, **kwargs).eval()
    direction = torch.randn(hidden_size)
    with torch.no_grad():
        module.model.output_weight.copy_(torch.tensor(factors).unsqueeze(1) * direction)  # (I + 1, d)
    module.direction = direction
    return module


def factor_scores(module: SASRecModule, batch: dict, factors: list[float]) -> np.ndarray:
    """``(B, I + 1)`` reference scores ``a_i * sign(h . v)``: only their order and ties matter."""
    with torch.no_grad():
        hidden = module.model.last_hidden(batch["input_ids"]).double()  # (B, d)
    projection = (hidden @ module.direction.double()).numpy()  # (B,)
    assert np.all(np.abs(projection) > 1e-3)  # a clear sign for every user
    return np.sign(projection)[:, None] * np.array(factors)[None, :]


@pytest.mark.parametrize("chunk", [1, 3, 4, 10, 65536])
@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("nan_items", [(), (7,), (4, 2)])  # item 4 is user 0's test target
def test_full_ranking_counts_ties_and_nan_against_the_target(chunk, exclude_seen, nan_items):
    factors = [math.nan if item in nan_items else factor for item, factor in enumerate(FACTORS)]
    module = factor_module(factors, evaluation=EvaluationOptions(protocol="full", exclude_seen=exclude_seen,
                                                                 chunk_size=chunk))
    for stage in ("val", "test"):
        batch = eval_batch(stage)
        expected = brute_force_ranks(factor_scores(module, batch, factors), batch, exclude_seen)
        with torch.no_grad():
            assert module.target_ranks(batch).tolist() == expected
            assert [module.target_ranks(one).item() for one in single_rows(batch)] == expected


def test_sampled_ranking_counts_ties_and_nan_against_the_target():
    factors = list(FACTORS)
    factors[9] = math.nan
    module = factor_module(factors, evaluation=EvaluationOptions(protocol="sampled"))
    batch = eval_batch("test", num_negatives=4)
    # Hand-made candidates (column 0 = target): ties (items 2, 3, 8 share a factor; 1, 6, 10 too),
    # repeated negatives, a NaN negative (item 9) and a NaN target.
    batch["candidates"] = torch.tensor([[2, 3, 8, 5, 1], [6, 1, 10, 10, 7], [4, 7, 9, 5, 5],
                                        [9, 1, 2, 3, 4], [3, 5, 6, 9, 9]])
    batch["targets"] = batch["candidates"][:, 0].clone()
    scores = factor_scores(module, batch, factors)
    expected = [python_rank([float(scores[row, i]) for i in batch["candidates"][row, 1:].tolist()],
                            float(scores[row, target])) for row, target in enumerate(batch["targets"].tolist())]
    with torch.no_grad():
        assert module.target_ranks(batch).tolist() == expected
    assert expected[3] == 4  # the NaN target ranks last


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("hidden_size", [8, 16, 50])
def test_a_constant_model_gets_the_worst_rank_under_both_protocols(seed, hidden_size):
    """Every item vector equal: every candidate ties with the target, so every rank is the number of candidates."""
    factors = [0.0] + [1.0] * 10
    for stage in ("val", "test"):
        batch = eval_batch(stage, num_negatives=4)
        history = [set(batch["seen_items"][batch["seen_rows"] == row].tolist()) for row in range(5)]
        for chunk in (1, 3, 4, 4096):
            for exclude_seen in (True, False):
                evaluation = EvaluationOptions(protocol="full", chunk_size=chunk, exclude_seen=exclude_seen)
                module = factor_module(factors, seed, hidden_size, evaluation=evaluation)
                expected = [9 - (len(seen - {target}) if exclude_seen else 0)
                            for seen, target in zip(history, batch["targets"].tolist(), strict=True)]
                with torch.no_grad():
                    assert module.target_ranks(batch).tolist() == expected, (chunk, exclude_seen)
                    assert [module.target_ranks(one).item() for one in single_rows(batch)] == expected
        module = factor_module(factors, seed, hidden_size, evaluation=EvaluationOptions(protocol="sampled"))
        with torch.no_grad():
            assert module.target_ranks(batch).tolist() == [4] * 5


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_a_diverged_model_scores_zero_and_is_reported(tmp_path, tiny_txt, protocol):
    """``final_norm.weight`` NaN: every score is NaN, every target ranks last (was rank 0, HR = 1)."""
    data = SASRecDataModule(path=str(tiny_txt), max_len=6, print_statistics=False,
                            loader=LoaderOptions(num_eval_negatives=2))
    module = SASRecModule(num_items=data.num_items, max_len=6, encoder=EncoderOptions(hidden_size=8, num_blocks=1),
                          evaluation=EvaluationOptions(protocol=protocol, top_k=(1, 5)))
    with torch.no_grad():
        module.model.final_norm.weight.fill_(math.nan)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match=r"val: 4 of 4 evaluated users got a non-finite"):
        result = trainer.validate(module, datamodule=data, verbose=False)[0]
    # Every target ranks last. Sampled: after both negatives (rank 2). Full (tiny.txt, 6 items): after
    # every item the user never had besides the target: ranks 2, 4, 3, 4 for users 1-4.
    ranks = [2, 2, 2, 2] if protocol == "sampled" else [2, 4, 3, 4]
    log2 = math.log2
    assert result == pytest.approx({
        "val/hr@1": 0.0, "val/ndcg@1": 0.0, "val/hr@5": 1.0,
        "val/ndcg@5": sum(1 / log2(r + 2) for r in ranks) / 4, "val/mrr": sum(1 / (r + 1) for r in ranks) / 4,
    })


def test_excluding_seen_items_never_worsens_a_rank():
    batch = eval_batch("test")
    with torch.no_grad():
        kept = tiny_module(evaluation=EvaluationOptions(protocol="full", exclude_seen=False)).target_ranks(batch)
        excluded = tiny_module(evaluation=EvaluationOptions(protocol="full", exclude_seen=True)).target_ranks(batch)
    assert torch.all(excluded <= kept)
    # User 2 has seen 6 other items, so at most 3 candidates remain besides the target.
    assert excluded[2] <= 10 - 7


def test_test_stage_history_contains_the_validation_item():
    batch = eval_batch("test")
    # User 0: sequence 1..5, test target 5, history 1..4 (4 = the validation item).
    assert batch["targets"][0] == 5
    assert sorted(batch["seen_items"][batch["seen_rows"] == 0].tolist()) == [1, 2, 3, 4]


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


def _sync_worker(rank: int, world: int, init_file: str, out: str) -> None:
    """One gloo process: update with this rank's ranks (rank 2 has none), compute with the real sync."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    per_rank = {0: ([0, 3], [True, True]), 1: ([12, 5], [True, False]), 2: None}
    metric = RankingMetrics((1, 10), prefix="test/")
    if per_rank[rank] is not None:
        ranks, finite = per_rank[rank]
        metric.update(torch.tensor(ranks), torch.tensor(finite))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank 2 computes before any update, by design
        result = {name: value.item() for name, value in metric.compute().items()}
    result["nonfinite"] = metric.nonfinite.item()  # this rank's own count again after compute
    torch.save(result, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_ranking_metric_syncs_over_processes_even_one_without_users(tmp_path):
    """Three gloo processes, one without any user (fewer users than processes).

    Every rank gets the metrics of all four users, as computed by hand.
    """
    torch.multiprocessing.spawn(_sync_worker, args=(3, str(tmp_path / "init"), str(tmp_path)), nprocs=3)
    ranks = [0, 3, 12, 5]
    log2 = math.log2
    expected = {"test/hr@1": 1 / 4, "test/ndcg@1": 1 / 4, "test/hr@10": 3 / 4,
                "test/ndcg@10": (1 + 1 / log2(5) + 1 / log2(7)) / 4, "test/mrr": sum(1 / (r + 1) for r in ranks) / 4}
    for rank in range(3):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert result.pop("nonfinite") == (1.0 if rank == 1 else 0.0)
        assert result == pytest.approx(expected, rel=1e-6), rank


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


def test_a_rank_without_users_gets_one_empty_batch():
    lengths = np.array([3, 1])  # two users, three processes
    shards = [list(UserBatchSampler(lengths, 4, shuffle=False, num_replicas=3, rank=r)) for r in range(3)]
    assert [[key.rows.tolist() for key in shard] for shard in shards] == [[[0]], [[1]], [[]]]
    assert [len(UserBatchSampler(lengths, 4, False, num_replicas=3, rank=r)) for r in range(3)] == [1, 1, 1]
    empty = EvalBatches(tiny_split(), "test", max_len=6, num_negatives=4)[shards[2][0]]
    assert empty["input_ids"].shape == (0, 1) and empty["candidates"].shape == (0, 5)
    for protocol in ("sampled", "full"):
        assert tiny_module(evaluation=EvaluationOptions(protocol=protocol)).target_ranks(empty).shape == (0,)
    # No user at all: no batch anywhere, so Lightning skips the stage on every process alike.
    assert [len(UserBatchSampler(np.zeros(0, np.int64), 4, False, num_replicas=2, rank=r)) for r in range(2)] == [0, 0]


# ------------------------------------------------------------------------- eval negative sampling
def test_sampling_for_users_past_the_last_one_with_interactions():
    """Rows after the last user with interactions have seen nothing (they used to get that user's count)."""
    index = InteractionIndex(np.array([0, 1, 1, 1]), np.array([2, 1, 2, 3]), num_items=3)  # user 1: every item
    assert index.seen_counts(np.array([0, 1, 2, 5])).tolist() == [1, 3, 0, 0]
    negatives = sample_negatives(index, np.array([2, 5, 0]), (20,), np.random.default_rng(0))
    assert set(negatives[:2].ravel().tolist()) == {1, 2, 3} and set(negatives[2].tolist()) == {1, 3}
    with pytest.raises(ValueError, match=r"user rows \[1\] interacted with all 3 items"):
        sample_negatives(index, np.array([0, 1]), (2,), np.random.default_rng(0))


def split_of(sequences: list[list[int]], num_items: int) -> LeaveOneOutSplit:
    lengths = [len(s) for s in sequences]
    return LeaveOneOutSplit(SequenceData(
        items=np.concatenate(sequences).astype(np.int64), offsets=np.concatenate([[0], np.cumsum(lengths)]),
        user_ids=np.arange(len(sequences)), item_ids=np.arange(num_items + 1),
    ))


def test_users_who_had_every_item_are_left_out_and_short_ones_counted():
    # Four items. User 0 had all four (nothing to rank against), user 1 three (one unseen item),
    # user 2 two (two unseen), user 3 two interactions (training only).
    split = split_of([[1, 2, 3, 4, 1], [2, 3, 4], [1, 2, 1], [3, 4]], num_items=4)
    for stage in ("val", "test"):
        batches = EvalBatches(split, stage, max_len=6, num_negatives=2, seed=0)
        assert batches.rows.tolist() == [1, 2]
        assert (batches.num_without_negatives, batches.num_short_of_negatives, batches.fewest_unseen) == (1, 1, 1)
        assert batches.candidates[0, 1:].tolist() == [1, 1]  # user 1's only unseen item, repeated
        assert set(batches.candidates[1, 1:].tolist()) <= {3, 4}
        assert len(batches.lengths) == 2
    assert EvalBatches(split, "predict", max_len=6).rows.tolist() == [0, 1, 2, 3]  # predict serves everyone



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
        ("gbce", {"t": 0.5}),
        ("sampled_softmax", {"negatives": 16, "sampling": "in_batch"}),
        ("sampled_softmax", {"negatives": 16, "sampling": "popularity"}),
        ("ce", {"chunk_size": 7}),
    ],
)
def test_each_loss_trains_and_logs_protocol_metrics(tmp_path, loss, options):
    data = SASRecDataModule(max_len=8, source=SourceOptions(synthetic_users=100, synthetic_items=100),
                            loader=LoaderOptions(batch_size=16, num_negatives=2, eval_batch_size=16,
                                                 num_eval_negatives=5))
    model = SASRecModule(num_items=data.num_items, max_len=8, loss={"class_path": loss, "init_args": options},
                         encoder=EncoderOptions(hidden_size=8, num_blocks=1),
                         evaluation=EvaluationOptions(protocol="full", top_k=(1, 5, 10, 20)))
    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    # The logged numbers are the formulas applied to brute-force ranks of the trained model.
    batches = data.eval_batches("val")
    batch = batches[BatchKey(np.arange(len(batches)), 0, 0)]
    model.eval()
    with torch.no_grad():
        scores = (model.model.last_hidden(batch["input_ids"]) @ model.model.output_weight.T).numpy()
    ranks = brute_force_ranks(scores, batch, exclude_seen=True, num_items=data.num_items)
    for k in (1, 5, 10, 20):
        assert metrics[f"val/hr@{k}"].item() == pytest.approx(np.mean([r < k for r in ranks]), abs=1e-6)
        ndcg = np.mean([1 / math.log2(r + 2) if r < k else 0.0 for r in ranks])
        assert metrics[f"val/ndcg@{k}"].item() == pytest.approx(ndcg, abs=1e-6)
    assert metrics["val/mrr"].item() == pytest.approx(np.mean([1 / (r + 1) for r in ranks]), abs=1e-6)


def test_ce_logits_block_is_kept_while_training_and_let_go_for_evaluation(tmp_path):
    seen = {"train": [], "val": []}

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["train"].append(pl_module.loss.logits.blocks._block is not None)

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            seen["val"].append(pl_module.loss.logits.blocks._block is not None)

    data = SASRecDataModule(max_len=8, source=SourceOptions(synthetic_users=60, synthetic_items=50),
                            loader=LoaderOptions(batch_size=16, eval_batch_size=16))
    model = SASRecModule(num_items=data.num_items, max_len=8, loss="ce",
                         encoder=EncoderOptions(hidden_size=8, num_blocks=1),
                         evaluation=EvaluationOptions(protocol="full"))
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, limit_val_batches=2, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=[Watch()], default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    assert seen["train"] == [True] * 6, "reused from step to step while training"
    assert seen["val"] == [False] * 4, "not held while evaluating"
    assert model.loss.logits.blocks._block is None, "let go after training"


@pytest.mark.parametrize("name", ["beauty-bce.yaml", "beauty-ce.yaml", "beauty-sampled-softmax.yaml"])
def test_beauty_configs_select_on_validation_ndcg(name):
    config = yaml.safe_load((CONFIGS / name).read_text())
    callbacks = {c["class_path"].rsplit(".", 1)[-1]: c["init_args"] for c in config["trainer"]["callbacks"]}
    assert callbacks["ModelCheckpoint"]["monitor"] == "val/ndcg@10" and callbacks["ModelCheckpoint"]["mode"] == "max"
    assert callbacks["EarlyStopping"]["monitor"] == "val/ndcg@10" and callbacks["EarlyStopping"]["patience"] >= 1
    model = config["model"]["init_args"]
    assert model["evaluation"]["protocol"] == "full" and model["evaluation"]["exclude_seen"] is True
    encoder = model["encoder"]
    assert (encoder["hidden_size"], encoder["num_blocks"], encoder["num_heads"], encoder["dropout"]) == (64, 2, 1, 0.1)
    data = config["data"]["init_args"]
    assert data["max_len"] == 50 and data["loader"]["batch_size"] == 128


# --------------------------------------------------------------------- who can train and be evaluated
def quiet_trainer(tmp_path) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)


def data_and_model(path: Path, **data_options) -> tuple[SASRecDataModule, SASRecModule]:
    data = SASRecDataModule(path=str(path), max_len=6, print_statistics=False, **data_options)
    return data, SASRecModule(num_items=data.num_items, max_len=6, encoder=EncoderOptions(hidden_size=8, num_blocks=1),
                              evaluation=EvaluationOptions(top_k=(1,)))


def test_data_with_no_training_pair_is_an_error_naming_the_file(tmp_path):
    path = write_sasrec_txt(tmp_path / "singles.txt", [(user, user) for user in range(1, 6)])
    data, model = data_and_model(path)
    with pytest.raises(DataError, match=r"singles\.txt: no user has a next-item pair to train on \(5 users, 5 "
                                        r"interactions, at most 1 per user\); SASRec needs a user whose training"):
        quiet_trainer(tmp_path).fit(model, datamodule=data)


@pytest.mark.parametrize("stage", ["validate", "test"])
def test_evaluating_data_where_nobody_can_be_evaluated_is_an_error(tmp_path, stage):
    path = write_sasrec_txt(tmp_path / "pairs.txt", [(1, 1), (1, 2), (2, 2), (2, 3)])
    data, model = data_and_model(path)
    with pytest.raises(DataError, match=rf"pairs\.txt: no user can be evaluated at stage '{stage}'.*at least 3"):
        getattr(quiet_trainer(tmp_path), stage)(model, datamodule=data, verbose=False)


def test_users_never_evaluated_are_counted_in_a_warning(tmp_path, tiny_txt):
    data, model = data_and_model(tiny_txt, loader=LoaderOptions(num_eval_negatives=1))
    with pytest.warns(UserWarning, match=r"tiny\.txt: 4 of 6 users are validated and tested; 1 with exactly 2 "
                                         r"interactions only train \(on one pair\) and 1 with 1 interaction are not"):
        quiet_trainer(tmp_path).validate(model, datamodule=data, verbose=False)


def test_a_user_who_had_every_item_is_left_out_of_evaluation_with_a_warning(tmp_path):
    """It used to crash negative sampling once the cache was written; now it is left out, with a warning."""
    lines = [(1, item) for item in (1, 2, 3, 4)] + [(2, 1), (2, 2), (2, 3), (3, 4), (3, 2), (3, 1)]
    path = write_sasrec_txt(tmp_path / "greedy.txt", lines)
    data, model = data_and_model(path, loader=LoaderOptions(num_eval_negatives=1))
    with pytest.warns(UserWarning, match=r"greedy\.txt: 1 test users interacted with every one of the 4 items.*left "
                                         r"out of test under both protocols"):
        result = quiet_trainer(tmp_path).test(model, datamodule=data, verbose=False)[0]
    assert data.eval_batches("test").rows.tolist() == [1, 2]
    assert set(result) == {"test/hr@1", "test/ndcg@1", "test/mrr"}


def test_more_eval_negatives_than_unseen_items_is_warned_about(tmp_path, tiny_txt):
    data, model = data_and_model(tiny_txt, loader=LoaderOptions(num_eval_negatives=3))
    with pytest.warns(UserWarning, match=r"--data\.loader\.num_eval_negatives is 3, but 2 of 4 val users have fewer "
                                         r"than 3 items they never interacted with \(fewest: 1 of the 6 items\)"):
        quiet_trainer(tmp_path).validate(model, datamodule=data, verbose=False)


def test_a_user_who_had_every_item_in_training_is_an_error_before_training(tmp_path):
    """No training negative can be drawn for them: it used to fail with a traceback on the first batch."""
    lines = [(1, item) for item in (1, 2, 3, 4, 1, 2)] + [(2, 1), (2, 2), (2, 3), (3, 4), (3, 2), (3, 1)]
    data, model = data_and_model(write_sasrec_txt(tmp_path / "all.txt", lines),
                                 loader=LoaderOptions(num_eval_negatives=1))
    with pytest.raises(DataError, match=r"all\.txt: 1 users \(e\.g\. \[1\]\) interacted with every one of the 4 items "
                                        r"in their training part"):
        quiet_trainer(tmp_path).fit(model, datamodule=data)
