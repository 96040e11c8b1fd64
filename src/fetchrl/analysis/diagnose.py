"""Read a run's TensorBoard logs and check them against the chapter's tables (section 3.3).

Each warning sign of the chapter is a numeric test over the logged series, documented here with its
threshold and why. A run is *healthy* when no test gives a ``warning``; the healthy-range checks of
the chapter's first table only ever give ``ok`` or ``info`` (a short run that has not learned much yet
is not a broken run). ``n`` below is the number of logged points of the series: one per rollout for
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
    0.9 are reported by ``clip_fraction_range`` (info), not as a warning.

``entropy_collapse`` — ``train/entropy_loss`` "immediately 0" (policy collapsed).
    SB3 logs ``entropy_loss = -mean(entropy)``: about -5.68 for the initial 4-D Gaussian (std 1),
    rising toward 0 as the policy sharpens; 0 means the entropy is gone (a Gaussian's geometric-mean
    std <= 1/sqrt(2*pi*e) = 0.24; a categorical policy is deterministic).
    Test: some point among the first ``ceil(0.1 * n)`` updates has ``entropy_loss >= -0.01``
    (at least the first update). Borderline: reaching 0 later in training is the healthy "slowly
    moves toward 0" and is reported by ``entropy_trend``.

Healthy-range checks (``ok`` when the chapter's healthy behaviour is seen, otherwise ``info``):
``reward_trend`` (last ep_rew_mean > first), ``success_progress`` (last success_rate >= 0.9, the
chapter's pass mark), ``value_loss_trend`` (last value_loss < first), ``approx_kl_range`` (median
< 0.03; spikes above it are counted, not judged), ``clip_fraction_range`` (median in [0.1, 0.3]),
``entropy_trend`` (entropy_loss rose toward 0 and is still below it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from fetchrl import metrics
from fetchrl.analysis.tbreader import Series, read_scalars
from fetchrl.artifacts import RunPaths, json_safe, write_json

Severity = Literal["warning", "ok", "info"]

# ---------------------------------------------------------------- thresholds (see module docstring)
MIN_POINTS: Final = 3
"""Fewest points of a series a trend or "consistently" test judges; fewer gives ``info``."""
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
EARLY_FRACTION: Final = 0.1
SUCCESS_PASS: Final = 0.9


# ---------------------------------------------------------------- results
@dataclass(frozen=True)
class Finding:
    """The outcome of one check on one logged series."""

    id: str
    """Stable name of the check, e.g. ``approx_kl_high``."""
    signal: str
    """The TensorBoard tag checked (``metrics.*``)."""
    severity: Severity
    """``warning`` (a warning sign of the chapter fired), ``ok`` or ``info`` (never fails a run)."""
    evidence: str
    """One line: the observed numbers and the test they were put to."""
    observed: dict[str, float] = field(default_factory=dict)
    """The numbers behind ``evidence`` (may hold NaN/inf; written to JSON as null)."""
    likely_problem: str = ""
    """The chapter's "Likely Problem" (warnings only)."""
    fix: str = ""
    """The chapter's "Fix" (warnings only)."""


@dataclass
class Diagnosis:
    """All findings for one run directory."""

    logdir: str
    findings: list[Finding]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def healthy(self) -> bool:
        """True when no warning sign fired (``ok`` and ``info`` findings never fail a run)."""
        return not self.warnings

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"logdir", "healthy", "warnings": [ids], "findings": [...]}``; NaN/inf -> null."""
        return json_safe(
            {
                "logdir": self.logdir,
                "healthy": self.healthy,
                "warnings": [f.id for f in self.warnings],
                "findings": [asdict(f) for f in self.findings],
            }
        )

    def to_json(self, path: Path) -> None:
        """Write :meth:`to_dict` atomically (e.g. to ``RunPaths.diagnosis_json``)."""
        write_json(path, self.to_dict())

    def _rows(self) -> list[list[str]]:
        return [
            [f.signal, f.id, f.evidence, f.severity.upper() if f.severity == "warning" else f.severity,
             f.likely_problem or "—", f.fix or "—"]
            for f in self.findings
        ]

    def summary(self) -> str:
        if self.healthy:
            return "healthy: no warning sign of the chapter's table fired"
        return f"{len(self.warnings)} warning sign(s): " + ", ".join(f.id for f in self.warnings)

    def to_markdown(self) -> str:
        """A Markdown table (signal, check, observed, verdict, likely problem, fix) and a verdict line."""
        header = ["signal", "check", "observed", "verdict", "likely problem", "fix"]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for row in self._rows():
            cells = [c.replace("|", "\\|") for c in row]
            cells[0], cells[1] = f"`{cells[0]}`", f"`{cells[1]}`"
            if row[3] == "WARNING":
                cells[3] = "**WARNING**"
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"**Diagnosis: {self.summary()}.**"]
        return "\n".join(lines)

    def print_table(self, console: Any = None) -> None:
        """Print the findings as a rich table, then the verdict line."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        table = Table(title=f"Training diagnosis — {self.logdir}", show_lines=True)
        table.add_column("signal / check", no_wrap=True)
        table.add_column("observed", ratio=3)
        table.add_column("verdict", no_wrap=True)
        table.add_column("likely problem → fix", ratio=2)
        styles = {"WARNING": "bold red", "ok": "green", "info": "yellow"}
        for signal, check, observed, verdict, problem, fix in self._rows():
            remedy = f"{problem} → {fix}" if problem != "—" else "—"
            table.add_row(f"{signal}\n[dim]{check}[/]", observed, f"[{styles[verdict]}]{verdict}[/]", remedy)
        console.print(table)
        colour = "green" if self.healthy else "red"
        console.print(f"[bold {colour}]{self.summary()}[/]")


# ---------------------------------------------------------------- helpers
def _g(x: float) -> str:
    return f"{x:.3g}"


def _as_upper(values: np.ndarray) -> np.ndarray:
    """NaN -> +inf, so a non-finite point counts as "above" any threshold."""
    return np.where(np.isnan(values), np.inf, values)


def _too_short(fid: str, tag: str, s: Series, need: int = MIN_POINTS) -> Finding | None:
    n = int(s.values.size)
    if n >= need:
        return None
    return Finding(fid, tag, "info", f"only {n} point(s) logged; need >= {need} to judge", {"n": float(n)})


def _consistently_above(fid: str, tag: str, s: Series, threshold: float, problem: str, fix: str) -> Finding:
    """More than half of all points AND the median of the second half are above ``threshold``."""
    short = _too_short(fid, tag, s)
    if short:
        return short
    v = _as_upper(s.values)
    frac = float(np.mean(v > threshold))
    last_half_median = float(np.median(v[v.size // 2:]))
    fired = frac > 0.5 and last_half_median > threshold
    observed = {"n": float(v.size), "fraction_above": frac, "median": float(np.median(v)),
                "last_half_median": last_half_median, "max": float(np.max(v)), "threshold": threshold}
    evidence = (f"{int(round(frac * v.size))}/{v.size} updates > {_g(threshold)}; median {_g(observed['median'])}, "
                f"2nd-half median {_g(last_half_median)}")
    if fired:
        return Finding(fid, tag, "warning", evidence, observed, problem, fix)
    return Finding(fid, tag, "ok", evidence, observed)


# ---------------------------------------------------------------- the chapter's warning signs
def check_flat_reward(s: Series) -> Finding:
    fid, tag = "flat_reward", metrics.EP_REW_MEAN
    short = _too_short(fid, tag, s)
    if short:
        return short
    v = s.values
    tol = max(FLAT_REL_TOL * abs(float(v[0])), FLAT_ABS_TOL)
    dev = float(np.max(np.abs(v - v[0]))) if np.all(np.isfinite(v)) else math.inf
    observed = {"first": float(v[0]), "last": float(v[-1]), "max_deviation": dev, "tolerance": tol,
                "n": float(v.size)}
    evidence = f"first {_g(v[0])}, last {_g(v[-1])}, max move {_g(dev)} (flat if <= {_g(tol)})"
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
                       {"first_nonfinite_step": float(step)}, problem, fix)
    base = max(float(v[0]), VALUE_LOSS_BASE_FLOOR)
    peak = float(np.max(v))
    growth = peak / base
    observed = {"first": float(v[0]), "max": peak, "last": float(v[-1]), "growth": growth,
                "ceiling": VALUE_LOSS_CEILING}
    evidence = (f"first {_g(v[0])}, max {_g(peak)} ({_g(growth)}x); "
                f"explodes if >= {_g(VALUE_LOSS_GROWTH)}x or > {_g(VALUE_LOSS_CEILING)}")
    if growth >= VALUE_LOSS_GROWTH or peak > VALUE_LOSS_CEILING:
        return Finding(fid, tag, "warning", evidence, observed, problem, fix)
    return Finding(fid, tag, "ok", evidence, observed)


def check_approx_kl_high(s: Series) -> Finding:
    return _consistently_above("approx_kl_high", metrics.APPROX_KL, s, APPROX_KL_HIGH,
                               "Learning rate too high", "Reduce learning_rate to 1e-4")


def check_clip_fraction_saturated(s: Series) -> Finding:
    return _consistently_above("clip_fraction_saturated", metrics.CLIP_FRACTION, s, CLIP_FRACTION_SATURATED,
                               "Updates too aggressive", "Reduce learning_rate or clip_range")


def check_entropy_collapse(s: Series) -> Finding:
    fid, tag = "entropy_collapse", metrics.ENTROPY_LOSS
    v = s.values
    n_early = max(1, math.ceil(EARLY_FRACTION * v.size))
    early = v[:n_early]
    finite = early[np.isfinite(early)]
    if finite.size == 0:
        return Finding(fid, tag, "info", f"no finite entropy_loss among the first {n_early} update(s)")
    peak = float(np.max(finite))
    observed = {"first": float(v[0]), "early_max": peak, "n_early": float(n_early), "last": float(v[-1])}
    evidence = f"max of first {n_early}/{v.size} updates {_g(peak)} (collapsed if >= {-ENTROPY_ZERO_TOL})"
    if peak >= -ENTROPY_ZERO_TOL:
        return Finding(fid, tag, "warning", evidence, observed, "Policy collapsed", "Increase ent_coef")
    return Finding(fid, tag, "ok", evidence, observed)


# ---------------------------------------------------------------- the chapter's healthy ranges (info only)
def _trend(fid: str, tag: str, s: Series, want: str, good: Callable[[float, float], bool], note: str) -> Finding:
    """``ok`` if ``good(first, last)``, else ``info`` with ``note``."""
    short = _too_short(fid, tag, s, need=2)
    if short:
        return short
    first, last = float(s.values[0]), float(s.values[-1])
    evidence = f"{_g(first)} -> {_g(last)} (healthy: {want})"
    ok = good(first, last)
    return Finding(fid, tag, "ok" if ok else "info", evidence if ok else f"{evidence}; {note}",
                   {"first": first, "last": last})


def check_reward_trend(s: Series) -> Finding:
    return _trend("reward_trend", metrics.EP_REW_MEAN, s, "steadily increasing",
                  lambda a, b: b > a, "not increasing (yet)")


def check_success_progress(s: Series) -> Finding:
    fid, tag = "success_progress", metrics.SUCCESS_RATE
    v = s.values
    first, last, best = float(v[0]), float(v[-1]), float(np.nanmax(v)) if np.isfinite(v).any() else math.nan
    evidence = f"{_g(first)} -> {_g(last)}, max {_g(best)} (healthy: 0 -> 1)"
    observed = {"first": first, "max": best, "last": last}
    if last >= SUCCESS_PASS:
        return Finding(fid, tag, "ok", evidence, observed)
    return Finding(fid, tag, "info", f"{evidence}; below {SUCCESS_PASS} so far (the chapter: 5-10 % "
                   "until 50k steps, 95-100 % by 200k-500k)", observed)


def check_value_loss_trend(s: Series) -> Finding:
    return _trend("value_loss_trend", metrics.VALUE_LOSS, s, "high initially, then decreasing",
                  lambda a, b: b < a, "has not decreased")


def check_approx_kl_range(s: Series) -> Finding:
    fid, tag = "approx_kl_range", metrics.APPROX_KL
    v = _as_upper(s.values)
    med = float(np.median(v))
    spikes = int(np.sum(v >= APPROX_KL_HEALTHY))
    observed = {"median": med, "max": float(np.max(v)), "n_spikes": float(spikes), "n": float(v.size)}
    evidence = (f"median {_g(med)}, max {_g(observed['max'])}, {spikes}/{v.size} >= {APPROX_KL_HEALTHY} "
                f"(healthy: < {APPROX_KL_HEALTHY}, spikes OK)")
    return Finding(fid, tag, "ok" if med < APPROX_KL_HEALTHY else "info", evidence, observed)


def check_clip_fraction_range(s: Series) -> Finding:
    fid, tag = "clip_fraction_range", metrics.CLIP_FRACTION
    lo, hi = CLIP_FRACTION_HEALTHY
    v = _as_upper(s.values)
    med = float(np.median(v))
    evidence = f"median {_g(med)}, range {_g(np.min(v))}-{_g(np.max(v))} (healthy: {lo}-{hi})"
    observed = {"median": med, "min": float(np.min(v)), "max": float(np.max(v))}
    if lo <= med <= hi:
        return Finding(fid, tag, "ok", evidence, observed)
    note = ("below the band: the policy moves little per update (common early on)" if med < lo
            else "above the band: many samples clipped")
    return Finding(fid, tag, "info", f"{evidence}; {note}", observed)


def check_entropy_trend(s: Series) -> Finding:
    return _trend("entropy_trend", metrics.ENTROPY_LOSS, s, "slowly moves toward 0",
                  lambda a, b: a < b < 0, "not moving toward 0 from below")


#: Every check, in the chapter's table order; each reads one tag.
CHECKS: Final[tuple[tuple[str, Callable[[Series], Finding]], ...]] = (
    (metrics.EP_REW_MEAN, check_flat_reward),
    (metrics.EP_REW_MEAN, check_reward_trend),
    (metrics.SUCCESS_RATE, check_success_progress),
    (metrics.VALUE_LOSS, check_value_loss_explodes),
    (metrics.VALUE_LOSS, check_value_loss_trend),
    (metrics.APPROX_KL, check_approx_kl_high),
    (metrics.APPROX_KL, check_approx_kl_range),
    (metrics.CLIP_FRACTION, check_clip_fraction_saturated),
    (metrics.CLIP_FRACTION, check_clip_fraction_range),
    (metrics.ENTROPY_LOSS, check_entropy_collapse),
    (metrics.ENTROPY_LOSS, check_entropy_trend),
)


# ---------------------------------------------------------------- entry points
def diagnose_scalars(scalars: dict[str, Series], logdir: str = "<memory>") -> Diagnosis:
    """Run every check on already-read series (``{tag: Series}`` holding ``metrics.CHAPTER_CURVES``)."""
    return Diagnosis(logdir=logdir, findings=[check(scalars[tag]) for tag, check in CHECKS])


def diagnose(logdir: Path) -> Diagnosis:
    """Read the chapter's six curves from ``logdir`` and run every check.

    Raises:
        FetchRLError (exit code 2): missing directory, no event files, or a missing tag.
    """
    return diagnose_scalars(read_scalars(Path(logdir), metrics.CHAPTER_CURVES), logdir=str(logdir))


def diagnose_run(paths: RunPaths) -> Diagnosis:
    """Diagnose ``paths.tb_dir`` and write ``paths.diagnosis_json`` (for ``report`` and ``all``)."""
    result = diagnose(paths.tb_dir)
    result.to_json(paths.diagnosis_json)
    return result


def run_diagnose_cli(logdir: Path, as_json: bool) -> int:
    """The ``diagnose`` command: print the table (or JSON) and return the exit code.

    Returns 0 when no warning sign fired, 1 when one did. Bad input raises FetchRLError (exit 2).
    """
    result = diagnose(logdir)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        result.print_table()
    return 0 if result.healthy else 1
