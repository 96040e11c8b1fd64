"""The chapter-2 pipeline end to end on real environments and real (short) SB3 training."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, TINY_EVAL

from fetchrl import metrics
from fetchrl.artifacts import (
    AGGREGATE_FIELDS,
    EpisodeRecord,
    EvalResult,
    RunPaths,
    TrainMeta,
    collect_versions,
)
from fetchrl.cli import main
from fetchrl.config import EvalConfig
from fetchrl.runtime import Runtime

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ch02_ppo_dense_reach.py"

META_FIELDS = {"created_at", "algo", "env_id", "seed", "device", "n_envs", "total_steps", "hyperparameters",
               "wall_time_s", "steps_per_second", "checkpoint", "versions"}
VERSION_KEYS = {"python", "numpy", "torch", "gymnasium", "gymnasium_robotics", "mujoco", "stable_baselines3",
                "fetchrl"}
EVAL_FIELDS = {"created_at", "algo", "env_id", "checkpoint", "device", "n_episodes", "seeds", "deterministic",
               "aggregate", "per_episode", "versions"}
EPISODE_FIELDS = {"seed", "return", "length", "success", "final_distance", "time_to_success",
                  "action_smoothness", "action_max_abs"}


def test_check_env_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-env", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == 4 and "FAIL" not in out


def test_training_writes_every_artifact_with_its_schema(tiny_run: RunPaths) -> None:
    import stable_baselines3 as sb3

    assert tiny_run.checkpoint.name == "ppo_FetchReachDense-v4_seed0.zip"
    assert tiny_run.tb_dir.as_posix().endswith("runs/ppo/FetchReachDense-v4/seed0")
    meta = json.loads(tiny_run.meta.read_text())
    assert META_FIELDS <= meta.keys()
    assert set(meta["versions"]) == VERSION_KEYS
    assert meta["hyperparameters"] == TINY.hyperparameters
    assert meta["total_steps"] == TINY.total_steps and meta["complete"] is True
    assert meta["steps_per_second"] > 0
    model = sb3.PPO.load(tiny_run.checkpoint, device="cpu")
    assert model.num_timesteps == TINY.total_steps
    assert model.n_steps == TINY.n_steps and model.batch_size == TINY.batch_size


def test_tensorboard_has_the_chapter_tags_in_exactly_the_seed_dir(tiny_run: RunPaths) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert [p.name for p in tiny_run.tb_dir.parent.iterdir()] == ["seed0"]  # no SB3 "_1" suffix
    acc = EventAccumulator(str(tiny_run.tb_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert set(metrics.REQUIRED_TAGS) <= tags, set(metrics.REQUIRED_TAGS) - tags


def test_eval_json_schema_and_aggregate_equals_per_episode_rows(tiny_run: RunPaths) -> None:
    data = json.loads(tiny_run.eval_json.read_text())
    assert EVAL_FIELDS <= data.keys()
    assert set(data["aggregate"]) == set(AGGREGATE_FIELDS)
    rows = data["per_episode"]
    assert len(rows) == data["n_episodes"] == TINY_EVAL.n_episodes
    assert all(set(r) == EPISODE_FIELDS for r in rows)
    assert [r["seed"] for r in rows] == data["seeds"] == TINY_EVAL.episode_seeds
    agg = data["aggregate"]
    assert agg["success_rate"] == pytest.approx(np.mean([r["success"] for r in rows]))
    assert agg["return_mean"] == pytest.approx(np.mean([r["return"] for r in rows]))
    assert agg["return_std"] == pytest.approx(np.std([r["return"] for r in rows]))
    assert agg["final_distance_mean"] == pytest.approx(np.mean([r["final_distance"] for r in rows]))
    assert all(r["length"] == 50 for r in rows)  # Fetch truncates at 50 steps, never terminates
    assert data["deterministic"] is True


def test_final_distance_is_the_terminal_observation_and_success_the_last_info(tiny_run: RunPaths) -> None:
    """Replay one episode by hand with the stock env and compare with the eval JSON row."""
    import gymnasium as gym
    import stable_baselines3 as sb3

    from fetchrl.tasks.envs import register_envs

    register_envs()
    row = EvalResult.from_json(tiny_run.eval_json).per_episode[0]
    model = sb3.PPO.load(tiny_run.checkpoint, device="cpu")
    env = gym.make("FetchReachDense-v4")
    obs, _ = env.reset(seed=row.seed)
    total, done = 0.0, False
    while not done:
        action, _ = model.predict(obs, deterministic=True)
        obs, reward, term, trunc, info = env.step(action)
        total += float(reward)
        done = term or trunc
    # Batched vs single-row policy inference may differ in the last float bits; a reset observation
    # mistaken for the terminal one would be off by centimetres.
    assert row.return_ == pytest.approx(total, abs=1e-5)
    assert row.final_distance == pytest.approx(float(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"])),
                                               abs=1e-6)
    assert row.success == bool(info["is_success"])


def _eval_with(successes: list[bool], returns: list[float], distances: list[float]) -> EvalResult:
    from fetchrl.artifacts import aggregate_episodes, now_iso

    eps = [EpisodeRecord(seed=1_000_000 + i, return_=r, length=50, success=s, final_distance=d,
                         time_to_success=10 if s else None, action_smoothness=0.1, action_max_abs=0.5)
           for i, (s, r, d) in enumerate(zip(successes, returns, distances, strict=True))]
    return EvalResult(now_iso(), "ppo", "FetchReachDense-v4", "x.zip", "cpu", len(eps),
                      [e.seed for e in eps], True, aggregate_episodes(eps), eps, collect_versions())


@pytest.mark.parametrize(
    ("successes", "returns", "distances", "code"),
    [
        ([True] * 4, [-0.4, -0.5, -0.3, -0.6], [0.004, 0.005, 0.003, 0.006], 0),
        ([True, True, True, False], [-0.4] * 4, [0.004] * 4, 1),  # success 75 % < 90 %
        ([True] * 4, [-12.0] * 4, [0.004] * 4, 1),  # return below -10
        ([True] * 4, [-0.4] * 4, [0.03] * 4, 1),  # success but too far on average
    ],
)
def test_report_exit_code_follows_the_three_criteria(tmp_path: Path, successes: list[bool], returns: list[float],
                                                     distances: list[float], code: int) -> None:
    paths = RunPaths("FetchReachDense-v4", 0, tmp_path)
    _eval_with(successes, returns, distances).to_json(paths.eval_json)
    assert main(["report", "--root", str(tmp_path), "--no-progress"]) == code
    text = paths.report_md.read_text()
    assert ("**Overall: PASS**" in text) == (code == 0)
    assert "zero policy" in text and "random policy" in text


def test_zero_action_baseline_passes_the_return_criterion_alone() -> None:
    """The chapter's return criterion does not discriminate: a motionless arm scores about -7."""
    from fetchrl.pipeline.evaluate import baseline_results
    from fetchrl.pipeline.report import check_criteria

    random_res, zero_res = baseline_results(Runtime.decide("FetchReachDense-v4"), EvalConfig(n_episodes=20))
    zero = {c.key: c for c in check_criteria(zero_res)}
    assert zero["return_mean"].passed and -10 < zero_res.aggregate["return_mean"] < -4
    assert not zero["success_rate"].passed and not zero["final_distance_mean"].passed
    assert not check_criteria(random_res)[0].passed


def test_eval_is_deterministic_for_a_checkpoint(tiny_run: RunPaths) -> None:
    from fetchrl.pipeline.checkpoints import load_model
    from fetchrl.pipeline.evaluate import SB3Policy, evaluate_policy

    runtime = Runtime.decide(tiny_run.env_id)
    model = load_model(tiny_run, runtime)
    a = evaluate_policy(runtime, SB3Policy(model), TINY_EVAL)
    again = evaluate_policy(runtime, SB3Policy(model), TINY_EVAL)
    assert a.aggregate == again.aggregate  # bit for bit
    assert [e.to_dict() for e in a.per_episode] == [e.to_dict() for e in again.per_episode]
    # One episode at a time instead of side by side: same episodes up to float round-off of batched matmuls.
    b = evaluate_policy(runtime, SB3Policy(model), EvalConfig(n_episodes=TINY_EVAL.n_episodes, n_envs=1))
    for key, value in a.aggregate.items():
        assert b.aggregate[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


@pytest.mark.slow
def test_multi_seed_two_seeds_aggregates_from_the_per_seed_files(tmp_path: Path) -> None:
    args = ["multi-seed", "--seeds", "2", "--root", str(tmp_path), "--no-progress", "--total-steps", "1024",
            "--n-envs", "2", "--n-steps", "256", "--batch-size", "64", "--n-eval-episodes", "4"]
    code = main(args)
    assert code in (0, 1)  # 1 = not robust (success std >= 5 %) after so few steps
    agg = json.loads((tmp_path / "results" / "ch02_ppo_reachdense_aggregate.json").read_text())
    assert agg["seeds"] == [0, 1]
    per = [EvalResult.from_json(RunPaths("FetchReachDense-v4", s, tmp_path).eval_json).aggregate for s in (0, 1)]
    for key, name in (("success_rate", "success_rate"), ("return_mean", "return"),
                      ("final_distance_mean", "final_distance")):
        values = [p[key] for p in per]
        assert agg["aggregate"][f"{name}_mean"] == pytest.approx(np.mean(values))
        assert agg["aggregate"][f"{name}_std"] == pytest.approx(np.std(values, ddof=1))
    assert [s["seed"] for s in agg["per_seed"]] == [0, 1]


def test_multi_seed_works_with_one_seed(tmp_path: Path) -> None:
    args = ["multi-seed", "--seeds", "1", "--workers", "1", "--root", str(tmp_path), "--no-progress",
            "--total-steps", "512", "--n-envs", "2", "--n-steps", "256", "--batch-size", "64",
            "--n-eval-episodes", "2"]
    assert main(args) in (0, 1)
    agg = json.loads((tmp_path / "results" / "ch02_ppo_reachdense_aggregate.json").read_text())
    assert agg["seeds"] == [0] and agg["aggregate"]["success_rate_std"] == 0.0


def test_script_is_a_thin_wrapper_that_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "eval", "--root", str(tmp_path), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "checkpoint not found" in lines[0]
    assert not (tmp_path / "results").exists()


def test_meta_round_trips_through_its_dataclass(tiny_run: RunPaths) -> None:
    meta = TrainMeta.from_json(tiny_run.meta)
    assert meta.env_id == "FetchReachDense-v4" and meta.num_timesteps == TINY.total_steps


def test_ablate_runs_exercise_2_4_in_one_command(tmp_path: Path) -> None:
    args = ["ablate", "--clip-ranges", "0.1", "0.4", "--seeds", "1", "--workers", "2", "--root", str(tmp_path),
            "--no-progress", "--total-steps", "2048", "--n-envs", "2", "--n-steps", "256", "--batch-size", "64",
            "--n-eval-episodes", "2"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "results" / "ch02_ablation_clip_range.json").read_text())
    assert [s["overrides"]["clip_range"] for s in summary["settings"]] == [0.1, 0.4]
    assert set(summary["answers"]) == {"final_performance", "stability", "clip_fraction"}
    cf = [s["training"]["clip_fraction_mean"] for s in summary["settings"]]
    assert cf[0] > cf[1]  # a tighter clip range clips more of the same-sized updates
    for s in summary["settings"]:
        per_seed = EvalResult.from_json(RunPaths("FetchReachDense-v4", 0, Path(s["root"])).eval_json).aggregate
        assert s["aggregate"]["aggregate"]["success_rate_mean"] == pytest.approx(per_seed["success_rate"])
    assert (tmp_path / "results" / "ch02_ablation_clip_range.png").stat().st_size > 10_000
