"""Chapter 4's ``compare`` (HER arm vs no-HER arm over seeds) and its multi-run plumbing.

Real tiny runs of both arms on sparse FetchReach-v4 (1,200 steps, a 5,000-transition buffer, 3 eval
episodes, 2 seeds) through the chapter's script: the JSON read back against the eval JSONs and scipy's
intervals, the plot, a worker killed with SIGKILL and retried, a rerun that skips every finished trial.
The claim's verdict logic on eval JSONs written with the real schema (a Push-like gap, a Reach-like small
gap, a straddling one, one seed); ``ablation --nsg-values`` on tiny runs; the Ray backend resuming an
interrupted SAC + HER run from the driver's checkpoint and replay buffer, despite a killed worker.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fetchrl.analysis import her_compare
from fetchrl.analysis.her_compare import ArmInput
from fetchrl.artifacts import (
    ArmsCompareResult,
    EpisodeRecord,
    EvalResult,
    RunPaths,
    SweepSummary,
    TrainMeta,
    aggregate_episodes,
    arms_compare_json_path,
    arms_compare_plot_path,
    claim_verdict,
    write_json,
)
from fetchrl.chapters.ch04 import CHAPTER, NO_HER
from fetchrl.config import EvalConfig
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.callbacks import FinalLogCallback
from fetchrl.sweep.ray import resume_files, write_trial_files
from fetchrl.sweep.trials import KILL_TRIAL_ENV, Trial

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ch04_her_sparse_reach_push.py"
ENV_ID = "FetchReach-v4"
#: Both arms' tiny run: 200 steps of updates after the 1,000 random ones, a small buffer (small pickles).
TINY = ["--env", ENV_ID, "--total-steps", "1200", "--buffer-size", "5000", "--n-eval-episodes", "3",
        "--no-progress"]
SEEDS = 2
#: The trial whose first attempt is killed with SIGKILL (its worker dies; the sweep retries it).
KILLED = "sac_her/seed1"
ARMS = (ArmInput(CHAPTER.names_for(ENV_ID), "SAC + HER", 1200), ArmInput(NO_HER.names_for(ENV_ID), NO_HER.names_for(ENV_ID).title, 1200))


def _script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", **(env or {})}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=full_env,
                          cwd=REPO, timeout=600)


@dataclass
class CompareRun:
    root: Path
    proc: subprocess.CompletedProcess[str]
    markers: Path


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory: pytest.TempPathFactory) -> CompareRun:
    """``compare`` on 2 seeds x 2 arms from nothing, one worker killed on its first attempt."""
    root = tmp_path_factory.mktemp("compare")
    markers = tmp_path_factory.mktemp("markers")
    proc = _script("compare", *TINY, "--seeds", str(SEEDS), "--workers", "2", "--root", str(root),
                   env={KILL_TRIAL_ENV: f"{markers} {KILLED}"})
    return CompareRun(root, proc, markers)


def _trial_paths(root: Path) -> list[RunPaths]:
    return [arm.paths(ENV_ID, seed, root) for arm in (CHAPTER, NO_HER) for seed in range(SEEDS)]


def _t_interval(values: list[float], limits: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """scipy's 95 % Student-t interval of the mean, clipped to what the mean can take (a rate: [0, 1]);
    seeds that all agree have a zero-width one."""
    if np.std(values) == 0:
        return values[0], values[0]
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    return max(float(lo), limits[0]), min(float(hi), limits[1])


#: What each arm metric's mean can take (the intervals are clipped to it).
LIMITS = {"success_rate": (0.0, 1.0), "final_distance_mean": (0.0, np.inf), "return_mean": (-np.inf, np.inf)}


# ============================================================================ the command on real runs
def test_compare_trains_both_arms_and_writes_the_json_and_one_plot(compare_run: CompareRun) -> None:
    proc, root = compare_run.proc, compare_run.root
    # 1200 steps of Reach solve nothing: the > 50 pp claim cannot pass, so the exit code is 1
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    result = ArmsCompareResult.from_json(arms_compare_json_path(ENV_ID, root, CHAPTER.artifacts))
    assert result.env_id == ENV_ID and result.chapter == "ch04" and result.seeds == [0, 1]
    assert [a.algo for a in result.arms] == ["sac_her", "sac"]
    assert result.total_steps == {"sac_her": 1200, "sac": 1200} and result.n_eval_episodes == 3
    assert result.failed_trials == [] and result.verdict in ("FAIL", "inconclusive")
    for arm, chapter in zip(result.arms, (CHAPTER, NO_HER), strict=True):
        evals = [EvalResult.from_json(chapter.paths(ENV_ID, s, root).eval_json).aggregate for s in range(SEEDS)]
        assert [s.seed for s in arm.per_seed] == [0, 1]
        for metric in ("success_rate", "final_distance_mean", "return_mean"):
            values = np.array([e[metric] for e in evals])
            assert [getattr(s, metric) for s in arm.per_seed] == pytest.approx(values.tolist())
            stat = arm.stats[metric]
            assert stat.n == 2 and stat.mean == pytest.approx(values.mean())
            assert stat.std == pytest.approx(values.std(ddof=1))
            assert stat.ci == pytest.approx(list(_t_interval(values.tolist(), LIMITS[metric])))
    out = proc.stdout
    assert "success" in out and "final distance" in out and result.answer in out
    png = arms_compare_plot_path(ENV_ID, root, CHAPTER.artifacts)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert sorted(p.name for p in (root / "results").glob("*.png")) == [png.name]  # ONE plot


def test_a_killed_worker_is_retried_and_its_trial_completes(compare_run: CompareRun) -> None:
    marker = compare_run.markers / f"killed_{KILLED.replace('/', '_')}"
    assert marker.is_file()  # the first attempt ran and died by SIGKILL...
    paths = CHAPTER.paths(ENV_ID, 1, compare_run.root)
    meta = TrainMeta.from_json(paths.meta)  # ...and the retry trained and evaluated it
    assert meta.complete and meta.num_timesteps == 1200 and paths.eval_json.is_file()
    assert paths.replay_buffer.is_file()


def test_rerun_skips_every_finished_trial(compare_run: CompareRun) -> None:
    files = [p for paths in _trial_paths(compare_run.root)
             for p in (paths.checkpoint, paths.meta, paths.eval_json, paths.replay_buffer)]
    mtimes = [p.stat().st_mtime_ns for p in files]
    before = json.loads(arms_compare_json_path(ENV_ID, compare_run.root, CHAPTER.artifacts).read_text())
    proc = _script("compare", *TINY, "--seeds", str(SEEDS), "--workers", "2", "--root", str(compare_run.root))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in files] == mtimes  # nothing trained or evaluated again
    after = json.loads(arms_compare_json_path(ENV_ID, compare_run.root, CHAPTER.artifacts).read_text())
    assert {k: v for k, v in after.items() if k != "created_at"} == {k: v for k, v in before.items()
                                                                     if k != "created_at"}


def test_compare_exits_0_when_the_claim_passes(compare_run: CompareRun, tmp_path: Path) -> None:
    """The finished trials, their eval JSONs replaced by a Push-like outcome (HER 100 %, no-HER 0 %): PASS."""
    root = tmp_path / "root"
    shutil.copytree(compare_run.root, root)
    eval_config = EvalConfig(n_episodes=3)
    for seed in range(SEEDS):
        _write_eval(CHAPTER.paths(ENV_ID, seed, root), [True] * 3, eval_config)
        _write_eval(NO_HER.paths(ENV_ID, seed, root), [False] * 3, eval_config)
    proc = _script("compare", *TINY, "--seeds", str(SEEDS), "--workers", "2", "--root", str(root))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = ArmsCompareResult.from_json(arms_compare_json_path(ENV_ID, root, CHAPTER.artifacts))
    assert result.verdict == "PASS" and result.difference.difference_pp == pytest.approx(100.0)
    assert "PASS" in proc.stdout


# ============================================================================ the verdict on constructed eval JSONs
def _write_eval(paths: RunPaths, successes: list[bool], eval_config: EvalConfig) -> Path:
    """A valid eval JSON (the real schema, read back by EvalResult.from_json) with the given episode outcomes."""
    rows = [EpisodeRecord(seed=s, return_=-10.0 if ok else -50.0, length=50, success=ok,
                          final_distance=0.02 if ok else 0.15, time_to_success=40 if ok else None,
                          action_smoothness=0.1, action_max_abs=0.9)
            for s, ok in zip(eval_config.episode_seeds, successes, strict=True)]
    result = EvalResult(created_at="2026-11-30T00:00:00+00:00", algo=paths.names.algo, env_id=ENV_ID,
                        checkpoint=str(paths.checkpoint), device="cpu", n_episodes=len(rows),
                        seeds=eval_config.episode_seeds, deterministic=True, aggregate=aggregate_episodes(rows),
                        per_episode=rows, versions={})
    write_json(paths.eval_json, result.to_dict())
    EvalResult.from_json(paths.eval_json)  # the schema's own validation accepts it
    return paths.eval_json


def _constructed(root: Path, her: list[float], no_her: list[float]) -> ArmsCompareResult:
    """Eval JSONs of 10 episodes per seed with these success rates, judged by the analysis on disk."""
    eval_config = EvalConfig(n_episodes=10)
    for chapter, rates in ((CHAPTER, her), (NO_HER, no_her)):
        for seed, rate in enumerate(rates):
            k = round(rate * 10)
            _write_eval(chapter.paths(ENV_ID, seed, root), [True] * k + [False] * (10 - k), eval_config)
    seeds = {"sac_her": list(range(len(her))), "sac": list(range(len(no_her)))}
    result = her_compare.compare_arms(*ARMS, ENV_ID, seeds, root, chapter="ch04", n_eval_episodes=10)
    out = root / "compare.json"
    result.to_json(out)
    return ArmsCompareResult.from_json(out)  # written and validated on read


@pytest.mark.parametrize(("her", "no_her", "verdict", "gap_small"), [
    ([1.0, 1.0, 0.9], [0.0, 0.1, 0.1], "PASS", False),          # the book's Push: 99 % vs 5 %
    ([1.0, 1.0, 1.0], [0.9, 1.0, 0.9], "FAIL", True),           # the book's sparse Reach: 100 % vs 96 %
    ([0.3, 0.3, 0.4], [0.0, 0.0, 0.1], "FAIL", True),           # a real but smaller gap: 30 pp
    ([1.0, 0.3, 0.9], [0.1, 0.2, 0.0], "inconclusive", False),  # a 63 pp gap, too noisy to tell
], ids=["push-like", "reach-like", "below-the-bar", "straddling"])
def test_verdict_follows_the_welch_interval(tmp_path: Path, her: list[float], no_her: list[float], verdict: str,
                                            gap_small: bool) -> None:
    result = _constructed(tmp_path, her, no_her)
    a, b = 100 * np.array(her), 100 * np.array(no_her)
    with warnings.catch_warnings():  # scipy warns of lost precision for arms whose seeds all agree (100 %)
        warnings.simplefilter("ignore", RuntimeWarning)
        welch = stats.ttest_ind(a, b, equal_var=False)
    ci = welch.confidence_interval(0.95)
    d = result.difference
    assert d.difference_pp == pytest.approx(a.mean() - b.mean())
    # a difference of rates lies in [-100, 100] pp: the interval is clipped there (push-like: 100 % vs ~1 %)
    assert d.ci_pp == pytest.approx([max(ci.low, -100), min(ci.high, 100)]) and d.df == pytest.approx(welch.df)
    assert result.verdict == verdict and result.gap_small is gap_small
    for arm, rates in zip(result.arms, (her, no_her), strict=True):
        lo, hi = _t_interval(rates)
        assert arm.stats["success_rate"].ci == pytest.approx([lo, hi])
        assert arm.stats["success_rate"].std == pytest.approx(np.std(rates, ddof=1))
    if verdict == "FAIL":  # a refuted claim and a small gap are said as such, never claimed as HER's effect
        assert "refuted" in result.answer and "the whole interval is below 50 pp" in result.answer
        small = d.difference_pp < 10
        assert ("gap is small" in result.answer) is small
        assert ("interval includes 0" in result.answer) is small  # 100 % vs 93 %: no measurable difference
    if verdict == "PASS":
        assert "holds" in result.answer and "small" not in result.answer
    if verdict == "inconclusive":
        assert "straddles 50 pp" in result.answer


def test_one_seed_is_not_measured(tmp_path: Path) -> None:
    result = _constructed(tmp_path, [1.0], [0.9])  # a 10 pp gap on one seed: below the bar, not small
    assert result.verdict == "inconclusive" and result.difference.ci_pp is None and result.difference.df is None
    assert all(a.stats["success_rate"].std is None and a.stats["success_rate"].ci is None for a in result.arms)
    assert "not measured" in result.answer and "the gap (+10.0 pp) is below 50 pp" in result.answer
    assert "gap is small (+0.0 pp)" in _constructed(tmp_path, [0.9], [0.9]).answer
    lines = her_compare.summary_lines(result)
    assert any("not measured (one seed)" in line for line in lines)


def test_claim_verdict_bounds_and_a_tampered_json_is_refused(tmp_path: Path) -> None:
    assert [claim_verdict(ci, 50.0) for ci in ([50.1, 90.0], [10.0, 49.9], [49.0, 51.0], [50.0, 60.0], None)] == \
        ["PASS", "FAIL", "inconclusive", "inconclusive", "inconclusive"]
    _constructed(tmp_path, [1.0, 1.0, 0.9], [0.0, 0.1, 0.1])
    path = tmp_path / "compare.json"
    data = json.loads(path.read_text())
    data["verdict"] = "FAIL"
    path.write_text(json.dumps(data))
    with pytest.raises(FetchRLError, match="does not follow from the CI"):
        ArmsCompareResult.from_json(path)
    data["verdict"] = "PASS"
    data["arms"][0]["per_seed"][0]["success_rate"] = 0.5  # a hand edit of one seed's rate
    path.write_text(json.dumps(data))
    with pytest.raises(FetchRLError, match="mean disagrees with its per_seed rows"):
        ArmsCompareResult.from_json(path)


def test_a_missing_eval_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FetchRLError, match=r"eval JSON not found: .*ch04_sac_her_fetchreach-v4_seed0_eval\.json"):
        her_compare.compare_arms(*ARMS, ENV_ID, {"sac_her": [0], "sac": [0]}, tmp_path, chapter="ch04",
                                 n_eval_episodes=3)


def test_compare_bad_input_is_one_line(tmp_path: Path) -> None:
    proc = _script("compare", "--seeds", "0", "--root", str(tmp_path))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--seeds" in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


# ============================================================================ ablation and Ray
def test_ablation_of_n_sampled_goal_on_tiny_runs(tmp_path: Path) -> None:
    # the book's command has no --her: n_sampled_goal exists only in the HER arm, which it trains
    proc = _script("ablation", *TINY, "--nsg-values", "2,8", "--seeds", "1", "--workers", "2",
                   "--root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training the --her arm" in proc.stdout
    out = tmp_path / "results" / "ch04_ablation_n_sampled_goal.json"
    summary = SweepSummary.from_json(out)
    assert [s.tag for s in summary.settings] == ["n_sampled_goal=2", "n_sampled_goal=8"]
    assert [s.aggregate.config["n_sampled_goal"] for s in summary.settings] == [2, 8]
    assert all(s.aggregate.algo == "sac_her" and s.aggregate.seeds == [0] for s in summary.settings)
    assert "final_performance" in summary.answers
    assert (tmp_path / "results" / "ch04_ablation_n_sampled_goal.png").stat().st_size > 20_000  # SAC's curves
    assert "clip_fraction" not in proc.stdout  # PPO's columns are not shown for SAC


def test_ray_driver_ships_the_interrupted_run_and_drops_what_the_result_replaced(tmp_path: Path) -> None:
    """What the Ray driver sends a task (the run to continue) and what it removes once the task's files are written
    (the partial run the task continued and promoted, a replay buffer of another checkpoint)."""
    trial = Trial(CHAPTER.defaults_for(ENV_ID).replace(total_steps=1200), EvalConfig(n_episodes=3), tmp_path,
                  names=CHAPTER.names_for(ENV_ID))
    paths, partial = trial.paths, trial.paths.partial
    assert resume_files(trial) == {}  # nothing on the driver: the task trains from scratch
    for f in (paths.checkpoint, paths.meta, paths.replay_buffer, paths.tb_dir / "events.out.tfevents.1",
              partial.checkpoint, partial.meta, partial.replay_buffer, partial.tb_dir / "events.out.tfevents.2"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(f.name.encode())
    shipped = resume_files(trial)
    rel = {f: f.relative_to(tmp_path).as_posix() for f in (paths.checkpoint, paths.replay_buffer, partial.replay_buffer,
                                                              partial.tb_dir / "events.out.tfevents.2")}
    assert len(shipped) == 8 and all(shipped[r] == f.name.encode() for f, r in rel.items())

    result = {paths.checkpoint: b"new zip", paths.meta: b"{}", paths.eval_json: b"{}",
              paths.tb_dir / "events.out.tfevents.3": b"ev"}
    write_trial_files(trial, {f.relative_to(tmp_path).as_posix(): data for f, data in result.items()})
    assert all(f.read_bytes() == data for f, data in result.items())
    assert [p.name for p in paths.tb_dir.iterdir()] == ["events.out.tfevents.3"]  # the task's logs replace the old
    assert not any(f.exists() for f in (partial.checkpoint, partial.meta, partial.replay_buffer, partial.tb_dir,
                                        paths.replay_buffer))


class _SignalAt(FinalLogCallback):
    """Sends SIGINT to this process when training reaches ``at`` steps."""

    at = 0

    def _on_step(self) -> bool:
        if self.model.num_timesteps == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return True


@pytest.mark.slow
def test_ray_multi_seed_resumes_an_interrupted_sac_her_run_despite_a_killed_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run interrupted on the driver (checkpoint + replay buffer) is continued by the Ray task, not started
    over; the replay buffer comes back with the checkpoint, so the driver can train it further."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install '.[ray]'): Ray backend untested")
    from fetchrl.cli import main

    paths = CHAPTER.paths(ENV_ID, 0, tmp_path)
    monkeypatch.setattr(_SignalAt, "at", 1104)
    monkeypatch.setattr("fetchrl.pipeline.train.FinalLogCallback", _SignalAt)
    assert main(["train", "--her", "--root", str(tmp_path), *TINY[:-3], "--no-progress"], CHAPTER) == 130
    monkeypatch.undo()
    interrupted = TrainMeta.from_json(paths.meta)
    assert not interrupted.complete and 1000 < interrupted.num_timesteps < 1200 and paths.replay_buffer.is_file()
    first_events = {p.name for p in paths.tb_dir.iterdir()}

    markers = tmp_path / "markers"
    markers.mkdir()
    monkeypatch.setenv(KILL_TRIAL_ENV, f"{markers} default/seed0")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        code = main(["multi-seed", "--her", "--root", str(tmp_path), *TINY, "--seeds", "1", "--backend", "ray",
                     "--workers", "1"], CHAPTER)
    finally:
        ray.shutdown()
    assert code == 0
    assert (markers / "killed_default_seed0").is_file()  # the first attempt's worker died; the retry ran
    meta = TrainMeta.from_json(paths.meta)
    assert meta.complete and meta.num_timesteps == 1200
    # continued, not started over (a fresh run starts from an empty log dir): the interrupted segment's
    # event file, then the continuation's
    now = {p.name for p in paths.tb_dir.iterdir()}
    assert first_events < now and len(now) == len(first_events) + 1
    assert (tmp_path / "results" / "ch04_sac_her_fetchreach-v4_aggregate.json").is_file()
    assert (tmp_path / "results" / "ch04_sac_her_fetchreach-v4_aggregate.png").stat().st_size > 20_000  # SAC's curves
    # the replay buffer came back with the checkpoint: the driver trains the run further from it
    assert main(["train", "--her", "--resume", "--root", str(tmp_path), *TINY[:2], "--total-steps", "1304",
                 "--buffer-size", "5000", "--no-progress"], CHAPTER) == 0
    assert TrainMeta.from_json(paths.meta).num_timesteps == 1304
