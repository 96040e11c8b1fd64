"""The torch-free half of fetchrl's process VecEnv: one step's results as shared rows, the envs that
fill them, and the worker process's loop.

:mod:`fetchrl.vecenv.process` (SB3's ``VecEnv`` API) steps some envs in its own process and starts
:func:`serve` in a worker process for the others. Both sides use :class:`EnvRows`, so a step, a reset
and an env's saved state are the same code on either side. Nothing here imports torch or SB3: the
worker starts in a fraction of a second and stays small.

- :class:`RowLayout` / :class:`StepRows` — one vector step's results as row arrays in one flat
  buffer (shared memory when a worker writes its rows);
- :class:`EnvRows` — the envs of some rows, with the bookkeeping of ``TimeLimit`` and SB3's
  ``Monitor`` folded in, and their state for resume (:mod:`fetchrl.tasks.envstate`);
- :func:`serve` — the worker process's loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import traceback
from collections.abc import Callable, Mapping, MutableSequence, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

from fetchrl.tasks.envstate import EnvState, get_env_state, set_env_state
from fetchrl.tasks.fast import Info, Obs, RawEnv, make_raw

if TYPE_CHECKING:
    from typing_extensions import Buffer  # a RowLayout's bytes: a bytearray or multiprocessing shared memory


class Semaphore(Protocol):
    """``multiprocessing``'s (or ``threading``'s) semaphore, as :func:`wait` uses it."""

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool: ...

    def release(self) -> None: ...


class RowState(EnvState):
    """One row's saved state: its env's (:func:`fetchrl.tasks.envstate.get_env_state`) and the
    TimeLimit/Monitor counters."""

    elapsed: int
    ep_return: float
    t_start: float


def _method(env: RawEnv, name: str) -> Callable[..., object]:
    return cast("Callable[..., object]", env.get_wrapper_attr(name))  # a name VecEnv.env_method calls


def build_envs(env_id: str, ranks: Sequence[int], seed: int, render_mode: str | None = None) -> list[RawEnv]:
    """The envs of ranks ``ranks`` of ``sb3.make_vec_env(env_id, n, seed=seed)``: each env's action
    space seeded with ``seed + rank`` as SB3 does (``VecEnv.seed`` seeds the resets); all on the
    first env's model, except rendering envs (``render`` moves the target's site in the model)."""
    envs: list[RawEnv] = []
    for rank in ranks:
        shared = envs[0].model if envs and render_mode is None else None
        env = make_raw(env_id, render_mode=render_mode, shared_model=shared)
        env.action_space.seed(seed + rank)
        envs.append(env)
    return envs


# ====================================================================== one step's results as rows
@dataclass(frozen=True)
class RowLayout:
    """Where each array of :class:`StepRows` lives in one flat byte buffer (picklable, so a worker
    process carves the same views out of the same shared memory)."""

    n: int
    obs: tuple[tuple[str, tuple[int, ...], str], ...]
    """(key, shape of one observation, dtype) per observation key, in the space's order."""
    action: tuple[tuple[int, ...], str]

    def fields(self) -> list[tuple[str, tuple[int, ...], str]]:
        n = self.n
        out = [("actions", (n, *self.action[0]), self.action[1])]
        out += [(f"obs/{k}", (n, *shape), dtype) for k, shape, dtype in self.obs]
        out += [(f"terminal/{k}", (n, *shape), dtype) for k, shape, dtype in self.obs]
        out += [("rewards", (n,), "float32"), ("dones", (n,), "bool"), ("truncated", (n,), "bool"),
                ("is_success", (n,), "float32"), ("ep_r", (n,), "float64"), ("ep_l", (n,), "int64"),
                ("ep_t", (n,), "float64")]
        return out

    def nbytes(self) -> int:
        return sum(_aligned(int(np.prod(shape)) * np.dtype(dtype).itemsize) for _, shape, dtype in self.fields())

    def views(self, buf: Buffer) -> StepRows:
        """The arrays of :class:`StepRows` on ``buf`` (``nbytes()`` bytes: a bytearray or shared memory)."""
        # numpy's stubs name bytes-like types only; any writable buffer (a RawArray) works the same
        raw = np.frombuffer(cast(bytearray, buf), dtype=np.uint8, count=self.nbytes())
        arrays: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape, dtype in self.fields():
            size = int(np.prod(shape)) * np.dtype(dtype).itemsize
            arrays[name] = raw[offset:offset + size].view(dtype).reshape(shape)
            offset += _aligned(size)
        keys = [k for k, _, _ in self.obs]
        return StepRows(actions=arrays["actions"], obs={k: arrays[f"obs/{k}"] for k in keys},
                        terminal={k: arrays[f"terminal/{k}"] for k in keys}, rewards=arrays["rewards"],
                        dones=arrays["dones"], truncated=arrays["truncated"], is_success=arrays["is_success"],
                        ep_r=arrays["ep_r"], ep_l=arrays["ep_l"], ep_t=arrays["ep_t"])


def _aligned(nbytes: int) -> int:
    return -(-nbytes // 64) * 64  # a cache line per array: two processes never write the same line


@dataclass(frozen=True)
class StepRows:
    """One vector step's results, row ``i`` for env ``i``: what SB3's ``DummyVecEnv`` returns, as
    arrays that two processes can share (``infos`` are rebuilt from them by :meth:`info`)."""

    actions: np.ndarray
    obs: dict[str, np.ndarray]
    terminal: dict[str, np.ndarray]
    """The last observation of an episode that ended at this step (``terminal_observation``)."""
    rewards: np.ndarray
    dones: np.ndarray
    truncated: np.ndarray
    is_success: np.ndarray
    ep_r: np.ndarray
    ep_l: np.ndarray
    ep_t: np.ndarray
    """Monitor's ``episode`` record ``{"r", "l", "t"}`` of an episode that ended at this step."""

    def info(self, i: int) -> Info:
        """Env ``i``'s info dict, keys in DummyVecEnv(Monitor(TimeLimit(env)))'s order."""
        info: Info = {"is_success": self.is_success[i]}  # np.float32, as the env returns it
        done = bool(self.dones[i])
        if done:
            info["episode"] = {"r": float(self.ep_r[i]), "l": int(self.ep_l[i]), "t": float(self.ep_t[i])}
        info["TimeLimit.truncated"] = bool(self.truncated[i])
        if done:
            info["terminal_observation"] = {k: v[i].copy() for k, v in self.terminal.items()}
        return info


class EnvRows:
    """The envs of rows ``start, start + 1, ...`` of a :class:`StepRows`, each wrapped *in spirit*
    by ``Monitor(TimeLimit(env, max_episode_steps))``.

    The two wrappers' bookkeeping is done inline (every Python line between two ``mj_step`` calls
    counts). Per step, for env ``i``: ``rewards[i]`` is the env's reward cast to float32 (as
    DummyVecEnv's buffer does); ``dones[i]`` is ``terminated or truncated``; at an episode's end
    Monitor's record (its rounding) and the terminal observation are written and the env is reset
    without a seed, continuing its own RNG stream, so ``obs[i]`` is the next episode's first.
    """

    def __init__(self, envs: Sequence[RawEnv], start: int, rows: StepRows, max_episode_steps: int) -> None:
        self.envs, self.start, self.rows, self.max_episode_steps = list(envs), start, rows, max_episode_steps
        self.stop = start + len(self.envs)
        n = len(self.envs)
        self.elapsed = [0] * n
        self.ep_return = [0.0] * n
        self.t_start = [time.time()] * n  # Monitor's t_start: the wrapper's creation time

    def step(self, i: int) -> None:
        """Step env ``i`` (a row index) with ``actions[i]``; write row ``i``."""
        k = i - self.start
        r = self.rows
        obs, reward, terminated, truncated, info = self.envs[k].step(r.actions[i])
        self.elapsed[k] += 1
        truncated = truncated or self.elapsed[k] >= self.max_episode_steps  # TimeLimit
        self.ep_return[k] += float(reward)  # Monitor: sum of float(reward), left to right
        r.rewards[i] = reward
        r.is_success[i] = info["is_success"]
        done = terminated or truncated
        r.dones[i] = done
        r.truncated[i] = truncated and not terminated
        if done:
            r.ep_r[i] = round(self.ep_return[k], 6)
            r.ep_l[i] = self.elapsed[k]
            r.ep_t[i] = round(time.time() - self.t_start[k], 6)
            for key, value in r.terminal.items():
                value[i] = obs[key]
            obs = self.reset(i)[0]
        for key, value in r.obs.items():
            value[i] = obs[key]

    def step_all(self) -> None:
        for i in range(self.start, self.stop):
            self.step(i)

    def reset(self, i: int, *, seed: int | None = None, options: Info | None = None) -> tuple[Obs, Info]:
        k = i - self.start
        obs, info = self.envs[k].reset(seed=seed, options=options)
        self.elapsed[k] = 0
        self.ep_return[k] = 0.0
        return obs, info

    def reset_all(self, seeds: Sequence[int | None], options: Sequence[Info]) -> list[Info]:
        """``VecEnv.reset`` for these rows (one seed and options dict per env): writes ``obs``,
        returns the reset infos."""
        infos = []
        for k, (seed, opts) in enumerate(zip(seeds, options, strict=True)):
            obs, info = self.reset(self.start + k, seed=seed, options=opts or None)
            for key, value in self.rows.obs.items():
                value[self.start + k] = obs[key]
            infos.append(info)
        return infos

    # ------------------------------------------------------------------ resume (fetchrl.pipeline.resume, kind "vec")
    def get_state(self) -> list[RowState]:
        """Picklable copies of everything that decides the next steps, per env: the env's state
        (:func:`fetchrl.tasks.envstate.get_env_state`) and the TimeLimit/Monitor counters."""
        return [{**get_env_state(env), "elapsed": self.elapsed[k], "ep_return": self.ep_return[k],
                 "t_start": self.t_start[k]} for k, env in enumerate(self.envs)]

    def set_state(self, states: Sequence[RowState]) -> None:
        """Inverse of :meth:`get_state` (ValueError when a simulator state does not fit the model)."""
        for k, (env, st) in enumerate(zip(self.envs, states, strict=True)):
            set_env_state(env, st)
            self.elapsed[k], self.ep_return[k], self.t_start[k] = st["elapsed"], st["ep_return"], st["t_start"]

    # ------------------------------------------------------------------ SB3 VecEnv plumbing, for local row indices
    def get_attr(self, name: str, ks: Sequence[int]) -> list[object]:
        return [self.envs[k].get_wrapper_attr(name) for k in ks]

    def set_attr(self, name: str, value: object, ks: Sequence[int]) -> list[None]:
        for k in ks:
            setattr(self.envs[k], name, value)
        return [None] * len(ks)

    def env_method(self, name: str, args: Sequence[object], kwargs: Mapping[str, object],
                   ks: Sequence[int]) -> list[object]:
        return [_method(self.envs[k], name)(*args, **kwargs) for k in ks]

    def render(self) -> list[np.ndarray | None]:
        return [env.render() for env in self.envs]

    def close(self) -> None:
        for env in self.envs:
            env.close()


# ====================================================================== the worker process
#: Commands from the main process (``ctrl[0]``), each announced by one release of ``go``.
STEP, CALL, CLOSE = 1, 2, 3
#: How many non-blocking tries a waiting side makes before it blocks: a step's wait is well under a
#: millisecond when both sides are busy, and a blocked process wakes up ~0.1 ms late.
SPIN = 4000
#: Seconds between a SIGTERM and the idle worker's exit (see :func:`serve`).
TERM_GRACE = 3.0


def wait(sem: Semaphore, alive: Callable[[], None], spin: int = SPIN) -> None:
    """Acquire ``sem``: spin ``spin`` tries, then block, calling ``alive()`` every second (it raises
    when the other side is gone, so neither process waits forever for a dead one)."""
    for _ in range(spin):
        if sem.acquire(False):
            return
    while not sem.acquire(timeout=1.0):
        alive()


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to build its envs and find its rows (picklable)."""

    env_id: str
    seed: int
    start: int
    stop: int
    layout: RowLayout
    max_episode_steps: int
    parent_pid: int


class RemoteError(RuntimeError):
    """An exception raised in the env worker process that could not be sent as itself."""


def picklable(err: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RemoteError("".join(traceback.format_exception(err)).rstrip())


def serve(spec: WorkerSpec, buf: Buffer, ctrl: MutableSequence[int], go: Semaphore, done: Semaphore,
          conn: Connection) -> None:
    """The env worker process: build rows ``spec.start:spec.stop``' envs, then on each ``go``:
    STEP steps them all and releases ``done`` (an error is flagged in ``ctrl[1]`` and sent on
    ``conn``); CALL runs ``EnvRows.<method>(*args)`` received on ``conn`` and sends back
    ``(ok, result)``, CLOSE closes the envs and returns.

    Ctrl-C is the main process's business: it stops training at a clean point and then closes this
    worker. If the main process dies, this one exits within a second.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    terminated: list[float] = []
    signal.signal(signal.SIGTERM, lambda *_: terminated.append(time.monotonic()))
    born_to = os.getppid()

    def parent_alive() -> None:
        """Called while idle (blocked a second or more): exit if the main process is gone, or if a
        SIGTERM came ``TERM_GRACE`` s ago — a signal to the whole process group (systemd, Slurm)
        must not kill the envs while the main process still steps them on its way to a clean stop,
        but ``multiprocessing``'s exit hook terminates an unclosed worker and then joins it.

        "Gone" includes dead but not yet reaped: a killed main process stays a zombie (``os.kill``
        still finds it) until its parent waits for it, and a parent that first reads the dead
        process's stdout/stderr to the end (``subprocess.communicate``, a sweep runner) would wait
        forever for this worker, which holds the same pipes. Reparenting shows the death at once."""
        if os.getppid() != born_to:
            raise SystemExit(0)
        try:
            os.kill(spec.parent_pid, 0)
        except ProcessLookupError:
            raise SystemExit(0) from None
        if terminated and time.monotonic() - terminated[0] >= TERM_GRACE:
            raise SystemExit(0)

    rows: EnvRows | None = None
    try:
        envs = build_envs(spec.env_id, range(spec.start, spec.stop), spec.seed)
        rows = EnvRows(envs, spec.start, spec.layout.views(buf), spec.max_episode_steps)
        conn.send((True, None))
    except BaseException as err:
        conn.send((False, picklable(err)))
        return
    while True:
        wait(go, parent_alive)
        cmd = ctrl[0]
        if cmd == STEP:
            try:
                rows.step_all()
            except BaseException as err:
                ctrl[1] = 1
                conn.send(picklable(err))
            done.release()
        elif cmd == CALL:
            method, args = conn.recv()
            try:
                conn.send((True, getattr(rows, method)(*args)))
            except BaseException as err:
                conn.send((False, picklable(err)))
        else:
            with contextlib.suppress(Exception):
                rows.close()
            return
