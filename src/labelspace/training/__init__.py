"""Training: the loss and the loop, and fit_head (splits, held-out labels, calibration, checkpoints)."""
