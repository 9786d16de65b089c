"""Range checks of the model's and the data module's options, run by their constructors.

Both classes are built by LightningCLI from typed ``__init__`` arguments, which checks types but
not ranges: ``max_len: 0`` or ``dropout: 1.5`` would otherwise fail deep inside the first forward
pass (or, for ``num_eval_negatives: 0``, silently score every user a hit). Each check raises an
:class:`~sasrec_lightning.errors.OptionError` naming the option, the value and what is allowed,
which the CLI prints as one ``error:`` line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import OptionError

__all__ = ["MAX_CUTOFFS", "at_least", "in_range", "positive", "check_model_options", "check_top_k",
           "check_item_updates", "check_data_options"]


def at_least(section: str, name: str, value, minimum: int, optional: bool = False, auto: bool = False) -> None:
    """``value >= minimum`` (an integer), or ``None`` when ``optional``, or ``"auto"`` when ``auto``."""
    if (optional and value is None) or (auto and value == "auto"):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = ("'auto' or " if auto else "") + f"an integer >= {minimum}" + (" (or empty)" if optional else "")
        raise OptionError(f"--{section}.{name} {value!r}: expected {allowed}")


def in_range(section: str, name: str, value, low: float, high: float, high_open: bool = False) -> None:
    """``low <= value <= high`` (``< high`` when ``high_open``)."""
    inside = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
    if not inside or (high_open and value >= high):
        interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
        raise OptionError(f"--{section}.{name} {value!r}: expected a number in {interval}")


def positive(section: str, name: str, value, allow_zero: bool = False) -> None:
    """A finite number ``> 0`` (``>= 0`` when ``allow_zero``): ``.inf`` and ``.nan`` are refused like ``-1``."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < 0 or (value == 0 and not allow_zero):
        raise OptionError(f"--{section}.{name} {value!r}: expected a finite number {'>=' if allow_zero else '>'} 0")


def check_model_options(
    num_items: int, max_len: int, hidden_size: int, num_blocks: int, num_heads: int, dropout: float,
    init_std: float, gbce_t: float, sampled_negatives: int, in_batch_fraction: float, ce_chunk_size: int,
    lr: float, betas: Sequence[float], weight_decay: float, l2_emb: float, top_k: Sequence[int],
    eval_chunk_size: int | str, gbce_shared_negatives: int = 0, eval_protocol: str = "sampled",
) -> None:
    """Raise :class:`OptionError` for the first :class:`~sasrec_lightning.SASRecModule` option out of range."""
    section = "model"
    at_least(section, "num_items", num_items, 1)
    at_least(section, "max_len", max_len, 1)
    at_least(section, "hidden_size", hidden_size, 1)
    at_least(section, "num_blocks", num_blocks, 0)
    at_least(section, "num_heads", num_heads, 1)
    if hidden_size % num_heads:
        raise OptionError(f"--{section}.hidden_size {hidden_size} is not divisible by --{section}.num_heads "
                          f"{num_heads}: each head gets hidden_size / num_heads dimensions")
    in_range(section, "dropout", dropout, 0.0, 1.0, high_open=True)
    positive(section, "init_std", init_std)
    in_range(section, "gbce_t", gbce_t, 0.0, 1.0)
    at_least(section, "sampled_negatives", sampled_negatives, 1)
    at_least(section, "gbce_shared_negatives", gbce_shared_negatives, 0)
    in_range(section, "in_batch_fraction", in_batch_fraction, 0.0, 1.0)
    at_least(section, "ce_chunk_size", ce_chunk_size, 1)
    positive(section, "lr", lr)
    if len(betas) != 2:
        raise OptionError(f"--{section}.betas {list(betas)!r}: expected two numbers in [0, 1)")
    for beta in betas:
        in_range(section, "betas", beta, 0.0, 1.0, high_open=True)
    positive(section, "weight_decay", weight_decay, allow_zero=True)
    positive(section, "l2_emb", l2_emb, allow_zero=True)
    check_top_k(top_k, num_items, eval_protocol)
    at_least(section, "eval_chunk_size", eval_chunk_size, 1, auto=True)


# Each cut-off adds two metrics to every evaluation and to the logs (hr@K, ndcg@K); the papers report
# 1 to 4 of them (SASRec: 10; gSASRec and SASRec+: 1, 5, 10, 20), so 10 leaves room to spare.
MAX_CUTOFFS = 10


def check_top_k(top_k: Sequence[int], num_items: int, eval_protocol: str = "sampled") -> None:
    """Raise :class:`OptionError` unless ``top_k`` is 1 to ``MAX_CUTOFFS`` cut-offs, each at least 1.

    Under ``eval_protocol: full`` every cut-off must also be at most ``num_items``: the target is ranked
    among the catalogue, so at ``K > num_items`` every user is a hit (HR@K = 1 for any model). The check
    needs a real catalogue: ``num_items`` 1 is the constructor's placeholder default (the CLI and
    ``load_from_checkpoint`` always give the data's), and a catalogue of one item has nothing to rank
    anyway. Under the sampled protocol the target is ranked among its ``1 + num_eval_negatives``
    candidates (a data option), not the catalogue.
    """
    section = "model"
    shown = top_k if isinstance(top_k, str) else list(top_k)
    if isinstance(top_k, (str, bytes)) or not len(top_k) or any(
            isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in top_k):
        raise OptionError(f"--{section}.top_k {shown!r}: expected a non-empty list of cut-offs, each an integer >= 1 "
                          "(e.g. [1, 5, 10])")
    if len(top_k) > MAX_CUTOFFS:
        raise OptionError(f"--{section}.top_k has {len(top_k):,} cut-offs; expected at most {MAX_CUTOFFS} (e.g. [1, 5, "
                          "10, 20]): each one adds hr@K and ndcg@K to every evaluation and log")
    above = [k for k in top_k if k > num_items]
    if eval_protocol == "full" and num_items > 1 and above:
        raise OptionError(f"--{section}.top_k {shown!r}: cut-off {above[0]} is above the catalogue's {num_items} "
                          f"items, so under --{section}.eval_protocol full every user would count as a hit at it; "
                          f"expected cut-offs <= {num_items}")


def check_item_updates(item_updates: str, l2_emb: float, optimizer, betas: Sequence[float]) -> None:
    """Raise :class:`OptionError` when ``item_updates`` is unknown or meets an option it cannot honour."""
    section = "model"
    if item_updates not in ("dense", "lazy", "deferred"):
        raise OptionError(f"--{section}.item_updates {item_updates!r}: expected 'dense', 'lazy' or 'deferred'")
    if item_updates == "dense":
        return
    mode = item_updates
    if l2_emb:
        # The penalty's gradient l2_emb * M is non-zero on every row, so every row would be "touched".
        raise OptionError(f"--{section}.item_updates {mode} with --{section}.l2_emb {l2_emb}: the L2 term gives every "
                          "item row a gradient, so every row would be updated each step; set l2_emb 0 (weight_decay "
                          "is applied to the rows a step used) or use item_updates dense")
    if optimizer is not None:
        raise OptionError(f"--{section}.item_updates {mode} builds its own optimizer (lazy Adam from lr, betas, "
                          f"weight_decay), so --{section}.optimizer cannot be given with it; drop "
                          f"--{section}.optimizer or use item_updates dense")
    if mode == "deferred" and not betas[0] < betas[1] ** 0.5:
        # The closed-form catch-up sums dense Adam's moves along a momentum decaying as (beta1 / sqrt(beta2))^j.
        raise OptionError(f"--{section}.item_updates deferred with --{section}.betas {list(betas)}: needs beta1 < "
                          f"sqrt(beta2) (here {betas[0]} >= {betas[1] ** 0.5:.6g}), so that the steps a row misses "
                          "add up to a finite move; lower beta1, raise beta2, or use item_updates lazy or dense")


def check_data_options(
    max_len: int, batch_size: int, eval_batch_size: int, num_negatives: int, num_eval_negatives: int,
    min_user_interactions: int | None, min_item_interactions: int | None, temporal_quantiles: Sequence[float],
    num_proc: int | None, num_workers: int, synthetic_users: int, synthetic_items: int,
) -> None:
    """Raise :class:`OptionError` for the first :class:`~sasrec_lightning.SASRecDataModule` option out of range."""
    section = "data"
    at_least(section, "max_len", max_len, 1)
    at_least(section, "batch_size", batch_size, 1)
    at_least(section, "eval_batch_size", eval_batch_size, 1)
    at_least(section, "num_negatives", num_negatives, 1)
    # 0 would rank every target first among no candidates: HR = NDCG = 1 for any model.
    at_least(section, "num_eval_negatives", num_eval_negatives, 1)
    at_least(section, "min_user_interactions", min_user_interactions, 0, optional=True)
    at_least(section, "min_item_interactions", min_item_interactions, 0, optional=True)
    quantiles = list(temporal_quantiles)
    valid = len(quantiles) == 2 and all(
        isinstance(q, (int, float)) and not isinstance(q, bool) and 0 <= q <= 1 for q in quantiles)
    if not valid or quantiles[0] > quantiles[1]:
        raise OptionError(f"--{section}.temporal_quantiles {quantiles!r}: expected two quantiles in [0, 1], the "
                          "validation one first and not above the test one (e.g. [0.8, 0.9])")
    at_least(section, "num_proc", num_proc, 1, optional=True)
    at_least(section, "num_workers", num_workers, 0)
    at_least(section, "synthetic_users", synthetic_users, 1)
    at_least(section, "synthetic_items", synthetic_items, 1)
