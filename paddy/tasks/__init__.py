"""Lightning tasks (the LightningModule), their optimizers, schedules and callbacks."""
