"""Training: the LightningModule, checkpoints, sharding and the callbacks that train the model."""
