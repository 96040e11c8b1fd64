"""Chapter 4 — resume is bit-exact with the HER replay buffer (issue 17, "Reliability").

A HER buffer holds more than a plain one: every transition's episode (``ep_start``/``ep_length``) and,
per env, where the episode in flight began (``_current_ep_start``). A checkpoint taken mid-episode
must continue that episode — the envs are restored, so SB3's ``load_replay_buffer`` is told not to
close it as truncated (``truncate_last_traj=not env_restored`` in ``fetchrl.pipeline.checkpoints``) —
and the continuation must equal the uninterrupted run: weights, target critics, the three optimisers,
the entropy coefficient and the whole replay buffer, episode bookkeeping included.

Real short runs of chapter 4's HER arm on sparse FetchReach-v4 (2 envs, 200 random steps, a 1,000-
transition buffer that wraps around, batch 64); checkpoints land 25 steps into an episode (rows of 2
envs: 450 steps = 225 rows, episodes are 50 rows). Interrupted in this process (SIGINT, both env
paths), by SIGTERM to a real training process, and by kill -9 after ``--checkpoint-every``.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fetchrl import metrics
from fetchrl.artifacts import RunPaths, TrainMeta
from fetchrl.chapters.ch04 import CHAPTER
from fetchrl.cli import main
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.callbacks import FinalLogCallback

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ch04_her_sparse_reach_push.py"
ENV_ID = "FetchReach-v4"
#: 2 envs, 200 random steps, a buffer of 500 rows per env (wraps after 1,000 steps), batch 64.
SMALL_ARGS = ["--her", "--env", ENV_ID, "--n-envs", "2", "--learning-starts", "200", "--buffer-size", "1000",
              "--batch-size", "64", "--no-progress"]
#: Mid-episode: 450 steps of 2 envs = 225 rows, 25 rows into the 5th episode.
EVERY = 450
TOTAL = 1300

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(root: Path, total: int, *extra: str) -> int:
    return main(["train", "--root", str(root), *SMALL_ARGS, "--total-steps", str(total), *extra], CHAPTER)


def _paths(root: Path) -> RunPaths:
    return CHAPTER.paths(ENV_ID, 0, root)


def _state(paths: RunPaths) -> dict[str, Any]:
    """Everything a continuation depends on, read back from the run's files."""
    from stable_baselines3 import SAC as SB3SAC

    # SB3's load builds a HerReplayBuffer, which needs an env; the buffer is read from its own file below
    model = SB3SAC.load(paths.checkpoint, device="cpu",
                        custom_objects={"replay_buffer_class": None, "replay_buffer_kwargs": {}})
    buffer = pickle.loads(paths.replay_buffer.read_bytes())
    her = {name: getattr(buffer, name) for name in ("ep_start", "ep_length", "_current_ep_start", "n_sampled_goal",
                                                    "goal_selection_strategy")}
    if hasattr(buffer, "obs"):  # FlatHerReplayBuffer (fast path)
        stored = {name: getattr(buffer, name) for name in ("obs", "next_obs", "next_achieved")}
    else:  # SB3's HerReplayBuffer (reference path)
        stored = {"obs": buffer.observations, "next_obs": buffer.next_observations}
    return {
        "num_timesteps": model.num_timesteps,
        "n_updates": model._n_updates,
        "policy": model.policy.state_dict(),  # actor, critics and target critics
        "actor_opt": model.actor.optimizer.state_dict(),
        "critic_opt": model.critic.optimizer.state_dict(),
        "log_ent_coef": model.log_ent_coef.detach().clone(),
        "ent_opt": model.ent_coef_optimizer.state_dict(),  # type: ignore[union-attr]
        "buffer": {"type": type(buffer).__name__, "pos": buffer.pos, "full": buffer.full, **her, **stored,
                   **{n: getattr(buffer, n) for n in ("actions", "rewards", "dones", "timeouts")}},
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


def _assert_mid_episode(paths: RunPaths, steps: int) -> None:
    """The checkpoint at ``steps`` holds episodes in flight: rows past the last finished episode."""
    buffer = pickle.loads(paths.replay_buffer.read_bytes())
    assert buffer.pos == (steps // 2) % buffer.buffer_size
    assert (steps // 2) % 50 != 0 and (buffer._current_ep_start != buffer.pos).all()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """The fast path's run of TOTAL steps without interruption."""
    root = tmp_path_factory.mktemp("reference")
    assert _train(root, TOTAL) == 0
    state = _state(_paths(root))
    buffer = state["buffer"]
    assert buffer["type"] == "FlatHerReplayBuffer" and buffer["full"] and state["n_updates"] > 0
    return _paths(root)


# ============================================================================ in this process
class _SignalAt(FinalLogCallback):
    """Sends SIGINT to this process when training reaches ``at`` steps."""

    at = 0

    def _on_step(self) -> bool:
        if self.model.num_timesteps == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return True


@pytest.mark.parametrize("fast", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["fast-path", "reference-path"])  # the reference path trains its own reference: 40 s
def test_interrupted_mid_episode_and_resumed_equals_the_uninterrupted_run(
        fast: bool, reference: RunPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopped twice (during the random warm-up, then after updates started), each time mid-episode."""
    extra = () if fast else ("--reference-env",)
    expected = reference
    if not fast:
        expected = _paths(tmp_path / "reference")
        assert _train(expected.root, TOTAL, *extra) == 0
    paths = _paths(tmp_path / "resumed")
    for signalled in (150, EVERY):
        monkeypatch.setattr(_SignalAt, "at", signalled)
        monkeypatch.setattr("fetchrl.pipeline.train.FinalLogCallback", _SignalAt)
        resume = ("--resume",) if paths.checkpoint.is_file() else ()
        assert _train(paths.root, TOTAL, *extra, *resume) == 130
        monkeypatch.undo()
        meta = TrainMeta.from_json(paths.meta)
        assert (meta.complete, meta.num_timesteps) == (False, signalled)
        _assert_mid_episode(paths, signalled)
    assert _train(paths.root, TOTAL, *extra, "--resume") == 0
    assert TrainMeta.from_json(paths.meta).complete
    _assert_equal(_state(expected), _state(paths))


# ============================================================================ a real training process
def _start(root: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(SCRIPT), "train", "--root", str(root), *SMALL_ARGS, "--total-steps", "1000000",
           "--checkpoint-every", str(EVERY)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _meta_steps(paths: RunPaths) -> int:
    try:
        return TrainMeta.from_json(paths.meta).num_timesteps
    except FetchRLError:
        return -1


def _wait_for_checkpoint(proc: subprocess.Popen[str], paths: RunPaths, steps: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while _meta_steps(paths) < steps:
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint in time")
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGTERM, marks=pytest.mark.slow), signal.SIGKILL],
                         ids=["SIGTERM", "kill-9"])
def test_a_stopped_training_process_resumes_to_the_uninterrupted_run(
        sig: int, reference: RunPaths, tmp_path: Path) -> None:
    """SIGTERM: exit 143 with a checkpoint at the step it came at; kill -9: the last --checkpoint-every
    checkpoint (a multiple of 450 steps: mid-episode). Either resumes to the reference bit for bit.

    ``communicate`` reads the stopped process's pipes to the end: after kill -9 that also needs its env
    worker (which inherited them) to exit, although the killed process is an unreaped zombie then."""
    paths = _paths(tmp_path)
    proc = _start(tmp_path)
    _wait_for_checkpoint(proc, paths, EVERY)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the stopped training process or its env worker did not exit (the worker holds its pipes)")
    saved = TrainMeta.from_json(paths.meta).num_timesteps
    if sig == signal.SIGTERM:
        assert proc.returncode == 143 and "Traceback" not in err, err[-2000:]
        assert TrainMeta.from_json(paths.meta).stop_reason == "interrupted by SIGTERM"
        assert saved >= EVERY
    else:
        assert proc.returncode == -signal.SIGKILL
        assert saved >= EVERY and saved % EVERY == 0
    if (saved // 2) % 50:
        _assert_mid_episode(paths, saved)
    total = TOTAL if saved < TOTAL else saved + EVERY
    expected = reference
    if total != TOTAL:  # the process ran past the reference's length before the signal: a longer one
        expected = _paths(tmp_path / "reference")
        assert _train(expected.root, total) == 0
    assert _train(tmp_path, total, "--resume") == 0
    assert TrainMeta.from_json(paths.meta).complete
    _assert_equal(_state(expected), _state(paths))


# ============================================================================ overlap
def test_updates_made_while_the_envs_step_train_and_log_what_turn_taking_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overlap_calls: list[bool]) -> None:
    """Through the pipeline (its VecEnv with every env in the worker, its callbacks: snapshots, progress,
    SAC and HER diagnostics): a run whose updates are mostly made while the envs step equals the same run
    with env steps and updates in turn (``FastSAC.overlaps_env_steps`` off: the envs split between the two
    processes, as before) -- checkpoint, optimisers, replay buffer and every TensorBoard curve but time/*."""
    from fetchrl.algos.fastsac import FastSAC
    from fetchrl.analysis.tbreader import read_scalars

    calls = overlap_calls
    overlapped, in_turn = tmp_path / "overlapped", tmp_path / "in_turn"
    assert _train(overlapped, TOTAL) == 0
    made_while_stepping = calls.count(True)
    assert made_while_stepping > len(calls) // 2, calls
    monkeypatch.setattr(FastSAC, "overlaps_env_steps", False)
    assert _train(in_turn, TOTAL) == 0
    assert calls.count(True) == made_while_stepping  # none in the second run
    _assert_equal(_state(_paths(overlapped)), _state(_paths(in_turn)))
    curves = [{tag: series for tag, series in read_scalars(_paths(root).tb_dir, None).items()
               if not tag.startswith("time/")} for root in (overlapped, in_turn)]
    assert curves[0].keys() == curves[1].keys()
    assert {"train/actor_loss", metrics.Q1_MEAN, metrics.HER_RELABELED_REWARD0} <= curves[0].keys(), sorted(curves[0])
    for tag, series in curves[0].items():
        assert np.array_equal(series.steps, curves[1][tag].steps), tag
        assert np.array_equal(series.values, curves[1][tag].values, equal_nan=True), tag
