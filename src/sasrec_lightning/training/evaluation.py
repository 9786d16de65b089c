"""How a model is evaluated: the options (``--model.evaluation.*``) and the ranks of the held-out items.

The paper ranks each user's held-out item against 100 sampled negatives and reports HR@10 and
NDCG@10 (``protocol: sampled``); full ranking against every item (``protocol: full``) is what later
work reports (Krichene & Rendle, KDD 2020). The ranks come from ``model/ranking.py`` (ties and NaN
count against the target, decided on the vectors), the metrics from ``model/metrics.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ..errors import OptionError
from ..model.encoder import SASRec
from ..model.ranking import full_ranks, max_vector_norm, sampled_ranks
from ..validation import at_least, one_of

__all__ = ["EvaluationOptions", "Ranker", "MAX_CUTOFFS"]

# Each cut-off adds two metrics to every evaluation and to the logs (hr@K, ndcg@K); the papers report
# 1 to 4 of them (SASRec: 10; gSASRec and SASRec+: 1, 5, 10, 20), so 10 leaves room to spare.
MAX_CUTOFFS = 10


@dataclass(frozen=True)
class EvaluationOptions:
    """How validation and test rank the held-out items (``--model.evaluation.*``).

    Args:
        protocol: ``sampled`` ranks the held-out item against the data module's sampled negatives
            (paper: 100, ``data.loader.num_eval_negatives``); ``full`` ranks it against every item.
        exclude_seen: under full ranking, ignore items from the user's history (except the target).
        top_k: cut-offs for HR@K and NDCG@K (at most 10).
        chunk_size: items scored at once under full ranking and by ``predict`` / ``recommend``
            (bounds memory to one users x items block). ``auto``: a block of about 2M scores (8 MB) and
            at least 4096 items, the catalogue split into chunks of equal width
            (:func:`~sasrec_lightning.model.ranking.chunk_items`); or a number of items.
        baseline_category: the item-feature column (categorical or multi-valued) the category-popularity
            baseline printed after ``test`` ranks by; empty: the first such column (docs/features.md).
    """

    protocol: Literal["sampled", "full"] = "sampled"
    exclude_seen: bool = True
    top_k: tuple[int, ...] = (10,)
    chunk_size: int | Literal["auto"] = "auto"
    baseline_category: str | None = None

    def __post_init__(self) -> None:
        section = "model.evaluation"
        one_of(section, "protocol", self.protocol, ("sampled", "full"))
        top_k = self.top_k
        shown = top_k if isinstance(top_k, str) else list(top_k)
        if isinstance(top_k, (str, bytes)) or not len(top_k) or any(
                isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in top_k):
            raise OptionError(f"--{section}.top_k {shown!r}: expected a non-empty list of cut-offs, each an integer "
                              ">= 1 (e.g. [1, 5, 10])")
        if len(top_k) > MAX_CUTOFFS:
            raise OptionError(f"--{section}.top_k has {len(top_k):,} cut-offs; expected at most {MAX_CUTOFFS} (e.g. "
                              "[1, 5, 10, 20]): each one adds hr@K and ndcg@K to every evaluation and log")
        at_least(section, "chunk_size", self.chunk_size, 1, auto=True)

    def check_catalogue(self, num_items: int) -> None:
        """Under full ranking every cut-off must be at most ``num_items`` (above it every user is a hit).

        Only for a real catalogue: ``num_items`` 1 is ``SASRecModule``'s placeholder default (the CLI and
        ``load_from_checkpoint`` always give the data's). Under the sampled protocol the target is ranked
        among its ``1 + num_eval_negatives`` candidates, a data option.
        """
        above = [k for k in self.top_k if k > num_items]
        if self.protocol == "full" and num_items > 1 and above:
            raise OptionError(f"--model.evaluation.top_k {list(self.top_k)!r}: cut-off {above[0]} is above the "
                              f"catalogue's {num_items} items, so under --model.evaluation.protocol full every user "
                              f"would count as a hit at it; expected cut-offs <= {num_items}")


class Ranker:
    """The 0-based rank of each batch's held-out items under the configured protocol.

    The item table and its largest norm (the tie band's scale) are taken once per evaluation pass,
    between :meth:`start_pass` and :meth:`end_pass` (the weights do not change meanwhile); outside a
    pass, for each call.

    Args:
        options: the evaluation options.
    """

    def __init__(self, options: EvaluationOptions) -> None:
        self.options = options
        self._table: tuple[Tensor, Tensor] | None = None
        self._in_pass = False

    def start_pass(self) -> None:
        self._table, self._in_pass = None, True

    def end_pass(self) -> None:
        self._table, self._in_pass = None, False

    def _ranking_table(self, encoder: SASRec) -> tuple[Tensor, Tensor]:
        if self._table is None:
            weight = encoder.output_weight.float()  # (I + 1, d)
            table = (weight, max_vector_norm(weight))
            if not self._in_pass:
                return table
            self._table = table
        return self._table

    def ranks(self, encoder: SASRec, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(B,)`` ranks and ``(B,)`` target scores of an evaluation batch (see ``data/contract.py``).

        Ties and NaN scores count against the target and a non-finite target ranks last; a tie is
        decided on the vectors, not by how a product rounds (:mod:`~sasrec_lightning.model.ranking`), so a
        constant or diverged model gets the worst rank on every CPU.
        """
        if batch["input_ids"].size(0) == 0:  # a DDP rank without users (UserBatchSampler): nothing to score
            return batch["targets"].clone(), torch.zeros(0, device=batch["targets"].device)
        hidden = encoder.last_hidden(batch["input_ids"]).float()  # (B, d)
        # Scores in fp32 even under mixed precision: bf16 rounding creates ties, which count against the target.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            if self.options.protocol == "sampled":
                vectors = encoder.item_vectors(batch["candidates"]).float()  # (B, 1 + n, d)
                return sampled_ranks(hidden, vectors)
            weight, norm = self._ranking_table(encoder)
            none = batch["targets"].new_zeros(0)  # the history is optional without exclude_seen (data/contract.py)
            seen = batch.get("seen_rows", none), batch.get("seen_items", none)
            return full_ranks(hidden, weight, batch["targets"], *seen, self.options.chunk_size,
                              self.options.exclude_seen, table_norm=norm)
