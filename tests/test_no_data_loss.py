"""Nothing lost, nothing silent: each promise provoked with real short training runs and real signals.

- a run never destroys a finished result it did not surpass: ``train`` over a finished checkpoint is
  refused without ``--force``; a forced retrain, or a resume to more steps, interrupted by SIGINT,
  SIGTERM or a double Ctrl-C, leaves the finished checkpoint, its meta JSON and its TensorBoard event
  files byte-identical, and its own partial run resumable (then renamed onto the finished one);
- the printed commands run when pasted into a shell, even with a ``--root`` that needs quoting;
- ``all --resume`` after training finished evaluates and reports instead of refusing;
- two trainings of one run at once: the second exits 75 naming the first one's PID;
- a rerun sweep resumes a trial's partial run.

Bytes are compared as sha256 digests of every file of the run (checkpoint zip, meta JSON, event files).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fetchrl.artifacts import RunPaths, TrainMeta
from fetchrl.cli import main
from fetchrl.config import TrainConfig
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.callbacks import StopFlagCallback
from fetchrl.pipeline.lock import LOCKED_EXIT_CODE, run_lock
from fetchrl.pipeline.train import TrainingInterrupted, train, train_or_resume

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ch02_ppo_dense_reach.py"
#: A root that must be quoted in a shell: spaces and non-ASCII letters.
AWKWARD = "my rü ñ 目录"
FINISHED = TrainConfig(total_steps=2048, n_envs=2, n_steps=256, batch_size=128, n_epochs=2, seed=0)
ROLLOUT = FINISHED.rollout_size  # 512 steps
RUN_ARGS = ["--n-envs", "2", "--n-steps", "256", "--batch-size", "128", "--n-epochs", "2", "--no-progress"]
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ============================================================================ helpers
def _digests(paths: RunPaths) -> dict[str, str]:
    """sha256 of the run's checkpoint, meta JSON and every file of its TensorBoard dir."""
    files = [paths.checkpoint, paths.meta, *sorted(paths.tb_dir.iterdir())]
    return {str(f.relative_to(paths.root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """A finished 2,048-step run. Read-only: copy it (:func:`_copy`) before anything writes to its root."""
    paths = RunPaths(FINISHED.env_id, FINISHED.seed, tmp_path_factory.mktemp("finished") / AWKWARD)
    train(FINISHED, paths, progress=False)
    return paths


def _copy(run: RunPaths, root: Path) -> RunPaths:
    shutil.copytree(run.root, root)
    return RunPaths(run.env_id, run.seed, root)


def _env() -> dict[str, str]:
    """The subprocesses' environment: one thread each, and ``python`` on PATH is this interpreter."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(root: Path, *args: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, str(SCRIPT), "train", "--root", str(root), *RUN_ARGS, *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)


def _wait_until(proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 240.0) -> None:
    """Poll until ``ready()``; fail with the process's stderr if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.communicate()[1][-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("training did not get there in time")
        time.sleep(0.05)


def _steps(meta_path: Path) -> int:
    try:
        return TrainMeta.from_json(meta_path).num_timesteps
    except FetchRLError:
        return -1


def _stop(proc: subprocess.Popen[str], *signals: int) -> tuple[int, str]:
    for sig in signals:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("training did not stop after the signal")
    return proc.returncode, err


def _paste(command: str) -> subprocess.CompletedProcess[str]:
    """Run a printed command as a reader would: pasted into a shell in the repository."""
    assert command.startswith("python "), command
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=_env(), cwd=REPO,
                          timeout=600)


# ============================================================================ class 1: data loss
def test_plain_train_over_a_finished_run_is_refused_and_says_what_to_type(
        finished: RunPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _copy(finished, tmp_path / AWKWARD)
    before = _digests(paths)
    args = ["train", "--root", str(paths.root), *RUN_ARGS, "--total-steps", str(FINISHED.total_steps)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a finished run (2048 steps)" in err and "Traceback" not in err
    assert _digests(paths) == before
    assert not paths.partial.checkpoint.exists() and not paths.lock.exists()
    # The command it prints starts over (kept until the new run completes) when pasted as it is.
    command = err.split("completes): ")[1].split("  To train it further")[0]
    assert "--force" in shlex.split(command)
    proc = _paste(command)
    assert proc.returncode == 0, proc.stderr
    meta = TrainMeta.from_json(paths.meta)
    assert meta.complete and meta.num_timesteps == FINISHED.total_steps and meta.checkpoint == str(paths.checkpoint)
    assert not paths.partial.checkpoint.exists() and not paths.partial.meta.exists() and not paths.partial.tb_dir.exists()


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)],
                         ids=["SIGINT", "SIGTERM", "double-Ctrl-C"])
def test_an_interrupted_retrain_keeps_the_finished_run_byte_identical(
        signals: tuple[int, ...], finished: RunPaths, tmp_path: Path) -> None:
    paths = _copy(finished, tmp_path / AWKWARD)
    before = _digests(paths)
    proc = _start(paths.root, "--force", "--seed", "0", "--total-steps", "1000000", "--checkpoint-every",
                  str(ROLLOUT))
    _wait_until(proc, lambda: _steps(paths.partial.meta) >= ROLLOUT)  # the new run is past its first checkpoint
    code, err = _stop(proc, *signals)
    assert code == EXIT_CODES[signal.Signals(signals[0])], err
    assert "Traceback" not in err
    assert _digests(paths) == before, "the finished run changed"
    assert not paths.lock.exists()
    partial = TrainMeta.from_json(paths.partial.meta)
    assert not partial.complete and partial.num_timesteps >= ROLLOUT
    assert any(paths.partial.tb_dir.glob("events.out.tfevents.*"))
    if len(signals) > 1:
        return
    assert f"the finished run in {paths.checkpoint} is untouched" in err
    # The printed command, pasted, resumes the partial run (here to a shorter --total-steps, to keep the
    # test short); only its completion replaces the finished run.
    command = shlex.split(err.split("resume with: ")[1].splitlines()[0])
    command[command.index("--total-steps") + 1] = str(partial.num_timesteps + ROLLOUT)
    proc2 = _paste(shlex.join(command))
    assert proc2.returncode == 0, proc2.stderr
    meta = TrainMeta.from_json(paths.meta)
    assert meta.complete and meta.num_timesteps == partial.num_timesteps + ROLLOUT
    assert meta.wall_time_s > partial.wall_time_s  # the interrupted part's time counts
    assert f"the checkpoint has {meta.num_timesteps} steps from {meta.wall_time_s:.1f} s" in proc2.stdout
    assert not paths.partial.checkpoint.exists() and not paths.partial.tb_dir.exists()
    assert not (set(_digests(paths).items()) & set(before.items())), "some of the finished run is left"


def test_an_interrupted_resume_to_more_steps_keeps_the_finished_run(finished: RunPaths, tmp_path: Path) -> None:
    """``train --resume`` past a finished run extends a copy; the finished run stays as it was until then."""
    paths = _copy(finished, tmp_path / "run")
    before = _digests(paths)
    proc = _start(paths.root, "--resume", "--seed", "0", "--total-steps", "1000000", "--checkpoint-every",
                  str(ROLLOUT))
    _wait_until(proc, lambda: _steps(paths.partial.meta) >= FINISHED.total_steps + ROLLOUT)
    code, err = _stop(proc, signal.SIGTERM)
    assert code == 143, err
    assert _digests(paths) == before
    # The partial run's logs continue the finished run's: its event files are there, unchanged in name.
    assert {p.name for p in finished.tb_dir.iterdir()} < {p.name for p in paths.partial.tb_dir.iterdir()}


def test_a_crash_during_promotion_is_completed_by_the_next_run(finished: RunPaths, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A complete partial run (its renaming cut short) replaces the finished one before anything else."""
    paths = _copy(finished, tmp_path / "run")
    shutil.copy(paths.checkpoint, paths.partial.checkpoint)
    shutil.copy(paths.meta, paths.partial.meta)
    shutil.copytree(paths.tb_dir, paths.partial.tb_dir)
    (paths.partial.tb_dir / "marker").write_text("the partial run's logs")
    assert main(["train", "--root", str(paths.root), *RUN_ARGS, "--total-steps", str(FINISHED.total_steps)]) == 2
    assert "completing the replacement" in capsys.readouterr().err
    assert (paths.tb_dir / "marker").is_file()
    assert not paths.partial.checkpoint.exists() and not paths.partial.tb_dir.exists()


# ============================================================================ class 5: recovery paths
@pytest.mark.parametrize("resume", [False, True])
def test_all_over_a_finished_run_evaluates_and_reports_it(finished: RunPaths, tmp_path: Path, resume: bool,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """``all`` (a second ``make run``) and ``all --resume`` (``all`` died during eval) reuse the finished run
    of the same configuration; one of another configuration is refused, naming --force."""
    paths = _copy(finished, tmp_path / "run")
    before = _digests(paths)
    args = ["all", "--root", str(paths.root), *RUN_ARGS, "--total-steps", str(FINISHED.total_steps),
            "--n-eval-episodes", "2", "--no-video", *(["--resume"] if resume else [])]
    code = main(args)
    out = capsys.readouterr().out
    assert code in (0, 1), out  # 1: a 2,048-step policy fails the chapter's criteria, as the report says
    assert "training already finished" in out and "--force retrains" in out
    assert paths.eval_json.is_file() and paths.report_md.is_file()
    assert _digests(paths) == before
    if not resume:  # another configuration is not trained over without --force
        assert main([*args, "--learning-rate", "1e-4"]) == 2
        assert "holds a finished run" in capsys.readouterr().err
        assert _digests(paths) == before


def test_a_second_training_of_the_same_run_is_refused_naming_the_first(
        finished: RunPaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = RunPaths(FINISHED.env_id, 7, tmp_path)
    first = _start(tmp_path, "--seed", "7", "--total-steps", "1000000")
    _wait_until(first, lambda: any(paths.tb_dir.glob("events.out.tfevents.*")))
    assert paths.lock.read_text().strip() == str(first.pid)
    code = main(["train", "--root", str(tmp_path), *RUN_ARGS, "--seed", "7", "--total-steps", "2048"])
    err = capsys.readouterr().err
    assert code == LOCKED_EXIT_CODE == 75
    assert err.count("\n") == 1 and f"is being trained by PID {first.pid}" in err
    assert len(list(paths.tb_dir.iterdir())) == 1  # one event file: the second run wrote nothing
    code, err = _stop(first, signal.SIGINT)
    assert code == 130, err
    assert not paths.lock.exists()  # released on the signal


def test_the_lock_is_exclusive_in_process_and_a_stale_lock_file_does_not_block(tmp_path: Path) -> None:
    paths = RunPaths(FINISHED.env_id, 0, tmp_path)
    with run_lock(paths):
        with pytest.raises(FetchRLError, match=f"PID {os.getpid()}") as err, run_lock(paths):
            pass
        assert err.value.exit_code == LOCKED_EXIT_CODE
    assert not paths.lock.exists()
    paths.lock.write_text("999999999\n")  # left by a process killed with -9: no flock holds it
    with run_lock(paths):
        assert paths.lock.read_text().strip() == str(os.getpid())


class _SignalAt(StopFlagCallback):
    """Sends SIGINT to this process when training reaches ``at`` steps."""

    at = 0

    def _on_step(self) -> bool:
        if self.model.num_timesteps == self.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super()._on_step()


def test_a_rerun_sweep_resumes_a_partial_run_and_keeps_the_finished_one(
        finished: RunPaths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train_or_resume (a sweep's trial) over a finished run of another configuration: staged, resumable."""
    paths = _copy(finished, tmp_path / "run")
    before = _digests(paths)
    other = FINISHED.replace(clip_range=0.3)
    monkeypatch.setattr(_SignalAt, "at", ROLLOUT + 64)
    monkeypatch.setattr("fetchrl.pipeline.train.StopFlagCallback", _SignalAt)
    with pytest.raises(TrainingInterrupted):
        train_or_resume(other, paths)
    monkeypatch.undo()
    assert _digests(paths) == before
    assert TrainMeta.from_json(paths.partial.meta).num_timesteps == ROLLOUT
    meta = train_or_resume(other, paths)
    assert meta.complete and meta.hyperparameters["clip_range"] == 0.3
    assert TrainMeta.from_json(paths.meta).hyperparameters["clip_range"] == 0.3
    assert not paths.partial.checkpoint.exists()
    stamp = paths.checkpoint.stat().st_mtime_ns
    assert train_or_resume(other, paths).complete and paths.checkpoint.stat().st_mtime_ns == stamp
