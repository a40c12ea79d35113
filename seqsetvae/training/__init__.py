"""Training: length-grouped sampling over shards, the training loop, checkpoints."""
