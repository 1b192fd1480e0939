"""MR-LFADS: the model, its losses and metrics. Pure PyTorch + numpy; imports nothing of ours."""
