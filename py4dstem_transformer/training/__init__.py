"""Training: batches from stored patterns, augmentation, the training loop."""
