"""SASRec (Kang & McAuley, ICDM 2018) as a PyTorch Lightning package."""

from .datamodule import SASRecDataModule
from .encoder import SASRec
from .module import SASRecModule

__all__ = ["SASRec", "SASRecModule", "SASRecDataModule"]
__version__ = "0.2.0"
