"""Training: the loop, optimizers and schedules, the non-finite policy."""
