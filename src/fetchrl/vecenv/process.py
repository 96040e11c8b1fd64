"""fetchrl's process-parallel VecEnv: SB3's ``VecEnv`` API over envs stepped in two processes.

:class:`ProcessVecEnv` steps half its envs in this process and half in a worker process
(:func:`fetchrl.vecenv.worker.serve`), or with ``all_in_worker`` all of them there, in lockstep
through shared memory. ``step_async`` returns at once, so the caller can work while the physics runs
(:class:`fetchrl.algos.fastppo.FastPPO` steps its half; :class:`fetchrl.algos.fastsac.FastSAC` makes
its gradient step). It
folds in the bookkeeping of ``TimeLimit`` (Fetch never terminates; every episode is *truncated* at 50
steps) and SB3's ``Monitor`` (``info["episode"]``), and returns exactly what
``DummyVecEnv(Monitor(gym.make(id)))`` returns for the same seed: observations, float32 rewards,
dones, ``TimeLimit.truncated``, ``terminal_observation`` and ``is_success``
(``tests/test_fastenv.py``). :func:`fetchrl.tasks.envs.make_vec_env` builds it on the fast path.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from multiprocessing.context import ForkContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, TypeVar

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn
from stable_baselines3.common.vec_env.util import dict_to_obs, obs_space_info

from fetchrl.runtime import default_env_procs
from fetchrl.tasks.fast import MAX_EPISODE_STEPS, check_id
from fetchrl.vecenv.worker import (
    CALL,
    CLOSE,
    STEP,
    EnvRows,
    RowLayout,
    RowState,
    WorkerSpec,
    build_envs,
    serve,
    wait,
)

if TYPE_CHECKING:
    from typing_extensions import Buffer


T = TypeVar("T")


def _mp_daemon() -> bool:
    import multiprocessing as mp

    return bool(mp.current_process().daemon)


def _mp_context() -> ForkContext | SpawnContext:
    """fork on Linux: the worker starts in milliseconds, re-imports nothing (spawn and forkserver
    re-run the user's main script, which then needs an ``if __name__ == "__main__"`` guard) and
    shares the parent's loaded libraries. It only runs MuJoCo and NumPy code of its own, so locks
    that other threads of the parent held at the fork are never touched. spawn elsewhere."""
    import multiprocessing as mp
    import sys

    return mp.get_context("fork") if sys.platform.startswith("linux") else mp.get_context("spawn")


_OPEN: weakref.WeakSet[ProcessVecEnv] = weakref.WeakSet()


def _track(vec: ProcessVecEnv) -> None:
    """Close ``vec`` at interpreter exit if its owner did not: registered after ``multiprocessing``
    (imported by now), this hook runs before its exit hook, which would SIGTERM and join the worker."""
    if not _OPEN:
        atexit.unregister(close_open_envs)
        atexit.register(close_open_envs)
    _OPEN.add(vec)


def close_open_envs() -> int:
    """Close every process VecEnv of this process that is still open (their workers exit); how many.

    Runs at interpreter exit; a test harness calls it after each test, so a test that drops a VecEnv
    without closing it does not leave its worker (and the forked copy of the harness) behind.
    """
    still_open = list(_OPEN)
    for vec in still_open:
        with contextlib.suppress(Exception):
            vec.close()
    return len(still_open)


class ProcessVecEnv(VecEnv):
    """SB3 VecEnv whose envs are split between this process and one worker process; results
    identical to ``DummyVecEnv(Monitor(gym.make(env_id)))``.

    Envs ``0 .. n_local - 1`` are stepped here, by whichever thread calls ``step_help`` or
    ``step_wait``; the others by a worker process (:func:`fetchrl.vecenv.worker.serve`), in lockstep:
    ``step_async`` writes the actions to shared memory and wakes the worker, which writes its rows
    of the results (observations, rewards, dones, the ``infos``' fields) to the same shared memory.
    A process, not a thread: MuJoCo releases the GIL inside ``mj_step``, but every Python line of an
    env step and of the caller's bookkeeping needs it, and two threads measurably queue for it.

    ``infos[i]`` holds ``is_success``, ``TimeLimit.truncated`` and, at an episode's end,
    ``episode = {"r", "l", "t"}`` (Monitor's rounding) and ``terminal_observation`` — the returned
    observation is then the next episode's first one (the env is reset without a seed, continuing
    its own RNG stream). Actions are stored in the action space's dtype (float32), the dtype SB3's
    algorithms produce.

    Args:
        env_id: an id with a fast env (:data:`fetchrl.runtime.FAST_ENVS`).
        n_envs: number of envs; env ``i``'s action space is seeded with ``seed + i``, as SB3 does.
        seed: base seed (``VecEnv.seed(seed)`` is called: env ``i``'s first reset uses ``seed + i``).
        n_procs: processes stepping envs, this one included (1: all here, no worker; None:
            :func:`fetchrl.runtime.default_env_procs`; a :class:`~fetchrl.runtime.Runtime` passes its ``env_procs``).
        render_mode: None or "rgb_array" (rendering envs stay in this process).
        max_episode_steps: truncation length (50 for every Fetch task).
        all_in_worker: with a worker, step every env there (none here), so that this process is free
            while they step: :class:`fetchrl.algos.fastsac.FastSAC` makes its gradient step then.
            A plain ``step`` then waits for all ``n_envs`` stepped one after another.
    """

    def __init__(self, env_id: str, n_envs: int, *, seed: int, n_procs: int | None = None,
                 render_mode: str | None = None, max_episode_steps: int = MAX_EPISODE_STEPS,
                 all_in_worker: bool = False) -> None:
        check_id(env_id)
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        n_procs = max(1, min(n_procs or default_env_procs(), n_envs))
        if render_mode is not None or _mp_daemon():
            n_procs = 1  # rendering envs stay here; a daemonic process may not have children
        self.num_envs = n_envs  # what _get_indices reads, before VecEnv.__init__ (which calls get_attr)
        self.env_id = env_id  # its raw fast envs carry no gym spec (e.g. for an evaluation env's factory)
        self.max_episode_steps = max_episode_steps
        self.n_local = 0 if n_procs > 1 and all_in_worker else n_envs - (n_envs // 2 if n_procs > 1 else 0)
        self.envs = build_envs(env_id, range(self.n_local), seed, render_mode)  # this process's envs
        env = self.envs[0] if self.envs else build_envs(env_id, [0], seed)[0]  # the spaces
        if not self.envs:
            env.close()
        keys, shapes, dtypes = obs_space_info(env.observation_space)
        act_space = env.action_space
        layout = RowLayout(n=n_envs, obs=tuple((k, tuple(shapes[k]), np.dtype(dtypes[k]).str) for k in keys),  # type: ignore[misc]
                           action=(tuple(act_space.shape or ()), np.dtype(act_space.dtype).str))
        ctx = _mp_context() if n_procs > 1 else None
        buf: Buffer = ctx.RawArray("b", layout.nbytes()) if ctx is not None else bytearray(layout.nbytes())
        self.rows = layout.views(buf)
        self._local = EnvRows(self.envs, 0, self.rows, max_episode_steps)
        self._elapsed = np.zeros(n_envs, dtype=np.int64)
        """Steps of each env's current episode, counted here for all envs (see :meth:`episode_ends_next`)."""
        self._in_flight = False
        self._local_pending = False
        self._error: BaseException | None = None
        self._closed = False
        self._worker: BaseProcess | None = None
        if ctx is not None:
            self._ctrl = ctx.RawArray("q", 2)
            self._go, self._done = ctx.Semaphore(0), ctx.Semaphore(0)
            self._conn, child_conn = ctx.Pipe()
            spec = WorkerSpec(env_id=env_id, seed=seed, start=self.n_local, stop=n_envs, layout=layout,
                              max_episode_steps=max_episode_steps, parent_pid=os.getpid())
            self._worker = ctx.Process(target=serve, name="fetchrl-envs", daemon=True,
                                       args=(spec, buf, self._ctrl, self._go, self._done, child_conn))
            gc.freeze()  # the worker's garbage collector then never walks (and so copies) the parent's objects
            try:
                self._worker.start()
            finally:
                gc.unfreeze()
            child_conn.close()
            _track(self)
            try:
                self._reply()  # the worker's envs are built (or their constructor's error is raised here)
            except BaseException:
                self.close()
                raise
        super().__init__(n_envs, env.observation_space, act_space)
        self.metadata = env.metadata
        self.seed(seed)

    def __del__(self) -> None:
        # An env dropped without close(): let its worker go now rather than at interpreter exit.
        if not getattr(self, "_closed", True) and getattr(self, "_worker", None) is not None:
            with contextlib.suppress(Exception):
                self._ctrl[0] = CLOSE
                self._go.release()

    @property
    def n_procs(self) -> int:
        return 1 if self._worker is None else 2

    # ------------------------------------------------------------------ talking to the worker
    def _worker_alive(self) -> None:
        worker = self._worker
        if worker is not None and not worker.is_alive():  # only called while a worker runs
            raise RuntimeError(f"fetchrl's env worker process died (exit code {worker.exitcode})")

    def _reply(self) -> Any:
        while not self._conn.poll(1.0):
            self._worker_alive()
        ok, result = self._conn.recv()
        if not ok:
            raise result
        return result

    def _call(self, method: str, *args: object) -> Any:
        """``EnvRows.<method>(*args)`` on the worker's envs; its result, or its exception raised here."""
        self._finish_step()
        self._conn.send((method, args))
        self._ctrl[0] = CALL
        self._go.release()
        return self._reply()

    def _split(self, indices: VecEnvIndices) -> tuple[list[int], list[int]]:
        """``indices`` as (local env positions, worker env positions), each in ascending index order
        of their own side; results are put back in ``indices``' order by :meth:`_merge`."""
        idx = list(self._get_indices(indices))
        return [i for i in idx if i < self.n_local], [i - self.n_local for i in idx if i >= self.n_local]

    def _merge(self, indices: VecEnvIndices, local: list[T], remote: list[T]) -> list[T]:
        it_local, it_remote = iter(local), iter(remote)
        return [next(it_local) if i < self.n_local else next(it_remote) for i in self._get_indices(indices)]

    # ------------------------------------------------------------------ stepping
    def step_async(self, actions: np.ndarray) -> None:
        """Hand the worker its actions and return at once; ``step_help``/``step_wait`` step the local envs."""
        if self._in_flight:
            raise RuntimeError("step_async called twice without step_wait")
        actions = np.asarray(actions)
        if actions.shape != self.rows.actions.shape:
            raise ValueError(f"Action dimension mismatch: got actions of shape {actions.shape}, "
                             f"expected {self.rows.actions.shape}")
        self.rows.actions[...] = actions  # SB3 passes float32 (the action space's dtype)
        self._error = None
        if self._worker is not None:
            self._ctrl[0] = STEP
            self._go.release()
        self._in_flight = True
        self._local_pending = True

    def step_help(self) -> None:
        """Step this process's envs now (the caller then works while the worker finishes); errors
        are raised by ``step_wait``. ``fetchrl.algos.fastppo.FastPPO`` calls it right after ``step_async``."""
        if not self._in_flight:
            raise RuntimeError("step_help called without step_async")
        self._step_local()

    def _step_local(self) -> None:
        if self._local_pending:
            self._local_pending = False
            try:
                self._local.step_all()
            except BaseException as err:
                self._error = err

    def step_wait(self) -> VecEnvStepReturn:
        if not self._in_flight:
            raise RuntimeError("step_wait called without step_async")
        self._step_local()
        error = self._error
        if self._worker is not None:
            wait(self._done, self._worker_alive)
            if self._ctrl[1]:
                self._ctrl[1] = 0
                remote = self._conn.recv()
                error = error or remote
        self._in_flight = False
        if error is not None:
            raise error
        r = self.rows
        infos = [r.info(i) for i in range(self.num_envs)]
        dones = r.dones.copy()
        self._elapsed += 1
        self._elapsed[dones] = 0
        return self._obs_from_buf(), r.rewards.copy(), dones, infos

    def episode_ends_next(self) -> bool:
        """Whether the next ``step`` ends an episode of any env: exactly when one reaches the time limit,
        since fetchrl's fast envs never terminate (their ``step`` in :mod:`fetchrl.tasks.fetchbase`
        always returns ``terminated=False``)."""
        return bool((self._elapsed + 1 >= self.max_episode_steps).any())

    def _finish_step(self) -> None:
        """Wait for a step still running (before reset/close/state access touch the envs)."""
        if self._in_flight:
            with contextlib.suppress(Exception):
                self.step_wait()

    def reset(self) -> VecEnvObs:
        self._finish_step()
        n = self.n_local
        options = [opts or {} for opts in self._options]
        infos = self._local.reset_all(self._seeds[:n], options[:n])
        if self._worker is not None:
            infos += self._call("reset_all", self._seeds[n:], options[n:])
        self._elapsed[:] = 0
        self.reset_infos = infos
        self._reset_seeds()
        self._reset_options()
        return self._obs_from_buf()

    def _obs_from_buf(self) -> VecEnvObs:
        return dict_to_obs(self.observation_space, OrderedDict((k, v.copy()) for k, v in self.rows.obs.items()))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finish_step()
        if self._worker is not None:
            with contextlib.suppress(Exception):
                self._ctrl[0] = CLOSE
                self._go.release()
            self._worker.join(timeout=10)
            if self._worker.is_alive():
                self._worker.kill()
                self._worker.join(timeout=5)
            self._conn.close()
            _OPEN.discard(self)
        self._local.close()

    # ------------------------------------------------------------------ resume (fetchrl.pipeline.resume, kind "vec")
    def get_state(self) -> list[RowState]:
        """Picklable copies of everything that decides the next steps, per env (see ``EnvRows.get_state``)."""
        self._finish_step()
        states = self._local.get_state()
        return states + (self._call("get_state") if self._worker is not None else [])

    def set_state(self, states: Sequence[RowState]) -> None:
        """Inverse of :meth:`get_state` on a VecEnv built with the same id and ``n_envs``."""
        if len(states) != self.num_envs:
            raise ValueError(f"state of {len(states)} envs given to a VecEnv of {self.num_envs}")
        self._finish_step()
        self._local.set_state(states[:self.n_local])
        if self._worker is not None:
            self._call("set_state", list(states[self.n_local:]))
        self._elapsed[:] = [st["elapsed"] for st in states]

    # ------------------------------------------------------------------ SB3 VecEnv plumbing
    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            return [None] * self.num_envs
        return self._local.render()  # rendering envs are all local

    def _both(self, method: str, indices: VecEnvIndices, *args: object) -> list[object]:
        local, remote = self._split(indices)
        out_local = getattr(self._local, method)(*args, local)
        out_remote = self._call(method, *args, remote) if remote else []
        return self._merge(indices, out_local, out_remote)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._both("get_attr", indices, attr_name)

    def set_attr(self, attr_name: str, value: object, indices: VecEnvIndices = None) -> None:
        self._both("set_attr", indices, attr_name, value)

    def env_method(self, method_name: str, *method_args: object, indices: VecEnvIndices = None,
                   **method_kwargs: object) -> list[Any]:
        return self._both("env_method", indices, method_name, method_args, method_kwargs)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """True for Monitor and TimeLimit, whose behaviour this VecEnv provides itself; False for
        anything else (:func:`fetchrl.vecenv.worker.build_envs` never wraps an env)."""
        from gymnasium.wrappers import TimeLimit
        from stable_baselines3.common.monitor import Monitor

        return [wrapper_class in (Monitor, TimeLimit)] * len(list(self._get_indices(indices)))
