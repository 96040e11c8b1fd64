"""SAC's rules (chapter 3, reused by chapter 4): an off-policy run's health as numeric tests over its logs.

Series read: SB3's ``train/ent_coef``, ``train/critic_loss``, ``rollout/success_rate`` (one point per
log dump: every ``log_interval`` episodes), and what ``fetchrl.pipeline.offpolicy_callbacks.
SACDiagnosticsCallback`` logs (``q/*``, ``replay/*``); a rule whose series was not logged says
``info``. Where the chapter's numbers come from: SAC on FetchReachDense-v4 (8 envs, lr 3e-4,
``ent_coef="auto"``, target entropy -4) reaches 100 % success after ~300k steps, with 20–60 % at
50–150k and 80–99 % at 150–400k, while the entropy coefficient falls from ~0.47 to ~0.0004.

The learned coefficient cannot fall faster than Adam lets it: about ``learning_rate`` per gradient
step in ``log(ent_coef)``, so from SB3's initial 1.0 it needs ln(1000)/3e-4 = 23k gradient steps
(8 envs, one gradient step per vector step: ~194k environment steps after ``learning_starts``) to
reach 1e-3. On the chapter's configuration the book's milestones put success at 80–99 % by then,
which is why the collapse threshold below is 1e-3 and a healthy run never meets it unsolved.

Warning signs (``warning`` when the test holds, ``ok`` when not, ``info`` when too early or not logged):

``ent_coef_collapse`` — the entropy coefficient went to ~0 before the task was solved.
    Test: at some log point ``ent_coef <= ENT_COEF_COLLAPSE = 1e-3`` while the latest success rate is
    below ``COLLAPSE_SUCCESS_BELOW = 0.5``. Exploration then no longer pays; the book's chapter 4
    sees auto fall to 0.005 on FetchPush and fixes ``ent_coef=0.05`` (pass ``threshold=0.005`` there).
    Borderline: the healthy run ends near 4e-4 *after* solving, which is not flagged.

``ent_coef_explodes`` — the coefficient grew instead of settling.
    Test: any non-finite point, or ``ent_coef > ENT_COEF_EXPLODE = 10`` (ten times SB3's initial 1.0).
    A learned coefficient only grows while the policy's entropy is below the target: a target above
    what the action space allows (4-D actions in [-1, 1]: at most 4 ln 2 = 2.8 nats) makes it grow for
    ever, and the reward then hardly matters to the actor.

``critic_loss_diverges`` — the critics' TD error blew up.
    Test: any non-finite point, or ``critic_loss > CRITIC_LOSS_CEILING = (1 / (1 - 0.99))**2 = 1e4``.
    SB3's ``critic_loss`` is half the sum of both critics' mean squared TD errors (about one critic's
    MSE). With rewards in [-1, 0] (FetchReachDense) and gamma 0.99 returns span 100, so a TD error
    over 100 on average is no critic still learning. A reward scaled by 1000 exceeds it within a few
    hundred gradient steps. Borderline: a 10x reward scale stays below and is not flagged.

``q_overestimation`` — the critics' values ran away from the returns the policy really gets.
    Needs ``q/eval_q_start`` and ``q/eval_mc_return`` (SACDiagnosticsCallback), judged at the last
    ``OVERESTIMATION_RUN = 2`` measurements: each has ``Q - G > |G| + OVERESTIMATION_ABS (10)``, i.e.
    the critic's value exceeds the real soft return by more than the return's own size plus 10, AND
    the gap did not shrink from one to the next (running away, not catching up).
    For a negative return G (FetchReachDense without the entropy bonus) that means a *positive* Q over
    10, impossible with rewards <= 0; a positive, entropy-dominated G must be more than doubled. A
    critic that merely lags (it starts at 0 while the real returns are -10 or +200) never meets it; nor
    does one still valuing the entropy bonus of a larger, older ent_coef while the coefficient falls
    (that gap shrinks as the critic catches up).

``success_flat`` — success stayed at the bottom long after learning started.
    Learning starts at the first logged ``train/*`` point (the first log dump after ``learning_starts``).
    Test: the run reached ``SUCCESS_FLAT_HORIZON = 150_000`` steps after that start and the success
    rate never rose above ``SUCCESS_FLAT_AT_MOST = 0.2`` (the lower edge of the book's 20–60 % at
    50–150k steps). Before the horizon: ``info`` ("too early to judge"), however flat the curve.

Healthy-range checks (``ok`` or ``info``, never warnings): ``ent_coef_trend`` (the coefficient fell),
``success_progress`` (last success >= 0.9), ``replay_health`` (fill and batch age, reported).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

import numpy as np

from fetchrl import metrics
from fetchrl.analysis.findings import Finding, fmt, too_short, trend, value_at
from fetchrl.analysis.tbreader import Series

ENT_COEF_COLLAPSE: Final = 1e-3
COLLAPSE_SUCCESS_BELOW: Final = 0.5
ENT_COEF_EXPLODE: Final = 10.0
REWARD_BOUND: Final = 1.0
GAMMA: Final = 0.99
CRITIC_LOSS_CEILING: Final = (REWARD_BOUND / (1.0 - GAMMA)) ** 2
OVERESTIMATION_ABS: Final = 10.0
OVERESTIMATION_RUN: Final = 2
SUCCESS_FLAT_HORIZON: Final = 150_000
SUCCESS_FLAT_AT_MOST: Final = 0.2
SUCCESS_PASS: Final = 0.9


def check_ent_coef_collapse(ent_coef: Series, success: Series, *, threshold: float = ENT_COEF_COLLAPSE) -> Finding:
    """ent_coef <= ``threshold`` at a log point where the success rate is below 0.5.

    ent_coef: ``train/ent_coef`` per log dump; success: ``rollout/success_rate`` per log dump.
    """
    fid, tag = "ent_coef_collapse", metrics.ENT_COEF
    short = too_short(fid, tag, ent_coef, need=1)
    if short:
        return short
    v, steps = ent_coef.values, ent_coef.steps
    succ = value_at(success, steps)
    collapsed = np.isfinite(v) & (v <= threshold) & (succ < COLLAPSE_SUCCESS_BELOW)
    observed = {"first": float(v[0]), "last": float(v[-1]), "min": float(np.nanmin(v)), "threshold": threshold}
    test = f"collapsed if <= {fmt(threshold)} while success_rate < {COLLAPSE_SUCCESS_BELOW:g}"
    if not collapsed.any():
        return Finding(fid, tag, "ok", f"ent_coef {fmt(v[0])} -> {fmt(v[-1])}, min {fmt(observed['min'])} "
                       f"({test}: never)", observed)
    i = int(np.argmax(collapsed))
    at = int(steps[i])
    observed |= {"collapse_step": float(at), "collapse_ent_coef": float(v[i]), "collapse_success_rate": float(succ[i])}
    evidence = (f"at step {at:,}: ent_coef {fmt(v[i])} while success_rate was {fmt(succ[i])} — exploration "
                f"bonus gone before the task was learned ({test})")
    return Finding(fid, tag, "warning", evidence, observed, "Entropy coefficient collapsed",
                   "Fix ent_coef (e.g. 0.05, as chapter 4 does on FetchPush) or lower target_entropy's magnitude",
                   at_step=at)


def _ceiling(fid: str, tag: str, series: Series, ceiling: float, key: str, verb: str, likely_problem: str,
             fix: str) -> Finding:
    """Warns from the first non-finite point or point above ``ceiling``; ``key`` names it in ``observed``."""
    short = too_short(fid, tag, series, need=1)
    if short:
        return short
    v = series.values
    bad = ~np.isfinite(v) | (v > ceiling)
    peak = float(np.max(np.where(np.isfinite(v), v, np.inf)))
    observed = {"first": float(v[0]), "max": peak, "last": float(v[-1]), key: ceiling}
    name = tag.rsplit("/", 1)[-1]
    evidence = f"{name} {fmt(v[0])} -> {fmt(v[-1])}, max {fmt(peak)} ({verb} if > {fmt(ceiling)})"
    if not bad.any():
        return Finding(fid, tag, "ok", evidence, observed)
    at = int(series.steps[np.argmax(bad)])
    return Finding(fid, tag, "warning", f"{evidence}; from step {at:,}", observed, likely_problem, fix, at_step=at)


def check_ent_coef_explodes(ent_coef: Series) -> Finding:
    """Warns on a non-finite point, or on ent_coef > 10 (ent_coef: ``train/ent_coef`` per log dump)."""
    return _ceiling("ent_coef_explodes", metrics.ENT_COEF, ent_coef, ENT_COEF_EXPLODE, "threshold", "explodes",
                    "Target entropy above what the policy can reach",
                    "Use target_entropy='auto' (-action_dim) or a fixed ent_coef")


def check_critic_loss_diverges(critic_loss: Series) -> Finding:
    """Warns on a non-finite point, or on critic_loss > 1e4 (critic_loss: ``train/critic_loss`` per log dump)."""
    return _ceiling("critic_loss_diverges", metrics.CRITIC_LOSS, critic_loss, CRITIC_LOSS_CEILING, "ceiling",
                    "diverged", "Reward scale wrong or critic learning rate too high",
                    "Check reward range (FetchReachDense: rewards in [-1, 0]); reduce learning_rate")


def check_q_overestimation(q_start: Series | None, mc_return: Series | None) -> Finding:
    """Q - G > |G| + 10 at each of the last two measurements, the gap not shrinking.

    q_start: ``q/eval_q_start``; mc_return: ``q/eval_mc_return`` (one point per measurement, same steps).
    """
    fid, tag = "q_overestimation", metrics.Q_OVERESTIMATION
    if q_start is None or mc_return is None:
        return Finding(fid, tag, "info", "q/eval_* not logged (attach fetchrl.pipeline.offpolicy_callbacks."
                       "SACDiagnosticsCallback)")
    short = too_short(fid, tag, q_start, need=OVERESTIMATION_RUN)
    if short:
        return short
    q = q_start.values
    g = value_at(mc_return, q_start.steps)
    gap = q - g
    over = ~np.isfinite(q) | (gap > np.abs(g) + OVERESTIMATION_ABS)
    observed = {"last_q": float(q[-1]), "last_mc_return": float(g[-1]), "last_gap": float(gap[-1]),
                "max_gap": float(np.nanmax(gap)) if np.isfinite(gap).any() else math.inf, "n": float(q.size)}
    evidence = (f"last Q {fmt(q[-1])} vs soft MC return {fmt(g[-1])} (gap {fmt(gap[-1])}); over-estimating if "
                f"gap > |return| + {fmt(OVERESTIMATION_ABS)} at the last {OVERESTIMATION_RUN} measurements")
    tail = np.where(np.isfinite(gap), gap, np.inf)[-OVERESTIMATION_RUN:]
    running_away = bool(np.all(np.diff(tail) >= 0))  # inf - inf is NaN: a non-finite tail counts as running
    if not over[-OVERESTIMATION_RUN:].all() or not (running_away or np.isinf(tail).any()):
        return Finding(fid, tag, "ok", evidence, observed)
    # the run of over-estimating measurements that reaches the end starts here
    i = int(q.size - np.argmin(over[::-1])) if not over.all() else 0
    at = int(q_start.steps[i])
    return Finding(fid, tag, "warning", f"{evidence}; since step {at:,}", observed, "Q-values running away "
                   "from real returns (over-estimation)", "Lower learning_rate, keep tau small (0.005), "
                   "check gamma", at_step=at)


def check_success_flat(success: Series, ent_coef: Series, *, horizon: int = SUCCESS_FLAT_HORIZON,
                       at_most: float = SUCCESS_FLAT_AT_MOST) -> Finding:
    """Success never above ``at_most`` although the run went ``horizon`` steps past learning's start.

    success: ``rollout/success_rate`` per log dump; ent_coef: ``train/ent_coef``, whose first step
    dates the start of learning (first log dump after ``learning_starts``).
    """
    fid, tag = "success_flat", metrics.SUCCESS_RATE
    if ent_coef.steps.size == 0 or success.steps.size == 0:
        return Finding(fid, tag, "info", "no training logged yet")
    start, end = int(ent_coef.steps[0]), int(success.steps[-1])
    after = success.values[success.steps >= start]
    best = float(np.nanmax(after)) if np.isfinite(after).any() else math.nan
    observed = {"learning_start_step": float(start), "last_step": float(end), "horizon": float(horizon),
                "max_after_start": best, "at_most": at_most}
    if end - start < horizon:
        return Finding(fid, tag, "info", f"too early to judge: {end - start:,} steps since learning started "
                       f"(step {start:,}); needs {horizon:,} (best success so far {fmt(best)})", observed)
    evidence = (f"max success_rate {fmt(best)} in {end - start:,} steps after learning started at step {start:,} "
                f"(flat if never > {fmt(at_most)} after {horizon:,})")
    if best > at_most:
        return Finding(fid, tag, "ok", evidence, observed)
    return Finding(fid, tag, "warning", evidence, observed, "Nothing learned: reward, goal or exploration broken",
                   "Check the env's reward and goals (check-env), ent_coef and learning_starts",
                   at_step=start + horizon)


def check_ent_coef_trend(s: Series) -> Finding:
    return trend("ent_coef_trend", metrics.ENT_COEF, s, "falls (the book: ~0.47 -> ~0.0004 over 300k steps)",
                 lambda a, b: b < a, "not falling (a fixed ent_coef stays put)")


#: Chapter 3's milestones on dense Reach, quoted while a run is below SUCCESS_PASS.
BOOK_MILESTONES: Final = "the book: 20-60 % at 50-150k steps, 80-99 % at 150-400k, 100 % after ~300k"


def check_success_progress(s: Series, *, book: str = BOOK_MILESTONES) -> Finding:
    """Success so far against the book's milestones (s: ``rollout/success_rate``; ``book``: what to quote)."""
    fid, tag = "success_progress", metrics.SUCCESS_RATE
    v = s.values
    last = float(v[-1])
    best = float(np.nanmax(v)) if np.isfinite(v).any() else math.nan
    observed = {"first": float(v[0]), "max": best, "last": last}
    evidence = f"{fmt(v[0])} -> {fmt(last)}, max {fmt(best)} (healthy: 0 -> 1)"
    if last >= SUCCESS_PASS:
        return Finding(fid, tag, "ok", evidence, observed)
    return Finding(fid, tag, "info", f"{evidence}; below {SUCCESS_PASS} so far ({book})", observed)


def check_replay_health(fill: Series | None, age: Series | None) -> Finding:
    """Report the replay buffer's last fill and batch age (``replay/fill``, ``replay/sample_age_mean``)."""
    fid, tag = "replay_health", metrics.REPLAY_FILL
    if fill is None or age is None or fill.values.size == 0 or age.values.size == 0:
        return Finding(fid, tag, "info", "replay/* not logged (attach SACDiagnosticsCallback)")
    observed = {"fill": float(fill.values[-1]), "sample_age_mean": float(age.values[-1])}
    return Finding(fid, tag, "ok", f"buffer {observed['fill']:.0%} full; sampled transitions "
                   f"{fmt(observed['sample_age_mean'])} env steps old on average", observed)


#: Every SAC check: the tags it reads (in argument order) and the function.
CHECKS: Final[tuple[tuple[tuple[str, ...], Callable[..., Finding]], ...]] = (
    ((metrics.SUCCESS_RATE, metrics.ENT_COEF), check_success_flat),
    ((metrics.SUCCESS_RATE,), check_success_progress),
    ((metrics.ENT_COEF, metrics.SUCCESS_RATE), check_ent_coef_collapse),
    ((metrics.ENT_COEF,), check_ent_coef_explodes),
    ((metrics.ENT_COEF,), check_ent_coef_trend),
    ((metrics.CRITIC_LOSS,), check_critic_loss_diverges),
    ((metrics.EVAL_Q, metrics.EVAL_MC_RETURN), check_q_overestimation),
    ((metrics.REPLAY_FILL, metrics.REPLAY_SAMPLE_AGE), check_replay_health),
)
#: Tags a check uses when logged and does without otherwise (passed as None).
OPTIONAL_TAGS: Final = metrics.SAC_OPTIONAL
