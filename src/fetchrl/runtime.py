"""How a process runs one task — which env, which vector env, how many threads — decided once.

fetchrl runs a task on one of two paths that give the same numbers (``tests/test_fastenv.py``,
``tests/test_fastppo.py``):

- **fast** (the default, for ids in :data:`FAST_ENVS`): fetchrl's lean env
  (:mod:`fetchrl.tasks.fast`: Reach and Push), the process-parallel VecEnv (:mod:`fetchrl.vecenv.process`), the
  algorithm's fast class (:func:`fetchrl.pipeline.setup.model_class`) and one torch thread while training;
- **reference** (``--reference-env``, or an id without a fast env): Gymnasium-Robotics' env in SB3's
  ``DummyVecEnv``, SB3's own class and torch's default thread count — plain SB3.

:meth:`Runtime.decide` makes the choice; the env factory (:mod:`fetchrl.tasks.envs`), check-env,
evaluation, the video, the report's baselines and training receive the :class:`Runtime` it returns,
never a flag of their own, so no two of them can disagree. This module imports neither torch nor
MuJoCo: the CLI reads it before choosing MuJoCo's GL backend, and the env worker process imports it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: Gymnasium ids fetchrl steps with its own bit-equal env (:mod:`fetchrl.tasks.fast` maps each to its class), and the
#: reward type each one uses.
FAST_ENVS: dict[str, str] = {
    "FetchReachDense-v4": "dense", "FetchReach-v4": "sparse", "FetchPush-v4": "sparse", "FetchPushDense-v4": "dense",
}

#: Torch intra-op threads while training on the fast path. The policy is a 64-64 MLP on minibatches of
#: 256: a second thread buys nothing there, while the env worker process needs the other core — and on
#: a shared machine OpenMP's spin-waiting makes two threads several times *slower* (bench/bench_speed.py).
FAST_TORCH_THREADS = 1

#: At most this many processes step one process VecEnv's envs (this one and one worker).
MAX_ENV_PROCS = 2
#: Caps the processes a process VecEnv steps its envs in; a sweep worker sets it to its share of the cores.
ENV_PROCS_VAR = "FETCHRL_ENV_PROCS"
#: The name sweeps set before the VecEnv stepped envs in processes (``fetchrl.config.ENV_THREADS_VAR``),
#: still read, after :data:`ENV_PROCS_VAR`, as the same cap. Spelled out, not imported: this module
#: imports nothing of fetchrl's, so the torch-free env worker can import it.
LEGACY_ENV_PROCS_VAR = "FETCHRL_ENV_THREADS"


def default_env_procs() -> int:
    """Processes a process VecEnv steps its envs in: two on a machine with two or more cores (this
    one and a worker), fewer when ``FETCHRL_ENV_PROCS`` (or ``FETCHRL_ENV_THREADS``) caps it."""
    for var in (ENV_PROCS_VAR, LEGACY_ENV_PROCS_VAR):
        cap = os.environ.get(var, "")
        if cap.isdigit() and int(cap) > 0:
            return min(MAX_ENV_PROCS, int(cap))
    return max(1, min(MAX_ENV_PROCS, os.cpu_count() or 1))


@dataclass(frozen=True)
class Runtime:
    """The path one task runs on in this process; made by :meth:`decide`, then passed whole."""

    env_id: str
    """The Gymnasium id every env of this runtime is made for."""
    fast: bool
    """True: fetchrl's fast env, the process VecEnv and the algorithm's fast class. False: Gymnasium-
    Robotics' env, SB3's ``DummyVecEnv`` and SB3's own class (plain SB3)."""
    torch_threads: int | None
    """Torch intra-op threads while training; None leaves torch's default alone (the reference path)."""
    env_procs: int
    """Processes that step a vector env's envs, this one included (1 on the reference path)."""

    @classmethod
    def decide(cls, env_id: str, *, reference_env: bool = False) -> Runtime:
        """The fast path when fetchrl has a fast env for ``env_id`` and ``reference_env`` is False;
        the reference path otherwise. The env-process cap is read from the environment here, once."""
        if env_id in FAST_ENVS and not reference_env:
            return cls(env_id, fast=True, torch_threads=FAST_TORCH_THREADS, env_procs=default_env_procs())
        return cls(env_id, fast=False, torch_threads=None, env_procs=1)
