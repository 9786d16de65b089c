"""The two public seams, each from its worked example in ``docs/examples/`` (separate files, as a user writes them).

* a loss defined outside the package, chosen from a YAML config by class path;
* a data module written only from the batch contract (``sasrec_lightning.data.contract``), and the one
  error or warning a broken or partial one gets.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import lightning as L
import pytest
import torch

from conftest import CONFIGS, REPO, TINY_TRAINER
from sasrec_lightning import SASRecModule
from sasrec_lightning.cli.app import print_test_summary
from sasrec_lightning.errors import DataError

EXAMPLES = REPO / "docs" / "examples"
TINY = ["--data.init_args.source.synthetic_users", "60", "--data.init_args.source.synthetic_items", "40",
        "--data.init_args.max_len", "8", "--model.init_args.encoder.hidden_size", "8",
        "--model.init_args.encoder.num_blocks", "1", "--trainer.max_epochs", "2", *TINY_TRAINER]


def _example(name: str):
    """Import ``docs/examples/<name>.py`` as the user's own module ``name``."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _cli(args: list[str], cwd, pythonpath: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, "-m", "sasrec_lightning.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------------- a loss of yours
def test_a_loss_from_a_file_outside_the_package_is_chosen_by_class_path_and_trains(tmp_path):
    args = ["fit", "-c", str(CONFIGS / "quickstart.yaml"), "-c", str(EXAMPLES / "smooth_bce.yaml"), *TINY,
            "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(tmp_path)]
    result = _cli(args, tmp_path, str(EXAMPLES))
    assert result.returncode == 0, result.stderr[-3000:]
    [checkpoint] = (tmp_path / "checkpoints").glob("*.ckpt")
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["hyper_parameters"]["loss"] == {"class_path": "smooth_bce.SmoothBCE", "init_args": {"smoothing": 0.05}}
    # The checkpoint rebuilds the user's loss (its module imported), and the training moved the weights.
    smooth_bce = _example("smooth_bce")
    model = SASRecModule.load_from_checkpoint(checkpoint, weights_only=True)
    assert isinstance(model.loss, smooth_bce.SmoothBCE) and model.loss.smoothing == 0.05
    fresh = SASRecModule(num_items=model.model.num_items, max_len=8, encoder={"hidden_size": 8, "num_blocks": 1})
    assert not torch.equal(model.model.items.table(), fresh.model.items.table())

    # Without its folder on PYTHONPATH: one error line naming the class path, nothing run.
    missing = _cli(args, tmp_path, None)
    errors = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert missing.returncode == 2 and len(errors) == 1 and "smooth_bce.SmoothBCE" in errors[0], missing.stderr[-2000:]
    assert "Traceback" not in missing.stderr


def test_the_example_loss_is_the_smoothed_bce_formula():
    smooth_bce = _example("smooth_bce")
    torch.manual_seed(0)
    table = torch.nn.Embedding(6, 4)
    hidden, targets, negatives = torch.randn(3, 4), torch.tensor([1, 2, 5]), torch.tensor([[3, 4], [1, 5], [2, 2]])
    value = smooth_bce.SmoothBCE(0.1)(table, hidden, targets, negatives)
    positive = torch.sigmoid((hidden * table.weight[targets]).sum(-1))
    negative = torch.sigmoid(torch.einsum("nd,nkd->nk", hidden, table.weight[negatives]))
    expected = -(0.9 * positive.log() + 0.1 * (1 - positive).log()).mean() - (
        0.1 * negative.log() + 0.9 * (1 - negative).log()).mean()
    torch.testing.assert_close(value, expected)


# -------------------------------------------------------------------------------- a data module of yours
def test_a_data_module_written_from_the_contract_trains_and_evaluates(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLES / "minimal_datamodule.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    found = re.search(r"test NDCG@10 ([0-9.]+) HR@10 ([0-9.]+)", result.stdout)
    assert found, result.stdout[-2000:]
    # Chance is 10 of 101 candidates (HR@10 ~0.1); "the next item is i + 1" is learnt in 8 epochs.
    assert float(found.group(2)) > 0.5 and float(found.group(1)) > 0.3, found.group(0)
    assert "UserWarning" not in result.stderr and "will override existing callbacks" not in result.stderr


class ToyData(_example("minimal_datamodule").InMemorySequences):
    """The example's data module with its own toy sequences (what a CLI run of a user's data module looks like)."""

    def __init__(self, max_len: int = 12, users: int = 80) -> None:
        generator = torch.Generator().manual_seed(1)
        starts = torch.randint(1, 30, (users,), generator=generator).tolist()
        super().__init__([list(range(start, start + 8)) for start in starts], num_items=40, max_len=max_len)


def _fit(data, **options) -> L.Trainer:
    model = SASRecModule(num_items=data.num_items, max_len=data.max_len, encoder={"hidden_size": 8, "num_blocks": 1},
                         **options)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_train_batches=2,
                        limit_val_batches=1)
    trainer.fit(model, datamodule=data)
    return trainer


class _Without(ToyData):
    """``ToyData`` whose batches lose ``key`` (or get it replaced by ``value``) in ``stage``."""

    def __init__(self, stage: str, key: str, value=None) -> None:
        super().__init__()
        self.stage, self.key, self.value = stage, key, value

    def _edit(self, batch: dict) -> dict:
        batch = dict(batch)
        if self.value is None:
            batch.pop(self.key)
        else:
            batch[self.key] = self.value(batch[self.key])
        return batch

    def _training_batch(self, users):
        batch = super()._training_batch(users)
        return self._edit(batch) if self.stage == "train" else batch

    def _evaluation_batch(self, users, held_out):
        batch = super()._evaluation_batch(users, held_out)
        return self._edit(batch) if self.stage == "validate" else batch


@pytest.mark.parametrize(("stage", "key", "value", "message"), [
    ("train", "negatives", None, r"the first train batch from _Without has no key 'negatives' \(the loss draws its "
                                 r"negatives from the batch \(needs_negatives\)\); it has \['input_ids', 'targets'\]"),
    ("train", "targets", lambda t: t.float(), r"'targets' has dtype torch.float32; expected a \(B, L\) int64 tensor"),
    ("train", "targets", lambda t: t[:, 1:], r"'targets' has shape \(32, 11\) and 'input_ids' \(32, 12\); "
                                             r"expected a \(B, L\) int64 tensor"),
    ("train", "input_ids", lambda t: t + 40, r"'input_ids' holds item ids from 40 to [0-9]+; expected ids in 0..40"),
    ("validate", "candidates", None, r"the first validate batch from _Without has no key 'candidates' "
                                     r"\(evaluation.protocol sampled ranks the target among them\)"),
    ("validate", "targets", lambda t: t.unsqueeze(1), r"'targets' has shape \(32, 1\) and 'input_ids' \(32, 12\); "
                                                      r"expected a \(B,\) int64"),
], ids=["no-negatives", "float-targets", "short-targets", "ids-above-catalogue", "no-candidates", "2d-targets"])
def test_a_batch_that_breaks_the_contract_gets_one_error_naming_the_key(stage, key, value, message):
    with pytest.raises(DataError, match=message):
        _fit(_Without(stage, key, value))


def test_negatives_are_optional_for_a_loss_that_does_not_need_them_and_full_ranking_needs_the_history():
    _fit(_Without("train", "negatives"), loss={"class_path": "sampled_softmax", "init_args": {"negatives": 5}})
    with pytest.raises(DataError, match=r"has no key 'seen_rows' \(exclude_seen leaves each user's history out\)"):
        _fit(ToyData(), evaluation={"protocol": "full"})
    _fit(ToyData(), evaluation={"protocol": "full", "exclude_seen": False})  # no history needed


def test_what_a_partial_data_module_lacks_degrades_with_one_warning_each(tmp_path, capsys):
    with pytest.warns(UserWarning,
                      match="loss_normalization epoch needs a data module with training_statistics") as caught:
        trainer = _fit(ToyData())
    assert sum("training_statistics" in str(w.message) for w in caught) == 1
    model = trainer.lightning_module
    assert model.item_vocabulary is None  # no item_ids(): recommend answers in internal ids
    answer = model.recommend([[3, 4, 5]], k=3)
    assert all(1 <= item <= 40 for item in answer.items[0])

    # The test summary prints the metrics without the most-popular baseline, which needs eval_batches(), and says so.
    results = trainer.test(model, datamodule=trainer.datamodule, verbose=False)[0]
    with pytest.warns(UserWarning) as caught:
        print_test_summary(results, model.evaluation, trainer.datamodule)
    assert [str(w.message) for w in caught] == ["ToyData has no eval_batches(stage): the most-popular baseline is not "
                                                 "computed (see sasrec_lightning.data.contract)"]
    printed = capsys.readouterr().out
    assert re.search(r"\[sasrec-lightning\] test \(sampled protocol\): NDCG@10 [0-9.]+, HR@10 [0-9.]+\n", printed)
    assert "most-popular" not in printed
