"""Training: the loop, optimizers and schedules, mixed precision, atomic checkpoints with
exact resume, metrics and plots."""
