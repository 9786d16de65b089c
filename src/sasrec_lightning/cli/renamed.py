"""Options of 0.2 and where 0.3 puts them: an old flat config or flag gets one line naming the new spelling."""

from __future__ import annotations

__all__ = ["RENAMED", "new_spelling"]

#: ``section -> {0.2 option: 0.3 spelling}`` (relative to ``--model.`` / ``--data.``).
RENAMED: dict[str, dict[str, str]] = {
    "model": {
        **{name: f"encoder.{name}" for name in (
            "hidden_size", "num_blocks", "num_heads", "dropout", "use_positional", "share_item_embedding",
            "use_residual", "init", "init_std", "block_layout")},
        "gbce_t": "loss.init_args.t (with loss: GBCELoss)",
        "sampled_negatives": "loss.init_args.negatives (with loss: SampledSoftmaxLoss)",
        "negative_sampling": "loss.init_args.sampling (with loss: SampledSoftmaxLoss)",
        "in_batch_fraction": "loss.init_args.in_batch_fraction (with loss: SampledSoftmaxLoss)",
        "logq_correction": "loss.init_args.logq_correction (with loss: SampledSoftmaxLoss)",
        "negative_sharing": "loss.init_args.sharing (with loss: SampledSoftmaxLoss or GBCELoss)",
        "gbce_shared_negatives": "loss.init_args.shared_negatives (with loss: GBCELoss)",
        "ce_chunk_size": "loss.init_args.chunk_size (with loss: FullCrossEntropyLoss)",
        "fused_loss": "speed.fused_losses",
        "loss_normalization": "optimization.loss_normalization",
        **{name: f"optimization.{name}" for name in ("lr", "betas", "weight_decay", "l2_emb")},
        "item_updates": "speed.item_updates",
        "eval_protocol": "evaluation.protocol",
        "exclude_seen": "evaluation.exclude_seen",
        "top_k": "evaluation.top_k",
        "eval_chunk_size": "evaluation.chunk_size",
        "pooled_dropout": "speed.pooled_dropout",
        "row_gradients": "speed.row_gradients",
    },
    "data": {
        **{name: f"source.{name}" for name in (
            "format", "user_column", "item_column", "timestamp_column", "rating_column", "name", "split", "url",
            "synthetic_users", "synthetic_items")},
        **{name: f"preprocessing.{name}" for name in (
            "min_user_interactions", "min_item_interactions", "filter_mode", "min_rating", "deduplicate")},
        "holdout": "holdout.scheme",
        **{name: f"holdout.{name}" for name in ("val_cutoff", "test_cutoff", "temporal_quantiles")},
        **{name: f"loader.{name}" for name in (
            "batch_size", "eval_batch_size", "num_negatives", "num_eval_negatives", "eval_negative_sampling",
            "num_workers", "length_bucketing")},
        "cache_dir": "cache.dir",
        "use_cache": "cache.use",
        "rebuild_cache": "cache.rebuild",
        "hash_source": "cache.hash_source",
        "num_proc": "cache.num_proc",
    },
}


def new_spelling(section: str, option: str) -> str | None:
    """``--model.encoder.hidden_size`` for (``model``, ``hidden_size``); ``None`` when ``option`` was not renamed."""
    renamed = RENAMED.get(section, {}).get(option)
    return None if renamed is None else f"--{section}.{renamed}"
