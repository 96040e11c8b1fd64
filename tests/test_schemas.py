"""Artifacts read back are believed only when possible: schemas refuse impossible values at load, an eval
JSON knows the checkpoint it came from, and evaluation memory stays flat in the episode count.

Issue "Nothing lost, nothing silent", classes 2 and 4, on real files: a short real training run and its
real evaluation (written by the CLI, read back), then edited the way a bad file would be.
"""

from __future__ import annotations

import json
import math
import shutil
import tracemalloc
from pathlib import Path

import pytest

from fetchrl.algos.base import MAX_EVAL_EPISODES, Bounds
from fetchrl.artifacts import (
    EvalResult,
    RunPaths,
    TrainMeta,
    episode_limits,
    file_sha256,
)
from fetchrl.cli import main
from fetchrl.config import EvalConfig
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.evaluate import ZeroPolicy, evaluate_policy
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs

ENV_ID = "FetchReachDense-v4"
#: A real but tiny PPO run: two rollouts of 2 x 256 steps, one epoch each (a few seconds).
TINY = ["--total-steps", "1024", "--n-envs", "2", "--n-steps", "256", "--batch-size", "64", "--n-epochs", "1",
        "--no-progress"]


def _cli(*argv: str) -> int:
    try:
        return main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding seed 0's checkpoint, meta JSON and a 4-episode eval JSON, all written by the CLI."""
    root = tmp_path_factory.mktemp("run")
    assert _cli("train", *TINY, "--root", str(root)) == 0
    assert _cli("eval", "--n-eval-episodes", "4", "--no-progress", "--root", str(root)) == 0
    return root


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> RunPaths:
    """A fresh copy of :func:`trained` that a test may change."""
    shutil.copytree(trained, tmp_path / "root")
    return RunPaths(ENV_ID, 0, tmp_path / "root")


def _files(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory (None) under ``root``."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


# ============================================================================ freshness (class 4)
def test_eval_json_records_its_checkpoint(run: RunPaths) -> None:
    result = EvalResult.from_json(run.eval_json)
    assert result.checkpoint_sha256 == file_sha256(run.checkpoint)
    assert result.checkpoint_created_at == TrainMeta.from_json(run.meta).created_at != ""
    assert result.problem() is None and result.n_episodes == 4


def test_report_refuses_an_eval_of_a_checkpoint_retrained_since(run: RunPaths,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = str(run.root)
    assert _cli("report", "--root", root, "--no-progress") in (0, 1)  # fresh: judged, no warning
    assert capsys.readouterr().err == ""
    assert _cli("train", *TINY, "--total-steps", "1536", "--force", "--root", root) == 0  # the same seed, retrained
    capsys.readouterr()
    before = _files(run.root)
    code = _cli("report", "--root", root, "--no-progress")
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, err
    assert str(run.eval_json) in lines[0] and str(run.checkpoint) in lines[0]
    assert f"run `eval --seed 0 --root {root}` first" in lines[0]
    assert _files(run.root) == before  # the old report markdown is left alone, nothing new written
    assert _cli("eval", "--n-eval-episodes", "4", "--no-progress", "--root", root) == 0
    assert _cli("report", "--root", root, "--no-progress") in (0, 1)
    assert capsys.readouterr().err == ""


def test_an_old_eval_json_loads_and_report_says_freshness_is_unknown(run: RunPaths,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(run.eval_json.read_text())
    del data["checkpoint_sha256"], data["checkpoint_created_at"]  # as written before they existed
    run.eval_json.write_text(json.dumps(data))
    code = _cli("report", "--root", str(run.root), "--no-progress")
    lines = capsys.readouterr().err.splitlines()
    assert code in (0, 1)
    assert len(lines) == 1 and lines[0].startswith("warning: ") and "cannot verify" in lines[0], lines


# ============================================================================ impossible values (class 4)
def _edited(run: RunPaths, edit: str) -> Path:
    data = json.loads(run.eval_json.read_text())
    exec(edit, {"d": data, "a": data["aggregate"], "rows": data["per_episode"]})  # noqa: S102 - the test's own edits
    run.eval_json.write_text(json.dumps(data))  # NaN is written as JSON's NaN, which Python's json reads back
    return run.eval_json


@pytest.mark.parametrize(("edit", "message"), [
    ("a['success_rate'] = float('nan')", r"aggregate\.success_rate must be a finite number in \[0, 1\], got nan"),
    ("a['final_distance_mean'] = -5", r"aggregate\.final_distance_mean must be a finite number in \[0, 5\], got -5"),
    ("a['return_mean'] = 1e9", r"aggregate\.return_mean must be a finite number in \[-250, 0\], got 1000000000\.0"),
    ("a['success_rate'] = 'high'", r"aggregate\.success_rate must be a finite number in \[0, 1\], got 'high'"),
    ("rows[1]['return'] -= 1.0", r"aggregate\.return_mean = .* disagrees with its per_episode rows"),
    ("rows[0]['final_distance'] += 0.5", r"aggregate\.final_distance_mean = .* disagrees with its per_episode rows"),
    ("rows[2]['time_to_success'] = 99", r"per_episode\[2\]\.time_to_success must be an integer <= 50, got 99"),
    ("rows.pop()", r"n_episodes is 4 but there are 3 per_episode rows and 4 seeds"),
])
def test_impossible_eval_values_are_refused_at_load(run: RunPaths, edit: str, message: str) -> None:
    path = _edited(run, edit)
    with pytest.raises(FetchRLError, match=rf"eval JSON {path} is invalid: {message}") as info:
        EvalResult.from_json(path)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


def test_impossible_metadata_is_refused_at_load(run: RunPaths, capsys: pytest.CaptureFixture[str]) -> None:
    data = json.loads(run.meta.read_text())
    assert TrainMeta.from_dict(data, run.meta).problem() is None
    for name, value, message in (("seed", -1, r"seed must be an integer >= 0, got -1"),
                                 ("n_envs", "8", r"n_envs must be a positive integer, got '8'"),
                                 ("wall_time_s", math.nan, r"wall_time_s must be a finite number >= 0, got nan"),
                                 ("complete", "yes", r"complete must be a bool, got 'yes'")):
        with pytest.raises(FetchRLError, match=rf"checkpoint metadata .* is invalid: {message}"):
            TrainMeta.from_dict({**data, name: value}, run.meta)
    run.meta.write_text(json.dumps({**data, "seed": -1}))  # the file beside the checkpoint, read by eval
    before = _files(run.root)
    assert _cli("eval", "--no-progress", "--root", str(run.root)) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "is invalid: seed must be an integer >= 0, got -1" in lines[0], lines
    assert _files(run.root) == before


def test_limits_come_from_the_registered_spec() -> None:
    envs.register_envs()
    dense, sparse = episode_limits("FetchReachDense-v4"), episode_limits("FetchReach-v4")
    assert dense is not None and (dense.max_steps, dense.reward_type) == (50, "dense")
    assert sparse is not None and sparse.returns == Bounds(low=-50, high=0)  # -1 or 0 a step
    pendulum = episode_limits("Pendulum-v1")  # not a Fetch task: only finiteness and its 200 steps
    assert pendulum is not None and (pendulum.max_steps, pendulum.reward_type) == (200, None)
    assert episode_limits("NoSuchEnv-v0") is None


# ============================================================================ bounded work (class 2)
def _peak_bytes(n_episodes: int) -> int:
    runtime = Runtime.decide(ENV_ID)
    tracemalloc.start()
    try:
        evaluate_policy(runtime, ZeroPolicy(4), EvalConfig(n_episodes=n_episodes, n_envs=10))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_evaluation_memory_is_flat_in_the_episode_count() -> None:
    """Ten times the episodes cost at most a small record each (the steps of finished episodes are dropped)."""
    _peak_bytes(10)  # warm-up: imports, the env's first allocations
    few, many = _peak_bytes(10), _peak_bytes(100)
    assert (many - few) / 90 < 4096, (few, many)


def test_evaluation_refuses_more_episodes_than_its_bound() -> None:
    with pytest.raises(FetchRLError, match=rf"--n-eval-episodes must be an integer <= {MAX_EVAL_EPISODES}"):
        evaluate_policy(Runtime.decide(ENV_ID), ZeroPolicy(4), EvalConfig(n_episodes=MAX_EVAL_EPISODES + 1))


# ============================================================================ one rule for bounds (class 3)
def test_bounds_word_the_end_a_value_broke() -> None:
    count = Bounds(low=1, high=100, integer=True)
    assert (count.refusal(0), count.refusal(101), count.refusal("abc")) == (
        "a positive integer", "an integer <= 100", "a positive integer")
    assert not count.contains(10**400) and not count.contains(True) and not count.contains(2.0)
    assert not Bounds(low=0, low_open=True).contains(math.nan)


def test_device_auto_is_resolved_and_said(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    assert _cli("check-env", "--device", "auto", "--root", str(tmp_path)) == 0
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert capsys.readouterr().out.splitlines()[0] == f"--device auto: {expected}"
