"""Chapter 3 — SAC on FetchReachDense: the chapter's script, artifacts, criteria, bad input and resume.

Real short runs (a thousand steps, 500 of them random warm-up) of the real CLI; nothing of SB3 or
MuJoCo is mocked. The resume tests compare an interrupted-and-resumed run with an uninterrupted one
bit for bit: weights, both optimisers, the entropy coefficient and its optimiser, and the replay buffer.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fetchrl.algos.sac import SAC, SACConfig
from fetchrl.artifacts import EvalResult, RunPaths, TrainMeta, read_json
from fetchrl.chapters import CH02, CH03
from fetchrl.cli import main
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.callbacks import FinalLogCallback
from fetchrl.pipeline.train import CommandLine, TrainingInterrupted, train

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ch03_sac_dense_reach.py"
ENV_ID = "FetchReachDense-v4"
#: A short run: 500 steps of random warm-up, then 250 gradient steps (2 envs, one per vector step).
SMALL_ARGS = ["--total-steps", "1000", "--learning-starts", "500", "--n-envs", "2", "--buffer-size", "5000",
              "--batch-size", "64", "--no-progress"]
#: The same run as a config, on the reference env path (plain SB3: Gymnasium-Robotics' env, DummyVecEnv).
SMALL = CH03.defaults.replace(total_steps=1000, n_envs=2, algo=SACConfig(learning_starts=500, buffer_size=5000,
                                                                          batch_size=64), fast_env=False)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(*argv: str) -> int:
    return main(list(argv), CH03)


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """One real chapter 3 run (train + 5-episode eval) through the CLI, shared read-only by the tests."""
    root = tmp_path_factory.mktemp("ch03")
    assert _cli("train", "--root", str(root), *SMALL_ARGS) == 0
    assert _cli("eval", "--root", str(root), "--n-eval-episodes", "5", "--no-progress") == 0
    return CH03.paths(ENV_ID, 0, root)


# ============================================================================ the chapter's spec
def test_chapter_3_spec() -> None:
    assert CH03.id == "ch03" and CH03.algorithm is SAC and CH03.defaults.total_steps == 500_000
    assert [(c.metric, c.op, c.threshold) for c in CH03.criteria] == [
        ("success_rate", ">=", 0.95), ("return_mean", ">", -5.0), ("final_distance_mean", "<", 0.03)]
    algo = CH03.defaults.algo
    assert isinstance(algo, SACConfig)
    assert algo.sb3_kwargs() == {"buffer_size": 1_000_000, "learning_starts": 10_000, "batch_size": 256,
                                 "learning_rate": 3e-4, "gamma": 0.99, "tau": 0.005, "ent_coef": "auto",
                                 "train_freq": 1, "gradient_steps": 1}
    assert (CH03.defaults.n_envs, algo.policy, CH03.baselines) == (8, "MultiInputPolicy", ("random", "zero"))
    assert CH03.defaults.steps_in_whole_rollouts == 500_000  # 8 transitions per update divide it


def test_log_interval_writes_about_every_thousand_steps() -> None:
    # 8 envs finish their 50-step episodes together: 16 episodes = 800 steps; 2 envs: 20 episodes = 1,000.
    assert SACConfig().learn_kwargs(8) == {"log_interval": 16}
    assert SACConfig().learn_kwargs(2) == {"log_interval": 20}
    assert SACConfig().learn_kwargs(64) == {"log_interval": 64}


@pytest.mark.parametrize("value", ["auto", "auto_0.1", 0.2, 1])
def test_ent_coef_accepts_auto_auto_init_and_positive_numbers(value: Any) -> None:
    assert SACConfig(ent_coef=value).ent_coef == value


@pytest.mark.parametrize("value", ["autox", "auto_", "auto_0", "auto_-1", "fixed", 0.0, -0.1, True])
def test_ent_coef_refuses_anything_else(value: Any) -> None:
    with pytest.raises(FetchRLError, match=r"--ent-coef must be 'auto', 'auto_<initial value>' or a number > 0"):
        SACConfig(ent_coef=value)


def test_the_fast_class_hook_falls_back_to_sb3() -> None:
    from stable_baselines3 import SAC as SB3SAC

    assert SAC.model_class(fast=False) is SB3SAC
    assert issubclass(SAC.model_class(fast=True), SB3SAC)  # FastSAC once fetchrl.algos.fastsac exists


# ============================================================================ the CLI
def test_help_lists_every_hyperparameter_flag() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "train", "--help"], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    for flag in ("--buffer-size", "--learning-starts", "--batch-size", "--learning-rate", "--gamma", "--tau",
                 "--ent-coef", "--train-freq", "--gradient-steps", "--n-envs", "--total-steps", "--resume",
                 "--checkpoint-every"):
        assert flag in out, flag
    assert "(default 500000)" in out and "(default auto)" in out and "(default 1000000)" in out
    top = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout
    for command in CH03.commands:
        assert command in top


def test_chapter_2_keeps_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"], CH02)
    out = capsys.readouterr().out
    assert "--clip-range" in out and "--buffer-size" not in out and "--ent-coef" in out


@pytest.mark.parametrize(("args", "message"), [
    (["--ent-coef", "bogus"], "argument --ent-coef: expected 'auto', 'auto_<initial value>' or a number > 0, "
                              "got 'bogus'"),
    (["--ent-coef", "auto_0"], "argument --ent-coef: expected"),
    (["--ent-coef", "-0.5"], "argument --ent-coef: expected"),
    (["--tau", "-0.1"], "argument --tau: tau must be in (0, 1], got -0.1"),
    (["--tau", "1.5"], "argument --tau: tau must be in (0, 1], got 1.5"),
    (["--gamma", "0"], "argument --gamma: gamma must be in (0, 1]"),
    (["--learning-starts", "-1"], "argument --learning-starts: expected an integer >= 0, got -1"),
    (["--buffer-size", "0"], "argument --buffer-size: expected a positive integer, got 0"),
    (["--buffer-size", "100"], "--batch-size 256 is larger than --buffer-size 100"),
    (["--buffer-size", "4", "--batch-size", "2"], "--buffer-size 4 holds less than one step of --n-envs 8"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = _cli("train", "--root", str(tmp_path), "--no-progress", *args)
    except SystemExit as exit_:  # argparse's usage errors
        code = int(exit_.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "checkpoints").exists()  # refused before anything was written


# ============================================================================ artifacts
def test_train_writes_the_chapters_artifacts(sac_run: RunPaths) -> None:
    root = sac_run.root
    assert sac_run.checkpoint == root / "checkpoints" / "sac_FetchReachDense-v4_seed0.zip"
    assert sac_run.meta == root / "checkpoints" / "sac_FetchReachDense-v4_seed0.meta.json"
    assert sac_run.eval_json == root / "results" / "ch03_sac_fetchreachdense-v4_seed0_eval.json"
    assert sac_run.tb_dir == root / "runs" / "sac" / "FetchReachDense-v4" / "seed0"
    for path in (sac_run.checkpoint, sac_run.meta, sac_run.eval_json, sac_run.replay_buffer):
        assert path.is_file(), path
    meta = TrainMeta.from_json(sac_run.meta)
    assert (meta.algo, meta.complete, meta.num_timesteps, meta.n_envs) == ("sac", True, 1000, 2)
    assert meta.hyperparameters["ent_coef"] == "auto" and meta.hyperparameters["learning_starts"] == 500


def test_checkpoint_loads_with_sb3_sac_and_its_replay_buffer(sac_run: RunPaths) -> None:
    from stable_baselines3 import SAC as SB3SAC

    model = SB3SAC.load(sac_run.checkpoint, device="cpu")
    assert model.num_timesteps == 1000 and model.batch_size == 64 and model.learning_starts == 500
    assert model.policy.net_arch == [256, 256]  # SB3's default actor and critics
    model.load_replay_buffer(sac_run.replay_buffer)  # SB3's own loader reads fetchrl's buffer file
    buffer = model.replay_buffer
    assert buffer is not None and buffer.pos == 500 and not buffer.full  # 1,000 transitions in 2 envs' rows
    first = {k: v[0] for k, v in buffer.observations.items()}  # type: ignore[union-attr]  # [n_envs, dim]
    action, _ = model.predict(first, deterministic=True)
    assert action.shape == (2, 4) and np.abs(action).max() <= 1.0


def test_sac_losses_and_entropy_coefficient_reach_tensorboard(sac_run: RunPaths) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(sac_run.tb_dir))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in (*SAC.diagnostics_tags, "train/ent_coef_loss"):
        assert tag in tags, tag
    # SB3 dumps every 20 episodes (1,000 steps with 2 envs); fetchrl writes no step twice.
    steps = [e.step for e in events.Scalars("train/actor_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 1000


def test_eval_json_has_chapter_2s_schema(sac_run: RunPaths, tiny_run: RunPaths) -> None:
    sac, ppo = read_json(sac_run.eval_json, "eval JSON"), read_json(tiny_run.eval_json, "eval JSON")
    assert sorted(sac) == sorted(ppo)
    assert sorted(sac["aggregate"]) == sorted(ppo["aggregate"])
    assert sorted(sac["per_episode"][0]) == sorted(ppo["per_episode"][0])
    result = EvalResult.from_json(sac_run.eval_json)
    assert (result.algo, result.n_episodes, result.checkpoint) == ("sac", 5, str(sac_run.checkpoint))


def test_report_checks_chapter_3s_criteria_beside_the_baselines(sac_run: RunPaths,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = _cli("report", "--root", str(sac_run.root), "--no-progress")
    out = capsys.readouterr().out
    assert code == 1  # a thousand steps does not reach the chapter's bar
    assert "Chapter 3 criteria" in out
    report = sac_run.report_md.read_text()
    assert report.startswith("# Chapter 3 report: SAC on FetchReachDense-v4")
    assert "| success rate | >= 95.0% |" in report
    assert "| mean return | > -5.00 |" in report
    assert "| final distance (m) | < 0.0300 |" in report
    assert "random policy" in report and "zero policy" in report


def test_diagnose_and_plot_read_a_sac_run(sac_run: RunPaths, capsys: pytest.CaptureFixture[str]) -> None:
    code = _cli("diagnose", "--root", str(sac_run.root), "--json")
    findings = json.loads(capsys.readouterr().out)
    assert code in (0, 1) and findings["findings"]  # SAC's rules, not PPO's missing-tag refusal (exit 2)
    assert not any("approx_kl" in json.dumps(f) for f in findings["findings"])
    assert _cli("plot", "--root", str(sac_run.root)) == 0
    assert sac_run.curves_png.stat().st_size > 0


def test_all_writes_the_html_report_with_chapter_3s_criteria(tmp_path: Path) -> None:
    code = _cli("all", "--root", str(tmp_path), *SMALL_ARGS, "--n-eval-episodes", "4", "--no-video")
    assert code == 1  # every stage ran; the policy does not pass yet
    paths = CH03.paths(ENV_ID, 0, tmp_path)
    page = paths.html_report.read_text()
    assert paths.html_report == tmp_path / "results" / "ch03_report_seed0.html"
    assert "<h1>Chapter 3 report: SAC on FetchReachDense-v4" in page
    assert "success rate &gt;= 95%, mean return &gt; -5 and mean final distance &lt; 0.03 m" in page
    assert paths.report_md.is_file() and paths.eval_json.is_file()


def test_multi_seed_aggregates_under_chapter_3s_names(tmp_path: Path) -> None:
    code = _cli("multi-seed", "--root", str(tmp_path), *SMALL_ARGS, "--seeds", "2", "--workers", "1",
                "--n-eval-episodes", "4")
    assert code in (0, 1)  # 0/1: the robustness verdict on the success rate's spread
    aggregate = read_json(tmp_path / "results" / "ch03_sac_reachdense_aggregate.json", "aggregate")
    assert aggregate["algo"] == "sac" and aggregate["seeds"] == [0, 1]
    assert aggregate["config"]["ent_coef"] == "auto" and aggregate["config"]["buffer_size"] == 5000
    for seed in (0, 1):
        paths = CH03.paths(ENV_ID, seed, tmp_path)
        assert paths.checkpoint.is_file() and paths.replay_buffer.is_file() and paths.eval_json.is_file()


# ============================================================================ resume
class _SignalAt(FinalLogCallback):
    """Sends SIGINT to this process when training reaches ``at`` steps."""

    at = 0

    def _on_step(self) -> bool:
        if self.model.num_timesteps == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return True


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    monkeypatch.setattr(_SignalAt, "at", steps)
    monkeypatch.setattr("fetchrl.pipeline.train.FinalLogCallback", _SignalAt)


def _state(paths: RunPaths) -> dict[str, Any]:
    """Everything a continuation depends on, read back from the run's files."""
    from stable_baselines3 import SAC as SB3SAC

    model = SB3SAC.load(paths.checkpoint, device="cpu")
    buffer = pickle.loads(paths.replay_buffer.read_bytes())
    return {
        "num_timesteps": model.num_timesteps,
        "policy": model.policy.state_dict(),  # actor, critics and target critics
        "actor_opt": model.actor.optimizer.state_dict(),
        "critic_opt": model.critic.optimizer.state_dict(),
        "log_ent_coef": model.log_ent_coef.detach().clone(),
        "ent_opt": model.ent_coef_optimizer.state_dict(),  # type: ignore[union-attr]
        "buffer": (buffer.pos, buffer.full, buffer.observations, buffer.next_observations, buffer.actions,
                   buffer.rewards, buffer.dones, buffer.timeouts),
    }


def _assert_equal(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """SMALL trained without interruption."""
    paths = CH03.paths(ENV_ID, 0, tmp_path_factory.mktemp("reference"))
    train(SMALL, paths, progress=False)
    return paths


def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(reference: RunPaths, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    paths = CH03.paths(ENV_ID, 0, tmp_path)
    # First stop during the random warm-up (the model's action-space generator must carry over), then after
    # learning started (replay buffer, optimisers, entropy coefficient).
    for signalled in (200, 700):
        _interrupt_at(monkeypatch, signalled)
        with pytest.raises(TrainingInterrupted, match="resume with: .*ch03_sac_dense_reach.py train --resume"):
            train(SMALL, paths, progress=False, resume=paths.checkpoint.is_file(),
                  command=CommandLine(CH03.script, CH03.defaults))
        monkeypatch.undo()
        meta = TrainMeta.from_json(paths.meta)
        # The step the signal came at is stored; the boundary after it is saved, the step after it dropped.
        assert (meta.complete, meta.num_timesteps) == (False, signalled)
        assert _state(paths)["buffer"][0] == signalled // 2  # rows of 2 envs' transitions
    meta = train(SMALL, paths, progress=False, resume=True)
    assert meta.complete and meta.num_timesteps == 1000
    _assert_equal(_state(reference), _state(paths))


def test_resume_is_bit_exact_on_the_fast_path_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default path (fetchrl's env in the process VecEnv, FastSAC when present): one stop after
    learning started, resumed, equals the uninterrupted run."""
    fast = SMALL.replace(fast_env=True, total_steps=800)
    reference = CH03.paths(ENV_ID, 0, tmp_path / "reference")
    train(fast, reference, progress=False)
    paths = CH03.paths(ENV_ID, 0, tmp_path / "resumed")
    _interrupt_at(monkeypatch, 600)
    with pytest.raises(TrainingInterrupted):
        train(fast, paths, progress=False)
    monkeypatch.undo()
    assert TrainMeta.from_json(paths.meta).num_timesteps == 600
    train(fast, paths, progress=False, resume=True)
    _assert_equal(_state(reference), _state(paths))


def test_every_checkpoint_names_the_replay_buffer_written_with_it(tmp_path: Path) -> None:
    import hashlib
    import zipfile

    from fetchrl.pipeline.checkpoints import REPLAY_MEMBER

    paths = CH03.paths(ENV_ID, 0, tmp_path)
    written: list[tuple[int, int, bool]] = []
    original = TrainMeta.to_json

    def record(self: TrainMeta, path: Path) -> None:  # called right after the zip is committed
        with zipfile.ZipFile(paths.checkpoint) as zf:
            digest = zf.read(REPLAY_MEMBER).decode()
        buffer = paths.replay_buffer.read_bytes()
        written.append((self.num_timesteps, pickle.loads(buffer).pos, hashlib.sha256(buffer).hexdigest() == digest))
        original(self, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TrainMeta, "to_json", record)
        train(SMALL.replace(total_steps=600), paths, progress=False, checkpoint_every=250)
    assert written == [(250, 125, True), (500, 250, True), (600, 300, True)]


def test_resume_refuses_without_its_replay_buffer(sac_run: RunPaths, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    resume_args = [a if a != "1000" else "1200" for a in SMALL_ARGS]  # further than the finished run
    root = tmp_path / "copy"
    shutil.copytree(sac_run.root / "checkpoints", root / "checkpoints")
    paths = CH03.paths(ENV_ID, 0, root)
    paths.replay_buffer.write_bytes(b"another buffer")
    code = _cli("train", "--root", str(root), *resume_args, "--resume")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"the replay buffer {paths.replay_buffer} belongs to another checkpoint" in err
    paths.replay_buffer.unlink()
    code = _cli("train", "--root", str(root), *resume_args, "--resume")
    assert code == 2 and "cannot be read" in capsys.readouterr().err
    assert json.loads(paths.meta.read_text())["num_timesteps"] == 1000  # nothing was touched
