"""What every algorithm's diagnosis is made of: findings, their verdicts, and the small helpers the rules share.

A rule (``fetchrl.analysis.rules.<algo>``) is a pure function of logged series returning one
:class:`Finding`; :class:`Diagnosis` collects them for one run. The verdict vocabulary is the same
for every algorithm: ``warning`` (a warning sign fired: the run is unhealthy), ``outside_range`` (a
healthy band left: information), ``ok``, ``info`` (nothing seen yet, or too early to judge).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final, Literal, cast

import numpy as np
from rich.console import Console

from fetchrl.analysis.tbreader import Series
from fetchrl.artifacts import JSONObject, json_safe, write_json
from fetchrl.console import make_console, new_table

Severity = Literal["warning", "outside_range", "ok", "info"]

#: How each severity reads in every table (terminal, Markdown, HTML) and in the plots' legends.
VERDICT: Final[dict[str, str]] = {"warning": "WARNING", "outside_range": "outside range", "ok": "ok",
                                  "info": "info"}

MIN_POINTS: Final = 3
"""Fewest points of a series a trend or "consistently" test judges; fewer gives ``info``."""


# ---------------------------------------------------------------- results
@dataclass(frozen=True)
class Finding:
    """The outcome of one check on one logged series."""

    id: str
    """Stable name of the check, e.g. ``approx_kl_high``."""
    signal: str
    """The TensorBoard tag checked (``metrics.*``)."""
    severity: Severity
    """``warning`` (a warning sign of the chapter fired), ``outside_range`` (a healthy band left: informational),
    ``ok`` or ``info``; only ``warning`` fails a run."""
    evidence: str
    """One line: the observed numbers and the test they were put to."""
    observed: dict[str, float] = field(default_factory=dict)
    """The numbers behind ``evidence`` (may hold NaN/inf; written to JSON as null)."""
    likely_problem: str = ""
    """The chapter's "Likely Problem" (warnings only)."""
    fix: str = ""
    """The chapter's "Fix" (warnings only)."""
    at_step: int | None = None
    """Environment step the finding dates from (the series left its band, collapsed, exploded); None if none."""

    @property
    def verdict(self) -> str:
        """How the severity reads in tables and legends (``VERDICT``)."""
        return VERDICT[self.severity]


@dataclass
class Diagnosis:
    """All findings for one run directory."""

    logdir: str
    findings: list[Finding]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def outside_range(self) -> list[Finding]:
        """Healthy bands the run left (informational)."""
        return [f for f in self.findings if f.severity == "outside_range"]

    @property
    def healthy(self) -> bool:
        """True when no warning sign fired (``outside_range``, ``ok`` and ``info`` never fail a run)."""
        return not self.warnings

    def to_dict(self) -> JSONObject:
        """JSON-ready: ``{"logdir", "healthy", "warnings": [ids], "outside_range": [ids], "summary",
        "findings": [...]}``; NaN/inf -> null."""
        return cast(JSONObject, json_safe(
            {
                "logdir": self.logdir,
                "healthy": self.healthy,
                "warnings": [f.id for f in self.warnings],
                "outside_range": [f.id for f in self.outside_range],
                "summary": self.summary(),
                "findings": [asdict(f) for f in self.findings],
            }
        ))

    def to_json(self, path: Path) -> None:
        """Write :meth:`to_dict` atomically (e.g. to ``RunPaths.diagnosis_json``)."""
        write_json(path, self.to_dict())

    def _rows(self) -> list[list[str]]:
        return [[f.signal, f.id, f.evidence, f.verdict, f.likely_problem or "—", f.fix or "—"]
                for f in self.findings]

    def summary(self) -> str:
        """One line: the warning signs (or "healthy"), then the healthy bands left and from which step."""
        if self.healthy:
            text = "healthy: no warning sign of the chapter's table fired"
        else:
            text = f"{len(self.warnings)} warning sign(s): " + ", ".join(f.id for f in self.warnings)
        if self.outside_range:
            left = ", ".join(f.id + (f" from step {f.at_step:,}" if f.at_step is not None else "")
                             for f in self.outside_range)
            text += f"; {VERDICT['outside_range']} (information, not a warning sign): {left}"
        return text

    def to_markdown(self) -> str:
        """A Markdown table (signal, check, observed, verdict, likely problem, fix) and a verdict line."""
        header = ["signal", "check", "observed", "verdict", "likely problem", "fix"]
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for row in self._rows():
            cells = [c.replace("|", "\\|") for c in row]
            cells[0], cells[1] = f"`{cells[0]}`", f"`{cells[1]}`"
            if row[3] == VERDICT["warning"]:
                cells[3] = f"**{cells[3]}**"
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"**Diagnosis: {self.summary()}.**"]
        return "\n".join(lines)

    def print_table(self, console: Console | None = None) -> None:
        """Print the findings as a rich table, then the verdict line."""
        from rich.markup import escape

        console = console or make_console()
        table = new_table(f"Training diagnosis — {self.logdir}",
                          ["signal / check", "observed", "verdict", "likely problem → fix"])
        table.show_lines = True
        styles = {VERDICT["warning"]: "bold red", VERDICT["outside_range"]: "magenta", VERDICT["ok"]: "green",
                  VERDICT["info"]: "yellow"}
        for signal, check, observed, verdict, problem, fix in self._rows():
            remedy = f"{problem} → {fix}" if problem != "—" else "—"
            table.add_row(f"{signal}\n[dim]{check}[/]", escape(observed), f"[{styles[verdict]}]{verdict}[/]",
                          escape(remedy))
        console.print(table)
        colour = "green" if self.healthy else "red"
        console.print(f"[bold {colour}]{escape(self.summary())}[/]")


# ---------------------------------------------------------------- helpers
def fmt(x: float) -> str:
    return f"{x:.3g}"


def as_upper(values: np.ndarray) -> np.ndarray:
    """NaN -> +inf, so a non-finite point counts as "above" any threshold."""
    return np.where(np.isnan(values), np.inf, values)


def mostly_from(flags: np.ndarray) -> int | None:
    """Where a series went (and stayed mostly) over to ``flags``: the start of its final stretch.

    flags: [n] bool. Returns the index ``i`` at which ``flags[i:]`` holds the most more True than
    False points (the earliest such ``i``), or None when no final stretch is mostly True. Scoring +1
    per True and -1 per False, that is the start of the maximal suffix sum: an isolated early True
    does not pull it back, a True run at the end does.
    Examples: ``[F, T, F, T, T]`` -> 1 (3 True to 1 False); ``[T, F, F]`` -> None; ``[F, F, T]`` -> 2.
    """
    if flags.size == 0:
        return None
    net = np.cumsum(np.where(flags[::-1], 1, -1))[::-1]  # [n]: True minus False in flags[i:]
    i = int(np.argmax(net))
    return i if net[i] > 0 else None


def step_at(s: Series, i: int | None) -> int | None:
    return None if i is None else int(s.steps[i])


def too_short(fid: str, tag: str, s: Series, need: int = MIN_POINTS) -> Finding | None:
    n = int(s.values.size)
    if n >= need:
        return None
    return Finding(fid, tag, "info", f"only {n} point(s) logged; need >= {need} to judge", {"n": float(n)})


def consistently_above(fid: str, tag: str, s: Series, threshold: float, problem: str, fix: str) -> Finding:
    """More than half of all points AND the median of the second half are above ``threshold``."""
    short = too_short(fid, tag, s)
    if short:
        return short
    v = as_upper(s.values)
    frac = float(np.mean(v > threshold))
    last_half_median = float(np.median(v[v.size // 2:]))
    fired = frac > 0.5 and last_half_median > threshold
    observed = {"n": float(v.size), "fraction_above": frac, "median": float(np.median(v)),
                "last_half_median": last_half_median, "max": float(np.max(v)), "threshold": threshold}
    evidence = (f"{int(round(frac * v.size))}/{v.size} updates > {fmt(threshold)}; median {fmt(observed['median'])}, "
                f"2nd-half median {fmt(last_half_median)}")
    if fired:
        at = step_at(s, mostly_from(v > threshold))
        if at is not None:
            evidence += f"; mostly above from step {at:,}"
        return Finding(fid, tag, "warning", evidence, observed, problem, fix, at_step=at)
    return Finding(fid, tag, "ok", evidence, observed)


def value_at(series: Series, steps: np.ndarray) -> np.ndarray:
    """[n] float64: the latest value of ``series`` logged at or before each of ``steps`` ([n]; NaN before
    its first point), e.g. the success rate an update's step had reached."""
    idx = np.searchsorted(series.steps, steps, side="right") - 1
    out = np.where(idx >= 0, series.values[np.clip(idx, 0, None)], np.nan)
    return np.asarray(out, dtype=np.float64)


def trend(fid: str, tag: str, s: Series, want: str, good: Callable[[float, float], bool], note: str) -> Finding:
    """``ok`` if ``good(first, last)``, else ``info`` with ``note``."""
    short = too_short(fid, tag, s, need=2)
    if short:
        return short
    first, last = float(s.values[0]), float(s.values[-1])
    evidence = f"{fmt(first)} -> {fmt(last)} (healthy: {want})"
    ok = good(first, last)
    return Finding(fid, tag, "ok" if ok else "info", evidence if ok else f"{evidence}; {note}",
                   {"first": first, "last": last})


