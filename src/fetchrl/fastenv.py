"""Fast, bit-compatible FetchReach: a lean env step and a thread-parallel SB3 vector env.

Two pieces, each proven equal to the stock path by ``tests/test_fastenv.py``:

1. :class:`FastFetchReachEnv` — Gymnasium-Robotics' ``MujocoFetchReachEnv`` with the per-step
   Python overhead removed: joint, site and mocap addresses are looked up once, not by name
   (15 joints, twice) on every step. Every floating-point operation that produces an observation,
   reward or ``is_success`` is the stock one, in the stock order, so the numbers are identical
   (the test demands 1e-6; they are in fact bit-equal). Reset, seeding, goal sampling,
   ``compute_reward`` and ``render`` are inherited unchanged.
2. :class:`ThreadedVecEnv` — an SB3 ``VecEnv`` whose envs are stepped by two threads taking them
   one at a time from a shared counter (MuJoCo releases the GIL inside ``mj_step``, so two threads
   use two cores), all on one shared ``MjModel``. ``step_async`` returns at once, so the caller can
   work while the physics runs (:class:`fetchrl.fastppo.FastPPO` does). It folds in the
   bookkeeping of ``TimeLimit`` (Fetch never terminates; every episode is *truncated* at 50 steps)
   and SB3's ``Monitor`` (``info["episode"]``), and returns exactly what
   ``DummyVecEnv(Monitor(gym.make(id)))`` returns for the same seed: observations, float32
   rewards, dones, ``TimeLimit.truncated``, ``terminal_observation`` and ``is_success``.

``fetchrl.envs`` calls :func:`make` and :func:`make_vec_env` for ids in :data:`FAST_ENV_IDS`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import queue
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn
from stable_baselines3.common.vec_env.util import dict_to_obs, obs_space_info

from fetchrl.config import ENV_THREADS_VAR

# gymnasium_robotics prints an unrelated Adroit notice on import; keep stdout clean (as envs.py does).
with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from gymnasium_robotics.envs.fetch.reach import MujocoFetchReachEnv
    from gymnasium_robotics.utils import mujoco_utils

#: Gymnasium ids with a fast implementation, and the reward type each one uses.
_REWARD_TYPES = {"FetchReachDense-v4": "dense", "FetchReach-v4": "sparse"}
FAST_ENV_IDS: tuple[str, ...] = tuple(_REWARD_TYPES)
#: Episode length of every Fetch task (Gymnasium-Robotics registers max_episode_steps=50).
MAX_EPISODE_STEPS = 50
_FAST_PREFIX = "fetchrl/Fast"

Obs = dict[str, np.ndarray]


class FastFetchReachEnv(MujocoFetchReachEnv):
    """``MujocoFetchReachEnv`` with cached addresses and a lean ``step`` (identical numbers).

    Only the reach task qualifies: no object, gripper blocked, no actuators (``model.nu == 0``), so
    the action only moves the mocap body; the constructor checks these assumptions.
    """

    def __init__(self, shared_model: mujoco.MjModel | None = None, **kwargs: Any) -> None:
        """``shared_model``: step with this (identical) model instead of the one built from the XML.

        Eight envs on one ``MjModel`` (8.5 MB, mostly collision meshes) instead of eight copies keep
        it in cache: stepping is a few per cent faster and memory smaller. MuJoCo only reads the
        model while stepping, so threads may share it. Not for rendering envs: ``render`` moves the
        target's site in the model.
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


def _register(env_id: str) -> str:
    """Register ``fetchrl/Fast<env_id>`` once (same kwargs and time limit as the stock id)."""
    fast_id = _FAST_PREFIX + env_id
    if fast_id not in gym.registry:
        gym.register(
            id=fast_id,
            entry_point=f"{__name__}:FastFetchReachEnv",
            kwargs={"reward_type": _REWARD_TYPES[env_id]},
            max_episode_steps=MAX_EPISODE_STEPS,
        )
    return fast_id


def _check_id(env_id: str) -> None:
    if env_id not in _REWARD_TYPES:
        raise ValueError(f"no fast implementation of {env_id!r}; fast ids: {', '.join(FAST_ENV_IDS)}")


def make(env_id: str, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """The fast env behind gym.make's usual wrappers (TimeLimit(50), OrderEnforcing, env checker)."""
    _check_id(env_id)
    return gym.make(_register(env_id), render_mode=render_mode, **kwargs)


def make_raw(env_id: str, render_mode: str | None = None, **kwargs: Any) -> FastFetchReachEnv:
    """The unwrapped fast env (no time limit): what :class:`ThreadedVecEnv` steps."""
    _check_id(env_id)
    kwargs = {"reward_type": _REWARD_TYPES[env_id], **kwargs}
    return FastFetchReachEnv(render_mode=render_mode, **kwargs)


# ====================================================================== thread-parallel VecEnv
def default_n_threads() -> int:
    """Two stepping threads on a machine with two or more cores (more add GIL contention, not speed),
    or fewer when a sweep worker's ``FETCHRL_ENV_THREADS`` share says so."""
    import os

    share = os.environ.get(ENV_THREADS_VAR, "")
    if share.isdigit() and int(share) > 0:
        return min(2, int(share))
    return max(1, min(2, os.cpu_count() or 1))


class _Worker:
    """A daemon thread that runs ``run()`` on request and replies with the exception it raised, if any."""

    def __init__(self, run: Callable[[], None], name: str) -> None:
        self.run = run
        self.requests: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self.replies: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while self.requests.get():
            try:
                self.run()
            except BaseException as err:  # re-raised in the caller's thread
                self.replies.put(err)
            else:
                self.replies.put(None)

    def stop(self) -> None:
        self.requests.put(False)
        self.thread.join(timeout=10)


class ThreadedVecEnv(VecEnv):
    """SB3 VecEnv stepping its envs in ``n_threads`` threads; results identical to DummyVecEnv.

    ``step_async`` wakes ``n_threads - 1`` workers; the calling thread joins in ``step_help`` or
    ``step_wait``. Each thread takes the next unstepped env until none is left, so a caller that
    arrives late (busy with other work) simply steps fewer envs.

    Each env is wrapped *in spirit* by ``Monitor(TimeLimit(env, max_episode_steps))``: the two
    wrappers' bookkeeping is done here, inline, because every Python-level line between two
    ``mj_step`` calls holds the GIL and so limits the parallel speed-up.

    Per step, for env ``i``: ``rewards[i]`` is the env's reward cast to float32 (as DummyVecEnv's
    buffer does); ``dones[i]`` is ``terminated or truncated``; ``infos[i]`` holds ``is_success``,
    ``TimeLimit.truncated`` and, at an episode's end, ``episode = {"r", "l", "t"}`` (Monitor's
    rounding) and ``terminal_observation`` — the returned observation is then the next episode's
    first one (the env is reset without a seed, continuing its own RNG stream).

    Args:
        env_fns: thunks creating *unwrapped* envs (no TimeLimit, no Monitor).
        n_threads: stepping threads, the calling thread included (1 = sequential, no extra thread).
        max_episode_steps: truncation length (50 for every Fetch task).
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], n_threads: int | None = None,
                 max_episode_steps: int = MAX_EPISODE_STEPS) -> None:
        self.envs: list[gym.Env] = [fn() for fn in env_fns]
        if len({id(e) for e in self.envs}) != len(self.envs):
            raise ValueError("env_fns returned the same env instance twice; each thunk must build a new env")
        env = self.envs[0]
        super().__init__(len(self.envs), env.observation_space, env.action_space)
        self.keys, shapes, dtypes = obs_space_info(env.observation_space)
        n = self.num_envs
        self.buf_obs = OrderedDict((k, np.zeros((n, *tuple(shapes[k])), dtype=dtypes[k])) for k in self.keys)
        self.buf_dones = np.zeros((n,), dtype=bool)
        self.buf_rews = np.zeros((n,), dtype=np.float32)
        self.buf_infos: list[dict[str, Any]] = [{} for _ in range(n)]
        self.metadata = env.metadata
        self.max_episode_steps = max_episode_steps
        act_shape = tuple(env.action_space.shape or ())
        self.actions = np.zeros((n, *act_shape), dtype=env.action_space.dtype)
        self._elapsed = [0] * n
        self._ep_return = [0.0] * n
        self._t_start = [time.time()] * n  # Monitor's t_start: the wrapper's creation time
        self._n_threads = max(1, min(n_threads or default_n_threads(), n))
        self._workers = [_Worker(self._step_shared, f"fetchrl-env-{k}") for k in range(1, self._n_threads)]
        self._next_env: Iterator[int] = iter(())
        self._error: BaseException | None = None
        self._in_flight = False
        self._closed = False

    @property
    def n_threads(self) -> int:
        return self._n_threads

    # ------------------------------------------------------------------ stepping
    def _save_obs(self, i: int, obs: Obs) -> None:
        for key in self.keys:
            self.buf_obs[key][i] = obs[key]

    def _reset_env(self, i: int, **kwargs: Any) -> Obs:
        obs, self.reset_infos[i] = self.envs[i].reset(**kwargs)
        self._elapsed[i] = 0
        self._ep_return[i] = 0.0
        return obs

    def _step_shared(self) -> None:
        """Step envs taken one at a time from this step's shared counter until none is left.

        Each thread, the caller's included, pulls the next index (``next`` on a count is atomic under
        the GIL), so the threads balance themselves: the caller joins in once it has done whatever
        it did between ``step_async`` and ``step_wait``. Which thread steps which env changes nothing:
        envs share no state, and each writes only its own row of the buffers.
        """
        n = self.num_envs
        for i in self._next_env:
            if i >= n:
                return
            self._step_env(i)

    def _step_env(self, i: int) -> None:
        """Step env ``i`` with ``self.actions[i]``; write row ``i`` of the buffers."""
        obs, reward, terminated, truncated, info = self.envs[i].step(self.actions[i])
        self._elapsed[i] += 1
        truncated = truncated or self._elapsed[i] >= self.max_episode_steps  # TimeLimit
        self._ep_return[i] += float(reward)  # Monitor: sum of float(reward), left to right
        self.buf_rews[i] = reward
        done = terminated or truncated
        if done:
            info["episode"] = {"r": round(self._ep_return[i], 6), "l": self._elapsed[i],
                               "t": round(time.time() - self._t_start[i], 6)}
        self.buf_dones[i] = done
        info["TimeLimit.truncated"] = truncated and not terminated
        if done:
            info["terminal_observation"] = obs
            obs = self._reset_env(i)
        self._save_obs(i, obs)
        self.buf_infos[i] = info

    def step_async(self, actions: np.ndarray) -> None:
        """Start stepping in the worker threads and return at once; ``step_wait`` joins in and collects."""
        if self._in_flight:
            raise RuntimeError("step_async called twice without step_wait")
        self.actions = actions
        self._next_env = itertools.count()
        self._error = None
        for w in self._workers:
            w.requests.put(True)
        self._in_flight = True

    def step_help(self) -> None:
        """Step envs of the step in flight in the calling thread until none is left to start; return
        without waiting for the workers' last ones.

        ``fetchrl.fastppo.FastPPO`` calls this right after ``step_async`` and does the previous
        step's bookkeeping afterwards, in the time the workers need to finish, then ``step_wait``.
        Errors are raised by ``step_wait``.
        """
        if not self._in_flight:
            raise RuntimeError("step_help called without step_async")
        self._help()

    def _help(self) -> None:
        try:
            self._step_shared()
        except BaseException as err:
            self._error = self._error or err

    def step_wait(self) -> VecEnvStepReturn:
        if not self._in_flight:
            raise RuntimeError("step_wait called without step_async")
        self._help()
        self._in_flight = False
        error = self._error
        for w in self._workers:  # always collect every reply, so no worker is left mid-step
            reply = w.replies.get()
            error = error or reply
        if error is not None:
            raise error
        return self._obs_from_buf(), np.copy(self.buf_rews), np.copy(self.buf_dones), list(self.buf_infos)

    def _finish_step(self) -> None:
        """Wait for a step still running (before reset/close/state access touch the envs)."""
        if self._in_flight:
            with contextlib.suppress(Exception):
                self.step_wait()

    def reset(self) -> VecEnvObs:
        self._finish_step()
        for i in range(self.num_envs):
            maybe_options = {"options": self._options[i]} if self._options[i] else {}
            self._save_obs(i, self._reset_env(i, seed=self._seeds[i], **maybe_options))
        self._reset_seeds()
        self._reset_options()
        return self._obs_from_buf()

    def _obs_from_buf(self) -> VecEnvObs:
        return dict_to_obs(self.observation_space, OrderedDict((k, v.copy()) for k, v in self.buf_obs.items()))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finish_step()
        for w in self._workers:
            w.stop()
        for env in self.envs:
            env.close()

    # ------------------------------------------------------------------ resume (fetchrl.resume, kind "vec")
    def get_state(self) -> list[dict[str, Any]]:
        """Picklable copies of everything that decides the next steps, per env: MuJoCo's integration
        state, the goal, the env's and action space's RNG states and the TimeLimit/Monitor counters."""
        self._finish_step()
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        states = []
        for i, env in enumerate(self.envs):
            base: Any = env.unwrapped
            sim = np.empty(mujoco.mj_stateSize(base.model, spec), dtype=np.float64)
            mujoco.mj_getState(base.model, base.data, sim, spec)
            states.append({"sim": sim, "goal": np.array(base.goal, copy=True),
                           "np_random": copy.deepcopy(base.np_random.bit_generator.state),
                           "action_space_rng": copy.deepcopy(env.action_space.np_random.bit_generator.state),
                           "elapsed": self._elapsed[i], "ep_return": self._ep_return[i], "t_start": self._t_start[i]})
        return states

    def set_state(self, states: Sequence[dict[str, Any]]) -> None:
        """Inverse of :meth:`get_state` on a VecEnv built with the same id and ``n_envs``."""
        if len(states) != self.num_envs:
            raise ValueError(f"state of {len(states)} envs given to a VecEnv of {self.num_envs}")
        self._finish_step()
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        for i, (env, st) in enumerate(zip(self.envs, states, strict=True)):
            base: Any = env.unwrapped
            sim = np.asarray(st["sim"], dtype=np.float64)
            if sim.size != mujoco.mj_stateSize(base.model, spec):
                raise ValueError("saved simulator state does not fit this model (another env or mujoco version)")
            mujoco.mj_setState(base.model, base.data, sim, spec)
            mujoco.mj_forward(base.model, base.data)  # derived quantities (xpos, site frames) the next step reads
            base.goal = np.array(st["goal"], copy=True)
            base.np_random.bit_generator.state = copy.deepcopy(st["np_random"])
            env.action_space.np_random.bit_generator.state = copy.deepcopy(st["action_space_rng"])
            self._elapsed[i], self._ep_return[i], self._t_start[i] = st["elapsed"], st["ep_return"], st["t_start"]

    # ------------------------------------------------------------------ SB3 VecEnv plumbing
    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            return [None for _ in self.envs]
        return [env.render() for env in self.envs]  # type: ignore[misc]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [self.envs[i].get_wrapper_attr(attr_name) for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        for i in self._get_indices(indices):
            setattr(self.envs[i], attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        return [self.envs[i].get_wrapper_attr(method_name)(*method_args, **method_kwargs)
                for i in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """True for Monitor and TimeLimit, whose behaviour this VecEnv provides itself."""
        from gymnasium.wrappers import TimeLimit
        from stable_baselines3.common.env_util import is_wrapped
        from stable_baselines3.common.monitor import Monitor

        emulated = wrapper_class in (Monitor, TimeLimit)
        return [emulated or is_wrapped(self.envs[i], wrapper_class) for i in self._get_indices(indices)]


def make_vec_env(env_id: str, n_envs: int, *, seed: int, n_threads: int | None = None,
                 render_mode: str | None = None) -> ThreadedVecEnv:
    """Fast counterpart of ``sb3.make_vec_env(env_id, n_envs, seed=seed)`` with DummyVecEnv.

    Env ``i`` is reset with seed ``seed + i`` on the first ``reset()`` and its action space seeded
    with ``seed + i``, exactly as SB3 does, so every number matches the sequential reference.
    """
    _check_id(env_id)

    shared: list[mujoco.MjModel] = []  # env 0's model, stepped by every env (not when rendering)

    def thunk(rank: int) -> Callable[[], gym.Env]:
        def _init() -> gym.Env:
            share = shared[0] if shared and render_mode is None else None
            env = make_raw(env_id, render_mode=render_mode, shared_model=share)
            if not shared:
                shared.append(env.model)
            env.action_space.seed(seed + rank)
            return env

        return _init

    vec = ThreadedVecEnv([thunk(i) for i in range(n_envs)], n_threads=n_threads)
    vec.seed(seed)
    return vec


# ====================================================================== torch threads
#: Torch intra-op threads for the fast path. The policy is a 64-64 MLP on minibatches of 256: a
#: second thread buys nothing there, while the env threads need the cores — and on a shared
#: machine OpenMP's spin-waiting makes 2 threads several times *slower* (bench/bench_speed.py).
FAST_TORCH_THREADS = 1


def configure_torch_threads(n_threads: int = FAST_TORCH_THREADS) -> int:
    """Set torch's intra-op thread count for training on the fast path; returns the previous value."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    return previous
