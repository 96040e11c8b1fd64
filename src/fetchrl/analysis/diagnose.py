"""Read a run's TensorBoard logs and check them against its algorithm's rules.

Rules are registered per algorithm in :data:`RULES` (``"ppo"``: chapter 2's tables, in
:mod:`fetchrl.analysis.rules.ppo`; ``"sac"``: chapter 3 and chapter 4's no-HER arm, in
:mod:`fetchrl.analysis.rules.sac`; ``"sac_her"``: chapter 4's HER arm, in :mod:`fetchrl.analysis.rules.her`;
their docstrings give every threshold and why). ``algo`` defaults to ``"ppo"`` everywhere, so chapter
2's commands, JSON and exit codes are unchanged. A run is *healthy* when no rule gives a ``warning``;
``outside_range``, ``ok`` and ``info`` never fail it (:mod:`fetchrl.analysis.findings`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fetchrl import metrics
from fetchrl.analysis.findings import VERDICT, Diagnosis, Finding, Severity, mostly_from
from fetchrl.analysis.rules import her, ppo, sac
from fetchrl.analysis.rules.ppo import (
    APPROX_KL_BAND,
    APPROX_KL_HEALTHY,
    APPROX_KL_HIGH,
    CHECKS,
    CLIP_FRACTION_BAND,
    CLIP_FRACTION_SATURATED,
    COLLAPSE_STD_FRACTION,
    COLLAPSE_SUCCESS_BELOW,
    HEALTHY_BANDS,
    OPTIONAL_TAGS,
    HealthyBand,
    band_phrase,
    check_approx_kl_high,
    check_approx_kl_range,
    check_band,
    check_clip_fraction_range,
    check_clip_fraction_saturated,
    check_entropy_collapse,
    check_entropy_trend,
    check_flat_reward,
    check_reward_trend,
    check_success_progress,
    check_value_loss_explodes,
    check_value_loss_trend,
    std_start,
)
from fetchrl.analysis.tbreader import Series, read_scalars
from fetchrl.artifacts import RunPaths
from fetchrl.errors import FetchRLError

# Chapter 2's names, kept importable from here (tests, plots and workflows use them).
__all__ = [
    "APPROX_KL_BAND", "APPROX_KL_HEALTHY", "APPROX_KL_HIGH", "CHECKS", "CLIP_FRACTION_BAND",
    "CLIP_FRACTION_SATURATED", "COLLAPSE_STD_FRACTION", "COLLAPSE_SUCCESS_BELOW", "HEALTHY_BANDS",
    "OPTIONAL_TAGS", "RULES", "VERDICT", "Diagnosis", "Finding", "HealthyBand", "RuleSet", "Severity",
    "band_phrase", "check_approx_kl_high", "check_approx_kl_range", "check_band", "check_clip_fraction_range",
    "check_clip_fraction_saturated", "check_entropy_collapse", "check_entropy_trend", "check_flat_reward",
    "check_reward_trend", "check_success_progress", "check_value_loss_explodes", "check_value_loss_trend",
    "diagnose", "diagnose_run", "diagnose_scalars", "mostly_from", "read_run", "run_diagnose_cli", "std_start",
]


@dataclass(frozen=True)
class RuleSet:
    """One algorithm's rules: which tags a run must have, which it may have, and the checks."""

    required: tuple[str, ...]
    """Tags every run of the algorithm logs; a missing one is bad input (exit 2)."""
    optional: tuple[str, ...]
    """Tags a check uses when logged and does without otherwise (passed as None)."""
    checks: tuple[tuple[tuple[str, ...], Callable[..., Finding]], ...]
    """``((tags in argument order), check)`` in report order."""


#: The registry: rule-set name (an algorithm's, or a chapter arm's ``ArtifactNames.rules``) -> its rules.
#: Chapter 4's "sac_her" is SAC's rules (re-tuned for sparse goals) plus HER's; "sac_sparse", its control arm's,
#: SAC's rules re-tuned the same way, quoting chapter 4's results without HER.
RULES: Final[dict[str, RuleSet]] = {
    "ppo": RuleSet(metrics.CHAPTER_CURVES, ppo.OPTIONAL_TAGS, ppo.CHECKS),
    "sac": RuleSet(metrics.SAC_CURVES, sac.OPTIONAL_TAGS, sac.CHECKS),
    "sac_her": RuleSet(metrics.SAC_CURVES, her.OPTIONAL_TAGS, her.CHECKS),
    "sac_sparse": RuleSet(metrics.SAC_CURVES, sac.OPTIONAL_TAGS, her.CONTROL_CHECKS),
}


def rules_for(algo: str) -> RuleSet:
    """The registered rules of ``algo``; an unknown name is bad input (exit 2)."""
    try:
        return RULES[algo]
    except KeyError:
        raise FetchRLError(f"no diagnose rules for algorithm {algo!r} (known: {', '.join(RULES)})") from None


# ---------------------------------------------------------------- entry points
def diagnose_scalars(scalars: Mapping[str, Series], logdir: str = "<memory>", algo: str = "ppo") -> Diagnosis:
    """Run every check of ``algo`` on already-read series (``{tag: Series}`` holding the rules' required
    tags, and their optional tags when logged)."""
    rules = rules_for(algo)
    findings = [check(*(scalars.get(t) if t in rules.optional else scalars[t] for t in tags))
                for tags, check in rules.checks]
    return Diagnosis(logdir=logdir, findings=findings)


def read_run(logdir: Path, algo: str = "ppo") -> dict[str, Series]:
    """``algo``'s required curves of ``logdir``, and its optional ones when logged (one read of the event files).

    Raises:
        FetchRLError (exit code 2): missing directory, no event files, or a missing required curve.
    """
    rules = rules_for(algo)
    found = read_scalars(Path(logdir), None)
    if any(tag not in found for tag in rules.required):
        read_scalars(Path(logdir), rules.required)  # raises, naming the missing tag(s)
    return {tag: found[tag] for tag in (*rules.required, *rules.optional) if tag in found}


def diagnose(logdir: Path, algo: str = "ppo") -> Diagnosis:
    """Read ``algo``'s curves from ``logdir`` and run every one of its checks.

    Raises:
        FetchRLError (exit code 2): missing directory, no event files, a missing tag, or an unknown algo.
    """
    return diagnose_scalars(read_run(Path(logdir), algo), logdir=str(logdir), algo=algo)


def diagnose_run(paths: RunPaths, algo: str = "ppo") -> Diagnosis:
    """Diagnose ``paths.tb_dir`` and write ``paths.diagnosis_json`` (for ``report`` and ``all``)."""
    result = diagnose(paths.tb_dir, algo)
    result.to_json(paths.diagnosis_json)
    return result


def run_diagnose_cli(logdir: Path, as_json: bool, algo: str = "ppo") -> int:
    """The ``diagnose`` command: print the table (or JSON) and return the exit code.

    Returns 0 when no warning sign fired (``outside_range`` findings are information), 1 when one did.
    Bad input raises FetchRLError (exit 2).
    """
    result = diagnose(logdir, algo)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        result.print_table()
    return 0 if result.healthy else 1
