"""One MuJoCo env's state, captured and restored — the single pair behind bit-exact resume.

Both vector envs save their envs through these two functions: the process VecEnv's rows
(:class:`fetchrl.vecenv.worker.EnvRows`, in this process and in its torch-free worker) and SB3's
``DummyVecEnv`` walked wrapper by wrapper (:func:`fetchrl.pipeline.resume.capture_env`). Each adds
its own episode counters (``TimeLimit`` / ``Monitor``, or the rows' equivalents) beside this state.

Pickling the env does not work: ``EzPickle`` rebuilds it from its constructor arguments and loses
the goal. No torch here: the env worker process imports this module.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Protocol, TypedDict, cast

import gymnasium as gym
import mujoco
import numpy as np

#: What ``mj_getState`` saves: everything ``mj_step`` integrates (time, qpos, qvel, act, warm-start, mocap, ...).
_SIM_STATE = mujoco.mjtState.mjSTATE_INTEGRATION


class EnvState(TypedDict):
    """One env's saved state (:func:`get_env_state`)."""

    sim: np.ndarray
    goal: np.ndarray | None
    np_random: Mapping[str, object]
    action_space_rng: Mapping[str, object]


class _MujocoBase(Protocol):
    """What this module reads of an unwrapped Gymnasium MuJoCo env (Gymnasium-Robotics is untyped)."""

    model: mujoco.MjModel
    data: mujoco.MjData
    np_random: np.random.Generator
    goal: np.ndarray


class WrappedEnv(Protocol):
    """A Gymnasium env, wrapped or bare (a ``gym.Env`` or :class:`fetchrl.tasks.fast.RawEnv`)."""

    @property
    def unwrapped(self) -> gym.Env: ...

    @property
    def action_space(self) -> gym.spaces.Space: ...


class NotCapturable(Exception):
    """The env holds state this module does not know how to save (not a MuJoCo env, or an unknown wrapper)."""


def get_env_state(env: WrappedEnv) -> EnvState:
    """Picklable copies of what decides an env's next steps: MuJoCo's integration state (``sim``,
    float64 [mj_stateSize]), the goal ([3] or None), the env's ``np_random`` state and its action
    space's generator state. ``env`` may be wrapped; the state is read from ``env.unwrapped``.

    Raises NotCapturable when ``env`` is not a MuJoCo env.
    """
    if not isinstance(getattr(env.unwrapped, "data", None), mujoco.MjData):
        raise NotCapturable(f"{type(env.unwrapped).__name__} is not a MuJoCo env")
    base = cast(_MujocoBase, env.unwrapped)
    sim = np.empty(mujoco.mj_stateSize(base.model, _SIM_STATE), dtype=np.float64)
    mujoco.mj_getState(base.model, base.data, sim, _SIM_STATE)
    goal = getattr(base, "goal", None)
    return {"sim": sim, "goal": None if goal is None else np.array(goal, copy=True),
            "np_random": copy.deepcopy(base.np_random.bit_generator.state),
            "action_space_rng": copy.deepcopy(env.action_space.np_random.bit_generator.state)}


def set_env_state(env: WrappedEnv, state: EnvState | Mapping[str, Any]) -> None:
    """Inverse of :func:`get_env_state` on an env of the same id (extra keys in ``state`` are ignored).

    Raises ValueError when the saved simulator state does not fit this env's model.
    """
    base = cast(_MujocoBase, env.unwrapped)
    sim = np.asarray(state["sim"], dtype=np.float64)
    if sim.size != mujoco.mj_stateSize(base.model, _SIM_STATE):
        raise ValueError("saved simulator state does not fit this model (another env or mujoco version)")
    mujoco.mj_setState(base.model, base.data, sim, _SIM_STATE)
    mujoco.mj_forward(base.model, base.data)  # derived quantities (xpos, site frames) the next step reads
    if state["goal"] is not None:
        base.goal = np.array(state["goal"], copy=True)
    base.np_random.bit_generator.state = copy.deepcopy(state["np_random"])
    env.action_space.np_random.bit_generator.state = copy.deepcopy(state["action_space_rng"])
