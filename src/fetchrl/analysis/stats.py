"""Across-seed statistics: mean ± sample std (the chapter) and rliable's IQM with 95 % stratified
bootstrap confidence intervals (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical Precipice")."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from fetchrl.artifacts import RliableEstimate


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and *sample* std (ddof=1) over seeds; std is 0.0 for a single seed."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no values")
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return float(arr.mean()), std


def rliable_summary(per_metric: Mapping[str, Sequence[float]], *, reps: int = 2000, seed: int = 0) -> dict[str, RliableEstimate]:
    """IQM, mean and their 95 % stratified-bootstrap CIs per metric (one task; runs = seeds).

    Returns ``{metric: {"iqm": x, "iqm_ci": [lo, hi], "mean": x, "mean_ci": [lo, hi], "n_runs": n}}``;
    an empty dict for fewer than 2 seeds (a bootstrap over one run says nothing).
    """
    from rliable import library as rly
    from rliable import metrics

    out: dict[str, RliableEstimate] = {}
    for name, values in per_metric.items():
        scores = np.asarray(values, dtype=np.float64).reshape(-1, 1)  # [num_runs, num_tasks=1]
        if scores.shape[0] < 2:
            return {}
        def agg(x: np.ndarray) -> np.ndarray:
            return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])
        with warnings.catch_warnings():
            # arch deprecates RandomState in favour of Generator; rliable 1.2 still passes one.
            warnings.simplefilter("ignore", FutureWarning)
            points, intervals = rly.get_interval_estimates(
                {name: scores}, agg, reps=reps, random_state=np.random.RandomState(seed)
            )
        p, ci = points[name], intervals[name]
        out[name] = {
            "iqm": float(p[0]),
            "iqm_ci": [float(ci[0, 0]), float(ci[1, 0])],
            "mean": float(p[1]),
            "mean_ci": [float(ci[0, 1]), float(ci[1, 1])],
            "n_runs": int(scores.shape[0]),
        }
    return out
