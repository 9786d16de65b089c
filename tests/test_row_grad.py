"""Row-by-row item-table gradients (``fast/row_grad.py``, applied by the speed parts) train exactly like dense ones."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.data.options import CacheOptions, LoaderOptions, SourceOptions
from sasrec_lightning.errors import OptionError
from sasrec_lightning.fast.row_grad import RowGradEmbedding, RowGradient, row_grad_tables
from sasrec_lightning.fast.speed import SpeedOptions, SpeedParts
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.optimization import OptimizationOptions


def DenseGradients(**options) -> SASRecModule:  # noqa: N802  (used like the module class)
    """The reference: the switch off, plain lookups (a dense table gradient per lookup)."""
    return SASRecModule(**options, speed=SpeedOptions(row_gradients=False))


class RecordLookups(L.Callback):
    """Whether each backward pass used sparse lookups, and that the optimizer then saw a dense gradient."""

    def __init__(self) -> None:
        self.sparse: list[bool] = []

    def on_after_backward(self, trainer, module):
        table = module.model.items.embedding
        self.sparse.append(getattr(table, "row_gradient", None) is not None)
        assert not table.weight.grad.is_sparse


def train(module_class, steps: int = 12, accumulate: int = 1, loss="bce", share_item_embedding=True,
          l2_emb=0.0) -> dict[str, torch.Tensor]:
    L.seed_everything(3, verbose=False)
    data = SASRecDataModule(max_len=12, print_statistics=False,
                            source=SourceOptions(synthetic_users=200, synthetic_items=60),
                            loader=LoaderOptions(batch_size=16, num_negatives=2), cache=CacheOptions(use=False))
    encoder = EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.2, share_item_embedding=share_item_embedding)
    module = module_class(num_items=data.num_items, max_len=12, encoder=encoder, loss=loss,
                          optimization=OptimizationOptions(l2_emb=l2_emb))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, max_steps=steps,
                        limit_val_batches=0, accumulate_grad_batches=accumulate, callbacks=[record := RecordLookups()])
    trainer.fit(module, datamodule=data)
    assert len(record.sparse) >= steps and set(record.sparse) <= {module_class is SASRecModule}  # every backward
    assert all(table.row_gradient is None for table in row_grad_tables(module))  # plain embedding again after fit
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


@pytest.mark.parametrize(
    "options",
    [
        {"loss": "bce"},
        {"loss": "gbce"},
        {"loss": {"class_path": "sampled_softmax", "init_args": {"negatives": 10}}},
        {"loss": {"class_path": "sampled_softmax", "init_args": {"negatives": 10, "sharing": "sequence"}}},
        {"loss": "ce"},  # a dense table gradient arrives too: the clear must be a full one
        {"loss": "bce", "share_item_embedding": False},  # two tables
        {"loss": "bce", "l2_emb": 0.01},
        {"loss": "bce", "accumulate": 3},  # rows of several backward passes before one clear
    ],
    ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()).replace("'", ""),
)
def test_training_equals_dense_gradients(options):
    options = dict(options)
    accumulate = options.pop("accumulate", 1)
    rows = train(SASRecModule, accumulate=accumulate, **options)
    dense = train(DenseGradients, accumulate=accumulate, **options)
    assert rows.keys() == dense.keys()
    for name in rows:
        if name.endswith("qkv.bias"):
            # The key bias has an exactly-zero gradient in theory (softmax is shift-invariant), so
            # Adam amplifies float-rounding noise there into lr-sized steps; compare query and value parts.
            hidden = rows[name].numel() // 3
            rows[name], dense[name] = (torch.cat([t[:hidden], t[2 * hidden :]]) for t in (rows[name], dense[name]))
        torch.testing.assert_close(rows[name], dense[name], rtol=1e-5, atol=1e-6, msg=name)
    # The runs really trained: the item table moved away from its initialization.
    L.seed_everything(3, verbose=False)
    untouched = train(SASRecModule, steps=0, **options)
    assert not torch.equal(rows["model.items.embedding.weight"], untouched["model.items.embedding.weight"])


def test_zero_grad_then_backward_clears_only_written_rows_and_fully_after_a_dense_gradient():
    table = torch.nn.Parameter(torch.randn(10, 3))
    row_grad = RowGradient(table)
    ids = torch.tensor([2, 5, 5])
    row_grad.lookup(ids).sum().backward()
    buffer = table.grad
    assert not buffer.is_sparse  # added into a dense buffer
    expected = torch.zeros(10, 3)
    expected[2], expected[5] = 1, 2
    torch.testing.assert_close(buffer, expected)

    row_grad.lookup(torch.tensor([2])).sum().backward()  # no zero_grad in between: accumulates
    expected[2] = 2
    torch.testing.assert_close(table.grad, expected)

    buffer[7] = 42.0  # a row nobody reported: a row-wise clear leaves it (proves the clear is row-wise) ...
    table.grad = None  # what optimizer.zero_grad() does
    row_grad.lookup(torch.tensor([1, 0])).sum().backward()  # padding id 0 gets no gradient
    assert table.grad is buffer  # the same buffer, taken back
    assert not buffer[[0, 2, 5]].any() and buffer[1].eq(1).all() and buffer[7].eq(42.0).all()

    (table.square().sum()).backward()  # ... but a dense gradient makes the next clear a full one
    table.grad = None
    row_grad.lookup(torch.tensor([3])).sum().backward()
    expected = torch.zeros(10, 3)
    expected[3] = 1
    torch.testing.assert_close(table.grad, expected)

    row_grad.remove()
    torch.nn.functional.embedding(ids, table, sparse=True).sum().backward()
    assert table.grad[2].eq(1).all()  # no hook any more: plain accumulation


def test_row_lookup_passes_gradcheck_in_float64():
    """The gradient the lookup writes into the buffer is the true Jacobian (finite differences), step after step."""
    table = RowGradEmbedding(7, 3, padding_idx=0).double()
    table.keep_row_gradients(True)
    ids = torch.tensor([[1, 4, 4], [0, 6, 2]])  # repeats add up; padding id 0 gets nothing

    class ThroughBuffer(torch.autograd.Function):
        """``table(ids)`` of the item rows 1..6 (row 0, padding, stays 0); backward returns the row buffer."""

        @staticmethod
        def forward(ctx, rows):
            with torch.no_grad():
                table.weight[1:] = rows
            return table.weight[ids].detach().clone()

        @staticmethod
        def backward(ctx, grad):
            table.weight.grad = None  # as zero_grad does between steps: only written rows are cleared
            with torch.enable_grad():
                out = table(ids)
            out.backward(grad)
            assert not table.weight.grad[0].any()
            return table.weight.grad[1:].clone()

    with torch.no_grad():
        table.weight[0] = 0.0
    rows = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ThroughBuffer.apply, (rows,))
    assert table.row_gradient is not None and table.weight.grad is table.row_gradient.kept  # the buffer was reused


def test_row_grad_embedding_is_an_ordinary_embedding_until_switched_on():
    table = RowGradEmbedding(6, 2, padding_idx=0)
    assert table.padding_idx == 0 and table.weight.shape == (6, 2)
    assert list(table.state_dict()) == ["weight"]
    ids = torch.tensor([1, 1, 3])
    table(ids).sum().backward()
    assert table.weight.grad[1].eq(2).all() and table.row_gradient is None
    table.keep_row_gradients(True)
    with torch.no_grad():  # no autograd: the plain lookup, same values
        torch.testing.assert_close(table(ids), table.weight[ids])
    copy = __import__("copy").deepcopy(table)
    assert copy.row_gradient is None  # copies are plain embeddings (the hook is not copied)
    table.keep_row_gradients(False)
    assert table.row_gradient is None and not table.weight._backward_hooks


class _Fail(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        assert pl_module.model.items.embedding.row_gradient is not None  # on while training
        raise RuntimeError("stop")


@pytest.mark.parametrize("switch, expected", [("auto", True), (True, True), (False, False)])
def test_row_gradient_switch(switch, expected):
    module = SASRecModule(num_items=10, max_len=4, encoder=EncoderOptions(hidden_size=8, num_blocks=1),
                          speed=SpeedOptions(row_gradients=switch))
    assert type(module.model.items.embedding) is torch.nn.Embedding  # the built model is plain PyTorch
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    module.trainer = trainer
    [parts] = [callback for callback in module.configure_callbacks() if isinstance(callback, SpeedParts)]
    parts.setup(trainer, module, "fit")
    assert isinstance(module.model.items.embedding, RowGradEmbedding) is expected
    with pytest.raises(OptionError,
                       match=r"--model.speed.row_gradients 'sometimes': expected one of True, False, 'auto'"):
        SpeedOptions(row_gradients="sometimes")


def test_row_gradients_are_switched_off_when_training_fails():
    data = SASRecDataModule(max_len=6, print_statistics=False,
                            source=SourceOptions(synthetic_users=40, synthetic_items=20),
                            loader=LoaderOptions(batch_size=8), cache=CacheOptions(use=False))
    module = SASRecModule(num_items=data.num_items, max_len=6, encoder=EncoderOptions(hidden_size=8, num_blocks=1))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, max_steps=2,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[_Fail()])
    with pytest.raises(RuntimeError, match="stop"):
        trainer.fit(module, datamodule=data)
    assert module.model.items.embedding.row_gradient is None


DDP_SCRIPT = """
import sys
import lightning as L
import torch
from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.data.options import CacheOptions, LoaderOptions, SourceOptions
from sasrec_lightning.fast.speed import SpeedOptions
from sasrec_lightning.model.options import EncoderOptions


def main():
    data_path, out, kind = sys.argv[1:4]
    L.seed_everything(5, verbose=False)
    data = SASRecDataModule(path=data_path, max_len=8, seed=5, print_statistics=False,
                            loader=LoaderOptions(batch_size=8))
    model = SASRecModule(num_items=data.num_items, max_len=8,
                         encoder=EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.0),
                         speed=SpeedOptions(row_gradients=kind != "dense"))
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=6, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    if trainer.global_rank == 0:
        torch.save({"initial": initial, "final": model.state_dict()}, out)


if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_ddp_training_equals_dense_gradients(synthetic_txt, tmp_path):
    """Under DDP the all-reduced item-table gradient is the same as with plain dense lookups."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp_rows.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    states = {}
    for kind in ("rows", "dense"):
        out = tmp_path / f"{kind}.pt"
        result = subprocess.run([sys.executable, str(script), str(synthetic_txt), str(out), kind], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        states[kind] = torch.load(out, weights_only=True)
    for name, value in states["rows"]["final"].items():
        if name.endswith("qkv.bias"):  # the key bias is driven by rounding noise (see above)
            continue
        torch.testing.assert_close(value, states["dense"]["final"][name], rtol=1e-5, atol=1e-6, msg=name)
    table = "model.items.embedding.weight"
    assert not torch.equal(states["rows"]["final"][table], states["rows"]["initial"][table])  # it trained
