"""Resume: an interrupt saves ``last.ckpt``, ``fit`` ends with it final, a resumed epoch keeps its name.

Ctrl-C and SIGTERM save ``last.ckpt`` where ``fit`` stopped; after ``fit`` it is the final state; a resumed
epoch is named in the progress bar.

Before (0.3.0): an interrupt saved nothing, so ``fit --ckpt_path last`` went back to the last periodic
``last.ckpt`` (with ``configs/trainer/resumable.yaml``'s 500 steps, none in a small run); a run resumed
mid-epoch showed ``Training: 11/?`` instead of ``Epoch 0``; and after a complete ``fit`` ``last.ckpt`` held
the last periodic step, not the final one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import sasrec_lightning
from conftest import CONFIGS
from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.cli.app import cli_main
from sasrec_lightning.data.options import LoaderOptions
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.callbacks import SaveOnInterrupt

# A callback of the user's own file: writes the global step after each training batch, then each step takes
# a little longer, so the signal lands mid-epoch.
MARKER = textwrap.dedent(
    """
    import os, time
    import lightning as L


    class Marker(L.Callback):
        def __init__(self, folder: str) -> None:
            self.folder = folder

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            with open(os.path.join(self.folder, "step.tmp"), "w") as handle:
                handle.write(str(trainer.global_step))
            os.replace(os.path.join(self.folder, "step.tmp"), os.path.join(self.folder, "step"))
            time.sleep(0.05)
    """
)
BATCHES = 38  # 300 synthetic users / batch 8
RUN = ["-c", str(CONFIGS / "quickstart.yaml"), "-c", str(CONFIGS / "trainer" / "resumable.yaml"),
       "--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1", "--data.max_len", "8",
       "--data.source.synthetic_users", "300", "--data.loader.batch_size", "8", "--data.print_statistics", "false",
       "--trainer.max_epochs", "2", "--trainer.num_sanity_val_steps", "0", "--trainer.enable_checkpointing", "true",
       "--trainer.enable_model_summary", "false", "--test_after_fit", "false"]


def _saved_step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 1), (signal.SIGTERM, 128 + signal.SIGTERM)],
                         ids=["ctrl-c", "sigterm"])
def test_an_interrupt_saves_last_ckpt_and_fit_ckpt_path_last_continues_from_there(tmp_path, capsys, monkeypatch,
                                                                                   signum, status):
    (tmp_path / "marker.py").write_text(MARKER)
    package_root = str(Path(sasrec_lightning.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([package_root, str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", "sasrec_lightning.cli", "fit", *RUN, "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks+=marker.Marker", "--trainer.callbacks.folder", str(tmp_path)]
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    step_file, deadline = tmp_path / "step", time.monotonic() + 240
    while not (step_file.exists() and int(step_file.read_text()) >= 5):  # mid-epoch 0, far from a periodic save
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"training did not start: {process.communicate()[1][-3000:]}")
        time.sleep(0.1)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == status, stderr[-3000:]
    done = int(step_file.read_text())
    assert 5 <= done < BATCHES
    last = tmp_path / "checkpoints" / "last" / "last.ckpt"
    assert _saved_step(last) == done, stderr[-3000:]  # the interrupted step, not a periodic one (every 500)
    assert f"saved {last} at the interrupt (step {done})" in stderr

    # Resume with a progress bar: the resumed epoch is "Epoch 0" from batch `done`, and last.ckpt ends final.
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    cli = cli_main(["fit", *RUN, "--ckpt_path", "last", "--trainer.enable_progress_bar", "true"])
    assert cli.trainer.global_step == 2 * BATCHES
    assert _saved_step(last) == 2 * BATCHES
    bar = capsys.readouterr().out.replace("\r", "\n")
    assert re.search(rf"^Epoch 0: +\d+%\|[^|]*\| {done + 1}/{BATCHES} ", bar, re.M), bar[:2000]
    assert not re.search(r"^Training: .*\| [1-9]\d*/", bar, re.M), bar[:2000]  # 0.3.0: "Training: 6/?"


def test_after_a_complete_fit_last_ckpt_holds_the_final_step(tmp_path, monkeypatch):
    """Periodic saves every 5 steps, 38 steps: 0.3.0's last.ckpt stayed at step 35."""
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["fit", *RUN, "--trainer.max_epochs", "1", "--trainer.callbacks.every_n_train_steps", "5",
                    "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.global_step == BATCHES
    assert _saved_step(tmp_path / "checkpoints" / "last" / "last.ckpt") == BATCHES


def test_non_finite_weights_are_not_saved_at_an_interrupt(synthetic_txt, tmp_path):
    """The weights diverge and Ctrl-C comes at the same batch: the last.ckpt saved before stays."""

    class DivergeAndInterrupt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    pl_module.model.items.embedding.weight[1, 0] = float("nan")
                save.interrupted = True  # as a Ctrl-C does

    save = SaveOnInterrupt()
    data = SASRecDataModule(path=str(synthetic_txt), max_len=8, print_statistics=False,
                            loader=LoaderOptions(batch_size=8, eval_batch_size=16))
    model = SASRecModule(num_items=data.num_items, max_len=8, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=2)
    trainer = L.Trainer(max_steps=20, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[DivergeAndInterrupt(), save, checkpoint])
    with pytest.warns(UserWarning, match=r"not saving last.ckpt at the interrupt: the model's weights are not finite "
                      r"\(model.items.embedding.weight: 1 of \d+ weight tensors\)"), pytest.raises(SystemExit):
        trainer.fit(model, datamodule=data)
    assert _saved_step(tmp_path / "last.ckpt") == 2


def test_the_version_counter_option_is_read_where_lightning_keeps_it():
    from sasrec_lightning.training.callbacks import _version_counter_on

    off = ModelCheckpoint(enable_version_counter=False)
    assert _version_counter_on(ModelCheckpoint()) and not _version_counter_on(off)
    assert off._enable_version_counter is False  # (fails when Lightning moves it)
