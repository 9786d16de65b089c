"""Checkpoint and resume: an interrupted run resumed from ``last`` ends with the same weights.

The interruption is a crash mid-epoch (an exception raised before step ``k + 1``) with a
``last.ckpt`` written after every step, i.e. what a killed job leaves behind. Dropout is on, so
this also checks that the torch RNG and the batch order / negatives line up after the restart.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.data.loaders import ResumableLoader, batches_done_this_epoch
from sasrec_lightning.data.options import LoaderOptions
from sasrec_lightning.model.options import EncoderOptions

MAX_STEPS = 14  # 80 users / batch 8 -> 10 batches per epoch: the crash and the end fall mid-epoch


class Crash(L.Callback):
    """Raise before training step ``at_step + 1`` (after step ``at_step`` was checkpointed)."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError("simulated crash")


def _run(data_path, root, callbacks=(), ckpt_path=None, max_steps=MAX_STEPS, loss="bce"):
    L.seed_everything(7, verbose=False)
    data = SASRecDataModule(path=str(data_path), max_len=8, seed=7, print_statistics=False,
                            loader=LoaderOptions(batch_size=8, eval_batch_size=16))
    spec = {"class_path": loss, "init_args": {"negatives": 10}} if loss == "sampled_softmax" else loss
    model = SASRecModule(num_items=data.num_items, max_len=8, encoder=EncoderOptions(hidden_size=8, num_blocks=1,
                                                                                     dropout=0.3), loss=spec)
    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = L.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[checkpoint, *callbacks], num_sanity_val_steps=0,
        check_val_every_n_epoch=1, default_root_dir=root,
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.parametrize("crash_at", [3, 12])  # inside the first epoch / inside the second
def test_resume_after_crash_matches_uninterrupted_run(synthetic_txt, tmp_path, crash_at):
    reference_trainer, reference = _run(synthetic_txt, tmp_path / "reference")

    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(synthetic_txt, tmp_path / "crashed", callbacks=[Crash(crash_at)])
    state = torch.load(tmp_path / "crashed" / "checkpoints" / "last.ckpt", weights_only=True)  # the safe path
    assert state["global_step"] == crash_at
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] == crash_at % 10

    trainer, resumed = _run(synthetic_txt, tmp_path / "crashed", ckpt_path="last")
    assert trainer.global_step == MAX_STEPS
    assert trainer.current_epoch == reference_trainer.current_epoch
    for (name, expected), actual in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=f"{name} differs after resume")
    expected_adam = trainer.optimizers[0].state_dict()["state"]
    assert all(int(state["step"]) == MAX_STEPS for state in expected_adam.values())


def test_resume_replays_no_batch(synthetic_txt, tmp_path):
    """The resumed epoch trains exactly on the batches the crashed run had not reached."""
    seen: dict[str, list[tuple[int, int]]] = {"reference": [], "resumed": []}

    class Record(L.Callback):
        def __init__(self, name):
            self.name = name

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen[self.name].append((trainer.current_epoch, int(batch["users"].sum())))

    _run(synthetic_txt, tmp_path / "reference", callbacks=[Record("reference")])
    with pytest.raises(RuntimeError):
        _run(synthetic_txt, tmp_path / "crashed", callbacks=[Crash(5)])
    _run(synthetic_txt, tmp_path / "crashed", callbacks=[Record("resumed")], ckpt_path="last")
    assert seen["resumed"] == seen["reference"][5:]


def test_train_loader_is_resumable_and_eval_loaders_are_plain(synthetic_txt):
    data = SASRecDataModule(path=str(synthetic_txt), max_len=8, print_statistics=False,
                            loader=LoaderOptions(batch_size=8))
    loader = data.train_dataloader()
    assert isinstance(loader, ResumableLoader)
    assert loader.state_dict() == {"epoch": 0, "batches_done": 0}
    full = [key.index for key in loader.sampler]
    loader.load_state_dict({"epoch": 0, "batches_done": 4})
    assert [key.index for key in loader.sampler] == full[4:]
    assert [key.index for key in loader.sampler] == full  # the skip applies once
    loader.load_state_dict({"epoch": 3, "batches_done": 4})
    assert [key.index for key in loader.sampler] == full  # another epoch: nothing skipped
    assert not isinstance(data.val_dataloader(), ResumableLoader)


class _Counts(L.Callback):
    """Record the count read by the one private-API access after every training batch."""

    def __init__(self) -> None:
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append((trainer.current_epoch, batches_done_this_epoch(trainer)))


def test_batches_done_follows_lightning_or_fails_loudly(synthetic_txt, tmp_path):
    """The only private Lightning attribute the package reads: right after every batch, or a clear error."""
    counts = _Counts()
    data = SASRecDataModule(path=str(synthetic_txt), max_len=8, print_statistics=False,
                            loader=LoaderOptions(batch_size=8))
    model = SASRecModule(num_items=data.num_items, max_len=8, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    trainer = L.Trainer(max_steps=13, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[counts],
                        limit_val_batches=0, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=data)
    # 80 users in batches of 8: 10 batches per epoch, so steps 11-13 are batches 1-3 of epoch 1.
    assert counts.seen == [(0, done) for done in range(1, 11)] + [(1, done) for done in range(1, 4)]
    with pytest.raises(RuntimeError, match=r"Lightning .* has no trainer\.fit_loop\.epoch_loop\.batch_progress"):
        batches_done_this_epoch(object())
