"""Writing and reading checkpoints: atomic, self-describing, read once, with clear messages for bad files.

A checkpoint is SB3's zip (policy, optimiser, counters) plus two members fetchrl adds to it:
``fetchrl/meta.json`` (the run's :class:`TrainMeta`) and ``fetchrl/resume_state.pkl`` (RNG and
simulator state, see :mod:`fetchrl.pipeline.resume`). One atomic rename commits all three, so the weights,
the resume state and the identity of a checkpoint can never disagree, whatever kills the process.
The ``.meta.json`` beside the zip is written after it; a crash in between leaves that file one
checkpoint behind, and every reader trusts the zip's own copy.

Reading: :meth:`Checkpoint.read` reads the file once and validates it (zip, SB3's members, CRCs,
metadata); everything downstream — :func:`load_model` for evaluation and video, :func:`plan_resume`
and :func:`resume_model` for training on — works on that one object, and SB3 loads the model from
its bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fetchrl.artifacts import RunPaths, TrainMeta, atomic_write_bytes, collect_versions
from fetchrl.config import TrainConfig, algorithm_named
from fetchrl.errors import FetchRLError
from fetchrl.pipeline import resume
from fetchrl.pipeline.resume import META_MEMBER, STATE_MEMBER, ResumeState, Snapshot
from fetchrl.pipeline.setup import attach_goal_reward, model_class
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs

#: Versions that change the numbers a resumed run produces.
RESUME_VERSION_KEYS = ("stable_baselines3", "torch", "mujoco", "gymnasium_robotics")
#: Members every SB3 PPO checkpoint has (each algorithm's: ``Algorithm.checkpoint_members``).
SB3_MEMBERS = ("data", "policy.pth", "policy.optimizer.pth")
#: fetchrl's member naming the replay buffer saved beside an off-policy checkpoint: its SHA-256, so a
#: buffer file from another checkpoint (a crash between the two writes) is never resumed with this one.
REPLAY_MEMBER = "fetchrl/replay_buffer.sha256"
#: What SB3's ``load`` raises on a zip it cannot turn into a model.
_LOAD_ERRORS = (zipfile.BadZipFile, EOFError, KeyError, RuntimeError, ValueError, OSError, AssertionError)


# ============================================================================ writing
def write_checkpoint(paths: RunPaths, snapshot: Snapshot, meta: TrainMeta) -> None:
    """Write ``snapshot`` (with ``meta`` inside) to ``paths.checkpoint``, then ``paths.meta``; both atomic."""
    buf = io.BytesIO(snapshot.model_zip)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(STATE_MEMBER, snapshot.state)
        zf.writestr(META_MEMBER, json.dumps(asdict(meta), indent=2))
        if snapshot.replay_buffer is not None:  # beside the zip, before it: the zip then names a buffer on disk
            atomic_write_bytes(paths.replay_buffer, snapshot.replay_buffer)
            zf.writestr(REPLAY_MEMBER, hashlib.sha256(snapshot.replay_buffer).hexdigest())
    atomic_write_bytes(paths.checkpoint, buf.getvalue())
    meta.to_json(paths.meta)


# ============================================================================ reading, once
def _corrupt(ckpt: Path, why: str) -> FetchRLError:
    return FetchRLError(f"checkpoint {ckpt} is corrupt{why}; retrain or restore it")


def _members(ckpt: Path, data: bytes, sb3_members: tuple[str, ...] = SB3_MEMBERS) -> dict[str, bytes | None]:
    """fetchrl's members of the zip ``data`` (None when absent), after checking ``sb3_members`` and every CRC."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise _corrupt(ckpt, " or truncated (not a zip)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = set(zf.namelist())
            missing = sorted(set(sb3_members) - names)
            bad = None if missing else zf.testzip()
            ours = {m: zf.read(m) if m in names and bad is None else None
                    for m in (META_MEMBER, STATE_MEMBER, REPLAY_MEMBER)}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise _corrupt(ckpt, f" or truncated ({err})") from None
    if missing:  # a truncated SB3 zip can still look like a zip: torch stores each .pth as a zip of its own
        raise _corrupt(ckpt, f" or truncated (no {', '.join(missing)} inside)")
    if bad is not None:
        raise _corrupt(ckpt, f" (bad CRC in member {bad!r})")
    return ours


def _embedded_meta(ckpt: Path, raw: bytes | None) -> TrainMeta | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FetchRLError(f"metadata inside checkpoint {ckpt} is corrupt; retrain or restore it") from None
    return TrainMeta.from_dict(data, ckpt, "metadata inside checkpoint")


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint, read from disk and validated once; SB3 loads the model from :attr:`data`."""

    path: Path
    """The zip it was read from (every message names it)."""
    data: bytes = field(repr=False)
    """The whole zip."""
    meta: TrainMeta | None
    """The run's identity: the zip's own copy, else the ``.meta.json`` beside it (None: neither)."""
    state_bytes: bytes | None = field(repr=False)
    """fetchrl's resume state, still pickled (None: written without one). Unpickled only to resume,
    so a damaged one never stops an evaluation."""
    replay_sha256: str | None = None
    """SHA-256 of the replay buffer saved beside it (None: none saved; an on-policy checkpoint)."""

    @classmethod
    def read(cls, paths: RunPaths) -> Checkpoint:
        """Read ``paths.checkpoint`` (and the ``.meta.json`` beside it) once.

        Raises FetchRLError naming the file when the zip is missing, truncated, lacks SB3's members
        or fails a CRC check, and when either copy of the metadata is corrupt (a corrupt
        ``.meta.json`` is reported even when the zip has its own copy).
        """
        ckpt = paths.checkpoint
        if not ckpt.is_file():
            raise FetchRLError(f"checkpoint not found: {ckpt} (run `train --seed {paths.seed}` first)")
        try:
            data = ckpt.read_bytes()
        except OSError as err:
            raise FetchRLError(f"cannot read checkpoint {ckpt}: {err.strerror or err}") from None
        members = _members(ckpt, data, algorithm_named(paths.names.algo).checkpoint_members)
        side = TrainMeta.from_json(paths.meta) if paths.meta.is_file() else None
        inside = _embedded_meta(ckpt, members[META_MEMBER])
        replay = members[REPLAY_MEMBER]
        return cls(ckpt, data, inside or side, members[STATE_MEMBER], replay.decode() if replay else None)

    def resume_state(self) -> ResumeState | None:
        """The unpickled resume state (FetchRLError naming the file when it is corrupt)."""
        return None if self.state_bytes is None else ResumeState.from_bytes(self.state_bytes, str(self.path))

    def check_identity(self, env_id: str, spaces: tuple[Any, Any]) -> None:
        """Refuse a checkpoint whose metadata names another env id or other observation/action spaces."""
        if self.meta is None:
            return
        if self.meta.env_id != env_id:
            raise FetchRLError(f"checkpoint {self.path} was trained on {self.meta.env_id}, not {env_id}")
        for what, saved, current in (("observation", self.meta.observation_space, spaces[0]),
                                     ("action", self.meta.action_space, spaces[1])):
            if saved and saved != repr(current):
                raise FetchRLError(f"checkpoint {self.path} has {what} space {saved}, but {env_id} has "
                                   f"{current!r}; it belongs to another task")

    def load(self, cls: Any, env_id: str, spaces: tuple[Any, Any], *, env: Any = None, device: str = "cpu",
             force_reset: bool = True, **overrides: Any) -> Any:
        """``cls.load`` from :attr:`data`, after :meth:`check_identity`; FetchRLError names the file on any problem.

        Args:
            cls: the algorithm's class (:func:`fetchrl.pipeline.setup.model_class`).
            env_id, spaces: the task the caller needs and its (observation, action) spaces.
            env: the VecEnv to continue training in (None: predict only).
            force_reset: SB3's flag; False keeps the saved ``_last_obs`` (bit-exact resume).
            overrides: attributes set before SB3 rebuilds the model (e.g. hyper-parameters on ``--force``).
        """
        self.check_identity(env_id, spaces)
        try:
            model = cls.load(io.BytesIO(self.data), env=env, device=device, force_reset=force_reset, **overrides)
        except _LOAD_ERRORS as err:
            raise FetchRLError(f"checkpoint {self.path} cannot be loaded ({type(err).__name__}: {err}); "
                               "retrain it") from None
        if model.observation_space != spaces[0] or model.action_space != spaces[1]:
            raise FetchRLError(f"checkpoint {self.path} has observation/action spaces that differ from {env_id}'s")
        return model


def _spaces(runtime: Runtime) -> tuple[Any, Any]:
    """(observation space, action space) of ``runtime``'s env, from a probe env closed at once."""
    probe = envs.make_env(runtime)
    try:
        return probe.observation_space, probe.action_space
    finally:
        probe.close()


def load_model(paths: RunPaths, runtime: Runtime, *, device: str = "cpu", checkpoint: Checkpoint | None = None) -> Any:
    """The checkpoint at ``paths`` (or ``checkpoint``, when the caller has read it), to act with: read
    once, checked against ``runtime``'s task, loaded into the algorithm's class for ``runtime`` (no env attached)."""
    if runtime.env_id != paths.env_id:
        raise ValueError(f"runtime for {runtime.env_id} given for a run of {paths.env_id}")
    checkpoint = checkpoint or Checkpoint.read(paths)
    algorithm = algorithm_named(paths.names.algo)
    # Acting needs no replay buffer, and SB3 builds a HerReplayBuffer only around an env (it asserts
    # one): an off-policy model is loaded to act with a plain buffer instead (ch04's --her arm).
    overrides: dict[str, Any] = {} if algorithm.on_policy else {"replay_buffer_class": None, "replay_buffer_kwargs": {}}
    return checkpoint.load(model_class(runtime, algorithm), runtime.env_id, _spaces(runtime), device=device,
                           **overrides)


# ============================================================================ resuming
def resume_problems(meta: TrainMeta, config: TrainConfig) -> list[str]:
    """Why ``meta``'s run cannot be continued with ``config`` bit for bit (empty: it can)."""
    problems = []
    if meta.env_id != config.env_id:
        problems.append(f"env id {meta.env_id} != {config.env_id}")
    for key, value in config.hyperparameters.items():
        if meta.hyperparameters.get(key) != value:
            problems.append(f"{key} {meta.hyperparameters.get(key)!r} != {value!r}")
    if meta.portable != config.portable:  # the other mode runs other kernels
        problems.append(f"portable {meta.portable} != {config.portable}")
    now = collect_versions()
    for key in RESUME_VERSION_KEYS:
        if meta.versions.get(key) != now.get(key):
            problems.append(f"{key} {meta.versions.get(key)} != {now.get(key)}")
    return problems


@dataclass(frozen=True)
class ResumePlan:
    """A checkpoint accepted for continuing a run: read once, checked, its resume state unpickled."""

    checkpoint: Checkpoint
    meta: TrainMeta
    problems: tuple[str, ...]
    """What differs from the run's configuration (only with ``--force``; the continuation is then not exact)."""
    state: ResumeState | None
    """fetchrl's resume state (None: a checkpoint written without one)."""
    replay_buffer: bytes | None = None
    """The pickled replay buffer an off-policy run continues with, read once and checked (None: on-policy)."""


def _read_replay_buffer(paths: RunPaths, checkpoint: Checkpoint) -> bytes:
    """The replay buffer beside an off-policy checkpoint, checked against the digest the zip holds.

    Resuming without it would restart learning from an empty buffer: refused, naming the file.
    """
    where = paths.replay_buffer
    if checkpoint.replay_sha256 is None:
        raise FetchRLError(f"cannot resume {checkpoint.path}: it names no replay buffer; retrain it")
    try:
        data = where.read_bytes()
    except OSError as err:
        raise FetchRLError(f"cannot resume {checkpoint.path}: its replay buffer {where} cannot be read "
                           f"({err.strerror or err}); retrain it") from None
    if hashlib.sha256(data).hexdigest() != checkpoint.replay_sha256:
        raise FetchRLError(f"cannot resume {checkpoint.path}: the replay buffer {where} belongs to another "
                           "checkpoint; retrain it")
    return data


def plan_resume(config: TrainConfig, paths: RunPaths, *, force: bool = False,
                checkpoint: Checkpoint | None = None) -> ResumePlan:
    """Accept ``paths.checkpoint`` (or ``checkpoint``, when the caller has read it) for continuing to
    ``config.total_steps``; differences from ``config`` are allowed only with ``force``.

    Raises FetchRLError, naming the file, when it cannot be resumed. Cheap (no env, no model):
    run it before building anything.
    """
    ckpt = paths.checkpoint
    if checkpoint is None:
        if not ckpt.is_file():
            raise FetchRLError(f"nothing to resume: no checkpoint at {ckpt}; run train without --resume")
        checkpoint = Checkpoint.read(paths)
    meta = checkpoint.meta
    if meta is None:
        raise FetchRLError(f"cannot resume {ckpt}: its metadata {paths.meta} is missing; retrain it")
    problems = resume_problems(meta, config)
    if problems and not force:
        raise FetchRLError(f"refusing to resume {ckpt}: " + "; ".join(problems) + " (use --force to resume anyway)")
    if meta.num_timesteps >= config.total_steps:
        raise FetchRLError(
            f"{ckpt} already has {meta.num_timesteps} steps >= --total-steps {config.total_steps}; "
            "raise --total-steps to train further"
        )
    replay = None if algorithm_named(paths.names.algo).on_policy else _read_replay_buffer(paths, checkpoint)
    return ResumePlan(checkpoint, meta, tuple(problems), checkpoint.resume_state(), replay)


@dataclass
class Resumed:
    """A checkpoint loaded to continue training."""

    model: Any
    state: ResumeState | None
    """fetchrl's resume state (None: a checkpoint written without one)."""
    inexact: str | None
    """Why the continuation will not replay the uninterrupted run (None: it will, bit for bit)."""


def resume_model(plan: ResumePlan, config: TrainConfig, runtime: Runtime, env: Any) -> Resumed:
    """The planned checkpoint's model, attached to ``env``, with ``env``'s state restored first.

    Environment state is restored into ``env`` here (before SB3 sees it); RNG states are left to
    the caller, who restores them last, right before ``learn``.
    """
    state = plan.state
    env_restored = False
    if state is None:
        inexact: str | None = "the checkpoint holds no resume state"
    elif plan.meta.hyperparameters.get("n_envs") != config.n_envs:
        inexact = f"n_envs changed from {plan.meta.hyperparameters.get('n_envs')} to {config.n_envs}"
    else:
        inexact = resume.restore_vec_env(env, state.envs)
        env_restored = inexact is None
    if plan.problems:
        inexact = inexact or "resumed with --force despite: " + "; ".join(plan.problems)
    model = plan.checkpoint.load(model_class(runtime, config.algorithm), config.env_id,
                                 (env.observation_space, env.action_space), env=env, device=config.device,
                                 force_reset=not env_restored, **config.sb3_kwargs())
    if plan.replay_buffer is not None:
        # the episodes in flight go on (their envs are restored): HER must not close them as finished
        model.load_replay_buffer(io.BytesIO(plan.replay_buffer), truncate_last_traj=not env_restored)
        attach_goal_reward(model, runtime)
    if state is not None:
        resume.restore_sb3(model, state.sb3, with_env=env_restored)
    return Resumed(model, state, inexact)
