"""``SASRecModule``: the LightningModule that trains and evaluates the :class:`SASRec` encoder."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from ..data.batches import TrainingStatistics
from ..errors import CheckpointError, ModelError, OptionError
from ..fast.lazy_adam import LazyAdam, fused_adam_supported, item_table_lazy_adam
from ..model.divergence import nonfinite_parameters, training_advice, training_loss_error, weights_error
from ..model.encoder import SASRec
from ..model.losses import LossName, build_loss
from ..model.metrics import RankingMetrics
from ..model.ranking import full_ranks, max_vector_norm, sampled_ranks
from ..options import check_item_updates, check_model_options
from ..serving.serving import ServingMixin
from .callbacks import GatheredEvaluation, RowGradients, shards_parameters
from .checkpoints import restore_rng_states, save_rng_states
from .memory import check_parameter_memory, check_training_memory
from .sharding import (
    check_sharding_options,
    is_sharded,
    parameter_groups,
    regroup_optimizer_state,
    shard_encoder,
    shard_tables,
    share_random_state,
    synchronize_replicas,
)

__all__ = ["SASRecModule"]


class SASRecModule(ServingMixin, L.LightningModule):
    """SASRec with the paper's loss, optimizer and evaluation protocol.

    Serving (``recommend``, ``set_item_vocabulary``, ``item_vocabulary``, ``predict_step``) comes from
    :class:`~sasrec_lightning.serving.ServingMixin`.

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
            2023 SASRec code), ``xavier`` (Xavier-normal, the common PyTorch port) or ``xavier_uniform``
            (Glorot-uniform, TF1's default and so the authors' code).
        init_std: standard deviation of ``init: normal``.
        block_layout: ``paper`` (the paper's equations: pre-LayerNorm sub-layers with residuals on the
            un-normalized input, an attention output projection) or ``reference`` (what the authors'
            code computes: keys and values from the un-normalized input, no output projection,
            residuals on the normalized input); see ``docs/reproducing.md``.
        loss: training loss, a name from ``losses.LOSSES``: ``bce`` (the paper's, ``data.num_negatives``
            negatives per position), ``gbce`` (gSASRec's generalized BCE, same negatives), ``bpr``
            (pairwise ranking, same negatives), ``sampled_softmax`` (softmax over ``sampled_negatives``
            negatives shared by the batch or each sequence) or ``ce`` (exact full softmax, item-chunked).
        gbce_t: gBCE calibration parameter ``t`` in ``[0, 1]`` (gSASRec default 0.75).
        sampled_negatives: negatives per batch (or per sequence) for ``sampled_softmax`` (e.g. 3000).
        negative_sampling: ``sampled_softmax`` negatives: ``uniform``, ``popularity`` (training
            frequency) or ``in_batch`` (other positions' targets mixed with uniform).
        in_batch_fraction: share of in-batch negatives under ``in_batch``.
        logq_correction: subtract the log sampling probability under non-uniform sampling.
        negative_sharing: ``sampled_softmax``: ``batch`` draws one set of negatives for every
            position of a batch; ``sequence`` one per sequence, shared by its positions (SASRec+ of
            Klenitskiy & Vasilev; independent across sequences, ``batch_size`` times the vectors).
            Also the sharing of ``gbce_shared_negatives``.
        gbce_shared_negatives: ``gbce`` with this many uniform negatives drawn by the loss and shared
            by the batch or by each sequence (``negative_sharing``), instead of the data module's
            ``data.num_negatives`` per position (``0``, the default and gSASRec's setup).
        fused_loss: the losses over shared negatives (``sampled_softmax``, ``gbce`` with
            ``gbce_shared_negatives``) as one fused operation on a reused logit block
            (``fused_sampled.py``); ``false``: the written-out PyTorch losses (same values).
        ce_chunk_size: items per chunk of the ``ce`` loss (peak memory ~ positions x chunk).
        loss_normalization: how a batch's loss is divided: ``epoch`` sums it over the batch's
            positions and divides by the mean number of positions per training batch (every position
            weighs the same across the epoch, also when length bucketing makes batches of short
            sequences); ``batch`` takes the mean over the batch's positions (the reference code,
            where a position in a batch of short sequences weighs more). With random batches the
            two agree in expectation. ``epoch`` needs the data module's ``training_statistics()``
            (``SASRecDataModule``); other training data falls back to ``batch`` with a warning.
        lr: Adam learning rate (paper: 0.001).
        betas: Adam betas (the original code uses (0.9, 0.98)).
        weight_decay: Adam weight decay on all parameters.
        l2_emb: L2 penalty ``l2_emb * ||M||^2 / 2`` on the item embedding table.
        item_updates: how Adam updates the item tables: ``dense`` (the paper's: every row and both
            moments every step) or ``lazy`` (``lazy_adam.py``: only the rows a step used; the moments
            of untouched rows do not decay and weight decay reaches only the rows used, so it is a
            different optimizer) or ``deferred`` (lazy's cost, dense Adam's trajectory: a row used again
            first catches up in closed form on the zero-gradient steps it missed, and every row is
            brought up to date before validation and at the end of each epoch and of training; equal to
            dense Adam up to ``eps`` in the skipped steps when ``weight_decay`` is 0, except that a
            forward pass reads a row that missed steps as of its last update). ``lazy`` and
            ``deferred`` pay off with large catalogues and sampled losses; they need ``l2_emb: 0`` and
            no custom ``optimizer``; ``deferred`` needs ``beta1 < sqrt(beta2)``.
        optimizer: any optimizer factory (LightningCLI ``--model.optimizer``); overrides lr/betas/
            weight_decay when given.
        lr_scheduler: optional scheduler factory.
        eval_protocol: ``sampled`` ranks the held-out item against the data module's sampled
            negatives (paper: 100); ``full`` ranks it against every item.
        exclude_seen: under full ranking, ignore items from the user's history (except the target).
        top_k: cut-offs for HR@K and NDCG@K.
        eval_chunk_size: items scored at once under full ranking and by ``predict`` / ``recommend``
            (bounds memory to one users x items block). ``auto``: a block of about 2M scores (8 MB) and
            at least 4096 items, the catalogue split into chunks of equal width
            (:func:`~sasrec_lightning.ranking.chunk_items`; 8192 items at 256 users and a million items,
            docs/performance.md); or a number of items.
        pooled_dropout: CPU speed-up: a training pass's dropout masks from one pool of cheap random bits
            (``dropout.py``); ``auto``: on CPU only; ``false``: ``nn.Dropout`` and SDPA's dropout.
        row_gradients: CPU speed-up: item-table gradients filled and cleared row by row while training
            (``row_grad.py``); ``auto``: on CPU only, and off under a sharding strategy
            (``configs/trainer/fsdp.yaml``); ``false``: ordinary dense embedding gradients.
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
        init: Literal["normal", "xavier", "xavier_uniform"] = "normal",
        init_std: float = 0.02,
        block_layout: Literal["paper", "reference"] = "paper",
        loss: LossName = "bce",
        gbce_t: float = 0.75,
        sampled_negatives: int = 3000,
        negative_sampling: Literal["uniform", "popularity", "in_batch"] = "uniform",
        in_batch_fraction: float = 0.5,
        logq_correction: bool = True,
        negative_sharing: Literal["batch", "sequence"] = "batch",
        gbce_shared_negatives: int = 0,
        fused_loss: bool = True,
        ce_chunk_size: int = 65536,
        loss_normalization: Literal["epoch", "batch"] = "epoch",
        lr: float = 0.001,
        betas: tuple[float, float] = (0.9, 0.98),
        weight_decay: float = 0.0,
        l2_emb: float = 0.0,
        item_updates: Literal["dense", "lazy", "deferred"] = "dense",
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        eval_protocol: Literal["sampled", "full"] = "sampled",
        exclude_seen: bool = True,
        top_k: Sequence[int] = (10,),
        eval_chunk_size: int | Literal["auto"] = "auto",
        pooled_dropout: bool | Literal["auto"] = "auto",
        row_gradients: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
        check_model_options(num_items, max_len, hidden_size, num_blocks, num_heads, dropout, init_std, gbce_t,
                            sampled_negatives, in_batch_fraction, ce_chunk_size, lr, betas, weight_decay, l2_emb,
                            top_k, eval_chunk_size, gbce_shared_negatives=gbce_shared_negatives,
                            eval_protocol=eval_protocol)
        check_item_updates(item_updates, l2_emb, optimizer, betas)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        # The encoder and the loss each take their own options from the fields above, by name.
        encoder_options = {name: value for name, value in self.hparams.items()
                           if name in inspect.signature(SASRec).parameters}
        check_parameter_memory(encoder_options)  # before allocating them (memory.py)
        self.model = SASRec(**encoder_options)
        self.loss_fn = build_loss(loss, **self.hparams)
        self.needs_negatives = self.loss_fn.needs_negatives  # read by the data module: draw negatives or not
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.val_metrics = RankingMetrics(top_k, prefix="val/")
        self.test_metrics = RankingMetrics(top_k, prefix="test/")
        self._init_serving(num_items)  # item ids, item popularity, predict's top-K (serving.py)
        self.statistics: TrainingStatistics | None = None  # the data module's, set at fit start
        self._train_loss_sum: Tensor | None = None  # train/loss summed since it was last logged
        self._train_loss_steps = 0
        self._eval_table: dict | None = None  # the ranking table of the evaluation pass running (_ranking_table)

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
            negatives.flatten(0, 1)[real], generator, rows,
        )
        self._log_train_loss(loss.detach(), batch_idx)
        if self.statistics is not None and self.hparams.get("loss_normalization", "batch") == "epoch":
            # position mean -> sum / epoch-mean positions per batch (checkpoints from before the option: batch)
            loss = loss * (rows.numel() / self.statistics.positions_per_batch)
        if self.hparams.l2_emb:
            loss = loss + self.hparams.l2_emb * self.model.item_embedding.weight.square().sum() / 2
        return loss

    def _log_train_loss(self, loss: Tensor, batch_idx: int) -> None:
        """Log ``train/loss``, the per-position loss averaged over the steps since it was last logged.

        ``self.log`` costs ~1-2 ms of Python a call (~8 % of a CPU step on Amazon, docs/performance.md), so
        the loss is summed on the device and logged only every ``trainer.log_every_n_steps`` steps
        and at the epoch's last batch. A non-finite step makes the sum non-finite: when it is logged,
        training stops with a :class:`~sasrec_lightning.errors.ModelError` (``divergence.py``), before
        this step's update and before the epoch's validation and checkpoint.
        """
        if batch_idx == 0:  # a new epoch starts a new mean
            self._train_loss_sum, self._train_loss_steps = None, 0
        total = self._train_loss_sum
        self._train_loss_sum = loss if total is None else total + loss
        self._train_loss_steps += 1
        if self._trainer is None:  # a direct training_step call: nothing to log to
            return
        every, last = self.trainer.log_every_n_steps, batch_idx + 1 >= self.trainer.num_training_batches
        logging_step = every > 0 and (self.global_step + 1) % every == 0
        if last or logging_step:
            mean = self._train_loss_sum / self._train_loss_steps
            # The only host sync of the check, on the steps whose loss is logged anyway; every process agrees.
            if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(mean)), all=True):
                raise training_loss_error(mean, self.current_epoch, batch_idx + 1 - self._train_loss_steps,
                                          batch_idx, self.trainer)
            self.log("train/loss", mean, prog_bar=True, batch_size=1)
            if last and not logging_step:
                # Lightning hands step values to the loggers only every log_every_n_steps: the epoch's
                # last mean goes to them directly, so a short epoch (or run) still records its loss.
                for logger in self.loggers:
                    logger.log_metrics({"train/loss": mean.item()}, step=self.global_step)
            self._train_loss_sum, self._train_loss_steps = None, 0

    def configure_callbacks(self) -> list[L.Callback]:
        # The row-gradient lifecycle is one callback's (callbacks.py); for fit only, else test would replace it.
        switch = self.hparams.get("row_gradients", "auto")
        off = switch is False or (self._trainer is not None and self.trainer.state.fn != "fit")
        # A sharded model is gathered for evaluation (callbacks.GatheredEvaluation), in every stage.
        sharded = self._trainer is not None and shards_parameters(self.trainer.strategy) and not any(
            isinstance(callback, GatheredEvaluation) for callback in self.trainer.callbacks)  # one from a stage before
        return ([] if off else [RowGradients(switch)]) + ([GatheredEvaluation()] if sharded else [])

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` shard the encoder's item tables (``sharding.py``).

        ``tensor_parallel_size`` 1: FSDP2 over the data-parallel processes, tables split by rows
        (``configs/trainer/fsdp.yaml``); ``tensor_parallel_size`` > 1 with ``data_parallel_size`` 1: the
        tables split by columns with torch's ``ColwiseParallel`` and never gathered while training, the
        rest replicated (``configs/trainer/tp.yaml``).
        A no-op under every other strategy, and once sharded (Lightning calls the hook for every stage).
        ``loss: ce`` and ``l2_emb``, which read the whole table outside its lookups, are refused
        (``OptionError``), and so are both sizes above 1 and, with tensor-parallel tables, ``item_updates``
        other than ``dense``.
        """
        if self._trainer is None or not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        if is_sharded(self.model):
            return
        mesh = self.device_mesh
        tensor_parallel = mesh["tensor_parallel"]
        check_sharding_options(self.hparams.loss, self.hparams.l2_emb, tensor_parallel.size(),
                               mesh["data_parallel"].size(), self.hparams.get("item_updates", "dense"))
        if tensor_parallel.size() > 1:
            shard_tables(self.model, tensor_parallel)
            synchronize_replicas(self.model, tensor_parallel)
        else:
            shard_encoder(self.model, mesh["data_parallel"])

    def on_fit_start(self) -> None:
        # What the loss and `loss_normalization: epoch` need, from the data module's one public method.
        datamodule = self.trainer.datamodule
        self.statistics = datamodule.training_statistics() if hasattr(datamodule, "training_statistics") else None
        if self.statistics is None and self.hparams.get("loss_normalization") == "epoch":
            rank_zero_warn("loss_normalization='epoch' needs a data module with training_statistics() "
                           "(SASRecDataModule); without one each batch's loss is the mean over its positions "
                           "(loss_normalization='batch').")
        self.loss_fn.setup(self.statistics)
        self._check_training_memory()

    def _check_training_memory(self) -> None:
        """Refuse a run whose largest batch cannot fit in memory (``memory.py``), on every process alike.

        Rank 0 decides and tells the others, so that no process is left waiting for one that stopped.
        """
        shapes = self.statistics
        if shapes is None or shapes.batch_shape is None:
            return  # a data module without the shapes of its batches: nothing to estimate from
        refusal = None
        if self.trainer.is_global_zero:
            processes = self.trainer.num_devices if self.device.type == "cpu" else 1  # sharing this machine's memory
            refusal = check_training_memory(self.hparams, sum(p.numel() for p in self.parameters()), shapes.batch_shape,
                                            shapes.eval_batch_shape, self.device, processes)
        refusal = self.trainer.strategy.broadcast(refusal)
        if refusal:
            raise OptionError(refusal)

    def on_train_start(self) -> None:
        if self._trainer is not None and _tensor_parallel(self.trainer.strategy):
            # Every process of a tensor-parallel group computes the same step on its replica: the same
            # dropout masks (rank 0's random state; a resumed run restored the saved one already).
            share_random_state(self.trainer.strategy, self.device)

    def on_train_end(self) -> None:
        self._flush_item_updates()
        self.loss_fn.release_memory()

    # `item_updates: deferred` brings every item row up to date whenever weights are read outside
    # training steps: here, and before validation (on_validation_start). In Lightning 2.x the epoch-end
    # validation runs inside the training epoch loop, before on_train_epoch_end; ModelCheckpoint saves
    # after validation or, without it, in its on_train_epoch_end, which runs after the module's.
    def on_train_epoch_end(self) -> None:
        self._flush_item_updates()

    def _flush_item_updates(self) -> None:
        if self._trainer is None:
            return
        for optimizer in self.trainer.optimizers:
            if isinstance(optimizer, LazyAdam):
                optimizer.flush()  # a no-op unless deferred

    def configure_optimizers(self):
        if self.optimizer_factory is not None:
            # Tensor-parallel tables get a group of their own, as for Adam below: foreach and fused
            # kernels refuse a list mixing DTensors with plain tensors. Otherwise the parameters as before.
            groups = parameter_groups(self.parameters())
            optimizer = self.optimizer_factory(groups if len(groups) > 1 else self.parameters())
        elif self.hparams.get("item_updates", "dense") in ("lazy", "deferred"):  # older checkpoints: dense
            optimizer = item_table_lazy_adam(self, self.hparams.lr, self.hparams.betas, self.hparams.weight_decay,
                                             catch_up=self.hparams.item_updates == "deferred")
        else:
            # Fused Adam: one pass over each parameter instead of ~10 foreach kernels. The dense
            # item table dominates the parameters, so this is most of a CPU step's optimizer cost
            # (docs/performance.md); the update is the same Adam.
            # One group per device mesh (sharding.parameter_groups): the fused kernel refuses a list that
            # mixes tensor-parallel tables (DTensors) with plain tensors; otherwise one group, as before.
            optimizer = torch.optim.Adam(
                parameter_groups(self.parameters()), lr=self.hparams.lr, betas=tuple(self.hparams.betas),
                weight_decay=self.hparams.weight_decay, fused=fused_adam_supported(self.parameters()) or None,
            )
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    # --------------------------------------------------------------------------------- evaluation
    def target_ranks(self, batch: dict[str, Tensor], return_target_scores: bool = False):
        """0-based rank of each held-out item under the configured protocol: ``(B,)`` (and its ``(B,)`` score).

        Ties and NaN scores count against the target and a non-finite target ranks last; a tie is
        decided on the vectors, not by how a product rounds (:mod:`~sasrec_lightning.ranking`), so a
        constant or diverged model gets the worst rank on every CPU.
        """
        if batch["input_ids"].size(0) == 0:  # a DDP rank without users (UserBatchSampler): nothing to score
            ranks, scores = batch["targets"].clone(), torch.zeros(0, device=batch["targets"].device)
        else:
            hidden = self.model.last_hidden(batch["input_ids"]).float()  # (B, d)
            # Scores in fp32 even under mixed precision: bf16 rounding creates ties, which count against the target.
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                if self.hparams.eval_protocol == "sampled":
                    vectors = self.model.item_vectors(batch["candidates"]).float()  # (B, 1 + n, d)
                    ranks, scores = sampled_ranks(hidden, vectors)
                else:
                    weight, norm = self._ranking_table()
                    ranks, scores = full_ranks(hidden, weight, batch["targets"], batch["seen_rows"],
                                               batch["seen_items"], self.hparams.eval_chunk_size,
                                               self.hparams.exclude_seen, table_norm=norm)
        return (ranks, scores) if return_target_scores else ranks

    def _ranking_table(self) -> tuple[Tensor, Tensor]:
        """The fp32 item table and its largest row norm (the tie band's scale), once per evaluation pass.

        Kept from the first batch of a validation or test pass to its end (the weights do not change
        meanwhile); outside a pass (a direct ``target_ranks`` call) computed for each call.
        """
        if self._eval_table:  # kept from this pass's first batch
            return self._eval_table["weight"], self._eval_table["norm"]
        weight = self.model.output_weight.float()  # (I + 1, d)
        norm = max_vector_norm(weight)
        if self._eval_table is not None:  # inside a pass: keep it
            self._eval_table.update(weight=weight, norm=norm)
        return weight, norm

    def _start_evaluation_pass(self) -> None:
        self._eval_table = {}

    def _end_evaluation_pass(self) -> None:
        self._eval_table = None

    on_test_start = _start_evaluation_pass
    on_validation_end = on_test_end = _end_evaluation_pass

    def on_validation_start(self) -> None:
        self._flush_item_updates()  # item_updates: deferred (see on_train_epoch_end)
        self.loss_fn.release_memory()  # evaluation inside fit does not need the training step's block
        self._start_evaluation_pass()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        ranks, target_scores = self.target_ranks(batch, return_target_scores=True)
        self.val_metrics.update(ranks, torch.isfinite(target_scores))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.state.fn == "fit":
            self._check_validation_scores()
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()

    def _check_validation_scores(self) -> None:
        """Stop ``fit`` when a validation target score was not finite, before this epoch's checkpoint is saved.

        A step can leave the weights finite but so large that scores overflow (one Adam step at ``lr`` 1e10
        moves every weight by about 1e10) while the loss it logged was finite. ``validate`` and ``test`` rank
        such targets last and warn instead (``metrics.RankingMetrics``).
        """
        metrics = self.val_metrics
        counts = torch.stack([metrics.nonfinite, metrics.count])  # (2,) this process's users
        nonfinite, evaluated = self.trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        if nonfinite:
            when = "in the sanity check before training" if self.trainer.sanity_checking else (
                f"at epoch {self.current_epoch} (step {self.global_step})")
            raise ModelError(
                f"fit: {int(nonfinite)} of {int(evaluated)} validation users got a NaN or infinite score for their "
                f"held-out item {when}: the model diverged (its weights overflow float32 scores even where the "
                "training loss still looked finite), so training stops here, before this epoch's checkpoint (a "
                f"checkpoint saved before keeps its usable weights). To train: {training_advice(self.trainer)}"
            )

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        ranks, target_scores = self.target_ranks(batch, return_target_scores=True)
        self.test_metrics.update(ranks, torch.isfinite(target_scores))

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning calls this hook before it writes the file: a diverged model writes none, so the
        # checkpoints saved before (last.ckpt, the best one) keep the last finite weights.
        trainer = self._trainer
        names = nonfinite_parameters(self, None if trainer is None else trainer.strategy)
        if names:
            where, remedy = "not saving the checkpoint", "Train again with a lower learning rate"
            if trainer is not None:
                where = f"{trainer.state.fn.value}: {where} at epoch {self.current_epoch}, step {self.global_step}"
                remedy = f"Train again: {training_advice(trainer)}"
            raise weights_error(where, names, self, "the model diverged, and the checkpoints saved before keep its "
                                "last finite weights", remedy)
        self._save_item_ids(checkpoint)
        save_rng_states(checkpoint, self.device)  # a resumed run draws the same dropout masks

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._load_item_ids(checkpoint)
        if self._trainer is not None and self.trainer.state.fn == "fit":  # resuming
            restore_rng_states(checkpoint, self.device)
            states = checkpoint.get("optimizer_states")
            row_sparse = self.optimizer_factory is None and self.hparams.get("item_updates", "dense") != "dense"
            if states and not row_sparse:  # (LazyAdam's groups never depend on the strategy)
                # A tensor-parallel run's two optimizer groups (or one run's single group, the other
                # way) for the groups of this run's optimizer, which Lightning loads after this hook.
                try:
                    states[0] = regroup_optimizer_state(states[0], self.parameters())
                except CheckpointError as error:
                    raise CheckpointError(f"--ckpt_path {self.trainer.ckpt_path}: {error}") from None


def _tensor_parallel(strategy) -> bool:
    """Whether ``strategy`` splits the item tables by tensor parallelism (``ModelParallelStrategy``, size > 1)."""
    return isinstance(strategy, ModelParallelStrategy) and strategy.device_mesh["tensor_parallel"].size() > 1
