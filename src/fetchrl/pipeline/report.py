"""PASS/FAIL against the chapter's criteria; reads artifacts only (eval JSONs, meta, diagnosis)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fetchrl.artifacts import ArtifactNames, EvalResult, RunPaths, atomic_write_text
from fetchrl.config import Criterion
from fetchrl.tasks import envs


@dataclass(frozen=True)
class CriterionResult:
    name: str
    key: str
    measured: float
    op: str
    threshold: float
    passed: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


#: Chapter 2's criteria (section 3.4): the default of callers that do not pass their chapter's
#: (``fetchrl.chapters.ch02`` states the same; tests/test_chapters.py pins them equal).
CHAPTER_CRITERIA: tuple[Criterion, ...] = (
    Criterion("success rate", "success_rate", ">", 0.90),
    Criterion("mean return", "return_mean", ">", -10.0),
    Criterion("final distance (m)", "final_distance_mean", "<", 0.02),
)

#: Mean return of a motionless arm (the zero-action baseline) on FetchReachDense: about -7.
ZERO_ARM_RETURN = -7.0


def baseline_note(criteria: Sequence[Criterion] = CHAPTER_CRITERIA) -> str:
    """Why the report shows baselines, worded from the chapter's own return criterion (the markdown and HTML
    reports use these exact words; chapter 2's: "... about -7 on FetchReachDense, above the -10 threshold.")."""
    returns = [c for c in criteria if c.metric == "return_mean"]
    if not returns:
        middle = ""
    elif returns[0].passes(ZERO_ARM_RETURN):
        middle = (f"A criterion they pass does not, on its own, show that anything was learned: a motionless arm "
                  f"already scores a mean return of about {ZERO_ARM_RETURN:g} on FetchReachDense, above the "
                  f"{returns[0].threshold:g} threshold. ")
    else:
        middle = (f"A motionless arm scores a mean return of about {ZERO_ARM_RETURN:g} on FetchReachDense, not far "
                  f"from the {returns[0].threshold:g} threshold: the return criterion alone separates little. ")
    return ("The random and zero-action columns are scored on the same episode seeds as the trained policy. "
            + middle
            + "Success rate and final distance are the criteria that separate a trained policy from these baselines.")


def distance_note(env_id: str) -> str:
    """What "final distance" is on a task with an object (Push: the object's distance to the goal, not the
    gripper's); "" on Reach, where it is the gripper's, as chapters 2 and 3 state."""
    if not envs.has_object(env_id):
        return ""
    return (f"Final distance on {env_id} is the {envs.goal_distance_name(env_id)} distance at the episode's end: "
            "achieved_goal is the object's position, so the object, not the gripper, must end near the goal.")


#: Chapter 2's note (:func:`baseline_note` of its criteria).
BASELINE_NOTE = baseline_note()


def chapter_heading(names: ArtifactNames) -> tuple[str, str]:
    """``("Chapter 3", "SAC")`` for chapter 3's names: how the report titles name the chapter and algorithm
    (ch04: ``"SAC + HER"`` or ``"SAC without HER"``)."""
    number = names.chapter.removeprefix("ch").lstrip("0")
    return (f"Chapter {number}" if number.isdigit() else names.chapter), names.title or names.algo.upper()


def check_criteria(result: EvalResult, criteria: Sequence[Criterion] = CHAPTER_CRITERIA) -> list[CriterionResult]:
    """Each of a chapter's criteria on an eval aggregate, in the chapter's order."""
    out = []
    for c in criteria:
        value = float(result.aggregate[c.metric])
        out.append(CriterionResult(c.name, c.metric, value, c.op, c.threshold, c.passes(value)))
    return out


def overall_pass(rows: list[CriterionResult]) -> bool:
    return all(r.passed for r in rows)


def _fmt(key: str, value: float) -> str:
    if key == "success_rate":
        return f"{value:.1%}"
    if key == "final_distance_mean":
        return f"{value:.4f}"
    return f"{value:.2f}"


def criteria_table(result: EvalResult, baselines: list[EvalResult] | None = None, *,
                   criteria: Sequence[Criterion] = CHAPTER_CRITERIA) -> tuple[list[str], list[list[str]]]:
    """Header and rows: criterion, threshold, trained, verdict, then one column per baseline.

    A column with a baseline's PASS next to it shows which criteria do not discriminate.
    """
    baselines = baselines or []
    header = ["criterion", "threshold", "trained", "verdict"] + [f"{b.policy} policy" for b in baselines]
    rows = []
    base_rows = [check_criteria(b, criteria) for b in baselines]
    for i, r in enumerate(check_criteria(result, criteria)):
        row = [r.name, f"{r.op} {_fmt(r.key, r.threshold)}", _fmt(r.key, r.measured), r.verdict]
        for br in base_rows:
            b = br[i]
            row.append(f"{_fmt(b.key, b.measured)} ({b.verdict})")
        rows.append(row)
    return header, rows


def render_markdown(result: EvalResult, baselines: list[EvalResult] | None = None,
                    diagnosis_md: str = "", *, criteria: Sequence[Criterion] = CHAPTER_CRITERIA,
                    title: str = "Chapter 2 report: PPO") -> str:
    header, rows = criteria_table(result, baselines, criteria=criteria)
    verdict = "PASS" if overall_pass(check_criteria(result, criteria)) else "FAIL"
    lines = [
        f"# {title} on {result.env_id}",
        "",
        f"Checkpoint: `{result.checkpoint}` — {result.n_episodes} deterministic episodes "
        f"(reset seeds {result.seeds[0]}..{result.seeds[-1]}).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
        f"**Overall: {verdict}**",
        "",
    ]
    if distance_note(result.env_id):
        lines += [distance_note(result.env_id), ""]
    if baselines:
        lines += [baseline_note(criteria), ""]
    if diagnosis_md:
        lines += ["## Training diagnosis", "", diagnosis_md, ""]
    return "\n".join(lines)


def write_report(paths: RunPaths, result: EvalResult, baselines: list[EvalResult] | None = None,
                 diagnosis_md: str = "", *, criteria: Sequence[Criterion] = CHAPTER_CRITERIA,
                 title: str = "Chapter 2 report: PPO") -> str:
    text = render_markdown(result, baselines, diagnosis_md, criteria=criteria, title=title)
    atomic_write_text(paths.report_md, text)
    return text


def print_criteria(result: EvalResult, baselines: list[EvalResult] | None = None, title: str = "", *,
                   criteria: Sequence[Criterion] = CHAPTER_CRITERIA) -> bool:
    """Print the criteria table (rich) and return the overall verdict."""
    from rich.table import Table

    from fetchrl.console import make_console

    header, rows = criteria_table(result, baselines, criteria=criteria)
    table = Table(title=title or f"Chapter 2 criteria — {result.env_id}, {result.n_episodes} episodes")
    for h in header:
        table.add_column(h)
    for r in rows:
        style = "green" if r[3] == "PASS" else "red"
        table.add_row(*r[:3], f"[{style}]{r[3]}[/{style}]", *r[4:])
    ok = overall_pass(check_criteria(result, criteria))
    console = make_console()  # off a terminal: wide, nothing cut or wrapped
    console.print(table)
    console.print(f"Overall: [bold {'green' if ok else 'red'}]{'PASS' if ok else 'FAIL'}[/]")
    return ok
