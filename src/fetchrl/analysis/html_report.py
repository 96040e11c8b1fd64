"""``results/ch02_report_seedN.html`` (ch04: ``results/ch04_sac_her_fetchpush-v4_seed0_report.html``, one per
arm and task): the whole run on one self-contained page.

The page reads artifacts only (eval results, metadata, diagnosis, the curves PNG, the GIF) and
embeds everything: inline CSS, images as base64 ``data:`` URIs, no script, font or link to fetch,
and a Content-Security-Policy that forbids the browser from loading anything else. It opens from
disk with no network. Every string that comes from data is HTML-escaped.

The criteria table is :func:`fetchrl.pipeline.report.criteria_table`, so the numbers are the CLI's.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from fetchrl import __version__
from fetchrl.analysis.diagnose import VERDICT
from fetchrl.artifacts import (
    AGGREGATE_FIELDS,
    EvalResult,
    JSONObject,
    RunPaths,
    TrainMeta,
    atomic_write_text,
    now_iso,
)
from fetchrl.config import Criterion
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.report import (
    CHAPTER_CRITERIA,
    baseline_note,
    chapter_heading,
    check_criteria,
    criteria_table,
    distance_note,
    overall_pass,
)
from fetchrl.tasks.envs import goal_distance_name

#: Image types the page embeds, by file suffix (SVG is excluded: it can carry scripts and links).
IMAGE_MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
              ".webp": "image/webp"}
#: Finding fields shown first, in this order (``fetchrl.analysis.diagnose.Finding``'s); any other field follows.
FINDING_FIRST = ("id", "signal", "severity", "evidence", "likely_problem", "fix", "at_step")

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif;
       margin: 2rem auto; max-width: 68rem; padding: 0 1rem; color: #1d2329; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #d9dee3; padding-bottom: .2rem; }
.sub { color: #5b6670; margin-top: 0; }
.badge { display: inline-block; padding: .1rem .6rem; border-radius: .4rem; color: #fff; font-weight: 700;
         vertical-align: middle; font-size: 1.1rem; }
.badge.pass, td.pass { background: #1f8a3b; color: #fff; }
.badge.fail, td.fail { background: #c0392b; color: #fff; }
td.pass, td.fail { font-weight: 700; text-align: center; }
table { border-collapse: collapse; margin: .6rem 0; font-size: .92rem; }
th, td { border: 1px solid #d9dee3; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f1f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.sev-warning, .sev-error, .sev-critical { color: #c0392b; font-weight: 700; }
.sev-ok { color: #1f8a3b; }
.sev-info { color: #b9770e; }
.sev-outsiderange { color: #8e44ad; font-weight: 700; }
img { max-width: 100%; border: 1px solid #d9dee3; }
code { background: #f1f4f6; padding: 0 .25rem; border-radius: .2rem; word-break: break-all; }
.note { color: #5b6670; font-size: .92rem; }
footer { margin-top: 3rem; color: #8a949c; font-size: .85rem; }
"""



class HasFindings(Protocol):
    """A diagnosis as the page reads it (:class:`fetchrl.analysis.findings.Diagnosis`, or any object whose
    ``to_dict()`` gives ``{"findings": [...], "healthy": ...}``)."""

    def to_dict(self) -> JSONObject: ...


# ============================================================================ small pieces
def esc(value: object) -> str:
    """HTML-escape ``str(value)`` (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def _fmt(value: object) -> str:
    """A readable string for a JSON-ish value (floats to 4 significant digits, lists joined)."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "; ".join(_fmt(v) for v in value)
    return str(value)


def _cell(value: str, cls: str = "") -> str:
    return f'<td class="{esc(cls)}">{esc(value)}</td>' if cls else f"<td>{esc(value)}</td>"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]],
           cell_class: Callable[[int, str], str] | None = None) -> str:
    """An HTML table; every cell is escaped. ``cell_class(column, value)`` gives a cell's CSS class."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(_cell(v, cell_class(i, v) if cell_class else "") for i, v in enumerate(row))
        + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _numbers_right(first_text_columns: int) -> Callable[[int, str], str]:
    return lambda column, _value: "" if column < first_text_columns else "num"


def _kv_table(pairs: Iterable[tuple[str, object]]) -> str:
    """A two-column table of labels (header cells) and values."""
    rows = "".join(f"<tr><th>{esc(k)}</th>{_cell(_fmt(v))}</tr>" for k, v in pairs)
    return f"<table><tbody>{rows}</tbody></table>"


def data_uri(path: Path) -> str:
    """``data:<mime>;base64,...`` of an image file; FetchRLError for an unknown type or unreadable file."""
    mime = IMAGE_MIME.get(path.suffix.lower())
    if mime is None:
        raise FetchRLError(f"cannot embed {path}: only {', '.join(sorted(IMAGE_MIME))} images are supported")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FetchRLError(f"cannot read {path}: {err.strerror or err}", exit_code=1) from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image_section(title: str, path: Path | None, alt: str, missing: str) -> str:
    if path is None:
        return f"<h2>{esc(title)}</h2><p class=\"note\">{esc(missing)}</p>"
    path = Path(path)
    if not path.is_file():
        return f"<h2>{esc(title)}</h2><p class=\"note\">{esc(f'{path} not found.')}</p>"
    return (f"<h2>{esc(title)}</h2><p><img src=\"{data_uri(path)}\" alt=\"{esc(alt)}\"></p>"
            f"<p class=\"note\">{esc(path.name)}</p>")


# ============================================================================ sections
def _seed_range(result: EvalResult) -> str:
    return f"{result.seeds[0]}..{result.seeds[-1]}" if result.seeds else "-"


def _header(paths: RunPaths, result: EvalResult, criteria: Sequence[Criterion]) -> str:
    verdict = "PASS" if overall_pass(check_criteria(result, criteria)) else "FAIL"
    chapter, arm = chapter_heading(paths.names)
    return (
        f"<h1>{esc(chapter)} report: {esc(arm)} on {esc(result.env_id)}, seed {esc(paths.seed)} "
        f"<span class=\"badge {verdict.lower()}\">{verdict}</span></h1>"
        f"<p class=\"sub\">Checkpoint <code>{esc(result.checkpoint)}</code> — {esc(result.n_episodes)} "
        f"{'deterministic' if result.deterministic else 'stochastic'} episodes "
        f"(reset seeds {esc(_seed_range(result))}), "
        f"evaluated {esc(result.created_at)}.</p>"
    )


def _criterion_words(c: Criterion) -> str:
    """``success rate &gt; 90%``: one criterion as the note under the table words it."""
    op = esc(c.op)
    if c.metric == "success_rate":
        return f"success rate {op} {c.threshold:.0%}"
    if c.metric == "return_mean":
        return f"mean return {op} {c.threshold:g}"
    if c.metric == "final_distance_mean":
        return f"mean final distance {op} {c.threshold:g} m"
    return f"{esc(c.name)} {op} {c.threshold:g}"


def _criteria_section(result: EvalResult, baselines: list[EvalResult], criteria: Sequence[Criterion]) -> str:
    header, rows = criteria_table(result, baselines, criteria=criteria)
    verdict_col = header.index("verdict")

    def cell_class(column: int, value: str) -> str:
        if column == verdict_col:
            return value.lower()  # "pass" / "fail"
        return "" if column == 0 else "num"

    words = [_criterion_words(c) for c in criteria]
    needs = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    out = [
        "<h2>Chapter criteria</h2>",
        _table(header, rows, cell_class),
        f"<p class=\"note\">PASS needs {'all three' if len(words) == 3 else f'all {len(words)}'}: {needs}.</p>",
    ]
    if distance_note(result.env_id):
        out.append(f"<p>{esc(distance_note(result.env_id))}</p>")
    if baselines:
        out.append(f"<p>{esc(baseline_note(criteria))}</p>")
    return "".join(out)


def _finding_columns(findings: list[dict[str, object]]) -> list[str]:
    columns = [c for c in FINDING_FIRST if any(c in f for f in findings)]
    for finding in findings:
        columns += [k for k in finding if k not in columns]
    return columns


def _severity_class(value: object) -> str:
    return "sev-" + re.sub(r"[^a-z]", "", str(value).lower())


def _finding_cell(column: str, value: object) -> str:
    """A finding's field as shown: severities in the tables' words ("outside range"), steps with commas."""
    if value in (None, ""):
        return "—"
    if column == "severity":
        return VERDICT.get(str(value), str(value))
    if column == "at_step" and isinstance(value, int):
        return f"{value:,}"
    return _fmt(value)


def _diagnosis_section(diagnosis: HasFindings | None) -> str:
    title = "<h2>Training diagnosis</h2>"
    if diagnosis is None:
        return title + "<p class=\"note\">No diagnosis: the TensorBoard logs were not read for this run.</p>"
    data = diagnosis.to_dict()
    findings = [f for f in data.get("findings", []) if isinstance(f, dict)]
    healthy = bool(data.get("healthy", not findings))
    verdict = ("<p><span class=\"badge pass\">healthy</span> none of the chapter's warning signs in the "
               "training curves.</p>" if healthy else
               "<p><span class=\"badge fail\">warning signs</span> see the findings below.</p>")
    if data.get("summary"):  # the terminal's and the Markdown report's verdict line, word for word
        verdict += f"<p><strong>Diagnosis: {esc(data['summary'])}.</strong></p>"
    if data.get("logdir"):
        verdict += f"<p class=\"note\">Read from <code>{esc(data['logdir'])}</code>.</p>"
    if not findings:
        return title + verdict
    columns = _finding_columns(findings)
    rows = [[_finding_cell(c, f.get(c)) for c in columns] for f in findings]
    severity_col = columns.index("severity") if "severity" in columns else -1

    def cell_class(column: int, value: str) -> str:
        return _severity_class(value) if column == severity_col else ""

    return title + verdict + _table([c.replace("_", " ") for c in columns], rows, cell_class)


def _aggregate_section(result: EvalResult, baselines: list[EvalResult]) -> str:
    keys = [k for k in AGGREGATE_FIELDS if k in result.aggregate]
    keys += [k for k in result.aggregate if k not in keys]
    header = ["metric", "trained"] + [f"{b.policy} policy" for b in baselines]
    rows = [[k, _fmt(result.aggregate[k])] + [_fmt(b.aggregate.get(k, "")) for b in baselines] for k in keys]
    info = [("episodes", result.n_episodes), ("reset seeds", _seed_range(result)),
            ("deterministic", result.deterministic), ("device", result.device),
            ("eval time (s)", result.eval_seconds), ("evaluated at", result.created_at),
            ("checkpoint", result.checkpoint)]
    return "<h2>Evaluation aggregate</h2>" + _table(header, rows, _numbers_right(1)) + _kv_table(info)


def _meta_section(meta: TrainMeta | None) -> str:
    title = "<h2>Training metadata</h2>"
    if meta is None:
        return title + "<p class=\"note\">No training metadata was given.</p>"
    run = [("env id", meta.env_id), ("seed", meta.seed), ("algorithm", meta.algo), ("device", meta.device),
           ("parallel envs", meta.n_envs), ("steps trained", f"{meta.num_timesteps} of {meta.total_steps}"),
           ("complete", f"{meta.complete} ({meta.stop_reason})"), ("wall time (s)", meta.wall_time_s),
           ("steps per second", meta.steps_per_second), ("fast env", meta.fast_env),
           ("trained at", meta.created_at), ("checkpoint", meta.checkpoint),
           ("observation space", meta.observation_space), ("action space", meta.action_space)]
    return (title + _kv_table(run) + "<h3>Hyper-parameters</h3>" + _kv_table(meta.hyperparameters.items()))


def _versions_section(result: EvalResult, meta: TrainMeta | None) -> str:
    train_v = meta.versions if meta is not None else {}
    keys = list(train_v) + [k for k in result.versions if k not in train_v]
    rows = []
    for k in keys:
        t, e = train_v.get(k, "-"), result.versions.get(k, "-")
        rows.append([k, t, e, "" if meta is None or t == e else "differs"])
    return "<h2>Versions</h2>" + _table(["package", "training", "evaluation", "note"], rows)


# ============================================================================ entry points
def render_html(paths: RunPaths, *, result: EvalResult, baselines: list[EvalResult], meta: TrainMeta | None,
                diagnosis: HasFindings | None, curves_png: Path | None, gif: Path | None,
                criteria: Sequence[Criterion] = CHAPTER_CRITERIA) -> str:
    """The page as a string (see :func:`write_html_report`)."""
    ok = overall_pass(check_criteria(result, criteria))
    chapter, arm = chapter_heading(paths.names)
    title = (f"{chapter} report — {arm} on {result.env_id} seed {paths.seed}: "
             f"{'PASS' if ok else 'FAIL'}")
    body = [
        _header(paths, result, criteria),
        _criteria_section(result, baselines, criteria),
        _diagnosis_section(diagnosis),
        _image_section("Training curves", curves_png, "training curves",
                       "no curves were plotted for this run."),
        _image_section("The policy at work", gif, f"video of the trained policy with the "
                       f"{goal_distance_name(result.env_id)} distance",
                       "no video was recorded for this run (all --no-video)."),
        _aggregate_section(result, baselines),
        _meta_section(meta),
        _versions_section(result, meta),
        f"<footer>Written by fetchrl {esc(__version__)} at {esc(now_iso())}. Self-contained: "
        "this page loads nothing from the network.</footer>",
    ]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        + "\n".join(body) + "\n</body></html>\n"
    )


def write_html_report(paths: RunPaths, *, result: EvalResult, baselines: list[EvalResult],
                      meta: TrainMeta | None, diagnosis: HasFindings | None, curves_png: Path | None,
                      gif: Path | None, criteria: Sequence[Criterion] = CHAPTER_CRITERIA) -> Path:
    """Write ``paths.html_report`` atomically: verdict, criteria, diagnosis, curves, video, metadata.

    Args:
        paths: the run; the page goes to ``paths.html_report``.
        result: the trained policy's evaluation.
        baselines: random / zero-action evaluations on the same seeds (may be empty).
        meta: training metadata, or None.
        diagnosis: any object whose ``to_dict()`` gives ``{"findings": [{"id", "severity", "evidence",
            ...}], "healthy": bool}`` (``fetchrl.analysis.diagnose.Diagnosis``), or None.
        curves_png: the training-curves image to embed, or None.
        gif: the policy video to embed, or None.
        criteria: the chapter's passing criteria (default chapter 2's).

    Returns:
        ``paths.html_report``.
    """
    page = render_html(paths, result=result, baselines=baselines, meta=meta, diagnosis=diagnosis,
                       curves_png=curves_png, gif=gif, criteria=criteria)
    atomic_write_text(paths.html_report, page)
    return paths.html_report
