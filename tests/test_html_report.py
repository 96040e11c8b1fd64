"""The self-contained HTML report, built from a real training run and real evaluations."""

from __future__ import annotations

import base64
import dataclasses
import html
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fetchrl.analysis.html_report import write_html_report
from fetchrl.artifacts import EvalResult, RunPaths, TrainMeta
from fetchrl.config import EvalConfig
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.report import criteria_table

CRITERIA = ("success rate", "mean return", "final distance (m)")


class _Collector(HTMLParser):
    """Every tag and attribute of a page, to check what a browser would fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "action", "poster", "data")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


class _Diagnosis:
    """Stands in for fetchrl.analysis.diagnose.Diagnosis: only ``to_dict()`` is used by the report."""

    def __init__(self, findings: list[dict[str, Any]], healthy: bool) -> None:
        self._d = {"findings": findings, "healthy": healthy}
        self.healthy = healthy

    def to_dict(self) -> dict[str, Any]:
        return self._d


@pytest.fixture(scope="module")
def run(tiny_run: RunPaths, tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """A private copy of the session's tiny trained run (checkpoint, meta, eval JSON, TB logs)."""
    root = tmp_path_factory.mktemp("html_run")
    for sub in ("checkpoints", "results", "runs"):
        shutil.copytree(tiny_run.root / sub, root / sub)
    return RunPaths(tiny_run.env_id, tiny_run.seed, root)


@pytest.fixture(scope="module")
def result(run: RunPaths) -> EvalResult:
    return EvalResult.from_json(run.eval_json)


@pytest.fixture(scope="module")
def baselines(result: EvalResult) -> list[EvalResult]:
    from fetchrl.pipeline.evaluate import baseline_results
    from fetchrl.runtime import Runtime

    return baseline_results(Runtime.decide(result.env_id), EvalConfig(n_episodes=3, seed_offset=result.seeds[0]))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A real PNG and a real two-frame GIF."""
    d = tmp_path_factory.mktemp("images")
    png, gif = d / "curves.png", d / "clip.gif"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(png)
    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (0, 255)]
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=40, loop=0)
    return png, gif


def _page(run: RunPaths, result: EvalResult, baselines: list[EvalResult], **kw: Any) -> str:
    args: dict[str, Any] = {"meta": TrainMeta.from_json(run.meta), "diagnosis": None, "curves_png": None,
                            "gif": None}
    args.update(kw)
    out = write_html_report(run, result=result, baselines=baselines, **args)
    assert out == run.html_report
    return out.read_text(encoding="utf-8")


def test_criteria_table_matches_the_cli(run: RunPaths, result: EvalResult,
                                        baselines: list[EvalResult]) -> None:
    page = _page(run, result, baselines)
    header, rows = criteria_table(result, baselines)
    for name in CRITERIA:
        assert name in page
    for row in rows:  # every number and verdict the CLI prints, in the same order
        assert re.search(".*?".join(re.escape(html.escape(c)) for c in row), page, re.S), row
    for h in header:
        assert h in page
    assert "random policy" in page and "zero policy" in page and "same episode seeds" in page


def test_overall_verdict(run: RunPaths, result: EvalResult, baselines: list[EvalResult]) -> None:
    failing = _page(run, result, baselines)  # 2,048 steps do not solve FetchReachDense
    assert '<span class="badge fail">FAIL</span>' in failing and "FAIL</title>" in failing
    solved_aggregate = {**result.aggregate, "success_rate": 1.0, "return_mean": -1.5,
                        "final_distance_mean": 0.008}
    solved = dataclasses.replace(result, aggregate=solved_aggregate)
    passing = _page(run, solved, baselines)
    assert '<span class="badge pass">PASS</span>' in passing and "PASS</title>" in passing


def test_images_embedded_as_data_uris(run: RunPaths, result: EvalResult, baselines: list[EvalResult],
                                      images: tuple[Path, Path]) -> None:
    png, gif = images
    page = _page(run, result, baselines, curves_png=png, gif=gif)
    for path, mime in ((png, "image/png"), (gif, "image/gif")):
        m = re.search(f'src="data:{mime};base64,([A-Za-z0-9+/=]+)"', page)
        assert m, f"{mime} not embedded"
        assert base64.b64decode(m.group(1)) == path.read_bytes()


def test_missing_images_are_noted_not_fatal(run: RunPaths, result: EvalResult, baselines: list[EvalResult],
                                            tmp_path: Path) -> None:
    page = _page(run, result, baselines, curves_png=None, gif=tmp_path / "gone.gif")
    assert "data:image" not in page
    assert "no curves were plotted" in page and "gone.gif not found" in page


def test_unsupported_image_type_is_a_clear_error(run: RunPaths, result: EvalResult,
                                                 baselines: list[EvalResult], tmp_path: Path) -> None:
    svg = tmp_path / "curves.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    with pytest.raises(FetchRLError, match="only"):
        _page(run, result, baselines, curves_png=svg)


def test_self_contained_no_network(run: RunPaths, result: EvalResult, baselines: list[EvalResult],
                                   images: tuple[Path, Path]) -> None:
    png, gif = images
    page = _page(run, result, baselines, curves_png=png, gif=gif)
    assert "http://" not in page and "https://" not in page
    parser = _Collector()
    parser.feed(page)
    assert {"script", "link", "iframe", "object", "embed"}.isdisjoint(parser.tags)
    assert parser.urls and all(u.startswith("data:image/") for u in parser.urls), parser.urls
    assert "Content-Security-Policy" in page and "@import" not in page and "url(" not in page


def test_every_string_is_escaped(run: RunPaths, result: EvalResult, baselines: list[EvalResult]) -> None:
    evil = "<script>alert('x')</script>"
    hostile = dataclasses.replace(result, checkpoint=f"/tmp/{evil}/ppo.zip", env_id=f"Fetch{evil}")
    meta = dataclasses.replace(TrainMeta.from_json(run.meta), hyperparameters={"policy": evil, f"k{evil}": 1},
                               versions={"torch": evil})
    diagnosis = _Diagnosis([{"id": evil, "severity": f'warning" onmouseover="{evil}', "evidence": "a < b & c",
                             "likely_problem": evil, "fix": evil}], healthy=False)
    page = _page(run, hostile, baselines, meta=meta, diagnosis=diagnosis)
    assert "<script" not in page and "onmouseover=\"" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "a &lt; b &amp; c" in page


def test_diagnosis_findings_table(run: RunPaths, result: EvalResult, baselines: list[EvalResult]) -> None:
    findings = [
        {"id": "approx_kl_high", "signal": "train/approx_kl", "severity": "warning",
         "evidence": "12/40 updates > 0.05", "observed": {"median": 0.061},
         "likely_problem": "step too large", "fix": "lower --learning-rate"},
        {"id": "entropy_trend", "signal": "train/entropy_loss", "severity": "ok",
         "evidence": "slowly toward 0", "observed": {}, "likely_problem": "", "fix": ""},
    ]
    page = _page(run, result, baselines, diagnosis=_Diagnosis(findings, healthy=False))
    headers = re.findall(r"<th>([^<]*)</th>", page.split("Training diagnosis")[1].split("</table>")[0])
    assert headers[:6] == ["id", "signal", "severity", "evidence", "likely problem", "fix"]
    assert '<td class="sev-warning">WARNING</td>' in page and '<td class="sev-ok">ok</td>' in page
    assert "lower --learning-rate" in page and "median: 0.061" in page and "warning signs" in page
    healthy = _page(run, result, baselines, diagnosis=_Diagnosis([], healthy=True))
    assert "healthy" in healthy.split("Training diagnosis")[1]


def test_outside_range_reads_as_in_the_markdown_report(run: RunPaths, result: EvalResult,
                                                      baselines: list[EvalResult]) -> None:
    """A band left late in training: its own verdict, the step and share, the Markdown's summary word for word."""
    from fetchrl import metrics
    from fetchrl.analysis import diagnose
    from fetchrl.analysis.tbreader import Series

    n = 20
    steps = np.arange(1, n + 1, dtype=np.int64) * 8192
    kl = np.where(np.arange(n) >= 12, 0.035, 0.012)  # 8/20 outside, from update 13 on
    scalars = {
        metrics.EP_REW_MEAN: Series(steps, np.linspace(-12.0, -1.0, n)),
        metrics.SUCCESS_RATE: Series(steps, np.linspace(0.0, 1.0, n)),
        metrics.VALUE_LOSS: Series(steps, np.linspace(3.0, 0.1, n)),
        metrics.APPROX_KL: Series(steps, kl),
        metrics.CLIP_FRACTION: Series(steps, np.full(n, 0.2)),
        metrics.ENTROPY_LOSS: Series(steps, np.linspace(-5.7, -3.0, n)),
    }
    diagnosis = diagnose.diagnose_scalars(scalars)
    assert diagnosis.healthy and [f.id for f in diagnosis.outside_range] == ["approx_kl_range"]
    page = _page(run, result, baselines, diagnosis=diagnosis)
    section = page.split("Training diagnosis")[1]
    assert '<span class="badge pass">healthy</span>' in section  # information, not a warning sign
    assert '<td class="sev-outsiderange">outside range</td>' in section
    assert html.escape(f"Diagnosis: {diagnosis.summary()}.", quote=True) in section
    assert f"approx_kl_range from step {steps[12]:,}" in diagnosis.summary()
    assert f"<td>{steps[12]:,}</td>" in section  # at step
    assert html.escape("8/20 updates (40%) outside < 0.03, mostly outside from step 106,496 on") in section
    assert f"**Diagnosis: {diagnosis.summary()}.**" in diagnosis.to_markdown()


def test_full_run_end_to_end(run: RunPaths, result: EvalResult, baselines: list[EvalResult]) -> None:
    """Real checkpoint -> real video -> real diagnosis of the TensorBoard logs -> one page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fetchrl.analysis.diagnose import diagnose
    from fetchrl.analysis.video import record_video
    from fetchrl.runtime import Runtime

    gif = record_video(run, Runtime.decide(run.env_id), episodes=1, width=160, height=120)[0]
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [0.1, 0.4, 0.8])
    run.curves_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(run.curves_png)
    plt.close(fig)
    meta = TrainMeta.from_json(run.meta)
    diagnosis = diagnose(run.tb_dir)
    page = _page(run, result, baselines, meta=meta, diagnosis=diagnosis, curves_png=run.curves_png, gif=gif)
    assert "data:image/gif;base64," in page and "data:image/png;base64," in page
    for finding in diagnosis.to_dict()["findings"]:
        assert finding["id"] in page
    assert f"{meta.num_timesteps} of {meta.total_steps}" in page and f"{meta.steps_per_second:.4g}" in page
    for name in meta.hyperparameters:
        assert f"<th>{name}</th>" in page
    assert meta.versions["torch"] in page and "success_rate" in page
    leftovers = [p for p in run.html_report.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"temp files left behind: {leftovers}"
