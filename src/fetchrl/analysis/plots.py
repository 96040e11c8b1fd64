"""PNG figures of the chapter's six TensorBoard curves: one run, several seeds, an ablation.

Reads event files only (via :mod:`fetchrl.analysis.tbreader`) and writes each PNG atomically. Figures are
built on ``matplotlib.figure.Figure`` and rendered by the Agg canvas, so nothing here touches pyplot's
global state or needs a display.

Across seeds, each seed's curve is linearly interpolated onto a common step grid (the steps all
seeds cover), then the mean is drawn with a 95 % percentile-bootstrap confidence band: seeds are
resampled with replacement (``BOOTSTRAP_REPS`` times, fixed RNG seed) and the mean recomputed.
With one seed there is no band. Final evaluation scores, when given, get an extra row: the
interquartile mean (IQM) with its 95 % stratified-bootstrap CI from rliable
(``fetchrl.analysis.stats.rliable_summary``), beside every seed's score.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from fetchrl import metrics
from fetchrl.analysis import diagnose
from fetchrl.analysis.tbreader import Series, read_scalars
from fetchrl.artifacts import atomic_path
from fetchrl.errors import FetchRLError

BOOTSTRAP_REPS: Final = 1000
GRID_POINTS: Final = 200
DPI: Final = 110

#: What the chapter's healthy table says about each curve (shown under the panel title).
HEALTHY_NOTE: Final = {
    metrics.EP_REW_MEAN: "healthy: steadily increasing",
    metrics.SUCCESS_RATE: "healthy: 0 → 1 over training",
    metrics.VALUE_LOSS: "healthy: high initially, decreases, stabilizes",
    metrics.APPROX_KL: diagnose.APPROX_KL_BAND.label,
    metrics.CLIP_FRACTION: diagnose.CLIP_FRACTION_BAND.label,
    metrics.ENTROPY_LOSS: "healthy: slowly moves toward 0",
    # SAC (chapter 3's book numbers; fetchrl.analysis.rules.sac)
    metrics.ENT_COEF: "healthy: falls if learned (ch. 3: 0.47 → 0.0004), flat if fixed",
    metrics.CRITIC_LOSS: f"healthy: stays far below {diagnose.sac.CRITIC_LOSS_CEILING:g}",
    metrics.ACTOR_LOSS: "healthy: falls as Q rises (it is -Q + ent_coef log π)",
    metrics.Q_OVERESTIMATION: "Q vs real returns: batch Q (lines), eval Q, soft MC return (dots)",
    # SAC + HER (chapter 4; fetchrl.analysis.rules.her)
    metrics.HER_RELABELED_REWARD0: "reward-0 (success) share: relabeled well above real",
    metrics.OBJECT_DISPLACEMENT: f"healthy: rises above {diagnose.her.OBJECT_STILL_M:g} m as the arm learns to push",
}
#: SAC's panels (``plot_run(..., algo="sac")``), and the rules whose warnings each panel marks.
SAC_PANELS: Final = (metrics.SUCCESS_RATE, metrics.EP_REW_MEAN, metrics.ENT_COEF, metrics.CRITIC_LOSS,
                     metrics.ACTOR_LOSS, metrics.Q_OVERESTIMATION)
SAC_PANEL_RULES: Final = {metrics.SUCCESS_RATE: ("success_flat",),
                          metrics.ENT_COEF: ("ent_coef_collapse", "ent_coef_explodes"),
                          metrics.CRITIC_LOSS: ("critic_loss_diverges",),
                          metrics.Q_OVERESTIMATION: ("q_overestimation",)}
#: SAC + HER's extra row (``plot_run(..., algo="sac_her")``), and the rules whose warnings each panel marks.
HER_PANELS: Final = (metrics.HER_RELABELED_REWARD0, metrics.OBJECT_DISPLACEMENT)
HER_PANEL_RULES: Final = {metrics.HER_RELABELED_REWARD0: ("her_inactive",),
                          metrics.OBJECT_DISPLACEMENT: ("object_never_moved",)}
#: The HER panel's curves: (tag, label, style).
HER_FRACTION_LINES: Final = ((metrics.HER_RELABELED_REWARD0, "relabeled transitions", "o-"),
                             (metrics.HER_REAL_REWARD0, "real transitions", "s-"))
#: The Q panel's curves: (tag, label, style).
SAC_Q_LINES: Final = ((metrics.Q1_MEAN, "critic 1 mean (batch)", "-"), (metrics.Q2_MEAN, "critic 2 mean (batch)", "-"),
                      (metrics.Q_TARGET_MEAN, "TD target mean (batch)", "--"),
                      (metrics.EVAL_Q, "eval: min Q at episode start", "o-"),
                      (metrics.EVAL_MC_RETURN, "eval: soft MC return", "s-"))
#: The chapter's healthy bands (low, high) — shaded green (``diagnose.HEALTHY_BANDS``; "< 0.03" from 0).
HEALTHY_BAND: Final = {tag: (band.low if math.isfinite(band.low) else 0.0, band.high)
                       for tag, band in diagnose.HEALTHY_BANDS.items()}
#: fetchrl.analysis.diagnose's "consistently above" warning thresholds — dashed red lines.
WARNING_LINE: Final = {
    metrics.APPROX_KL: diagnose.APPROX_KL_HIGH,
    metrics.CLIP_FRACTION: diagnose.CLIP_FRACTION_SATURATED,
}
#: Legend labels of the guides start with these (data lines are left out of the guide legends).
_GUIDES: Final = ("chapter's healthy range", "fetchrl diagnose warning line", "diagnose:")
#: The band check of each banded curve, whose verdict ``plot_run`` writes into the panel's legend.
_BAND_CHECKS: Final = {metrics.APPROX_KL: "approx_kl_range", metrics.CLIP_FRACTION: "clip_fraction_range"}


# ---------------------------------------------------------------- numbers
def common_grid(curves: Sequence[Series], n_points: int = GRID_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate several curves onto one step grid spanning the steps they all cover.

    Args:
        curves: one Series per seed (steps increasing).
        n_points: grid size (fewer if the common range holds fewer distinct steps).

    Returns:
        grid: [n_points] float64 steps; values: [n_seeds, n_points] float64.

    Raises:
        FetchRLError: no curves, an empty curve, or curves whose step ranges do not overlap.
    """
    if not curves or any(c.steps.size == 0 for c in curves):
        raise FetchRLError("cannot aggregate: a run has no logged points")
    lo = max(float(c.steps[0]) for c in curves)
    hi = min(float(c.steps[-1]) for c in curves)
    if lo > hi:
        raise FetchRLError(f"cannot aggregate: the runs' logged steps do not overlap ({lo:.0f} > {hi:.0f})")
    distinct = len({int(s) for c in curves for s in c.steps if lo <= s <= hi})
    grid = np.linspace(lo, hi, max(1, min(n_points, distinct)))
    values = np.stack([np.interp(grid, c.steps.astype(np.float64), c.values) for c in curves])
    return grid, values


def bootstrap_band(values: np.ndarray, *, reps: int = BOOTSTRAP_REPS, confidence: float = 0.95,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over seeds and its percentile-bootstrap confidence band.

    Args:
        values: [n_seeds, n_points] float64.
        reps: bootstrap resamples of the seeds (with replacement).
        confidence: width of the band (0.95 = 2.5th to 97.5th percentile).
        seed: RNG seed, so a figure is reproducible.

    Returns:
        mean, low, high: each [n_points]; low == high == mean for a single seed.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = values.mean(axis=0)
    n = values.shape[0]
    if n < 2:
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(reps, n))
    means = values[idx].mean(axis=1)  # [reps, n_points]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return mean, low, high


# ---------------------------------------------------------------- drawing
def _new_figure(n_rows: int, title: str) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(15, 4.2 * n_rows), layout="constrained")
    axes = list(np.asarray(fig.subplots(n_rows, 3, squeeze=False)).ravel())
    fig.suptitle(title, fontsize=13)
    return fig, axes


def _save(fig: Figure, out_png: Path) -> Path:
    out_png = Path(out_png)
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return out_png


def _wants_log_scale(tag: str, finite: np.ndarray) -> bool:
    """Log y for a loss or KL spanning two orders of magnitude, or dwarfing its healthy band."""
    if tag == metrics.ENT_COEF:
        return bool(finite.size and finite.min() > 0)  # a coefficient falling by decades
    if tag not in (metrics.VALUE_LOSS, metrics.APPROX_KL, metrics.CRITIC_LOSS) or not finite.size or finite.min() <= 0:
        return False
    band_top = HEALTHY_BAND[tag][1] if tag in HEALTHY_BAND else math.inf
    return bool(finite.max() / finite.min() >= 100 or finite.max() >= 10 * band_top)


def _decorate(ax: Axes, tag: str, data: Sequence[np.ndarray]) -> None:
    """Title, healthy band, warning line and scale for the panel of ``tag``."""
    ax.set_title(f"{tag}\n{HEALTHY_NOTE[tag]}", fontsize=10)
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.set_xlabel("environment steps")
    ax.grid(alpha=0.3)
    finite = np.concatenate([d[np.isfinite(d)] for d in data]) if data else np.array([])
    if _wants_log_scale(tag, finite):
        ax.set_yscale("log")
    if tag in HEALTHY_BAND:
        low, high = HEALTHY_BAND[tag]
        if ax.get_yscale() == "log":
            low = min(float(finite.min()), high) / 10  # log axis: "0" is a decade below the data or band
        ax.axhspan(low, high, color="tab:green", alpha=0.15, lw=0,
                   label=f"{_GUIDES[0]} {diagnose.HEALTHY_BANDS[tag].text}")
    if tag in WARNING_LINE:
        ax.axhline(WARNING_LINE[tag], color="tab:red", ls="--", lw=1, label=f"{_GUIDES[1]} ({WARNING_LINE[tag]:g})")
    if tag == metrics.SUCCESS_RATE:
        ax.set_ylim(-0.03, 1.03)


def _draw_band(ax: Axes, grid: np.ndarray, values: np.ndarray, colour: str, label: str) -> None:
    mean, low, high = bootstrap_band(values)
    n = values.shape[0]
    ax.plot(grid, mean, color=colour, lw=1.8, marker="o" if grid.size <= 30 else None, ms=3,  # a short run: dots
            label=f"{label} (mean of {n})" if n > 1 else label)
    if n > 1:
        ax.fill_between(grid, low, high, color=colour, alpha=0.22, lw=0)


def _legend_guides(ax: Axes) -> None:
    """Legend of the healthy band and warning line only (not of the data lines)."""
    guides = [(h, lab) for h, lab in zip(*ax.get_legend_handles_labels(), strict=True) if lab.startswith(_GUIDES)]
    if guides:
        ax.legend(*zip(*guides, strict=True), fontsize=8, loc="best")


def _read_all(logdirs: Sequence[Path], tags: Sequence[str] = metrics.CHAPTER_CURVES) -> list[dict[str, Series]]:
    return [read_scalars(Path(d), tags) for d in logdirs]


def curves_of(on_policy: bool) -> tuple[str, ...]:
    """The curves a run of the algorithm logs: PPO's six (on-policy), or SAC's five."""
    return metrics.CHAPTER_CURVES if on_policy else metrics.SAC_CURVES


def _legend_guides_of(axes: Sequence[Axes], tags: Sequence[str]) -> None:
    """Guide legends on the panels that have guides (PPO: approx_kl, clip_fraction)."""
    for ax, tag in zip(axes, tags, strict=False):
        if tag in HEALTHY_BAND or tag in WARNING_LINE:
            _legend_guides(ax)


def _final_scores_row(axes: Sequence[Axes], final_scores: Mapping[str, Sequence[float]]) -> None:
    """One panel per metric: every seed's score, the IQM and its 95 % stratified-bootstrap CI."""
    from fetchrl.analysis.stats import rliable_summary

    summary = rliable_summary(final_scores)
    for ax, (name, scores) in zip(axes, final_scores.items(), strict=False):
        x = np.linspace(-0.15, 0.15, len(scores)) if len(scores) > 1 else np.zeros(1)
        ax.scatter(x, scores, color="tab:gray", zorder=3, label="per seed")
        if name in summary:
            s = summary[name]
            err = [[s["iqm"] - s["iqm_ci"][0]], [s["iqm_ci"][1] - s["iqm"]]]
            ax.errorbar([0.45], [s["iqm"]], yerr=err, fmt="D", color="tab:blue", capsize=6,
                        label=f"IQM {s['iqm']:.3g} [{s['iqm_ci'][0]:.3g}, {s['iqm_ci'][1]:.3g}]")
        else:
            ax.text(0.5, 0.95, "IQM CI needs >= 2 seeds", transform=ax.transAxes, ha="center", va="top")
        ax.set_xlim(-0.5, 1.0)
        ax.set_xticks([])
        ax.set_title(f"final eval: {name}\n(95 % stratified bootstrap CI, rliable)", fontsize=10)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8, loc="best")


def diagnosis_label(finding: diagnose.Finding) -> str:
    """The legend text of a finding: its verdict and, for a band, the reports' own phrase (wrapped)."""
    band = diagnose.HEALTHY_BANDS.get(finding.signal)
    if band is not None and finding.id in _BAND_CHECKS.values():
        text = f"{_GUIDES[2]} {finding.verdict} — {diagnose.band_phrase(finding.observed, band)}"
    else:
        when = f" at step {finding.at_step:,}" if finding.at_step is not None else ""
        text = f"{_GUIDES[2]} {finding.verdict} {finding.id}{when}"
    return textwrap.fill(text, width=48)


def _annotate(ax: Axes, finding: diagnose.Finding) -> None:
    """Write ``finding`` into the panel: a dotted line at ``at_step`` (when it has one), else a legend entry."""
    colour = {"warning": "tab:red", "outside_range": "tab:purple"}.get(finding.severity, "tab:green")
    if finding.at_step is not None:
        ax.axvline(finding.at_step, color=colour, ls=":", lw=1.4, label=diagnosis_label(finding))
    else:
        ax.plot([], [], " ", label=diagnosis_label(finding))  # text only: nothing to point at


# ---------------------------------------------------------------- public figures
def plot_run(logdir: Path, out_png: Path, algo: str = "ppo", rules: str = "") -> Path:
    """The six curves of one run (2x3 panels), with the chapter's healthy bands shaded.

    ``rules``: the diagnose rule set whose findings annotate the panels (default ``algo``'s).

    ``algo="sac"``: SAC's panels instead (:func:`plot_sac_run`); ``"sac_her"``: those and a HER row.

    The approx_kl and clip_fraction panels carry ``diagnose``'s verdict on their band in the words of
    the diagnosis table ("ok" / "outside range", how many updates, from which step), and the entropy
    panel marks an ``entropy_collapse`` warning at its step.

    Args:
        logdir: TensorBoard run directory (``RunPaths.tb_dir``).
        out_png: where to write, e.g. ``RunPaths.curves_png``.

    Returns:
        ``out_png``. Raises FetchRLError (exit 2) for missing logs or tags.
    """
    if algo in ("sac", "sac_her"):
        return plot_sac_run(logdir, out_png, algo, rules)
    diagnose.rules_for(algo)  # an unknown algorithm is bad input (exit 2)
    scalars = diagnose.read_run(Path(logdir))
    findings = {f.id: f for f in diagnose.diagnose_scalars(scalars, str(logdir)).findings}
    fig, axes = _new_figure(2, f"PPO training curves — {logdir}")
    for ax, tag in zip(axes, metrics.CHAPTER_CURVES, strict=True):
        s = scalars[tag]
        ax.plot(s.steps, s.values, color="tab:blue", lw=1.6, marker="o" if s.steps.size <= 30 else None, ms=3)
        _decorate(ax, tag, [s.values])
        if tag in _BAND_CHECKS:
            _annotate(ax, findings[_BAND_CHECKS[tag]])
    collapse = findings["entropy_collapse"]
    if collapse.severity == "warning":
        _annotate(axes[5], collapse)
    for ax in axes[3:6]:
        _legend_guides(ax)
    return _save(fig, out_png)


def _plot_lines(ax: Axes, scalars: Mapping[str, Series], lines: Sequence[tuple[str, str, str]],
                missing: str) -> list[np.ndarray]:
    """Each logged ``(tag, label, style)`` of ``lines`` as a curve; ``missing`` written when none was logged."""
    drawn = []
    for tag, label, style in lines:
        if tag in scalars:
            s = scalars[tag]
            ax.plot(s.steps, s.values, style, lw=1.4, ms=4, label=label)
            drawn.append(s.values)
    if not drawn:
        ax.text(0.5, 0.5, missing, transform=ax.transAxes, ha="center", va="center")
        ax.set_xticks([])  # an empty panel has no steps to show (matplotlib would label 0..1 in thousands)
        ax.set_yticks([])
    return drawn


def plot_sac_run(logdir: Path, out_png: Path, algo: str = "sac", rules: str = "") -> Path:
    """SAC's curves of one run (2x3 panels): success, reward, ent_coef (log), critic and actor loss, Q vs returns.

    ``algo="sac_her"`` (chapter 4) adds a row: the reward-0 fraction of relabeled vs real transitions,
    and the object's displacement per episode (tasks with an object; a note otherwise).
    Each warning of ``diagnose --algo <algo>`` is marked at its step on its panel (``SAC_PANEL_RULES``,
    ``HER_PANEL_RULES``).

    Args:
        logdir: TensorBoard run directory. out_png: where to write. algo: "sac" or "sac_her".

    Returns:
        ``out_png``. Raises FetchRLError (exit 2) for missing logs or tags.
    """
    her = algo == "sac_her"
    scalars = diagnose.read_run(Path(logdir), algo)
    rules = rules or algo
    findings = {f.id: f for f in diagnose.diagnose_scalars(scalars, str(logdir), rules).findings}
    # both arms of chapter 4 (sparse goals) are judged against the 0.005 line: draw it where their rules use it
    sparse = any(check is diagnose.her.check_her_ent_coef_collapse for _, check in diagnose.rules_for(rules).checks)
    fig, axes = _new_figure(3 if her else 2, f"{'SAC + HER' if her else 'SAC'} training curves — {logdir}")
    panels = (*SAC_PANELS, *HER_PANELS) if her else SAC_PANELS
    panel_rules = {**SAC_PANEL_RULES, **HER_PANEL_RULES}
    for ax, tag in zip(axes, panels, strict=False):
        if tag == metrics.Q_OVERESTIMATION:
            data = _plot_lines(ax, scalars, SAC_Q_LINES, "q/* not logged\n(attach SACDiagnosticsCallback)")
        elif tag == metrics.HER_RELABELED_REWARD0:
            data = _plot_lines(ax, scalars, HER_FRACTION_LINES, "her/* not logged\n(no HER buffer, or a run\nolder than the HER callback)")
            ax.set_ylim(-0.03, 1.03)
        elif tag == metrics.OBJECT_DISPLACEMENT:
            data = _plot_lines(ax, scalars, ((tag, "mean per episode", "o-"),), "not logged\n(a task without an object,\nor a run older than the HER callback)")
            if data:
                ax.axhline(diagnose.her.OBJECT_STILL_M, color="tab:red", ls="--", lw=1,
                           label=f"{_GUIDES[1]} ({diagnose.her.OBJECT_STILL_M:g} m)")
        else:
            s = scalars[tag]
            ax.plot(s.steps, s.values, color="tab:blue", lw=1.6, marker="o" if s.steps.size <= 30 else None, ms=3)
            data = [s.values]
            if sparse and tag == metrics.ENT_COEF:  # chapter 4's collapse line (the book's FetchPush: 0.005)
                ax.axhline(diagnose.her.HER_ENT_COEF_COLLAPSE, color="tab:red", ls="--", lw=1,
                           label=f"{_GUIDES[1]} ({diagnose.her.HER_ENT_COEF_COLLAPSE:g} while unsolved)")
        _decorate(ax, tag, data)
        for fid in panel_rules.get(tag, ()):
            if findings[fid].severity == "warning":
                _annotate(ax, findings[fid])
        handles, labels = ax.get_legend_handles_labels()
        if labels:
            ax.legend(handles, [textwrap.shorten(lab, 200) for lab in labels], fontsize=7, loc="best")
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    return _save(fig, out_png)


def plot_multi_seed(logdirs: Mapping[int, Path], out_png: Path,
                    final_scores: Mapping[str, Sequence[float]] | None = None, *,
                    curves: Sequence[str] = metrics.CHAPTER_CURVES, algo_title: str = "PPO") -> Path:
    """Mean curve and 95 % bootstrap band across seeds for each of the six curves.

    Args:
        logdirs: ``{seed: TensorBoard run directory}``.
        out_png: where to write, e.g. ``artifacts.multi_seed_plot_path()``.
        final_scores: optional ``{metric: [score per seed]}`` (e.g. success_rate from each seed's eval
            JSON); adds a row with each metric's IQM and 95 % stratified-bootstrap CI (rliable).
        curves: the TensorBoard tags drawn, one panel each (at most six): :func:`curves_of` the algorithm.
        algo_title: the algorithm as the title names it.

    Returns:
        ``out_png``.
    """
    if not logdirs:
        raise FetchRLError("plot_multi_seed needs at least one run directory")
    seeds = list(logdirs)
    runs = _read_all([logdirs[s] for s in seeds], curves)
    extra_rows = math.ceil(len(final_scores) / 3) if final_scores else 0
    title = (f"{algo_title} across {len(seeds)} seeds ({', '.join(map(str, seeds))}): mean with 95 % bootstrap CI "
             "over seeds" if len(seeds) > 1 else f"{algo_title}, seed {seeds[0]}")
    fig, axes = _new_figure(2 + extra_rows, title)
    for ax, tag in zip(axes, curves, strict=False):
        series = [r[tag] for r in runs]
        for c in series:
            ax.plot(c.steps, c.values, color="tab:blue", lw=0.7, alpha=0.3)
        grid, values = common_grid(series)
        _draw_band(ax, grid, values, "tab:blue", "seeds")
        _decorate(ax, tag, [c.values for c in series])
    _legend_guides_of(axes, curves)
    for ax in axes[len(curves):6]:
        ax.set_visible(False)
    if final_scores:
        _final_scores_row(axes[6:], final_scores)
    for ax in axes[6 + len(final_scores or {}):]:
        ax.set_visible(False)
    return _save(fig, out_png)


def plot_ablation(groups: Mapping[str, Sequence[Path]], out_png: Path, *,
                  curves: Sequence[str] = metrics.CHAPTER_CURVES) -> Path:
    """One overlay per curve: a mean line (and 95 % bootstrap band over seeds) per setting.

    Args:
        groups: ``{setting label: [run directory per seed]}``, e.g. ``{"clip_range=0.1": [...], ...}``.
        out_png: where to write, e.g. ``artifacts.ablation_plot_path("clip_range")``.
        curves: the TensorBoard tags drawn, one panel each (at most six): :func:`curves_of` the algorithm.

    Returns:
        ``out_png``.
    """
    if not groups or any(not dirs for dirs in groups.values()):
        raise FetchRLError("plot_ablation needs at least one run directory per setting")
    colours = [f"C{i % 10}" for i in range(len(groups))]
    data = {label: _read_all(dirs, curves) for label, dirs in groups.items()}
    fig, axes = _new_figure(2, f"Ablation: {', '.join(groups)} — lines: mean over seeds, bands: 95 % bootstrap CI")
    for ax in axes[len(curves):]:
        ax.set_visible(False)
    for ax, tag in zip(axes, curves, strict=False):
        every: list[np.ndarray] = []
        for colour, (label, runs) in zip(colours, data.items(), strict=True):
            grid, values = common_grid([r[tag] for r in runs])
            _draw_band(ax, grid, values, colour, label)
            every.append(values.ravel())
        _decorate(ax, tag, every)
    axes[0].legend(fontsize=8, loc="best")
    _legend_guides_of(axes, curves)
    return _save(fig, out_png)
