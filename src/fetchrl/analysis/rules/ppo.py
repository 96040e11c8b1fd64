"""PPO's rules: chapter 2's tables (section 3.3) as numeric tests over the logged series.

Each warning sign of the chapter is a numeric test over the logged series, documented here with its
threshold and why. A run is *healthy* when no test gives a ``warning``; the healthy-range checks of
the chapter's first table only ever give ``ok``, ``outside_range`` or ``info`` (a short run that has
not learned much yet is not a broken run). ``n`` below is the number of logged points of the series: one per rollout for
``rollout/*``, one per PPO update for ``train/*``. Non-finite points: a NaN/inf value loss is itself
an explosion; NaN approx_kl / clip_fraction points count as +inf (above any threshold); a non-finite
reward point makes the reward curve "not flat"; non-finite entropy points are skipped.

Warning signs (severity ``warning`` when the test holds, ``ok`` when not, ``info`` when the series
is too short to judge):

``flat_reward`` — ``rollout/ep_rew_mean`` "flatlines at start" (environment misconfigured).
    Test: ``max_i |r_i - r_0| <= 0.01 * max(|r_0|, 1)``, needs n >= 3 rollouts.
    The whole curve never leaves a band of 1 % of its first value (at least 0.01, i.e. 1 % of one
    step's worst reward in [-1, 0]). SB3 logs a rolling mean of the last 100 episode returns;
    on FetchReachDense a random policy's episode returns alone spread it by several per cent, so only
    a reward that does not depend on what the agent does (a constant or zeroed reward, a wrong
    ``reward_type``, an episode that never ends) stays inside the band. Borderline: a run that
    learns, then collapses back to exactly its first value is not flagged (it left the band).
    A noisy curve without a trend is *not* a flatline: it is reported by ``reward_trend`` (info).

``value_loss_explodes`` — ``train/value_loss`` "explodes" (reward scale wrong).
    Test: any non-finite point; or ``max(v) / max(v_0, 0.01) >= 100`` (grows by two orders of
    magnitude over its first update; a first value below 0.01 counts as 0.01, because growing from an
    already-fitted 0.001 to 0.1 is no explosion); or ``max(v) > (1 / (1 - 0.99))**2 = 1e4``.
    The last bound is the largest squared error possible when rewards lie in the chapter's
    [-1, 0] (FetchReachDense) with gamma 0.99: returns and value predictions both lie in [-100, 0].
    A healthy run's value loss is O(1-10) on FetchReachDense; rewards scaled by 100 or more exceed
    the bound from the very first update (they do not necessarily *grow*, which is why the growth
    test alone is not enough). Borderline: a 10x reward scale starts near 500, below the ceiling, and
    is flagged only if it then grows 100x; a value loss that spikes 100x once and recovers is flagged
    (it did explode).

``approx_kl_high`` — ``train/approx_kl`` "consistently > 0.05" (learning rate too high).
    Test: more than half of all updates have approx_kl > 0.05 AND the median of the second half of
    the updates is > 0.05; needs n >= 3 updates. "Consistently" means both over the run and at
    its end: a few early spikes (which the chapter calls OK) fire neither condition, and a run that
    settles below 0.05 by its second half is not flagged.

``clip_fraction_saturated`` — ``train/clip_fraction`` "near 1.0" (updates too aggressive).
    Test: the same "consistently" test with threshold 0.9 (within 0.1 of 1.0); needs n >= 3.
    clip_fraction can never reach exactly 1.0 (the first minibatch of every update has ratio 1), so
    "near" is a band; 0.9 is three times the healthy band's upper edge 0.3. Values between 0.3 and
    0.9 are reported by ``clip_fraction_range`` (outside range), not as a warning.

``entropy_collapse`` — ``train/entropy_loss`` "immediately 0" (policy collapsed).
    SB3 logs ``entropy_loss = -mean(entropy)``: about -5.68 for the initial 4-D Gaussian (std 1),
    rising as the policy sharpens. Sharpening is what learning looks like; a *collapse* is a policy
    that stops exploring before it has learned, wherever in the run that happens. Test: at some
    update the rollout success rate (the latest ``rollout/success_rate`` logged at or before that
    update's step) is below ``COLLAPSE_SUCCESS_BELOW = 0.5`` AND the exploration is gone, i.e.
    either the per-dimension std (``train/std``, SB3's mean of ``exp(log_std)``, when logged) is at
    most ``COLLAPSE_STD_FRACTION = 0.5`` of its start (SB3's initial std 1, or the first logged
    value if larger; for 4-D: the entropy down by 4 ln 2 = 2.8 nats), or ``entropy_loss >= -0.01``
    (the chapter's "0": a 4-D Gaussian's geometric-mean std <= 1/sqrt(2*pi*e) = 0.24; a categorical
    policy is deterministic). The latter also catches a policy that *starts* collapsed (a tiny
    ``log_std_init``), whose std never falls. Why these numbers: on seed 0 with the chapter's
    configuration the std is still 0.88 of its start when the success rate passes 0.5 (and 0.75
    at success 0.92, 188k steps), so a healthy run is far from both bounds; an entropy that reaches
    0 (std ~0.24) while success is 0.14 fires, wherever in the run. Borderline: an entropy at or
    below 0 *after* the task is learned (success >= 0.5) is the healthy "moves toward 0" (a
    Gaussian's entropy turns negative once its std < 0.24) and is reported by ``entropy_trend``.

Healthy-range checks. The trend checks give ``ok`` when the chapter's healthy behaviour is seen,
otherwise ``info``: ``reward_trend`` (last ep_rew_mean > first), ``success_progress`` (last
success_rate >= 0.9, the chapter's pass mark), ``value_loss_trend`` (last value_loss < first),
``entropy_trend`` (entropy_loss rose: the entropy went down). The two band checks put every update
against the chapter's healthy band — ``approx_kl_range`` (< 0.03, "occasional spikes OK") and
``clip_fraction_range`` (0.1–0.3) — and give ``ok`` or ``outside_range`` (shown as "outside
range"): outside when more than ``OCCASIONAL_SHARE = 0.25`` of the updates are outside the band
(more than occasional spikes), or the median of the second half of the updates is (the run settled
outside it). The finding says when the series left the band: the first update outside, and the start
of the final stretch of updates that is mostly outside (where outside updates outnumber inside ones
by the most, to the end: :func:`mostly_from`), with the share of updates outside. ``outside_range``
is information, not a warning sign: it never makes a run unhealthy (``diagnose`` still exits 0).
``at_step`` of a finding is the environment step it dates from (left the band, collapsed,
exploded); None when the finding has no such moment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Final

import numpy as np

from fetchrl import metrics
from fetchrl.analysis.findings import (
    Finding,
    as_upper,
    consistently_above,
    fmt,
    mostly_from,
    step_at,
    too_short,
    trend,
    value_at,
)
from fetchrl.analysis.tbreader import Series

# ---------------------------------------------------------------- thresholds (see module docstring)
FLAT_REL_TOL: Final = 0.01
FLAT_ABS_TOL: Final = 0.01
VALUE_LOSS_GROWTH: Final = 100.0
VALUE_LOSS_BASE_FLOOR: Final = 0.01
REWARD_BOUND: Final = 1.0
"""Largest |reward| per step the chapter expects (FetchReachDense: rewards in [-1, 0])."""
GAMMA: Final = 0.99
VALUE_LOSS_CEILING: Final = (REWARD_BOUND / (1.0 - GAMMA)) ** 2
APPROX_KL_HIGH: Final = 0.05
APPROX_KL_HEALTHY: Final = 0.03
CLIP_FRACTION_SATURATED: Final = 0.9
CLIP_FRACTION_HEALTHY: Final = (0.1, 0.3)
ENTROPY_ZERO_TOL: Final = 0.01
COLLAPSE_STD_FRACTION: Final = 0.5
"""Exploration is gone once the per-dimension std fell to this fraction of its start (:func:`std_start`)."""
SB3_INITIAL_STD: Final = 1.0
"""SB3's initial per-dimension std of a Gaussian policy (``log_std_init=0``, which the chapter keeps)."""
COLLAPSE_SUCCESS_BELOW: Final = 0.5
"""...while the rollout success rate is below this: the task is not learned yet."""
OCCASIONAL_SHARE: Final = 0.25
"""More than this share of updates outside a healthy band is more than "occasional spikes"."""
SUCCESS_PASS: Final = 0.9


@dataclass(frozen=True)
class HealthyBand:
    """A healthy band of the chapter's first table: ``low <= v < high`` (or ``<= high`` if closed)."""

    low: float
    high: float
    high_closed: bool
    note: str = ""
    """The chapter's comment on the band, e.g. "occasional spikes OK"."""
    below_means: str = ""
    """What a series mostly below the band means (said when a run is outside range)."""
    above_means: str = ""
    """What a series mostly above the band means."""

    def outside(self, values: np.ndarray) -> np.ndarray:
        """[n] bool: which values lie outside the band (NaN counts as outside, above)."""
        v = np.where(np.isnan(values), np.inf, values)
        above = v > self.high if self.high_closed else v >= self.high
        return np.asarray((v < self.low) | above)

    @property
    def text(self) -> str:
        """The band as the chapter writes it: ``< 0.03`` or ``0.1–0.3``."""
        if not math.isfinite(self.low):
            return f"< {self.high:g}"
        return f"{self.low:g}–{self.high:g}"

    @property
    def label(self) -> str:
        """``healthy: < 0.03, occasional spikes OK`` — the plots' panel note and the evidence's bracket."""
        return f"healthy: {self.text}" + (f", {self.note}" if self.note else "")


APPROX_KL_BAND: Final = HealthyBand(
    -math.inf, APPROX_KL_HEALTHY, high_closed=False, note="occasional spikes OK",
    above_means="the policy moves further per update than the chapter's runs (a warning only when "
                f"consistently > {APPROX_KL_HIGH})")
CLIP_FRACTION_BAND: Final = HealthyBand(
    *CLIP_FRACTION_HEALTHY, high_closed=True, note="some updates clipped, not all",
    below_means="the policy moves little per update (common early on)",
    above_means=f"many samples clipped (a warning only when near 1.0: consistently > {CLIP_FRACTION_SATURATED})")
#: The chapter's healthy bands, by tag (the plots shade them).
HEALTHY_BANDS: Final[dict[str, HealthyBand]] = {metrics.APPROX_KL: APPROX_KL_BAND,
                                                metrics.CLIP_FRACTION: CLIP_FRACTION_BAND}


# ---------------------------------------------------------------- the chapter's warning signs
def check_flat_reward(s: Series) -> Finding:
    fid, tag = "flat_reward", metrics.EP_REW_MEAN
    short = too_short(fid, tag, s)
    if short:
        return short
    v = s.values
    tol = max(FLAT_REL_TOL * abs(float(v[0])), FLAT_ABS_TOL)
    dev = float(np.max(np.abs(v - v[0]))) if np.all(np.isfinite(v)) else math.inf
    observed = {"first": float(v[0]), "last": float(v[-1]), "max_deviation": dev, "tolerance": tol,
                "n": float(v.size)}
    evidence = f"first {fmt(v[0])}, last {fmt(v[-1])}, max move {fmt(dev)} (flat if <= {fmt(tol)})"
    if dev <= tol:
        return Finding(fid, tag, "warning", evidence, observed, "Environment misconfigured",
                       "Check obs/action shapes (and that the reward depends on the agent)")
    return Finding(fid, tag, "ok", evidence, observed)


def check_value_loss_explodes(s: Series) -> Finding:
    fid, tag = "value_loss_explodes", metrics.VALUE_LOSS
    problem, fix = "Reward scale wrong", "Check reward range (FetchReachDense: rewards in [-1, 0])"
    v = s.values
    bad = ~np.isfinite(v)
    if bad.any():
        step = int(s.steps[np.argmax(bad)])
        return Finding(fid, tag, "warning", f"non-finite ({v[bad][0]}) at step {step}",
                       {"first_nonfinite_step": float(step)}, problem, fix, at_step=step)
    base = max(float(v[0]), VALUE_LOSS_BASE_FLOOR)
    peak = float(np.max(v))
    growth = peak / base
    observed = {"first": float(v[0]), "max": peak, "last": float(v[-1]), "growth": growth,
                "ceiling": VALUE_LOSS_CEILING}
    evidence = (f"first {fmt(v[0])}, max {fmt(peak)} ({fmt(growth)}x); "
                f"explodes if >= {fmt(VALUE_LOSS_GROWTH)}x or > {fmt(VALUE_LOSS_CEILING)}")
    exploded = (v / base >= VALUE_LOSS_GROWTH) | (v > VALUE_LOSS_CEILING)
    if exploded.any():
        step = int(s.steps[np.argmax(exploded)])
        return Finding(fid, tag, "warning", f"{evidence}; from step {step:,}", observed, problem, fix, at_step=step)
    return Finding(fid, tag, "ok", evidence, observed)


def check_approx_kl_high(s: Series) -> Finding:
    return consistently_above("approx_kl_high", metrics.APPROX_KL, s, APPROX_KL_HIGH,
                               "Learning rate too high", "Reduce learning_rate to 1e-4")


def check_clip_fraction_saturated(s: Series) -> Finding:
    return consistently_above("clip_fraction_saturated", metrics.CLIP_FRACTION, s, CLIP_FRACTION_SATURATED,
                               "Updates too aggressive", "Reduce learning_rate or clip_range")


def std_start(std: Series) -> float:
    """The per-dimension std the policy started from: SB3's initial std 1 (``log_std_init=0``, the
    chapter's), or the first logged value if larger. SB3 logs ``train/std`` *after* each update, so
    the first point already holds one update's change (0.998 on the chapter's configuration, but 0.77
    after one update at learning_rate 3e-3 with a negative ent_coef)."""
    return max(float(std.values[0]), SB3_INITIAL_STD) if std.values.size else SB3_INITIAL_STD


def _std_ratio_at(std: Series | None, steps: np.ndarray) -> np.ndarray:
    """[n] float64: the per-dimension std at each step over :func:`std_start` (NaN where unknown)."""
    if std is None or std.values.size == 0:
        return np.full(steps.shape, np.nan)
    idx = np.searchsorted(std.steps, steps, side="right") - 1
    ratio = std.values[np.clip(idx, 0, None)] / std_start(std)
    return np.asarray(np.where(idx >= 0, ratio, np.nan), dtype=np.float64)


def check_entropy_collapse(entropy: Series, success: Series, std: Series | None = None) -> Finding:
    """Exploration gone (std <= half its start, or entropy_loss >= -0.01) while success_rate < 0.5.

    entropy: ``train/entropy_loss`` per update; success: ``rollout/success_rate`` per rollout;
    std: ``train/std`` per update, or None when not logged (then only the entropy test applies).
    """
    fid, tag = "entropy_collapse", metrics.ENTROPY_LOSS
    v, steps = entropy.values, entropy.steps
    succ = value_at(success, steps)
    ratio = _std_ratio_at(std, steps)
    entropy_gone = np.isfinite(v) & (v >= -ENTROPY_ZERO_TOL)
    std_gone = ratio <= COLLAPSE_STD_FRACTION  # NaN compares False
    unsolved = succ < COLLAPSE_SUCCESS_BELOW
    collapsed = (entropy_gone | std_gone) & unsolved
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return Finding(fid, tag, "info", "no finite entropy_loss logged")
    has_std = std is not None and std.values.size > 0
    observed = {"first": float(v[0]), "last": float(v[-1]), "max": float(np.max(finite)), "n": float(v.size),
                "std_start": std_start(std) if std is not None and has_std else math.nan,
                "std_last": float(std.values[-1]) if std is not None and has_std else math.nan}
    test = (f"collapsed if std <= {COLLAPSE_STD_FRACTION:g}x its start or entropy_loss >= {-ENTROPY_ZERO_TOL:g}, "
            f"while success_rate < {COLLAPSE_SUCCESS_BELOW:g}")
    std_text = "" if not has_std else f"; std {fmt(observed['std_start'])} -> {fmt(observed['std_last'])}"
    if not collapsed.any():
        evidence = f"entropy_loss {fmt(v[0])} -> {fmt(v[-1])}{std_text} ({test}: never)"
        return Finding(fid, tag, "ok", evidence, observed)
    i = int(np.argmax(collapsed))
    at = int(steps[i])
    share = at / float(steps[-1]) if steps[-1] > 0 else math.nan
    observed |= {"collapse_step": float(at), "collapse_entropy_loss": float(v[i]),
                 "collapse_std_ratio": float(ratio[i]), "collapse_success_rate": float(succ[i]),
                 "collapse_share_of_run": share}
    what = f"entropy_loss {fmt(v[i])}" + ("" if math.isnan(ratio[i]) else f", std {fmt(ratio[i])}x its start")
    evidence = (f"at step {at:,} ({share:.0%} of the run, update {i + 1}/{v.size}): {what} while success_rate "
                f"was {fmt(succ[i])} — exploration gone before the task was learned ({test})")
    return Finding(fid, tag, "warning", evidence, observed, "Policy collapsed", "Increase ent_coef", at_step=at)


# ---------------------------------------------------------------- the chapter's healthy ranges (never warnings)

def check_reward_trend(s: Series) -> Finding:
    return trend("reward_trend", metrics.EP_REW_MEAN, s, "steadily increasing",
                  lambda a, b: b > a, "not increasing (yet)")


def check_success_progress(s: Series) -> Finding:
    fid, tag = "success_progress", metrics.SUCCESS_RATE
    v = s.values
    first, last, best = float(v[0]), float(v[-1]), float(np.nanmax(v)) if np.isfinite(v).any() else math.nan
    evidence = f"{fmt(first)} -> {fmt(last)}, max {fmt(best)} (healthy: 0 -> 1)"
    observed = {"first": first, "max": best, "last": last}
    if last >= SUCCESS_PASS:
        return Finding(fid, tag, "ok", evidence, observed)
    return Finding(fid, tag, "info", f"{evidence}; below {SUCCESS_PASS} so far (the chapter: 5-10 % "
                   "until 50k steps, 95-100 % by 200k-500k)", observed)


def check_value_loss_trend(s: Series) -> Finding:
    return trend("value_loss_trend", metrics.VALUE_LOSS, s, "high initially, then decreasing",
                  lambda a, b: b < a, "has not decreased")


def band_phrase(observed: Mapping[str, float | None], band: HealthyBand) -> str:
    """How far and since when a series was outside ``band``; the same words in every report and legend.

    ``observed``: a band finding's numbers (``n``, ``n_outside``, ``n_below``, ``n_above``,
    ``first_outside_step``, ``outside_from_step``; a step may be NaN or None: not reached).
    E.g. ``20/61 updates (33%) outside < 0.03, first at step 16,384, mostly outside from step 253,952 on``.
    """
    n, k = int(observed["n"] or 0), int(observed["n_outside"] or 0)
    text = f"{k}/{n} updates ({k / n:.0%}) outside {band.text}" if n else f"no updates to put against {band.text}"
    below, above = int(observed.get("n_below") or 0), int(observed.get("n_above") or 0)
    if below and above:
        text += f" ({below} below, {above} above)"
    first, since = observed.get("first_outside_step"), observed.get("outside_from_step")
    has_since = since is not None and math.isfinite(since)
    if first is not None and math.isfinite(first) and not (has_since and since == first):
        text += f", first at step {int(first):,}"
    if since is not None and has_since:
        text += f", mostly outside from step {int(since):,} on"
    return text


def check_band(fid: str, tag: str, s: Series, band: HealthyBand) -> Finding:
    """``outside_range`` when more than occasional updates (> 25 %) or the second half's median are
    outside ``band``; otherwise ``ok``. Never a warning."""
    v = s.values
    n = int(v.size)
    outside = band.outside(v)
    below = np.asarray(v < band.low)
    last_half = v[n // 2:]
    last_half_median = float(np.median(as_upper(last_half)))
    median = float(np.median(as_upper(v)))
    share = float(np.mean(outside))
    settled_outside = bool(band.outside(np.array([last_half_median]))[0])
    first_i = int(np.argmax(outside)) if outside.any() else None
    since_i = mostly_from(outside)
    observed: dict[str, float] = {
        "n": float(n), "median": median, "last_half_median": last_half_median,
        "min": float(np.min(as_upper(v))), "max": float(np.max(as_upper(v))),
        "n_outside": float(outside.sum()), "n_below": float(below.sum()), "n_above": float(outside.sum() - below.sum()),
        "share_outside": share, "low": band.low, "high": band.high,
        "first_outside_step": math.nan if first_i is None else float(s.steps[first_i]),
        "outside_from_step": math.nan if since_i is None else float(s.steps[since_i]),
    }
    verdict_outside = share > OCCASIONAL_SHARE or settled_outside
    evidence = (f"{band_phrase(observed, band)}; median {fmt(median)}, 2nd-half median {fmt(last_half_median)}, "
                f"range {fmt(observed['min'])}-{fmt(observed['max'])} ({band.label})")
    if not verdict_outside:
        return Finding(fid, tag, "ok", evidence, observed)
    means = band.below_means if observed["n_below"] > observed["n_above"] else band.above_means
    if means:
        evidence += f"; mostly {'below' if observed['n_below'] > observed['n_above'] else 'above'}: {means}"
    at = step_at(s, since_i if since_i is not None else first_i)
    return Finding(fid, tag, "outside_range", evidence, observed, at_step=at)


def check_approx_kl_range(s: Series) -> Finding:
    f = check_band("approx_kl_range", metrics.APPROX_KL, s, APPROX_KL_BAND)
    # n_spikes: the name diagnosis JSON files used before the band check counted outside updates
    return replace(f, observed=f.observed | {"n_spikes": f.observed["n_above"]})


def check_clip_fraction_range(s: Series) -> Finding:
    return check_band("clip_fraction_range", metrics.CLIP_FRACTION, s, CLIP_FRACTION_BAND)


def check_entropy_trend(s: Series) -> Finding:
    return trend("entropy_trend", metrics.ENTROPY_LOSS, s,
                  "slowly moves toward 0; a Gaussian's may pass it once its std < 0.24",
                  lambda a, b: b > a, "not moving toward 0: the entropy has not decreased")


#: Every check, in the chapter's table order: the tags it reads (in argument order) and the function.
CHECKS: Final[tuple[tuple[tuple[str, ...], Callable[..., Finding]], ...]] = (
    ((metrics.EP_REW_MEAN,), check_flat_reward),
    ((metrics.EP_REW_MEAN,), check_reward_trend),
    ((metrics.SUCCESS_RATE,), check_success_progress),
    ((metrics.VALUE_LOSS,), check_value_loss_explodes),
    ((metrics.VALUE_LOSS,), check_value_loss_trend),
    ((metrics.APPROX_KL,), check_approx_kl_high),
    ((metrics.APPROX_KL,), check_approx_kl_range),
    ((metrics.CLIP_FRACTION,), check_clip_fraction_saturated),
    ((metrics.CLIP_FRACTION,), check_clip_fraction_range),
    ((metrics.ENTROPY_LOSS, metrics.SUCCESS_RATE, metrics.STD), check_entropy_collapse),
    ((metrics.ENTROPY_LOSS,), check_entropy_trend),
)
#: Tags a check uses when logged and does without otherwise (passed as None).
OPTIONAL_TAGS: Final = (metrics.STD,)
