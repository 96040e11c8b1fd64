"""Train SB3 PPO on a Fetch task with the chapter's configuration and write its artifacts.

Artifacts (see ``fetchrl.artifacts.RunPaths``): the checkpoint zip, its meta JSON and the
TensorBoard run directory.

Reliability (issue 7):

- **Interrupts.** SIGINT / SIGTERM only set a flag (:class:`StopRequest`); SB3 stops at the next env
  step (:class:`~fetchrl.pipeline.callbacks.StopFlagCallback`), and the state of the last *rollout boundary*,
  kept in memory by :class:`~fetchrl.pipeline.resume.RolloutSnapshots`, is saved as an incomplete checkpoint.
  :class:`TrainingInterrupted` then carries exit code 130 / 143 and the command that resumes. A
  second signal exits at once; every write is atomic, so nothing on disk is half-written.
- **Resume.** ``resume=True`` continues the seed's checkpoint to ``config.total_steps`` with
  ``reset_num_timesteps=False``, restoring RNG, simulator, SB3 and logger state: the result equals
  the uninterrupted run bit for bit (policy and optimiser state_dicts), on either env path. The
  checkpoint is read once (:func:`~fetchrl.pipeline.checkpoints.plan_resume`), before anything is
  built, and that one :class:`~fetchrl.pipeline.checkpoints.ResumePlan` is passed down.
- **Periodic checkpoints.** ``checkpoint_every=N`` writes the boundary snapshot whenever N steps
  passed since the last one, so ``kill -9`` loses at most N steps (plus the rollout in progress).

The env path, the algorithm's class and torch's thread count come from one
:class:`~fetchrl.runtime.Runtime` (:func:`fetchrl.pipeline.setup.runtime_for`), decided once per run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from stable_baselines3.common.logger import configure

from fetchrl import portable
from fetchrl.artifacts import RunPaths, TrainMeta, collect_versions, now_iso
from fetchrl.config import ALGO, HYPERPARAMETER_NAMES, TrainConfig
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.callbacks import ProgressCallback, StopFlagCallback, UpdateLogCallback
from fetchrl.pipeline.checkpoints import (
    Checkpoint,
    ResumePlan,
    plan_resume,
    resume_model,
    resume_problems,
    write_checkpoint,
)
from fetchrl.pipeline.resume import (
    ResumeState,
    RolloutSnapshots,
    Snapshot,
    after_existing_event_files,
    restore_logger,
    restore_rng,
    truncate_event_files,
)
from fetchrl.pipeline.setup import new_model, runtime_for, torch_threads
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs
from fetchrl.vecenv.factory import make_vec_env

#: Exit codes of a process stopped by a signal (128 + signal number), as shells report them.
SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
#: The script users run; named in the resume hint.
SCRIPT = "scripts/ch02_ppo_dense_reach.py"


class TrainingInterrupted(FetchRLError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint."""


@dataclass
class StopRequest:
    """Set by a signal handler; read by :class:`StopFlagCallback` at the next step."""

    signum: int | None = None
    _previous: dict[int, Any] = field(default_factory=dict)

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: leave at once; every artifact write is atomic
            raise SystemExit(SIGNAL_EXIT_CODES.get(signal.Signals(signum), 1))
        self.signum = signum
        sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping at the next step and saving "
                         "(signal again to quit without saving)\n")

    def install(self) -> StopRequest:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in SIGNAL_EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@contextlib.contextmanager
def _torch_determinism(config: TrainConfig) -> Iterator[None]:
    """``--deterministic``: deterministic torch kernels while this run trains (restored afterwards)."""
    before = torch.are_deterministic_algorithms_enabled()
    if config.deterministic_torch:
        if config.device != "cpu":  # cuBLAS needs a fixed workspace to be deterministic (set before CUDA starts)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _prepare_dirs(paths: RunPaths, *, fresh_logs: bool) -> None:
    """Create the output directories (and clear a rerun's logs) before any training, or fail clearly."""
    for d in (paths.checkpoint.parent, paths.tb_dir.parent):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FetchRLError(f"cannot write to {d}: {err.strerror or err} (check --root)") from None
    for target in (paths.checkpoint, paths.meta):  # temp files a killed run left (atomic_path's names)
        for stale in target.parent.glob(f".{target.name}.*.tmp*"):
            stale.unlink(missing_ok=True)
    if fresh_logs and paths.tb_dir.exists():  # a rerun of a seed replaces its logs (SB3 would add _1, _2...)
        shutil.rmtree(paths.tb_dir)
    paths.tb_dir.mkdir(parents=True, exist_ok=True)


def resume_command(config: TrainConfig, paths: RunPaths) -> str:
    """The command line that continues this run (options that differ from the defaults only)."""
    default = TrainConfig()
    parts = [SCRIPT, "train", "--resume", "--seed", str(config.seed), "--total-steps", str(config.total_steps)]
    if config.env_id != default.env_id:
        parts += ["--env-id", config.env_id]
    if paths.root != Path("."):
        parts += ["--root", str(paths.root)]
    for name in HYPERPARAMETER_NAMES:
        if name != "policy" and getattr(config, name) != getattr(default, name):
            parts += [f"--{name.replace('_', '-')}", str(getattr(config, name))]
    if config.device != default.device:
        parts += ["--device", config.device]
    if not config.fast_env:
        parts.append("--reference-env")
    if config.deterministic_torch:
        parts.append("--deterministic")
    if config.portable:
        parts.append("--portable")
    return " ".join(parts)


def _meta(config: TrainConfig, paths: RunPaths, model: Any, snapshot: Snapshot, *, complete: bool,
          stop_reason: str) -> TrainMeta:
    wall = snapshot.wall_time_s
    return TrainMeta(
        created_at=now_iso(),
        algo=ALGO,
        env_id=config.env_id,
        seed=config.seed,
        device=str(model.device),
        n_envs=config.n_envs,
        total_steps=config.total_steps,
        hyperparameters=config.hyperparameters,
        wall_time_s=round(wall, 3),
        steps_per_second=round(snapshot.num_timesteps / wall, 1) if wall > 0 else 0.0,
        checkpoint=str(paths.checkpoint),
        versions=collect_versions(),
        num_timesteps=snapshot.num_timesteps,
        complete=complete,
        stop_reason=stop_reason,
        fast_env=config.fast_env,
        portable=config.portable,
        observation_space=repr(model.observation_space),
        action_space=repr(model.action_space),
    )


def _warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")


def train(config: TrainConfig, paths: RunPaths, *, progress: bool = True, resume: bool = False,
          force: bool = False, checkpoint_every: int = 0, runtime: Runtime | None = None) -> TrainMeta:
    """Train (or resume) one run and write its checkpoint, meta JSON and TensorBoard logs.

    Args:
        resume: continue ``paths.checkpoint`` up to ``config.total_steps`` (refused when its env id,
            hyper-parameters or library versions differ, unless ``force``).
        checkpoint_every: also write a checkpoint at the first rollout boundary after every this
            many steps (0: only at the end or on interrupt).
        runtime: the run's env path and threads, when the caller decided it already (for the same
            ``config.env_id``); default :func:`~fetchrl.pipeline.setup.runtime_for` ``(config)``.

    Returns the meta written. Raises TrainingInterrupted (exit 130/143) after saving the last
    rollout boundary as an incomplete checkpoint when SIGINT/SIGTERM arrives.
    """
    if checkpoint_every < 0:
        raise FetchRLError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    envs.validate_env_id(config.env_id)
    plan = plan_resume(config, paths, force=force) if resume else None  # refuse before building anything
    return _run(config, paths, runtime or runtime_for(config), plan, progress=progress,
                checkpoint_every=checkpoint_every)


def train_or_resume(config: TrainConfig, paths: RunPaths, *, progress: bool = False, checkpoint_every: int = 0,
                    runtime: Runtime | None = None) -> TrainMeta:
    """What a rerun sweep wants for one trial: never redo finished or interrupted work.

    - the seed's checkpoint is a complete run of exactly ``config``: returned as is, nothing trains;
    - it is an unfinished run of ``config`` (same env id, hyper-parameters and versions): resumed,
      bit-exact;
    - anything else (none, corrupt, another configuration): trained from scratch, replacing it.
    """
    envs.validate_env_id(config.env_id)
    try:
        checkpoint = Checkpoint.read(paths) if paths.checkpoint.is_file() else None
    except FetchRLError:  # damaged: trained afresh
        checkpoint = None
    meta = checkpoint.meta if checkpoint is not None else None
    plan = None
    if checkpoint is not None and meta is not None and not resume_problems(meta, config):
        if meta.complete and meta.total_steps == config.total_steps and meta.num_timesteps >= config.total_steps:
            return meta
        if not meta.complete and meta.num_timesteps < config.total_steps:
            plan = plan_resume(config, paths, checkpoint=checkpoint)
    return _run(config, paths, runtime or runtime_for(config), plan, progress=progress,
                checkpoint_every=checkpoint_every)


def _run(config: TrainConfig, paths: RunPaths, runtime: Runtime, plan: ResumePlan | None, *, progress: bool,
         checkpoint_every: int) -> TrainMeta:
    """Train from scratch (``plan`` None) or continue ``plan``'s checkpoint, on ``runtime``."""
    if runtime.env_id != config.env_id:
        raise ValueError(f"runtime for {runtime.env_id} given for a run of {config.env_id}")
    portable.require(config.portable)  # a library caller that loaded torch with other kernels is refused here
    _prepare_dirs(paths, fresh_logs=plan is None)
    stop = StopRequest().install()  # early: a signal during set-up stops at the first step
    try:
        with _torch_determinism(config), torch_threads(runtime):
            return _learn(config, paths, runtime, plan, stop, progress=progress, checkpoint_every=checkpoint_every)
    finally:
        stop.uninstall()


@dataclass
class _CheckpointWriter:
    """Writes a rollout-boundary snapshot as this run's checkpoint (zip with meta inside, then meta JSON)."""

    config: TrainConfig
    paths: RunPaths
    model: Any

    def __call__(self, snapshot: Snapshot, complete: bool = False,
                 reason: str = "in progress (periodic checkpoint)") -> TrainMeta:
        meta = _meta(self.config, self.paths, self.model, snapshot, complete=complete, stop_reason=reason)
        write_checkpoint(self.paths, snapshot, meta)
        return meta


@dataclass(frozen=True)
class _Start:
    """Where a run starts: its model (on the run's VecEnv) and, when resuming, what else to restore."""

    model: Any
    state: ResumeState | None
    """The resume state whose logger and RNG states are restored right before ``learn`` (None: fresh)."""
    wall_time_s: float
    """Training wall time of the runs this one continues."""


def _start(config: TrainConfig, paths: RunPaths, runtime: Runtime, plan: ResumePlan | None, env: Any) -> _Start:
    """A new model, or ``plan``'s checkpoint with ``env``'s state restored."""
    if plan is None:
        return _Start(new_model(config, runtime, env), None, 0.0)
    resumed = resume_model(plan, config, runtime, env)
    if resumed.inexact:
        _warn(f"resuming {paths.checkpoint} from step {resumed.model.num_timesteps}, not bit-exact: "
              f"{resumed.inexact}")
    truncate_event_files(paths.tb_dir, resumed.model.num_timesteps)
    after_existing_event_files(paths.tb_dir)
    return _Start(resumed.model, resumed.state, plan.meta.wall_time_s)


def _learn(config: TrainConfig, paths: RunPaths, runtime: Runtime, plan: ResumePlan | None, stop: StopRequest, *,
           progress: bool, checkpoint_every: int) -> TrainMeta:
    env = make_vec_env(runtime, config.n_envs, seed=config.seed)
    try:
        start = _start(config, paths, runtime, plan, env)
        model = start.model
        model.set_logger(configure(str(paths.tb_dir), ["tensorboard"]))
        write = _CheckpointWriter(config, paths, model)
        snapshots = RolloutSnapshots(write, every=checkpoint_every, wall_offset=start.wall_time_s)
        callbacks = [UpdateLogCallback(), snapshots, StopFlagCallback(stop),  # UpdateLog first: see its doc
                     ProgressCallback(config.steps_in_whole_rollouts, f"train seed {config.seed}", start=model.num_timesteps,
                                      disable=not progress)]
        if start.state is not None:  # last, right before learn: nothing else may draw from the generators
            restore_logger(model.logger, start.state.logger)
            restore_rng(start.state.rng)
        try:
            model.learn(config.total_steps - model.num_timesteps, callback=callbacks,
                        reset_num_timesteps=plan is None, progress_bar=False)
        finally:
            model.logger.close()
        if stop.signum is not None and snapshots.in_rollout and snapshots.latest is not None:
            return _interrupted(config, paths, stop.signum, snapshots.latest, write)
        meta = write(Snapshot.take(model, snapshots.wall_time()), complete=True, reason="completed")
        if stop.signum is not None:  # the signal came during the last update: the run is complete
            raise TrainingInterrupted(
                f"{signal.Signals(stop.signum).name} arrived as training finished; the complete checkpoint "
                f"({meta.num_timesteps} steps) is saved to {paths.checkpoint}",
                exit_code=SIGNAL_EXIT_CODES[signal.Signals(stop.signum)])
        return meta
    finally:
        env.close()


def _interrupted(config: TrainConfig, paths: RunPaths, signum: int, snapshot: Snapshot,
                 write: _CheckpointWriter) -> TrainMeta:
    """Save the last rollout boundary as an incomplete checkpoint; raise with the command that resumes."""
    name = signal.Signals(signum).name
    write(snapshot, complete=False, reason=f"interrupted by {name}")
    raise TrainingInterrupted(
        f"training stopped by {name}; checkpoint at step {snapshot.num_timesteps} of {config.total_steps} "
        f"saved to {paths.checkpoint} (the unfinished rollout is redone on resume); "
        f"resume with: {resume_command(config, paths)}",
        exit_code=SIGNAL_EXIT_CODES[signal.Signals(signum)],
    )
