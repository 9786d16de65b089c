"""The model: the SASRec encoder, its item representation, the losses, ranking and metrics (plain PyTorch)."""
