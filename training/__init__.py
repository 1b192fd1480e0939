"""Training loop, checkpoints, the Ray Tune trainable, the sweep driver and the CLI."""
