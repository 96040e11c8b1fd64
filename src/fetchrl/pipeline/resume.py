"""Bit-exact resume: what SB3's checkpoint zip leaves out, captured at rollout boundaries.

SB3's zip holds the policy, the optimiser and the counters, but neither the random generators nor
the environments' simulator state, so ``PPO.load`` + ``learn(reset_num_timesteps=False)`` continues
with different goals and different noise than the uninterrupted run would have. A
:class:`ResumeState` holds the rest:

- ``rng``    — Python ``random``, NumPy's global generator (SB3 shuffles minibatches with
  ``np.random.permutation``) and torch's CPU (and CUDA) generators (action sampling);
- ``sb3``    — ``_last_obs``, ``_last_episode_starts``, ``ep_info_buffer``, ``ep_success_buffer`` and
  the counters (also in SB3's zip; kept here so one object describes the boundary);
- ``logger`` — values recorded but not yet written (``train/*`` of the last update, which SB3
  writes with the next rollout's ``rollout/*``), so the TensorBoard curves continue unchanged;
- ``envs``   — per environment: MuJoCo's integration state (``mj_getState``), the goal, the env's
  ``np_random`` and action-space generator, and the ``TimeLimit`` / ``Monitor`` counters. Pickling
  the env does not work: ``EzPickle`` rebuilds it from its constructor arguments and loses the goal.

Snapshots are taken at **rollout boundaries** (after an update, before the next env step): only there
does a resumed run replay exactly what the uninterrupted run does. :class:`RolloutSnapshots` keeps
the latest boundary in memory (a few milliseconds per rollout), so Ctrl-C stops at the very next
step and saves that boundary; the partial rollout is lost and redone on resume.

Environment state is captured from:

1. a VecEnv with ``get_state()`` / ``set_state(state)`` methods (opaque, picklable state), such as
   :class:`fetchrl.vecenv.process.ProcessVecEnv` (the fast path);
2. SB3's ``DummyVecEnv`` of ``Monitor(TimeLimit(...(MuJoCo env)))`` (the reference path) — walked here,
   wrapper by wrapper.

Either way each env's own state is :func:`fetchrl.tasks.envstate.get_env_state`'s, the one pair of
functions that reads and writes it. Any other VecEnv yields ``envs=None``: resume then resets the
environments (what SB3 and rl-zoo3 do) and is not bit-exact; :func:`restore_vec_env` says so.
"""

from __future__ import annotations

import copy
import io
import pickle
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from fetchrl.errors import FetchRLError
from fetchrl.tasks.envstate import NotCapturable, get_env_state, set_env_state

#: Bumped when the layout of :class:`ResumeState` changes; older states are refused by name.
STATE_FORMAT = 1
#: Members fetchrl adds to SB3's checkpoint zip (SB3's loader ignores files that are not ``*.pth``).
STATE_MEMBER = "fetchrl/resume_state.pkl"
META_MEMBER = "fetchrl/meta.json"

#: SB3 attributes that change during training and define where it continues.
_SB3_ATTRS = ("num_timesteps", "_episode_num", "_n_updates", "_current_progress_remaining",
              "_last_obs", "_last_episode_starts", "_last_original_obs")


@dataclass
class ResumeState:
    """Everything beyond SB3's zip that a bit-exact continuation needs, at one rollout boundary."""

    num_timesteps: int
    rng: dict[str, Any]
    sb3: dict[str, Any]
    logger: dict[str, Any]
    envs: dict[str, Any] | None
    """``{"kind": "vec" | "wrappers", "n_envs": n, "data": ...}``; None when not capturable."""
    format: int = STATE_FORMAT

    @property
    def exact(self) -> bool:
        """True when the environments' state was captured (resume replays the uninterrupted run)."""
        return self.envs is not None

    def to_bytes(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> ResumeState:
        try:
            state = pickle.loads(data)
        except Exception as err:  # any unpickling failure means the same thing to the user
            raise FetchRLError(f"resume state in {source} is corrupt ({type(err).__name__}); "
                               "resume with --force to restart its episodes, or retrain") from None
        if not isinstance(state, cls) or getattr(state, "format", None) != STATE_FORMAT:
            raise FetchRLError(f"resume state in {source} has an unknown format; resume with --force or retrain")
        return state


# ============================================================================ random generators
def capture_rng() -> dict[str, Any]:
    """States of every global generator SB3 and torch draw from."""
    import torch

    rng: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                           "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["torch_cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    import torch

    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "torch_cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["torch_cuda"])


# ============================================================================ SB3 and its logger
def capture_sb3(model: Any) -> dict[str, Any]:
    out = {name: copy.deepcopy(getattr(model, name, None)) for name in _SB3_ATTRS}
    # SAC's warm-up actions come from the model's action space, which SB3's load reseeds with the run's seed.
    out["action_space_rng"] = copy.deepcopy(model.action_space.np_random.bit_generator.state)
    for name in ("ep_info_buffer", "ep_success_buffer"):
        buf = getattr(model, name, None)
        out[name] = None if buf is None else (list(copy.deepcopy(buf)), buf.maxlen)
    return out


def restore_sb3(model: Any, sb3: dict[str, Any], *, with_env: bool) -> None:
    """Put the counters and buffers back; ``with_env=False`` keeps SB3's fresh ``_last_obs`` (envs reset)."""
    for name in _SB3_ATTRS:
        if name.startswith("_last_") and not with_env:
            continue
        setattr(model, name, copy.deepcopy(sb3[name]))
    for name in ("ep_info_buffer", "ep_success_buffer"):
        if sb3.get(name) is not None:
            items, maxlen = sb3[name]
            setattr(model, name, deque(copy.deepcopy(items), maxlen=maxlen))
    if sb3.get("action_space_rng") is not None:  # absent from states saved before it was captured
        model.action_space.np_random.bit_generator.state = copy.deepcopy(sb3["action_space_rng"])


def capture_logger(logger: Any) -> dict[str, Any]:
    """Values recorded since the last dump (SB3 writes them with the next rollout's values)."""
    return {"value": dict(logger.name_to_value), "count": dict(logger.name_to_count),
            "excluded": dict(logger.name_to_excluded)}


def restore_logger(logger: Any, pending: dict[str, Any]) -> None:
    logger.name_to_value.update(pending["value"])
    logger.name_to_count.update(pending["count"])
    logger.name_to_excluded.update(pending["excluded"])


# ============================================================================ one environment
def _layers(env: Any) -> list[Any]:
    import gymnasium as gym

    out = [env]
    while isinstance(out[-1], gym.Wrapper):
        out.append(out[-1].env)
    return out


def _wrapper_role(layer: Any) -> str:
    """The role of a wrapper layer, or NotCapturable for a wrapper whose state we would lose."""
    from gymnasium.wrappers import OrderEnforcing, PassiveEnvChecker, TimeLimit
    from stable_baselines3.common.monitor import Monitor

    if isinstance(layer, Monitor):
        return "monitor"
    if isinstance(layer, TimeLimit):
        return "time_limit"
    if isinstance(layer, OrderEnforcing | PassiveEnvChecker):
        return "stateless"  # only "has been reset" flags; restore() runs after a reset
    raise NotCapturable(f"unknown wrapper {type(layer).__name__}")


def capture_env(env: Any) -> dict[str, Any]:
    """State of one wrapped Gymnasium MuJoCo env: :func:`~fetchrl.tasks.envstate.get_env_state`'s, plus
    its Monitor / TimeLimit counters (copies, picklable).

    Raises NotCapturable for a wrapper or simulator it does not know.
    """
    state: dict[str, Any] = {}
    for layer in _layers(env)[:-1]:
        role = _wrapper_role(layer)
        if role == "monitor":
            state["monitor"] = {k: copy.deepcopy(getattr(layer, k)) for k in (
                "t_start", "rewards", "needs_reset", "episode_returns", "episode_lengths", "episode_times",
                "total_steps", "current_reset_info")}
        elif role == "time_limit":
            state["time_limit"] = int(layer._elapsed_steps or 0)
    return {**state, **get_env_state(env)}


def restore_env(env: Any, state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_env` on a freshly *reset* env of the same id and wrappers.

    Raises ValueError when the saved simulator state does not fit this env's model.
    """
    for layer in _layers(env)[:-1]:
        role = _wrapper_role(layer)
        if role == "monitor":
            for k, v in state["monitor"].items():
                setattr(layer, k, copy.deepcopy(v))
        elif role == "time_limit":
            layer._elapsed_steps = state["time_limit"]
    set_env_state(env, state)


# ============================================================================ vector envs
def _vec_kind(vec: Any) -> str | None:
    from stable_baselines3.common.vec_env import DummyVecEnv

    if callable(getattr(vec, "get_state", None)) and callable(getattr(vec, "set_state", None)):
        return "vec"
    if isinstance(vec, DummyVecEnv):
        return "wrappers"
    return None


def capture_vec_env(vec: Any) -> dict[str, Any] | None:
    """The state of every env of ``vec``, or None when ``vec`` offers no way to capture it."""
    kind = _vec_kind(vec)
    if kind == "vec":
        data: Any = vec.get_state()
    elif kind == "wrappers":
        try:
            data = [capture_env(e) for e in vec.envs]
        except NotCapturable:
            return None
    else:
        return None
    return {"kind": kind, "n_envs": int(vec.num_envs), "data": data}


def restore_vec_env(vec: Any, saved: dict[str, Any] | None) -> str | None:
    """Restore ``vec`` from :func:`capture_vec_env`'s result; returns None or why it could not.

    The caller loads the model with ``force_reset=False`` only when this returns None. Raises
    FetchRLError when a saved simulator state does not fit this run's model (another mujoco version).
    """
    if saved is None:
        return "the checkpoint holds no environment state (its VecEnv could not be captured)"
    kind = _vec_kind(vec)
    if kind != saved["kind"] or int(vec.num_envs) != saved["n_envs"]:
        return (f"the checkpoint's environments ({saved['kind']}, {saved['n_envs']} envs) differ from this run's "
                f"({kind}, {vec.num_envs} envs)")
    try:
        if kind == "vec":
            vec.set_state(saved["data"])
            return None
        vec.reset()  # wrappers that refuse to step before a reset (OrderEnforcing) now accept the restored state
        for e, s in zip(vec.envs, saved["data"], strict=True):
            restore_env(e, s)
    except NotCapturable as err:
        return f"this run's environments cannot take the saved state ({err})"
    except ValueError as err:  # raised here or, for the process VecEnv, in its worker and re-raised here
        raise FetchRLError(f"cannot restore the saved environments: {err}") from None
    return None


# ============================================================================ snapshots
def capture(model: Any) -> ResumeState:
    """A :class:`ResumeState` of ``model`` and its env; call it at a rollout boundary."""
    return ResumeState(
        num_timesteps=int(model.num_timesteps),
        rng=capture_rng(),
        sb3=capture_sb3(model),
        logger=capture_logger(model.logger),
        envs=capture_vec_env(model.get_env()),
    )


@dataclass
class Snapshot:
    """One rollout boundary, in memory: SB3's zip bytes plus fetchrl's resume state."""

    num_timesteps: int
    wall_time_s: float
    """Training wall time up to this boundary (including earlier, resumed-from runs)."""
    model_zip: bytes
    state: bytes
    exact: bool
    replay_buffer: bytes | None = None
    """An off-policy model's replay buffer, pickled as SB3's ``save_replay_buffer`` writes it (None: on-policy)."""

    @classmethod
    def take(cls, model: Any, wall_time_s: float) -> Snapshot:
        buf = io.BytesIO()
        model.save(buf)
        state = capture(model)
        replay = getattr(model, "replay_buffer", None)  # SB3 leaves it out of the zip
        replay_bytes = None if replay is None else pickle.dumps(replay, protocol=pickle.HIGHEST_PROTOCOL)
        return cls(int(model.num_timesteps), wall_time_s, buf.getvalue(), state.to_bytes(), state.exact, replay_bytes)


class RolloutSnapshots(BaseCallback):
    """Keep the latest rollout-boundary :class:`Snapshot`; hand one to ``write`` every ``every`` steps.

    SB3 calls ``on_rollout_start`` after the previous update and before the first env step of the
    next rollout: the one point where a saved state resumes bit-exactly. ``in_rollout`` tells the
    caller whether ``learn`` stopped mid-rollout (the live model is then past ``latest``).

    Args:
        write: persists a snapshot (atomically); called on the training thread.
        every: write a snapshot once at least this many steps passed since the last one (0: never).
        wall_offset: wall time of earlier runs this one resumes.
    """

    def __init__(self, write: Callable[[Snapshot], object], every: int = 0, wall_offset: float = 0.0) -> None:
        super().__init__()
        self.write = write
        self.every = every
        self.wall_offset = wall_offset
        self.latest: Snapshot | None = None
        self.in_rollout = False
        self._t0 = 0.0
        self._last_written = 0

    def wall_time(self) -> float:
        return self.wall_offset + (time.perf_counter() - self._t0)

    def _on_training_start(self) -> None:
        self._t0 = time.perf_counter()
        self._last_written = int(self.model.num_timesteps)

    def _on_rollout_start(self) -> None:
        self.latest = Snapshot.take(self.model, self.wall_time())
        self.in_rollout = True
        if self.every and self.latest.num_timesteps - self._last_written >= self.every:
            self.write(self.latest)
            self._last_written = self.latest.num_timesteps

    def _on_rollout_end(self) -> None:
        self.in_rollout = False

    def _on_step(self) -> bool:
        return True


class DueSnapshots(RolloutSnapshots):
    """:class:`RolloutSnapshots` for an off-policy algorithm: a snapshot only when one is due.

    With ``train_freq=1`` every vector step is a rollout, and a snapshot holds the replay buffer (up to
    a million transitions), so none is taken at an ordinary boundary. At a boundary (SB3's
    ``on_rollout_start``: after the previous update, before the next env step) a snapshot is taken when

    - ``should_stop()`` is true (a signal arrived): it becomes :attr:`latest`, and the next ``on_step``
      returns False. SB3's off-policy loop checks that return value *before* it stores the step's
      transition, so the step taken after the snapshot is dropped whole and redone on resume;
    - ``every`` steps passed since the last write: it is handed to ``write``.

    Use it instead of :class:`~fetchrl.pipeline.callbacks.StopFlagCallback`, which would stop at a step
    with no snapshot taken.
    """

    def __init__(self, write: Callable[[Snapshot], object], should_stop: Callable[[], bool], every: int = 0,
                 wall_offset: float = 0.0) -> None:
        super().__init__(write, every, wall_offset)
        self.should_stop = should_stop
        self.stopping = False

    def _on_rollout_start(self) -> None:
        self.in_rollout = True
        steps = int(self.model.num_timesteps)
        due = bool(self.every) and steps - self._last_written >= self.every
        if not (due or self.should_stop()):
            return
        self.latest = Snapshot.take(self.model, self.wall_time())
        self.stopping = self.should_stop()
        if due:
            self.write(self.latest)
            self._last_written = steps

    def _on_step(self) -> bool:
        return not self.stopping

    def allows_overlap(self) -> bool:
        """For :func:`fetchrl.algos.fastsac.allows_overlap`: unless it stops training at this step. Its
        snapshot was taken at this step's ``on_rollout_start``, before the overlapped update; a signal
        arriving during that update is acted on at the next boundary, like one during any update."""
        return not self.stopping


# ============================================================================ TensorBoard
def truncate_event_files(tb_dir: Any, max_step: int) -> int:
    """Drop events logged after ``max_step`` (a crash lost them from the checkpoint); returns how many.

    A run killed after its last checkpoint has written curves past it; the resumed run writes
    those steps again. Each event file is rewritten atomically without the later events (and
    without a torn last record), so every tag's steps stay unique and increasing across files.
    """
    import struct
    from pathlib import Path

    from tensorboard.compat.proto.event_pb2 import Event

    from fetchrl.artifacts import atomic_write_bytes

    dropped = 0
    for path in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        kept, pos, changed = [], 0, False
        while pos + 12 <= len(raw):
            (length,) = struct.unpack("<Q", raw[pos:pos + 8])
            end = pos + 12 + length + 4
            if end > len(raw):
                break
            try:
                event = Event.FromString(raw[pos + 12:pos + 12 + length])
            except Exception:  # a torn record: everything from here on is unreadable
                break
            if event.HasField("summary") and event.step > max_step:
                dropped += 1
                changed = True
            else:
                kept.append(raw[pos:end])
            pos = end
        if changed or pos != len(raw):
            atomic_write_bytes(path, b"".join(kept))
    return dropped


def after_existing_event_files(tb_dir: Any) -> None:
    """Wait (at most a second) so the next event file's name sorts after those already in ``tb_dir``.

    TensorBoard reads a run's event files in name order, and the name starts with the creation time
    in whole seconds; a resumed run whose file shared the second of the interrupted run's file could
    sort before it, and TensorBoard would take the earlier steps for a restart and drop the later ones.
    """
    from pathlib import Path

    stamps = []
    for path in Path(tb_dir).glob("events.out.tfevents.*"):
        part = path.name.split(".")[3]
        if part.isdigit():
            stamps.append(int(part))
    if stamps:
        wait = max(stamps) + 1 - time.time()
        if wait > 0:
            time.sleep(wait)
