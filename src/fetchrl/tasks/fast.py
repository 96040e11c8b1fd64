"""fetchrl's bit-equal fast envs by Gymnasium id, and the one set of factories for all of them.

Each fast env subclasses the stock Gymnasium-Robotics env of its id and changes only how a step is
computed, never what it computes (``tests/test_fastenv.py``, ``tests/test_fast_push.py``). Which ids
have one is :data:`fetchrl.runtime.FAST_ENVS`; this module maps each to its class and builds it:
:func:`make` behind ``gym.make``'s usual wrappers (TimeLimit(50) included), :func:`make_raw` bare, for
the process VecEnv (which does the time limit itself). Torch-free: the env worker process imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, cast

import gymnasium as gym
import mujoco
import numpy as np

from fetchrl.runtime import FAST_ENVS

#: Episode length of every Fetch task (Gymnasium-Robotics registers max_episode_steps=50).
MAX_EPISODE_STEPS = 50

#: For each fast id: the fast class ("module:Class") and the stock entry point it is bit-equal to.
FAST_CLASSES: dict[str, tuple[str, str]] = {
    "FetchReachDense-v4": ("fetchrl.tasks.fetchreach:FastFetchReachEnv",
                           "gymnasium_robotics.envs.fetch.reach:MujocoFetchReachEnv"),
    "FetchReach-v4": ("fetchrl.tasks.fetchreach:FastFetchReachEnv",
                      "gymnasium_robotics.envs.fetch.reach:MujocoFetchReachEnv"),
    "FetchPush-v4": ("fetchrl.tasks.fetchpush:FastFetchPushEnv",
                     "gymnasium_robotics.envs.fetch.push:MujocoFetchPushEnv"),
    "FetchPushDense-v4": ("fetchrl.tasks.fetchpush:FastFetchPushEnv",
                          "gymnasium_robotics.envs.fetch.push:MujocoFetchPushEnv"),
}
assert FAST_CLASSES.keys() == FAST_ENVS.keys(), "runtime.FAST_ENVS and FAST_CLASSES name the same ids"

#: A goal-conditioned observation: "observation", "achieved_goal", "desired_goal" -> float64 arrays.
Obs = dict[str, np.ndarray]
#: An env's info dict (Gymnasium's own type for it; the Fetch envs put ``is_success`` in it).
Info = dict[str, Any]


class RawEnv(Protocol):
    """What fetchrl uses of a bare fast env (:func:`make_raw`): a Gymnasium MuJoCo env whose
    ``model`` several envs may share (Gymnasium-Robotics ships no type information for it)."""

    model: mujoco.MjModel
    observation_space: gym.spaces.Space[Obs]
    action_space: gym.spaces.Space[np.ndarray]
    metadata: dict[str, Any]

    def step(self, action: np.ndarray) -> tuple[Obs, np.ndarray, bool, bool, Info]: ...

    def reset(self, *, seed: int | None = None, options: Info | None = None) -> tuple[Obs, Info]: ...

    def render(self) -> np.ndarray | None: ...

    def close(self) -> None: ...

    def get_wrapper_attr(self, name: str) -> object: ...

    @property
    def unwrapped(self) -> gym.Env[Obs, np.ndarray]: ...

_FAST_PREFIX = "fetchrl/Fast"


def check_id(env_id: str) -> None:
    """Raise ValueError unless ``env_id`` has a fast env here."""
    if env_id not in FAST_CLASSES:
        raise ValueError(f"no fast implementation of {env_id!r}; fast ids: {', '.join(FAST_CLASSES)}")


def fast_class(env_id: str) -> type[gym.Env]:
    """The fast env class of ``env_id`` (imported on first use: Push's module is not loaded for Reach)."""
    check_id(env_id)
    module, _, name = FAST_CLASSES[env_id][0].partition(":")
    cls: type[gym.Env] = getattr(importlib.import_module(module), name)
    return cls


def make_raw(env_id: str, render_mode: str | None = None, **kwargs: object) -> RawEnv:
    """The unwrapped fast env (no time limit): what fetchrl's process VecEnv steps.

    ``kwargs`` (e.g. ``shared_model``) go to the env; they override the id's reward type.
    """
    kwargs = {"reward_type": FAST_ENVS[env_id], **kwargs} if env_id in FAST_ENVS else kwargs
    env_class: Callable[..., gym.Env] = fast_class(env_id)  # the stock constructors' keywords
    return cast(RawEnv, env_class(render_mode=render_mode, **kwargs))


def register(env_id: str) -> str:
    """Register ``fetchrl/Fast<env_id>`` once (the stock id's reward type and time limit); its id."""
    check_id(env_id)
    stock = FAST_CLASSES[env_id][1]
    if env_id in gym.registry and gym.spec(env_id).entry_point != stock:  # a release that replaced the env
        raise ValueError(f"{env_id!r} is registered as {gym.spec(env_id).entry_point!r}, not {stock!r}: "
                         "the fast env is bit-equal to the latter only")
    fast_id = _FAST_PREFIX + env_id
    if fast_id not in gym.registry:
        gym.register(id=fast_id, entry_point=FAST_CLASSES[env_id][0], kwargs={"reward_type": FAST_ENVS[env_id]},
                     max_episode_steps=MAX_EPISODE_STEPS)
    return fast_id


def make(env_id: str, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """The fast env behind gym.make's usual wrappers (TimeLimit(50), OrderEnforcing, env checker)."""
    return gym.make(register(env_id), render_mode=render_mode, **kwargs)
