"""Known-harmless messages of other libraries, silenced by the console scripts only."""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_known_warnings", "no_wandb_anonymous_setting"]


class _DropMessages(logging.Filter):
    """Drop log records whose message starts with one of ``prefixes``."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Known-harmless messages of other libraries, silenced by the console scripts only (not on import, so
# a user's own Lightning code sees everything): each by its exact text, never a whole category.
_HARMLESS_WARNINGS = (
    # Lightning's own pytree helper uses a torch class that torch >= 2.10 deprecates.
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    # predict/test load a checkpoint whose ModelCheckpoint folder is not this run's: nothing to restore.
    (r"The dirpath has changed from .* therefore `best_model_score`", UserWarning),
    # The ranking metrics (val/ and test/ hr@K, ndcg@K, mrr) are logged as RankingMetrics.compute() returns them:
    # a torchmetrics Metric whose sum states are already reduced over the processes (dist_reduce_fx="sum"), so
    # DDP's advice to sync them again is moot (Lightning gives it for any plain tensor logged per epoch).
    (r"It is recommended to use `self\.log\('(val|test)/(hr@\d+|ndcg@\d+|mrr)', \.\.\., sync_dist=True\)` when "
     r"logging on epoch level in distributed setting", UserWarning),
    # A run with fewer batches than log_every_n_steps: SASRecModule logs the loss of an epoch's last batch
    # anyway (SASRecModule._log_train_loss), so every epoch's train/loss reaches the loggers.
    (r"The number of training batches \(\d+\) is smaller than the logging interval "
     r"Trainer\(log_every_n_steps=\d+\)\. Set a lower value for log_every_n_steps if you want to see logs for the "
     r"training epoch\.$", UserWarning),
)

_HARMLESS_LOGS = {
    # Advertisements for Lightning's cloud services, on every run.
    "lightning.pytorch.utilities.rank_zero": ("💡 Tip:",),
    "lightning.fabric.utilities.rank_zero": ("💡 Tip:",),
    # The ONNX exporter looks up torchvision's operators, which a recommender never uses.
    "torch.onnx._internal.exporter._registration": ("torchvision is not installed",),
}


def quiet_known_warnings() -> None:
    """Silence the known-harmless third-party warnings and tips listed above (console scripts call it)."""
    for message, category in _HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, prefixes in _HARMLESS_LOGS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, _DropMessages) for existing in logger.filters):
            logger.addFilter(_DropMessages(*prefixes))



def no_wandb_anonymous_setting(logger) -> None:
    """Keep Lightning's ``WandbLogger`` from passing ``anonymous=None`` to ``wandb.init`` when it was not set.

    wandb >= 0.19 deprecated the setting and prints "The anonymous setting has no effect and will be removed in
    a future version" on every run given one, and Lightning 2.6 always gives one (``None`` when unset). The
    logger has no public way to leave it out, so this is the package's one access to its ``_wandb_init``
    (``tests/test_run_outputs.py`` fails when Lightning moves it); an ``anonymous`` the user set is kept.
    """
    from lightning.pytorch.loggers.wandb import WandbLogger  # (imports no wandb)

    if isinstance(logger, WandbLogger) and getattr(logger, "_wandb_init", {}).get("anonymous", False) is None:
        del logger._wandb_init["anonymous"]
