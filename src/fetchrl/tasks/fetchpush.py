"""The lean FetchPush env — bit-equal to Gymnasium-Robotics' own, no torch, no SB3.

Chapter 4 trains SAC+HER on ``FetchPush-v4`` for millions of steps; the stock step spends about a
third of its time outside MuJoCo (15 joints looked up by name twice for two finger values, two
Jacobians allocated per step, a vectorised ``mat2euler`` for one matrix, the goal distance computed
twice). The env worker process of :mod:`fetchrl.vecenv` can import this module: it needs no torch.

- :class:`FastFetchPushEnv` — Gymnasium-Robotics' ``MujocoFetchPushEnv`` with the per-step Python
  overhead removed: joint, site and mocap addresses are looked up once. Every floating-point operation
  that produces the observation (25,), achieved goal (the block's position), desired goal, reward and
  ``is_success`` is the stock one, in the stock order, so the numbers are bit-identical
  (``tests/test_fast_push.py``). Reset, seeding, block and goal sampling, ``compute_reward`` and
  ``render`` are inherited unchanged.

:mod:`fetchrl.tasks.fast` builds it (``make``, ``make_raw``) with the id's reward type.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import mujoco
import numpy as np

from fetchrl.tasks.fast import Obs
from fetchrl.tasks.fetchbase import SharedModelMixin

# gymnasium_robotics prints an unrelated Adroit notice on import; keep the output clean (as envs.py does).
# Importing it also registers its ids (FetchPush-v4, ...), whose kwargs make_raw reads.
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from gymnasium_robotics.envs.fetch.push import MujocoFetchPushEnv

#: The ids this env serves (the reward type comes from :data:`fetchrl.runtime.FAST_ENVS`).
FAST_ENV_IDS: tuple[str, ...] = ("FetchPush-v4", "FetchPushDense-v4")
#: ``rotations.mat2euler``'s gimbal-lock threshold (its ``_EPS4``: four float64 epsilons).
EULER_EPS4 = float(np.finfo(np.float64).eps) * 4.0



def mat2euler(mat: np.ndarray) -> np.ndarray:
    """``gymnasium_robotics.utils.rotations.mat2euler`` for one rotation matrix, with the same numbers.

    Args:
        mat: [3, 3] float64 rotation matrix (e.g. a view of ``data.site_xmat[i].reshape(3, 3)``).
    Returns:
        [3] float64 Euler angles (x, y, z), as the stock function returns them.

    The stock function evaluates both branches of each ``np.where`` for a batch of matrices; for one
    matrix only the selected branch matters. Each ``np.arctan2`` gets the very operands the stock one
    gets (0-d arrays from ``mat[..., i, j]``, the scalar ``cy``): NumPy may dispatch ``arctan2`` to
    SIMD code whose last bit can depend on the operands' layout, so the layout is not changed either.
    """
    cy = np.sqrt(mat[..., 2, 2] * mat[..., 2, 2] + mat[..., 1, 2] * mat[..., 1, 2])
    euler = np.empty(3, dtype=np.float64)
    euler[1] = -np.arctan2(-mat[..., 0, 2], cy)  # both stock branches are this same expression
    if cy > EULER_EPS4:
        euler[2] = -np.arctan2(mat[..., 0, 1], mat[..., 0, 0])
        euler[0] = -np.arctan2(mat[..., 1, 2], mat[..., 2, 2])
    else:  # gimbal lock (the block tipped 90 degrees), or NaN: the stock function's second branch
        euler[2] = -np.arctan2(-mat[..., 1, 0], mat[..., 1, 1])
        euler[0] = 0.0
    return euler


class FastFetchPushEnv(SharedModelMixin, MujocoFetchPushEnv):
    """``MujocoFetchPushEnv`` with cached addresses and a lean ``step`` (identical numbers).

    What the push model is — checked by the constructor, since the lean step relies on it: one mocap
    body welded to the gripper, no actuators (``model.nu == 0``: the action's 4th component, the
    gripper command, is zeroed by the blocked gripper and would reach no actuator anyway), a free-
    jointed block ``object0`` and the ``robot0:grip`` site.
    """

    def _cache_addresses(self) -> None:
        """Every id, address and NumPy view the step reads, looked up once."""
        self._cache_robot()
        m = self.model
        assert m.nu == 0 and m.nmocap >= 1, "FastFetchPushEnv needs the mocap-driven push model (no actuators)"
        assert self.has_object and self.block_gripper, "FastFetchPushEnv needs the push task's block and blocked gripper"
        self._object_site = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, "object0")
        assert self._object_site != -1
        # Jacobian buffers, rewritten whole by mj_jacSite; (3, nv) C arrays like the stock fresh ones,
        # so `jac @ qvel` takes the same BLAS path.
        self._jacp_grip = np.zeros((3, m.nv))
        self._jacp_object = np.zeros((3, m.nv))
        self._jacr_object = np.zeros((3, m.nv))
        d = self.data
        self._grip_pos = d.site_xpos[self._grip_site]  # [3] views, as mujoco_utils.get_site_xpos returns
        self._object_pos = d.site_xpos[self._object_site]
        self._object_xmat = d.site_xmat[self._object_site].reshape(3, 3)  # as mujoco_utils.get_site_xmat

    # ------------------------------------------------------------------ step
    def _set_action(self, action: np.ndarray) -> None:
        """MujocoFetchEnv._set_action for one mocap body and no actuators.

        The stock one builds [pos * 0.05, rot, 0, 0] (float64 by concatenation), hands the last two to
        ``ctrl_set_action`` (a no-op without actuators) and the first seven to ``mocap_set_action``.
        """
        pos_ctrl = action[:3] * 0.05  # limit maximum change in position (in the action's dtype, as stock)
        mocap_pos, mocap_quat = self._mocap_pos, self._mocap_quat
        for mocap_id, body in self._welds:  # mujoco_utils.reset_mocap2body_xpos
            mocap_pos[mocap_id] = self._xpos[body]
            mocap_quat[mocap_id] = self._xquat[body]
        mocap_pos += pos_ctrl.astype(np.float64)
        mocap_quat += self._rot_ctrl

    def _step_callback(self) -> None:
        """Keep the blocked gripper closed, then recompute what the observation reads.

        The stock callback runs a full ``mj_forward``; the observation and the next action only read
        positions, site frames and site Jacobians, i.e. the ``mj_kinematics`` and ``mj_comPos`` stages,
        and the next ``mj_step`` recomputes every later stage (collisions, constraint forces,
        accelerations) from qpos/qvel/mocap and its warm start. So the trajectory is bit-identical
        (tested on qpos, qvel, qacc_warmstart and observations, with the block pushed); only derived
        fields nothing reads between steps (contacts, qacc, efc_*) describe the last substep instead.
        ``render`` still runs its own ``mj_forward``.
        """
        qpos = self._qpos
        for adr in self._finger_qpos_adr:
            qpos[adr] = 0.0
        mujoco.mj_kinematics(self.model, self.data)
        mujoco.mj_comPos(self.model, self.data)

    def _get_obs(self) -> Obs:
        """MujocoFetchEnv.generate_mujoco_observations + BaseFetchEnv._get_obs, with cached addresses.

        observation [25] = grip_pos [3], object_pos [3], object_rel_pos [3], gripper_state [2],
        object_rot [3], object_velp [3] (relative to the gripper), object_velr [3], grip_velp [3],
        gripper_vel [2]; velocities are Jacobian @ qvel times dt = n_substeps * timestep.
        """
        m, d = self.model, self.data
        dt = self._obs_dt
        qvel = self._qvel
        grip_pos = self._grip_pos
        mujoco.mj_jacSite(m, d, self._jacp_grip, None, self._grip_site)
        grip_velp = (self._jacp_grip @ qvel) * dt
        object_pos = self._object_pos
        object_rot = mat2euler(self._object_xmat)
        mujoco.mj_jacSite(m, d, self._jacp_object, self._jacr_object, self._object_site)
        object_velp = (self._jacp_object @ qvel) * dt
        object_velr = (self._jacr_object @ qvel) * dt
        object_rel_pos = object_pos - grip_pos
        object_velp -= grip_velp
        gripper_state = self._qpos[self._grip_qpos_adr]
        gripper_vel = qvel[self._grip_dof_adr] * dt
        observation = np.concatenate([grip_pos, object_pos, object_rel_pos, gripper_state, object_rot,
                                      object_velp, object_velr, grip_velp, gripper_vel])
        return {
            "observation": observation,
            "achieved_goal": object_pos.copy(),
            "desired_goal": self.goal.copy(),
        }
