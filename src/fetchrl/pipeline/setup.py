"""What a run is set up with: its :class:`~fetchrl.runtime.Runtime`, its model class, its torch threads.

The one place the pipeline turns a configuration into the things that run it. Training, resuming,
evaluation, the video and the bench take the :class:`~fetchrl.runtime.Runtime` from here (or from
the caller that already made it) and ask :func:`model_class` for the class; none of them names an
env path, a class or a thread count itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from fetchrl.algos.base import Algorithm
from fetchrl.algos.ppo import PPO
from fetchrl.config import TrainConfig
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs
from fetchrl.vecenv.factory import make_vec_env


def runtime_for(config: TrainConfig) -> Runtime:
    """The runtime of a run of ``config``: the fast path unless ``config.fast_env`` is False (``--reference-env``)."""
    return Runtime.decide(config.env_id, reference_env=not config.fast_env)


def model_class(runtime: Runtime, algorithm: Algorithm = PPO) -> type[BaseAlgorithm]:
    """The class that trains, resumes and loads ``algorithm``'s models on ``runtime``: its fast class on the
    fast path (FastPPO: SB3's PPO, same numbers, less Python per step), SB3's own class on the
    reference path, so that ``--reference-env`` stays plain SB3."""
    return algorithm.model_class(fast=runtime.fast)


def training_env(config: TrainConfig, runtime: Runtime) -> VecEnv:
    """The VecEnv a run of ``config`` trains on: ``config.n_envs`` envs seeded from ``config.seed`` on
    ``runtime``'s path, stepped all in the worker process when the model class works while they step
    (``overlaps_env_steps``: FastSAC's gradient step)."""
    overlaps = bool(getattr(model_class(runtime, config.algorithm), "overlaps_env_steps", False))
    return make_vec_env(runtime, config.n_envs, seed=config.seed, all_in_worker=overlaps)


def new_model(config: TrainConfig, runtime: Runtime, env: Any) -> Any:
    """A fresh model of :func:`model_class` with ``config``'s algorithm and hyper-parameters, on ``env``
    (``runtime``'s VecEnv)."""
    model = model_class(runtime, config.algorithm)(config.policy, env, seed=config.seed, device=config.device,
                                                   verbose=0, **config.sb3_kwargs())
    attach_goal_reward(model, runtime)
    return model


def attach_goal_reward(model: Any, runtime: Runtime) -> None:
    """Give a HER buffer that can use it (:class:`~fetchrl.algos.fasther.FlatHerReplayBuffer`) the task's
    ``compute_reward`` in this process, so relabeling does not ask the env worker for every batch.
    Nothing for any other buffer."""
    buffer = getattr(model, "replay_buffer", None)
    if buffer is not None and hasattr(buffer, "compute_reward_fn"):
        buffer.compute_reward_fn = envs.local_compute_reward(runtime)


@contextlib.contextmanager
def torch_threads(runtime: Runtime) -> Iterator[None]:
    """``runtime.torch_threads`` intra-op threads inside the block (restored afterwards); the
    reference path (None) keeps torch's default, so ``--reference-env`` stays plain SB3."""
    if runtime.torch_threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(runtime.torch_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
