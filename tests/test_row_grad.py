"""Row-by-row item-table gradients (``row_grad.py``) train exactly like dense ``nn.Embedding`` gradients."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.row_grad import RowGradient


class DenseGradients(SASRecModule):
    """The reference: plain lookups and Lightning's default zero_grad (a dense table gradient per lookup)."""

    def on_train_start(self):
        pass

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        optimizer.zero_grad()


class RecordLookups(L.Callback):
    """Whether each backward pass used sparse lookups, and that the optimizer then saw a dense gradient."""

    def __init__(self) -> None:
        self.sparse: list[bool] = []

    def on_after_backward(self, trainer, module):
        self.sparse.append(module.model.sparse_item_grad)
        assert not module.model.item_embedding.weight.grad.is_sparse


def train(module_class, steps: int = 12, accumulate: int = 1, **options) -> dict[str, torch.Tensor]:
    L.seed_everything(3, verbose=False)
    data = SASRecDataModule(synthetic_users=200, synthetic_items=60, max_len=12, batch_size=16,
                            print_statistics=False, use_cache=False, num_negatives=2)
    module = module_class(num_items=data.num_items, max_len=12, hidden_size=8, num_blocks=1, dropout=0.2, **options)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, max_steps=steps,
                        limit_val_batches=0, accumulate_grad_batches=accumulate, callbacks=[record := RecordLookups()])
    trainer.fit(module, datamodule=data)
    assert len(record.sparse) >= steps and set(record.sparse) <= {module_class is SASRecModule}  # every backward
    assert module.model.sparse_item_grad is False  # restored after fit
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


@pytest.mark.parametrize(
    "options",
    [
        {"loss": "bce"},
        {"loss": "gbce"},
        {"loss": "sampled_softmax", "sampled_negatives": 10},
        {"loss": "sampled_softmax", "sampled_negatives": 10, "negative_sharing": "sequence"},
        {"loss": "ce"},  # a dense table gradient arrives too: the clear must be a full one
        {"loss": "bce", "share_item_embedding": False},  # two tables
        {"loss": "bce", "l2_emb": 0.01},
        {"loss": "bce", "accumulate": 3},  # rows of several backward passes before one clear
    ],
    ids=lambda options: "-".join(f"{k}={v}" for k, v in options.items()),
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
    assert not torch.equal(rows["model.item_embedding.weight"], untouched["model.item_embedding.weight"])


def test_clear_touches_only_written_rows_and_full_clear_after_dense_gradient():
    table = torch.nn.Parameter(torch.randn(10, 3))
    row_grad = RowGradient(table)
    row_grad.zero_()  # allocates the dense buffer
    assert table.grad is not None and not table.grad.is_sparse and not table.grad.any()

    ids = torch.tensor([2, 5, 5])
    torch.nn.functional.embedding(ids, table, sparse=True).sum().backward()
    assert not table.grad.is_sparse  # added into the dense buffer in place
    expected = torch.zeros(10, 3)
    expected[2] = 1
    expected[5] = 2
    torch.testing.assert_close(table.grad, expected)

    buffer = table.grad
    buffer[7] = 42.0  # a row nobody reported: a row-wise clear leaves it (proves the clear is row-wise) ...
    row_grad.zero_()
    assert table.grad is buffer
    assert not buffer[[2, 5]].any() and buffer[7].eq(42.0).all()

    (table.square().sum()).backward()  # ... but a dense gradient makes the next clear a full one
    row_grad.zero_()
    assert not table.grad.any()

    row_grad.remove()
    torch.nn.functional.embedding(ids, table, sparse=True).sum().backward()
    assert table.grad[2].eq(1).all()  # no hook any more: plain accumulation


DDP_SCRIPT = """
import sys
import lightning as L
import torch
from sasrec_lightning import SASRecDataModule, SASRecModule


class Dense(SASRecModule):
    def on_train_start(self):
        pass

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        optimizer.zero_grad()


def main():
    data_path, out, kind = sys.argv[1:4]
    L.seed_everything(5, verbose=False)
    data = SASRecDataModule(path=data_path, max_len=8, batch_size=8, seed=5, print_statistics=False)
    cls = Dense if kind == "dense" else SASRecModule
    model = cls(num_items=data.num_items, max_len=8, hidden_size=8, num_blocks=1, dropout=0.0)
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
    table = "model.item_embedding.weight"
    assert not torch.equal(states["rows"]["final"][table], states["rows"]["initial"][table])  # it trained
