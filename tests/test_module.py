"""SASRecModule: loss, evaluation protocols, the most-popular baseline and a learning check.

The loss ignores padding; evaluation is deterministic under both protocols; the most-popular
baseline equals a brute-force computation; a few epochs beat it on synthetic data.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.data.batches import BatchKey, TrainBatches
from sasrec_lightning.data.options import CacheOptions, LoaderOptions, SourceOptions
from sasrec_lightning.fast.speed import apply_speed_parts
from sasrec_lightning.model.losses import LOSSES
from sasrec_lightning.model.metrics import ranking_metrics
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.baselines import most_popular_metrics
from sasrec_lightning.training.evaluation import EvaluationOptions
from sasrec_lightning.training.optimization import OptimizationOptions


def tiny_trainer(tmp_path, **kwargs) -> L.Trainer:
    options = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
               "enable_model_summary": False, "enable_checkpointing": False, "default_root_dir": tmp_path, **kwargs}
    return L.Trainer(**options)


# ------------------------------------------------------------------------------------------ loss
PADDED_BATCH = {
    "input_ids": torch.tensor([[0, 0, 1, 2, 3], [0, 0, 0, 4, 5], [0, 0, 0, 0, 7]]),
    "targets": torch.tensor([[0, 0, 2, 3, 4], [0, 0, 0, 5, 6], [0, 0, 0, 0, 8]]),
    "negatives": torch.tensor([[[0], [0], [9], [9], [1]], [[0], [0], [0], [1], [2]], [[0], [0], [0], [0], [3]]]),
    "users": torch.tensor([0, 1, 2]),
}


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "speed_parts"])
@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_loss_ignores_padded_positions(loss, fast):
    """NaN hidden states and random negatives at padded positions leave the loss unchanged.

    What every loss reads at a position is its hidden state (and, for bce/gbce, its negatives). The
    plain model, and the same model with the CPU speed parts fit applies (fused losses).
    """
    torch.manual_seed(0)
    spec = {"class_path": loss, "init_args": {"negatives": 4}} if loss == "sampled_softmax" else loss
    module = SASRecModule(num_items=10, max_len=5, encoder=EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.0),
                          loss=spec)
    if fast:
        apply_speed_parts(module.model, module.loss, module.speed, torch.device("cpu"))
    padded = PADDED_BATCH["targets"] == 0  # (B, L)
    poison = {"at": None}  # (B, L) bool: positions whose hidden state the encoder hands over as NaN

    def poisoned(encoder, inputs, hidden):
        if poison["at"] is None:
            return hidden
        return hidden.masked_fill(poison["at"].unsqueeze(-1), float("nan"))  # (B, L, d)

    module.model.register_forward_hook(poisoned)

    def loss_of(batch, at=None):
        poison["at"] = at
        torch.manual_seed(1)  # sampled softmax draws its shared negatives
        return module.training_step(batch, 0).item()

    reference = loss_of(PADDED_BATCH)
    assert math.isfinite(reference)
    assert loss_of(PADDED_BATCH, at=padded) == reference
    changed = {name: value.clone() for name, value in PADDED_BATCH.items()}
    changed["negatives"][padded] = torch.randint(1, 11, changed["negatives"][padded].shape)
    assert loss_of(changed, at=padded) == reference
    # Positive controls: a NaN hidden state at a real position, and (bce/gbce) a changed negative, do count.
    real = torch.zeros_like(padded)
    real[0, -1] = True
    assert math.isnan(loss_of(PADDED_BATCH, at=real))
    if loss in ("bce", "gbce"):
        changed["negatives"][0, -1] = 7
        assert loss_of(changed) != reference


def test_bce_equals_the_paper_formula_over_real_positions_only():
    torch.manual_seed(0)
    module = SASRecModule(num_items=10, max_len=5, encoder=EncoderOptions(hidden_size=8, num_blocks=2, dropout=0.0))
    batch = PADDED_BATCH
    real = batch["targets"] != 0
    hidden = module.model(batch["input_ids"])  # (B, L, d)
    weight = module.model.items.embedding.weight
    positive = (hidden * weight[batch["targets"]]).sum(-1)[real]
    negative = (hidden * weight[batch["negatives"][..., 0]]).sum(-1)[real]
    expected = -(torch.log(torch.sigmoid(positive)).mean() + torch.log(1 - torch.sigmoid(negative)).mean())
    torch.testing.assert_close(module.training_step(batch, 0), expected, rtol=1e-5, atol=1e-6)


def test_real_batches_pad_inputs_and_targets_together(synthetic_txt):
    split = SASRecDataModule(path=str(synthetic_txt), print_statistics=False).split_data
    dataset = TrainBatches(split, max_len=8)
    batch = dataset[BatchKey(rows=np.arange(len(dataset)), epoch=0, index=0)]
    assert torch.equal(batch["input_ids"] == 0, batch["targets"] == 0)
    assert torch.equal(batch["negatives"][..., 0] == 0, batch["targets"] == 0)


def test_padding_to_the_longest_sequence_or_to_max_len_gives_the_same_loss(synthetic_txt):
    split = SASRecDataModule(path=str(synthetic_txt), print_statistics=False).split_data
    key = BatchKey(rows=np.arange(10), epoch=0, index=0)
    narrow = TrainBatches(split, max_len=30)[key]
    wide = TrainBatches(split, max_len=30, pad_to_max_len=True)[key]
    width = narrow["input_ids"].size(1)
    assert width < 30 and wide["input_ids"].size(1) == 30
    assert torch.equal(wide["input_ids"][:, -width:], narrow["input_ids"])
    assert (wide["input_ids"][:, :-width] == 0).all()
    wide["negatives"][:, -width:] = narrow["negatives"]  # same negatives at the real positions
    torch.manual_seed(0)
    module = SASRecModule(num_items=split.data.num_items, max_len=30,
                          encoder=EncoderOptions(hidden_size=8, dropout=0.0))
    torch.testing.assert_close(module.training_step(wide, 0), module.training_step(narrow, 0), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------- evaluation
TOP_K = (1, 5, 10)


@pytest.fixture
def checkpoint(tmp_path, synthetic_txt):
    """A tiny model trained for one epoch on the synthetic file, saved as a checkpoint."""
    L.seed_everything(0)
    data = SASRecDataModule(path=str(synthetic_txt), max_len=10, print_statistics=False,
                            loader=LoaderOptions(batch_size=16))
    model = SASRecModule(num_items=data.num_items, max_len=10, encoder=EncoderOptions(hidden_size=8, num_blocks=1),
                         evaluation=EvaluationOptions(top_k=TOP_K))
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    path = tmp_path / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def load_with_protocol(checkpoint, protocol: str) -> SASRecModule:
    """The checkpoint's model evaluated under ``protocol`` (its other evaluation options as saved)."""
    return SASRecModule.load_from_checkpoint(checkpoint, evaluation=EvaluationOptions(protocol=protocol, top_k=TOP_K))


@pytest.mark.parametrize("protocol", ["sampled", "full"])
def test_testing_a_checkpoint_twice_gives_identical_numbers(tmp_path, synthetic_txt, checkpoint, protocol):
    results = []
    for _ in range(2):
        model = load_with_protocol(checkpoint, protocol)
        assert model.evaluation.protocol == protocol
        data = SASRecDataModule(path=str(synthetic_txt), max_len=10, print_statistics=False,
                                loader=LoaderOptions(eval_batch_size=7))
        results.append(tiny_trainer(tmp_path).test(model, datamodule=data, verbose=False)[0])
    assert results[0] == results[1]
    # ... and they are the written-out formulas on ranks counted by brute force over numpy scores.
    model = load_with_protocol(checkpoint, protocol).eval()
    batches = data.eval_batches("test")
    batch = batches[BatchKey(np.arange(len(batches)), 0, 0)]
    with torch.no_grad():
        hidden = model.model.last_hidden(batch["input_ids"]).numpy()  # (B, d)
    scores = hidden @ model.model.output_weight.detach().numpy().T  # (B, I + 1)
    ranks = []
    for row, target in enumerate(batch["targets"].tolist()):
        if protocol == "sampled":
            others = batch["candidates"][row, 1:].tolist()
        else:
            seen = set(batch["seen_items"][batch["seen_rows"] == row].tolist())
            others = [i for i in range(1, data.num_items + 1) if i != target and i not in seen]
        ranks.append(sum(scores[row, i] >= scores[row, target] for i in others))
    expected = {"test/mrr": np.mean([1 / (r + 1) for r in ranks])}
    for k in (1, 5, 10):
        expected[f"test/hr@{k}"] = np.mean([r < k for r in ranks])
        expected[f"test/ndcg@{k}"] = np.mean([1 / np.log2(r + 2) if r < k else 0.0 for r in ranks])
    assert results[0] == pytest.approx(expected, abs=1e-6)
    assert 0 < expected["test/hr@10"] < 1  # neither trivial nor perfect, so the comparison says something


def test_full_and_sampled_protocols_rank_against_their_candidates(synthetic_txt, checkpoint):
    """Both protocols run on the same checkpoint; each rank equals a count over ``score_all``."""
    data = SASRecDataModule(path=str(synthetic_txt), max_len=10, print_statistics=False)
    batches = data.eval_batches("test")
    batch = batches[BatchKey(np.arange(len(batches)), 0, 0)]
    ranks = {}
    for protocol in ("sampled", "full"):
        model = load_with_protocol(checkpoint, protocol).eval()
        with torch.no_grad():
            ranks[protocol] = model.target_ranks(batch).tolist()
            scores = model.model.score_all(model.model.last_hidden(batch["input_ids"])).numpy()  # (B, I + 1)
    seen = [set() for _ in batch["users"]]
    for row, item in zip(batch["seen_rows"].tolist(), batch["seen_items"].tolist(), strict=True):
        seen[row].add(item)
    for row, target in enumerate(batch["targets"].tolist()):
        negatives = batch["candidates"][row, 1:].tolist()
        assert ranks["sampled"][row] == sum(scores[row, n] >= scores[row, target] for n in negatives)
        others = [i for i in range(1, data.num_items + 1) if i != target and i not in seen[row]]
        assert ranks["full"][row] == sum(scores[row, i] >= scores[row, target] for i in others)


# -------------------------------------------------------------------------------- most popular
def brute_force_most_popular(data: SASRecDataModule, stage: str, protocol: str, exclude_seen: bool, seed: int = 0):
    """Per-user loops over plain Python lists: popularity from training parts, the documented tie-break."""
    split, batches = data.split_data, data.eval_batches(stage)
    sequences = [split.data.items[s:e].tolist() for s, e in zip(split.starts, split.ends, strict=True)]
    train = [split.data.items[s:e].tolist() for s, e in zip(split.starts, split.train_ends, strict=True)]
    num_items = split.data.num_items
    counts = [0.0] * (num_items + 1)
    for sequence in train:
        for item in sequence:
            counts[item] += 1
    jitter = np.random.default_rng(seed).random(num_items + 1) * 0.5  # ties broken by a fixed random order
    score = [counts[i] + jitter[i] for i in range(num_items + 1)]
    ranks = []
    for row, user in enumerate(batches.rows):
        cut = len(sequences[user]) - (2 if stage == "val" else 1)
        history, target = sequences[user][:cut], sequences[user][cut]
        if protocol == "sampled":
            candidates = batches.candidates[row, 1:].tolist()
        else:
            candidates = [i for i in range(1, num_items + 1) if i != target and not (exclude_seen and i in history)]
        ranks.append(sum(score[c] > score[target] for c in candidates))
    metrics = ranking_metrics(torch.tensor(ranks), (1, 10))
    return {name: value.mean().item() for name, value in metrics.items()}


@pytest.mark.parametrize(("protocol", "exclude_seen"), [("sampled", True), ("full", True), ("full", False)])
@pytest.mark.parametrize("stage", ["val", "test"])
def test_most_popular_baseline_equals_brute_force(synthetic_txt, protocol, exclude_seen, stage):
    data = SASRecDataModule(path=str(synthetic_txt), max_len=10, print_statistics=False)
    got = most_popular_metrics(data.eval_batches(stage), protocol, exclude_seen, ks=(1, 10))
    expected = brute_force_most_popular(data, stage, protocol, exclude_seen)
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name


# ----------------------------------------------------------------------------------- learning
def test_a_few_epochs_beat_most_popular_on_synthetic_data(tmp_path):
    L.seed_everything(0)
    data = SASRecDataModule(max_len=20, print_statistics=False,
                            source=SourceOptions(synthetic_users=200, synthetic_items=100),
                            loader=LoaderOptions(batch_size=32))
    model = SASRecModule(num_items=data.num_items, max_len=20,
                         encoder=EncoderOptions(hidden_size=16, num_blocks=1, dropout=0.1),
                         optimization=OptimizationOptions(lr=0.005))
    trainer = tiny_trainer(tmp_path, max_epochs=3, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    result = trainer.test(model, datamodule=data, verbose=False)[0]
    baseline = most_popular_metrics(data.eval_batches("test"), "sampled", ks=(10,), prefix="test/")
    assert result["test/ndcg@10"] > baseline["test/ndcg@10"] + 0.05, (result, baseline)
    assert result["test/hr@10"] > baseline["test/hr@10"]


def test_train_loss_is_the_mean_since_the_last_log_every_log_every_n_steps_and_at_epoch_end(tmp_path):
    """``train/loss``: logged on Lightning's logging steps and the epoch's last batch, as the mean since."""

    class Recorded(SASRecModule):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.step_losses: list[float] = []

        def _log_train_loss(self, loss, batch_idx):
            self.step_losses.append(float(loss))
            super()._log_train_loss(loss, batch_idx)

    class Watch(L.Callback):
        def __init__(self):
            self.logged: list[float | None] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            value = trainer.callback_metrics.get("train/loss")
            self.logged.append(None if value is None else float(value))

    L.seed_everything(0, verbose=False)
    data = SASRecDataModule(max_len=8, print_statistics=False,
                            source=SourceOptions(synthetic_users=120, synthetic_items=40),
                            loader=LoaderOptions(batch_size=16), cache=CacheOptions(use=False))
    module = Recorded(num_items=data.num_items, max_len=8,
                      encoder=EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.1))
    watch = Watch()
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_val_batches=0, log_every_n_steps=3, callbacks=[watch])
    trainer.fit(module, datamodule=data)

    per_epoch = trainer.num_training_batches
    assert per_epoch % 3 != 0  # so the epoch's last batch is a logging step of its own
    expected, since, current = [], [], None
    for step, loss in enumerate(module.step_losses):
        batch_idx = step % per_epoch
        since = [] if batch_idx == 0 else since  # a new epoch starts a new mean
        since.append(loss)
        if (step + 1) % 3 == 0 or batch_idx + 1 == per_epoch:
            current, since = sum(since) / len(since), []
        expected.append(current)
    assert len(watch.logged) == len(expected) == 2 * per_epoch
    for step, (got, want) in enumerate(zip(watch.logged, expected, strict=True)):
        assert got == pytest.approx(want, rel=1e-6) if want is not None else got is None, step


def test_train_loss_reaches_the_logger_every_epoch_when_an_epoch_is_shorter_than_log_every_n_steps(tmp_path):
    """Lightning writes step values to its loggers only every ``log_every_n_steps``; each epoch's loss still arrives."""
    from lightning.pytorch.loggers import CSVLogger

    L.seed_everything(0, verbose=False)
    data = SASRecDataModule(max_len=8, print_statistics=False,
                            source=SourceOptions(synthetic_users=120, synthetic_items=40),
                            loader=LoaderOptions(batch_size=16), cache=CacheOptions(use=False))
    module = SASRecModule(num_items=data.num_items, max_len=8,
                          encoder=EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.1))
    logger = CSVLogger(tmp_path, name="run")
    trainer = tiny_trainer(tmp_path, max_epochs=3, limit_val_batches=0, log_every_n_steps=50, logger=logger)
    trainer.fit(module, datamodule=data)
    assert trainer.num_training_batches < 50  # no logging step inside an epoch

    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("train/loss")]
    per_epoch = trainer.num_training_batches
    assert [int(row["step"]) for row in rows] == [per_epoch * epoch - 1 for epoch in (1, 2, 3)]
    assert all(math.isfinite(float(row["train/loss"])) and float(row["train/loss"]) > 0 for row in rows)
