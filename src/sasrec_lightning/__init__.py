"""SASRec (Kang & McAuley, ICDM 2018) as a PyTorch Lightning package.

The folders are the layers, each importing only those below it: ``model`` (the encoder, losses,
ranking, metrics: plain PyTorch), ``fast`` (the CPU speed parts, swapped into a built model),
``data`` (files to batches), ``serving`` (answers from a trained model), ``training`` (the
LightningModule and what trains it), ``cli`` (the commands).
"""

from .data.datamodule import SASRecDataModule
from .model.encoder import SASRec
from .serving.attention import AttentionHeatmaps
from .serving.prediction import PredictionWriter
from .training.module import SASRecModule

__all__ = ["SASRec", "SASRecModule", "SASRecDataModule", "AttentionHeatmaps", "PredictionWriter"]
__version__ = "0.3.0"
