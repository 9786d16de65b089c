"""``SASRecModule``: the LightningModule that trains and evaluates the :class:`SASRec` encoder."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from .checkpoints import check_item_ids, check_state_shapes, data_setting_differences
from .encoder import SASRec
from .losses import LOSSES, SampledSoftmaxLoss, build_loss
from .metrics import RankingMetrics, beats_target, rank_of_target
from .options import check_model_options
from .recommend import Recommendations, recommend, top_k_scores
from .row_grad import RowGradient
from .sampling import item_counts
from .vocabulary import ItemVocabulary

__all__ = ["SASRecModule"]


class SASRecModule(L.LightningModule):
    """SASRec with the paper's loss, optimizer and evaluation protocol.

    Args:
        num_items: number of items; linked from the data module, never typed by hand.
        max_len: maximum sequence length ``n``; linked from the data module.
        hidden_size: embedding size ``d`` (paper: 50).
        num_blocks: self-attention blocks ``b`` (paper: 2; 0 allowed).
        num_heads: attention heads (paper: 1).
        dropout: dropout rate (paper: 0.2 for ML-1M, 0.5 for the sparse datasets).
        use_positional: learned positional embedding (ablation switch).
        share_item_embedding: score with the input item embedding (ablation switch).
        use_residual: residual connections (ablation switch).
        init: weight initialization: ``normal`` (``N(0, init_std^2)``, as BERT / RecBole / the RecSys
            2023 SASRec code) or ``xavier`` (the original TF code and the common PyTorch port).
        init_std: standard deviation of ``init: normal``.
        loss: training loss: ``bce`` (the paper's, ``data.num_negatives`` negatives per position),
            ``gbce`` (gSASRec's generalized BCE, same negatives), ``sampled_softmax`` (softmax over
            ``sampled_negatives`` negatives shared by the batch or each sequence) or ``ce`` (exact full softmax,
            item-chunked).
        gbce_t: gBCE calibration parameter ``t`` in ``[0, 1]`` (gSASRec default 0.75).
        sampled_negatives: negatives per batch (or per sequence) for ``sampled_softmax`` (e.g. 3000).
        negative_sampling: ``sampled_softmax`` negatives: ``uniform``, ``popularity`` (training
            frequency) or ``in_batch`` (other positions' targets mixed with uniform).
        in_batch_fraction: share of in-batch negatives under ``in_batch``.
        logq_correction: subtract the log sampling probability under non-uniform sampling.
        negative_sharing: ``sampled_softmax``: ``batch`` draws one set of negatives for every
            position of a batch; ``sequence`` one per sequence, shared by its positions (SASRec+ of
            Klenitskiy & Vasilev; independent across sequences, ``batch_size`` times the vectors).
        ce_chunk_size: items per chunk of the ``ce`` loss (peak memory ~ positions x chunk).
        loss_normalization: how a batch's loss is divided: ``epoch`` sums it over the batch's
            positions and divides by the mean number of positions per training batch (every position
            weighs the same across the epoch, also when length bucketing makes batches of short
            sequences); ``batch`` takes the mean over the batch's positions (the reference code,
            where a position in a batch of short sequences weighs more). With random batches the
            two agree in expectation. ``epoch`` needs a training dataset with per-sample
            ``lengths`` (ours); other data falls back to ``batch`` with a warning.
        lr: Adam learning rate (paper: 0.001).
        betas: Adam betas (the original code uses (0.9, 0.98)).
        weight_decay: Adam weight decay on all parameters.
        l2_emb: L2 penalty ``l2_emb * ||M||^2 / 2`` on the item embedding table.
        optimizer: any optimizer factory (LightningCLI ``--model.optimizer``); overrides lr/betas/
            weight_decay when given.
        lr_scheduler: optional scheduler factory.
        eval_protocol: ``sampled`` ranks the held-out item against the data module's sampled
            negatives (paper: 100); ``full`` ranks it against every item.
        exclude_seen: under full ranking, ignore items from the user's history (except the target).
        top_k: cut-offs for HR@K and NDCG@K.
        eval_chunk_size: items scored at once under full ranking (bounds memory; 4096 keeps each
            users x items block cache-sized: 3x faster than 65536 on Beauty, docs/performance.md).
    """

    def __init__(
        self,
        num_items: int = 1,
        max_len: int = 50,
        hidden_size: int = 50,
        num_blocks: int = 2,
        num_heads: int = 1,
        dropout: float = 0.2,
        use_positional: bool = True,
        share_item_embedding: bool = True,
        use_residual: bool = True,
        init: Literal["normal", "xavier"] = "normal",
        init_std: float = 0.02,
        loss: Literal["bce", "gbce", "sampled_softmax", "ce"] = "bce",
        gbce_t: float = 0.75,
        sampled_negatives: int = 3000,
        negative_sampling: Literal["uniform", "popularity", "in_batch"] = "uniform",
        in_batch_fraction: float = 0.5,
        logq_correction: bool = True,
        negative_sharing: Literal["batch", "sequence"] = "batch",
        ce_chunk_size: int = 65536,
        loss_normalization: Literal["epoch", "batch"] = "epoch",
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.98),
        weight_decay: float = 0.0,
        l2_emb: float = 0.0,
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        eval_protocol: Literal["sampled", "full"] = "sampled",
        exclude_seen: bool = True,
        top_k: Sequence[int] = (10,),
        eval_chunk_size: int = 4096,
    ) -> None:
        super().__init__()
        check_model_options(num_items, max_len, hidden_size, num_blocks, num_heads, dropout, init_std, gbce_t,
                            sampled_negatives, in_batch_fraction, ce_chunk_size, lr, betas, weight_decay, l2_emb,
                            top_k, eval_chunk_size)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)}")
        self.model = SASRec(
            num_items=num_items,
            max_len=max_len,
            hidden_size=hidden_size,
            num_blocks=num_blocks,
            num_heads=num_heads,
            dropout=dropout,
            use_positional=use_positional,
            share_item_embedding=share_item_embedding,
            use_residual=use_residual,
            init=init,
            init_std=init_std,
        )
        self.loss_fn = build_loss(
            loss, num_items, gbce_t=gbce_t, sampled_negatives=sampled_negatives,
            negative_sampling=negative_sampling, in_batch_fraction=in_batch_fraction,
            logq_correction=logq_correction, ce_chunk_size=ce_chunk_size, negative_sharing=negative_sharing,
        )
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.val_metrics = RankingMetrics(top_k, prefix="val/")
        self.test_metrics = RankingMetrics(top_k, prefix="test/")
        # Served with the weights: interaction counts (empty-history fallback of ``recommend``) and,
        # in the checkpoint, the original item ids (see ``on_save_checkpoint``).
        self.register_buffer("item_popularity", torch.zeros(num_items + 1, dtype=torch.int64))
        self.item_vocabulary: ItemVocabulary | None = None
        # What ``predict_step`` returns; the prediction writer sets them from its config
        # (``--prediction.k``), since LightningCLI takes model hyper-parameters from ``--ckpt_path``.
        self.predict_k = 10
        self.predict_exclude_seen = True
        self._row_grads: list[RowGradient] | None = None  # installed while training (on_train_start)
        self._positions_per_batch: float | None = None  # loss_normalization: epoch (see _epoch_normalizer)
        self._normalizer_loader: weakref.ref | None = None  # the training loader it was computed for
        self._train_loss_sum: Tensor | None = None  # train/loss summed since it was last logged
        self._train_loss_steps = 0

    # ----------------------------------------------------------------------------------- training
    def forward(self, input_ids: Tensor) -> Tensor:
        """``(B, L)`` item ids -> ``(B, L, d)`` hidden states."""
        return self.model(input_ids)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        hidden = self.model(batch["input_ids"])  # (B, L, d)
        targets, negatives = batch["targets"], batch["negatives"]  # (B, L), (B, L, k)
        length = targets.size(1)
        # Real (non-padded) positions in row-major order, found once: (N,) flat indices.
        real = torch.nonzero(targets.reshape(-1)).squeeze(1)
        rows = torch.div(real, length, rounding_mode="floor")  # (N,) the sequence of each real position
        generator = None
        if "sample_seed" in batch:  # the loss's own sampling is seeded per batch (per DDP rank, resumable)
            generator = torch.Generator(device=hidden.device).manual_seed(int(batch["sample_seed"]))
        loss = self.loss_fn(
            self.model, hidden.reshape(-1, hidden.size(-1)).index_select(0, real), targets.reshape(-1)[real],
            negatives.reshape(-1, negatives.size(-1))[real], generator, rows,
        )
        self._log_train_loss(loss.detach(), batch_idx)
        positions_per_batch = self._epoch_normalizer()
        if positions_per_batch is not None:  # position mean -> sum / epoch-mean positions per batch
            loss = loss * (rows.numel() / positions_per_batch)
        if self.hparams.l2_emb:
            loss = loss + self.hparams.l2_emb * self.model.item_embedding.weight.square().sum() / 2
        return loss

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        # Batches are flat dicts; when every tensor is already on the device (CPU training) skip
        # Lightning's generic walk over the collection (~0.1 ms a step).
        if isinstance(batch, dict) and all(not isinstance(value, Tensor) or value.device == device
                                           for value in batch.values()):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _log_train_loss(self, loss: Tensor, batch_idx: int) -> None:
        """Log ``train/loss``: the per-position loss averaged over the steps since the last log.

        ``self.log`` costs Lightning ~1-2 ms of Python per call (about 8 % of a CPU step on Amazon
        data, docs/performance.md), so the loss is summed on the device every step and logged only
        on the steps Lightning writes to its loggers (every ``trainer.log_every_n_steps``) and on the
        epoch's last batch. The logged value is the mean over those steps, not one batch's loss.
        """
        if batch_idx == 0:  # a new epoch starts a new mean
            self._train_loss_sum, self._train_loss_steps = None, 0
        total = self._train_loss_sum
        self._train_loss_sum = loss if total is None else total + loss
        self._train_loss_steps += 1
        trainer = self._trainer
        if trainer is None:  # a direct training_step call: nothing to log to
            return
        every = trainer.log_every_n_steps
        last = batch_idx + 1 >= trainer.num_training_batches
        if last or (every > 0 and (self.global_step + 1) % every == 0):
            self.log("train/loss", self._train_loss_sum / self._train_loss_steps, prog_bar=True, batch_size=1)
            self._train_loss_sum, self._train_loss_steps = None, 0

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        # The item tables keep one dense gradient buffer each, written and cleared row by row
        # (row_grad.py): a step touches a few thousand rows, and dense per-lookup gradients cost
        # about a quarter of a CPU training step. Every other parameter is zeroed as usual.
        if self._row_grads is None:  # an override of on_train_start skipped ours: install now
            self._install_row_gradients()
        buffers = [row_grad.parameter.grad for row_grad in self._row_grads]
        optimizer.zero_grad()
        # Under DDP the all-reduce writes rows that other processes touched: clear everything.
        full = self._trainer is not None and self.trainer.world_size > 1
        for row_grad, buffer in zip(self._row_grads, buffers, strict=True):
            row_grad.parameter.grad = buffer
            row_grad.zero_(full=full)

    def _install_row_gradients(self) -> None:
        if self._row_grads is not None:  # still installed (e.g. a fit that raised before on_train_end)
            return
        tables = {id(p): p for p in (self.model.item_embedding.weight, self.model.output_weight)}
        self._row_grads = [RowGradient(table) for table in tables.values()]
        self.model.use_row_gradients(tuple(self._row_grads))

    def on_train_start(self) -> None:
        # Before the first forward pass: Lightning calls optimizer_zero_grad between a step's forward
        # and backward, so installing there would leave the first step with dense lookups.
        self._install_row_gradients()

    def _epoch_normalizer(self) -> float | None:
        """``loss_normalization: epoch``: mean positions per training batch, else None.

        Computed on the first training step of each training loader (not in ``on_train_start``,
        which subclasses may override without calling ``super()``) and kept for that loader. None
        without a trainer (a direct ``training_step`` call): the per-batch mean.
        """
        if self._trainer is None or self.hparams.get("loss_normalization", "batch") != "epoch":
            return None  # (checkpoints from before the option have none: batch)
        loader = self.trainer.train_dataloader
        if loader is not None and (self._normalizer_loader is None or self._normalizer_loader() is not loader):
            self._normalizer_loader = weakref.ref(loader)  # not id(): a later loader may reuse a freed one's id
            self._positions_per_batch = self._mean_positions_per_batch(loader)
        return self._positions_per_batch

    def _mean_positions_per_batch(self, loader) -> float | None:
        """Real (non-padded) positions per training batch, averaged over an epoch of every process."""
        lengths = getattr(getattr(loader, "dataset", None), "lengths", None)
        if lengths is None or len(loader) == 0:
            rank_zero_warn("loss_normalization='epoch' needs a training dataset with per-sample `lengths` "
                           "(SASRecDataModule's has them); this one has none, so each batch's loss is the mean "
                           "over its positions (loss_normalization='batch').")
            return None
        return float(np.sum(lengths)) / (len(loader) * self.trainer.world_size)

    def on_train_end(self) -> None:
        # Back to ordinary dense gradients for any later use of the encoder outside this loop.
        for row_grad in self._row_grads or ():
            row_grad.remove()
        self._row_grads = None
        self.model.use_row_gradients(())
        self._release_loss_memory()

    def _release_loss_memory(self) -> None:
        """Let go of the ``ce`` loss's kept logits block (up to ~1 GB on Beauty) until the next training step."""
        workspace = getattr(self.loss_fn, "workspace", None)
        if workspace is not None:
            workspace.clear()

    def on_fit_start(self) -> None:
        # Popularity / in-batch sampled softmax needs the training item frequencies.
        if isinstance(self.loss_fn, SampledSoftmaxLoss) and self.hparams.negative_sampling != "uniform":
            split = getattr(self.trainer.datamodule, "split_data", None)
            if split is None:
                raise ValueError(
                    f"negative_sampling={self.hparams.negative_sampling!r} needs item frequencies from a data "
                    "module with `split_data` (SASRecDataModule); use negative_sampling: uniform otherwise"
                )
            # Frequencies of training targets: what in-batch negatives are drawn from.
            counts = item_counts(split.data.items, split.starts + 1, split.train_ends, split.data.num_items)
            self.loss_fn.set_frequencies(torch.from_numpy(counts))

    def configure_optimizers(self):
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(self.parameters())
        else:
            # Fused Adam: one pass over each parameter instead of ~10 foreach kernels. The dense
            # item table dominates the parameters, so this is most of a CPU step's optimizer cost
            # (docs/performance.md); the update is the same Adam.
            fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in self.parameters())
            optimizer = torch.optim.Adam(
                self.parameters(), lr=self.hparams.lr, betas=tuple(self.hparams.betas),
                weight_decay=self.hparams.weight_decay, fused=fused or None,
            )
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    # --------------------------------------------------------------------------------- evaluation
    def target_ranks(self, batch: dict[str, Tensor]) -> Tensor:
        """0-based rank of each held-out item under the configured protocol: ``(B,)``.

        Ties and NaN scores count against the target and a non-finite target ranks last
        (:mod:`~sasrec_lightning.metrics`), so a constant or diverged model gets the worst rank.
        """
        return self._ranks_and_target_scores(batch)[0]

    def _ranks_and_target_scores(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """``(B,)`` ranks and the ``(B,)`` target scores they were compared with."""
        if batch["input_ids"].size(0) == 0:  # a DDP rank without users (UserBatchSampler): nothing to score
            return batch["targets"].clone(), torch.zeros(0, device=batch["targets"].device)
        hidden = self.model.last_hidden(batch["input_ids"]).float()  # (B, d)
        # Scores in fp32 even under mixed precision: bf16 rounding creates ties, which count against the target.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            if self.hparams.eval_protocol == "sampled":
                # Target (column 0) and negatives in one elementwise product and sum, so equal item
                # vectors give bit-equal scores and a tie counts against the target.
                scores = self.model.score_items(hidden, batch["candidates"])  # (B, 1 + n)
                return rank_of_target(scores[:, 1:], scores[:, 0]), scores[:, 0]
            return self.full_ranks(hidden, batch, return_target_scores=True)

    def full_ranks(self, hidden: Tensor, batch: dict[str, Tensor], return_target_scores: bool = False):
        """Rank of the target among all items, scored in chunks so memory stays bounded.

        The target's score comes from the same kind of matrix product as its competitors': every
        product has the shape ``(max(B, 2), d) x (d, chunk)`` (the last chunk overlaps the one before
        it instead of being narrower), because a product of another shape, or the elementwise
        ``score_items``, can round the same dot product differently and break an exact tie in the
        target's favour. Two rows at least: a one-row product runs as a matrix-vector product,
        which rounds columns differently (measured on CPU).

        Args:
            hidden: ``(B, d)`` fp32 hidden states.
            batch: evaluation batch with ``targets`` ``(B,)`` and ``seen_rows``/``seen_items`` ``(S,)``.
            return_target_scores: also return the ``(B,)`` target scores.

        Returns:
            ``(B,)`` int64 ranks (and the target scores when asked).
        """
        targets = batch["targets"]  # (B,)
        size = targets.size(0)
        seen_rows, seen_items = batch["seen_rows"], batch["seen_items"]  # (S,), (S,)
        if self.hparams.exclude_seen:
            keep = seen_items != targets[seen_rows]  # (S,) the target itself stays rankable
            seen_rows, seen_items = seen_rows[keep], seen_items[keep]
        weight = self.model.output_weight.float()  # (I + 1, d), row 0 = padding
        rows_total = weight.size(0)
        chunk = max(1, min(self.hparams.eval_chunk_size, rows_total))
        # Chunk starts; the last chunk ends at the table's end and overlaps its predecessor.
        starts = list(range(0, rows_total - chunk, chunk)) + [rows_total - chunk]
        queries = hidden if size > 1 else hidden.expand(2, -1)  # (max(B, 2), d)

        if len(starts) == 1:
            target_scores = None  # taken from the only chunk below
        else:  # the targets' vectors in blocks of the chunk's shape, zero-filled
            target_scores = torch.empty(size, dtype=hidden.dtype, device=hidden.device)
            for first in range(0, size, chunk):
                last = min(first + chunk, size)
                block = weight.new_zeros(chunk, weight.size(1))  # (chunk, d)
                block[: last - first] = weight[targets[first:last]]
                picked = torch.arange(first, last, device=hidden.device)
                target_scores[first:last] = (queries @ block.T)[picked, picked - first]  # (chunk_rows,)

        ranks = torch.zeros_like(targets)
        done = 0  # item ids below this were counted by an earlier chunk
        for start in starts:
            stop = start + chunk
            scores = (queries @ weight[start:stop].T)[:size]  # (B, C)
            if target_scores is None:
                target_scores = scores.gather(1, targets.unsqueeze(-1)).squeeze(-1)  # (B,)
            beats = beats_target(scores, target_scores)  # (B, C)
            beats[:, : max(done, 1) - start] = False  # padding (id 0) and ids already counted
            in_chunk = (targets >= start) & (targets < stop)  # (B,)
            rows = torch.nonzero(in_chunk).squeeze(-1)
            beats[rows, targets[rows] - start] = False  # the target does not outrank itself
            if self.hparams.exclude_seen:
                here = (seen_items >= start) & (seen_items < stop)  # (S,)
                beats[seen_rows[here], seen_items[here] - start] = False
            ranks += beats.sum(dim=-1)
            done = stop
        return (ranks, target_scores) if return_target_scores else ranks

    def on_validation_start(self) -> None:
        self._release_loss_memory()  # evaluation inside fit does not need the training step's block

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        ranks, target_scores = self._ranks_and_target_scores(batch)
        self.val_metrics.update(ranks, torch.isfinite(target_scores))

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        ranks, target_scores = self._ranks_and_target_scores(batch)
        self.test_metrics.update(ranks, torch.isfinite(target_scores))

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> dict[str, Tensor]:
        """Top ``self.predict_k`` items per user in internal ids (``-inf`` score = no item left).

        Seen items are excluded if ``self.predict_exclude_seen``; the prediction writer
        (:class:`~sasrec_lightning.prediction.PredictionWriter`) sets both and turns the ids into
        original ones.
        """
        if batch["input_ids"].size(0) == 0:  # a DDP rank without users (UserBatchSampler)
            empty = torch.zeros(0, self.predict_k, device=batch["users"].device)
            return {"users": batch["users"], "items": empty.long(), "scores": empty}
        hidden = self.model.last_hidden(batch["input_ids"]).float()  # (B, d)
        with torch.autocast(device_type=hidden.device.type, enabled=False):  # fp32 scores under mixed precision
            scores = self.model.score_all(hidden)  # (B, I + 1)
        seen = (batch["seen_rows"], batch["seen_items"]) if self.predict_exclude_seen else (None, None)
        top_scores, top_items = top_k_scores(scores, self.predict_k, *seen)  # (B, k), (B, k)
        return {"users": batch["users"], "items": top_items, "scores": top_scores}

    # ------------------------------------------------------------------------- recommendations
    def set_item_vocabulary(self, item_ids, popularity=None) -> None:
        """Attach the original item ids (internal id -> original, index 0 unused) and item counts.

        Done automatically from a data module with ``sequences`` at setup; call it by hand for a
        model trained elsewhere.
        """
        vocabulary = ItemVocabulary(item_ids)
        if vocabulary.num_items != self.model.num_items:
            raise ValueError(f"item vocabulary has {vocabulary.num_items} items but the model was built with "
                             f"num_items={self.model.num_items}; expected the id map of the training data")
        self.item_vocabulary = vocabulary
        if popularity is not None:
            counts = torch.as_tensor(popularity, dtype=torch.int64).reshape(-1)  # (I + 1,)
            if counts.numel() != self.model.num_items + 1:
                raise ValueError(f"popularity has {counts.numel()} entries; expected num_items + 1 = "
                                 f"{self.model.num_items + 1} (index 0 = padding)")
            self.item_popularity.copy_(counts)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        sequences = getattr(datamodule, "sequences", None)
        if self.item_vocabulary is None and sequences is not None and sequences.num_items == self.model.num_items:
            counts = torch.from_numpy(np.bincount(sequences.items, minlength=sequences.num_items + 1))
            self.set_item_vocabulary(sequences.item_ids, counts)

    def _data_item_ids(self):
        """The item ids this module is used with: its trainer's data module's, else an attached vocabulary's."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        sequences = getattr(datamodule, "sequences", None)
        if sequences is not None:
            return sequences.item_ids
        return None if self.item_vocabulary is None else self.item_vocabulary.item_ids

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.item_vocabulary is not None:
            checkpoint["item_ids"] = self.item_vocabulary.to_list()  # plain ints/strings: weights_only-safe
        # The torch RNG drives dropout (and sampled-softmax negatives): saving it makes a resumed
        # run draw the same masks as an uninterrupted one. Byte tensors: weights_only-safe.
        checkpoint["torch_rng_state"] = torch.get_rng_state()
        if self.device.type == "cuda":
            checkpoint["cuda_rng_state"] = torch.cuda.get_rng_state(self.device)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Before the weights are loaded: a checkpoint of other data would fail in load_state_dict with
        # a size-mismatch traceback (other item count) or, worse, score the wrong items (same count).
        # The error names the data options that differ from the training run's (Lightning saves them).
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        differences = data_setting_differences(checkpoint.get("datamodule_hyper_parameters"),
                                               getattr(datamodule, "hparams", None))
        state = checkpoint.get("state_dict")
        if state is not None:
            check_state_shapes(state, self.state_dict(), self.model.num_items, differences)
        data_ids = self._data_item_ids()
        if checkpoint.get("item_ids") is not None:
            if data_ids is not None:
                check_item_ids(checkpoint["item_ids"], data_ids, differences)
            self.item_vocabulary = ItemVocabulary(checkpoint["item_ids"])
        if state is not None and "item_popularity" not in state:  # written before the buffer existed
            state["item_popularity"] = torch.zeros_like(self.item_popularity)
        resuming = self._trainer is not None and self.trainer.state.fn == "fit"
        if resuming and checkpoint.get("torch_rng_state") is not None:
            torch.set_rng_state(checkpoint["torch_rng_state"])
            if checkpoint.get("cuda_rng_state") is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(checkpoint["cuda_rng_state"], self.device)

    def recommend(self, sequences: Sequence[Sequence], k: int = 10, exclude_seen: bool = True,
                  strict: bool = False) -> Recommendations:
        """Top-``k`` items after each item sequence, without a Trainer (a notebook, a service).

        Args:
            sequences: item-id sequences, oldest first, in the dataset's original ids when the
                model knows them (trained from a data module or a checkpoint of one), otherwise
                internal ids ``1..num_items``. Unknown ids are skipped with a warning (``strict``:
                raise); a sequence with no known item gets the most-popular items.
            k: items per sequence.
            exclude_seen: never recommend an item already in the sequence.
            strict: raise ``KeyError`` on an unknown id instead of skipping it (services that must
                not answer a malformed request with most-popular items should pass ``True``).

        Returns:
            ``Recommendations(items, scores, fallback)``: per sequence the ids (best first), their
            scores, and whether it was answered with the most-popular items (no known item).
        """
        return recommend(self.model, sequences, k, exclude_seen, self.item_vocabulary, self.item_popularity,
                         strict=strict)
