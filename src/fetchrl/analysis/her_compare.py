"""Chapter 4's ``compare``: the treatment arm (SAC + HER) against its control (SAC, plain buffer) over seeds.

Reads each arm's eval JSONs from disk (never results held in memory), so the numbers are the ones any
reader can recompute: per arm the mean, sample std and 95 % Student-t CI over seeds of the success
rate, final distance and return; the treatment-minus-control success difference in percentage points
with its 95 % Welch-t CI (arms may be unequally noisy); and the chapter's claim "HER − no-HER > 50 pp"
judged by that CI (:func:`fetchrl.artifacts.claim_verdict`). One figure: success and final distance per
arm (mean, CI bar, every seed's dot) and the training success curves per arm.

Training the missing trials is the workflow's job (``fetchrl.workflows.compare_arms``): this module
only reads, computes and draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fetchrl import metrics
from fetchrl.analysis.plots import DPI, bootstrap_band, common_grid
from fetchrl.analysis.stats import t_interval, welch_interval
from fetchrl.analysis.tbreader import Series, read_scalars
from fetchrl.artifacts import (
    ARM_METRIC_BOUNDS,
    ArmsCompareResult,
    ArmsDifference,
    ArmSummary,
    ArtifactNames,
    EvalResult,
    MeanCI,
    RunPaths,
    SeedSummary,
    atomic_path,
    claim_verdict,
    now_iso,
)
from fetchrl.errors import FetchRLError
from fetchrl.tasks import envs

#: The chapter's claim: the treatment beats the control by more than this many percentage points.
CLAIM_THRESHOLD_PP = 50.0
#: A difference below this many percentage points is called small (the book's sparse Reach: 96 % vs 100 %).
SMALL_GAP_PP = 10.0
#: The method string recorded with the difference.
WELCH = "Welch t, 95 % CI of the difference of means over seeds"
#: Colours of the treatment and control arms in the figure.
ARM_COLOURS = ("tab:green", "tab:grey")


@dataclass(frozen=True)
class ArmInput:
    """Where one arm's runs are: its artifact names (``sac_her`` / ``sac``) and what to call it."""

    names: ArtifactNames
    title: str
    """``"SAC + HER"``."""
    total_steps: int
    """Steps each of its runs trained (recorded in the JSON)."""


def read_arm(arm: ArmInput, env_id: str, seeds: Sequence[int], root: Path) -> ArmSummary:
    """One arm over ``seeds``: each seed's eval JSON read back, then mean, std and 95 % t-CI per metric.

    Raises FetchRLError naming the first missing eval JSON, or one made on another task.
    """
    if not seeds:
        raise FetchRLError(f"no complete run of {arm.title} on {env_id} to compare (see the errors above)")
    per_seed, jsons = [], []
    for seed in seeds:
        path = RunPaths(env_id, seed, root, arm.names).eval_json
        result = EvalResult.from_json(path)
        if result.env_id != env_id:
            raise FetchRLError(f"eval JSON {path} is for {result.env_id}, not {env_id}")
        per_seed.append(SeedSummary(seed, *(float(result.aggregate[k]) for k in ARM_METRIC_BOUNDS)))
        jsons.append(str(path))
    stats = {}
    for name in ARM_METRIC_BOUNDS:
        bounds = ARM_METRIC_BOUNDS[name]
        mean, std, ci = t_interval([getattr(s, name) for s in per_seed], limits=(bounds.low, bounds.high))
        stats[name] = MeanCI(mean, std, list(ci) if ci is not None else None, len(per_seed))
    return ArmSummary(arm.names.algo, arm.title, per_seed, stats, jsons)


def _pp(x: float) -> str:
    return f"{x:+.1f} pp"


def _ci_text(ci: Sequence[float] | None) -> str:
    return f"95 % CI {ci[0]:+.1f} to {ci[1]:+.1f} pp" if ci is not None else "95 % CI not measured"


def judge(treatment: ArmSummary, control: ArmSummary, env_id: str,
          threshold_pp: float = CLAIM_THRESHOLD_PP) -> tuple[ArmsDifference, str, bool, str]:
    """The success difference (pp) with its Welch CI, the claim's verdict, whether the gap is below the bar, and
    the answer in words.

    ``gap_small``: the CI (or, unmeasured, the difference) lies below the bar. The answer never overclaims:
    a refuted claim says the interval is below the bar, and a difference under :data:`SMALL_GAP_PP` is
    called small in so many words (sparse Reach: both arms solve it).
    """
    a = [100 * s.success_rate for s in treatment.per_seed]
    b = [100 * s.success_rate for s in control.per_seed]
    diff, ci, df = welch_interval(a, b, limits=(-100.0, 100.0))
    difference = ArmsDifference(diff, list(ci) if ci is not None else None, df, WELCH)
    verdict = claim_verdict(difference.ci_pp, threshold_pp)
    gap_small = (ci[1] if ci is not None else diff) < threshold_pp
    claim = f"{treatment.title} − {control.title} > {threshold_pp:g} pp"
    head = (f"{treatment.title} − {control.title} = {_pp(diff)} success ({_ci_text(difference.ci_pp)}, "
            f"{len(a)} vs {len(b)} seeds) on {env_id}")
    below = f"below {threshold_pp:g} pp"
    size = f"the gap is small ({_pp(diff)})" if abs(diff) < SMALL_GAP_PP else f"the gap ({_pp(diff)}) is {below}"
    if ci is None:
        why = ("inconclusive — not measured: an arm has one seed, so there is no interval (use --seeds 3 or more)"
               + (f"; on this one seed {size}" if gap_small else ""))
    elif verdict == "PASS":
        why = f"PASS — the whole interval is above {threshold_pp:g} pp: the claim \"{claim}\" holds on {env_id}"
    elif verdict == "FAIL":
        same = ci[0] <= 0.0 <= ci[1]
        why = (f"FAIL — the claim \"{claim}\" is refuted on {env_id}: the whole interval is {below}; {size}"
               + ("; the arms do not differ measurably here (the interval includes 0)" if same else ""))
    else:
        why = (f"inconclusive — the interval straddles {threshold_pp:g} pp: more seeds (or longer runs) are needed to "
               "tell" + ("; the gap measured so far is below the bar" if diff < threshold_pp else ""))
    return difference, verdict, gap_small, f"{head}: {why}"


def compare_arms(treatment: ArmInput, control: ArmInput, env_id: str, seeds: dict[str, list[int]], root: Path,
                 *, chapter: str, n_eval_episodes: int, failed_trials: Sequence[str] = (),
                 threshold_pp: float = CLAIM_THRESHOLD_PP) -> ArmsCompareResult:
    """Both arms read from their eval JSONs under ``root`` and judged.

    ``seeds``: the seeds of each arm to read (``{algo: [seed, ...]}``, the ones whose trial is complete).
    """
    arms = [read_arm(a, env_id, seeds[a.names.algo], root) for a in (treatment, control)]
    difference, verdict, gap_small, answer = judge(arms[0], arms[1], env_id, threshold_pp)
    all_seeds = sorted(set(seeds[treatment.names.algo]) | set(seeds[control.names.algo]))
    return ArmsCompareResult(
        created_at=now_iso(), env_id=env_id, chapter=chapter,
        total_steps={a.names.algo: a.total_steps for a in (treatment, control)},
        n_eval_episodes=n_eval_episodes, seeds=all_seeds, arms=arms, difference=difference,
        claim=f"{treatment.title} − {control.title} > {threshold_pp:g} pp", claim_threshold_pp=threshold_pp,
        verdict=verdict, gap_small=gap_small, answer=answer, failed_trials=list(failed_trials))


def _stat_text(stat: MeanCI, scale: float, unit: str, digits: int) -> str:
    """``"83.3 % ± 5.8 (95 % CI 69.0 to 97.7)"``; ``"… ± not measured (one seed)"``."""
    if stat.ci is None or stat.std is None:
        return f"{stat.mean * scale:.{digits}f}{unit} ± not measured (one seed)"
    return (f"{stat.mean * scale:.{digits}f}{unit} ± {stat.std * scale:.{digits}f} "
            f"(95 % CI {stat.ci[0] * scale:.{digits}f} to {stat.ci[1] * scale:.{digits}f})")


def summary_lines(result: ArmsCompareResult) -> list[str]:
    """What the command prints: each arm's success, final distance and return, then the verdict."""
    lines = [f"{result.env_id}, seeds {', '.join(map(str, result.seeds))}, {result.n_eval_episodes} eval episodes each"]
    width = max(len(arm.title) for arm in result.arms)
    for arm in result.arms:
        s = arm.stats
        lines.append(f"  {arm.title:<{width}} success {_stat_text(s['success_rate'], 100, ' %', 1)}; "
                     f"final distance {_stat_text(s['final_distance_mean'], 1000, ' mm', 1)}; "
                     f"return {_stat_text(s['return_mean'], 1, '', 2)}")
        lines.append(f"  {'':<{width}} per seed: " + ", ".join(f"seed {p.seed} {p.success_rate:.0%}" for p in arm.per_seed))
    if result.failed_trials:
        lines.append(f"  failed trials left out: {', '.join(result.failed_trials)}")
    lines.append(result.answer)
    return lines


# ---------------------------------------------------------------- figure
def _arm_panel(ax: Axes, result: ArmsCompareResult, metric: str, scale: float, label: str) -> None:
    """Every seed's dot, the mean and its 95 % t-CI bar, per arm."""
    rng = np.random.default_rng(0)  # dot jitter only, so a figure is reproducible
    for x, (arm, colour) in enumerate(zip(result.arms, ARM_COLOURS, strict=True)):
        stat = arm.stats[metric]
        values = np.array([getattr(s, metric) for s in arm.per_seed]) * scale
        ax.scatter(x + rng.uniform(-0.12, 0.12, values.size), values, color=colour, alpha=0.6, s=28, zorder=3,
                   label="a seed" if x == 0 else None)
        if stat.ci is not None:
            lo, hi = stat.ci[0] * scale, stat.ci[1] * scale
            ax.errorbar(x, stat.mean * scale, yerr=[[stat.mean * scale - lo], [hi - stat.mean * scale]], fmt="D",
                        color="black", capsize=8, lw=1.6, zorder=4, label="mean, 95 % t-CI" if x == 0 else None)
        else:
            ax.plot(x, stat.mean * scale, "D", color="black", zorder=4, label="mean (one seed: no CI)" if x == 0 else None)
    ax.set_xticks(range(len(result.arms)), [a.title for a in result.arms])
    ax.set_xlim(-0.6, len(result.arms) - 0.4)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="best")


def _curves_panel(ax: Axes, result: ArmsCompareResult, root: Path, names: Sequence[ArtifactNames]) -> None:
    """Training success rate per arm: mean over seeds with a 95 % bootstrap band (runs without the curve skipped)."""
    drawn = False
    for arm, arm_names, colour in zip(result.arms, names, ARM_COLOURS, strict=True):
        curves: list[Series] = []
        for s in arm.per_seed:
            try:
                curves.append(read_scalars(RunPaths(result.env_id, s.seed, root, arm_names).tb_dir,
                                           (metrics.SUCCESS_RATE,))[metrics.SUCCESS_RATE])
            except FetchRLError:  # e.g. a run too short to log a training episode: no curve, said in the title
                continue
        try:
            grid, values = common_grid(curves)
        except FetchRLError:
            continue
        mean, low, high = bootstrap_band(values)
        ax.plot(grid, mean, color=colour, lw=1.8, marker="o" if grid.size < 20 else None,  # few points: dots
                label=f"{arm.title} ({len(curves)} seed(s))")
        if len(curves) > 1:
            ax.fill_between(grid, low, high, color=colour, alpha=0.22, lw=0)
        drawn = True
    ax.set_title("training success rate (stochastic policy)\nmean over seeds, 95 % bootstrap band"
                 if drawn else "training success rate: not logged (runs too short)", fontsize=10)
    ax.set_xlabel("environment steps")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="best")


def plot_arms(result: ArmsCompareResult, root: Path, names: Sequence[ArtifactNames], out_png: Path) -> Path:
    """One PNG: success (%) and final distance (mm) per arm with 95 % CIs and seeds, and the training curves.

    ``names``: the arms' artifact names, in ``result.arms``' order (where their TensorBoard runs are).
    """
    fig = Figure(figsize=(15, 4.8), layout="constrained")
    axes = list(np.asarray(fig.subplots(1, 3)).ravel())
    d = result.difference
    fig.suptitle(f"{result.env_id}: {result.claim}? {result.verdict} — difference {_pp(d.difference_pp)} "
                 f"({_ci_text(d.ci_pp)})", fontsize=12)
    _arm_panel(axes[0], result, "success_rate", 100, "eval success rate (%)")
    axes[0].axhline(90, color="tab:red", ls="--", lw=1, label="chapter's criterion (90 %)")
    axes[0].legend(fontsize=8, loc="best")
    axes[0].set_ylim(-3, 103)
    axes[0].set_title("final evaluation success (deterministic)", fontsize=10)
    _arm_panel(axes[1], result, "final_distance_mean", 1000, "final distance (mm)")
    axes[1].set_title(f"final {envs.goal_distance_name(result.env_id)} distance", fontsize=10)
    _curves_panel(axes[2], result, root, names)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out_png
