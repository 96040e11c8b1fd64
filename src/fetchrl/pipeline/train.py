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

Nothing lost, nothing silent:

- **A finished run is never destroyed by a run that did not surpass it.** ``train`` refuses to start
  over a complete checkpoint unless ``force`` (the message says what to type). A run that would replace
  or extend a finished one (``--force``, ``--resume`` to more steps, a sweep trial of another
  configuration) writes its checkpoints and TensorBoard logs to :attr:`RunPaths.partial`
  (``….seedN.partial.zip``, ``runs/…/seedN.partial/``) and renames them onto the finished ones only
  when it completes (:func:`promote`); interrupted, it leaves the finished run byte-identical and its
  own state resumable: ``resume=True`` continues the partial run first.
- **One process per run.** Every training holds :func:`fetchrl.pipeline.lock.run_lock` from its first
  look at the checkpoint to its last write; a second one exits 75 naming the first one's PID.
- **A resume command that runs when pasted:** :class:`CommandLine` quotes every argument.

The env path, the algorithm's class and torch's thread count come from one
:class:`~fetchrl.runtime.Runtime` (:func:`fetchrl.pipeline.setup.runtime_for`), decided once per run.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from stable_baselines3.common.logger import configure

from fetchrl import portable
from fetchrl.algos.base import flag_name
from fetchrl.algos.sac import SACConfig
from fetchrl.artifacts import RunPaths, TrainMeta, collect_versions, now_iso
from fetchrl.config import TrainConfig
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.callbacks import FinalLogCallback, ProgressCallback, StopFlagCallback, UpdateLogCallback
from fetchrl.pipeline.checkpoints import (
    Checkpoint,
    ResumePlan,
    plan_resume,
    resume_model,
    resume_problems,
    write_checkpoint,
)
from fetchrl.pipeline.her_callbacks import HERDiagnosticsCallback
from fetchrl.pipeline.lock import run_lock
from fetchrl.pipeline.offpolicy_callbacks import EntCoefFloorCallback, SACDiagnosticsCallback
from fetchrl.pipeline.resume import (
    DueSnapshots,
    ResumeState,
    RolloutSnapshots,
    Snapshot,
    after_existing_event_files,
    restore_logger,
    restore_rng,
    truncate_event_files,
)
from fetchrl.pipeline.setup import new_model, runtime_for, torch_threads, training_env
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs

#: Exit codes of a process stopped by a signal (128 + signal number), as shells report them.
SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass(frozen=True)
class CommandLine:
    """How the reader runs a chapter's ``train``: the commands printed in hints, quoted to paste as they are.

    Options equal to the chapter's defaults are left out; everything else that identifies the run is kept.
    """

    script: str
    """The chapter's script, as typed from the repository root: ``"scripts/ch02_ppo_dense_reach.py"``."""
    defaults: TrainConfig
    """The chapter's defaults (its CLI's defaults)."""
    arm: tuple[str, ...] = ()
    """The switch that picks the run's arm, in every command (ch04's treatment: ``("--her",)``)."""

    def train(self, config: TrainConfig, paths: RunPaths, *flags: str) -> str:
        """``python SCRIPT train [ARM] FLAGS --seed S --total-steps N [options that differ]``, shell-quoted."""
        d = self.defaults
        parts = ["python", self.script, "train", *self.arm, *flags, "--seed", str(config.seed),
                 "--total-steps", str(config.total_steps)]
        if config.env_id != d.env_id:
            parts += ["--env-id", config.env_id]
        if paths.root != Path("."):
            parts += ["--root", str(paths.root)]
        if config.n_envs != d.n_envs:
            parts += ["--n-envs", str(config.n_envs)]
        same_algo = type(config.algo) is type(d.algo)
        for f in config.algo.tunable_fields():
            value = getattr(config.algo, f.name)
            if not same_algo or value != getattr(d.algo, f.name):
                parts += [flag_name(f.name), str(value)]
        if config.device != d.device:
            parts += ["--device", config.device]
        if not config.fast_env:
            parts.append("--reference-env")
        if config.deterministic_torch:
            parts.append("--deterministic")
        if config.portable:
            parts.append("--portable")
        return shlex.join(parts)


#: Chapter 2's command line: the hints of library callers that do not name their chapter's
#: (the CLI passes each chapter's own, ``fetchrl.chapters.Chapter.script`` and ``.defaults``).
SCRIPT = CommandLine("scripts/ch02_ppo_dense_reach.py", TrainConfig())


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


# ============================================================================ where a run writes
@dataclass(frozen=True)
class RunPlan:
    """Where one run starts and writes, decided under the run's lock before anything is built."""

    final: RunPaths
    """The run's own paths: the finished result lives (or will live) here."""
    out: RunPaths
    """Where this run writes its checkpoints and logs: ``final``, or ``final.partial`` when a finished run
    is there to keep until this one completes."""
    resume: ResumePlan | None = None
    """The checkpoint continued (None: a fresh start)."""

    @property
    def staged(self) -> bool:
        """True when this run writes beside a finished one and is renamed onto it on completion."""
        return self.out.interim


def _read_or_none(paths: RunPaths) -> Checkpoint | None:
    """``paths``' checkpoint, or None when there is none or it is damaged (then it holds nothing to keep)."""
    if not paths.checkpoint.is_file():
        return None
    try:
        return Checkpoint.read(paths)
    except FetchRLError:
        return None


def _is_finished(meta: TrainMeta | None, config: TrainConfig) -> bool:
    """True when ``meta`` is a complete run of exactly ``config`` (same hyper-parameters, versions, length)."""
    return (meta is not None and meta.complete and meta.total_steps == config.total_steps
            and meta.num_timesteps >= config.total_steps and not resume_problems(meta, config))


def finished_run(config: TrainConfig, paths: RunPaths) -> TrainMeta | None:
    """The meta of the complete run of exactly ``config`` at ``paths`` (None: there is none, so train).

    The meta JSON decides first, so a run still to train is not read here as well as in ``train``;
    a "finished" is confirmed by the zip's own copy.
    """
    try:
        side = TrainMeta.from_json(paths.meta) if paths.meta.is_file() else None
    except FetchRLError:
        side = None
    if not _is_finished(side, config):
        return None
    checkpoint = _read_or_none(paths)
    meta = checkpoint.meta if checkpoint is not None else None
    return meta if _is_finished(meta, config) else None


def _discard(paths: RunPaths) -> None:
    """Remove ``paths``' checkpoint, meta and logs (an interrupted partial run about to be started over)."""
    checkpoint = _read_or_none(paths)
    if checkpoint is not None and checkpoint.meta is not None:
        _warn(f"starting over: the interrupted run in {paths.checkpoint} ({checkpoint.meta.num_timesteps} of "
              f"{checkpoint.meta.total_steps} steps) is discarded")
    paths.checkpoint.unlink(missing_ok=True)
    paths.meta.unlink(missing_ok=True)
    paths.replay_buffer.unlink(missing_ok=True)
    if paths.tb_dir.exists():
        shutil.rmtree(paths.tb_dir)


def promote(paths: RunPaths) -> None:
    """Rename the completed partial run (``paths.partial``) onto ``paths``: logs, then meta, then checkpoint.

    Each rename is atomic. The partial checkpoint goes last, so while it exists the promotion is
    unfinished; :func:`_finish_promotion` completes one that a crash cut short (it is idempotent).
    """
    partial = paths.partial
    if partial.tb_dir.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{paths.tb_dir.name}.", suffix=".old", dir=paths.tb_dir.parent))
        if paths.tb_dir.exists():
            os.replace(paths.tb_dir, old)  # onto the empty temp dir: allowed for directories
        os.replace(partial.tb_dir, paths.tb_dir)
        shutil.rmtree(old, ignore_errors=True)
    if partial.meta.is_file():
        os.replace(partial.meta, paths.meta)
    if partial.replay_buffer.is_file():  # an off-policy run's; the zip it belongs to names its digest
        os.replace(partial.replay_buffer, paths.replay_buffer)
    os.replace(partial.checkpoint, paths.checkpoint)


def _finish_promotion(paths: RunPaths) -> None:
    """A completed partial run whose promotion a crash interrupted is promoted now (with a note)."""
    checkpoint = _read_or_none(paths.partial)
    if checkpoint is not None and checkpoint.meta is not None and checkpoint.meta.complete:
        _warn(f"completing the replacement of {paths.checkpoint} by the finished run in {paths.partial.checkpoint}")
        promote(paths)


def _refuse_finished(config: TrainConfig, paths: RunPaths, meta: TrainMeta, command: CommandLine) -> FetchRLError:
    return FetchRLError(
        f"{paths.checkpoint} holds a finished run ({meta.num_timesteps} steps), which train does not replace "
        f"without --force. To start over (the finished run is kept until the new one completes): "
        f"{command.train(config, paths, '--force')}  To train it further instead: --resume with a --total-steps "
        f"above {meta.num_timesteps}")


def plan_run(config: TrainConfig, paths: RunPaths, *, resume: bool = False, force: bool = False,
             command: CommandLine = SCRIPT) -> RunPlan:
    """Decide where ``train`` starts and writes (call it holding the run's lock); refuse what would lose work.

    - ``resume``: the partial run if there is one, else the seed's checkpoint: in place when it is
      unfinished, beside it (staged) when it is complete and ``config.total_steps`` asks for more;
    - fresh over a complete checkpoint: refused unless ``force``, then staged;
    - fresh otherwise: in place (an interrupted run there is started over, with a warning).
    """
    partial = paths.partial
    if resume:
        if partial.checkpoint.is_file():
            return RunPlan(paths, partial, plan_resume(config, partial, force=force))
        current = Checkpoint.read(paths) if paths.checkpoint.is_file() else None  # read once, here
        plan = plan_resume(config, paths, force=force, checkpoint=current)
        return RunPlan(paths, partial if plan.meta.complete else paths, plan)
    current = _read_or_none(paths)
    meta = current.meta if current is not None else None
    if meta is not None and meta.complete:
        if not force:
            raise _refuse_finished(config, paths, meta, command)
        _discard(partial)
        return RunPlan(paths, partial)
    _discard(partial)  # stale: the finished run it was meant to replace is gone
    if meta is not None:
        _warn(f"starting over: the interrupted run in {paths.checkpoint} ({meta.num_timesteps} of "
              f"{meta.total_steps} steps) is replaced; `--resume` would have continued it")
    return RunPlan(paths, paths)


def _prepare_dirs(run: RunPlan) -> None:
    """Create the output directories and set up the run's logs before any training, or fail clearly.

    A fresh run starts with an empty TensorBoard dir (SB3 would add ``_1``, ``_2``...); a staged run
    that extends a finished one starts from a copy of its logs, which stay untouched until promotion.
    """
    out = run.out
    for d in (out.checkpoint.parent, out.tb_dir.parent):
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FetchRLError(f"cannot write to {d}: {err.strerror or err} (check --root)") from None
    for target in (out.checkpoint, out.meta):  # temp files a killed run left (atomic_path's names)
        for stale in target.parent.glob(f".{target.name}.*.tmp*"):
            stale.unlink(missing_ok=True)
    for stale_dir in out.tb_dir.parent.glob(f".{run.final.tb_dir.name}.*.old"):  # a promotion cut short
        shutil.rmtree(stale_dir, ignore_errors=True)
    resumes_finished = run.staged and run.resume is not None and run.resume.checkpoint.path == run.final.checkpoint
    if (run.resume is None or resumes_finished) and out.tb_dir.exists():
        shutil.rmtree(out.tb_dir)
    if resumes_finished and run.final.tb_dir.is_dir():
        shutil.copytree(run.final.tb_dir, out.tb_dir)
    out.tb_dir.mkdir(parents=True, exist_ok=True)


def resume_command(config: TrainConfig, paths: RunPaths, command: CommandLine = SCRIPT) -> str:
    """The command line that continues this run (options that differ from the chapter's defaults only)."""
    return command.train(config, paths, "--resume")


def summary(meta: TrainMeta) -> str:
    """One line on what a finished ``train`` produced: total steps and total training time (all runs it continued)."""
    return (f"the checkpoint has {meta.num_timesteps} steps from {meta.wall_time_s:.1f} s of training "
            f"({meta.steps_per_second:.0f} steps/s; the runs it continues included)")


def _meta(config: TrainConfig, paths: RunPaths, model: Any, snapshot: Snapshot, *, complete: bool,
          stop_reason: str) -> TrainMeta:
    wall = snapshot.wall_time_s
    return TrainMeta(
        created_at=now_iso(),
        algo=config.algorithm.name,
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
          force: bool = False, checkpoint_every: int = 0, runtime: Runtime | None = None,
          command: CommandLine = SCRIPT) -> TrainMeta:
    """Train (or resume) one run and write its checkpoint, meta JSON and TensorBoard logs.

    Args:
        resume: continue the run up to ``config.total_steps``: its interrupted partial run if there is
            one, else ``paths.checkpoint`` (refused when its env id, hyper-parameters or library versions
            differ, unless ``force``).
        force: without ``resume``: start over a finished run (kept until the new one completes); with
            ``resume``: continue despite the differences above.
        checkpoint_every: also write a checkpoint at the first rollout boundary after every this
            many steps (0: only at the end or on interrupt).
        runtime: the run's env path and threads, when the caller decided it already (for the same
            ``config.env_id``); default :func:`~fetchrl.pipeline.setup.runtime_for` ``(config)``.
        command: the chapter's command line, for the commands printed in messages.

    Returns the meta written. Raises TrainingInterrupted (exit 130/143) after saving the last
    rollout boundary as an incomplete checkpoint when SIGINT/SIGTERM arrives, and FetchRLError (exit 75)
    when another process trains this run.
    """
    if checkpoint_every < 0:
        raise FetchRLError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    envs.validate_env_id(config.env_id)
    with run_lock(paths):
        _finish_promotion(paths)
        run = plan_run(config, paths, resume=resume, force=force, command=command)  # refuse before building
        return _run(config, run, runtime or runtime_for(config), progress=progress,
                    checkpoint_every=checkpoint_every, command=command)


def train_or_resume(config: TrainConfig, paths: RunPaths, *, progress: bool = False, checkpoint_every: int = 0,
                    runtime: Runtime | None = None) -> TrainMeta:
    """What a rerun sweep wants for one trial: never redo finished or interrupted work, never lose it.

    - the seed's checkpoint is a complete run of exactly ``config``: returned as is, nothing trains;
    - its partial run, or else its checkpoint, is an unfinished run of ``config`` (same env id,
      hyper-parameters and versions): resumed, bit-exact;
    - anything else (none, corrupt, another configuration): trained from scratch; a complete checkpoint
      of another configuration is replaced only when the new run completes.
    """
    envs.validate_env_id(config.env_id)
    with run_lock(paths):
        _finish_promotion(paths)
        checkpoint = _read_or_none(paths)
        meta = checkpoint.meta if checkpoint is not None else None
        if meta is not None and _is_finished(meta, config):
            return meta
        run = _resumable(config, paths.partial, paths) or _resumable(config, paths, paths, checkpoint)
        if run is None:
            _discard(paths.partial)
            run = RunPlan(paths, paths.partial if meta is not None and meta.complete else paths)
        return _run(config, run, runtime or runtime_for(config), progress=progress,
                    checkpoint_every=checkpoint_every, command=SCRIPT)


def _resumable(config: TrainConfig, at: RunPaths, final: RunPaths,
               checkpoint: Checkpoint | None = None) -> RunPlan | None:
    """A plan continuing the unfinished run of ``config`` at ``at`` (read unless given), or None."""
    checkpoint = checkpoint if checkpoint is not None else _read_or_none(at)
    meta = checkpoint.meta if checkpoint is not None else None
    if (checkpoint is None or meta is None or meta.complete or meta.num_timesteps >= config.total_steps
            or resume_problems(meta, config)):
        return None
    return RunPlan(final, at, plan_resume(config, at, checkpoint=checkpoint))


def _run(config: TrainConfig, run: RunPlan, runtime: Runtime, *, progress: bool, checkpoint_every: int,
         command: CommandLine) -> TrainMeta:
    """Train from scratch or continue ``run.resume``'s checkpoint, on ``runtime``, writing to ``run.out``."""
    if runtime.env_id != config.env_id:
        raise ValueError(f"runtime for {runtime.env_id} given for a run of {config.env_id}")
    portable.require(config.portable)  # a library caller that loaded torch with other kernels is refused here
    _prepare_dirs(run)
    stop = StopRequest().install()  # early: a signal during set-up stops at the first step
    try:
        with _torch_determinism(config), torch_threads(runtime):
            return _learn(config, run, runtime, stop, progress=progress, checkpoint_every=checkpoint_every,
                          command=command)
    finally:
        stop.uninstall()


@dataclass
class _CheckpointWriter:
    """Writes a rollout-boundary snapshot as this run's checkpoint (zip with meta inside, then meta JSON).

    Interim checkpoints go to ``run.out``; the complete one too, but it names ``run.final``'s checkpoint
    in its meta, where :func:`promote` puts a staged run.
    """

    config: TrainConfig
    run: RunPlan
    model: Any

    def __call__(self, snapshot: Snapshot, complete: bool = False,
                 reason: str = "in progress (periodic checkpoint)") -> TrainMeta:
        named = self.run.final if complete else self.run.out
        meta = _meta(self.config, named, self.model, snapshot, complete=complete, stop_reason=reason)
        write_checkpoint(self.run.out, snapshot, meta)
        return meta


@dataclass(frozen=True)
class _Start:
    """Where a run starts: its model (on the run's VecEnv) and, when resuming, what else to restore."""

    model: Any
    state: ResumeState | None
    """The resume state whose logger and RNG states are restored right before ``learn`` (None: fresh)."""
    wall_time_s: float
    """Training wall time of the runs this one continues."""


#: Most gradient steps between two Q-statistics records, and environment steps between two
#: over-estimation measurements (the chapter's 500k-step run: ~60 and 50 records).
SAC_STATS_EVERY = 1_000
SAC_EVAL_EVERY = 10_000
#: A shorter run still gets about this many records of each (a test's 1,000 steps: a handful).
SAC_MIN_RECORDS = 5


def _stats_every(config: TrainConfig) -> int:
    """Gradient steps between two batch statistics records: SAC_STATS_EVERY, or fewer for a short run."""
    algo = config.algo
    warm_up, per_update = (algo.learning_starts, algo.gradient_steps) if isinstance(algo, SACConfig) else (0, 1)
    updates = max(0, config.total_steps - warm_up) // algo.rollout_size(config.n_envs) * per_update
    return min(SAC_STATS_EVERY, max(1, updates // SAC_MIN_RECORDS))


def sac_diagnostics(config: TrainConfig) -> SACDiagnosticsCallback:
    """The off-policy run's diagnostics (Q statistics, replay fill/age, Q vs Monte-Carlo gap), at a cadence
    that depends only on the config, so a resumed run keeps it. It has its own env and RNG: the training's
    numbers are untouched (tests/test_ch03.py's resume tests). A resumed run restarts the callback's RNG,
    so its *diagnostic* records after the resume differ from an uninterrupted run's; training does not."""
    eval_every = min(SAC_EVAL_EVERY, max(1, config.total_steps // SAC_MIN_RECORDS))
    return SACDiagnosticsCallback(_stats_every(config), eval_every=eval_every, seed=config.seed)


def her_diagnostics(config: TrainConfig) -> HERDiagnosticsCallback | None:
    """Chapter 4's HER diagnostics (``fetchrl.pipeline.her_callbacks``), or None when it would log nothing.

    The reward-0 fractions need a HER buffer (the "sac_her" arm; the callback finds it on the model); the
    object displacement needs a task with an object (Push) and is logged for *both* arms there, so the
    no-HER control shows whether it failed for lack of relabeling or for never touching the object.
    Chapter 3's SAC on Reach gets neither: its runs are exactly as before. Own RNG: training untouched.
    """
    her = config.algorithm.name == "sac_her"
    track_object = envs.has_object(config.env_id)
    if not (her or track_object):
        return None
    return HERDiagnosticsCallback(_stats_every(config), track_object=track_object, seed=config.seed)


def ent_coef_floor(config: TrainConfig) -> EntCoefFloorCallback | None:
    """``--ent-coef-min``'s callback (a learned ent_coef kept >= the floor), or None without a floor (0),
    so runs that do not ask for one are exactly as before."""
    algo = config.algo
    if isinstance(algo, SACConfig) and algo.ent_coef_min > 0:
        return EntCoefFloorCallback(algo.ent_coef_min)
    return None


def _start(config: TrainConfig, run: RunPlan, runtime: Runtime, env: Any) -> _Start:
    """A new model, or ``run.resume``'s checkpoint with ``env``'s state restored."""
    plan = run.resume
    if plan is None:
        return _Start(new_model(config, runtime, env), None, 0.0)
    resumed = resume_model(plan, config, runtime, env)
    if resumed.inexact:
        _warn(f"resuming {plan.checkpoint.path} from step {resumed.model.num_timesteps}, not bit-exact: "
              f"{resumed.inexact}")
    truncate_event_files(run.out.tb_dir, resumed.model.num_timesteps)
    after_existing_event_files(run.out.tb_dir)
    return _Start(resumed.model, resumed.state, plan.meta.wall_time_s)


def _learn(config: TrainConfig, run: RunPlan, runtime: Runtime, stop: StopRequest, *,
           progress: bool, checkpoint_every: int, command: CommandLine) -> TrainMeta:
    env = training_env(config, runtime)
    try:
        start = _start(config, run, runtime, env)
        model = start.model
        model.set_logger(configure(str(run.out.tb_dir), ["tensorboard"]))
        write = _CheckpointWriter(config, run, model)
        bar = ProgressCallback(config.steps_in_whole_rollouts, f"train seed {config.seed}", start=model.num_timesteps,
                               disable=not progress)
        snapshots: RolloutSnapshots
        if config.algorithm.on_policy:
            snapshots = RolloutSnapshots(write, every=checkpoint_every, wall_offset=start.wall_time_s)
            callbacks = [UpdateLogCallback(), snapshots, StopFlagCallback(stop), bar]  # UpdateLog first: see its doc
        else:  # a snapshot holds the replay buffer: taken only when due (see DueSnapshots); SB3 writes the logs
            snapshots = DueSnapshots(write, stop, every=checkpoint_every, wall_offset=start.wall_time_s)
            # diagnostics before FinalLogCallback: what they record at the last step is written with the rest
            # chapter 4's (None when not asked for or nothing to log: other runs are exactly as before);
            # the floor clamps at on_rollout_end, right before each update, wherever it stands in the list
            extra = [cb for cb in (her_diagnostics(config), ent_coef_floor(config)) if cb is not None]
            callbacks = [snapshots, bar, sac_diagnostics(config), *extra, FinalLogCallback()]
        if start.state is not None:  # last, right before learn: nothing else may draw from the generators
            restore_logger(model.logger, start.state.logger)
            restore_rng(start.state.rng)
        try:
            model.learn(config.total_steps - model.num_timesteps, callback=callbacks,
                        reset_num_timesteps=run.resume is None, progress_bar=False,
                        **config.algo.learn_kwargs(config.n_envs))
        finally:
            model.logger.close()
        if stop.signum is not None and snapshots.in_rollout and snapshots.latest is not None:
            return _interrupted(config, run, stop.signum, snapshots.latest, write, command)
        meta = write(Snapshot.take(model, snapshots.wall_time()), complete=True, reason="completed")
        if run.staged:  # complete: only now does it replace the finished run
            promote(run.final)
        if stop.signum is not None:  # the signal came during the last update: the run is complete
            raise TrainingInterrupted(
                f"{signal.Signals(stop.signum).name} arrived as training finished; the complete checkpoint "
                f"({meta.num_timesteps} steps) is saved to {run.final.checkpoint}",
                exit_code=SIGNAL_EXIT_CODES[signal.Signals(stop.signum)])
        return meta
    finally:
        env.close()


def _interrupted(config: TrainConfig, run: RunPlan, signum: int, snapshot: Snapshot,
                 write: _CheckpointWriter, command: CommandLine) -> TrainMeta:
    """Save the last rollout boundary as an incomplete checkpoint; raise with the command that resumes."""
    name = signal.Signals(signum).name
    write(snapshot, complete=False, reason=f"interrupted by {name}")
    kept = f"; the finished run in {run.final.checkpoint} is untouched" if run.staged else ""
    raise TrainingInterrupted(
        f"training stopped by {name}; checkpoint at step {snapshot.num_timesteps} of {config.total_steps} "
        f"saved to {run.out.checkpoint} (the unfinished rollout is redone on resume){kept}; "
        f"resume with: {resume_command(config, run.final, command)}",
        exit_code=SIGNAL_EXIT_CODES[signal.Signals(signum)],
    )
