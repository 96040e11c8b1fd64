"""Algorithms: one module per algorithm (SB3 class, fast path, hyper-parameters, diagnostics tags)."""
