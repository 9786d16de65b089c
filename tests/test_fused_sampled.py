"""The fused losses over shared negatives against the written-out losses: values and gradients, float64."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from sasrec_lightning import SASRec
from sasrec_lightning.fast import fused_sampled
from sasrec_lightning.fast.fused_sampled import (
    FusedGBCE,
    FusedSampledSoftmax,
    SharedNegatives,
    accidental_hits,
    distinct_ids,
    fused_gbce,
    fused_sampled_softmax,
)
from sasrec_lightning.fast.speed import SpeedOptions, use_fused_losses
from sasrec_lightning.fast.workspace import Workspace
from sasrec_lightning.model.losses import (
    GBCELoss,
    SampledSoftmax,
    SampledSoftmaxLoss,
    SharedGBCE,
    gbce_beta,
    gbce_shared_loss,
    sampled_softmax_loss,
)
from sasrec_lightning.model.options import EncoderOptions

NUM_ITEMS = 12  # few items: many accidental hits


def encoder(seed: int = 0, hidden: int = 6) -> SASRec:
    torch.manual_seed(seed)
    model = SASRec(num_items=NUM_ITEMS, max_len=5, options=EncoderOptions(hidden_size=hidden, num_blocks=0)).double()
    with torch.no_grad():
        model.items.embedding.weight.normal_(0, 1.5)  # large scores: the row max matters
        model.items.embedding.weight[0].zero_()
    return model


def case(seed: int, positions_per_row=(3, 0, 5, 1), num_negatives: int = 9, per_sequence: bool = False):
    """Hidden states, targets, rows and negatives of a batch whose sequences have the given numbers of positions."""
    g = torch.Generator().manual_seed(seed)
    rows = torch.repeat_interleave(torch.arange(len(positions_per_row)), torch.tensor(positions_per_row))
    n = rows.numel()
    hidden = torch.randn(n, 6, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(1, NUM_ITEMS + 1, (n,), generator=g)
    shape = (len(positions_per_row), num_negatives) if per_sequence else (num_negatives,)
    shared = torch.randint(1, NUM_ITEMS + 1, shape, generator=g)
    return hidden, targets, rows, shared


def log_q_of(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 100)
    q = torch.rand(NUM_ITEMS + 1, generator=g, dtype=torch.float64) + 0.05
    return (q / q.sum() * 9).log()


def gradients(loss_fn, model, hidden):
    """The loss of ``loss_fn(items, hidden)`` on the model's scored items, and its gradients (hidden, item table)."""
    hidden = hidden.clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model.scoring_items, hidden)
    loss.backward()
    return loss.detach(), hidden.grad, model.items.embedding.weight.grad.clone()


def assert_like_written_out(fused_fn, plain_fn, model, hidden):
    """The fused loss's value and gradients (hidden states, item table) equal the written-out loss's (float64)."""
    fused, plain = gradients(fused_fn, model, hidden), gradients(plain_fn, model, hidden)
    for got, want in zip(fused, plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("per_sequence", [False, True])
@pytest.mark.parametrize("with_log_q", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampled_softmax_matches_the_written_out_loss(per_sequence, with_log_q, seed):
    model = encoder(seed)
    hidden, targets, rows, shared = case(seed, per_sequence=per_sequence)
    log_q = log_q_of(seed) if with_log_q else None
    workspace = Workspace()
    assert_like_written_out(lambda m, h: fused_sampled_softmax(m, h, targets, shared, log_q, rows, workspace),
                            lambda m, h: sampled_softmax_loss(m, h, targets, shared, log_q, rows), model, hidden)


def test_sampled_softmax_against_a_per_position_formula():
    """Independent of both implementations: logsumexp over the target and the negatives that are not hits."""
    model = encoder(3)
    hidden, targets, rows, shared = case(3, per_sequence=True)
    log_q = log_q_of(3)
    loss = fused_sampled_softmax(model.scoring_items, hidden, targets, shared, log_q, rows)
    table = model.items.embedding.weight.detach()
    total = 0.0
    for i in range(hidden.size(0)):
        items = [int(targets[i])] + [int(j) for j in shared[rows[i]] if int(j) != int(targets[i])]
        terms = [float(hidden[i] @ table[item]) - float(log_q[item]) for item in items]
        top = max(terms)
        total += top + math.log(sum(math.exp(t - top) for t in terms)) - terms[0]
    assert float(loss) == pytest.approx(total / hidden.size(0), rel=1e-12)


@pytest.mark.parametrize("per_sequence", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_gbce_matches_the_written_out_loss(per_sequence, seed):
    model = encoder(seed)
    hidden, targets, rows, shared = case(seed, per_sequence=per_sequence)
    beta = gbce_beta(shared.size(-1), NUM_ITEMS, 0.75)
    assert_like_written_out(lambda m, h: fused_gbce(m, h, targets, shared, beta, rows, Workspace()),
                            lambda m, h: gbce_shared_loss(m, h, targets, shared, beta, rows), model, hidden)


def test_gbce_shared_against_a_per_position_formula():
    model = encoder(4)
    hidden, targets, rows, shared = case(4)
    beta = 0.3
    loss = fused_gbce(model.scoring_items, hidden, targets, shared, beta, rows)
    table = model.items.embedding.weight.detach()
    softplus = lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x)))  # noqa: E731
    total = 0.0
    for i in range(hidden.size(0)):
        positive = float(hidden[i] @ table[targets[i]])
        negatives = [float(hidden[i] @ table[j]) for j in shared if int(j) != int(targets[i])]
        total += (beta * softplus(-positive) + sum(softplus(s) for s in negatives)) / (shared.numel() + 1)
    # torch's softplus returns x itself above 20 (off by log1p(exp(-x)) < 2.1e-9)
    assert float(loss) == pytest.approx(total / hidden.size(0), rel=1e-9)


def test_gradients_match_finite_differences():
    model = encoder(5)
    hidden, targets, rows, shared = case(5, positions_per_row=(2, 3), num_negatives=4, per_sequence=True)
    log_q = log_q_of(5)
    weight = model.items.embedding.weight
    hidden = hidden.requires_grad_(True)

    def fn(h, w):
        class Table:  # an item representation whose table is w
            num_items = NUM_ITEMS

            def __call__(self, ids):
                return torch.nn.functional.embedding(ids, w)

        return fused_sampled_softmax(Table(), h, targets, shared, log_q, rows)

    assert torch.autograd.gradcheck(fn, (hidden, weight.detach().clone().requires_grad_(True)))


@pytest.mark.parametrize("per_sequence", [False, True])
def test_accidental_hits_are_every_match(per_sequence):
    _, targets, rows, shared = case(7, positions_per_row=(4, 0, 6, 2, 1), num_negatives=15, per_sequence=per_sequence)
    negatives = SharedNegatives(shared, rows)
    hit_rows, hit_columns = accidental_hits(negatives, targets)
    found = set(zip(hit_rows.tolist(), hit_columns.tolist(), strict=True))
    expected = set()
    for i, target in enumerate(targets.tolist()):
        ids = shared[rows[i]] if per_sequence else shared
        block_row = int(negatives.slot[i]) if per_sequence else i
        expected |= {(block_row, j) for j, item in enumerate(ids.tolist()) if item == target}
    assert expected and found == expected
    assert hit_rows.numel() == len(found)  # each pair once


def test_the_logit_block_is_reused_and_handed_back():
    model = encoder(0)
    hidden, targets, rows, shared = case(0, num_negatives=7)
    workspace = Workspace()
    items = model.scoring_items
    for _ in range(3):
        loss = fused_sampled_softmax(items, hidden.clone().requires_grad_(True), targets, shared, None, rows, workspace)
        loss.backward()
        block = workspace._block
        assert block is not None and not workspace._lent
    loss = fused_sampled_softmax(items, hidden, targets, shared, None, rows, workspace)
    assert workspace._block is block  # the same buffer every step


@pytest.mark.parametrize("table_rows", [13, 40])
def test_distinct_ids_are_those_of_torch_unique(table_rows):
    ids = torch.randint(0, 13, (30,), generator=torch.Generator().manual_seed(4))
    ids[:3] = torch.tensor([12, 0, 12])  # the first and last row, and a repeat
    got, want = distinct_ids(ids, table_rows), torch.unique(ids, sorted=True, return_inverse=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("loss", ["sampled_softmax", "gbce"])
@pytest.mark.parametrize("num_negatives", [9, 2])  # 5 x 9 cells >= 13 table rows: distinct items; 5 x 2: every cell
def test_per_sequence_negatives_sum_their_gradient_over_slices_of_sequences(monkeypatch, loss, num_negatives):
    """Each distinct item is looked up once and its gradient summed over its cells, a slice of sequences at a time."""
    monkeypatch.setattr(fused_sampled, "_GRID_SLICE", 1)  # one sequence per slice
    model = encoder(6)
    hidden, targets, rows, shared = case(6, positions_per_row=(3, 0, 5, 1, 2), num_negatives=num_negatives,
                                         per_sequence=True)
    distinct = SharedNegatives(shared, rows, NUM_ITEMS + 1).inverse is not None
    assert distinct == (num_negatives == 9)
    beta = gbce_beta(num_negatives, NUM_ITEMS, 0.75)
    if loss == "gbce":
        assert_like_written_out(lambda m, h: fused_gbce(m, h, targets, shared, beta, rows, Workspace(), Workspace()),
                                lambda m, h: gbce_shared_loss(m, h, targets, shared, beta, rows), model, hidden)
    else:
        assert_like_written_out(
            lambda m, h: fused_sampled_softmax(m, h, targets, shared, None, rows, Workspace(), Workspace()),
            lambda m, h: sampled_softmax_loss(m, h, targets, shared, None, rows), model, hidden)


def test_the_per_sequence_grid_is_reused_and_a_retained_graph_runs_again():
    model = encoder(0)
    hidden, targets, rows, shared = case(0, per_sequence=True)
    block, grid = Workspace(), Workspace()
    items = model.scoring_items
    for _ in range(2):
        loss = fused_sampled_softmax(items, hidden.clone().requires_grad_(True), targets, shared, None, rows, block,
                                     grid)
        loss.backward()
        kept = grid._block
        assert kept is not None and not grid._lent
    h = hidden.clone().requires_grad_(True)
    loss = fused_sampled_softmax(items, h, targets, shared, None, rows, block, grid)
    assert grid._block is kept  # the same buffer every step
    loss.backward(retain_graph=True)
    once = h.grad.clone()
    loss.backward()  # the grid's vectors are still there: the same gradient again
    torch.testing.assert_close(h.grad, 2 * once)


def test_a_retained_graph_is_not_run_backward_on_an_overwritten_block():
    model = encoder(0)
    hidden, targets, rows, shared = case(0)
    workspace = Workspace()
    h = hidden.clone().requires_grad_(True)
    first = fused_sampled_softmax(model.scoring_items, h, targets, shared, None, rows, workspace)
    first.backward(retain_graph=True)
    # The block again:
    second = fused_sampled_softmax(model.scoring_items, h, targets, shared.flip(0), None, rows, workspace)
    second.backward()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()


@pytest.mark.parametrize("sampling", ["uniform", "popularity", "in_batch"])
@pytest.mark.parametrize("sharing", ["batch", "sequence"])
def test_the_loss_module_fused_and_plain_agree(sampling, sharing):
    """Same seed, same negatives: the fused loss (logQ skipped when uniform) equals the written-out one."""
    model = encoder(1)
    hidden, targets, rows, _ = case(1)
    counts = torch.arange(NUM_ITEMS + 1, dtype=torch.float64)
    values = []
    for fused in (True, False):
        loss_fn = SampledSoftmaxLoss(9, sampling, 0.5, True, sharing)
        if fused:
            use_fused_losses(loss_fn)
        assert isinstance(loss_fn.logits, FusedSampledSoftmax) == fused
        loss_fn.set_frequencies(counts)
        generator = torch.Generator().manual_seed(11)
        values.append(gradients(
            lambda m, h, f=loss_fn, g=generator: f(m, h, targets, torch.empty(h.size(0), 0), g, rows), model, hidden))
    for got, want in zip(*values, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sharing", ["batch", "sequence"])
def test_gbce_with_shared_negatives_draws_its_own(sharing):
    model = encoder(2)
    hidden, targets, rows, _ = case(2)
    per_position = GBCELoss(0.75)
    assert per_position.needs_negatives
    values = []
    for fused in (True, False):
        shared = GBCELoss(0.75, shared_negatives=9, sharing=sharing)
        assert not shared.needs_negatives
        if fused:
            use_fused_losses(shared)
        assert isinstance(shared.logits, FusedGBCE) == fused
        generator = torch.Generator().manual_seed(5)
        values.append(shared(model.scoring_items, hidden, targets, torch.empty(hidden.size(0), 0), generator, rows))
    torch.testing.assert_close(values[0], values[1], rtol=1e-10, atol=0)
    # The same negatives, drawn here: the written-out loss.
    shape = (9,) if sharing == "batch" else (4, 9)
    drawn = torch.randint(1, NUM_ITEMS + 1, shape, generator=torch.Generator().manual_seed(5))
    expected = gbce_shared_loss(model.scoring_items, hidden, targets, drawn, gbce_beta(9, NUM_ITEMS, 0.75), rows)
    torch.testing.assert_close(values[0], expected, rtol=1e-10, atol=0)


def test_no_positions_gives_a_zero_loss_with_gradients():
    model = encoder(0)
    hidden = torch.zeros(0, 6, dtype=torch.float64, requires_grad=True)
    loss = fused_sampled_softmax(model.scoring_items, hidden, torch.zeros(0, dtype=torch.long), torch.tensor([1, 2]))
    loss.backward()
    assert float(loss) == 0.0 and model.items.embedding.weight.grad is not None


def test_float32_large_scores_stay_finite():
    """Scores of several hundred: exp would overflow without the row max."""
    model = encoder(0).float()
    with torch.no_grad():
        model.items.embedding.weight.mul_(30)
    hidden, targets, rows, shared = case(0)
    hidden = (hidden * 30).float().requires_grad_(True)
    loss = fused_sampled_softmax(model.scoring_items, hidden, targets, shared, None, rows)
    loss.backward()
    reference = sampled_softmax_loss(model.double().scoring_items, hidden.detach().double(), targets, shared, None,
                                     rows)
    assert torch.isfinite(loss) and torch.isfinite(hidden.grad).all()
    assert float(loss) == pytest.approx(float(reference), rel=1e-4)


def fit_setup(module) -> None:
    """What ``fit`` does to the module's parts before training: its ``SpeedParts`` callback's setup, on CPU."""
    trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cpu")))
    for callback in module.configure_callbacks():
        callback.setup(trainer, module, "fit")


def test_module_options_reach_the_losses():
    from sasrec_lightning import SASRecModule
    from sasrec_lightning.errors import OptionError

    module = SASRecModule(num_items=NUM_ITEMS, max_len=5, encoder=EncoderOptions(hidden_size=8, num_blocks=1),
                          loss={"class_path": "gbce", "init_args": {"shared_negatives": 7, "sharing": "sequence"}},
                          speed=SpeedOptions(fused_losses=False))
    assert not module.loss.needs_negatives  # the data module draws none: the loss draws its 7
    assert (module.loss.shared_negatives, module.loss.sharing) == (7, "sequence")
    fit_setup(module)
    assert type(module.loss.logits) is SharedGBCE  # fused_losses false: the written-out loss
    fused = SASRecModule(num_items=NUM_ITEMS, max_len=5, loss="sampled_softmax", encoder=EncoderOptions(hidden_size=8))
    assert type(fused.loss.logits) is SampledSoftmax  # the built model is plain
    fit_setup(fused)
    assert isinstance(fused.loss.logits, FusedSampledSoftmax)  # fused_losses (default true) swapped in for fit
    batch = {"input_ids": torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]),
             "targets": torch.tensor([[0, 2, 3, 4], [5, 6, 7, 8]]),
             "negatives": torch.zeros(2, 4, 0, dtype=torch.long), "sample_seed": torch.tensor(3)}
    loss = module.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and module.model.items.embedding.weight.grad.abs().sum() > 0
    with pytest.raises(OptionError, match="--model.loss.shared_negatives -1"):
        SASRecModule(num_items=NUM_ITEMS, loss={"class_path": "gbce", "init_args": {"shared_negatives": -1}})


@pytest.mark.parametrize("per_sequence", [False, True])
def test_a_negative_far_above_its_positive_takes_the_row_maximum_path(per_sequence):
    """float32: a negative 150 above its positive overflows exp(s_neg - s_pos); the result must not."""
    model = encoder(0).float()
    hidden, targets, rows, shared = case(0, per_sequence=per_sequence)
    with torch.no_grad():
        table = model.items.embedding.weight
        table.zero_()
        negative = int(shared.reshape(-1)[0])
        targets = torch.where(targets == negative, negative % NUM_ITEMS + 1, targets)  # no hit on it
        table[negative, 0] = 1.0  # score 150 against hidden[:, 0] = 150; the targets score 0
    hidden = torch.zeros_like(hidden, dtype=torch.float32)
    hidden[:, 0] = 150.0
    h = hidden.clone().requires_grad_(True)
    loss = fused_sampled_softmax(model.scoring_items, h, targets, shared, None, rows)
    loss.backward()
    reference_model = encoder(0)
    with torch.no_grad():
        reference_model.items.embedding.weight.copy_(model.items.embedding.weight.double())
    r = hidden.double().requires_grad_(True)
    reference = sampled_softmax_loss(reference_model.scoring_items, r, targets, shared, None, rows)
    reference.backward()
    assert torch.isfinite(loss) and float(reference) > 100  # the overflow case really happened
    assert float(loss) == pytest.approx(float(reference), rel=1e-5)
    torch.testing.assert_close(h.grad.double(), r.grad, rtol=1e-5, atol=1e-7)


def test_softplus_row_sums_through_slices_equal_the_whole_block():
    from sasrec_lightning.fast.fused_sampled import _softplus_row_sums

    block = torch.randn(600, 7, dtype=torch.float64) * 30  # 3 slices of 256 rows, the last one short
    block[5, 2] = float("-inf")  # an accidental hit contributes softplus(-inf) = 0
    torch.testing.assert_close(_softplus_row_sums(block), torch.nn.functional.softplus(block).sum(-1),
                               rtol=1e-12, atol=0)
    assert _softplus_row_sums(block[:0]).shape == (0,)
