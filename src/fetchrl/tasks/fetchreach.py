"""The lean FetchReach env and the per-env bookkeeping of fetchrl's VecEnv — no torch, no SB3.

This module is what an env worker process imports (``fetchrl.vecenv.process`` starts one): it loads in a
quarter of a second and ~60 MB, where anything importing SB3 pulls in torch (1 s, 220 MB).

- :class:`FastFetchReachEnv` — Gymnasium-Robotics' ``MujocoFetchReachEnv`` with the per-step
  Python overhead removed: joint, site and mocap addresses are looked up once, not by name
  (15 joints, twice) on every step. Every floating-point operation that produces an observation,
  reward or ``is_success`` is the stock one, in the stock order, so the numbers are identical
  (``tests/test_fastenv.py`` demands 1e-6; they are in fact bit-equal). Reset, seeding, goal
  sampling, ``compute_reward`` and ``render`` are inherited unchanged.
- :class:`StepRows` / :class:`EnvRows` — one step's results as row arrays (in shared memory when a
  worker process writes them) and the envs that fill them, with the bookkeeping of ``TimeLimit``
  and SB3's ``Monitor`` folded in.
- :func:`serve` — the worker process's loop.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import signal
import time
import traceback
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import mujoco
import numpy as np

# gymnasium_robotics prints an unrelated Adroit notice on import; keep stdout clean (as envs.py does).
with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from gymnasium_robotics.envs.fetch.reach import MujocoFetchReachEnv
    from gymnasium_robotics.utils import mujoco_utils

#: Gymnasium ids with a fast implementation, and the reward type each one uses.
REWARD_TYPES = {"FetchReachDense-v4": "dense", "FetchReach-v4": "sparse"}
FAST_ENV_IDS: tuple[str, ...] = tuple(REWARD_TYPES)
#: Episode length of every Fetch task (Gymnasium-Robotics registers max_episode_steps=50).
MAX_EPISODE_STEPS = 50

Obs = dict[str, np.ndarray]


class FastFetchReachEnv(MujocoFetchReachEnv):
    """``MujocoFetchReachEnv`` with cached addresses and a lean ``step`` (identical numbers).

    Only the reach task qualifies: no object, gripper blocked, no actuators (``model.nu == 0``), so
    the action only moves the mocap body; the constructor checks these assumptions.
    """

    def __init__(self, shared_model: mujoco.MjModel | None = None, **kwargs: Any) -> None:
        """``shared_model``: step with this (identical) model instead of the one built from the XML.

        Several envs on one ``MjModel`` (8.5 MB, mostly collision meshes) instead of one copy each
        keep it in cache: stepping is a few per cent faster and memory smaller. MuJoCo only reads
        the model while stepping, so even threads could share it. Not for rendering envs:
        ``render`` moves the target's site in the model.
        """
        self._shared_model = shared_model
        super().__init__(**kwargs)

    def _initialize_simulation(self) -> None:
        if self._shared_model is None:
            super()._initialize_simulation()
        else:
            # MujocoRobotEnv._initialize_simulation, on the shared model instead of a fresh copy of the
            # XML's. _env_setup rewrites the model's weld data with the constants the first env already
            # wrote there; everything else it sets is this env's MjData.
            self.model = self._shared_model
            self.data = mujoco.MjData(self.model)
            self._model_names = mujoco_utils.MujocoModelNames(self.model)
            self.model.vis.global_.offwidth = self.width
            self.model.vis.global_.offheight = self.height
            self._env_setup(initial_qpos=self.initial_qpos)  # type: ignore[has-type]
            self.initial_time = self.data.time
            self.initial_qpos = np.copy(self.data.qpos)
            self.initial_qvel = np.copy(self.data.qvel)
        m = self.model
        assert m.nu == 0 and m.nmocap >= 1, "FastFetchReachEnv needs the mocap-driven reach model"
        site = mujoco.mjtObj.mjOBJ_SITE
        joint = mujoco.mjtObj.mjOBJ_JOINT
        self._grip_site = mujoco.mj_name2id(m, site, "robot0:grip")
        robot_joints = [n for n in self._model_names.joint_names if n.startswith("robot")]
        # The observation's gripper state / velocity are the last two robot joints (stock order).
        last_two = [mujoco.mj_name2id(m, joint, n) for n in robot_joints[-2:]]
        for jid in last_two:
            assert m.jnt_type[jid] in (mujoco.mjtJoint.mjJNT_HINGE, mujoco.mjtJoint.mjJNT_SLIDE)
        self._grip_qpos_adr = np.array([m.jnt_qposadr[j] for j in last_two], dtype=np.intp)
        self._grip_dof_adr = np.array([m.jnt_dofadr[j] for j in last_two], dtype=np.intp)
        # _step_callback zeroes the two finger joints (left first, then right, as the stock one).
        fingers = ("robot0:l_gripper_finger_joint", "robot0:r_gripper_finger_joint")
        self._finger_qpos_adr = [int(m.jnt_qposadr[mujoco.mj_name2id(m, joint, n)]) for n in fingers]
        # (mocap id, welded body id) of every weld, in model order (mujoco_utils.reset_mocap2body_xpos).
        self._welds: list[tuple[int, int]] = []
        for eq_type, obj1, obj2 in zip(m.eq_type, m.eq_obj1id, m.eq_obj2id, strict=True):
            if eq_type != mujoco.mjtEq.mjEQ_WELD:
                continue
            mocap_id, body = int(m.body_mocapid[obj1]), int(obj2)
            if mocap_id == -1:
                mocap_id, body = int(m.body_mocapid[obj2]), int(obj1)
            self._welds.append((mocap_id, body))
        self._jacp = np.zeros((3, m.nv))
        self._rot_ctrl = np.array([1.0, 0.0, 1.0, 0.0])  # fixed end-effector rotation delta (stock)
        # The stock code recomputes this product every step; it is the same float each time.
        self._obs_dt = self.n_substeps * m.opt.timestep
        # MjData's arrays never move: keep the NumPy views instead of asking the bindings every step.
        d = self.data
        self._qpos, self._qvel, self._site_xpos = d.qpos, d.qvel, d.site_xpos
        self._mocap_pos, self._mocap_quat, self._xpos, self._xquat = d.mocap_pos, d.mocap_quat, d.xpos, d.xquat

    # ------------------------------------------------------------------ step
    def step(self, action: np.ndarray) -> tuple[Obs, Any, bool, bool, dict[str, Any]]:
        """BaseRobotEnv.step with _set_action, _step_callback and _get_obs inlined (same arithmetic)."""
        action = np.asarray(action)
        space = self.action_space
        if action.shape != space.shape:
            raise ValueError("Action dimension mismatch")
        action = np.minimum(np.maximum(action, space.low), space.high)  # np.clip's result, in fewer calls
        self._apply_action(action)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)  # releases the GIL
        self._step_callback()
        if self.render_mode == "human":
            self.render()
        obs = self._get_obs()
        delta = obs["achieved_goal"] - self.goal
        d = np.sqrt(np.add.reduce(delta * delta, axis=-1))  # np.linalg.norm(delta, axis=-1), its own ops
        info = {"is_success": (d < self.distance_threshold).astype(np.float32)}
        reward = -(d > self.distance_threshold).astype(np.float32) if self.reward_type == "sparse" else -d
        return obs, reward, False, False, info

    def _apply_action(self, action: np.ndarray) -> None:
        """BaseFetchEnv._set_action + mujoco_utils.mocap_set_action for one mocap, no actuators."""
        pos_ctrl = action[:3] * 0.05  # limit maximum change in position (in the action's dtype, as stock)
        mocap_pos, mocap_quat = self._mocap_pos, self._mocap_quat
        for mocap_id, body in self._welds:
            mocap_pos[mocap_id] = self._xpos[body]
            mocap_quat[mocap_id] = self._xquat[body]
        mocap_pos += pos_ctrl.astype(np.float64)
        mocap_quat += self._rot_ctrl

    def _step_callback(self) -> None:
        """Keep the blocked gripper closed, then recompute what the observation reads.

        The stock callback runs a full ``mj_forward``; the observation and the next action only read
        positions, site frames and the site Jacobian, i.e. the ``mj_kinematics`` and ``mj_comPos``
        stages, and the next ``mj_step`` recomputes every later stage from qpos/qvel/mocap/warm-start.
        So the trajectory is bit-identical (tested on qpos, qvel and observations); only derived
        fields nothing reads between steps (qacc, contacts, constraint forces) are left stale.
        ``render`` still runs its own ``mj_forward``.
        """
        qpos = self._qpos
        for adr in self._finger_qpos_adr:
            qpos[adr] = 0.0
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)

    def _get_obs(self) -> Obs:
        """BaseFetchEnv._get_obs for the no-object case, with cached addresses."""
        grip_pos = self._site_xpos[self._grip_site]
        dt = self._obs_dt
        mujoco.mj_jacSite(self.model, self.data, self._jacp, None, self._grip_site)
        qvel = self._qvel
        grip_velp = (self._jacp @ qvel) * dt
        gripper_state = self._qpos[self._grip_qpos_adr]
        gripper_vel = qvel[self._grip_dof_adr] * dt
        return {
            "observation": np.concatenate([grip_pos, gripper_state, grip_velp, gripper_vel]),
            "achieved_goal": grip_pos.copy(),
            "desired_goal": self.goal.copy(),
        }


def check_id(env_id: str) -> None:
    if env_id not in REWARD_TYPES:
        raise ValueError(f"no fast implementation of {env_id!r}; fast ids: {', '.join(FAST_ENV_IDS)}")


def make_raw(env_id: str, render_mode: str | None = None, **kwargs: Any) -> FastFetchReachEnv:
    """The unwrapped fast env (no time limit): what fetchrl's VecEnv steps."""
    check_id(env_id)
    kwargs = {"reward_type": REWARD_TYPES[env_id], **kwargs}
    return FastFetchReachEnv(render_mode=render_mode, **kwargs)


def build_envs(env_id: str, ranks: Sequence[int], seed: int, render_mode: str | None = None) -> list[FastFetchReachEnv]:
    """The envs of ranks ``ranks`` of ``sb3.make_vec_env(env_id, n, seed=seed)``: each env's action
    space seeded with ``seed + rank`` as SB3 does (``VecEnv.seed`` seeds the resets); all on the
    first env's model, except rendering envs (``render`` moves the target's site in the model)."""
    envs: list[FastFetchReachEnv] = []
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

    def views(self, buf: Any) -> StepRows:
        """The arrays of :class:`StepRows` on ``buf`` (``nbytes()`` bytes: a bytearray or shared memory)."""
        raw = np.frombuffer(buf, dtype=np.uint8, count=self.nbytes())
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

    def info(self, i: int) -> dict[str, Any]:
        """Env ``i``'s info dict, keys in DummyVecEnv(Monitor(TimeLimit(env)))'s order."""
        info: dict[str, Any] = {"is_success": self.is_success[i]}  # np.float32, as the env returns it
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

    def __init__(self, envs: Sequence[Any], start: int, rows: StepRows, max_episode_steps: int) -> None:
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

    def reset(self, i: int, **kwargs: Any) -> tuple[Obs, dict[str, Any]]:
        k = i - self.start
        obs, info = self.envs[k].reset(**kwargs)
        self.elapsed[k] = 0
        self.ep_return[k] = 0.0
        return obs, info

    def reset_all(self, seeds: Sequence[int | None], options: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """``VecEnv.reset`` for these rows (one seed and options dict per env): writes ``obs``,
        returns the reset infos."""
        infos = []
        for k, (seed, opts) in enumerate(zip(seeds, options, strict=True)):
            obs, info = self.reset(self.start + k, seed=seed, **({"options": opts} if opts else {}))
            for key, value in self.rows.obs.items():
                value[self.start + k] = obs[key]
            infos.append(info)
        return infos

    # ------------------------------------------------------------------ resume (fetchrl.pipeline.resume, kind "vec")
    def get_state(self) -> list[dict[str, Any]]:
        """Picklable copies of everything that decides the next steps, per env: MuJoCo's integration
        state, the goal, the env's and action space's RNG states and the TimeLimit/Monitor counters."""
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        states = []
        for k, env in enumerate(self.envs):
            sim = np.empty(mujoco.mj_stateSize(env.model, spec), dtype=np.float64)
            mujoco.mj_getState(env.model, env.data, sim, spec)
            states.append({"sim": sim, "goal": np.array(env.goal, copy=True),
                           "np_random": copy.deepcopy(env.np_random.bit_generator.state),
                           "action_space_rng": copy.deepcopy(env.action_space.np_random.bit_generator.state),
                           "elapsed": self.elapsed[k], "ep_return": self.ep_return[k], "t_start": self.t_start[k]})
        return states

    def set_state(self, states: Sequence[dict[str, Any]]) -> None:
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        for k, (env, st) in enumerate(zip(self.envs, states, strict=True)):
            sim = np.asarray(st["sim"], dtype=np.float64)
            if sim.size != mujoco.mj_stateSize(env.model, spec):
                raise ValueError("saved simulator state does not fit this model (another env or mujoco version)")
            mujoco.mj_setState(env.model, env.data, sim, spec)
            mujoco.mj_forward(env.model, env.data)  # derived quantities (xpos, site frames) the next step reads
            env.goal = np.array(st["goal"], copy=True)
            env.np_random.bit_generator.state = copy.deepcopy(st["np_random"])
            env.action_space.np_random.bit_generator.state = copy.deepcopy(st["action_space_rng"])
            self.elapsed[k], self.ep_return[k], self.t_start[k] = st["elapsed"], st["ep_return"], st["t_start"]

    # ------------------------------------------------------------------ SB3 VecEnv plumbing, for local row indices
    def get_attr(self, name: str, ks: Sequence[int]) -> list[Any]:
        return [self.envs[k].get_wrapper_attr(name) for k in ks]

    def set_attr(self, name: str, value: Any, ks: Sequence[int]) -> list[None]:
        for k in ks:
            setattr(self.envs[k], name, value)
        return [None] * len(ks)

    def env_method(self, name: str, args: Sequence[Any], kwargs: dict[str, Any], ks: Sequence[int]) -> list[Any]:
        return [self.envs[k].get_wrapper_attr(name)(*args, **kwargs) for k in ks]

    def render(self) -> list[Any]:
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


def wait(sem: Any, alive: Any, spin: int = SPIN) -> None:
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


def serve(spec: WorkerSpec, buf: Any, ctrl: Any, go: Any, done: Any, conn: Any) -> None:
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

    def parent_alive() -> None:
        """Called while idle (blocked a second or more): exit if the main process is gone, or if a
        SIGTERM came ``TERM_GRACE`` s ago — a signal to the whole process group (systemd, Slurm)
        must not kill the envs while the main process still steps them on its way to a clean stop,
        but ``multiprocessing``'s exit hook terminates an unclosed worker and then joins it."""
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
