"""The loss interface: shorthands and class paths, BPR, statistics from the data module, negatives on demand."""

from __future__ import annotations

import sys

import lightning as L
import numpy as np
import pytest
import torch

from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.data.options import LoaderOptions
from sasrec_lightning.errors import OptionError
from sasrec_lightning.model.encoder import SASRec
from sasrec_lightning.model.losses import LOSSES, BPRLoss, GBCELoss, Loss, SampledSoftmaxLoss, loss_spec, resolve_loss
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.optimization import OptimizationOptions


def test_bpr_matches_the_written_out_formula_values_and_gradients():
    torch.manual_seed(0)
    encoder = SASRec(num_items=12, max_len=5, options=EncoderOptions(hidden_size=8, num_blocks=1))
    hidden = torch.randn(6, 8, requires_grad=True)  # (N, d)
    targets = torch.tensor([1, 5, 12, 5, 7, 3])  # (N,)
    negatives = torch.tensor([[2, 4, 9], [1, 9, 9], [11, 2, 3], [6, 8, 1], [1, 12, 5], [10, 4, 2]])  # (N, k)
    loss = BPRLoss()(encoder.scoring_items, hidden, targets, negatives)
    loss_grads = torch.autograd.grad(loss, (hidden, encoder.items.embedding.weight))

    # Rendle et al.: mean over positions n and negatives j of -ln sigma(h_n . M[y_n] - h_n . M[j]).
    table = encoder.items.embedding.weight
    terms = []
    for n in range(6):
        for j in negatives[n]:
            difference = hidden[n] @ table[targets[n]] - hidden[n] @ table[j]
            terms.append(-torch.log(1.0 / (1.0 + torch.exp(-difference))))
    reference = torch.stack(terms).mean()
    reference_grads = torch.autograd.grad(reference, (hidden, table))
    torch.testing.assert_close(loss, reference)
    for got, expected in zip(loss_grads, reference_grads, strict=True):
        torch.testing.assert_close(got, expected)
    assert not loss_grads[1][0].any()  # padding row


def test_losses_are_chosen_by_shorthand_or_class_path_and_unknown_ones_are_refused():
    assert {"bce", "gbce", "bpr", "sampled_softmax", "ce"} <= set(LOSSES)
    assert isinstance(resolve_loss("bpr"), BPRLoss)
    assert resolve_loss({"class_path": "gbce", "init_args": {"t": 0.3}}).t == 0.3
    by_path = resolve_loss({"class_path": "sasrec_lightning.model.losses.GBCELoss", "init_args": {"t": 0.4}})
    assert isinstance(by_path, GBCELoss) and by_path.t == 0.4
    assert loss_spec(by_path) == {"class_path": "sasrec_lightning.model.losses.GBCELoss",
                                  "init_args": {"t": 0.4, "shared_negatives": 0, "sharing": "batch"}}
    with pytest.raises(OptionError, match=r"--model.loss 'hinge': expected one of \['bce', 'bpr'"):
        resolve_loss("hinge")
    with pytest.raises(OptionError, match="'hinge': expected one of"):
        SASRecModule(num_items=10, max_len=4, loss="hinge")
    # A class path names an imported Loss: a module that is not imported is never imported (it could run code).
    assert "not_imported_losses" not in sys.modules
    with pytest.raises(OptionError, match="'not_imported_losses.Smooth': expected one of"):
        resolve_loss({"class_path": "not_imported_losses.Smooth"})
    assert "not_imported_losses" not in sys.modules
    with pytest.raises(OptionError, match="'torch.nn.Linear': expected one of"):  # imported, but not a Loss
        resolve_loss({"class_path": "torch.nn.Linear", "init_args": {"in_features": 1, "out_features": 1}})


class _Recording(Loss):
    """A user's loss: mean negative target score; records what the module hands it."""

    needs_negatives = False
    seen: dict = {}

    def setup(self, statistics) -> None:
        type(self).seen["statistics"] = statistics

    def forward(self, items, hidden, targets, negatives, generator=None, rows=None):
        type(self).seen.setdefault("k", set()).add(negatives.size(-1))
        return -(hidden * items(targets)).sum(-1).mean()


class _RecordingWithNegatives(_Recording):
    needs_negatives = True


@pytest.mark.parametrize("loss_class, k", [(_Recording, 0), (_RecordingWithNegatives, 3)])
def test_a_loss_by_class_path_trains_with_data_module_statistics_and_negatives_on_demand(tiny_txt, loss_class, k):
    loss_class.seen = {}
    class_path = f"{loss_class.__module__}.{loss_class.__qualname__}"
    L.seed_everything(0, verbose=False)
    data = SASRecDataModule(path=str(tiny_txt), max_len=4, print_statistics=False,
                            loader=LoaderOptions(batch_size=2, num_negatives=3))
    model = SASRecModule(num_items=data.num_items, max_len=4, loss={"class_path": class_path},
                         encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    assert loss_class.seen["k"] == {k}  # negatives drawn only when the loss asks for them
    statistics = loss_class.seen["statistics"]
    # Training targets by hand (tiny.txt; ids unchanged): user 1 trains on 1 2 3 (targets 2 3),
    # user 3 on 5 1 (target 1), user 5 on 1 6 (target 6); users 2, 4 and 6 have no training pair.
    expected = np.zeros(7, np.int64)
    expected[[2, 3, 1, 6]] = 1
    assert np.array_equal(statistics.item_counts, expected)
    assert statistics.positions_per_batch == pytest.approx(4 / 2)  # 4 positions, 3 users in 2 batches
    assert model.statistics is statistics


def test_popularity_sampling_without_a_data_module_says_what_it_needs(tiny_txt):
    data = SASRecDataModule(path=str(tiny_txt), max_len=4, print_statistics=False, loader=LoaderOptions(batch_size=2))
    data.setup("fit")
    batches = list(data.train_dataloader())
    model = SASRecModule(num_items=data.num_items, max_len=4,
                         loss=SampledSoftmaxLoss(negatives=3, sampling="popularity"),
                         encoder=EncoderOptions(hidden_size=8, num_blocks=1),
                         optimization=OptimizationOptions(loss_normalization="batch"))
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(OptionError, match=r"--model.loss.sampling popularity: needs item frequencies from a data "
                                          r"module with training_statistics\(\)"):
        trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
