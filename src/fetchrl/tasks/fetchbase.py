"""What every fast Fetch env shares: a shared ``MjModel``, and the ids and views its lean step reads.

:class:`SharedModelMixin` goes first in a fast env's bases (``class FastFetchReachEnv(SharedModelMixin,
MujocoFetchReachEnv)``): it builds the simulation on a shared model when given one, then calls the
env's own ``_cache_addresses``, which starts with :meth:`SharedModelMixin._cache_robot`. Torch-free.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import mujoco
import numpy as np

from fetchrl.tasks.fast import Info, Obs

with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")  # gymnasium_robotics' unrelated Adroit notice on import
    from gymnasium_robotics.utils import mujoco_utils


def mocap_welds(model: mujoco.MjModel) -> list[tuple[int, int]]:
    """(mocap id, welded body id) of every weld constraint, in model order — what
    ``mujoco_utils.reset_mocap2body_xpos`` walks (by name-free id) on every step."""
    welds: list[tuple[int, int]] = []
    for eq_type, obj1, obj2 in zip(model.eq_type, model.eq_obj1id, model.eq_obj2id, strict=True):
        if eq_type != mujoco.mjtEq.mjEQ_WELD:
            continue
        mocap_id, body = int(model.body_mocapid[obj1]), int(obj2)
        if mocap_id == -1:
            mocap_id, body = int(model.body_mocapid[obj2]), int(obj1)
        assert mocap_id != -1, "a weld without a mocap body"
        welds.append((mocap_id, body))
    return welds


class SharedModelMixin:
    """``shared_model=`` for a Gymnasium-Robotics ``MujocoRobotEnv`` subclass, and the robot's cached ids.

    Several envs on one ``MjModel`` (8.5 MB for Reach, mostly collision meshes) instead of one copy
    each keep it in cache: stepping is a few per cent faster and memory smaller. MuJoCo only reads the
    model while stepping and resetting. Not for rendering envs: ``render`` moves the target's site in
    the model.
    """

    # Set by MujocoRobotEnv; declared for the type checker.
    model: mujoco.MjModel
    data: mujoco.MjData
    width: int
    height: int
    n_substeps: int

    def __init__(self, shared_model: mujoco.MjModel | None = None, **kwargs: object) -> None:
        """``shared_model``: step with this (identical) model instead of the one built from the XML."""
        self._shared_model = shared_model
        super().__init__(**kwargs)

    def _initialize_simulation(self) -> None:
        if self._shared_model is None:
            super()._initialize_simulation()  # type: ignore[misc]
        else:
            # MujocoRobotEnv._initialize_simulation, on the shared model instead of a fresh copy of the
            # XML's. _env_setup rewrites the model's weld data with the constants the first env already
            # wrote there; everything else it sets is this env's MjData.
            self.model = self._shared_model
            self.data = mujoco.MjData(self.model)
            self._model_names = mujoco_utils.MujocoModelNames(self.model)
            self.model.vis.global_.offwidth = self.width
            self.model.vis.global_.offheight = self.height
            self._env_setup(initial_qpos=self.initial_qpos)  # type: ignore[attr-defined,has-type]
            self.initial_time = self.data.time
            self.initial_qpos = np.copy(self.data.qpos)
            self.initial_qvel = np.copy(self.data.qvel)
        self._cache_addresses()

    def step(self, action: np.ndarray) -> tuple[Obs, Any, bool, bool, Info]:
        """BaseRobotEnv.step with the env's lean ``_set_action`` and ``_get_obs`` (same arithmetic).

        Fetch never terminates or truncates by itself (its TimeLimit truncates at 50 steps). Returns
        (obs, reward, False, False, {"is_success": float32}); reward is a float32 0 / -1 (sparse) or
        the float64 minus goal distance (dense).
        """
        env: Any = self  # the attributes below are the Gymnasium-Robotics env's
        action = np.asarray(action)
        space = env.action_space
        if action.shape != space.shape:
            raise ValueError("Action dimension mismatch")
        action = np.minimum(np.maximum(action, space.low), space.high)  # np.clip's result, in fewer calls
        env._set_action(action)
        mujoco.mj_step(self.model, self.data, nstep=self.n_substeps)  # releases the GIL
        env._step_callback()
        if env.render_mode == "human":
            env.render()
        obs: Obs = env._get_obs()
        # goal_distance once (the stock step computes it for is_success and again for the reward)
        delta = obs["achieved_goal"] - env.goal
        d = np.sqrt(np.add.reduce(delta * delta, axis=-1))  # np.linalg.norm(delta, axis=-1), its own ops
        info: Info = {"is_success": (d < env.distance_threshold).astype(np.float32)}
        reward = -(d > env.distance_threshold).astype(np.float32) if env.reward_type == "sparse" else -d
        return obs, reward, False, False, info

    def _cache_addresses(self) -> None:
        """The env's own ids and views; overridden by each env, starting with :meth:`_cache_robot`."""
        self._cache_robot()

    def _cache_robot(self) -> None:
        """The ids, addresses and NumPy views of the robot every Fetch step reads, looked up once."""
        m, d = self.model, self.data
        site, joint = mujoco.mjtObj.mjOBJ_SITE, mujoco.mjtObj.mjOBJ_JOINT
        self._grip_site = mujoco.mj_name2id(m, site, "robot0:grip")
        assert self._grip_site != -1, "no robot0:grip site"
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
        self._welds = mocap_welds(m)
        self._rot_ctrl = np.array([1.0, 0.0, 1.0, 0.0])  # fixed end-effector rotation delta (stock)
        # The stock code recomputes this product every step; it is the same float each time.
        self._obs_dt = self.n_substeps * m.opt.timestep
        # MjData's arrays never move: keep the NumPy views instead of asking the bindings every step.
        self._qpos, self._qvel = d.qpos, d.qvel
        self._mocap_pos, self._mocap_quat, self._xpos, self._xquat = d.mocap_pos, d.mocap_quat, d.xpos, d.xquat
