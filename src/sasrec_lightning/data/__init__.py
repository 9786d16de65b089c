"""Data: sources, preprocessing, splits, batches and the LightningDataModule."""
