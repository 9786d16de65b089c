"""A diverged model stops with one clear error instead of answering: fit, checkpoints, predict, recommend, export.

Divergence is made deterministic by a callback that multiplies every weight by NaN (diverged) or by 1e30
(finite, but every score overflows float32 by twenty orders of magnitude, whatever the kernel's rounding).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.cli.app import cli_main, main
from sasrec_lightning.cli.export import main as export_main
from sasrec_lightning.data.options import CacheOptions, LoaderOptions, SourceOptions
from sasrec_lightning.errors import ModelError
from sasrec_lightning.model.divergence import nonfinite_parameters, training_advice, untrusted_rows
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.serving.export import ServingModel

QUICKSTART = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
TINY = ["--data.source.synthetic_users", "60", "--data.source.synthetic_items", "120", "--data.max_len", "8",
        "--data.cache.use", "false", "--data.print_statistics", "false",
        "--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
OVERFLOW = 1e30  # times every weight: finite weights, scores beyond float32's 3.4e38


def scaled(module: torch.nn.Module, factor: float) -> None:
    """Multiply every weight of ``module`` by ``factor`` in place (NaN: a diverged model)."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.mul_(factor)


def all_finite(state: dict) -> bool:
    return all(torch.isfinite(tensor).all() for tensor in state.values() if tensor.is_floating_point())


class Diverge(L.Callback):
    """Scale every weight by ``factor`` once ``after`` optimizer steps are done.

    Before the next step's batch, or with ``at_batch_end`` right after that step, before a checkpoint
    callback sees it (Lightning runs checkpoint callbacks last).
    """

    def __init__(self, after: int, factor: float, at_batch_end: bool = False) -> None:
        self.after, self.factor, self.at_batch_end = after, factor, at_batch_end

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if not self.at_batch_end and trainer.global_step == self.after:
            scaled(module, self.factor)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.at_batch_end and trainer.global_step == self.after:
            scaled(module, self.factor)


def fit_until_it_fails(tmp_path, callback: L.Callback, checkpoint: ModelCheckpoint, **trainer_options) -> str:
    """Fit a tiny model (4 batches an epoch) for 3 epochs; return the ModelError's message."""
    L.seed_everything(0, verbose=False)
    data = SASRecDataModule(max_len=8, print_statistics=False,
                            source=SourceOptions(synthetic_users=60, synthetic_items=40),
                            loader=LoaderOptions(batch_size=16), cache=CacheOptions(use=False))
    module = SASRecModule(num_items=data.num_items, max_len=8,
                          encoder=EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.1))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, max_epochs=3,
                        num_sanity_val_steps=0, callbacks=[callback, checkpoint], **trainer_options)
    with pytest.raises(ModelError) as error:
        trainer.fit(module, datamodule=data)
    assert trainer.num_training_batches == 4
    return str(error.value)


def saved(folder: Path) -> dict[str, dict]:
    """Every checkpoint in ``folder``, by file name, as its state dict (loaded weights_only)."""
    return {path.name: torch.load(path, weights_only=True)["state_dict"] for path in sorted(folder.glob("*.ckpt"))}


# ----------------------------------------------------------------------------------------------- fit
def test_fit_stops_when_the_training_loss_is_not_finite_and_keeps_the_last_finite_checkpoint(tmp_path):
    """NaN weights from epoch 1's second batch: the loss logged at the epoch's end stops fit, before its checkpoint."""
    folder = tmp_path / "checkpoints"
    message = fit_until_it_fails(tmp_path, Diverge(after=5, factor=math.nan),
                                 ModelCheckpoint(dirpath=folder, save_last=True))
    assert message.startswith("fit: the training loss is nan (its mean over epoch 1's batches 0-3, checked whenever "
                              "it is logged: every --trainer.log_every_n_steps 50 steps"), message
    assert "lower the learning rate (now 0.001: --model.optimization.lr)" in message
    checkpoints = saved(folder)
    assert sorted(checkpoints) == ["epoch=0-step=4.ckpt", "last.ckpt"]  # epoch 1 never saved
    assert all(all_finite(state) for state in checkpoints.values())


@pytest.mark.parametrize(("every", "batches", "checked"), [
    (3, "batches 0-1", "every --trainer.log_every_n_steps 3 steps and at the end of each epoch"),  # global step 5
    (0, "batches 0-3", "at the end of each epoch"),  # barebones: no logging step within an epoch
])
def test_the_loss_is_checked_on_every_logging_step(tmp_path, every, batches, checked):
    """NaN from the first step of epoch 1 (global step 4): found at the first logging step after it."""
    message = fit_until_it_fails(tmp_path, Diverge(after=4, factor=math.nan), ModelCheckpoint(dirpath=tmp_path),
                                 log_every_n_steps=every)
    assert message.startswith(f"fit: the training loss is nan (its mean over epoch 1's {batches}, checked whenever "
                              f"it is logged: {checked}): the model diverged"), message


def test_a_checkpoint_is_never_written_with_non_finite_weights(tmp_path):
    """Weights turned NaN right after step 6, between loss checks: the step-6 checkpoint is refused, unwritten."""
    folder = tmp_path / "checkpoints"
    message = fit_until_it_fails(tmp_path, Diverge(after=6, factor=math.nan, at_batch_end=True),
                                 ModelCheckpoint(dirpath=folder, every_n_train_steps=1, save_top_k=-1,
                                                 save_last=True))
    assert message.startswith(
        "fit: not saving the checkpoint at epoch 1, step 6: the model's weights are not finite (NaN or infinite values "
        "in model.items.embedding.weight, model.position_embedding.weight, model.blocks.0.attention_norm.weight and 13 "
        "more: 16 of 16 weight tensors): the model diverged"), message
    checkpoints = saved(folder)
    assert sorted(checkpoints) == [f"epoch={step // 5}-step={step}.ckpt" for step in range(1, 6)] + ["last.ckpt"]
    assert all(all_finite(state) for state in checkpoints.values())


def test_fit_stops_when_validation_scores_overflow_although_the_weights_are_finite(tmp_path):
    """Finite but huge weights after epoch 1, whose logged loss was finite: validation stops fit.

    It stops before the epoch's checkpoint would replace epoch 0's (``save_top_k=1``).
    """
    folder = tmp_path / "checkpoints"
    diverge = Diverge(after=8, factor=OVERFLOW, at_batch_end=True)
    message = fit_until_it_fails(tmp_path, diverge, ModelCheckpoint(dirpath=folder, save_last=True))
    assert message.startswith("fit: 60 of 60 validation users got a NaN or infinite score for their held-out item at "
                              "epoch 1 (step 8): the model diverged"), message
    checkpoints = saved(folder)
    assert sorted(checkpoints) == ["epoch=0-step=4.ckpt", "last.ckpt"]
    assert all(all_finite(state) for state in checkpoints.values())


def test_fit_with_a_huge_learning_rate_exits_with_one_error_line(tmp_path, capsys):
    """The issue's command: ``fit --model.optimization.lr 1e10`` used to end with exit status 0 and NaN checkpoints."""
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", QUICKSTART, *TINY, "--model.init_args.optimization.lr", "1e10", "--trainer.max_epochs", "3",
              "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(tmp_path),
              "--test_after_fit", "false"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: fit: ") and "now 1e+10" in lines[0], err
    assert "Traceback" not in err
    assert all(all_finite(state) for state in saved(tmp_path / "checkpoints").values())


@pytest.mark.parametrize(("precision", "clip", "expected"), [
    ("32-true", None, "lower the learning rate (now 0.5: --model.optimization.lr) or clip gradients "
                      "(--trainer.gradient_clip_val 1.0)"),
    ("32-true", 1.0, "lower the learning rate (now 0.5: --model.optimization.lr)"),
    # Lightning refuses to clip the fused Adam's gradients under mixed precision: never advised there.
    ("bf16-mixed", None, "lower the learning rate (now 0.5: --model.optimization.lr) or train in full precision "
                         "(--trainer.precision 32-true instead of bf16-mixed)"),
])
def test_the_advice_follows_the_trainer_settings(precision, clip, expected):
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    trainer = SimpleNamespace(optimizers=[optimizer], precision=precision, gradient_clip_val=clip)
    assert training_advice(trainer) == expected


# ------------------------------------------------------------------------------------------- predict
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny quickstart model trained for one epoch."""
    root = tmp_path_factory.mktemp("fit")
    cli_main(["fit", "-c", QUICKSTART, *TINY, "--trainer.max_epochs", "1", "--test_after_fit", "false",
              "--trainer.enable_checkpointing", "true", "--trainer.default_root_dir", str(root)])
    (path,) = root.rglob("*.ckpt")
    return path


def scaled_checkpoint(checkpoint: Path, folder: Path, factor: float) -> Path:
    """A copy of ``checkpoint`` with every weight multiplied by ``factor`` (written by hand: fit would refuse)."""
    state = torch.load(checkpoint, weights_only=True)
    for name, tensor in state["state_dict"].items():
        if tensor.is_floating_point():
            state["state_dict"][name] = tensor * factor
    path = folder / f"scaled-{factor}.ckpt"
    torch.save(state, path)
    return path


def run_failing(command, args, capsys) -> str:
    """Run a console entry point that must exit with status 2; return its one ``error:`` line."""
    with pytest.raises(SystemExit) as exit_info:
        command(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_predict_refuses_non_finite_weights_and_keeps_the_old_output(checkpoint, tmp_path, capsys):
    """The issue's case: a NaN checkpoint used to write empty items/scores for every user, with exit status 0."""
    broken = scaled_checkpoint(checkpoint, tmp_path, math.nan)
    output = tmp_path / "recs.jsonl"
    output.write_text("the old predictions\n")
    line = run_failing(main, ["predict", "-c", QUICKSTART, *TINY, "--ckpt_path", str(broken),
                              "--prediction.output", str(output)], capsys)
    assert line == (
        f"error: predict --ckpt_path {str(broken)!r}: the model's weights are not finite (NaN or infinite values in "
        "model.items.embedding.weight, model.position_embedding.weight, model.blocks.0.attention_norm.weight and "
        "13 more: 16 of 16 weight tensors): every score would be NaN, so nothing was written (an older output file "
        "stays). Predict from a checkpoint saved before the training diverged, or train again with a lower "
        "learning rate")
    assert output.read_text() == "the old predictions\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([broken.name, "recs.jsonl"])  # no stray file


def test_predict_refuses_scores_that_overflow_with_finite_weights(checkpoint, tmp_path, capsys):
    broken = scaled_checkpoint(checkpoint, tmp_path, OVERFLOW)
    output = tmp_path / "recs.parquet"
    output.write_bytes(b"old")
    line = run_failing(main, ["predict", "-c", QUICKSTART, *TINY, "--ckpt_path", str(broken),
                              "--prediction.output", str(output)], capsys)
    assert line.startswith(f"error: predict --ckpt_path {str(broken)!r}: 60 of 60 users got a NaN or infinite "
                           "score among their top items although the weights are finite"), line
    assert output.read_bytes() == b"old"


def test_predict_of_a_healthy_model_still_writes_every_user(checkpoint, tmp_path):
    """Control: the checks pass a trained model (and ``-inf`` slots of users with few items left are no error)."""
    output = tmp_path / "recs.jsonl"
    cli_main(["predict", "-c", QUICKSTART, *TINY, "--ckpt_path", str(checkpoint), "--prediction.output", str(output),
              "--prediction.k", "120"])  # more than any user has left: trailing empty slots
    lines = output.read_text().splitlines()
    assert len(lines) == 60 and all('"items":[]' not in line for line in lines)


# ----------------------------------------------------------------------------------------- recommend
def tiny_module() -> SASRecModule:
    torch.manual_seed(0)
    return SASRecModule(num_items=6, max_len=4, encoder=EncoderOptions(hidden_size=8, num_blocks=1))


def test_recommend_raises_for_non_finite_weights_instead_of_answering_nan():
    module = tiny_module()
    scaled(module, math.nan)
    with pytest.raises(ValueError) as error:
        module.recommend([[1, 2], [3]], k=2)
    assert isinstance(error.value, ModelError)
    assert str(error.value) == (
        "recommend: 2 of 2 sequences got a NaN or infinite score among their top items: the model's weights are not "
        "finite (NaN or infinite values in items.embedding.weight, position_embedding.weight, "
        "blocks.0.attention_norm.weight and 13 more: 16 of 16 weight tensors); the model diverged in training. Load "
        "a checkpoint saved before it diverged, or train again with a lower learning rate")
    fallback = module.recommend([[]], k=2)  # no known item: most-popular items, the model is not asked
    assert fallback.fallback == [True]


def test_recommend_raises_for_scores_that_overflow_with_finite_weights():
    module = tiny_module()
    scaled(module, OVERFLOW)
    with pytest.raises(ModelError, match=r"^recommend: 1 of 1 sequences got a NaN or infinite score among their top "
                                         r"items: the weights are finite but large enough to overflow float32"):
        module.recommend([[1, 2]], k=2, exclude_seen=False)


def test_recommend_raises_when_every_score_overflows_to_minus_inf():
    """Finite weights whose every score is -inf looked like "no item left": recommend answered empty lists."""
    torch.manual_seed(0)
    module = SASRecModule(num_items=6, max_len=4,
                          encoder=EncoderOptions(hidden_size=8, num_blocks=1, share_item_embedding=False))
    with torch.no_grad():
        module.model.final_norm.weight.zero_()
        module.model.final_norm.bias.fill_(1e20)  # every hidden state (1e20, ..., 1e20)
        module.model.output_items.embedding.weight.fill_(-1e20)  # every score -8e40: -inf in float32
    assert all(torch.isfinite(parameter).all() for parameter in module.parameters())
    with pytest.raises(ModelError, match=r"^recommend: 1 of 1 sequences .* the weights are finite but large enough"):
        module.recommend([[1, 2]], k=2)


def test_nonfinite_parameters_names_nan_and_inf_of_every_float_dtype():
    """``aminmax`` of each tensor: NaN, +inf and -inf in fp32 / bf16 / fp64, empty tensors finite, integers skipped."""
    module = torch.nn.Module()
    module.clean = torch.nn.Parameter(torch.ones(2, 3))
    module.low = torch.nn.Parameter(torch.tensor([1.0, -math.inf, 2.0], dtype=torch.bfloat16))
    module.empty = torch.nn.Parameter(torch.zeros(0, 4))  # e.g. a process's empty shard of a small table
    module.high = torch.nn.Parameter(torch.tensor([[1.0, math.inf]], dtype=torch.float64))
    module.nan = torch.nn.Parameter(torch.tensor([math.nan, 0.0]))
    module.register_buffer("counts", torch.tensor([1, 2]))
    assert nonfinite_parameters(module) == ["low", "high", "nan"]


def test_untrusted_rows_tells_empty_slots_from_lost_items():
    """``-inf`` is an empty slot only when the row had fewer than k items left; NaN and +inf never pass."""
    inf, nan = float("inf"), float("nan")
    scores = torch.tensor([[2.0, 1.0, -inf], [2.0, -inf, -inf], [nan, 1.0, 0.0], [inf, 1.0, 0.0], [3.0, 2.0, 1.0]])
    excluded = torch.tensor([2, 2, 0, 0, 0])  # 4 items: rows 0-1 keep at least 2 items, so at most 1 empty slot
    assert untrusted_rows(scores, 4, excluded).tolist() == [False, True, True, True, False]
    assert untrusted_rows(scores, 4).tolist() == [True, True, True, True, False]  # nothing excluded: no empty slot
    assert untrusted_rows(scores, 2, excluded).tolist() == [False, False, True, True, False]  # 2 items: all may go


# -------------------------------------------------------------------------------------------- export
def test_export_refuses_non_finite_weights_and_writes_nothing(checkpoint, tmp_path, capsys):
    broken = scaled_checkpoint(checkpoint, tmp_path, math.nan)
    output = tmp_path / "model.pt"
    line = run_failing(export_main, ["--ckpt_path", str(broken), "--output", str(output)], capsys)
    assert line.startswith(f"error: export --ckpt_path {str(broken)!r}: the model's weights are not finite (NaN or "
                           "infinite values in items.embedding.weight, "), line
    assert "every score of the exported model would be NaN, so nothing was exported" in line
    assert not output.exists() and not output.with_name("model.pt.items.json").exists()


def test_export_refuses_finite_weights_whose_scores_overflow(checkpoint, tmp_path, capsys):
    broken = scaled_checkpoint(checkpoint, tmp_path, OVERFLOW)
    output = tmp_path / "model.pt"
    line = run_failing(export_main, ["--ckpt_path", str(broken), "--output", str(output)], capsys)
    assert line == (f"error: export --ckpt_path {str(broken)!r}: the model's weights are finite, but its scores of an "
                    "example sequence are not (they overflow float32, a diverged model), so nothing was exported. "
                    "Export a checkpoint saved before the training diverged, or train again with a lower learning rate")
    assert not output.exists() and not output.with_name("model.pt.items.json").exists()


def test_serving_model_refuses_a_non_finite_encoder():
    module = tiny_module()
    module.model.final_norm.bias.data[0] = float("inf")
    with pytest.raises(ModelError, match=r"^export: the model's weights are not finite \(NaN or infinite values in "
                                         r"final_norm\.bias: 1 of 16 weight tensors\)"):
        ServingModel(module.model)
