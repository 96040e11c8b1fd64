"""The one VecEnv factory of training: the process VecEnv on the fast path, SB3's DummyVecEnv otherwise."""

from __future__ import annotations

from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from fetchrl.runtime import Runtime
from fetchrl.tasks import envs
from fetchrl.vecenv.process import ProcessVecEnv


def make_vec_env(runtime: Runtime, n_envs: int, *, seed: int, all_in_worker: bool = False) -> VecEnv:
    """SB3 VecEnv of ``n_envs`` envs seeded ``seed .. seed + n_envs - 1``, with Monitor's ``episode`` infos.

    On the fast path: :class:`fetchrl.vecenv.process.ProcessVecEnv`, stepping the envs in
    ``runtime.env_procs`` processes; otherwise SB3's ``DummyVecEnv`` of ``Monitor(gym.make(id))``.
    Both return the same numbers for the same seed. ``all_in_worker``: the process VecEnv steps every
    env in its worker (for a model that works while they step: ``overlaps_env_steps`` of its class).
    """
    envs.validate_env_id(runtime.env_id)
    if runtime.fast:
        return ProcessVecEnv(runtime.env_id, n_envs, seed=seed, n_procs=runtime.env_procs,
                             all_in_worker=all_in_worker)
    return sb3_make_vec_env(lambda: envs.make_env(runtime), n_envs=n_envs, seed=seed, vec_env_cls=DummyVecEnv)
