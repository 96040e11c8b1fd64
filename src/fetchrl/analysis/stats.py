"""Across-seed statistics: mean ± sample std (the chapter), rliable's IQM with 95 % stratified
bootstrap confidence intervals (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical Precipice"),
and the Student-t interval of a mean and Welch's interval of a difference of means (chapter 4's compare)."""

from __future__ import annotations

import math
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


#: Confidence of every interval the arms compare reports.
CONFIDENCE = 0.95


def _clip(low: float, high: float, limits: tuple[float, float]) -> tuple[float, float]:
    return max(low, limits[0]), min(high, limits[1])


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE,
               limits: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float | None,
                                                                          tuple[float, float] | None]:
    """Mean, sample std and the Student-t confidence interval of the mean over seeds.

    ``mean ± t_{(1+c)/2, n-1} · s / sqrt(n)``, clipped to ``limits``, the values the mean can take (a
    success rate of 1.00, 0.99, 1.00 gives 0.982 to 1.011 unclipped: no rate exceeds 1). One seed: std and
    interval are None (not measured).
    """
    from scipy import stats  # rliable's dependency; imported here, where it is used

    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no values")
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, None, None
    std = float(arr.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, arr.size - 1)) * std / math.sqrt(arr.size)
    return mean, std, _clip(mean - half, mean + half, limits)


def welch_interval(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE,
                   limits: tuple[float, float] = (-math.inf, math.inf)) -> tuple[
        float, tuple[float, float] | None, float | None]:
    """``mean(a) - mean(b)``, its Welch-t confidence interval (clipped to ``limits``, the values a difference
    can take: ±100 percentage points) and the Welch–Satterthwaite degrees of freedom.

    Unequal variances allowed (two arms need not be equally noisy). An arm with one value: no interval
    (None, None). Both arms without any spread: the interval is the point itself and df None.
    """
    from scipy import stats

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    diff = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return diff, None, None
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se2 = float(vx + vy)
    if se2 == 0.0:
        return diff, (diff, diff), None
    df = se2**2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * math.sqrt(se2)
    return diff, _clip(diff - half, diff + half, limits), float(df)
