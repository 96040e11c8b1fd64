"""SAC + HER's rules (chapter 4): SAC's checks, two of them re-tuned for sparse goals, and HER's own.

Series read: SAC's (``fetchrl.analysis.rules.sac``) and what ``fetchrl.pipeline.her_callbacks.
HERDiagnosticsCallback`` logs: ``her/relabeled_reward0_fraction``, ``her/real_reward0_fraction`` (a HER
buffer) and ``her/object_displacement`` (a task with an object: FetchPush-v4). A rule whose series was
not logged says ``info``. "Learning started" is dated, as in SAC's rules, by the first ``train/*`` point.

Warning signs (``warning`` when the test holds, ``ok`` when not, ``info`` when too early or not logged):

``ent_coef_collapse`` — the book's FetchPush failure: with ``ent_coef="auto"`` the coefficient fell to
    0.005 and success stalled (500k steps: 5 %; 2M: 25 %). Test: SAC's rule with the line at
    ``HER_ENT_COEF_COLLAPSE = 0.005``: ``ent_coef <= 0.005`` at a log point while success < 0.5.
    Fix: the chapter's ``--ent-coef 0.05``, or keep ``auto`` with a floor (``--ent-coef-min``) well above
    the line. (SAC's chapter-3 line, 1e-3, would let the book's collapse pass unflagged.)

``her_inactive`` — relabeling does not produce successes, so HER cannot help.
    Needs ``her/*``, judged on the points logged after learning started (at least ``HER_MIN_POINTS``).
    Test: the median relabeled reward-0 fraction is ``<= HER_INACTIVE_AT_MOST = 0.02``, or, while the real
    data is still mostly failures (median real fraction < 0.5), it exceeds the real fraction's median by
    no more than ``HER_GAIN_AT_LEAST = 0.02``. With a working ``compute_reward`` the "future" strategy
    alone relabels about 1 in 25 transitions with their own next achieved goal (reward 0 by construction),
    and on Reach/Push typically 30-99 % are successes; a ``compute_reward`` that ignores its goal argument
    (rewarding the env's own goal instead) makes the relabeled fraction equal the real one.

``object_never_moved`` — FetchPush: the arm does not push the object, so the relabeled goals are all
    "where the object already lies" (relabeled reward-0 fraction near 1) and the policy learns to stay
    away. Needs ``her/object_displacement``. Test: the run went ``OBJECT_STILL_HORIZON = 200_000`` steps
    past learning's start, the median displacement over the last half of its points is
    ``<= OBJECT_STILL_M = 0.01`` m, and success is still < 0.5. Random actions move the object ~3-8 mm per
    episode on average (measured here over the first few thousand steps); pushing it to a goal moves it
    about 0.1 m. Before the horizon: ``info`` ("too early to judge").

``success_flat`` — success stayed at its floor long after learning started. On Push even a policy that
    never touches the object succeeds ~5 % of the time (goals that start within 5 cm of the object), so
    SAC's "never above 0.2" or "never above x" maxima are useless here: the test is the median success
    over the last quarter of the points ``<= HER_SUCCESS_FLAT_AT_MOST = 0.1`` once the run went
    ``HER_SUCCESS_FLAT_HORIZON = 300_000`` steps past learning's start (HER solves Reach in tens of
    thousands of steps; the book's collapsed Push run sat at 5 % at 500k).

The thresholds of ``object_never_moved`` and ``success_flat`` on Push are judgement, stated as such: the
full Push run measured for the README is what confirms or moves them.

The control arm (SAC without HER on the same sparse tasks, :data:`CONTROL_CHECKS`) is judged by the same
sparse-goal tests minus HER's own, and its reports quote chapter 4's book, not chapter 3's dense-Reach
milestones: without HER the book's sparse Reach reaches 96 +- 8 % after 500k steps, its Push 5 % after 2M.
So a flat control run on Push is a warning that says it is the expected result — what HER is for.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Final

import numpy as np

from fetchrl import metrics
from fetchrl.analysis.findings import Finding, fmt, trend, value_at
from fetchrl.analysis.rules import sac
from fetchrl.analysis.tbreader import Series

HER_ENT_COEF_COLLAPSE: Final = 0.005
COLLAPSE_FIX: Final = ("use --ent-coef 0.05 (the chapter's FetchPush setting) or keep auto with a floor, "
                       "--ent-coef-min 0.05")
HER_MIN_POINTS: Final = 2
HER_INACTIVE_AT_MOST: Final = 0.02
HER_GAIN_AT_LEAST: Final = 0.02
REAL_MOSTLY_FAILURES: Final = 0.5
OBJECT_STILL_M: Final = 0.01
OBJECT_STILL_HORIZON: Final = 200_000
HER_SUCCESS_FLAT_AT_MOST: Final = 0.1
HER_SUCCESS_FLAT_HORIZON: Final = 300_000
SUCCESS_UNSOLVED: Final = 0.5


def _learning_start(ent_coef: Series) -> int | None:
    """The step of the first ``train/*`` point (learning started), or None when nothing trained yet."""
    return int(ent_coef.steps[0]) if ent_coef.steps.size else None


def check_her_ent_coef_collapse(ent_coef: Series, success: Series, *,
                                threshold: float = HER_ENT_COEF_COLLAPSE) -> Finding:
    """SAC's collapse test with chapter 4's line (0.005) and fix (ent_coef: ``train/ent_coef``; success:
    ``rollout/success_rate``, one point per log dump)."""
    f = sac.check_ent_coef_collapse(ent_coef, success, threshold=threshold)
    if f.severity != "warning":
        return f
    return dataclasses.replace(f, likely_problem="Entropy coefficient collapsed (the book's FetchPush with auto)",
                               fix=COLLAPSE_FIX)


def check_her_inactive(relabeled: Series | None, real: Series | None, ent_coef: Series) -> Finding:
    """Relabeled transitions no more successful than ~0 or than the real ones (module docstring).

    relabeled, real: ``her/relabeled_reward0_fraction``, ``her/real_reward0_fraction`` (same steps);
    ent_coef: ``train/ent_coef``, whose first step dates the start of learning.
    """
    fid, tag = "her_inactive", metrics.HER_RELABELED_REWARD0
    if relabeled is None or real is None:
        return Finding(fid, tag, "info", "her/* not logged (no HER buffer, or HERDiagnosticsCallback not attached)")
    start = _learning_start(ent_coef)
    keep = relabeled.steps >= (start if start is not None else np.iinfo(np.int64).max)
    n = int(keep.sum())
    if n < HER_MIN_POINTS:
        return Finding(fid, tag, "info", f"too early to judge: {n} point(s) after learning started; "
                       f"need >= {HER_MIN_POINTS}", {"n": float(n)})
    rel = relabeled.values[keep]
    rea = value_at(real, relabeled.steps[keep])
    rel_med, real_med = float(np.nanmedian(rel)), float(np.nanmedian(rea))
    gain = float(np.nanmedian(rel - rea))
    observed = {"n": float(n), "relabeled_median": rel_med, "real_median": real_med, "gain_median": gain,
                "at_most": HER_INACTIVE_AT_MOST, "gain_at_least": HER_GAIN_AT_LEAST}
    evidence = (f"relabeled reward-0 fraction median {fmt(rel_med)} vs real {fmt(real_med)} (gain {fmt(gain)}) "
                f"over {n} points; inactive if relabeled <= {fmt(HER_INACTIVE_AT_MOST)} or, while real < "
                f"{REAL_MOSTLY_FAILURES:g}, gain <= {fmt(HER_GAIN_AT_LEAST)}")
    inactive = rel_med <= HER_INACTIVE_AT_MOST or (real_med < REAL_MOSTLY_FAILURES and gain <= HER_GAIN_AT_LEAST)
    if not inactive:
        return Finding(fid, tag, "ok", evidence, observed)
    return Finding(fid, tag, "warning", evidence, observed,
                   "HER inactive or broken: relabeled transitions are not successes",
                   "Check that the env's compute_reward uses its achieved_goal/desired_goal arguments (not the "
                   "env's own goal), that the run uses the HER buffer (--her) and its strategy/n_sampled_goal",
                   at_step=int(relabeled.steps[keep][0]))


def check_object_never_moved(displacement: Series | None, ent_coef: Series, success: Series, *,
                             horizon: int = OBJECT_STILL_HORIZON, still: float = OBJECT_STILL_M) -> Finding:
    """The object's displacement per episode stayed ~0 (median of the last half <= ``still`` m) although the
    run went ``horizon`` steps past learning's start and success is below 0.5.

    displacement: ``her/object_displacement`` (mean per log dump); ent_coef: dates learning's start;
    success: ``rollout/success_rate``.
    """
    fid, tag = "object_never_moved", metrics.OBJECT_DISPLACEMENT
    if displacement is None or displacement.values.size == 0:
        return Finding(fid, tag, "info", "her/object_displacement not logged (a task without an object)")
    start = _learning_start(ent_coef)
    if start is None:
        return Finding(fid, tag, "info", "no training logged yet")
    v = displacement.values
    tail = v[v.size // 2:]
    median = float(np.nanmedian(tail)) if np.isfinite(tail).any() else math.nan
    end = int(displacement.steps[-1])
    last_success = float(success.values[-1]) if success.values.size else math.nan
    observed = {"last_half_median_m": median, "still_m": still, "learning_start_step": float(start),
                "last_step": float(end), "horizon": float(horizon), "last_success": last_success}
    evidence = (f"object moved {fmt(median)} m per episode (median, last half of {v.size} points); "
                f"never moved if <= {fmt(still)} m {horizon:,} steps after learning started (step {start:,})")
    if end - start < horizon:
        return Finding(fid, tag, "info", f"too early to judge: {end - start:,} steps since learning started; "
                       f"{evidence}", observed)
    if not (median <= still and not last_success >= SUCCESS_UNSOLVED):
        return Finding(fid, tag, "ok", evidence, observed)
    return Finding(fid, tag, "warning", evidence, observed,
                   "The arm never moves the object: an exploration problem (relabeled goals are all where the "
                   "object already lies)",
                   "Keep exploration alive: --ent-coef 0.05 rather than auto (or --ent-coef-min), more steps; "
                   "check-env for the object and goal ranges", at_step=start + horizon)


def check_her_success_flat(success: Series, ent_coef: Series, *, horizon: int = HER_SUCCESS_FLAT_HORIZON,
                           at_most: float = HER_SUCCESS_FLAT_AT_MOST) -> Finding:
    """Median success over the last quarter of the points <= ``at_most`` once ``horizon`` steps past
    learning's start (success: ``rollout/success_rate``; ent_coef: dates learning's start)."""
    fid, tag = "success_flat", metrics.SUCCESS_RATE
    start = _learning_start(ent_coef)
    if start is None or success.steps.size == 0:
        return Finding(fid, tag, "info", "no training logged yet")
    v = success.values[success.steps >= start]
    end = int(success.steps[-1])
    tail = v[-max(1, v.size // 4):] if v.size else v
    median = float(np.nanmedian(tail)) if np.isfinite(tail).any() else math.nan
    observed = {"learning_start_step": float(start), "last_step": float(end), "horizon": float(horizon),
                "last_quarter_median": median, "at_most": at_most}
    if end - start < horizon:
        return Finding(fid, tag, "info", f"too early to judge: {end - start:,} steps since learning started "
                       f"(step {start:,}); needs {horizon:,} (last-quarter median success {fmt(median)})", observed)
    evidence = (f"median success_rate {fmt(median)} over the last quarter, {end - start:,} steps after learning "
                f"started at step {start:,} (flat if <= {fmt(at_most)} after {horizon:,})")
    if median > at_most:
        return Finding(fid, tag, "ok", evidence, observed)
    return Finding(fid, tag, "warning", evidence, observed, "Nothing learned: success still at its floor",
                   f"Look at ent_coef_collapse, her_inactive and object_never_moved above; otherwise "
                   f"{COLLAPSE_FIX} and check the task (check-env)", at_step=start + horizon)


def check_sparse_ent_coef_trend(s: Series) -> Finding:
    """SAC's ``ent_coef_trend`` without chapter 3's numbers (ent_coef: ``train/ent_coef``)."""
    return trend("ent_coef_trend", metrics.ENT_COEF, s, "falls while learned (chapter 4's Push fixes it at 0.05)",
                 lambda a, b: b < a, "not falling (a fixed ent_coef stays put)")


#: The book's sparse-goal results with and without HER, as each arm's reports quote them.
HER_BOOK: Final = "the book with HER: sparse Reach 100 %, Push 99.0 +- 1.2 % after 2M steps (3 seeds)"
NO_HER_BOOK: Final = "the book without HER: sparse Reach 96 +- 8 % after 500k steps, Push 5 % after 2M"


def check_her_success_progress(s: Series) -> Finding:
    """SAC's ``success_progress`` quoting chapter 4's results with HER (s: ``rollout/success_rate``)."""
    return sac.check_success_progress(s, book=HER_BOOK)


def check_control_success_progress(s: Series) -> Finding:
    """SAC's ``success_progress`` quoting chapter 4's results without HER (s: ``rollout/success_rate``)."""
    return sac.check_success_progress(s, book=NO_HER_BOOK)


def check_control_success_flat(success: Series, ent_coef: Series, *, horizon: int = HER_SUCCESS_FLAT_HORIZON,
                               at_most: float = HER_SUCCESS_FLAT_AT_MOST) -> Finding:
    """:func:`check_her_success_flat` for the control arm: a flat run without HER is what the chapter expects on
    Push, and the finding says so instead of pointing at HER's rules, which a plain buffer does not log."""
    f = check_her_success_flat(success, ent_coef, horizon=horizon, at_most=at_most)
    if f.severity != "warning":
        return f
    return dataclasses.replace(
        f, likely_problem=f"Nothing learned: sparse rewards without HER rarely succeed ({NO_HER_BOOK}); on Push "
                          "this is the control arm's expected result",
        fix="Train the --her arm (HER relabels failures as successes: `compare` measures the difference); a "
            "flat control on sparse Reach after 500k steps would be unexpected: check ent_coef_collapse above")


def _replace(checks: tuple[tuple[tuple[str, ...], Callable[..., Finding]], ...],
             by: dict[Callable[..., Finding], Callable[..., Finding]]) -> tuple[tuple[tuple[str, ...],
                                                                               Callable[..., Finding]], ...]:
    return tuple((tags, by.get(check, check)) for tags, check in checks)


#: What both chapter 4 arms (sparse goals, with and without HER) judge differently from chapter 3's SAC.
_SPARSE: Final[dict[Callable[..., Finding], Callable[..., Finding]]] = {
    sac.check_ent_coef_collapse: check_her_ent_coef_collapse, sac.check_ent_coef_trend: check_sparse_ent_coef_trend}

#: SAC's checks (chapter 4's collapse line and success tests in their places), then HER's own.
CHECKS: Final[tuple[tuple[tuple[str, ...], Callable[..., Finding]], ...]] = (
    *_replace(sac.CHECKS, {**_SPARSE, sac.check_success_flat: check_her_success_flat,
                           sac.check_success_progress: check_her_success_progress}),
    ((metrics.HER_RELABELED_REWARD0, metrics.HER_REAL_REWARD0, metrics.ENT_COEF), check_her_inactive),
    ((metrics.OBJECT_DISPLACEMENT, metrics.ENT_COEF, metrics.SUCCESS_RATE), check_object_never_moved),
)
#: Tags a check uses when logged and does without otherwise (passed as None).
OPTIONAL_TAGS: Final = (*sac.OPTIONAL_TAGS, *metrics.HER_OPTIONAL)
#: The control arm's checks: SAC's with chapter 4's sparse-goal tests and numbers (no HER series to judge).
CONTROL_CHECKS: Final[tuple[tuple[tuple[str, ...], Callable[..., Finding]], ...]] = _replace(
    sac.CHECKS, {**_SPARSE, sac.check_success_flat: check_control_success_flat,
                 sac.check_success_progress: check_control_success_progress})
