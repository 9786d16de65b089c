"""Ties and near-ties are decided on the vectors, the same on every CPU (issue 23, case 0).

A BLAS may round one dot product differently in two columns of one product, so equal item
vectors need not get equal fp32 scores (a constant model was credited a top-3 rank on one CPU).
The reference here is exact: every product of two fp32 numbers is exact in float64 and
``math.fsum`` rounds their sum once, so the sign of ``s_i - s_t`` it gives is the exact one. The
table holds exact copies of one vector, copies one ulp apart in one coordinate (each direction),
scaled copies and unrelated items; every user ranks a target among them. The checks run with 1
and 2 threads, batch sizes 1 to 5,000 and every chunk size from 1 to past the catalogue. CI runs
this file again under ``MKL_ENABLE_INSTRUCTIONS=SSE4_2`` and ``ATEN_CPU_CAPABILITY=default``
(``.ci/run``; the rule of 0.2 failed here under the first), and ``benchmarks/tie_levels.py`` under
every instruction-set level the CPU offers.
"""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch

from sasrec_lightning.model.ranking import full_ranks, sampled_ranks

HIDDEN = 8
BATCHES = (1, 2, 3, 7, 64, 257, 1000, 5000)
THREADS = (1, 2)


def _ulp_apart(vector: torch.Tensor, coordinate: int, direction: float) -> torch.Tensor:
    """``vector`` with one coordinate moved to the next fp32 value towards ``direction``."""
    moved = vector.clone()
    moved[coordinate] = torch.nextafter(vector[coordinate], torch.tensor(direction))
    return moved


@cache
def tie_table() -> torch.Tensor:
    """``(I + 1, d)`` fp32 items: copies of ``v``, ``v`` one ulp off in each coordinate (both ways), 2v, others."""
    generator = torch.Generator().manual_seed(7)
    base = torch.randn(HIDDEN, generator=generator)
    rows = [torch.zeros(HIDDEN), base, base.clone(), base.clone()]  # padding, then items 1-3: exact ties
    for coordinate in range(HIDDEN):
        rows += [_ulp_apart(base, coordinate, math.inf), _ulp_apart(base, coordinate, -math.inf)]
    rows += [base * 2.0, base * 0.5, -base]  # scaled exactly
    rows += list(torch.randn(4, HIDDEN, generator=generator))  # unrelated items
    return torch.stack(rows)  # (I + 1, d): 27 items


@cache
def users(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, d)`` queries and ``(B,)`` targets: the base vector, one of its ulp neighbours, or another item."""
    generator = torch.Generator().manual_seed(batch)
    hidden = torch.randn(batch, HIDDEN, generator=generator)
    num_items = tie_table().size(0) - 1
    targets = torch.randint(1, num_items + 1, (batch,), generator=generator)
    targets[: min(batch, 4)] = torch.tensor([1, 2, 5, 20])[: min(batch, 4)]  # a tie, an ulp neighbour, 2v
    return hidden, targets


def at_least(hidden: list[float], candidate: list[float], target: list[float]) -> bool:
    """Exactly whether ``hidden . candidate >= hidden . target`` (fp32 inputs: float64 products are exact)."""
    return math.fsum([h * c for h, c in zip(hidden, candidate, strict=True)]
                     + [-h * t for h, t in zip(hidden, target, strict=True)]) >= 0


@cache
def exact_full_ranks(batch: int) -> list[int]:
    """Per user: the items other than padding and the target scoring exactly at least the target."""
    hidden, targets = users(batch)
    table = tie_table().tolist()
    ranks = []
    for row, target in zip(hidden.tolist(), targets.tolist(), strict=True):
        ranks.append(sum(at_least(row, table[item], table[target]) for item in range(1, len(table)) if item != target))
    return ranks


def candidates(batch: int) -> torch.Tensor:
    """``(B, 1 + 8)`` target, then negatives: the exact copies, ulp neighbours, 2v and repeats."""
    _, targets = users(batch)
    negatives = torch.tensor([1, 2, 3, 4, 5, 6, 19, 3])  # ties, one ulp up and down, 2v, a repeat
    return torch.cat([targets.unsqueeze(-1), negatives.expand(batch, -1)], dim=-1)


def exact_sampled_ranks(batch: int) -> list[int]:
    hidden, _ = users(batch)
    table = tie_table().tolist()
    return [sum(at_least(row, table[item], table[ids[0]]) for item in ids[1:])
            for row, ids in zip(hidden.tolist(), candidates(batch).tolist(), strict=True)]


def check_full_ranking(batch: int, chunks) -> None:
    hidden, targets = users(batch)
    empty = torch.zeros(0, dtype=torch.int64)
    for chunk in chunks:
        ranks, _ = full_ranks(hidden, tie_table(), targets, empty, empty, chunk, exclude_seen=True)
        assert ranks.tolist() == exact_full_ranks(batch), (batch, chunk, torch.get_num_threads())


def check_sampled_ranking(batch: int) -> None:
    hidden, _ = users(batch)
    vectors = tie_table()[candidates(batch)]  # (B, 1 + n, d)
    ranks, _ = sampled_ranks(hidden, vectors)
    assert ranks.tolist() == exact_sampled_ranks(batch), (batch, torch.get_num_threads())


def every_chunk() -> list:
    """Every chunk width from one item to past the catalogue, and ``auto``."""
    return [*range(1, tie_table().size(0) + 3), 4096, "auto"]


@pytest.fixture(params=THREADS)
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def test_the_reference_sees_the_near_ties():
    """The table is as intended: exact ties, and neighbours on both sides of the base vector for every user."""
    hidden, _ = users(64)
    table = tie_table().tolist()
    for row in hidden.tolist():
        assert at_least(row, table[2], table[1]) and at_least(row, table[1], table[2])  # an exact tie
        neighbours = [at_least(row, table[item], table[1]) for item in range(4, 4 + 2 * HIDDEN)]
        assert any(neighbours) and not all(neighbours)  # one ulp above and one below the base vector


@pytest.mark.parametrize("batch", BATCHES)
def test_full_ranking_decides_ties_and_ulp_neighbours_exactly(batch, threads):
    check_full_ranking(batch, every_chunk())


@pytest.mark.parametrize("batch", BATCHES)
def test_sampled_ranking_decides_ties_and_ulp_neighbours_exactly(batch, threads):
    check_sampled_ranking(batch)
