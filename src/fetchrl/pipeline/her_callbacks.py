"""HER's truth serum: is relabeling producing successes, and did the arm touch the object at all?

:class:`HERDiagnosticsCallback` logs, under the names of ``fetchrl.metrics`` (HER section):

- ``her/relabeled_reward0_fraction`` and ``her/real_reward0_fraction`` (every ``every`` gradient steps,
  with a HER buffer): ``batch_size`` transitions are drawn the way SB3's ``HerReplayBuffer.sample`` draws
  them (uniformly over the transitions of *finished* episodes, ``ep_length > 0``), each is relabeled
  with a goal chosen by the buffer's own strategy (future: a later achieved goal of its episode, the
  transition itself included; final: the episode's last; episode: any of the episode's) and rewarded with
  the env's ``compute_reward`` -- the fraction of those rewards that are 0 (successes) is the first
  number; the fraction of the same transitions' *stored* rewards that are 0 is the second. SB3 relabels
  the first ``her_ratio`` of a batch and keeps the rest real; both parts are uniform draws from the same
  transitions, so scoring every drawn transition both ways measures the same two fractions with more
  samples. A working HER on a sparse task shows the first well above the second early on (the
  "future" strategy alone gives about 1/25 successes: the transition's own next achieved goal); ~0, or
  no more than the real fraction, means relabeling does not produce successes (a ``compute_reward`` that
  ignores its goal argument is the classic bug).
- ``her/object_displacement`` (tasks with an object, e.g. FetchPush-v4, where ``achieved_goal`` is the
  object's position): for every finished episode of every training env, ``||achieved_goal at the end -
  achieved_goal at the start||`` in metres, averaged over the episodes finished since the last log dump
  (``record_mean``). It is read from what the callback sees at each ``on_step``: an env whose episode
  ended (Fetch truncates at 50 steps) reports its last observation in ``infos[i]["terminal_observation"]``
  while ``new_obs`` already holds the next episode's first one. ~0 over a long stretch: the arm never
  pushes the object, an exploration problem no relabeling can fix.

SB3 logs the entropy coefficient itself (``train/ent_coef``): the Push collapse of chapter 4.

Training is untouched, bit for bit: the draws come from this callback's own ``numpy.random.Generator``
(SB3's sampling uses NumPy's global RNG, the training's), nothing touches torch, the buffer is only read,
and ``compute_reward`` is a pure function of its arguments (the buffer's in-process
``compute_reward_fn`` on fetchrl's path, the training VecEnv's ``env_method`` on SB3's).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.her.her_replay_buffer import HerReplayBuffer

from fetchrl import metrics
from fetchrl.algos.fasther import goal_rows, relabeled_rewards
from fetchrl.errors import FetchRLError

#: Transitions scored per measurement: the fractions' standard error is at most 1.6 percentage points.
HER_STATS_BATCH = 1024


class RewardFractions(NamedTuple):
    """Shares of reward-0 (success) transitions in one sampled batch."""

    relabeled: float
    real: float


def next_achieved_goals(buffer: HerReplayBuffer) -> np.ndarray:
    """[buffer_size, n_envs, G] float64: each stored transition's next ``achieved_goal`` (what HER relabels
    with): ``FlatHerReplayBuffer.next_achieved``, or SB3's ``next_observations["achieved_goal"]``."""
    flat = getattr(buffer, "next_achieved", None)
    if flat is not None:
        return np.asarray(flat)
    observations = buffer.next_observations
    assert isinstance(observations, dict)
    return observations["achieved_goal"]


def reward0_fractions(buffer: HerReplayBuffer, rng: np.random.Generator,
                      batch_size: int = HER_STATS_BATCH) -> RewardFractions | None:
    """The relabeled and real reward-0 fractions of ``batch_size`` transitions drawn with ``rng`` (module
    docstring); None before the first episode has finished (SB3 cannot sample then either)."""
    valid = np.flatnonzero(buffer.ep_length > 0)
    if valid.size == 0:
        return None
    rows, cols = np.unravel_index(rng.choice(valid, size=batch_size, replace=True), buffer.ep_length.shape)
    achieved = next_achieved_goals(buffer)
    relabeled = relabeled_rewards(buffer, achieved[rows, cols], achieved[goal_rows(buffer, rows, cols, rng.integers), cols])
    real = buffer.rewards[rows, cols]
    return RewardFractions(float(np.mean(relabeled == 0)), float(np.mean(real == 0)))


def her_buffer(model: Any) -> HerReplayBuffer | None:
    """The model's replay buffer when it is a HER buffer (SB3's or fetchrl's flat subclass), else None."""
    buffer = getattr(model, "replay_buffer", None)
    return buffer if isinstance(buffer, HerReplayBuffer) else None


class HERDiagnosticsCallback(BaseCallback):
    """Logs HER's reward-0 fractions and (tasks with an object) the object's displacement per episode.

    Args:
        every: gradient steps between two fraction measurements (only with a HER buffer).
        track_object: log ``her/object_displacement`` (the task's ``achieved_goal`` is an object's
            position: :func:`fetchrl.tasks.envs.has_object`).
        batch_size: transitions scored per measurement.
        seed: seeds this callback's own Generator.

    Values are recorded into the model's logger and written at SB3's next log dump, like SB3's own.
    """

    def __init__(self, every: int = 1000, *, track_object: bool = False, batch_size: int = HER_STATS_BATCH,
                 seed: int = 0, verbose: int = 0) -> None:
        super().__init__(verbose)
        if every < 1 or batch_size < 1:
            raise FetchRLError(f"HERDiagnosticsCallback: every ({every}) and batch_size ({batch_size}) must be >= 1")
        self.every = every
        self.track_object = track_object
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self._next_stats = every
        self._episode_start: np.ndarray | None = None
        """[n_envs, G] achieved goal at each env's episode start; NaN rows: start unknown (skipped)."""

    def _on_training_start(self) -> None:
        n_envs = self.training_env.num_envs
        last = getattr(self.model, "_last_obs", None)
        if self.track_object and isinstance(last, dict) and "achieved_goal" in last:
            start = np.array(last["achieved_goal"], dtype=np.float64)
            if self.model.num_timesteps > 0:
                # a resumed run starts at a rollout boundary, mid-episode: wait for each env's next episode
                start[:] = np.nan
            self._episode_start = start.reshape(n_envs, -1)
        self._next_stats = int(getattr(self.model, "_n_updates", 0)) + self.every

    def allows_overlap(self) -> bool:
        """For :func:`fetchrl.algos.fastsac.allows_overlap`: not at a step where it measures the reward-0
        fractions (due by the update count, which the overlapped update would already have moved); the
        object's displacement comes from the step's observations."""
        return int(getattr(self.model, "_n_updates", 0)) + 1 < self._next_stats

    def _on_step(self) -> bool:
        if self.track_object:
            self._track_object()
        buffer = her_buffer(self.model)
        steps = int(getattr(self.model, "_n_updates", 0))
        if buffer is not None and steps >= self._next_stats:
            self._next_stats = steps + self.every
            fractions = reward0_fractions(buffer, self.rng, self.batch_size)
            if fractions is not None:
                self.logger.record(metrics.HER_RELABELED_REWARD0, fractions.relabeled)
                self.logger.record(metrics.HER_REAL_REWARD0, fractions.real)
        return True

    def _track_object(self) -> None:
        """Record the displacement of every episode that just ended; remember where the next ones start."""
        new_obs, dones, infos = self.locals["new_obs"], self.locals["dones"], self.locals["infos"]
        achieved = np.asarray(new_obs["achieved_goal"], dtype=np.float64)
        if self._episode_start is None:  # no observation before the first step: start with the next episodes
            self._episode_start = np.full_like(achieved, np.nan)
        for i, done in enumerate(dones):
            if not done:
                continue
            terminal = infos[i].get("terminal_observation")
            start = self._episode_start[i]
            if terminal is not None and np.isfinite(start).all():
                end = np.asarray(terminal["achieved_goal"], dtype=np.float64)
                self.logger.record_mean(metrics.OBJECT_DISPLACEMENT, float(np.linalg.norm(end - start)))
            self._episode_start[i] = achieved[i]  # the VecEnv reset it: new_obs is the next episode's first
