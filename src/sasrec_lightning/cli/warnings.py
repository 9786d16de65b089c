"""Known-harmless messages of other libraries, silenced by the console scripts only."""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_known_warnings"]


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

