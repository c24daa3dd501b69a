"""Train state, the generic training loop, checkpoints and per-experiment steps."""
