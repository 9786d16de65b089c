"""``SASRecModule``: the LightningModule that trains and evaluates the :class:`SASRec` encoder.

It is built from its parts, each from its own options: the encoder (``model.encoder``), the loss
(``model.loss``: a shorthand or a ``Loss`` by class path), the optimization (``model.optimization``),
the evaluation (``model.evaluation``) and the CPU speed parts (``model.speed``, applied by the
:class:`~sasrec_lightning.fast.speed.SpeedParts` callback). What the data decides (``num_items``,
``max_len``) comes from the data module through the CLI's links or the caller.
"""

from __future__ import annotations

from dataclasses import asdict

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.utilities import AttributeDict, rank_zero_warn
from torch import Tensor

from ..data.batches import TrainingStatistics
from ..fast.lazy_adam import LazyAdam
from ..fast.speed import SpeedOptions, SpeedParts
from ..model.divergence import (
    check_validation_scores,
    nonfinite_parameters,
    training_advice,
    training_loss_error,
    weights_error,
)
from ..model.encoder import SASRec
from ..model.items import FeatureItems
from ..model.losses import Loss, loss_spec, resolve_loss
from ..model.metrics import RankingMetrics
from ..model.options import EncoderOptions, ItemFeatureOptions
from ..serving.serving import ServingMixin
from ..validation import at_least, option_group
from .callbacks import CheckBatches
from .checkpoints import check_checkpoint_data, check_checkpoint_features, restore_rng_states, save_rng_states
from .cold_start import WarmColdMetrics
from .evaluation import EvaluationOptions, Ranker
from .memory import check_fit_memory, check_parameter_memory
from .optimization import OptimizationOptions, build_optimizer, check_item_updates, scaled_loss
from .sharding import GatheredEvaluation, regroup_for_resume, shard_model, shards_parameters, tensor_parallel

__all__ = ["SASRecModule"]


class SASRecModule(ServingMixin, L.LightningModule):
    """SASRec with the paper's loss, optimizer and evaluation protocol.

    Serving (``recommend``, ``set_item_vocabulary``, ``item_vocabulary``, ``predict_step``) comes from
    :class:`~sasrec_lightning.serving.serving.ServingMixin`.

    Args:
        num_items: number of items; linked from the data module, never typed by hand.
        max_len: maximum sequence length ``n``; linked from the data module.
        encoder: the encoder's options (``hidden_size``, ``num_blocks``, ``dropout``, the ablations, ...).
        loss: the training loss: ``bce`` (the paper's, ``data.loader.num_negatives`` negatives per position),
            ``gbce``, ``bpr``, ``sampled_softmax``, ``ce``, or any ``Loss`` subclass by class path
            (``{class_path: my_losses.SmoothBCE, init_args: {...}}``); a loss's options are its own
            (``--model.loss.help GBCELoss``).
        optimization: Adam's learning rate, betas and weight decay, ``l2_emb``, ``loss_normalization``.
        evaluation: the protocol (``sampled`` / ``full``), ``top_k``, ``exclude_seen``, ``chunk_size``.
        speed: the CPU speed parts (pooled dropout, row gradients, fused losses, row-sparse Adam).
        item_features: the item table's spec (``ItemFeatures.spec()``); linked from the data module's
            ``item_feature_spec``, never typed by hand. ``None``: items are ids only (the paper's model).
        features: how ids and item features make an item's vector (``combine``, ``id_dropout``,
            ``use_ids``); used only with ``item_features``.
        optimizer: any optimizer factory (LightningCLI ``--model.optimizer``); replaces Adam.
        lr_scheduler: optional scheduler factory.
    """

    def __init__(
        self,
        num_items: int = 1,
        max_len: int = 50,
        encoder: EncoderOptions = EncoderOptions(),
        loss: Loss | str = "bce",
        optimization: OptimizationOptions = OptimizationOptions(),
        evaluation: EvaluationOptions = EvaluationOptions(),
        speed: SpeedOptions = SpeedOptions(),
        item_features: dict | None = None,
        features: ItemFeatureOptions = ItemFeatureOptions(),
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.encoder_options = option_group(EncoderOptions, encoder, "model.encoder")
        self.optimization = option_group(OptimizationOptions, optimization, "model.optimization")
        self.evaluation = option_group(EvaluationOptions, evaluation, "model.evaluation")
        self.speed = option_group(SpeedOptions, speed, "model.speed")
        self.features = option_group(ItemFeatureOptions, features, "model.features")
        at_least("model", "num_items", num_items, 1)  # the encoder's own check names no flag
        at_least("model", "max_len", max_len, 1)
        self.evaluation.check_catalogue(num_items)
        check_item_updates(self.speed, self.optimization, custom_optimizer=optimizer is not None)
        check_parameter_memory(num_items, max_len, self.encoder_options)  # before allocating them (memory.py)
        self.model = SASRec(num_items, max_len, self.encoder_options, item_features, self.features)
        self.loss = resolve_loss(loss)
        self.save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler"])  # the loss: as its spec, below
        # Plain values, saved (not only updated) so that the copy the loggers record has them and the loss too.
        self.save_hyperparameters(dict(encoder=asdict(self.encoder_options), loss=loss_spec(self.loss),
                                       optimization=asdict(self.optimization), evaluation=asdict(self.evaluation),
                                       speed=asdict(self.speed), features=asdict(self.features)))
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.ranker = Ranker(self.evaluation)
        self.val_metrics = RankingMetrics(self.evaluation.top_k, prefix="val/")
        self.test_metrics = RankingMetrics(self.evaluation.top_k, prefix="test/")
        # Warm and cold targets apart (val/warm/..., val/cold/...), when the batches mark them (target_cold).
        self.val_groups = WarmColdMetrics(self.evaluation.top_k, prefix="val/")
        self.test_groups = WarmColdMetrics(self.evaluation.top_k, prefix="test/")
        self._init_serving(num_items)  # item ids, item popularity, predict's top-K (serving.py)
        self.statistics: TrainingStatistics | None = None  # the data module's, set at fit start
        self.feature_state: dict | None = None  # the item table's vocabularies and scaling, for checkpoints
        self._blocked_warned = False
        self._train_loss_sum: Tensor | None = None  # train/loss summed since it was last logged
        self._train_loss_steps = 0

    @property
    def hparams_initial(self) -> AttributeDict:
        """What the loggers record: the hyper-parameters, the item-feature options under ``model_features``.

        The data module records the item table's options under ``features`` too, and Lightning refuses to log
        two values under one name (``RuntimeError: Error while merging hparams``), so the model's are logged
        under another name. Only the loggers read this; checkpoints keep ``hparams`` as they are.
        """
        hparams = super().hparams_initial
        if "features" in hparams:
            hparams["model_features"] = hparams.pop("features")
        return hparams

    # ----------------------------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        """Take the item ids from the data module, and tell it whether training draws negatives per position."""
        datamodule = self._datamodule()
        self.attach_item_ids(datamodule)
        self.attach_item_features(datamodule)
        if stage == "fit" and hasattr(datamodule, "draw_training_negatives"):
            datamodule.draw_training_negatives(self.loss.needs_negatives)

    def attach_item_features(self, datamodule) -> None:
        """Copy the data module's item table (``item_features``) into the item representations, with the trained ids.

        An item is "trained" when it has training interactions (``item_popularity() > 0``); the others
        (cold-start items) are scored from their features. Items with neither are never recommended,
        with one warning.
        """
        features = getattr(datamodule, "item_features", None)
        representations = [items for items in (self.model.items, self.model.output_items)
                           if isinstance(items, FeatureItems)]
        if features is None or not representations:
            if features is not None:
                rank_zero_warn("the data module gives an item table but the model was built without item_features, "
                               "so it uses item ids only; pass item_features=datamodule.item_feature_spec to use it")
            return
        popularity = getattr(datamodule, "item_popularity", None)
        trained = None if popularity is None else torch.as_tensor(popularity()) > 0  # (I + 1,)
        for items in representations:
            items.load_features(features, trained)
        self.feature_state = features.state()
        blocked = torch.nonzero(representations[-1].blocked_items()).squeeze(1)  # (U,) internal ids
        if blocked.numel() and not self._blocked_warned:
            self._blocked_warned = True
            ids = datamodule.item_ids() if hasattr(datamodule, "item_ids") else None
            examples = [ids[i].item() if hasattr(ids[i], "item") else ids[i] for i in blocked[:5].tolist()] if (
                ids is not None) else blocked[:5].tolist()
            rank_zero_warn(f"{blocked.numel()} item(s) have no training interaction and no row in the item table "
                           f"(e.g. {examples}): the model knows nothing of them, so they are never recommended or "
                           "predicted (their score is -inf; the evaluation protocol still ranks them). Add their rows "
                           "to the item table to score them from their features")

    def configure_callbacks(self) -> list[L.Callback]:
        sharded = self._trainer is not None and shards_parameters(self.trainer.strategy)
        callbacks = [SpeedParts(self.speed, sharded), CheckBatches()]
        if sharded:
            callbacks.append(GatheredEvaluation())  # a sharded model is gathered for evaluation, in every stage
        # A stage after fit on the same trainer keeps fit's (no "will override existing callbacks" notice).
        present = {type(callback) for callback in self.trainer.callbacks} if self._trainer is not None else set()
        return [callback for callback in callbacks if type(callback) not in present]

    def configure_model(self) -> None:
        """Under ``ModelParallelStrategy`` shard the encoder's item tables (``sharding.shard_model``)."""
        if self._trainer is not None and isinstance(self.trainer.strategy, ModelParallelStrategy):
            shard_model(self.model, self.device_mesh, self.loss, self.optimization.l2_emb, self.speed.item_updates)

    def on_fit_start(self) -> None:
        # What the loss and `loss_normalization: epoch` need, from the data module's one public method.
        datamodule = self.trainer.datamodule
        self.statistics = datamodule.training_statistics() if hasattr(datamodule, "training_statistics") else None
        if self.statistics is None and self.optimization.loss_normalization == "epoch":
            rank_zero_warn("--model.optimization.loss_normalization epoch needs a data module with "
                           "training_statistics() (SASRecDataModule); without one each batch's loss is the mean "
                           "over its positions (loss_normalization: batch).")
        self.loss.setup(self.statistics)
        check_fit_memory(self)

    def on_train_start(self) -> None:
        if tensor_parallel(self.trainer.strategy):
            # Every process of a tensor-parallel group computes the same step on its replica: the same
            # dropout masks (rank 0's random state; a resumed run restored the saved one already).
            from .sharding import share_random_state

            share_random_state(self.trainer.strategy, self.device)

    def configure_optimizers(self):
        optimizer = build_optimizer(self, self.optimization, self.speed.item_updates, self.optimizer_factory)
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    # ----------------------------------------------------------------------------------- training
    def forward(self, input_ids: Tensor) -> Tensor:
        """``(B, L)`` item ids -> ``(B, L, d)`` hidden states."""
        return self.model(input_ids)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        hidden = self.model(batch["input_ids"])  # (B, L, d)
        targets = batch["targets"]  # (B, L)
        negatives = batch.get("negatives", targets.new_zeros(*targets.shape, 0))  # (B, L, k); optional (contract.py)
        length = targets.size(1)
        # Real (non-padded) positions in row-major order, found once: (N,) flat indices.
        real = torch.nonzero(targets.reshape(-1)).squeeze(1)
        rows = torch.div(real, length, rounding_mode="floor")  # (N,) the sequence of each real position
        generator = None
        if "sample_seed" in batch:  # the loss's own sampling is seeded per batch (per DDP rank, resumable)
            generator = torch.Generator(device=hidden.device).manual_seed(int(batch["sample_seed"]))
        loss = self.loss(
            self.model.scoring_items, hidden.reshape(-1, hidden.size(-1)).index_select(0, real),
            targets.reshape(-1)[real], negatives.flatten(0, 1)[real], generator, rows,
        )
        self._log_train_loss(loss.detach(), batch_idx)
        per_batch = self.statistics.positions_per_batch if self.statistics is not None else None
        loss = scaled_loss(loss, rows.numel(), per_batch, self.optimization)
        ids = self.model.items.embedding  # M, the paper's penalty; never the feature vectors (None without ids)
        if self.optimization.l2_emb and ids is not None:
            loss = loss + self.optimization.l2_emb * ids.weight.square().sum() / 2
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

    # `speed.item_updates: deferred` brings every item row up to date whenever weights are read outside
    # training steps: here, at the end of training and before validation. In Lightning 2.x the epoch-end
    # validation runs inside the training epoch loop, before on_train_epoch_end; ModelCheckpoint saves
    # after validation or, without it, in its on_train_epoch_end, which runs after the module's.
    def on_train_epoch_end(self) -> None:
        self._flush_item_updates()

    def on_train_end(self) -> None:
        self._flush_item_updates()

    def _flush_item_updates(self) -> None:
        for optimizer in self.trainer.optimizers if self._trainer is not None else ():
            if isinstance(optimizer, LazyAdam):
                optimizer.flush()  # a no-op unless deferred

    # --------------------------------------------------------------------------------- evaluation
    def target_ranks(self, batch: dict[str, Tensor], return_target_scores: bool = False):
        """0-based rank of each held-out item under ``evaluation.protocol``: ``(B,)`` (and its ``(B,)`` score)."""
        ranks, scores = self.ranker.ranks(self.model, batch)
        return (ranks, scores) if return_target_scores else ranks

    def on_validation_start(self) -> None:
        self._flush_item_updates()
        self.ranker.start_pass()

    def on_test_start(self) -> None:
        self.ranker.start_pass()

    def on_validation_end(self) -> None:
        self.ranker.end_pass()

    def on_test_end(self) -> None:
        self.ranker.end_pass()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        ranks, target_scores = self.target_ranks(batch, return_target_scores=True)
        self.val_metrics.update(ranks, torch.isfinite(target_scores))
        if "target_cold" in batch:  # optional (data/contract.py): the data has item features or a cold split
            self.val_groups.update(ranks, batch["target_cold"])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.state.fn == "fit":  # a diverged model stops before this epoch's checkpoint
            check_validation_scores(self.val_metrics.nonfinite, self.val_metrics.count, self.trainer,
                                    self.current_epoch, self.global_step)
        self.log_dict(self.val_metrics.compute(), prog_bar=True)
        self.val_metrics.reset()
        self._log_groups(self.val_groups)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        ranks, target_scores = self.target_ranks(batch, return_target_scores=True)
        self.test_metrics.update(ranks, torch.isfinite(target_scores))
        if "target_cold" in batch:
            self.test_groups.update(ranks, batch["target_cold"])

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()
        self._log_groups(self.test_groups)

    def _log_groups(self, groups: WarmColdMetrics) -> None:
        """Log the warm and cold metrics of a pass whose batches marked them (every process got the key)."""
        if groups.update_called:
            self.log_dict(groups.compute())
        groups.reset()

    # -------------------------------------------------------------------------------- checkpoints
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
        if self.feature_state is not None:
            checkpoint["item_features"] = self.feature_state  # plain values: vocabularies and scaling
        save_rng_states(checkpoint, self.device)  # a resumed run draws the same dropout masks

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Check that ``checkpoint`` fits the model and the data (before its weights load); resume its state."""
        datamodule = self._datamodule()
        data_features = getattr(datamodule, "item_features", None)
        check_checkpoint_features(checkpoint.get("item_features"), isinstance(self.model.items, FeatureItems),
                                  None if data_features is None else data_features.state(), datamodule is not None)
        if checkpoint.get("item_features") is not None:
            self.feature_state = checkpoint["item_features"]
        data_ids = datamodule.item_ids() if hasattr(datamodule, "item_ids") else (
            None if self.item_vocabulary is None else self.item_vocabulary.item_ids)
        check_checkpoint_data(checkpoint, self.state_dict(), self.model.num_items,
                              getattr(datamodule, "hparams", None), data_ids)
        self._load_item_ids(checkpoint)
        if self._trainer is not None and self.trainer.state.fn == "fit":  # resuming
            restore_rng_states(checkpoint, self.device)
            regroup_for_resume(checkpoint, self.parameters(), self.trainer.ckpt_path,
                               self.optimizer_factory is None and self.speed.item_updates != "dense")
