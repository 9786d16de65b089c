"""Deferred row-sparse Adam (``LazyAdam(catch_up=True)``, ``item_updates: deferred``) against dense Adam.

The references are ``torch.optim.Adam`` on the whole table (every row, zero gradient where a step did
not use the row) and written-out loops of zero-gradient Adam steps in float64.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from sasrec_lightning import SASRecDataModule, SASRecModule
from sasrec_lightning.data.options import CacheOptions, LoaderOptions, SourceOptions
from sasrec_lightning.errors import OptionError
from sasrec_lightning.fast.lazy_adam import LazyAdam, SkippedSteps, skipped_steps_factor
from sasrec_lightning.fast.speed import SpeedOptions
from sasrec_lightning.model.losses import SampledSoftmaxLoss
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.optimization import OptimizationOptions

LR, BETAS, EPS = 0.01, (0.9, 0.98), 1e-8


def _intermittent_run(catch_up: bool | None, steps: int = 60, rows: int = 50, seed: int = 0, eps: float = EPS):
    """A ``(rows, 4)`` float64 table trained ``steps`` steps on random row subsets; ``None``: dense torch Adam.

    Row 0 is never used; rows 1-9 are used in the first 10 steps and then not before step 45 (35+ idle
    steps); the others each step with probability 0.3. Gradient entries are +-[0.5, 1.5] x 1e-2, bounded
    away from 0, so ``sqrt(v_hat)`` stays far above ``eps`` in the skipped steps.
    """
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(rows, 4, dtype=torch.float64, generator=generator)
    table = nn.Parameter(weights.clone())
    if catch_up is None:
        optimizer = torch.optim.Adam([table], lr=LR, betas=BETAS, eps=eps, foreach=False)
    else:
        optimizer = LazyAdam([{"params": [table], "row_sparse": True}], lr=LR, betas=BETAS, eps=eps,
                             catch_up=catch_up)
    for step in range(steps):
        used = torch.rand(rows, generator=generator) < 0.3  # (rows,)
        used[0] = False
        used[1:10] = step < 10 or step >= 45
        sign = torch.randn(rows, 4, dtype=torch.float64, generator=generator).sign()
        grad = 1e-2 * sign * (0.5 + torch.rand(rows, 4, dtype=torch.float64, generator=generator))  # (rows, 4)
        table.grad = grad * used[:, None]
        optimizer.step()
    if catch_up:
        optimizer.flush()
    return weights, table.detach(), optimizer


def test_deferred_equals_dense_adam_and_lazy_does_not():
    """After a flush, deferred == dense Adam on every row; plain lazy is far from both on the same run."""
    weights, dense, dense_optimizer = _intermittent_run(None)
    _, deferred, optimizer = _intermittent_run(True)
    _, lazy, _ = _intermittent_run(False)
    # The only approximation is eps dropped inside the skipped steps. There sqrt(v_hat) >= ~sqrt(1 - beta2)
    # * 5e-3 * beta2^(j/2), so a skipped move is off by a relative <~ 1e-8 / 7e-4 = 1.4e-5 (more for the
    # rare late terms); the rows' skipped moves add up to <~ lr / (1 - rho) ~ 0.1: <~ 2e-6 absolute.
    torch.testing.assert_close(deferred, dense, rtol=0, atol=2e-6)
    # ... and the difference is eps's: 10^4 x smaller with eps = 1e-12.
    _, deferred_small_eps, _ = _intermittent_run(True, eps=1e-12)
    torch.testing.assert_close(deferred_small_eps, _intermittent_run(None, eps=1e-12)[1], rtol=0, atol=2e-10)
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    dense_state = next(iter(dense_optimizer.state.values()))
    torch.testing.assert_close(state["exp_avg"], dense_state["exp_avg"], rtol=1e-12, atol=1e-18)
    torch.testing.assert_close(state["exp_avg_sq"], dense_state["exp_avg_sq"], rtol=1e-12, atol=1e-20)
    assert state["last_step"].tolist() == [60] * 50
    # The test separates the modes: lazy misses most of the momentum's moves (rows 1-9: ~10x less).
    assert (lazy - dense).abs().max() > 1e3 * (deferred - dense).abs().max()
    assert (lazy - dense).abs().max() > 0.05


def _zero_gradient_adam(p, m, v, t0, k, lr=LR, betas=BETAS):
    """Dense Adam (eps = 0) for the zero-gradient steps ``t0 + 1 .. t0 + k``, one step at a time, float64."""
    beta1, beta2 = betas
    p, m, v = p.copy(), m.copy(), v.copy()
    for s in range(t0 + 1, t0 + k + 1):
        m, v = beta1 * m, beta2 * v
        p = p - lr * (m / (1 - beta1**s)) / np.sqrt(v / (1 - beta2**s))
    return p, m, v


@pytest.mark.parametrize("betas", [BETAS, (0.9, 0.999)])
@pytest.mark.parametrize(("t0", "k"), [(5, 0), (1, 1), (1, 3), (2, 17), (40, 1), (30, 120), (7, 1000), (3000, 2),
                                       (5000, 400)])
def test_flush_equals_zero_gradient_adam_steps(t0, k, betas):
    """The closed form (via ``flush``) against a loop of dense Adam steps with zero gradients, eps = 0.

    Small ``t0`` makes the bias corrections matter; ``k = 1000`` is beyond the ~300 terms kept.
    """
    rng = np.random.default_rng(t0 + k)
    p0, m0 = rng.standard_normal((3, 4)), 0.01 * rng.standard_normal((3, 4))
    v0 = m0**2 + 1e-4 * rng.random((3, 4))  # v >= m^2-ish, as Adam's moments are
    table = nn.Parameter(torch.tensor(p0))
    optimizer = LazyAdam([{"params": [table], "row_sparse": True}], lr=LR, betas=betas, eps=0.0, catch_up=True)
    optimizer.state[table] = {"step": torch.tensor(float(t0 + k)), "exp_avg": torch.tensor(m0),
                              "exp_avg_sq": torch.tensor(v0), "last_step": torch.full((3,), t0)}
    optimizer.flush()
    p, m, v = _zero_gradient_adam(p0, m0, v0, t0, k, betas=betas)
    state = optimizer.state[table]
    # Terms with rho^j < 1e-12 are cut off: ~1e-12 x S of the move (lr * S * m0 / sqrt(v0) ~ 0.1) is missing.
    np.testing.assert_allclose(table.detach().numpy(), p, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(state["exp_avg"].numpy(), m, rtol=1e-12, atol=0)
    np.testing.assert_allclose(state["exp_avg_sq"].numpy(), v, rtol=1e-12, atol=0)
    assert state["last_step"].tolist() == [t0 + k] * 3
    if k:
        assert not np.allclose(p, p0)  # the skipped steps did move the rows


def test_skipped_steps_factor_sums_the_written_out_terms():
    """S(t0, k) for several rows at once (different t0 and k, the k > J tail cut off) against the plain sum."""
    beta1, beta2 = BETAS
    t0 = torch.tensor([0, 1, 4, 100, 2, 9])
    k = torch.tensor([0, 1, 6, 3, 2000, 0])
    expected = [sum((beta1 / beta2**0.5) ** j * (1 - beta2 ** (a + j)) ** 0.5 / (1 - beta1 ** (a + j))
                    for j in range(1, b + 1)) for a, b in zip(t0.tolist(), k.tolist(), strict=True)]
    np.testing.assert_allclose(skipped_steps_factor(t0, k, beta1, beta2).numpy(), expected, rtol=1e-11, atol=0)


@pytest.mark.parametrize("betas", [BETAS, (0.9, 0.999), (0.0, 0.9)])
def test_the_look_up_tables_give_skipped_steps_factor(betas):
    """SkippedSteps (near rows, far rows, t0 past the constant tail, growing tables) == the (rows, J) sums."""
    table = SkippedSteps(*betas, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    for upto in (0, 3, 250, 1000, 6000, 60_000, 60_001):
        t0 = torch.cat([torch.randint(0, upto + 1, (300,), generator=generator),
                        torch.arange(max(upto - 400, 0), upto + 1)])  # (r,) many rows near upto
        expected = skipped_steps_factor(t0, upto - t0, *betas)
        torch.testing.assert_close(table(t0, upto), expected, rtol=1e-13, atol=1e-15)


def test_never_used_rows_stay_exactly_unchanged_without_nan():
    """v0 = 0 rows (never had a gradient): catch-ups and flushes leave them bit for bit, no 0/0."""
    _, deferred, optimizer = _intermittent_run(True, steps=12)
    weights, _, _ = _intermittent_run(None, steps=0)
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    assert torch.isfinite(deferred).all() and torch.isfinite(state["exp_avg"]).all()
    assert torch.equal(deferred[0], weights[0]) and not state["exp_avg_sq"][0].any()
    # A row first used late catches up from v0 = 0 (k > 0 skipped steps) before its first update.
    table = nn.Parameter(torch.zeros(3, 2, dtype=torch.float64))
    late = LazyAdam([{"params": [table], "row_sparse": True}], lr=LR, betas=BETAS, catch_up=True)
    for step in range(5):
        table.grad = torch.zeros(3, 2, dtype=torch.float64)
        table.grad[1] = 1.0 if step == 4 else 0.0
        table.grad[2] = 1.0
        late.step()
    late.flush()
    assert torch.isfinite(table).all() and torch.equal(table[0], torch.zeros(2, dtype=torch.float64))
    # Row 1's only update: dense Adam's step 5 with m = (1 - beta1) g, v = (1 - beta2) g^2 (nothing to catch up on).
    beta1, beta2 = BETAS
    first = LR * ((1 - beta1) / (1 - beta1**5)) / (((1 - beta2) / (1 - beta2**5)) ** 0.5 + 1e-8)
    torch.testing.assert_close(table[1], torch.full((2,), -first, dtype=torch.float64), rtol=1e-14, atol=0)


def test_last_step_stays_int64_through_a_state_dict_round_trip():
    """Loading casts state tensors to the parameter's dtype; float32 would round 2^24 + 1."""
    table = nn.Parameter(torch.zeros(2, 3))
    optimizer = LazyAdam([{"params": [table], "row_sparse": True}], catch_up=True)
    table.grad = torch.ones(2, 3)
    optimizer.step()
    saved = optimizer.state_dict()
    saved["state"][0]["last_step"] = torch.tensor([2**24 + 1, 3])
    restored = LazyAdam([{"params": [table], "row_sparse": True}], catch_up=True)
    restored.load_state_dict(saved)
    last_step = restored.state[table]["last_step"]
    assert last_step.dtype == torch.int64 and last_step.tolist() == [2**24 + 1, 3]
    assert restored.state[table]["exp_avg"].dtype == torch.float32


def test_deferred_refusals():
    with pytest.raises(ValueError, match=r"needs beta1 < sqrt\(beta2\).*\(0\.9, 0\.8\)"):
        LazyAdam([nn.Parameter(torch.zeros(2, 2))], betas=(0.9, 0.8), catch_up=True)
    LazyAdam([nn.Parameter(torch.zeros(2, 2))], betas=(0.9, 0.8))  # lazy does not need it
    deferred, lazy = SpeedOptions(item_updates="deferred"), SpeedOptions(item_updates="lazy")
    with pytest.raises(OptionError, match=r"--model\.speed\.item_updates deferred with --model\.optimization\.l2_emb "
                                          r"0\.01: the L2 term"):
        SASRecModule(num_items=5, speed=deferred, optimization=OptimizationOptions(l2_emb=0.01))
    with pytest.raises(OptionError, match=r"--model\.speed\.item_updates deferred builds its own optimizer"):
        SASRecModule(num_items=5, optimizer=lambda params: torch.optim.SGD(params, lr=0.1), speed=deferred)
    with pytest.raises(OptionError, match=r"--model\.speed\.item_updates deferred with --model\.optimization\.betas "
                                          r"\[0\.9, 0\.8\]: needs beta1 < sqrt\(beta2\)"):
        SASRecModule(num_items=5, speed=deferred, optimization=OptimizationOptions(betas=(0.9, 0.8)))
    SASRecModule(num_items=5, speed=lazy, optimization=OptimizationOptions(betas=(0.9, 0.8)))


# ---------------------------------------------------------------------------------------- Lightning
class CheckFlushed(L.Callback):
    """At every validation batch: every item row of the optimizer's tables is up to date."""

    def __init__(self) -> None:
        self.checked = 0

    def on_validation_batch_start(self, trainer, module, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking:
            return
        optimizer = trainer.optimizers[0]
        for state in optimizer.state.values():
            if "last_step" in state:
                assert state["last_step"].tolist() == [int(state["step"])] * state["last_step"].numel()
                self.checked += 1


@pytest.mark.parametrize("validate", [True, False], ids=["with-validation", "no-validation"])
def test_fit_with_deferred_updates_flushes_before_validation_checkpoints_and_at_the_end(tmp_path, validate):
    """Rows are up to date when validation reads them, in the epoch-end checkpoint and after fit (mid-epoch stop)."""
    L.seed_everything(3, verbose=False)
    data = SASRecDataModule(max_len=6, print_statistics=False,
                            source=SourceOptions(synthetic_users=60, synthetic_items=300),
                            loader=LoaderOptions(batch_size=4, num_negatives=1, num_eval_negatives=20),
                            cache=CacheOptions(use=False))
    module = SASRecModule(num_items=data.num_items, max_len=6, loss=SampledSoftmaxLoss(negatives=8),
                          encoder=EncoderOptions(hidden_size=8, num_blocks=1),
                          speed=SpeedOptions(item_updates="deferred"))
    check = CheckFlushed()
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)  # one file per epoch end
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, max_epochs=3, limit_train_batches=4, max_steps=10,
                        limit_val_batches=1 if validate else 0,
                        num_sanity_val_steps=0, callbacks=[check, checkpoint])
    trainer.fit(module, datamodule=data)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, LazyAdam) and optimizer.catch_up
    table = module.model.items.embedding.weight
    state = optimizer.state[table]
    assert int(state["step"]) == trainer.global_step == 10  # stopped in the middle of the third epoch
    assert state["last_step"].tolist() == [10] * table.size(0)
    assert check.checked == (2 if validate else 0)
    # The checkpoints written at the ends of epochs 1 and 2 (after validation or at on_train_epoch_end).
    for name, step in (("epoch=0-step=4.ckpt", 4), ("epoch=1-step=8.ckpt", 8)):
        saved = torch.load(tmp_path / name, weights_only=True)
        last_steps = [s["last_step"] for s in saved["optimizer_states"][0]["state"].values() if "last_step" in s]
        assert last_steps and all(s.tolist() == [step] * s.numel() for s in last_steps), name
