"""The pipeline: train (signals, resume, checkpoints), evaluate, report."""
