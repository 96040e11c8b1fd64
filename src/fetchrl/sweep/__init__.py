"""Sweeps: plans, trials, progress, local and Ray backends."""
