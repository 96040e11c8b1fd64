"""The lean FetchReach env — bit-equal to Gymnasium-Robotics' own, no torch, no SB3.

The env worker process of :mod:`fetchrl.vecenv` imports this module: it loads in a quarter of a
second and ~60 MB, where anything importing SB3 pulls in torch (1 s, 220 MB).

- :class:`FastFetchReachEnv` — Gymnasium-Robotics' ``MujocoFetchReachEnv`` with the per-step
  Python overhead removed: joint, site and mocap addresses are looked up once, not by name
  (15 joints, twice) on every step. Every floating-point operation that produces an observation,
  reward or ``is_success`` is the stock one, in the stock order, so the numbers are identical
  (``tests/test_fastenv.py`` demands 1e-6; they are in fact bit-equal). Reset, seeding, goal
  sampling, ``compute_reward`` and ``render`` are inherited unchanged.

Which ids have a fast env is :data:`fetchrl.runtime.FAST_ENVS`; :mod:`fetchrl.tasks.fast` builds it
(``make``, ``make_raw``), and :mod:`fetchrl.tasks.envs` calls that when the
:class:`~fetchrl.runtime.Runtime` is on the fast path.
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
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from gymnasium_robotics.envs.fetch.reach import MujocoFetchReachEnv

#: The ids this env serves (the reward type comes from :data:`fetchrl.runtime.FAST_ENVS`).
FAST_ENV_IDS: tuple[str, ...] = ("FetchReachDense-v4", "FetchReach-v4")


class FastFetchReachEnv(SharedModelMixin, MujocoFetchReachEnv):
    """``MujocoFetchReachEnv`` with cached addresses and a lean ``step`` (identical numbers).

    Only the reach task qualifies: no object, gripper blocked, no actuators (``model.nu == 0``), so
    the action only moves the mocap body; the constructor checks these assumptions.
    """

    def _cache_addresses(self) -> None:
        self._cache_robot()
        m = self.model
        assert m.nu == 0 and m.nmocap >= 1, "FastFetchReachEnv needs the mocap-driven reach model"
        self._jacp = np.zeros((3, m.nv))
        self._site_xpos = self.data.site_xpos

    # ------------------------------------------------------------------ step (SharedModelMixin.step)
    def _set_action(self, action: np.ndarray) -> None:
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
