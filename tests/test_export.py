"""TorchScript and ONNX exports score exactly like the PyTorch model, padded and variable-length input included."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from sasrec_lightning import SASRec, SASRecModule
from sasrec_lightning.cli.export import export_checkpoint, main
from sasrec_lightning.fast.speed import SpeedOptions, apply_speed_parts
from sasrec_lightning.model.losses import BCELoss
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.serving.export import ServingModel, export_onnx, export_torchscript

NUM_ITEMS, MAX_LEN = 40, 6


@pytest.fixture(scope="module", params=["paper", "reference", "paper-speed_parts"])
def encoder(request) -> SASRec:
    """Both block layouts (the reference one has no attention output projection and a second input).

    ``speed_parts``: the encoder as ``fit`` leaves it on CPU, with the speed parts swapped in (pooled
    dropout, row-gradient item table).
    """
    torch.manual_seed(0)
    layout, _, speed_parts = request.param.partition("-")
    options = EncoderOptions(hidden_size=16, num_blocks=2, num_heads=2, dropout=0.3, block_layout=layout)
    encoder = SASRec(NUM_ITEMS, MAX_LEN, options)
    if speed_parts:
        applied = apply_speed_parts(encoder, BCELoss(), SpeedOptions(), torch.device("cpu"))
        assert applied[:2] == ["pooled_dropout", "row_gradients"]
    return encoder.eval()


def random_inputs() -> list[torch.Tensor]:
    """Random batches of several sizes and widths, with left padding and one fully padded row."""
    generator = torch.Generator().manual_seed(1)
    batches = []
    for batch, length in [(3, MAX_LEN), (5, 3), (1, 1), (4, MAX_LEN)]:
        ids = torch.randint(1, NUM_ITEMS + 1, (batch, length), generator=generator)
        pad = torch.randint(0, length + 1, (batch,), generator=generator)  # (B,) padded columns per row
        ids[torch.arange(length) < pad[:, None]] = 0
        batches.append(ids)
    batches[-1][0] = 0  # a sequence that is all padding
    return batches


def reference(encoder: SASRec, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        hidden = encoder(ids)[:, -1]
        return encoder.score_all(hidden), hidden


def assert_scores_match(scores, hidden, expected_scores, expected_hidden):
    scores, hidden = torch.as_tensor(scores), torch.as_tensor(hidden)
    assert torch.isneginf(scores[:, 0]).all()  # padding is never recommended
    torch.testing.assert_close(scores[:, 1:], expected_scores[:, 1:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hidden, expected_hidden, rtol=1e-4, atol=1e-5)


def test_serving_model_equals_the_encoder_and_leaves_it_training(encoder):
    encoder.train()
    serving = ServingModel(encoder)
    encoder.eval()
    assert not serving.training
    for ids in random_inputs():
        assert_scores_match(*serving(ids), *reference(encoder, ids))


def test_torchscript_export_matches_pytorch(encoder, tmp_path):
    path = export_torchscript(encoder, tmp_path / "model.pt")
    loaded = torch.jit.load(str(path))
    for ids in random_inputs():
        with torch.no_grad():
            assert_scores_match(*loaded(ids), *reference(encoder, ids))


def test_onnx_export_matches_pytorch(encoder, tmp_path):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    path = export_onnx(encoder, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["scores", "user_vectors"]
    for ids in random_inputs():
        scores, hidden = session.run(None, {"input_ids": ids.numpy()})
        assert_scores_match(scores, hidden, *reference(encoder, ids))


def tiny_checkpoint(tmp_path) -> tuple[Path, SASRecModule]:
    """A ``SASRecModule`` (5 items, ``max_len`` 4, item ids) saved as ``fit`` saves it: the file and the module."""
    import lightning as L

    torch.manual_seed(0)
    module = SASRecModule(num_items=5, max_len=4, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    module.set_item_vocabulary(["", "a", "b", "c", "d", "e"], [0, 1, 2, 3, 4, 5])
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    return tmp_path / "model.ckpt", module


def test_export_command_writes_model_and_item_ids(tmp_path, capsys):
    _, module = tiny_checkpoint(tmp_path)
    main(["--ckpt_path", str(tmp_path / "model.ckpt"), "--output", str(tmp_path / "serve" / "model.pt")])
    assert "model.pt.items.json" in capsys.readouterr().out
    assert json.loads((tmp_path / "serve" / "model.pt.items.json").read_text()) == ["", "a", "b", "c", "d", "e"]
    loaded = torch.jit.load(str(tmp_path / "serve" / "model.pt"))
    ids = torch.tensor([[0, 0, 2, 3]])
    assert_scores_match(*loaded(ids), *reference(module.model.eval(), ids))
    with pytest.raises(ValueError, match=r"expected \.onnx"):
        export_checkpoint(tmp_path / "model.ckpt", tmp_path / "model.bin")


def longer_than_max_len() -> list[torch.Tensor]:
    """Batches wider than ``MAX_LEN``: some rows longer than the model's window, one left-padded, one all padding."""
    generator = torch.Generator().manual_seed(2)
    long = torch.randint(1, NUM_ITEMS + 1, (4, MAX_LEN + 5), generator=generator)  # (4, n + 5)
    long[1, :3] = 0  # still longer than n after its padding
    long[2, : MAX_LEN + 3] = 0  # 2 items: shorter than n, in a wide batch
    long[3] = 0
    return [long, torch.randint(1, NUM_ITEMS + 1, (1, 3 * MAX_LEN), generator=generator)]


@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_exports_keep_the_last_max_len_items_of_a_longer_sequence(encoder, format, tmp_path):
    """As in training, a sequence longer than ``max_len`` is scored on its last ``max_len`` items."""
    if format == "onnx":
        pytest.importorskip("onnxscript")
        session = pytest.importorskip("onnxruntime").InferenceSession(
            str(export_onnx(encoder, tmp_path / "model.onnx")), providers=["CPUExecutionProvider"])
        run = lambda ids: session.run(None, {"input_ids": ids.numpy()})  # noqa: E731
    else:
        run = torch.jit.load(str(export_torchscript(encoder, tmp_path / "model.pt")))
    for ids in longer_than_max_len():
        assert_scores_match(*run(ids), *reference(encoder, ids[:, -MAX_LEN:]))


def test_exported_outputs_do_not_require_grad(encoder, tmp_path):
    """A service calls the model outside ``torch.no_grad()``: no autograd graph is built or returned."""
    encoder.train()
    loaded = torch.jit.load(str(export_torchscript(encoder, tmp_path / "model.pt")))
    serving = ServingModel(encoder)
    encoder.eval()
    ids = random_inputs()[0]
    for scores, hidden in (loaded(ids), serving(ids)):
        assert not scores.requires_grad and not hidden.requires_grad
    assert all(parameter.requires_grad for parameter in encoder.parameters())  # the trained model is untouched


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_onnx_export_without_the_extra_is_one_error_line(missing, tmp_path, capsys, monkeypatch):
    checkpoint, _ = tiny_checkpoint(tmp_path)
    monkeypatch.setitem(sys.modules, missing, None)  # `import onnx` raises ImportError, as when not installed
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt_path", str(checkpoint), "--output", str(tmp_path / "model.onnx")])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.startswith("error: ONNX export needs the optional packages onnx and onnxscript, and "
                            f"{missing} is not installed") and error.count("\n") == 1, error
    assert 'pip install "sasrec-lightning[onnx]"' in error and "Traceback" not in error
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.ckpt"]  # nothing written
