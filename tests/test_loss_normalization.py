"""``loss_normalization``: with ``epoch`` every position weighs the same across an epoch.

Length bucketing puts short sequences in batches of their own; a per-batch mean then gives each of
their positions more weight than a position in a batch of long sequences.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.data.batches import TrainingStatistics
from sasrec_lightning.data.options import LoaderOptions
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.optimization import OptimizationOptions


def _batch(num_items: int, lengths: list[int], width: int, seed: int) -> dict[str, torch.Tensor]:
    """Left-padded sequences of the given lengths, one negative per position."""
    generator = torch.Generator().manual_seed(seed)
    size = (len(lengths), width)
    inputs = torch.randint(1, num_items + 1, size, generator=generator)
    targets = torch.randint(1, num_items + 1, size, generator=generator)
    for row, length in enumerate(lengths):
        inputs[row, : width - length] = 0
        targets[row, : width - length] = 0
    negatives = torch.randint(1, num_items + 1, (*size, 1), generator=generator)
    return {"input_ids": inputs, "targets": targets, "negatives": negatives}


def _per_position_bce(model: SASRecModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The paper's BCE of every real position, written out independently of the loss code."""
    hidden = model.model(batch["input_ids"])
    real = batch["targets"] != 0
    table = model.model.items.embedding.weight
    h = hidden[real]  # (N, d)
    positive = (h * table[batch["targets"][real]]).sum(-1)  # (N,)
    negative = (h * table[batch["negatives"][real][:, 0]]).sum(-1)  # (N,)
    return F.softplus(-positive) + F.softplus(negative)


@pytest.mark.parametrize("normalization", ["epoch", "batch"])
def test_batch_losses_weigh_positions_as_configured(normalization):
    torch.manual_seed(0)
    model = SASRecModule(num_items=30, max_len=8, encoder=EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.0),
                         optimization=OptimizationOptions(loss_normalization=normalization))
    model.log = lambda *args, **kwargs: None  # no trainer attached
    short = _batch(30, [1, 2, 1, 2], width=8, seed=1)  # 6 positions
    long = _batch(30, [8, 7, 8, 8], width=8, seed=2)  # 31 positions
    if normalization == "epoch":
        # What the data module hands over at fit start for this two-batch "epoch".
        model.statistics = TrainingStatistics(item_counts=np.zeros(31, np.int64), positions_per_batch=(6 + 31) / 2)
    with torch.no_grad():
        returned = [model.training_step(batch, 0) for batch in (short, long)]
        per_position = [_per_position_bce(model, batch) for batch in (short, long)]
    if normalization == "epoch":
        # Sum over the epoch = mean over all its positions x batches: each position weighs 1 / 37 x 2.
        total = torch.cat(per_position).sum() / (37 / 2)
        torch.testing.assert_close(returned[0] + returned[1], total)
        torch.testing.assert_close(returned[0], per_position[0].sum() / 18.5)
    else:
        torch.testing.assert_close(returned[0], per_position[0].mean())
        torch.testing.assert_close(returned[1], per_position[1].mean())
        # The short batch's 6 positions weigh as much as the long batch's 31.
        assert not torch.allclose(returned[0] + returned[1], torch.cat(per_position).sum() / 18.5)


class _Record(L.Callback):
    def __init__(self) -> None:
        self.positions: list[int] = []
        self.value: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.positions.append(int((batch["targets"] != 0).sum()))
        self.value = pl_module.statistics.positions_per_batch


class _OwnTrainStart(SASRecModule):
    def on_train_start(self) -> None:  # a user's override that does not call super()
        pass


@pytest.mark.parametrize("module_class", [SASRecModule, _OwnTrainStart])
def test_fit_divides_by_the_epoch_mean_positions_per_batch(synthetic_txt, module_class):
    L.seed_everything(0, verbose=False)
    data = SASRecDataModule(path=str(synthetic_txt), max_len=6, print_statistics=False,
                            loader=LoaderOptions(batch_size=16, length_bucketing=True))
    model = module_class(num_items=data.num_items, max_len=6, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    record = _Record()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[record])
    trainer.fit(model, datamodule=data)
    assert len(set(record.positions)) > 1  # bucketed batches differ in their number of positions
    assert record.value == pytest.approx(np.mean(record.positions))


def test_training_without_a_data_module_falls_back_to_the_batch_mean(synthetic_txt):
    L.seed_everything(0, verbose=False)
    data = SASRecDataModule(path=str(synthetic_txt), max_len=6, print_statistics=False,
                            loader=LoaderOptions(batch_size=16))
    data.setup("fit")
    batches = list(data.train_dataloader())
    model = SASRecModule(num_items=data.num_items, max_len=6, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.warns(UserWarning, match=r"--model\.optimization\.loss_normalization epoch needs a data module with "
                                         r"training_statistics\(\) \(SASRecDataModule\); without one each batch's "
                                         r"loss is the mean over its positions"):
        trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert model.statistics is None
