"""Row-sparse Adam (``lazy_adam.py``, ``item_updates: lazy``) against a written-out row-by-row reference.

The reference is plain numpy in float64: for every step, each row the step used gets Adam's update
with the parameter's step count; every other row (its weights and both moments) is left alone.
"""

from __future__ import annotations

import textwrap

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from conftest import CONFIGS, run_ddp_script, write_sasrec_txt
from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.cli.app import main
from sasrec_lightning.data.options import CacheOptions, LoaderOptions, SourceOptions
from sasrec_lightning.errors import OptionError
from sasrec_lightning.fast.lazy_adam import LazyAdam, item_table_lazy_adam, touched_rows
from sasrec_lightning.fast.row_grad import use_row_gradients
from sasrec_lightning.fast.speed import SpeedOptions
from sasrec_lightning.model.items import ItemRepresentation
from sasrec_lightning.model.losses import FullCrossEntropyLoss, SampledSoftmaxLoss
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.optimization import OptimizationOptions
from test_resume import Crash

LR, BETAS, EPS = 0.01, (0.9, 0.98), 1e-8


def reference_adam(weights, grads, rows_per_step, lr=LR, betas=BETAS, eps=EPS, weight_decay=0.0):
    """Lazy Adam, one row at a time: ``rows_per_step[t]`` (repeats allowed) are the rows step ``t`` updates.

    Args:
        weights: ``(R, d)`` initial table.
        grads: per step, the ``(R, d)`` gradient.
        rows_per_step: per step, the row ids used.
        lr: learning rate.
        betas: ``(beta1, beta2)``.
        eps: added to ``sqrt(v_hat)``.
        weight_decay: L2 coefficient added to a used row's gradient.

    Returns:
        The table and the two moments after the last step, float64.
    """
    p = np.array(weights, dtype=np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    beta1, beta2 = betas
    for t, (grad, used) in enumerate(zip(grads, rows_per_step, strict=True), start=1):
        for r in sorted(set(int(row) for row in used)):
            g = np.asarray(grad[r], dtype=np.float64) + weight_decay * p[r]
            m[r] = beta1 * m[r] + (1 - beta1) * g
            v[r] = beta2 * v[r] + (1 - beta2) * g * g
            m_hat, v_hat = m[r] / (1 - beta1**t), v[r] / (1 - beta2**t)
            p[r] = p[r] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p, m, v


# Rows used per step of a 7-item table (ids 1..7, 0 = padding): repeats (3 at step 0, 6 at step 2),
# row 5 unused for steps 1-3, row 4 never used, row 7 only at the last step.
STEP_IDS = [[1, 3, 3, 5], [2, 3, 0], [3, 6, 6, 6], [1, 2], [5, 7, 3]]


class Tiny(nn.Module):
    """An item table and one dense parameter: ``loss = sum(table(ids) * w) + sum(bias * b)``."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.items = ItemRepresentation(7, 3).double()
        self.bias = nn.Parameter(torch.randn(3, dtype=torch.float64))
        self.mode = mode
        use_row_gradients(self)
        self.table.keep_row_gradients(mode == "lists")

    @property
    def table(self) -> nn.Embedding:
        return self.items.embedding

    def loss(self, ids, w, b):
        if self.mode == "sparse":
            rows = F.embedding(ids, self.table.weight, padding_idx=0, sparse=True)
        else:
            rows = self.table(ids)
        return (rows * w).sum() + (self.bias * b).sum()


def _step_inputs(seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.tensor(ids), torch.randn(len(ids), 3, generator=generator, dtype=torch.float64),
             torch.randn(3, generator=generator, dtype=torch.float64)) for ids in STEP_IDS]


def _table_gradient(ids, w, rows=8):
    grad = np.zeros((rows, w.shape[1]))
    np.add.at(grad, ids.numpy(), w.numpy())
    grad[0] = 0.0  # padding
    return grad


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("mode", ["lists", "nonzero", "sparse"])
def test_lazy_adam_equals_the_row_by_row_reference(mode, weight_decay):
    """Rows from the RowGradient lists, from the non-zero rows of a dense gradient, or from a sparse gradient."""
    model = Tiny(mode)
    weights0, bias0 = model.table.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()
    optimizer = item_table_lazy_adam(model, LR, BETAS, weight_decay, eps=EPS)
    inputs = _step_inputs()
    for ids, w, b in inputs:
        optimizer.zero_grad()
        model.loss(ids, w, b).backward()
        optimizer.step()
    grads = [_table_gradient(ids, w) for ids, w, _ in inputs]
    used = [[i for i in ids.tolist() if i] for ids, _, _ in inputs]
    table, m, v = reference_adam(weights0, grads, used, weight_decay=weight_decay)
    state = optimizer.state[model.table.weight]
    np.testing.assert_allclose(model.table.weight.detach().numpy(), table, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(state["exp_avg"].numpy(), m, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(state["exp_avg_sq"].numpy(), v, rtol=1e-10, atol=1e-14)
    assert np.array_equal(table[4], weights0[4]) and not m[4].any()  # never used: untouched
    # The dense parameter: Adam on every step (the reference with its one "row" always used).
    bias, _, _ = reference_adam(bias0[None], [b.numpy()[None] for _, _, b in inputs], [[0]] * len(inputs),
                                weight_decay=weight_decay)
    np.testing.assert_allclose(model.bias.detach().numpy(), bias[0], rtol=1e-10, atol=1e-12)
    assert int(state["step"]) == len(inputs)


def test_a_used_row_with_zero_gradient_is_updated_from_the_lists_but_not_from_non_zero_rows():
    """The documented difference: a row looked up with an exactly zero gradient (its moments decay or not)."""
    ids = torch.tensor([1, 2])
    steps = [torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64),
             torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)]  # row 2: zero at step 2
    results = {}
    for mode in ("lists", "nonzero"):
        model = Tiny(mode)
        weights0 = model.table.weight.detach().numpy().copy()
        optimizer = item_table_lazy_adam(model, LR, BETAS, 0.0, eps=EPS)
        for w in steps:
            optimizer.zero_grad()
            model.loss(ids, w, torch.zeros(3, dtype=torch.float64)).backward()
            optimizer.step()
        results[mode] = model.table.weight.detach().numpy()
    grads = [_table_gradient(ids, w) for w in steps]
    expected_lists = reference_adam(weights0, grads, [[1, 2], [1, 2]])[0]
    expected_nonzero = reference_adam(weights0, grads, [[1, 2], [1]])[0]
    np.testing.assert_allclose(results["lists"], expected_lists, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(results["nonzero"], expected_nonzero, rtol=1e-10, atol=1e-12)
    assert not np.allclose(expected_lists[2], expected_nonzero[2])  # the two really differ on row 2


def test_touched_rows_are_unique_and_sorted():
    grad = torch.zeros(6, 2)
    grad[4, 1], grad[1, 0] = 1.0, float("nan")  # NaN counts as touched (it must propagate, not hide)
    grad[2, 0], grad[5, 1] = -1e-30, -0.0  # a negative entry is non-zero; -0.0 is zero
    grad[3] = torch.tensor([2.0, -2.0])  # entries that cancel
    assert touched_rows(grad, torch.tensor([3, 1, 3, 3, 0])).tolist() == [0, 1, 3]
    assert touched_rows(grad).tolist() == [1, 2, 3, 4]
    big = torch.zeros(20_000, 2)  # more rows than one block
    big[[0, 8191, 8192, 19_999], 1] = 1.0
    assert touched_rows(big).tolist() == [0, 8191, 8192, 19_999]


def test_equals_sparse_adam_on_the_same_rows():
    """``torch.optim.SparseAdam`` on ``nn.Embedding(sparse=True)`` gradients: the same rows, the same update.

    SparseAdam adds ``eps`` before the bias correction of ``sqrt(v)`` (torch Adam after it); with a tiny
    ``eps`` that difference is below the tolerance. It has no weight decay.
    """
    lazy, sparse = Tiny("lists"), Tiny("sparse")
    assert torch.equal(lazy.table.weight, sparse.table.weight)
    eps = 1e-14
    optimizers = [LazyAdam([{"params": [lazy.table.weight], "row_sparse": True}], lr=LR, betas=BETAS, eps=eps,
                           row_lists=lambda p: lazy.table.row_gradient.written_rows()),
                  torch.optim.SparseAdam([sparse.table.weight], lr=LR, betas=BETAS, eps=eps)]
    for ids, w, b in _step_inputs(seed=2):
        for model, optimizer in zip((lazy, sparse), optimizers, strict=True):
            optimizer.zero_grad()
            model.loss(ids, w, b).backward()
            optimizer.step()
    torch.testing.assert_close(lazy.table.weight, sparse.table.weight, rtol=1e-11, atol=1e-13)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(optimizers[0].state[lazy.table.weight][key],
                                   optimizers[1].state[sparse.table.weight][key], rtol=1e-13, atol=0)


def test_every_row_used_every_step_equals_dense_adam():
    """When no row is left out, lazy Adam is torch's Adam (weight decay included)."""
    torch.manual_seed(4)
    weights = torch.randn(6, 4, dtype=torch.float64)
    lazy_table, dense_table = nn.Parameter(weights.clone()), nn.Parameter(weights.clone())
    lazy = LazyAdam([{"params": [lazy_table], "row_sparse": True}], lr=LR, betas=BETAS, weight_decay=0.05)
    dense = torch.optim.Adam([dense_table], lr=LR, betas=BETAS, weight_decay=0.05, foreach=False)
    for _ in range(4):
        grad = torch.randn(6, 4, dtype=torch.float64)
        for table, optimizer in ((lazy_table, lazy), (dense_table, dense)):
            table.grad = grad.clone()
            optimizer.step()
    torch.testing.assert_close(lazy_table, dense_table, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------- the module option
class RecordRows(L.Callback):
    """Per step: which item-table rows the optimizer changed, against the rows the batch used."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}
        self.batch = None
        self.checked = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.batch = batch

    def on_before_optimizer_step(self, trainer, module, optimizer):
        tables = self._tables(module)
        # The lists are used unless the gradient was dense (ce scores every item with the table).
        self.lists = {name: table.row_gradient.written_rows() for name, table in tables.items()}
        assert (self.lists["input"] is None) == isinstance(module.loss, FullCrossEntropyLoss)
        self.before = {name: table.weight.detach().clone() for name, table in tables.items()}
        self.grads = {name: table.weight.grad.clone() for name, table in tables.items()}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        targets = self.batch["targets"]
        real = targets != 0
        inputs = self.batch["input_ids"].unique()
        scored = torch.cat([targets[real], self.batch["negatives"][real].reshape(-1)]).unique()
        expected = {"input": inputs, "output": scored} if "output" in self.before else {
            "input": torch.cat([inputs, scored]).unique()}
        loss = module.loss
        for name, table in self._tables(module).items():
            changed = (table.weight.detach() != self.before[name]).any(dim=1).nonzero().squeeze(1).tolist()
            if isinstance(loss, FullCrossEntropyLoss):  # every item row has a gradient
                assert changed == list(range(1, table.weight.size(0))), name
            elif isinstance(loss, SampledSoftmaxLoss):  # the loss draws its negatives itself: the batch's rows and more
                assert set(expected[name].tolist()) - {0} < set(changed), name
                assert changed == [r for r in self.lists[name].unique().tolist() if r != 0], name
            else:
                assert changed == [r for r in expected[name].tolist() if r != 0], name
        self.checked += 1

    @staticmethod
    def _tables(module):
        model = module.model
        tables = {"input": model.items.embedding}
        if model.output_items is not None:
            tables["output"] = model.output_items.embedding
        return tables


@pytest.mark.parametrize("options", [{"loss": "bce"}, {"loss": "bce", "share_item_embedding": False},
                                     {"loss": SampledSoftmaxLoss(negatives=8)}, {"loss": "ce"}],
                         ids=["bce", "bce-unshared", "sampled_softmax", "ce"])
def test_fit_with_lazy_updates_changes_only_the_rows_each_batch_used(options):
    options = dict(options)
    shared = options.pop("share_item_embedding", True)
    L.seed_everything(3, verbose=False)
    data = SASRecDataModule(max_len=6, print_statistics=False,
                            source=SourceOptions(synthetic_users=60, synthetic_items=300),
                            loader=LoaderOptions(batch_size=4, num_negatives=1, num_eval_negatives=20),
                            cache=CacheOptions(use=False))
    module = SASRecModule(num_items=data.num_items, max_len=6, **options, speed=SpeedOptions(item_updates="lazy"),
                          encoder=EncoderOptions(hidden_size=8, num_blocks=1, share_item_embedding=shared))
    record = RecordRows()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, max_steps=4,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        callbacks=[record])
    trainer.fit(module, datamodule=data)
    assert record.checked == 4
    assert isinstance(trainer.optimizers[0], LazyAdam)
    assert isinstance(SASRecModule(num_items=5).configure_optimizers(), torch.optim.Adam)  # dense: the default


# ------------------------------------------------------------------------------------------ refusals
def test_lazy_refuses_l2_emb_and_a_custom_optimizer():
    with pytest.raises(OptionError, match=r"--model\.speed\.item_updates lazy with "
                                          r"--model\.optimization\.l2_emb 0\.01: the L2 term"):
        SASRecModule(num_items=5, speed=SpeedOptions(item_updates="lazy"),
                     optimization=OptimizationOptions(l2_emb=0.01))
    with pytest.raises(OptionError, match=r"cannot be given with it; drop --model\.optimizer"):
        SASRecModule(num_items=5, optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
                     speed=SpeedOptions(item_updates="lazy"))
    with pytest.raises(OptionError,
                       match=r"--model\.speed\.item_updates 'sparse': expected one of 'dense', 'lazy', 'deferred'"):
        SASRecModule(num_items=5, speed=SpeedOptions(item_updates="sparse"))
    SASRecModule(num_items=5, speed=SpeedOptions(item_updates="dense"),
                 optimization=OptimizationOptions(l2_emb=0.01))  # dense keeps both
    with pytest.raises(ValueError, match="row_sparse groups hold 2-D tables"):
        LazyAdam([{"params": [nn.Parameter(torch.zeros(3))], "row_sparse": True}])


TINY = ["--data.source.synthetic_users", "30", "--data.source.synthetic_items", "40", "--data.max_len", "8",
        "--data.cache.use", "false", "--data.print_statistics", "false",
        "--model.init_args.encoder.hidden_size", "8", "--model.init_args.encoder.num_blocks", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.max_epochs", "1", "--test_after_fit", "false"]


@pytest.mark.parametrize(("mode", "flags", "expected"), [
    ("lazy", ["--model.init_args.optimization.l2_emb", "0.01"],
     "error: --model.speed.item_updates lazy with --model.optimization.l2_emb 0.01: the L2 term"),
    ("lazy", ["--model.init_args.optimizer", "torch.optim.SGD", "--model.init_args.optimizer.lr", "0.1"],
     "error: --model.speed.item_updates lazy builds its own optimizer"),
    ("deferred", ["--model.init_args.optimization.l2_emb", "0.01"],
     "error: --model.speed.item_updates deferred with --model.optimization.l2_emb 0.01: the L2 term"),
    ("deferred", ["--model.init_args.optimization.betas", "[0.9, 0.8]"],
     "error: --model.speed.item_updates deferred with --model.optimization.betas [0.9, 0.8]: "
     "needs beta1 < sqrt(beta2)"),
], ids=["lazy-l2_emb", "lazy-optimizer", "deferred-l2_emb", "deferred-betas"])
def test_the_cli_refuses_lazy_with_one_error_line(capsys, tmp_path, mode, flags, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "-c", str(CONFIGS / "quickstart.yaml"), *TINY, "--trainer.default_root_dir", str(tmp_path),
              "--model.init_args.speed.item_updates", mode, *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(expected) and "Traceback" not in err, err


# -------------------------------------------------------------------------------------------- resume
def _run(data_path, root, callbacks=(), ckpt_path=None, max_steps=14, item_updates="lazy"):
    L.seed_everything(7, verbose=False)
    data = SASRecDataModule(path=str(data_path), max_len=8, seed=7, print_statistics=False,
                            loader=LoaderOptions(batch_size=8, eval_batch_size=16))
    model = SASRecModule(num_items=data.num_items, max_len=8, loss=SampledSoftmaxLoss(negatives=5),
                         encoder=EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.3),
                         speed=SpeedOptions(item_updates=item_updates),
                         optimization=OptimizationOptions(weight_decay=0.01))
    checkpoint = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=0, every_n_train_steps=1)
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[checkpoint, *callbacks], num_sanity_val_steps=0,
                        limit_val_batches=0, default_root_dir=root)
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    return trainer, model


@pytest.mark.parametrize("item_updates", ["lazy", "deferred"])
def test_resume_continues_the_lazy_moments_exactly(synthetic_txt, tmp_path, item_updates):
    """Fit 14 steps == fit 5, crash, resume from ``last`` to 14: same weights and moments, bit for bit.

    The 10-batch epoch ends at step 10, so a deferred run also flushes once after the resume.
    """
    reference_trainer, reference = _run(synthetic_txt, tmp_path / "reference", item_updates=item_updates)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(synthetic_txt, tmp_path / "crashed", callbacks=[Crash(5)], item_updates=item_updates)
    saved = torch.load(tmp_path / "crashed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 5 and saved["optimizer_states"][0]["state"]  # the moments are in the checkpoint
    if item_updates == "deferred":  # mid-epoch: some rows are behind, and the checkpoint says which
        last_steps = [s["last_step"] for s in saved["optimizer_states"][0]["state"].values() if "last_step" in s]
        assert last_steps and all(s.dtype == torch.int64 for s in last_steps)
        assert any((s < 5).any() for s in last_steps) and any((s == 5).any() for s in last_steps)
    trainer, resumed = _run(synthetic_txt, tmp_path / "crashed", ckpt_path="last", item_updates=item_updates)
    assert isinstance(trainer.optimizers[0], LazyAdam)
    for (name, expected), actual in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=f"{name} differs after resume")
    states = [t.optimizers[0].state_dict()["state"] for t in (reference_trainer, trainer)]
    assert states[0].keys() == states[1].keys()
    for key, state in states[0].items():
        assert int(state["step"]) == int(states[1][key]["step"]) == 14
        assert state.keys() == states[1][key].keys()
        for name in set(state) - {"step"}:  # the moments, and last_step when deferred
            torch.testing.assert_close(states[1][key][name], state[name], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- DDP
DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    import lightning as L
    import torch
    from sasrec_lightning import SASRecDataModule, SASRecModule
    from sasrec_lightning.data.options import LoaderOptions
    from sasrec_lightning.fast.speed import SpeedOptions
    from sasrec_lightning.model.options import EncoderOptions
    from sasrec_lightning.training.optimization import OptimizationOptions


    class Record(L.Callback):
        \"\"\"The all-reduced item-table gradient of every step and this process's own looked-up rows.\"\"\"

        def __init__(self):
            self.grads, self.local = [], []

        def on_before_optimizer_step(self, trainer, module, optimizer):
            table = module.model.items.embedding
            self.grads.append(table.weight.grad.clone())
            self.local.append(torch.cat(table.row_gradient.rows).unique())


    def main():
        data_path, out, item_updates = sys.argv[1:4]
        L.seed_everything(5, verbose=False)
        data = SASRecDataModule(path=data_path, max_len=6, seed=5, print_statistics=False,
                                loader=LoaderOptions(batch_size=4, num_eval_negatives=20))
        model = SASRecModule(num_items=data.num_items, max_len=6,
                             encoder=EncoderOptions(hidden_size=8, num_blocks=1, dropout=0.0),
                             speed=SpeedOptions(item_updates=item_updates),
                             optimization=OptimizationOptions(weight_decay=0.01 if item_updates == "lazy" else 0.0))
        initial = {name: value.clone() for name, value in model.state_dict().items()}
        record = Record()
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=6, logger=False,
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                            limit_val_batches=0, callbacks=[record])
        trainer.fit(model, datamodule=data)
        torch.save({"initial": initial, "final": model.state_dict(), "grads": record.grads, "local": record.local},
                   f"{out}.rank{trainer.global_rank}.pt")


    if __name__ == "__main__":
        main()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("item_updates", ["lazy", "deferred"])
def test_ddp_lazy_updates_use_the_rows_of_the_averaged_gradient(tmp_path, item_updates):
    """2 processes (gloo): the same weights on both ranks; the table's = the reference on the averaged gradients.

    Each process looked up only its own batch's rows; the rows updated must be those of the all-reduced
    gradient (rows other processes touched too), the same on both ranks. ``deferred`` (no weight decay,
    flushed at the end of fit): dense Adam on the averaged gradients, every row every step.
    """
    from sasrec_lightning.data.synthetic import synthetic_interactions

    log = synthetic_interactions(num_users=60, num_items=300, num_clusters=4, min_length=4, max_length=7, seed=3)
    data_path = write_sasrec_txt(tmp_path / "log.txt", list(zip(log.column("user").to_pylist(),
                                                                log.column("item").to_pylist(), strict=True)))
    script = tmp_path / "ddp_lazy.py"
    script.write_text(DDP_SCRIPT)
    run_ddp_script(script, [data_path, tmp_path / "run", item_updates], tmp_path)
    ranks = [torch.load(tmp_path / f"run.rank{rank}.pt", weights_only=True) for rank in range(2)]
    for name, value in ranks[0]["final"].items():
        assert torch.equal(value, ranks[1]["final"][name]), name  # the replicas did not drift apart
    for grad0, grad1 in zip(ranks[0]["grads"], ranks[1]["grads"], strict=True):
        assert torch.equal(grad0, grad1)  # all-reduced
    grads = [grad.double().numpy() for grad in ranks[0]["grads"]]
    used = [np.flatnonzero(np.any(grad != 0, axis=1)) for grad in grads]
    table = "model.items.embedding.weight"
    if item_updates == "lazy":
        expected, _, _ = reference_adam(ranks[0]["initial"][table].numpy(), grads, used, lr=0.001, weight_decay=0.01)
    else:
        every_row = [np.arange(grads[0].shape[0])] * len(grads)
        expected, _, _ = reference_adam(ranks[0]["initial"][table].numpy(), grads, every_row, lr=0.001)
        lazy_expected, _, _ = reference_adam(ranks[0]["initial"][table].numpy(), grads, used, lr=0.001)
        assert np.abs(lazy_expected - expected).max() > 1e-4  # lazy would fail the comparison below
    np.testing.assert_allclose(ranks[0]["final"][table].numpy(), expected, rtol=1e-5, atol=1e-6)
    # The test can tell: other processes' rows were in the gradient, and rows were left out.
    assert any(set(rows.tolist()) - set(local.tolist()) for rows, local in zip(used, ranks[0]["local"], strict=True))
    assert all(len(rows) < grads[0].shape[0] - 1 for rows in used)
    assert not np.array_equal(expected, ranks[0]["initial"][table].numpy())
