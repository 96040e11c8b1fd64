"""Two chapters' runs side by side (chapter 3's ``compare``: PPO of chapter 2 vs SAC of chapter 3).

For each run, read from its own artifacts: the final evaluation (eval JSON, deterministic episodes)
against *its own chapter's* criteria; wall time and steps/s (meta JSON); and, from its TensorBoard
curves, the environment steps at which each criterion was first met *during training*. What the
training curves measure is not what the final evaluation measures, and the JSON says so per
criterion: ``rollout/success_rate`` and ``rollout/ep_rew_mean`` are SB3's means over the last 100
*training* episodes, played with *stochastic* actions (PPO samples its Gaussian; SAC its squashed
Gaussian); no run evaluates its policy during training, so a criterion on a metric the training
logs do not hold (the final distance) has no step ("not measured during training").

Sample efficiency, beside the steps to the success threshold: the mean training success rate over
the environment steps both runs trained (the area under the success curve divided by that span, a
step function between log points, 0 before the first): one number in [0, 1], higher = learned with
fewer samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fetchrl import metrics
from fetchrl.analysis.tbreader import Series, read_scalars
from fetchrl.artifacts import (
    CompareCriterion,
    CompareResult,
    CompareRun,
    EvalResult,
    RunPaths,
    TrainMeta,
    atomic_path,
    now_iso,
)
from fetchrl.config import Criterion
from fetchrl.errors import FetchRLError

#: Eval-JSON metric -> the training curve that measures the same quantity (stochastic, last 100 episodes).
TRAINING_CURVES = {"success_rate": metrics.SUCCESS_RATE, "return_mean": metrics.EP_REW_MEAN}
TRAINING_NOTE = ("steps_to_criterion: first logged step whose training curve (SB3's mean over the last 100 "
                 "training episodes, stochastic actions) meets the criterion; not the deterministic final "
                 "evaluation, and null when the training logs do not measure the metric")


@dataclass(frozen=True)
class CompareInput:
    """One side of the comparison: a chapter's run and that chapter's criteria."""

    chapter: str
    """``"ch02"``."""
    title: str
    """How the plot's legend names it: ``"PPO (ch02)"``."""
    paths: RunPaths
    criteria: tuple[Criterion, ...]
    rerun: str
    """The command that produces the run when it is missing: ``scripts/ch02_ppo_dense_reach.py all --seed 0``."""


def _require(path: Path, what: str, rerun: str) -> None:
    if not path.exists():
        raise FetchRLError(f"missing {what}: {path} (run `{rerun}` first)")


def first_step_meeting(series: Series, criterion: Criterion) -> int | None:
    """The first logged step whose value meets ``criterion`` (None: never)."""
    hits = [int(s) for s, v in zip(series.steps, series.values, strict=True) if criterion.passes(float(v))]
    return hits[0] if hits else None


def mean_over_steps(series: Series, until: int) -> float:
    """Mean of a step function over env steps [0, until]: each logged value holds until the next point, 0 before
    the first. ``series.steps``: [n] increasing; returns a float (NaN for ``until`` <= 0)."""
    if until <= 0:
        return float("nan")
    edges = np.clip(np.append(series.steps, until).astype(np.float64), 0, until)
    widths = np.diff(edges)
    values = np.nan_to_num(series.values.astype(np.float64))
    return float(np.sum(widths * values) / until)


def _run(side: CompareInput, budget: int | None, curves: dict[str, Series]) -> CompareRun:
    result = EvalResult.from_json(side.paths.eval_json)
    meta = TrainMeta.from_json(side.paths.meta)
    checks = []
    for c in side.criteria:
        value = float(result.aggregate[c.metric])
        tag = TRAINING_CURVES.get(c.metric)
        step = first_step_meeting(curves[tag], c) if tag is not None else None
        checks.append(CompareCriterion(name=c.name, metric=c.metric, op=c.op, threshold=c.threshold, value=value,
                                       passed=c.passes(value), steps_to_criterion=step,
                                       training_curve=tag or "not measured during training"))
    success = curves[metrics.SUCCESS_RATE]
    return CompareRun(
        chapter=side.chapter, algo=meta.algo, checkpoint=str(side.paths.checkpoint),
        eval_json=str(side.paths.eval_json), total_steps=meta.num_timesteps, wall_time_s=meta.wall_time_s,
        steps_per_second=meta.steps_per_second, n_eval_episodes=result.n_episodes,
        final={k: float(result.aggregate[k]) for k in ("success_rate", "return_mean", "final_distance_mean")},
        criteria=checks, passed=all(c.passed for c in checks),
        mean_training_success=mean_over_steps(success, budget or meta.num_timesteps))


def compare(sides: Sequence[CompareInput], out_json: Path, out_png: Path) -> CompareResult:
    """Read every side's artifacts, write the comparison JSON and the plot; FetchRLError (exit 2) naming
    the first missing file."""
    for side in sides:
        for path, what in ((side.paths.meta, "training metadata"), (side.paths.eval_json, "eval JSON"),
                           (side.paths.tb_dir, "TensorBoard run")):
            _require(path, f"{side.chapter} {what}", side.rerun)
    curves = [read_scalars(s.paths.tb_dir, (metrics.SUCCESS_RATE, metrics.EP_REW_MEAN)) for s in sides]
    budget = min(TrainMeta.from_json(s.paths.meta).num_timesteps for s in sides)
    runs = [_run(s, budget, c) for s, c in zip(sides, curves, strict=True)]
    env_ids = {EvalResult.from_json(s.paths.eval_json).env_id for s in sides}
    out = CompareResult(created_at=now_iso(), env_id=", ".join(sorted(env_ids)), seed=sides[0].paths.seed,
                        common_steps=budget, runs=runs, note=TRAINING_NOTE)
    out.to_json(out_json)
    plot_compare(sides, curves, runs, out_png)
    return out


def plot_compare(sides: Sequence[CompareInput], curves: Sequence[dict[str, Series]], runs: Sequence[CompareRun],
                 out_png: Path) -> Path:
    """Both training success curves on one env-step axis, each chapter's success threshold dashed."""
    fig = Figure(figsize=(8, 4.5))
    ax = fig.add_subplot()
    for side, c, run in zip(sides, curves, runs, strict=True):
        s = c[metrics.SUCCESS_RATE]
        line = ax.plot(s.steps, s.values, drawstyle="steps-post", marker="o", markersize=3, label=f"{side.title}: {run.wall_time_s:.0f} s, "
                       f"{run.steps_per_second:.0f} steps/s")[0]
        for crit in side.criteria:
            if crit.metric == "success_rate":
                ax.axhline(crit.threshold, color=line.get_color(), linestyle="--", linewidth=0.8,
                           label=f"{side.chapter} criterion {crit.op} {crit.threshold:g}")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("training success rate (stochastic, last 100 episodes)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(" vs ".join(s.title for s in sides) + f", seed {sides[0].paths.seed}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out_png


def summary_lines(result: CompareResult) -> list[str]:
    """What ``compare`` prints: one line per run, then per criterion."""
    lines = []
    for r in result.runs:
        verdict = "PASS" if r.passed else "FAIL"
        lines.append(f"{r.chapter} {r.algo.upper()}: {verdict}  success {r.final['success_rate']:.2f}, return "
                     f"{r.final['return_mean']:.2f}, distance {r.final['final_distance_mean']:.4f} m; "
                     f"{r.total_steps:,} steps in {r.wall_time_s:.0f} s ({r.steps_per_second:.0f} steps/s); "
                     f"mean training success over {result.common_steps:,} steps {r.mean_training_success:.2f}")
        for c in r.criteria:
            when = (f"met in training at step {c.steps_to_criterion:,}" if c.steps_to_criterion is not None
                    else "never met in training" if c.training_curve.startswith("rollout/")
                    else c.training_curve)
            lines.append(f"  {c.name} {c.op} {c.threshold:g}: final {c.value:.4g} "
                         f"({'pass' if c.passed else 'fail'}); {when}")
    return lines
