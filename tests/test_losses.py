"""The four training losses against independent reference formulas, on tiny sizes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sasrec_lightning.errors import OptionError
from sasrec_lightning.fast.speed import use_fused_losses
from sasrec_lightning.fast.workspace import Workspace
from sasrec_lightning.model.chunked_ce import ChunkedCrossEntropy, chunked_cross_entropy
from sasrec_lightning.model.encoder import SASRec
from sasrec_lightning.model.losses import (
    LOSSES,
    FullCrossEntropyLoss,
    GBCELoss,
    SampledSoftmaxLoss,
    bce_loss,
    gbce_beta,
    gbce_loss,
    resolve_loss,
    sampled_softmax_loss,
)
from sasrec_lightning.model.options import EncoderOptions
from sasrec_lightning.training.optimization import OptimizationOptions

NUM_ITEMS = 12


def naive_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reference: the full-softmax loss with the whole ``(N, I)`` logit matrix in fp32."""
    logits = hidden.float() @ weight.float()[1:].T  # (N, I)
    return F.cross_entropy(logits, targets - 1)


@pytest.fixture
def encoder() -> SASRec:
    torch.manual_seed(0)
    model = SASRec(num_items=NUM_ITEMS, max_len=5, options=EncoderOptions(hidden_size=8, num_blocks=1))
    with torch.no_grad():  # make scores spread out so the losses are not all ~log 2
        model.items.embedding.weight.mul_(3.0)
    return model


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(6, 8, generator=generator)  # (N, d)
    targets = torch.tensor([1, 5, 12, 5, 7, 3])  # (N,)
    negatives = torch.tensor([[2, 4], [1, 9], [11, 2], [6, 8], [1, 12], [10, 4]])  # (N, k)
    return hidden, targets, negatives


# ------------------------------------------------------------------------------------------ ce
@pytest.mark.parametrize("chunk_size", [1, 3, 5, 11, 12, 100])
def test_chunked_ce_matches_naive_loss_and_gradients(chunk_size):
    generator = torch.Generator().manual_seed(chunk_size)
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(NUM_ITEMS + 1, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.tensor([1, 12, 3, 3, 7, 11, 2])

    loss = ChunkedCrossEntropy.apply(hidden, weight, targets, chunk_size)
    grad_hidden, grad_weight = torch.autograd.grad(loss, (hidden, weight))
    logits = hidden @ weight[1:].T  # (N, I) in float64: an independent reference
    reference = F.cross_entropy(logits, targets - 1)
    ref_hidden, ref_weight = torch.autograd.grad(reference, (hidden, weight))

    torch.testing.assert_close(loss, reference)
    torch.testing.assert_close(grad_hidden, ref_hidden)
    torch.testing.assert_close(grad_weight, ref_weight)
    assert torch.all(grad_weight[0] == 0), "the padding row is not a class and gets no gradient"


@pytest.mark.parametrize("chunk_size", [3, 7])  # several chunks (recomputed) / one chunk (kept from forward)
def test_chunked_ce_passes_gradcheck(chunk_size):
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(4, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(8, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.tensor([1, 7, 4, 4])
    assert torch.autograd.gradcheck(lambda h, w: ChunkedCrossEntropy.apply(h, w, targets, chunk_size),
                                    (hidden, weight))


def test_ce_loss_module_equals_naive_in_fp32(encoder, batch):
    hidden, targets, negatives = batch
    loss = FullCrossEntropyLoss(chunk_size=4)(encoder.scoring_items, hidden, targets, negatives)
    torch.testing.assert_close(loss, naive_cross_entropy(hidden, encoder.output_weight, targets))
    assert loss.dtype == torch.float32


def test_chunked_ce_rejects_bad_chunk_and_handles_no_positions(encoder):
    with pytest.raises(OptionError, match="chunk_size"):
        FullCrossEntropyLoss(chunk_size=0)
    empty = torch.zeros(0, 8, requires_grad=True)
    loss = chunked_cross_entropy(empty, encoder.output_weight, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0


def _ce_problem(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(NUM_ITEMS + 1, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    return hidden, weight, torch.randint(1, NUM_ITEMS + 1, (rows,), generator=generator)


def _ce_loss_and_grads(hidden, weight, targets, chunk_size, workspace):
    loss = ChunkedCrossEntropy.apply(hidden, weight, targets, chunk_size, workspace)
    return (loss, *torch.autograd.grad(loss, (hidden, weight)))


@pytest.mark.parametrize("chunk_size", [5, 100])  # several chunks / one chunk kept for the backward pass
def test_ce_workspace_reused_across_steps_gives_the_same_loss_and_gradients(chunk_size):
    workspace = Workspace()
    for step, rows in enumerate([7, 3, 11, 2, 11]):  # the block grows, is reused by smaller steps, grows again
        problem = _ce_problem(rows, seed=step)
        expected = _ce_loss_and_grads(*problem, chunk_size, None)
        got = _ce_loss_and_grads(*problem, chunk_size, workspace)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert workspace._block.numel() == 11 * min(chunk_size, NUM_ITEMS), "the block grows to the largest step only"


def test_ce_workspace_is_lent_to_one_loss_at_a_time():
    workspace = Workspace()
    first, second = _ce_problem(6, seed=1), _ce_problem(6, seed=2)
    loss_1 = ChunkedCrossEntropy.apply(*first, 100, workspace)  # holds the block until its backward pass
    loss_2 = ChunkedCrossEntropy.apply(*second, 100, workspace)  # must get a block of its own
    grads_2 = torch.autograd.grad(loss_2, second[:2])
    grads_1 = torch.autograd.grad(loss_1, first[:2])
    for got, problem in ((grads_1, first), (grads_2, second)):
        for a, b in zip(got, _ce_loss_and_grads(*problem, 100, None)[1:], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not workspace._lent, "the backward pass gave the block back"

    with torch.no_grad():  # no backward pass will come: the block is not kept
        ChunkedCrossEntropy.apply(*first, 100, workspace)
    assert not workspace._lent
    loss = ChunkedCrossEntropy.apply(*first, 100, workspace)
    del loss  # a graph dropped without a backward pass gives the block back with it
    assert not workspace._lent


def test_ce_workspace_retained_graph_is_refused_once_its_block_was_reused():
    workspace = Workspace()
    first, second = _ce_problem(6, seed=1), _ce_problem(6, seed=2)
    loss = ChunkedCrossEntropy.apply(*first, 100, workspace)
    loss.backward(retain_graph=True)
    grads = first[0].grad.clone(), first[1].grad.clone()
    loss.backward(retain_graph=True)  # the block is untouched since: the same gradients again
    torch.testing.assert_close((first[0].grad, first[1].grad), (2 * grads[0], 2 * grads[1]))
    ChunkedCrossEntropy.apply(*second, 100, workspace).backward()  # lends the block anew and overwrites it
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_ce_workspace_copies_start_empty():
    import copy
    import pickle

    module = FullCrossEntropyLoss(chunk_size=100)
    use_fused_losses(module)  # the speed parts give the loss a kept block
    workspace = module.logits.blocks
    assert isinstance(workspace, Workspace)
    hidden, weight, targets = _ce_problem(4, seed=0)
    chunked_cross_entropy(hidden, weight, targets, 100, workspace).backward()
    assert workspace._block is not None
    assert copy.deepcopy(module).logits.blocks._block is None
    assert pickle.loads(pickle.dumps(module)).logits.blocks._block is None
    workspace.clear()
    assert workspace._block is None


# ----------------------------------------------------------------------------------------- bce
def test_bce_with_k_negatives_matches_formula(encoder, batch):
    hidden, targets, negatives = batch
    weight = encoder.output_weight
    positive = (hidden * weight[targets]).sum(-1)
    negative = torch.einsum("nd,nkd->nk", hidden, weight[negatives])
    expected = -(torch.sigmoid(positive).log().mean() + (1 - torch.sigmoid(negative)).log().mean())
    torch.testing.assert_close(bce_loss(encoder.scoring_items, hidden, targets, negatives), expected)
    # One negative per position is the paper's Eq. 6.
    one = negatives[:, :1]
    expected_one = -(torch.sigmoid(positive).log() + (1 - torch.sigmoid(negative[:, 0])).log()).mean()
    torch.testing.assert_close(bce_loss(encoder.scoring_items, hidden, targets, one), expected_one)


# ---------------------------------------------------------------------------------------- gbce
def test_gbce_beta_limits():
    assert gbce_beta(4, 1001, 0.0) == pytest.approx(1.0)
    assert gbce_beta(4, 1001, 1.0) == pytest.approx(4 / 1000)
    # gSASRec paper: beta = alpha (t (1 - 1/alpha) + 1/alpha).
    alpha = 256 / (3416 - 1)
    assert gbce_beta(256, 3416, 0.75) == pytest.approx(alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha))


@pytest.mark.parametrize("t", [0.0, 0.5, 0.75, 1.0])
def test_gbce_matches_reference_transform(encoder, batch, t):
    hidden, targets, negatives = batch
    weight = encoder.output_weight.double()
    positive = (hidden.double() * weight[targets]).sum(-1, keepdim=True)  # (N, 1)
    negative = torch.einsum("nd,nkd->nk", hidden.double(), weight[negatives])  # (N, k)
    beta = gbce_beta(negatives.size(-1), NUM_ITEMS, t)
    # The gSASRec reference: replace the positive logit by log(1 / (sigma(s)^-beta - 1)), then BCE
    # with labels [1, 0, ..., 0] averaged over the k + 1 logits.
    transformed = torch.log(1.0 / (torch.sigmoid(positive).pow(-beta) - 1.0))
    logits = torch.cat([transformed, negative], dim=-1)
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1
    expected = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(-1).mean()
    loss = gbce_loss(encoder.scoring_items, hidden, targets, negatives, t)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-6)


def test_gbce_t0_is_bce_averaged_over_all_logits(encoder, batch):
    hidden, targets, negatives = batch
    k = negatives.size(-1)
    bce_sum = bce_loss(encoder.scoring_items, hidden, targets, negatives[:, :1])  # k = 1: pos + neg
    torch.testing.assert_close(gbce_loss(encoder.scoring_items, hidden, targets, negatives[:, :1], t=0.0), bce_sum / 2)
    with pytest.raises(OptionError, match="model.loss.*t"):
        GBCELoss(t=1.5)
    assert k == 2


# ----------------------------------------------------------------------------- sampled softmax
def test_sampled_softmax_over_every_item_is_full_softmax(encoder, batch):
    hidden, targets, _ = batch
    every_item = torch.arange(1, NUM_ITEMS + 1)  # the target is an accidental hit and is masked
    loss = sampled_softmax_loss(encoder.scoring_items, hidden, targets, every_item)
    torch.testing.assert_close(loss, naive_cross_entropy(hidden, encoder.output_weight, targets))
    # A constant logQ (uniform sampling) changes nothing.
    log_q = torch.full((NUM_ITEMS + 1,), math.log(3.0))
    torch.testing.assert_close(sampled_softmax_loss(encoder.scoring_items, hidden, targets, every_item, log_q), loss)


def test_sampled_softmax_logq_subtracts_log_expected_count(encoder, batch):
    hidden, targets, _ = batch
    shared = torch.tensor([2, 4, 4, 9])
    log_q = torch.linspace(-3, 1, NUM_ITEMS + 1)
    weight = encoder.output_weight
    logits = hidden @ weight.T - log_q  # (N, I + 1) corrected
    rows = torch.arange(len(targets))
    candidates = torch.cat([logits[rows, targets].unsqueeze(-1), logits[:, shared]], dim=-1)
    candidates[:, 1:][shared.unsqueeze(0) == targets.unsqueeze(-1)] = float("-inf")
    expected = F.cross_entropy(candidates, torch.zeros(len(targets), dtype=torch.long))
    torch.testing.assert_close(sampled_softmax_loss(encoder.scoring_items, hidden, targets, shared, log_q), expected)


def test_sampled_softmax_with_negatives_per_sequence_matches_a_loop_over_positions(encoder, batch):
    hidden, targets, _ = batch
    rows = torch.tensor([0, 0, 0, 1, 2, 2])  # positions 0-2 belong to sequence 0, 3 to 1, 4-5 to 2
    shared = torch.tensor([[2, 5, 9], [4, 5, 6], [7, 3, 3]])  # (B, M): 5 and 7/3 are accidental hits
    log_q = torch.linspace(-2, 1, NUM_ITEMS + 1)
    weight = encoder.output_weight
    expected = []
    for n in range(len(targets)):  # brute force: each position against its own sequence's negatives
        negatives = shared[rows[n]]
        logits = torch.cat([(hidden[n] @ weight[targets[n]]).view(1) - log_q[targets[n]],
                            hidden[n] @ weight[negatives].T - log_q[negatives]])
        logits[1:][negatives == targets[n]] = float("-inf")
        expected.append(torch.logsumexp(logits, 0) - logits[0])
    loss = sampled_softmax_loss(encoder.scoring_items, hidden, targets, shared, log_q, rows=rows)
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    with pytest.raises(ValueError, match="rows"):
        sampled_softmax_loss(encoder.scoring_items, hidden, targets, shared)


def test_sampled_softmax_loss_module_draws_negatives_per_sequence(encoder, batch):
    hidden, targets, _ = batch
    rows = torch.tensor([0, 0, 1, 1, 1, 3])  # sequence 2 has no real position (all padding)
    loss = SampledSoftmaxLoss(negatives=5, sharing="sequence")
    shared, _ = loss.sample(targets, NUM_ITEMS, torch.Generator().manual_seed(0), (4, 5))
    assert shared.shape == (4, 5) and shared.min() >= 1 and shared.max() <= NUM_ITEMS
    value = loss(encoder.scoring_items, hidden, targets, None, torch.Generator().manual_seed(0), rows)
    expected = sampled_softmax_loss(encoder.scoring_items, hidden, targets, shared, None, rows)
    torch.testing.assert_close(value, expected)  # uniform: the (constant) logQ cancels
    with pytest.raises(ValueError, match="rows"):
        loss(encoder.scoring_items, hidden, targets, None)
    with pytest.raises(OptionError, match="sharing .user."):
        SampledSoftmaxLoss(sharing="user")


def test_sampled_softmax_samplers():
    torch.manual_seed(0)
    counts = torch.zeros(NUM_ITEMS + 1)
    counts[3], counts[7] = 30.0, 10.0
    loss = SampledSoftmaxLoss(negatives=4000, sampling="popularity")
    loss.set_frequencies(counts)
    shared, log_q = loss.sample(torch.tensor([1, 2]), NUM_ITEMS)
    assert set(shared.tolist()) == {3, 7}
    assert (shared == 3).float().mean().item() == pytest.approx(0.75, abs=0.03)
    assert log_q[3].item() == pytest.approx(math.log(0.75 * 4000))

    mixed = SampledSoftmaxLoss(negatives=10, sampling="in_batch", in_batch_fraction=0.6)
    mixed.set_frequencies(counts)
    targets = torch.tensor([11, 11, 11])
    shared, log_q = mixed.sample(targets, NUM_ITEMS)
    assert shared.shape == (10,) and torch.all(shared[:6] == 11)
    assert log_q[3].item() == pytest.approx(math.log(6 * 0.75 + 4 / NUM_ITEMS))

    uniform = SampledSoftmaxLoss(negatives=50)
    shared, _ = uniform.sample(targets, NUM_ITEMS)
    assert shared.min() >= 1 and shared.max() <= NUM_ITEMS
    with pytest.raises(OptionError, match="sampling .zipf."):
        SampledSoftmaxLoss(sampling="zipf")


@pytest.mark.parametrize("sampling", ["uniform", "popularity", "in_batch"])
def test_sampled_softmax_negatives_come_from_the_given_generator(sampling):
    """Each training batch seeds the shared negatives (per DDP rank, resumable), not the global RNG."""
    loss = SampledSoftmaxLoss(negatives=30, sampling=sampling)
    loss.set_frequencies(torch.arange(NUM_ITEMS + 1, dtype=torch.float64))
    targets = torch.arange(1, 9)

    def draw(seed, global_seed):
        torch.manual_seed(global_seed)
        return loss.sample(targets, NUM_ITEMS, torch.Generator().manual_seed(seed))[0]

    assert torch.equal(draw(5, global_seed=0), draw(5, global_seed=1))
    assert not torch.equal(draw(5, global_seed=0), draw(6, global_seed=0))


# ----------------------------------------------------------------------------------- all losses
SMALL = {"bce": {}, "bpr": {}, "gbce": {}, "sampled_softmax": {"negatives": 20}, "ce": {"chunk_size": 5}}

@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_fp32_under_autocast_and_reaches_the_item_table(encoder, batch, name):
    hidden, targets, negatives = batch
    loss_fn = resolve_loss({"class_path": name, "init_args": SMALL[name]})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(encoder.scoring_items, hidden.bfloat16(), targets, negatives)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert encoder.items.embedding.weight.grad is not None
    assert encoder.items.embedding.weight.grad.abs().sum() > 0
    with pytest.raises(OptionError, match="'hinge': expected one of"):
        resolve_loss("hinge")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_learns_a_tiny_next_item_task(name):
    """A few Adam steps on "item i is followed by item i + 1" lower the loss and rank the targets better."""
    from sasrec_lightning.training.module import SASRecModule  # the module's training step, not the loss interface

    torch.manual_seed(0)
    small = {**SMALL, "sampled_softmax": {"negatives": 6}}
    module = SASRecModule(num_items=NUM_ITEMS, max_len=5,
                          encoder=EncoderOptions(hidden_size=16, num_blocks=1, dropout=0.0),
                          loss={"class_path": name, "init_args": small[name]},
                          optimization=OptimizationOptions(lr=0.01))
    users = torch.arange(NUM_ITEMS)
    sequences = (users[:, None] + torch.arange(6)) % NUM_ITEMS + 1  # (U, 6): i, i + 1, ... (cyclic)
    inputs, targets = sequences[:, :-1].clone(), sequences[:, 1:].clone()  # (U, 5)
    inputs[::3, :2] = 0  # every third user is shorter: left padding
    targets[::3, :2] = 0
    generator = torch.Generator().manual_seed(1)

    def with_negatives(step: int) -> dict[str, torch.Tensor]:
        """Fresh uniform negatives every step (as in training), never the position's target."""
        negatives = torch.randint(1, NUM_ITEMS, (NUM_ITEMS, 5, 1), generator=generator)  # (U, 5, 1)
        negatives += (negatives >= targets.unsqueeze(-1)).long()  # skip the target: uniform over the rest
        negatives[targets == 0] = 0
        return {"input_ids": inputs, "targets": targets, "negatives": negatives, "users": users, "sample_seed": step}

    batch = with_negatives(0)

    def loss_and_mean_rank() -> tuple[float, float]:
        module.eval()
        with torch.no_grad():
            loss = module.training_step(batch, 0).item()
            hidden = module.model(inputs)[targets != 0]  # (N, d) real positions
            scores = hidden @ module.model.output_weight[1:].T  # (N, I) every item, by hand
            target_scores = scores.gather(1, (targets[targets != 0] - 1).unsqueeze(1))  # (N, 1)
            rank = (scores > target_scores).sum(1).double().mean().item()
        module.train()
        return loss, rank

    loss_before, rank_before = loss_and_mean_rank()
    optimizer = torch.optim.Adam(module.parameters(), lr=0.02)
    for step in range(150):
        optimizer.zero_grad()
        module.training_step(with_negatives(step + 1), 0).backward()
        optimizer.step()
    loss_after, rank_after = loss_and_mean_rank()
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)
    assert rank_before > 2.0 and rank_after < 0.5, (rank_before, rank_after)  # chance is (12 - 1) / 2
