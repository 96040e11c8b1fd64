"""Writing and loading checkpoints: atomic, self-describing, with clear messages for bad files.

A checkpoint is SB3's zip (policy, optimiser, counters) plus two members fetchrl adds to it:
``fetchrl/meta.json`` (the run's :class:`TrainMeta`) and ``fetchrl/resume_state.pkl`` (RNG and
simulator state, see :mod:`fetchrl.pipeline.resume`). One atomic rename commits all three, so the weights,
the resume state and the identity of a checkpoint can never disagree, whatever kills the process.
The ``.meta.json`` beside the zip is written after it; a crash in between leaves that file one
checkpoint behind, and resuming trusts the zip's own copy.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fetchrl.artifacts import RunPaths, TrainMeta, atomic_write_bytes, collect_versions
from fetchrl.config import TrainConfig
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.resume import META_MEMBER, STATE_MEMBER, ResumeState, Snapshot

#: Versions that change the numbers a resumed run produces.
RESUME_VERSION_KEYS = ("stable_baselines3", "torch", "mujoco", "gymnasium_robotics")
#: Members every SB3 PPO checkpoint has.
SB3_MEMBERS = ("data", "policy.pth", "policy.optimizer.pth")


# ============================================================================ writing
def write_checkpoint(paths: RunPaths, snapshot: Snapshot, meta: TrainMeta) -> None:
    """Write ``snapshot`` (with ``meta`` inside) to ``paths.checkpoint``, then ``paths.meta``; both atomic."""
    buf = io.BytesIO(snapshot.model_zip)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(STATE_MEMBER, snapshot.state)
        zf.writestr(META_MEMBER, json.dumps(asdict(meta), indent=2))
    atomic_write_bytes(paths.checkpoint, buf.getvalue())
    meta.to_json(paths.meta)


# ============================================================================ reading
def require_zip(ckpt: Path, seed: int) -> None:
    """Raise FetchRLError naming ``ckpt`` when it is missing, truncated or fails its CRC checks."""
    if not ckpt.is_file():
        raise FetchRLError(f"checkpoint not found: {ckpt} (run `train --seed {seed}` first)")
    if not zipfile.is_zipfile(ckpt):
        raise FetchRLError(f"checkpoint {ckpt} is corrupt or truncated (not a zip); retrain or restore it")
    try:
        with zipfile.ZipFile(ckpt) as zf:
            missing = sorted(set(SB3_MEMBERS) - set(zf.namelist()))
            bad = None if missing else zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise FetchRLError(f"checkpoint {ckpt} is corrupt or truncated ({err}); retrain or restore it") from None
    if missing:  # a truncated SB3 zip can still look like a zip: torch stores each .pth as a zip of its own
        raise FetchRLError(f"checkpoint {ckpt} is corrupt or truncated (no {', '.join(missing)} inside); "
                           "retrain or restore it")
    if bad is not None:
        raise FetchRLError(f"checkpoint {ckpt} is corrupt (bad CRC in member {bad!r}); retrain or restore it")


def _read_member(ckpt: Path, member: str) -> bytes | None:
    with zipfile.ZipFile(ckpt) as zf:
        return zf.read(member) if member in zf.namelist() else None


def embedded_meta(ckpt: Path) -> TrainMeta | None:
    """The TrainMeta stored inside the zip (None for a checkpoint written without one)."""
    raw = _read_member(ckpt, META_MEMBER)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FetchRLError(f"metadata inside checkpoint {ckpt} is corrupt; retrain or restore it") from None
    return TrainMeta.from_dict(data, ckpt, "metadata inside checkpoint")


def embedded_state(ckpt: Path) -> ResumeState | None:
    raw = _read_member(ckpt, STATE_MEMBER)
    return None if raw is None else ResumeState.from_bytes(raw, str(ckpt))


def load_meta(paths: RunPaths) -> TrainMeta:
    return TrainMeta.from_json(paths.meta)


def checkpoint_meta(paths: RunPaths) -> TrainMeta | None:
    """The checkpoint's identity: the zip's own copy, else the ``.meta.json`` beside it.

    A corrupt ``.meta.json`` is reported (naming the file) even when the zip has its own copy.
    """
    side = load_meta(paths) if paths.meta.is_file() else None
    inside = embedded_meta(paths.checkpoint)
    return inside or side


def _check_identity(meta: TrainMeta | None, ckpt: Path, env_id: str, spaces: tuple[Any, Any] | None) -> None:
    """Refuse a checkpoint whose metadata names another env id or other observation/action spaces."""
    if meta is None:
        return
    if meta.env_id != env_id:
        raise FetchRLError(f"checkpoint {ckpt} was trained on {meta.env_id}, not {env_id}")
    if spaces is None:
        return
    for what, saved, current in (("observation", meta.observation_space, spaces[0]),
                                 ("action", meta.action_space, spaces[1])):
        if saved and saved != repr(current):
            raise FetchRLError(f"checkpoint {ckpt} has {what} space {saved}, but {env_id} has {current!r}; "
                               "it belongs to another task")


def _probe_spaces(env_id: str) -> tuple[Any, Any]:
    from fetchrl.tasks import envs

    probe = envs.make_env(env_id)
    try:
        return probe.observation_space, probe.action_space
    finally:
        probe.close()


def load_model(paths: RunPaths, env: Any = None, *, device: str = "cpu", expected_env_id: str | None = None,
               force_reset: bool = True, model_class: Any = None, **overrides: Any) -> Any:
    """Load ``paths.checkpoint`` with ``PPO.load``; FetchRLError names the file on any problem.

    Args:
        env: the VecEnv to continue training in (None: predict only; spaces are checked on a probe env).
        expected_env_id: the env id the caller needs (default ``paths.env_id``).
        force_reset: SB3's flag; False keeps the saved ``_last_obs`` (bit-exact resume).
        model_class: the PPO class to load into (default SB3's; ``fetchrl.algos.fastppo.FastPPO`` to train on).
        overrides: attributes set before SB3 rebuilds the model (e.g. hyper-parameters on ``--force``).
    """
    from stable_baselines3 import PPO

    model_class = model_class or PPO

    ckpt = paths.checkpoint
    env_id = expected_env_id or paths.env_id
    require_zip(ckpt, paths.seed)
    spaces = (env.observation_space, env.action_space) if env is not None else _probe_spaces(env_id)
    _check_identity(checkpoint_meta(paths), ckpt, env_id, spaces)
    try:
        model = model_class.load(ckpt, env=env, device=device, force_reset=force_reset, **overrides)
    except (zipfile.BadZipFile, EOFError, KeyError, RuntimeError, ValueError, OSError, AssertionError) as err:
        raise FetchRLError(f"checkpoint {ckpt} cannot be loaded ({type(err).__name__}: {err}); retrain it") from None
    if model.observation_space != spaces[0] or model.action_space != spaces[1]:
        raise FetchRLError(f"checkpoint {ckpt} has observation/action spaces that differ from {env_id}'s")
    return model


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


@dataclass
class Resumed:
    """A checkpoint loaded to continue training."""

    model: Any
    meta: TrainMeta
    state: ResumeState | None
    """fetchrl's resume state (None: a checkpoint written without one)."""
    inexact: str | None
    """Why the continuation will not replay the uninterrupted run (None: it will, bit for bit)."""


def check_resumable(config: TrainConfig, paths: RunPaths, *,
                    force: bool = False) -> tuple[TrainMeta, list[str], ResumeState | None]:
    """The checkpoint's meta, what differs from ``config`` (allowed by ``force``) and its resume state.

    Raises FetchRLError, naming the file, when the checkpoint cannot be resumed.
    Cheap (no env, no torch): run it before building anything.
    """
    ckpt = paths.checkpoint
    if not ckpt.is_file():
        raise FetchRLError(f"nothing to resume: no checkpoint at {ckpt}; run train without --resume")
    require_zip(ckpt, paths.seed)
    meta = checkpoint_meta(paths)
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
    return meta, problems, embedded_state(ckpt)


def load_for_resume(config: TrainConfig, paths: RunPaths, env: Any, *, force: bool = False,
                    model_class: Any = None) -> Resumed:
    """Load the latest checkpoint of ``config.seed`` to continue it, refusing a mismatched one.

    Environment state is restored into ``env`` here (before SB3 sees it); RNG states are left to
    the caller, who restores them last, right before ``learn``.
    """
    from fetchrl.pipeline import resume

    meta, problems, state = check_resumable(config, paths, force=force)
    env_restored = False
    if state is None:
        inexact: str | None = "the checkpoint holds no resume state"
    elif meta.hyperparameters.get("n_envs") != config.n_envs:
        inexact = f"n_envs changed from {meta.hyperparameters.get('n_envs')} to {config.n_envs}"
    else:
        inexact = resume.restore_vec_env(env, state.envs)
        env_restored = inexact is None
    if problems:
        inexact = inexact or "resumed with --force despite: " + "; ".join(problems)
    model = load_model(paths, env=env, device=config.device, expected_env_id=config.env_id,
                       force_reset=not env_restored, model_class=model_class, **config.ppo_kwargs())
    if state is not None:
        resume.restore_sb3(model, state.sb3, with_env=env_restored)
    return Resumed(model, meta, state, inexact)

