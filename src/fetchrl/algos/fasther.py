"""SB3's ``HerReplayBuffer`` on :class:`~fetchrl.algos.fastsac.FlatDictReplayBuffer`'s storage — the same
draws, the same relabeled goals and rewards, the same batches, bit for bit, with less work per sample.

What SB3's buffer does per gradient step that this one does not:

- ``np.flatnonzero(ep_length > 0)`` over the whole ``[buffer_size, n_envs]`` table (a million entries
  with the chapter's buffer) to list the sampleable transitions. That list only changes when an
  episode ends or an old one is overwritten, so it is kept and rebuilt then (every 50 steps on Fetch).
  ``np.random.choice`` draws from the same list, so the indices are SB3's.
- ``env.env_method("compute_reward", ...)`` on the training VecEnv — with fetchrl's process VecEnv a
  round trip to the worker process for every batch. The reward of a relabeled transition is a pure
  function of (achieved goal, new goal); :attr:`FlatHerReplayBuffer.compute_reward_fn` is the same
  env class's ``compute_reward`` called in this process (set by ``fetchrl.pipeline.setup``), on the
  same float64 values. Without it the buffer asks the VecEnv, as SB3 does.
- six per-key gathers and concatenations: observations are stored as one float32 row (see
  ``FlatDictReplayBuffer``); the relabeled rows get the new goal written into their ``desired_goal``
  columns (float64 -> float32, the cast SB3's ``preprocess_obs`` makes at use).

The relabeling reads achieved goals in float64, as SB3 does: the next observation's ``achieved_goal``
is also kept in float64 (:attr:`next_achieved`, 24 bytes a transition), so a reward on the 5 cm
threshold rounds exactly as SB3's. ``tests/test_fasther.py`` compares batches, rewards and a whole
short training run with SB3's ``SAC`` + ``HerReplayBuffer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.type_aliases import DictReplayBufferSamples
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from stable_baselines3.her.goal_selection_strategy import KEY_TO_GOAL_STRATEGY, GoalSelectionStrategy
from stable_baselines3.her.her_replay_buffer import HerReplayBuffer

from fetchrl.algos.fastsac import FlatDictReplayBuffer, FlatSamples

#: ``compute_reward(achieved_goal [N, G], desired_goal [N, G], infos) -> rewards [N]`` of a goal env.
RewardFn = Callable[[np.ndarray, np.ndarray, Any], np.ndarray]
#: ``randint(low [N], high [N]) -> [N]``: NumPy's global ``np.random.randint`` (training's draws, SB3's) or a
#: ``Generator.integers`` (a diagnostic's own draws).
RandInt = Callable[[Any, Any], Any]


def goal_rows(buffer: HerReplayBuffer, rows: np.ndarray, cols: np.ndarray, randint: RandInt) -> np.ndarray:
    """[N] buffer rows whose next achieved goal relabels each transition (rows [N], env columns [N]):
    ``HerReplayBuffer._sample_goals``'s arithmetic, for SB3's buffer or this module's. The position in the
    episode is its last (final), uniform in ``[current, length)`` (future: the transition itself included,
    as SB3's) or in ``[0, length)`` (episode), drawn with ``randint``; rows wrap around the buffer."""
    start, length = buffer.ep_start[rows, cols], buffer.ep_length[rows, cols]
    strategy = buffer.goal_selection_strategy
    if strategy == GoalSelectionStrategy.FINAL:
        in_episode = length - 1
    elif strategy == GoalSelectionStrategy.FUTURE:
        in_episode = randint((rows - start) % buffer.buffer_size, length)
    elif strategy == GoalSelectionStrategy.EPISODE:
        in_episode = randint(0, length)
    else:
        raise ValueError(f"Strategy {strategy} for sampling goals not supported!")
    return np.asarray((in_episode + start) % buffer.buffer_size)


def relabeled_rewards(buffer: HerReplayBuffer, achieved: np.ndarray, goals: np.ndarray) -> np.ndarray:
    """[N] rewards of next achieved goals [N, G] for new goals [N, G], as the buffer computes them: its
    in-process ``compute_reward_fn`` (:class:`FlatHerReplayBuffer` on fetchrl's path), else its VecEnv's
    ``compute_reward`` through ``env_method`` (SB3's way). Not cast: SB3 casts to float32 after."""
    infos: list[dict[str, Any]] = [{} for _ in range(len(goals))]
    fn: RewardFn | None = getattr(buffer, "compute_reward_fn", None)
    if fn is not None:
        return np.asarray(fn(achieved, goals, infos))
    if buffer.env is None:
        raise ValueError("the HER buffer has neither compute_reward_fn nor a VecEnv to compute rewards")
    return np.asarray(buffer.env.env_method("compute_reward", achieved, goals, infos, indices=[0])[0])


class FlatHerReplayBuffer(FlatDictReplayBuffer, HerReplayBuffer):
    """``HerReplayBuffer`` (SB3's episode bookkeeping, sampling and relabeling) on flat float32 rows.

    Storage: :class:`FlatDictReplayBuffer`'s ``obs``/``next_obs`` [buffer_size, n_envs, F] float32 plus
    :attr:`next_achieved` [buffer_size, n_envs, G] float64 and SB3's ``ep_start``/``ep_length``
    [buffer_size, n_envs] int64. ``copy_info_dict`` is not supported (Fetch's reward ignores ``info``).
    """

    def __init__(self, buffer_size: int, observation_space: spaces.Dict, action_space: spaces.Space,
                 env: VecEnv | None, device: th.device | str = "auto", n_envs: int = 1,
                 optimize_memory_usage: bool = False, handle_timeout_termination: bool = True,
                 n_sampled_goal: int = 4, goal_selection_strategy: GoalSelectionStrategy | str = "future",
                 copy_info_dict: bool = False) -> None:
        if copy_info_dict:
            raise ValueError("FlatHerReplayBuffer does not copy info dicts; use SB3's HerReplayBuffer")
        FlatDictReplayBuffer.__init__(self, buffer_size, observation_space, action_space, device, n_envs=n_envs,
                                      optimize_memory_usage=optimize_memory_usage,
                                      handle_timeout_termination=handle_timeout_termination)
        for key in ("achieved_goal", "desired_goal"):
            if key not in self.columns:
                raise ValueError(f"a goal-conditioned observation needs {key!r}")
        self.env = env
        self.copy_info_dict = False
        self.goal_selection_strategy = (KEY_TO_GOAL_STRATEGY[goal_selection_strategy.lower()]
                                        if isinstance(goal_selection_strategy, str) else goal_selection_strategy)
        self.n_sampled_goal = n_sampled_goal
        self.her_ratio = 1 - (1.0 / (self.n_sampled_goal + 1))
        goal = self.columns["achieved_goal"]
        self.next_achieved = np.zeros((self.buffer_size, self.n_envs, goal.stop - goal.start), dtype=np.float64)
        self.ep_start = np.zeros((self.buffer_size, self.n_envs), dtype=np.int64)
        self.ep_length = np.zeros((self.buffer_size, self.n_envs), dtype=np.int64)
        self._current_ep_start = np.zeros(self.n_envs, dtype=np.int64)
        self.compute_reward_fn: RewardFn | None = None
        self._valid: np.ndarray | None = None

    # ------------------------------------------------------------------ pickling (resume)
    def __getstate__(self) -> dict[str, Any]:
        """The buffer without ``env``, the reward function (set again after loading) and the index cache."""
        state = self.__dict__.copy()
        for key in ("env", "compute_reward_fn", "_valid"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.env = None
        self.compute_reward_fn = None
        self._valid = None

    # ------------------------------------------------------------------ storing
    def add(self, obs: dict[str, np.ndarray], next_obs: dict[str, np.ndarray],  # type: ignore[override]
            action: np.ndarray, reward: np.ndarray, done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """``HerReplayBuffer.add``: invalidate the episodes this row overwrites, store, close finished episodes."""
        pos = self.pos
        for env_idx in range(self.n_envs):
            episode_length = self.ep_length[pos, env_idx]
            if episode_length > 0:
                episode_end = self.ep_start[pos, env_idx] + episode_length
                self.ep_length[np.arange(pos, episode_end) % self.buffer_size, env_idx] = 0
                self._valid = None
        self.ep_start[pos] = self._current_ep_start.copy()
        FlatDictReplayBuffer.add(self, obs, next_obs, action, reward, done, infos)
        self.next_achieved[pos] = next_obs["achieved_goal"]
        for env_idx in range(self.n_envs):
            if done[env_idx]:
                self._compute_episode_length(env_idx)
                self._valid = None

    def replace_next_obs(self, pos: int, env_idx: int, obs: dict[str, np.ndarray]) -> None:
        """Overwrite the stored next observation of one transition (a finished episode's terminal one)."""
        super().replace_next_obs(pos, env_idx, obs)
        self.next_achieved[pos, env_idx] = obs["achieved_goal"]

    def truncate_last_trajectory(self) -> None:
        self._valid = None
        super().truncate_last_trajectory()

    # ------------------------------------------------------------------ sampling
    def _draw(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, int, np.ndarray, np.ndarray]:
        """SB3's draws: (rows [B], env columns [B], relabeled count V, new goals [V, G] float64,
        relabeled rewards [V] float32). The batch is the *last* B - V draws (real) then the first V."""
        if self._valid is None:
            self._valid = np.flatnonzero(self.ep_length > 0)
        if self._valid.size == 0:
            raise RuntimeError(
                "Unable to sample before the end of the first episode. We recommend choosing a value "
                "for learning_starts that is greater than the maximum number of timesteps in the environment.")
        sampled = np.random.choice(self._valid, size=batch_size, replace=True)
        rows, cols = np.unravel_index(sampled, self.ep_length.shape)
        n_virtual = int(self.her_ratio * batch_size)
        v_rows, v_cols = rows[:n_virtual], cols[:n_virtual]
        goals = self.next_achieved[goal_rows(self, v_rows, v_cols, np.random.randint), v_cols]
        rewards = relabeled_rewards(self, self.next_achieved[v_rows, v_cols], goals).astype(np.float32)
        return rows, cols, n_virtual, goals, rewards

    def _rows(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(obs [B, F], next_obs [B, F], actions, dones, rewards) in SB3's order: real, then relabeled."""
        rows, cols, n_virtual, goals, virtual_rewards = self._draw(batch_size)
        order_rows = np.concatenate((rows[n_virtual:], rows[:n_virtual]))
        order_cols = np.concatenate((cols[n_virtual:], cols[:n_virtual]))
        n_real = batch_size - n_virtual
        obs, next_obs = self.obs[order_rows, order_cols], self.next_obs[order_rows, order_cols]
        desired = self.columns["desired_goal"]
        obs[n_real:, desired] = goals
        next_obs[n_real:, desired] = goals
        dones = self.dones[order_rows, order_cols] * (1 - self.timeouts[order_rows, order_cols])
        rewards = np.concatenate((self.rewards[rows[n_virtual:], cols[n_virtual:]], virtual_rewards))
        return obs, next_obs, self.actions[order_rows, order_cols], dones, rewards

    def sample_flat(self, batch_size: int) -> FlatSamples:
        obs, next_obs, actions, dones, rewards = self._rows(batch_size)
        return FlatSamples(th.from_numpy(obs), th.from_numpy(actions), th.from_numpy(next_obs),
                           th.from_numpy(dones.reshape(-1, 1)), th.from_numpy(rewards.reshape(-1, 1)))

    def sample_flat_before_add(self, batch_size: int) -> FlatSamples | None:
        """:meth:`FlatDictReplayBuffer.sample_flat_before_add` for HER: only finished episodes are sampled,
        so an ``add`` that finishes none (the caller's to know) changes the batch only when it starts
        overwriting an old episode (it then invalidates that episode: None, nothing drawn), and without
        an in-process ``compute_reward_fn`` (relabeling would then ask the VecEnv, busy stepping)."""
        if self.compute_reward_fn is None or self.ep_length[self.pos].any():
            return None
        return self.sample_flat(batch_size)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> DictReplayBufferSamples:  # type: ignore[override]
        """SB3's sample layout (per-key float32 tensors) of the same batch, for code that calls ``sample``."""
        if env is not None:
            raise ValueError("FlatHerReplayBuffer does not normalise (no VecNormalize on the fast path)")
        obs, next_obs, actions, dones, rewards = self._rows(batch_size)
        return DictReplayBufferSamples(
            observations={k: self.to_torch(obs[:, c]) for k, c in self.columns.items()},
            actions=self.to_torch(actions),
            next_observations={k: self.to_torch(next_obs[:, c]) for k, c in self.columns.items()},
            dones=self.to_torch(dones).reshape(-1, 1),
            rewards=self.to_torch(rewards.reshape(-1, 1)),
        )
