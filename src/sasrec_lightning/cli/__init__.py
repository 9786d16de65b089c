"""The commands: ``sasrec-lightning`` (LightningCLI), and the export and attention-map commands."""

from .app import main

__all__ = ["main"]
