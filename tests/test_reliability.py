"""Issue 7's promises, each with a test that fails when the promise breaks.

- interrupt: SIGINT/SIGTERM to a real training process -> exit 130/143 within seconds, an incomplete
  checkpoint, a printed resume command; a second signal exits at once without corrupting anything;
- resume: continues to --total-steps and equals the uninterrupted run bit for bit (policy and
  optimiser state_dicts, and the TensorBoard curves); kill -9 loses at most one checkpoint interval;
  a mismatched checkpoint is refused unless --force;
- artifacts: writes are atomic; truncated or corrupt files are named on load; checkpoints of another
  task are refused;
- determinism: eval JSON and --deterministic training repeat bit for bit;
- sweeps skip complete seeds; incompatible dependencies are reported with the fix.

Training runs are tiny (2 envs x 128 steps per rollout, 1,024 steps) on the reference env path
(Gymnasium-Robotics' env in SB3's DummyVecEnv; one test covers the fast path) and use one torch
thread, in this process and in the subprocesses alike, so both compute the same bits.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes.util
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from fetchrl.artifacts import EvalResult, RunPaths, TrainMeta, atomic_path, collect_versions, read_json
from fetchrl.cli import main
from fetchrl.config import EvalConfig, TrainConfig
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.callbacks import StopFlagCallback
from fetchrl.pipeline.checkpoints import load_model, plan_resume
from fetchrl.pipeline.resume import META_MEMBER, STATE_MEMBER, truncate_event_files
from fetchrl.pipeline.setup import runtime_for
from fetchrl.pipeline.train import TrainingInterrupted, train, train_or_resume
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs
from fetchrl.vecenv import factory

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ch02_ppo_dense_reach.py"
#: The reference env path (Gymnasium-Robotics' own env in SB3's DummyVecEnv): resume is bit-exact on it.
SMALL = TrainConfig(total_steps=1024, n_envs=2, n_steps=128, batch_size=64, n_epochs=2, seed=0, fast_env=False)
#: Its runtime: the reference path (plain SB3), one decision for every call below.
RUNTIME = runtime_for(SMALL)
SMALL_ARGS = ["--reference-env", "--n-envs", "2", "--n-steps", "128", "--batch-size", "64", "--n-epochs", "2"]
ROLLOUT = SMALL.rollout_size  # 256 steps
#: Generous bound for "exits within a few seconds" on a loaded 2-core CI machine (typically < 1 s).
EXIT_WITHIN_S = 15.0


# ============================================================================ helpers
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start_training(root: Path, *extra: str, total: int = 1_000_000) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(SCRIPT), "train", "--no-progress", "--root", str(root), *SMALL_ARGS,
           "--total-steps", str(total), "--checkpoint-every", str(ROLLOUT), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env(),
                            cwd=REPO)


def _wait_until(proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 180.0) -> None:
    """Poll (not sleep blindly) until ``ready()``; fail with the process's stderr if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("training did not start in time")
        time.sleep(0.02)


def _meta_steps(paths: RunPaths) -> int:
    try:
        return TrainMeta.from_json(paths.meta).num_timesteps
    except FetchRLError:
        return -1


def _stop(proc: subprocess.Popen[str], *signals: int) -> tuple[int, str, float]:
    """Send ``signals`` and wait; returns (exit code, stderr, seconds from the first signal to exit)."""
    t0 = time.monotonic()
    for sig in signals:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("training did not stop after the signal")
    return proc.returncode, err, time.monotonic() - t0


def _equal(a: Any, b: Any) -> bool:
    """Deep equality where tensors must be bit-identical (torch.equal)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _load(paths: RunPaths) -> Any:
    from stable_baselines3 import PPO

    return PPO.load(paths.checkpoint, device="cpu")


def assert_same_training(a: RunPaths, b: RunPaths) -> None:
    """Both checkpoints hold bit-identical policy and optimiser state_dicts and counters."""
    m1, m2 = _load(a), _load(b)
    assert m1.num_timesteps == m2.num_timesteps
    assert m1._n_updates == m2._n_updates
    p1, p2 = m1.policy.state_dict(), m2.policy.state_dict()
    assert p1.keys() == p2.keys()
    different = [k for k in p1 if not torch.equal(p1[k], p2[k])]
    assert not different, f"policy tensors differ: {different}"
    assert _equal(m1.policy.optimizer.state_dict(), m2.policy.optimizer.state_dict()), "optimiser state differs"


def tb_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in ``tb_dir``'s event files, per tag, in file order (files are named by time)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                value = v.simple_value if v.HasField("simple_value") else float(v.tensor.float_val[0])
                out.setdefault(v.tag, []).append((event.step, value))
    return out


def assert_same_curves(reference: Path, resumed: Path) -> None:
    """Same tags at the same, strictly increasing steps; same values except wall-clock ones (time/*)."""
    ref, got = tb_scalars(reference), tb_scalars(resumed)
    assert ref.keys() == got.keys()
    for tag, series in got.items():
        steps = [s for s, _ in series]
        assert steps == sorted(set(steps)), f"{tag}: steps not strictly increasing across event files: {steps}"
        assert steps == [s for s, _ in ref[tag]], tag
        if not tag.startswith("time/"):
            assert series == ref[tag], tag


def _count_opens(monkeypatch: pytest.MonkeyPatch, path: Path) -> list[str]:
    """The mode of every opening of ``path`` from now on (``io.open``: how pathlib and zipfile open files)."""
    import builtins
    import io

    real = io.open
    opened: list[str] = []

    def counting(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | os.PathLike) and Path(file) == path:
            opened.append(mode)
        return real(file, mode, *args, **kwargs)

    monkeypatch.setattr(io, "open", counting)
    monkeypatch.setattr(builtins, "open", counting)
    return opened


def _copy_run(src: RunPaths, root: Path) -> RunPaths:
    shutil.copytree(src.root, root, dirs_exist_ok=True)
    return RunPaths(src.env_id, src.seed, root)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """The uninterrupted run every resumed run must equal. Read-only: copy it before changing it."""
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path_factory.mktemp("reference"))
    train(SMALL, paths, progress=False)
    return paths


def _reference_to(steps: int, reference: RunPaths, tmp_path: Path) -> RunPaths:
    """The reference run, or (if a subprocess ran past it) a fresh uninterrupted run to ``steps``."""
    if steps == SMALL.total_steps:
        return reference
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path / f"reference{steps}")
    train(SMALL.replace(total_steps=steps), paths, progress=False)
    return paths


class _SignalAt(StopFlagCallback):
    """Sends ``sig`` to this process when training reaches ``at`` steps (mid-rollout)."""

    at = 0
    sig = signal.SIGINT

    def _on_step(self) -> bool:
        if self.model.num_timesteps == self.at:
            os.kill(os.getpid(), self.sig)
        return super()._on_step()


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, steps: int, sig: int = signal.SIGINT) -> None:
    monkeypatch.setattr(_SignalAt, "at", steps)
    monkeypatch.setattr(_SignalAt, "sig", sig)
    monkeypatch.setattr("fetchrl.pipeline.train.StopFlagCallback", _SignalAt)


# ============================================================================ interrupt and resume
def test_resume_from_a_complete_checkpoint_is_bit_exact(reference: RunPaths, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path)
    half = train(SMALL.replace(total_steps=2 * ROLLOUT), paths, progress=False)
    assert half.complete and half.num_timesteps == 2 * ROLLOUT
    opened = _count_opens(monkeypatch, paths.checkpoint)
    meta = train(SMALL, paths, progress=False, resume=True)
    assert opened == ["rb"]  # read once: validated, checked, its state unpickled and the model loaded from it
    monkeypatch.undo()
    assert meta.complete and meta.num_timesteps == SMALL.total_steps
    assert_same_training(reference, paths)
    assert_same_curves(reference.tb_dir, paths.tb_dir)


def test_interrupt_mid_rollout_saves_the_last_boundary_and_resumes_bit_exact(
        reference: RunPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path)
    _interrupt_at(monkeypatch, 2 * ROLLOUT + 128)  # halfway through the third rollout
    with pytest.raises(TrainingInterrupted, match="resume with: .*train --resume") as err:
        train(SMALL, paths, progress=False)
    assert err.value.exit_code == 130
    meta = TrainMeta.from_json(paths.meta)
    assert (meta.complete, meta.num_timesteps, meta.stop_reason) == (False, 2 * ROLLOUT, "interrupted by SIGINT")
    assert _load(paths).num_timesteps == 2 * ROLLOUT  # the boundary, not the step the signal came at
    monkeypatch.undo()
    train(SMALL, paths, progress=False, resume=True)
    assert_same_training(reference, paths)
    assert_same_curves(reference.tb_dir, paths.tb_dir)


def test_sigterm_in_process_exits_143(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path)
    _interrupt_at(monkeypatch, 64, signal.SIGTERM)  # during the first rollout: boundary 0 is saved
    with pytest.raises(TrainingInterrupted) as err:
        train(SMALL, paths, progress=False)
    assert err.value.exit_code == 143
    meta = TrainMeta.from_json(paths.meta)
    assert (meta.complete, meta.num_timesteps, meta.stop_reason) == (False, 0, "interrupted by SIGTERM")


def test_resume_is_bit_exact_on_the_fast_env_path(tmp_path: Path) -> None:
    """The default path: the process VecEnv, captured through its get_state()/set_state()."""
    fast = SMALL.replace(fast_env=True)
    reference = RunPaths(fast.env_id, fast.seed, tmp_path / "reference")
    train(fast, reference, progress=False)
    paths = RunPaths(fast.env_id, fast.seed, tmp_path / "resumed")
    train(fast.replace(total_steps=2 * ROLLOUT), paths, progress=False)
    train(fast, paths, progress=False, resume=True)
    assert_same_training(reference, paths)


def _vec_env(kind: str) -> Any:
    """``vec``: the fast path's process VecEnv; ``wrappers``: the reference path's DummyVecEnv."""
    return factory.make_vec_env(Runtime.decide(SMALL.env_id, reference_env=kind == "wrappers"), 2, seed=3)


@pytest.mark.parametrize("kind", ["wrappers", "vec"])
def test_env_state_round_trips_into_a_fresh_vec_env(kind: str) -> None:
    """Captured mid-episode, restored into a new VecEnv: the next 60 steps (an episode end and an
    autoreset with a new goal included) are bit-identical."""
    import numpy as np

    from fetchrl.pipeline.resume import capture_vec_env, restore_vec_env

    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, size=(90, 2, 4)).astype(np.float32)
    first, second = _vec_env(kind), _vec_env(kind)
    try:
        first.reset()
        for a in actions[:30]:
            first.step(a)
        saved = capture_vec_env(first)
        assert saved is not None and saved["kind"] == kind
        assert restore_vec_env(second, saved) is None
        ended = 0
        for a in actions[30:]:
            o1, r1, d1, i1 = first.step(a)
            o2, r2, d2, i2 = second.step(a)
            assert all(np.array_equal(o1[k], o2[k]) for k in o1)
            assert np.array_equal(r1, r2) and np.array_equal(d1, d2)
            assert [i.get("episode", {}).get("r") for i in i1] == [i.get("episode", {}).get("r") for i in i2]
            ended += int(d1.sum())
        assert ended == 2  # each env truncated at step 50 and was reset with a new goal
    finally:
        first.close()
        second.close()


def test_checkpoint_without_resume_state_resumes_but_warns_it_is_not_exact(
        reference: RunPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What plain SB3 resume gives (no RNG or simulator state): it runs, and it differs. This also
    shows the bit-exact tests above can fail."""
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path)
    train(SMALL.replace(total_steps=2 * ROLLOUT), paths, progress=False)
    _rewrite_zip(paths.checkpoint, drop=STATE_MEMBER)
    train(SMALL, paths, progress=False, resume=True)
    assert "not bit-exact: the checkpoint holds no resume state" in capsys.readouterr().err
    with pytest.raises(AssertionError, match="differ"):
        assert_same_training(reference, paths)


def _rewrite_zip(path: Path, *, drop: str | None = None, replace: dict[str, bytes] | None = None) -> None:
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if n != drop}
    members.update(replace or {})
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_a_real_training_process(sig: int, reference: RunPaths, tmp_path: Path) -> None:
    """A real process: exit 130/143 within seconds, incomplete meta, a resume command that works."""
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path)
    proc = _start_training(tmp_path)
    _wait_until(proc, lambda: _meta_steps(paths) >= ROLLOUT)  # training has started: first checkpoint is out
    code, err, seconds = _stop(proc, sig)
    assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err
    assert seconds < EXIT_WITHIN_S
    assert "Traceback" not in err
    meta = TrainMeta.from_json(paths.meta)
    assert not meta.complete and meta.stop_reason == f"interrupted by {signal.Signals(sig).name}"
    assert meta.num_timesteps % ROLLOUT == 0 and meta.num_timesteps >= ROLLOUT
    assert _load(paths).num_timesteps == meta.num_timesteps
    if sig != signal.SIGINT:
        return
    # The printed command resumes (here with a smaller --total-steps, to keep the test short).
    command = shlex.split(err.split("resume with: ")[1].splitlines()[0])
    assert command[:4] == ["python", "scripts/ch02_ppo_dense_reach.py", "train", "--resume"]
    total = max(SMALL.total_steps, meta.num_timesteps + ROLLOUT)
    argv = command[2:]
    argv[argv.index("--total-steps") + 1] = str(total)
    assert main([*argv, "--no-progress"]) == 0
    assert TrainMeta.from_json(paths.meta).complete
    expected = _reference_to(total, reference, tmp_path)
    assert_same_training(expected, paths)
    assert_same_curves(expected.tb_dir, paths.tb_dir)


def test_second_signal_exits_at_once_without_corrupting_anything(tmp_path: Path) -> None:
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path)
    proc = _start_training(tmp_path)
    _wait_until(proc, lambda: _meta_steps(paths) >= ROLLOUT)
    code, err, seconds = _stop(proc, signal.SIGINT, signal.SIGINT)
    assert code == 130, err
    assert seconds < EXIT_WITHIN_S
    assert "Traceback" not in err
    # Whatever the second signal interrupted, what is on disk is whole and loadable (the meta JSON
    # beside the zip may be one checkpoint behind it, never ahead).
    assert TrainMeta.from_json(paths.meta).num_timesteps <= load_model(paths, RUNTIME).num_timesteps
    assert not list(paths.checkpoint.parent.glob(".*tmp*")), "a temp file was left behind"


def test_sigint_stops_the_all_command(tmp_path: Path) -> None:
    """`all` trains in-process: the same stop, then no eval/report/video of a half-trained policy."""
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path)
    cmd = [sys.executable, str(SCRIPT), "all", "--no-progress", "--no-video", "--root", str(tmp_path), *SMALL_ARGS,
           "--total-steps", "1000000", "--n-eval-episodes", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env(),
                            cwd=REPO)
    _wait_until(proc, lambda: any(paths.tb_dir.glob("events.*")))
    code, err, seconds = _stop(proc, signal.SIGINT)
    assert code == 130 and seconds < EXIT_WITHIN_S, err
    assert "resume with: " in err and "Traceback" not in err
    assert not TrainMeta.from_json(paths.meta).complete
    assert not paths.eval_json.exists()


def test_a_second_signal_raises_system_exit_at_once() -> None:
    from fetchrl.pipeline.train import StopRequest

    stop = StopRequest()
    stop._handle(signal.SIGINT, None)
    assert stop()
    with pytest.raises(SystemExit) as exc:
        stop._handle(signal.SIGINT, None)
    assert exc.value.code == 130


def test_kill_9_loses_at_most_one_checkpoint_interval(reference: RunPaths, tmp_path: Path) -> None:
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path)
    proc = _start_training(tmp_path)
    _wait_until(proc, lambda: _meta_steps(paths) >= 2 * ROLLOUT)
    proc.kill()
    proc.communicate()
    saved = _load(paths).num_timesteps
    assert saved >= 2 * ROLLOUT and saved % ROLLOUT == 0
    total = max(SMALL.total_steps, saved + ROLLOUT)
    meta = train(SMALL.replace(total_steps=total), paths, progress=False, resume=True)
    assert meta.complete
    assert not list(paths.checkpoint.parent.glob(".*tmp*"))
    expected = _reference_to(total, reference, tmp_path)
    assert_same_training(expected, paths)
    assert_same_curves(expected.tb_dir, paths.tb_dir)  # events logged after the checkpoint were dropped




#: Steps of the multi-seed reruns below: longer than where the killed sweeps are stopped (~2 rollouts).
SWEEP_TOTAL = 2 * SMALL.total_steps


def _multi_seed(root: Path, total: int, *extra: str) -> list[str]:
    return ["multi-seed", "--seeds", "1", "--workers", "1", "--no-progress", "--root", str(root), *SMALL_ARGS,
            "--total-steps", str(total), "--n-eval-episodes", "2", *extra]


@pytest.fixture(scope="module")
def sweep_reference(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """An uninterrupted multi-seed of SWEEP_TOTAL steps: what a killed sweep's rerun must equal (its worker
    sets its own torch threads, so the reference runs through the same command)."""
    root = tmp_path_factory.mktemp("sweep_reference")
    assert main(_multi_seed(root, SWEEP_TOTAL)) in (0, 1)  # one seed: no robustness verdict either way
    return RunPaths(SMALL.env_id, SMALL.seed, root)


def _process_tree(pid: int) -> list[int]:
    """``pid`` and every process descending from it (read from /proc), parents first."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        out.append(todo.pop(0))
        todo.extend(children.get(out[-1], []))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _start_multi_seed(root: Path) -> subprocess.Popen[str]:
    """A multi-seed far longer than the test waits, checkpointing every rollout; its own session."""
    return subprocess.Popen([sys.executable, str(SCRIPT), *_multi_seed(root, 1_000_000, "--checkpoint-every",
                                                                       str(ROLLOUT))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env(),
                            cwd=REPO, start_new_session=True)


def _rerun_equals_the_uninterrupted_sweep(root: Path, reference: RunPaths) -> None:
    paths = RunPaths(SMALL.env_id, SMALL.seed, root)
    assert main(_multi_seed(root, SWEEP_TOTAL)) in (0, 1)
    assert TrainMeta.from_json(paths.meta).complete and EvalResult.from_json(paths.eval_json).n_episodes == 2
    assert_same_training(reference, paths)
    assert_same_curves(reference.tb_dir, paths.tb_dir)


def test_a_sweep_killed_outright_continues_from_its_last_periodic_checkpoint(
        sweep_reference: RunPaths, tmp_path: Path) -> None:
    """multi-seed --checkpoint-every, then kill -9 to the driver and its worker at once (a closed session, the
    OOM killer): the last periodic checkpoint is all that is left, and the rerun continues from it, bit-exact."""
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path)
    proc = _start_multi_seed(tmp_path)
    try:
        _wait_until(proc, lambda: _meta_steps(paths) >= 2 * ROLLOUT)
    finally:
        for pid in reversed(_process_tree(proc.pid)):  # the worker first: no time to save anything
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()
    meta = TrainMeta.from_json(paths.meta)
    assert meta.stop_reason == "in progress (periodic checkpoint)" and not meta.complete
    assert 2 * ROLLOUT <= meta.num_timesteps < SWEEP_TOTAL and meta.num_timesteps % ROLLOUT == 0
    _rerun_equals_the_uninterrupted_sweep(tmp_path, sweep_reference)


def test_a_sweep_whose_driver_is_killed_saves_and_leaves_no_worker_behind(
        sweep_reference: RunPaths, tmp_path: Path) -> None:
    """kill -9 to the driver alone: its worker notices, saves an incomplete checkpoint and exits (before the
    fix it then waited for a next task forever, holding the driver's stdout); the rerun continues it."""
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path)
    proc = _start_multi_seed(tmp_path)
    try:
        _wait_until(proc, lambda: _meta_steps(paths) >= ROLLOUT)
        tree = _process_tree(proc.pid)
        proc.kill()
        proc.communicate(timeout=60)  # returns once no process holds the pipes: the worker exited
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in tree[1:]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in tree[1:] if _alive(pid)]
    meta = TrainMeta.from_json(paths.meta)
    assert meta.stop_reason == "interrupted by SIGTERM" and not meta.complete
    assert meta.num_timesteps < SWEEP_TOTAL
    _rerun_equals_the_uninterrupted_sweep(tmp_path, sweep_reference)

def test_checkpoint_every_is_refused_with_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Ray task ships its run back only when it ends: a periodic checkpoint there would be a false promise."""
    assert main(["multi-seed", "--backend", "ray", "--checkpoint-every", "1000", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--checkpoint-every needs --backend local" in err
    assert not any(tmp_path.iterdir())

def test_event_files_are_truncated_to_the_checkpoint(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(1, 6):
        writer.add_scalar("rollout/ep_rew_mean", float(step), step)
    writer.close()
    event_file = next(tmp_path.glob("events.out.tfevents.*"))
    with open(event_file, "ab") as fh:  # a record torn by kill -9
        fh.write(b"\x10\x00\x00\x00\x00\x00\x00\x00\x01\x02")
    assert truncate_event_files(tmp_path, 3) == 2
    assert tb_scalars(tmp_path) == {"rollout/ep_rew_mean": [(1, 1.0), (2, 2.0), (3, 3.0)]}


def test_resume_refuses_a_mismatched_checkpoint_unless_forced(
        reference: RunPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    paths = _copy_run(reference, tmp_path)
    more = SMALL.replace(total_steps=SMALL.total_steps + ROLLOUT)
    with pytest.raises(FetchRLError, match=r"refusing to resume .*seed0\.zip: clip_range 0\.2 != 0\.3 .*--force"):
        plan_resume(more.replace(clip_range=0.3), paths)
    monkeypatch.setattr("fetchrl.pipeline.checkpoints.collect_versions", lambda: {**collect_versions(), "mujoco": "9.9.9"})
    with pytest.raises(FetchRLError, match=r"mujoco 3\.11\.0 != 9\.9\.9"):
        plan_resume(more, paths)
    monkeypatch.undo()
    with pytest.raises(FetchRLError, match="already has 1024 steps >= --total-steps 1024"):
        plan_resume(SMALL, paths, force=True)
    # Through the CLI: one line, exit 2; then --force resumes (warning that it is not bit-exact).
    args = ["train", "--root", str(tmp_path), "--no-progress", *SMALL_ARGS, "--total-steps", str(more.total_steps),
            "--resume"]
    assert main([*args, "--learning-rate", "0.001"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "learning_rate 0.0003 != 0.001" in err
    assert main([*args, "--learning-rate", "0.001", "--force"]) == 0
    assert "not bit-exact: resumed with --force despite" in capsys.readouterr().err
    assert _load(paths).num_timesteps == more.total_steps
    assert _load(paths).learning_rate == 0.001


def test_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(FetchRLError, match="nothing to resume: no checkpoint at .*seed0.zip"):
        train(SMALL, RunPaths(SMALL.env_id, 0, tmp_path), progress=False, resume=True)
    assert not (tmp_path / "runs").exists()


# ============================================================================ artifacts
def test_atomic_path_keeps_the_previous_file_when_a_write_dies(tmp_path: Path) -> None:
    target = tmp_path / "results" / "x.json"
    target.parent.mkdir()
    target.write_text("old")
    for exc in (OSError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise exc
        assert target.read_text() == "old"
        assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]


def test_a_checkpoint_write_that_dies_leaves_the_previous_checkpoint(
        reference: RunPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _copy_run(reference, tmp_path)
    before = paths.checkpoint.read_bytes(), paths.meta.read_bytes()

    def die(*_: Any) -> None:
        raise KeyboardInterrupt  # e.g. a second Ctrl-C at the worst moment

    monkeypatch.setattr("fetchrl.artifacts.os.replace", die)
    with pytest.raises(KeyboardInterrupt):
        train(SMALL.replace(total_steps=SMALL.total_steps + ROLLOUT), paths, progress=False, resume=True)
    assert (paths.checkpoint.read_bytes(), paths.meta.read_bytes()) == before
    assert not [p for p in paths.checkpoint.parent.iterdir() if p.name.startswith(".")]


#: Calls that write a file. Each must sit inside ``with atomic_path(...)`` (or be artifacts' own writer).
_WRITERS = {"savefig", "save", "write_text", "write_bytes", "get_writer", "mimsave", "mimwrite", "imwrite",
            "to_csv", "copyfile"}
#: (module, function) pairs whose writer calls target memory, not files.
_IN_MEMORY = {("resume.py", "take")}


def _unguarded_writes(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []

    def visit(node: ast.AST, guarded: bool, func: str) -> None:
        if isinstance(node, ast.With | ast.AsyncWith):
            guarded = guarded or any(
                isinstance(item.context_expr, ast.Call) and getattr(item.context_expr.func, "id", "") == "atomic_path"
                for item in node.items)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            func = node.name
        if isinstance(node, ast.Call) and not guarded and (path.name, func) not in _IN_MEMORY:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            mode = next((a.value for a in node.args[1:2] if isinstance(a, ast.Constant)), "")
            opens_for_writing = name == "open" and isinstance(mode, str) and any(c in mode for c in "wax")
            if name in _WRITERS or opens_for_writing:
                found.append(f"{path.name}:{node.lineno} {name}()")
        for child in ast.iter_child_nodes(node):
            visit(child, guarded, func)

    visit(tree, False, "")
    return found


def test_every_artifact_write_is_atomic() -> None:
    """JSON, zip, PNG, GIF, MP4, HTML: all go through artifacts.atomic_path (temp file + rename)."""
    sources = [p for p in (REPO / "src" / "fetchrl").rglob("*.py") if p.name != "artifacts.py"]
    unguarded = [w for p in sources for w in _unguarded_writes(p)]
    assert not unguarded, "writes outside `with atomic_path(...)`: " + ", ".join(unguarded)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    """Corrupt a member's data (the zip's directory stays valid; the member's CRC check fails)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo("policy.pth").header_offset
    name_len, extra_len = struct.unpack("<HH", data[offset + 26:offset + 30])
    data[offset + 30 + name_len + extra_len + 100] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_byte], ids=["truncated", "bad-crc"])
def test_a_damaged_checkpoint_is_named_on_load(damage: Callable[[Path], None], reference: RunPaths,
                                               tmp_path: Path) -> None:
    paths = _copy_run(reference, tmp_path)
    damage(paths.checkpoint)
    with pytest.raises(FetchRLError, match=rf"checkpoint {paths.checkpoint} is corrupt"):
        load_model(paths, RUNTIME)
    with pytest.raises(FetchRLError, match=rf"checkpoint {paths.checkpoint} is corrupt"):
        plan_resume(SMALL.replace(total_steps=2048), paths)


def test_damaged_json_and_resume_state_are_named_on_load(reference: RunPaths, tmp_path: Path) -> None:
    paths = _copy_run(reference, tmp_path)
    _truncate(paths.meta)
    with pytest.raises(FetchRLError, match=rf"checkpoint metadata {paths.meta} is corrupt or truncated"):
        load_model(paths, RUNTIME)
    shutil.copy(reference.meta, paths.meta)
    _rewrite_zip(paths.checkpoint, replace={STATE_MEMBER: b"\x80\x05garbage"})
    with pytest.raises(FetchRLError, match=rf"resume state in {paths.checkpoint} is corrupt"):
        train(SMALL.replace(total_steps=2048), paths, progress=False, resume=True)
    eval_json = tmp_path / "results" / "x_eval.json"
    eval_json.parent.mkdir()
    eval_json.write_text('{"created_at": "2026-01-01", "aggreg')
    with pytest.raises(FetchRLError, match=rf"eval JSON {eval_json} is corrupt or truncated"):
        EvalResult.from_json(eval_json)


def test_a_checkpoint_of_another_task_is_refused(reference: RunPaths, tmp_path: Path) -> None:
    # 1. Meta (beside and inside the zip) says another env id.
    other = RunPaths("FetchReach-v4", 0, tmp_path / "a")
    other.checkpoint.parent.mkdir(parents=True)
    shutil.copy(reference.checkpoint, other.checkpoint)
    with pytest.raises(FetchRLError, match=rf"checkpoint {other.checkpoint} was trained on FetchReachDense-v4, "
                                           "not FetchReach-v4"):
        load_model(other, Runtime.decide(other.env_id, reference_env=True))
    # 2. Meta says other observation spaces (a FetchPush checkpoint filed under FetchReachDense).
    paths = _copy_run(reference, tmp_path / "b")
    meta = read_json(paths.meta, "meta")
    meta["observation_space"] = meta["observation_space"].replace("(10,)", "(25,)")
    paths.meta.write_text(json.dumps(meta))
    _rewrite_zip(paths.checkpoint, drop=META_MEMBER)
    with pytest.raises(FetchRLError, match=r"has observation space .*\(25,\).* it belongs to another task"):
        load_model(paths, RUNTIME)
    # 3. No metadata at all: the model's own spaces are compared after loading.
    from stable_baselines3 import PPO

    push = factory.make_vec_env(Runtime.decide("FetchPush-v4"), 1, seed=0)
    try:
        PPO("MultiInputPolicy", push, n_steps=64, batch_size=64, device="cpu").save(paths.checkpoint)
    finally:
        push.close()
    paths.meta.unlink()
    with pytest.raises(FetchRLError, match="observation/action spaces that differ from FetchReachDense-v4's"):
        load_model(paths, RUNTIME)


# ============================================================================ determinism
def test_eval_json_repeats_bit_for_bit(reference: RunPaths, tmp_path: Path) -> None:
    from fetchrl.pipeline.evaluate import evaluate

    paths = _copy_run(reference, tmp_path)
    runs = []
    for _ in range(2):
        evaluate(paths, EvalConfig(n_episodes=4, n_envs=2), RUNTIME, progress=False)
        runs.append(json.loads(paths.eval_json.read_text()))
    for key in ("aggregate", "per_episode", "seeds", "versions"):
        assert runs[0][key] == runs[1][key], key


def test_deterministic_training_repeats_bit_for_bit(reference: RunPaths, tmp_path: Path) -> None:
    """--deterministic (torch.use_deterministic_algorithms) on CPU: the same bits as the reference run,
    and the setting does not leak into the rest of the process."""
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path)
    train(SMALL.replace(deterministic_torch=True), paths, progress=False)
    assert not torch.are_deterministic_algorithms_enabled()
    assert_same_training(reference, paths)
    assert_same_curves(reference.tb_dir, paths.tb_dir)


# ============================================================================ sweeps
def test_a_resumed_sweep_does_not_retrain_complete_seeds(reference: RunPaths, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from fetchrl.pipeline.evaluate import evaluate
    from fetchrl.sweep import base
    from fetchrl.sweep.plan import SweepPlan
    from fetchrl.sweep.trials import Trial, TrialOutcome, is_complete

    eval_config = EvalConfig(n_episodes=2, n_envs=2)
    done = _copy_run(reference, tmp_path)
    evaluate(done, eval_config, RUNTIME, progress=False)
    interrupted = RunPaths(SMALL.env_id, 1, tmp_path)  # seed 1: an incomplete checkpoint, no eval JSON
    shutil.copy(reference.checkpoint, interrupted.checkpoint)
    meta = TrainMeta.from_json(reference.meta)
    meta.complete, meta.seed = False, 1
    meta.to_json(interrupted.meta)
    ran: list[str] = []

    def runner(trials: Any, workers: int, progress: Any) -> list[Any]:
        ran.extend(t.name for t in trials)
        return [TrialOutcome(t, True) for t in trials]

    monkeypatch.setattr(base, "get_runner", lambda *a, **k: runner)
    plan = SweepPlan("multi_seed", SMALL, eval_config, [0, 1, 2], {"default": {}}, tmp_path)
    outcomes = base.run_trials(plan.trials(), progress=False)
    assert ran == ["default/seed1", "default/seed2"]
    assert [o.skipped for o in outcomes] == [True, False, False]
    # A different configuration of the same seed is not "complete".
    assert not is_complete(Trial(SMALL.replace(clip_range=0.3), eval_config, tmp_path))


def test_train_or_resume_reuses_complete_and_resumes_interrupted_runs(
        reference: RunPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a rerun multi-seed / ablate calls per trial (fetchrl.pipeline.train.train_or_resume)."""
    done = _copy_run(reference, tmp_path / "done")
    stamp = done.checkpoint.stat().st_mtime_ns
    assert train_or_resume(SMALL, done).complete
    assert done.checkpoint.stat().st_mtime_ns == stamp  # nothing retrained
    paths = RunPaths(SMALL.env_id, SMALL.seed, tmp_path / "interrupted")
    _interrupt_at(monkeypatch, ROLLOUT + 64)
    with pytest.raises(TrainingInterrupted):
        train(SMALL, paths, progress=False)
    monkeypatch.undo()
    opened = _count_opens(monkeypatch, paths.checkpoint)
    assert train_or_resume(SMALL, paths).num_timesteps == SMALL.total_steps
    assert opened == ["rb"]  # the checkpoint that decided "resume" is the one resumed: read once
    monkeypatch.undo()
    assert_same_training(reference, paths)
    other = SMALL.replace(total_steps=ROLLOUT, clip_range=0.3)  # another configuration: trained afresh
    assert train_or_resume(other, paths).hyperparameters["clip_range"] == 0.3


@pytest.mark.slow
@pytest.mark.parametrize("sig, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["Ctrl-C-to-the-group", "SIGTERM-to-the-parent"])
def test_signal_stops_multi_seed(sig: int, to_group: bool, tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals every process of the group; `kill` / docker stop only the parent."""
    cmd = [sys.executable, str(SCRIPT), "multi-seed", "--seeds", "2", "--workers", "2", "--no-progress",
           "--root", str(tmp_path), *SMALL_ARGS, "--total-steps", "1000000", "--n-eval-episodes", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_subprocess_env(),
                            cwd=REPO, start_new_session=True)
    runs = [RunPaths(SMALL.env_id, seed, tmp_path) for seed in (0, 1)]
    try:
        _wait_until(proc, lambda: all(any(r.tb_dir.glob("events.*")) for r in runs))
        time.sleep(1.0)  # both trials are past their first rollout
        if to_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=EXIT_WITHIN_S + 10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], err[-2000:]
    for r in runs:
        meta = TrainMeta.from_json(r.meta)
        assert not meta.complete and meta.stop_reason == f"interrupted by {signal.Signals(sig).name}"


# ============================================================================ dependency guard
def test_incompatible_mujoco_is_reported_with_the_fix(monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.metadata as md

    real = md.version
    monkeypatch.setattr(md, "version", lambda name: "3.12.1" if name == "mujoco" else real(name))
    with pytest.raises(FetchRLError, match=r"mujoco 3\.12\.1 is incompatible with gymnasium-robotics 1\.4\.2.*"
                                           r"fix: pip install 'mujoco==3\.11\.0'"):
        envs.check_dependencies()
    monkeypatch.setattr(envs, "_registered", False)  # the check runs once, at the first env of a process
    assert main(["check-env", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fix: pip install 'mujoco==3.11.0'" in err


def test_missing_dependency_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata as md

    real = md.version

    def version(name: str) -> str:
        if name == "gymnasium-robotics":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "version", version)
    with pytest.raises(FetchRLError, match="gymnasium-robotics is not installed"):
        envs.check_dependencies()


_NO_OSMESA = pytest.mark.skipif(ctypes.util.find_library("OSMesa") is not None, reason="OSMesa is installed here")


def _with_missing_backend(command: str, root: Path) -> subprocess.CompletedProcess[str]:
    """``command`` with MUJOCO_GL=osmesa and no libOSMesa: MuJoCo cannot even be imported."""
    # PYOPENGL_PLATFORM left over from an earlier in-process render would make PyOpenGL load EGL instead.
    env = {k: v for k, v in _subprocess_env().items() if k != "PYOPENGL_PLATFORM"} | {"MUJOCO_GL": "osmesa"}
    return subprocess.run([sys.executable, str(SCRIPT), command, "--no-progress", "--root", str(root)],
                          capture_output=True, text=True, env=env, timeout=300)


def _assert_reported_with_fix(proc: subprocess.CompletedProcess[str], root: Path) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and "MUJOCO_GL=osmesa" in lines[0] and "fix:" in lines[0], proc.stderr[-3000:]
    assert not any(root.iterdir())


@_NO_OSMESA
def test_missing_render_backend_is_reported_with_the_fix(tmp_path: Path) -> None:
    """video checks the backend first: one line naming MUJOCO_GL and the fix."""
    _assert_reported_with_fix(_with_missing_backend("video", tmp_path), tmp_path)


@_NO_OSMESA
def test_missing_render_backend_is_reported_by_every_command(tmp_path: Path) -> None:
    _assert_reported_with_fix(_with_missing_backend("check-env", tmp_path), tmp_path)
