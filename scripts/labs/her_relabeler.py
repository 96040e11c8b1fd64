#!/usr/bin/env python3
"""HER from scratch -- the chapter 4 lab ("BUILD IT: HER relabeling in code").

Hindsight Experience Replay (Andrychowicz et al. 2017, "Hindsight Experience Replay",
https://arxiv.org/abs/1707.01495): an episode that failed to reach goal g is a successful demonstration of
reaching wherever it did go. So transitions are replayed again with goals the same episode achieved, and
their rewards are recomputed with the env's own `compute_reward`. Reads top to bottom: data structures ->
goal sampling -> relabeling one transition -> storing relabeled copies (the paper's Algorithm 1) and the
replay buffer (insert with episode bookkeeping, sample with relabeling) -> the modes. Depends only on numpy
and gymnasium; SB3 is imported only inside `--compare-sb3`, gymnasium_robotics only where a Fetch env is
built. For understanding, not production.

Usage:
    python scripts/labs/her_relabeler.py --verify          # goal ranges, own goal -> reward 0, k/(k+1) relabeled
    python scripts/labs/her_relabeler.py --compare-sb3     # same batches, goals and rewards as SB3's HerReplayBuffer
    python scripts/labs/her_relabeler.py --demo            # reward-0 fraction before/after relabeling, Reach and Push

Snippet regions included by the chapter (`--8<-- "scripts/labs/her_relabeler.py:NAME"`):
data_structures, goal_sampling, relabel_transition, her_buffer_insert, her_buffer_sample.

Two forms of the same data, and every function takes the one it is given:
- `Transition` / `Episode`: one record per step, a list per episode -- what the chapter's checkpoints
  build and print (`create_synthetic_episode`, `sample_her_goals`, `relabel_transition`,
  `process_episode_with_her`, `compute_success_fraction`).
- `Transitions`: the same fields as arrays [n, ...] -- what the replay buffer stores and samples, and what
  `relabel_episode`, `HerReplayBuffer`, --verify, --compare-sb3 and --demo use.

Conventions -- SB3's, which the chapter trains with (SAC + HerReplayBuffer, n_sampled_goal=4, "future"):
- Transition t of an episode of T steps: (o_t, ag_t, g) --a_t--> (o_{t+1}, ag_{t+1}),
  r_t = compute_reward(ag_{t+1}, g) = -1 if ||ag_{t+1} - g|| > 0.05 m else 0 (sparse Fetch reward).
  Transition.achieved_goal is ag_{t+1} (achieved at next_obs); Transitions has both ag_t (achieved_goal)
  and ag_{t+1} (next_achieved_goal).
- A relabeled goal is what the same episode achieved after some transition j: g' = ag_{j+1}
  (= episode.transitions[j].achieved_goal).
  future:  j ~ U{t, ..., T-1}. This includes j = t, the transition's own outcome ag_{t+1} (SB3 calls its
           "future" inclusive); in state indices it is the paper's "future states" s_t' with t' = j + 1 > t,
           the same set as OpenAI baselines' her_sampler. At t = T-1, future = final.
  final:   j = T - 1, g' = ag_T.
  episode: j ~ U{0, ..., T-1}, g' in ag_1 ... ag_T (the start ag_0 is never a goal).
- n_sampled_goal = k: k of every k+1 replayed transitions are relabeled, her_ratio = 1 - 1/(k+1).
- Random numbers: a np.random.RandomState passed as `rng`, or, without one, numpy's global legacy stream
  (seeded by np.random.seed) -- the stream SB3 samples from and the chapter's checkpoints use.

Where this lab differs from the chapter's text (tutorials/ch04_her_sparse_reach_push.md, section 4.5) --
the lab follows SB3, which the chapter trains with and which --compare-sb3 matches bit for bit:
- "future" includes the transition's own outcome. Section 4.5.2's checkpoint comment says "FUTURE at idx=5
  of 20-step episode -> goals from indices [6, 19]"; here (and in SB3) the goals come from transitions
  [5, 19]: episode.transitions[j].achieved_goal for j = 5 ... 19, i.e. ag_6 ... ag_20, transition 5's own
  outcome ag_6 included. The chapter's formula {g_achieved(s_t') : t' > t} counts *states*, and states
  s_6 ... s_20 are exactly these goals; its "[6, 19]" counts *transitions* and leaves ag_6 out. SB3's
  HerReplayBuffer._sample_goals draws np.random.randint(t, episode_length) on next_observations
  ["achieved_goal"] ("our implementation is inclusive: current transition can be sampled"); OpenAI
  baselines (her_sampler.py, the paper authors' code) draws future_t in [t+1, T] on ag_0 ... ag_T, the same
  set. The exclusive version fails --compare-sb3 (tests/test_lab_her.py: test_compare_sb3_catches_a_strict_future).
- Goals are drawn independently, with replacement, as in SB3 and baselines (the chapter's original lab
  drew k distinct future transitions and padded with the final one when fewer than k were left).
- So more relabeled copies carry reward 0: every draw of the own outcome is a success. Section 4.5.4 says
  "~16%" for create_synthetic_episode(50), k=4, her_ratio=0.8; that fraction depends on the random
  episode: over seeds 0-299 it averages 13 % here (5-95 %: 7-22 %), 10 % with an exclusive future
  [t+1, T-1] on the same episodes (tests/test_lab_her.py compares the two), and 9 % with the chapter's
  original lab (exclusive, without replacement). ~16 % is one draw; seed 0 gives 8 %.
- Section 4.5.1's checkpoint comment "Goal distance: ~0.283m" for [0.5, 0.4, 0.15] vs [0.3, 0.2, 0.10] is
  sqrt(0.2^2 + 0.2^2) without the 5 cm in z; the snippet prints 0.287 = sqrt(0.0825).
- `her_ratio` in process_episode_with_her is the chapter's: the probability that a transition gets its k
  relabeled copies (50 + 0.8*50*4 ~ 210 stored, 160/210 ~ 0.76 relabeled). SB3's her_ratio -- `her_ratio(k)`
  here -- is the relabeled share k/(k+1) = 0.8 of a sampled batch, which Algorithm 1 (her_ratio=1.0) also gives.
- The expected outputs printed in sections 4.5.6 and 4.5.7 are of the chapter's original lab: --verify
  here prints the same sections plus a relabeled-fraction check; --compare-sb3 compares whole batches
  (every field, three strategies, k = 1, 4, 8, Reach and Push) instead of one reward difference.

The differences from SB3's HerReplayBuffer (2.x) -- the bridge:

| Aspect              | This lab                                     | SB3 HerReplayBuffer                          |
|---------------------|----------------------------------------------|----------------------------------------------|
| Storage             | numpy arrays [buffer_size // n_envs,         | same (DictReplayBuffer); torch tensors       |
|                     | n_envs, ...], one row per vector step        | on sample                                    |
| Goal index ranges   | future [t, T-1], final T-1, episode [0, T-1] | same                                         |
| Relabeled per batch | the first int(k/(k+1) * batch_size) draws:   | same (OpenAI baselines instead flips a       |
|                     | a fixed count; real ones returned first      | coin per draw with probability k/(k+1))      |
| Random numbers      | a np.random.RandomState passed in            | the global np.random: the same stream        |
|                     |                                              | for the same seed                            |
| Episode bookkeeping | ep_start / ep_length per row and env;        | same                                         |
|                     | unfinished and partly overwritten episodes   |                                              |
|                     | are never sampled                            |                                              |
| Reward              | env.unwrapped.compute_reward(ag_{t+1}, g')   | env_method("compute_reward", ...,            |
|                     |                                              | indices=[0]) on the VecEnv                   |
| info for the reward | empty dicts (Fetch's reward ignores it)      | same by default (copy_info_dict=False)       |
| Goal in next obs    | one desired_goal per transition, for both    | obs and next_obs each hold it; both          |
|                     |                                              | replaced                                     |
| done                | `terminated` (a time-limit end still         | done * (1 - timeout): the same with          |
|                     | bootstraps; Fetch only truncates)            | handle_timeout_termination=True              |
| Shapes              | reward, terminated: [batch]                  | rewards, dones: [batch, 1]                   |
| Paper's Algorithm 1 | `process_episode_with_her` (records) and     | not offered: relabels at sample time only    |
|                     | `relabel_episode` (arrays, used by --demo):  |                                              |
|                     | k relabeled copies stored per transition     |                                              |
| Not implemented     | VecNormalize, truncate_last_trajectory,      | supported                                    |
|                     | pickling, devices                            |                                              |
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple, overload

import gymnasium as gym
import numpy as np

REACH_ENV_ID = "FetchReach-v4"
PUSH_ENV_ID = "FetchPush-v4"
ENV_IDS = (REACH_ENV_ID, PUSH_ENV_ID)
DISTANCE_THRESHOLD = 0.05  # metres: Fetch's sparse reward is 0 within 5 cm of the goal, -1 beyond
DEMO_KS = (1, 2, 4, 8)
COMPARE_KS = (1, 4, 8)


# =============================================================================
# Data structures
# =============================================================================

# --8<-- [start:data_structures]
class Transition(NamedTuple):
    """One goal-conditioned transition, the paper's (s_t || g, a_t, r_t, s_{t+1} || g), as one record.

    `achieved_goal` is the goal achieved at next_obs, ag_{t+1}: where a_t led, the goal the reward is
    computed from (r_t = compute_reward(achieved_goal, desired_goal)). `Transitions` below holds the same
    data as arrays, as the replay buffer stores it (there: next_achieved_goal).
    """

    obs: np.ndarray  # [obs_dim] o_t (Fetch's "observation": Reach 10, Push 25)
    action: np.ndarray  # [act_dim] a_t (Fetch: 4)
    reward: float  # r_t: 0.0 if ||achieved_goal - desired_goal|| <= 5 cm (success), else -1.0
    next_obs: np.ndarray  # [obs_dim] o_{t+1}
    done: bool  # the episode ended after this step (Fetch: truncated at step 50, not a terminal state)
    achieved_goal: np.ndarray  # [goal_dim] ag_{t+1}: gripper (Reach) or object (Push) position at next_obs
    desired_goal: np.ndarray  # [goal_dim] g: the goal the agent was given


@dataclass(frozen=True)
class Episode:
    """One episode as Transition records in time order: transitions[t] is step t, len(episode) = T."""

    transitions: list[Transition]

    def __len__(self) -> int:
        return len(self.transitions)

    def achieved_goals(self) -> np.ndarray:
        """[T, goal_dim]: ag_1 ... ag_T, where each step led -- the goals HER relabels with."""
        return np.stack([transition.achieved_goal for transition in self.transitions])

    @classmethod
    def from_transitions(cls, episode: Transitions) -> Episode:
        """The T rows of one episode (time order) as records: achieved_goal = next_achieved_goal (ag_{t+1}),
        done = terminated or truncated. The start ag_0 and which of the two ended it are not kept."""
        return cls([
            Transition(obs=episode.observation[t], action=episode.action[t], reward=float(episode.reward[t]),
                       next_obs=episode.next_observation[t],
                       done=bool(episode.terminated[t] or episode.truncated[t]),
                       achieved_goal=episode.next_achieved_goal[t], desired_goal=episode.desired_goal[t])
            for t in range(len(episode.reward))
        ])


class GoalStrategy(Enum):
    """Where a relabeled goal comes from (Andrychowicz et al. 2017, section 4.5); SB3's names.

    The paper's fourth strategy, "random" (any achieved goal in the whole buffer), is left out, as in SB3.
    """

    FUTURE = "future"  # an achieved goal from later in the same episode (the paper's best, k = 4 or 8)
    FINAL = "final"  # the last achieved goal of the episode
    EPISODE = "episode"  # any achieved goal of the same episode


ComputeReward = Callable[[np.ndarray, np.ndarray, list[dict[str, Any]] | dict[str, Any]], np.ndarray]
"""env.unwrapped.compute_reward: (achieved_goal [n, goal_dim], desired_goal [n, goal_dim], infos: a list of
n dicts) -> [n]; for one transition ([goal_dim], [goal_dim], one dict) -> a scalar. Fetch ignores info."""


class Transitions(NamedTuple):
    """n goal-conditioned transitions (o_t, ag_t, g) --a_t--> (o_{t+1}, ag_{t+1}), r_t = R(ag_{t+1}, g).

    One episode of T steps is n = T rows in time order. The agent's input is (o_t, g) at t and (o_{t+1}, g)
    at t+1: one goal per transition, which relabeling replaces in both places (as SB3 does).
    """

    observation: np.ndarray  # [n, obs_dim] float64, o_t (Reach: 10, Push: 25)
    achieved_goal: np.ndarray  # [n, goal_dim] float64, ag_t: gripper (Reach) or object (Push) position
    desired_goal: np.ndarray  # [n, goal_dim] float64, g
    action: np.ndarray  # [n, act_dim] float32, a_t (Fetch: 4)
    reward: np.ndarray  # [n] float32, r_t = compute_reward(ag_{t+1}, g): 0 within 5 cm, else -1
    next_observation: np.ndarray  # [n, obs_dim] float64, o_{t+1}
    next_achieved_goal: np.ndarray  # [n, goal_dim] float64, ag_{t+1}: where a_t led
    terminated: np.ndarray  # [n] bool, a true end: no bootstrap (Fetch never terminates)
    truncated: np.ndarray  # [n] bool, time limit (Fetch: step 50): ends the episode, still bootstraps

    def take(self, index: int | slice | np.ndarray | tuple[np.ndarray, np.ndarray]) -> Transitions:
        """The rows `index` of every field (a tuple indexes [rows, envs] of the buffer's storage)."""
        return Transitions(*(field[index] for field in self))

    @staticmethod
    def concat(parts: Sequence[Transitions]) -> Transitions:
        """Rows of `parts` one after the other."""
        return Transitions(*(np.concatenate(fields) for fields in zip(*parts, strict=True)))


def her_ratio(n_sampled_goal: int) -> float:
    """Share of replayed transitions that are relabeled: k/(k+1) = 1 - 1/(k+1) (SB3's `her_ratio`).

    The paper's Algorithm 1 stores each transition once with its real goal and k more times with sampled
    goals: k of every k+1 stored transitions are relabeled. SB3 relabels the same share when it samples.
    """
    return 1.0 - 1.0 / (n_sampled_goal + 1)
# --8<-- [end:data_structures]


# =============================================================================
# Goal sampling
# =============================================================================

# --8<-- [start:goal_sampling]
def sample_goal_indices(
    t: np.ndarray,
    episode_length: np.ndarray,
    strategy: GoalStrategy,
    rng: np.random.RandomState | None = None,
) -> np.ndarray:
    """Which transition's outcome becomes the new goal: j, with g' = next_achieved_goal[j] = ag_{j+1}.

    t: [n] int64, each transition's index in its episode; episode_length: [n] int64, T of that episode.
    Returns j: [n] int64,
        future:  j ~ U{t, ..., T-1}   includes j = t, the transition's own outcome ag_{t+1}
        final:   j = T - 1            ag_T, where the episode ended up
        episode: j ~ U{0, ..., T-1}   any outcome ag_1 ... ag_T
    rng: a legacy RandomState, or None for the global np.random stream -- SB3 draws np.random.randint:
    same seed, same j.
    """
    randint = np.random.randint if rng is None else rng.randint
    if strategy is GoalStrategy.FUTURE:
        return randint(t, episode_length)  # upper bound exclusive: t <= j <= T-1
    if strategy is GoalStrategy.FINAL:
        return np.asarray(episode_length, dtype=np.int64) - 1
    if strategy is GoalStrategy.EPISODE:
        return randint(0, episode_length)
    raise ValueError(f"unknown goal strategy {strategy!r}")


def sample_her_goals(
    episode: Episode | Transitions,
    transition_idx: int,
    strategy: GoalStrategy = GoalStrategy.FUTURE,
    k: int = 4,
    rng: np.random.RandomState | None = None,
) -> np.ndarray:
    """k relabeling goals [k, goal_dim] for transition `transition_idx` of one episode.

    episode: an Episode, or one episode's Transitions (rows in time order). The goals are outcomes of the
    same episode, ag_{j+1} with j from sample_goal_indices: for FUTURE at transition_idx=5 of 20 steps,
    transitions 5 ... 19, the transition's own outcome included (SB3's "future"). Drawn independently
    (with replacement), so two goals may be the same.
    """
    outcomes = episode.next_achieved_goal if isinstance(episode, Transitions) else episode.achieved_goals()
    T = len(outcomes)
    if not 0 <= transition_idx < T:
        raise ValueError(f"transition_idx {transition_idx} is outside the episode's steps 0..{T - 1}")
    if k < 0:
        raise ValueError(f"k (goals per transition) must be >= 0, got {k}")
    j = sample_goal_indices(np.full(k, transition_idx), np.full(k, T), strategy, rng)
    return outcomes[j]
# --8<-- [end:goal_sampling]


# =============================================================================
# Relabeling a transition
# =============================================================================

# --8<-- [start:relabel_transition]
@overload
def relabel_transition(transition: Transition, new_goal: np.ndarray,
                       compute_reward: ComputeReward) -> Transition: ...
@overload
def relabel_transition(transition: Transitions, new_goal: np.ndarray,
                       compute_reward: ComputeReward) -> Transitions: ...
def relabel_transition(transition: Transition | Transitions, new_goal: np.ndarray,
                       compute_reward: ComputeReward) -> Transition | Transitions:
    """The same (o_t, a_t, o_{t+1}) with goal g' and reward r'_t = compute_reward(ag_{t+1}, g').

    transition: one Transition with new_goal [goal_dim], or n Transitions with new_goal [n, goal_dim]
    (the reward computed for all n rows at once). Only desired_goal and reward change: where the action
    led (ag_{t+1}) is a fact of the past. a_t is rewarded for where it led, not where it started
    (SB3: "we have to use next_obs['achieved_goal']").
    """
    if isinstance(transition, Transition):  # one record: its achieved_goal is already ag_{t+1}
        reward = float(compute_reward(transition.achieved_goal, new_goal, {}))
        # + 0.0: Fetch's -(d > 0.05) is -0.0 for a success; it prints as 0.0 this way (and == 0 either way)
        return transition._replace(desired_goal=np.array(new_goal), reward=reward + 0.0)
    infos: list[dict[str, Any]] = [{} for _ in range(len(new_goal))]  # Fetch's reward does not read info
    rewards = np.asarray(compute_reward(transition.next_achieved_goal, new_goal, infos), dtype=np.float32)
    return transition._replace(desired_goal=np.array(new_goal, dtype=transition.desired_goal.dtype),
                               reward=rewards)


def sparse_reward(
    achieved_goal: np.ndarray,
    desired_goal: np.ndarray,
    info: object = None,
    distance_threshold: float = DISTANCE_THRESHOLD,
) -> np.ndarray:
    """Fetch's sparse reward written out: -1 if ||ag - g|| > 5 cm else 0, over the last axis, float32.

    The values of FetchEnv.compute_reward (reward_type "sparse"); --verify checks the two agree. (Fetch
    writes -(d > 0.05), whose success is -0.0; this returns +0.0, which == -0.0.) At exactly 5 cm the
    reward is 0 while info["is_success"] is 0 (the env's success test is d < 0.05).
    """
    distance = np.linalg.norm(np.asarray(achieved_goal) - np.asarray(desired_goal), axis=-1)
    return np.where(distance > distance_threshold, -1.0, 0.0).astype(np.float32)
# --8<-- [end:relabel_transition]


# =============================================================================
# Storing relabeled copies (Algorithm 1), and the replay buffer: insert (with episode bookkeeping) and
# sample (with relabeling)
# =============================================================================

# --8<-- [start:her_buffer_insert]
def process_episode_with_her(
    episode: Episode,
    compute_reward: ComputeReward,
    strategy: GoalStrategy = GoalStrategy.FUTURE,
    k: int = 4,
    her_ratio: float = 1.0,
    rng: np.random.RandomState | None = None,
) -> list[Transition]:
    """Algorithm 1 of Andrychowicz et al. (2017), one transition at a time: store every transition with
    its real goal, then k copies relabeled with goals sampled by `strategy`.

    her_ratio: the probability that a transition gets its k copies (the chapter's knob): 1.0 is the
    paper's Algorithm 1; 0.0 is no HER. It is not SB3's her_ratio (`her_ratio(k)`, the relabeled share
    k/(k+1)): here k * her_ratio / (1 + k * her_ratio) of the stored transitions are relabeled on
    average -- 160 of ~210 (0.76) for a 50-step episode with k=4, her_ratio=0.8.
    Returns the T originals in time order, each followed by its copies. rng None: the global np.random.
    """
    if not 0.0 <= her_ratio <= 1.0:
        raise ValueError(f"her_ratio is a probability in [0, 1], got {her_ratio}")
    random = np.random.random_sample if rng is None else rng.random_sample
    stored: list[Transition] = []
    for t, transition in enumerate(episode.transitions):
        stored.append(transition)  # the real goal and reward, always
        # her_ratio = 1 needs no coin: the draws, and so the goals, are then relabel_episode's
        if her_ratio < 1.0 and random() >= her_ratio:
            continue
        for new_goal in sample_her_goals(episode, t, strategy, k, rng):
            stored.append(relabel_transition(transition, new_goal, compute_reward))
    return stored


def compute_success_fraction(transitions: Sequence[Transition]) -> float:
    """Share of transitions with reward 0: achieved_goal within 5 cm of desired_goal (Fetch's success)."""
    if not transitions:
        raise ValueError("compute_success_fraction: no transitions")
    return sum(transition.reward == 0.0 for transition in transitions) / len(transitions)


def relabel_episode(
    episode: Transitions,
    strategy: GoalStrategy,
    k: int,
    compute_reward: ComputeReward,
    rng: np.random.RandomState | None = None,
) -> tuple[Transitions, np.ndarray]:
    """process_episode_with_her(her_ratio=1.0) on arrays, vectorised: every transition stored with its real
    goal and k more times with goals sampled by `strategy` (the same goals for the same rng).

    Returns ((k+1)*T transitions, relabeled [(k+1)*T] bool): the T real ones first, then k relabeled copies
    of transition 0, k of transition 1, ... -- exactly k of every k+1 are relabeled.
    """
    T = len(episode.reward)
    t = np.repeat(np.arange(T), k)  # [T*k]: 0,0,0,0, 1,1,1,1, ... for k = 4
    j = sample_goal_indices(t, np.full(T * k, T), strategy, rng)
    copies = relabel_transition(episode.take(t), episode.next_achieved_goal[j], compute_reward)
    return Transitions.concat([episode, copies]), np.arange((k + 1) * T) >= T


class HerReplayBuffer:
    """A replay buffer that relabels when it samples, as SB3's HerReplayBuffer does.

    Every transition is stored once, at row `pos` of its env's column: arrays [n_rows, n_envs, ...] with
    n_rows = buffer_size // n_envs (SB3 counts buffer_size in transitions), overwritten oldest-first.
    Relabeling needs the episode of a transition, so every (row, env) also records the row where its
    episode began (ep_start) and the episode's length (ep_length): 0 until the episode ends, so an
    unfinished episode is never sampled, and 0 again once any of its rows is overwritten.
    """

    def __init__(
        self,
        buffer_size: int,
        n_envs: int,
        obs_dim: int,
        goal_dim: int,
        act_dim: int,
        compute_reward: ComputeReward,
        n_sampled_goal: int = 4,
        strategy: GoalStrategy = GoalStrategy.FUTURE,
    ) -> None:
        if buffer_size < 1 or n_envs < 1 or n_sampled_goal < 0:
            raise ValueError("HerReplayBuffer: buffer_size and n_envs must be >= 1, n_sampled_goal >= 0")
        self.n_rows = max(buffer_size // n_envs, 1)
        self.n_envs = n_envs
        self.compute_reward = compute_reward
        self.n_sampled_goal = n_sampled_goal
        self.strategy = strategy
        rows_envs = (self.n_rows, n_envs)
        self.storage = Transitions(  # float64 observations: the dtype of Fetch's observation space
            observation=np.zeros((*rows_envs, obs_dim)),
            achieved_goal=np.zeros((*rows_envs, goal_dim)),
            desired_goal=np.zeros((*rows_envs, goal_dim)),
            action=np.zeros((*rows_envs, act_dim), dtype=np.float32),
            reward=np.zeros(rows_envs, dtype=np.float32),
            next_observation=np.zeros((*rows_envs, obs_dim)),
            next_achieved_goal=np.zeros((*rows_envs, goal_dim)),
            terminated=np.zeros(rows_envs, dtype=bool),
            truncated=np.zeros(rows_envs, dtype=bool),
        )
        self.ep_start = np.zeros(rows_envs, dtype=np.int64)  # [n_rows, n_envs] first row of its episode
        self.ep_length = np.zeros(rows_envs, dtype=np.int64)  # [n_rows, n_envs] T; 0 = not sampleable
        self.current_ep_start = np.zeros(n_envs, dtype=np.int64)  # [n_envs] first row of the running episode
        self.pos = 0  # the row the next step is written to

    def add(self, step: Transitions) -> None:
        """Store one vector step: every field has leading dimension n_envs (observation [n_envs, obs_dim])."""
        # Row `pos` is about to be overwritten: drop its old episode whole, so no episode with a
        # missing piece is ever relabeled
        for env in range(self.n_envs):
            if self.ep_length[self.pos, env] > 0:
                old_end = self.ep_start[self.pos, env] + self.ep_length[self.pos, env]
                self.ep_length[np.arange(self.pos, old_end) % self.n_rows, env] = 0
        self.ep_start[self.pos] = self.current_ep_start
        for stored, new in zip(self.storage, step, strict=True):
            stored[self.pos] = new
        self.pos = (self.pos + 1) % self.n_rows
        # An episode ended (terminated or truncated): now its length is known, write it on all its rows
        for env in np.flatnonzero(step.terminated | step.truncated).tolist():
            start, end = int(self.current_ep_start[env]), self.pos
            if end < start:  # the episode wrapped around the end of the buffer (one exactly n_rows
                end += self.n_rows  # long gets length 0 and is never sampled -- as in SB3)
            self.ep_length[np.arange(start, end) % self.n_rows, env] = end - start
            self.current_ep_start[env] = self.pos
# --8<-- [end:her_buffer_insert]

    # --8<-- [start:her_buffer_sample]
    def sample(self, batch_size: int, rng: np.random.RandomState) -> tuple[Transitions, np.ndarray]:
        """batch_size transitions drawn uniformly, with replacement, from finished episodes; the first
        int(her_ratio * batch_size) draws get a goal from `strategy` and a recomputed reward.

        Returns (batch, fields [batch_size, ...]; relabeled [batch_size] bool), the real transitions first
        as SB3 returns them. The relabeled share is a fixed count, not a coin flip per transition.
        """
        valid = np.flatnonzero(self.ep_length > 0)  # flat (row, env) indices, row-major
        if valid.size == 0:
            raise ValueError("no finished episode in the buffer yet: HER relabels within whole episodes")
        rows, envs = np.unravel_index(rng.choice(valid, size=batch_size, replace=True), self.ep_length.shape)
        n_relabel = int(her_ratio(self.n_sampled_goal) * batch_size)
        real = self.storage.take((rows[n_relabel:], envs[n_relabel:]))
        rows, envs = rows[:n_relabel], envs[:n_relabel]
        start, length = self.ep_start[rows, envs], self.ep_length[rows, envs]
        t = (rows - start) % self.n_rows  # position in the episode, which may wrap the buffer's end
        j = sample_goal_indices(t, length, self.strategy, rng)
        new_goal = self.storage.next_achieved_goal[(start + j) % self.n_rows, envs]  # same episode, same env
        relabeled = relabel_transition(self.storage.take((rows, envs)), new_goal, self.compute_reward)
        return Transitions.concat([real, relabeled]), np.arange(batch_size) >= batch_size - n_relabel
    # --8<-- [end:her_buffer_sample]


# =============================================================================
# Environments and episodes
# =============================================================================

def make_fetch_env(env_id: str, max_episode_steps: int | None = None) -> gym.Env:
    """A sparse-reward Fetch env with its dict observation; it never terminates, it truncates (at 50 steps)."""
    import gymnasium_robotics  # MuJoCo only where a Fetch env is needed

    gym.register_envs(gymnasium_robotics)
    if max_episode_steps is None:
        return gym.make(env_id)
    return gym.make(env_id, max_episode_steps=max_episode_steps)


def episode_steps(env: gym.Env) -> int:
    """The env's time limit T (Fetch: 50 steps, then truncation)."""
    assert env.spec is not None and env.spec.max_episode_steps is not None, "a Fetch env made by gym.make"
    return int(env.spec.max_episode_steps)


def env_compute_reward(env: gym.Env) -> ComputeReward:
    """The env's vectorised compute_reward (gymnasium 1.x wrappers do not forward it: take it unwrapped)."""
    compute_reward: ComputeReward = env.unwrapped.compute_reward  # type: ignore[attr-defined]
    return compute_reward


def random_steps(env: gym.Env, n_steps: int, seed: int) -> Transitions:
    """n_steps transitions of uniformly random actions, one episode after the other.

    Episode i is reset with seed + i; the last one may be unfinished. Fetch episodes all end by truncation.
    """
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    episode = 0
    rows: list[tuple[Any, ...]] = []
    for _ in range(n_steps):
        action = env.action_space.sample()
        next_obs, reward, terminated, truncated, _ = env.step(action)
        rows.append((obs["observation"], obs["achieved_goal"], obs["desired_goal"], action, reward,
                     next_obs["observation"], next_obs["achieved_goal"], terminated, truncated))
        obs = next_obs
        if terminated or truncated:
            episode += 1
            obs, _ = env.reset(seed=seed + episode)
    columns = list(zip(*rows, strict=True))
    dtypes = (np.float64, np.float64, np.float64, np.float32, np.float32, np.float64, np.float64, bool, bool)
    return Transitions(*(np.array(column, dtype=dtype) for column, dtype in zip(columns, dtypes, strict=True)))


def counting_episode(T: int, episode_id: int = 0, step: float = 0.1) -> Transitions:
    """A synthetic T-step episode whose achieved goals count: ag_t = [step * t, episode_id, 0].

    Goals 10 cm apart make every relabeled reward hand-computable: relabeling transition t with
    g' = ag_{j+1} gives reward 0 iff j = t. observation = [t] and the goal [10, 10, 10] is never reached.
    """
    steps = np.arange(T + 1, dtype=np.float64)
    achieved = np.stack([step * steps, np.full(T + 1, float(episode_id)), np.zeros(T + 1)], axis=1)
    goal = np.full((T, 3), 10.0)
    return Transitions(
        observation=steps[:T, None].copy(), achieved_goal=achieved[:T], desired_goal=goal,
        action=np.zeros((T, 4), dtype=np.float32), reward=sparse_reward(achieved[1:], goal),
        next_observation=steps[1:, None].copy(), next_achieved_goal=achieved[1:],
        terminated=np.zeros(T, dtype=bool), truncated=np.arange(T) == T - 1,
    )


def create_synthetic_episode(
    n_steps: int = 50,
    obs_dim: int = 10,
    act_dim: int = 4,
    goal_dim: int = 3,
    rng: np.random.RandomState | None = None,
) -> Episode:
    """A random n_steps-step Episode that fails: the chapter's checkpoint data (section 4.5).

    The desired goal g ~ N(0, 1) per axis; the achieved goal starts at N(0, 2^2) and each step moves 2 % of
    the way to g plus N(0, 1 cm) noise: a jittery drift of a few cm per step that covers about a third of
    the distance in 50 steps, so it almost never ends within 5 cm of g (reward -1 throughout), while
    nearby steps' outcomes are within 5 cm of each other. Observations and actions are N(0, 1) noise:
    relabeling never reads them. rng None: the global np.random, drawn in the order of the chapter's
    original lab (np.random.seed(s) gives the same episode as there).
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    randn = np.random.randn if rng is None else rng.randn
    desired_goal = randn(goal_dim)
    achieved = randn(goal_dim) * 2.0  # ag_0, far from the goal
    transitions = []
    for t in range(n_steps):
        obs, action = randn(obs_dim), randn(act_dim)
        achieved = achieved + 0.02 * (desired_goal - achieved) + 0.01 * randn(goal_dim)  # ag_{t+1}
        transitions.append(Transition(
            obs=obs, action=action, reward=float(sparse_reward(achieved, desired_goal)),
            next_obs=randn(obs_dim), done=t == n_steps - 1,
            achieved_goal=achieved.copy(), desired_goal=desired_goal.copy(),
        ))
    return Episode(transitions)


# =============================================================================
# --verify: checks that can fail
# =============================================================================

def check(condition: bool, message: str) -> bool:
    """Print `[FAIL] message` when condition is false; return condition."""
    if not condition:
        print(f"  [FAIL] {message}")
    return bool(condition)


def expected_goal_range(strategy: GoalStrategy, t: int, T: int) -> tuple[int, int]:
    """(lowest, highest) goal index j the strategy may pick for transition t of a T-step episode."""
    return {GoalStrategy.FUTURE: (t, T - 1), GoalStrategy.FINAL: (T - 1, T - 1),
            GoalStrategy.EPISODE: (0, T - 1)}[strategy]


def verify_goal_sampling(rng: np.random.RandomState, T: int = 10, draws: int = 2000) -> bool:
    """Every strategy, every t of a T-step episode: the sampled j cover exactly their range."""
    print("Verifying goal sampling...")
    ok = True
    for strategy in GoalStrategy:
        for t in range(T):
            j = sample_goal_indices(np.full(draws, t), np.full(draws, T), strategy, rng)
            low, high = expected_goal_range(strategy, t, T)
            seen = np.unique(j)
            ok &= check(seen.tolist() == list(range(low, high + 1)),
                        f"{strategy.value}: t={t} of T={T}: sampled j = {seen.tolist()}, expected every j in "
                        f"{low}..{high}")
        low, high = expected_goal_range(strategy, 5, T)
        targets = f"goal ag_{high + 1}" if low == high else f"goals ag_{low + 1}..ag_{high + 1}"
        print(f"  {strategy.value:<7}: t=5 of T={T} -> j in {low}..{high}, {targets}")
    episode = counting_episode(T)
    goals = sample_her_goals(episode, 5, GoalStrategy.FUTURE, 4, rng)
    steps = np.rint(goals[:, 0] / 0.1).astype(int)  # counting episode: ag_s = [0.1 s, 0, 0]
    print(f"  future goals for t=5 (k=4): {', '.join(f'ag_{s}' for s in steps)} (ag_6 = its own outcome)")
    ok &= check(goals.shape == (4, 3), f"sample_her_goals shape {goals.shape} != (4, 3)")
    ok &= check(bool(((steps >= 6) & (steps <= T)).all()), f"future goals ag_{steps.tolist()} not in ag_6..ag_{T}")
    if ok:
        print("  [PASS] Goal sampling OK")
    return ok


def verify_relabeling(env: gym.Env, seed: int) -> bool:
    """Rewards recomputed by the env's compute_reward; own achieved goal -> 0; a far goal -> -1."""
    print("Verifying relabeling...")
    compute_reward = env_compute_reward(env)
    episode = random_steps(env, episode_steps(env), seed)
    T = len(episode.reward)
    infos: list[dict[str, Any]] = [{} for _ in range(T)]
    recomputed = compute_reward(episode.next_achieved_goal, episode.desired_goal, infos)
    own = relabel_transition(episode, episode.next_achieved_goal, compute_reward)
    far = relabel_transition(episode, episode.next_achieved_goal + 1.0, compute_reward)
    print(f"  Original rewards: reward 0 in {int((episode.reward == 0).sum())} of {T} steps of a random episode")
    print(f"  Relabeled with its own achieved goal ag_(t+1): reward 0 in {int((own.reward == 0).sum())} of {T}")
    print(f"  Relabeled with a goal 1.7 m away: reward -1 in {int((far.reward == -1).sum())} of {T}")
    ok = check(np.array_equal(recomputed, episode.reward),
               "the env's step rewards != compute_reward(next_achieved_goal, desired_goal)")
    ok &= check(bool((own.reward == 0).all()), "a transition relabeled with its own achieved goal got reward != 0")
    ok &= check(bool((far.reward == -1).all()), "a transition relabeled with a far goal got reward != -1")
    ok &= check(own.reward.dtype == np.float32, f"relabeled rewards are {own.reward.dtype}, not float32")
    ok &= check(np.array_equal(own.desired_goal, episode.next_achieved_goal), "desired_goal was not replaced")
    ok &= check(all(np.array_equal(a, b) for a, b, name in zip(own, episode, Transitions._fields, strict=True)
                    if name not in ("desired_goal", "reward")), "relabeling changed more than goal and reward")
    counting = counting_episode(10)
    own_counting = relabel_transition(counting, counting.next_achieved_goal, sparse_reward)
    ok &= check(bool((own_counting.reward == 0).all()), "own achieved goal of the counting episode: reward != 0")
    rng = np.random.RandomState(seed)
    a = rng.uniform(-1.0, 1.0, size=(1000, 3))
    direction = rng.normal(size=(1000, 3))
    b = a + rng.uniform(0.0, 0.1, size=(1000, 1)) * direction / np.linalg.norm(direction, axis=1, keepdims=True)
    formula_ok = np.array_equal(sparse_reward(a, b), compute_reward(a, b, [{} for _ in range(1000)]))
    print(f"  sparse_reward == env compute_reward on 1000 goal pairs 0-10 cm apart: {formula_ok}")
    ok &= check(formula_ok, "sparse_reward differs from the env's compute_reward")
    if ok:
        print("  [PASS] Relabeling OK")
    return ok


def future_copy_errors(episode: Episode, stored: Sequence[Transition], k: int) -> list[str]:
    """What is wrong with process_episode_with_her's FUTURE output for `episode` (empty: nothing).

    Expected: each original record, the very object, in time order, followed by 0 or k copies of it whose
    goal is an outcome ag_{j+1} with t <= j <= T-1 and whose reward is sparse_reward(ag_{t+1}, goal).
    """
    outcomes, errors = episode.achieved_goals(), []
    positions = [i for i, record in enumerate(stored) if any(record is o for o in episode.transitions)]
    in_order = len(positions) == len(episode) and all(
        stored[i] is original for i, original in zip(positions, episode.transitions, strict=True))
    if not in_order or (positions and positions[0] != 0):
        return ["the originals are not stored once each, in time order, first"]
    for t, (begin, end) in enumerate(zip(positions, [*positions[1:], len(stored)], strict=True)):
        copies = stored[begin + 1:end]
        if len(copies) not in (0, k):
            errors.append(f"transition {t}: {len(copies)} relabeled copies, expected 0 or k={k}")
        for copy in copies:
            j = [s for s in range(len(outcomes)) if np.array_equal(copy.desired_goal, outcomes[s])]
            if not j or max(j) < t:
                errors.append(f"transition {t}: a goal that is not a future outcome ag_(j+1), j >= {t}")
            if copy.reward != float(sparse_reward(copy.achieved_goal, copy.desired_goal)):
                errors.append(f"transition {t}: reward {copy.reward} != sparse_reward(achieved, new goal)")
            if not all(np.array_equal(getattr(copy, name), getattr(stored[begin], name))
                       for name in ("obs", "action", "next_obs", "done", "achieved_goal")):
                errors.append(f"transition {t}: relabeling changed more than goal and reward")
    return errors


def verify_her_processing(seed: int, n_steps: int = 50, k: int = 4, her_ratio: float = 0.8) -> bool:
    """Section 4.5.4's arithmetic on a synthetic failed episode: T originals + k copies per coin that came up."""
    print("Verifying HER processing...")
    rng = np.random.RandomState(seed)
    episode = create_synthetic_episode(n_steps, rng=rng)
    stored = process_episode_with_her(episode, sparse_reward, GoalStrategy.FUTURE, k, her_ratio, rng)
    before, after = compute_success_fraction(episode.transitions), compute_success_fraction(stored)
    n_relabeled = len(stored) - len(episode)
    print(f"  Original success rate: {before:.1%}")
    print(f"  HER success rate: {after:.1%}")
    print(f"  Transitions: {len(episode)} -> {len(stored)} ({n_relabeled} relabeled = {n_relabeled / len(stored):.2f}; "
          f"expected on average {n_steps} + {her_ratio} * {n_steps} * {k} = {n_steps * (1 + her_ratio * k):.0f})")
    ok = True
    for error in future_copy_errors(episode, stored, k):
        ok &= check(False, error)
    ok &= check(after > before, f"HER did not raise the success fraction ({before:.1%} -> {after:.1%})")
    if ok:
        print("  [PASS] HER processing OK")
    return ok


def fill_buffer(buffer: HerReplayBuffer, streams: Sequence[Transitions]) -> None:
    """Add stream e's row r as env e's step r: streams[e] holds env e's consecutive transitions."""
    for r in range(len(streams[0].reward)):
        buffer.add(Transitions(*(np.stack(fields) for fields in zip(*(s.take(r) for s in streams), strict=True))))


def verify_relabeled_fraction(env: gym.Env, seed: int, batch_size: int = 1000) -> bool:
    """k/(k+1) of a sampled batch relabeled (exact count), rewards recomputed by the env; Algorithm 1 too."""
    print("Verifying relabeled fraction...")
    compute_reward = env_compute_reward(env)
    T = episode_steps(env)
    steps = random_steps(env, 3 * T, seed)
    rng = np.random.RandomState(seed)
    ok = True
    for k in DEMO_KS:
        buffer = HerReplayBuffer(3 * T, 1, steps.observation.shape[1], steps.desired_goal.shape[1],
                                 steps.action.shape[1], compute_reward, k, GoalStrategy.FUTURE)
        fill_buffer(buffer, [steps])
        batch, relabeled = buffer.sample(batch_size, rng)
        expected = k / (k + 1)
        recomputed = compute_reward(batch.next_achieved_goal, batch.desired_goal, [{} for _ in range(batch_size)])
        episode_copies, copy_mask = relabel_episode(steps.take(slice(0, T)), GoalStrategy.FUTURE, k,
                                                    compute_reward, rng)
        print(f"  k={k}: k/(k+1)={expected:.3f}  sampled batch: {int(relabeled.sum())}/{batch_size} relabeled, "
              f"reward 0: {np.mean(steps.reward == 0):.1%} of stored -> {np.mean(batch.reward == 0):.1%} of batch;"
              f"  Algorithm 1: {int(copy_mask.sum())}/{len(copy_mask)} relabeled")
        ok &= check(int(relabeled.sum()) == int(expected * batch_size),
                    f"k={k}: {int(relabeled.sum())} of {batch_size} relabeled, expected int(k/(k+1) * "
                    f"{batch_size}) = {int(expected * batch_size)}")
        ok &= check(bool(relabeled[batch_size - int(relabeled.sum()):].all()), "relabeled rows are not last")
        ok &= check(np.array_equal(batch.reward, recomputed),
                    f"k={k}: batch rewards != env compute_reward(next_achieved_goal, desired_goal)")
        ok &= check(int(copy_mask.sum()) == k * T and len(copy_mask) == (k + 1) * T,
                    f"k={k}: Algorithm 1 relabeled {int(copy_mask.sum())} of {len(copy_mask)}, expected {k * T} "
                    f"of {(k + 1) * T}")
        ok &= check(np.array_equal(episode_copies.reward, compute_reward(
            episode_copies.next_achieved_goal, episode_copies.desired_goal, [{}] * len(copy_mask))),
            f"k={k}: Algorithm 1 rewards != env compute_reward")
    if ok:
        print("  [PASS] Relabeled fraction OK")
    return ok


def run_verification(env_id: str = REACH_ENV_ID, seed: int = 0) -> bool:
    """The lab's section 4.5 checks. True when every check passes."""
    print("=" * 60)
    print("HER Relabeler -- Verification")
    print("=" * 60)
    results = [verify_goal_sampling(np.random.RandomState(seed))]
    print()
    env = make_fetch_env(env_id)
    print(f"(env: {env_id}, compute_reward = env.unwrapped.compute_reward)")
    results.append(verify_relabeling(env, seed))
    print()
    results.append(verify_her_processing(seed))
    print()
    results.append(verify_relabeled_fraction(env, seed))
    env.close()
    print()
    print("=" * 60)
    ok = all(results)
    print("[ALL PASS] HER implementation verified" if ok else "[FAIL] HER implementation has failing checks")
    print("=" * 60)
    return ok


# =============================================================================
# --compare-sb3: the same batches as SB3's HerReplayBuffer
# =============================================================================

COMPARE_BUFFER_SIZE = 240  # transitions: 120 rows x 2 envs
COMPARE_STEPS = 160  # per env: wraps the 120 rows, overwrites old episodes, ends mid-episode
SHORT_EPISODE = 37  # env 1's time limit, so the two envs' episodes end on different rows


def sb3_add(buffer: Any, streams: Sequence[Transitions]) -> None:
    """The same steps into SB3's buffer, in the form SB3's off-policy loop gives them (dict obs, infos)."""
    for r in range(len(streams[0].reward)):
        step = [s.take(r) for s in streams]
        obs = {"observation": np.stack([s.observation for s in step]),
               "achieved_goal": np.stack([s.achieved_goal for s in step]),
               "desired_goal": np.stack([s.desired_goal for s in step])}
        next_obs = {"observation": np.stack([s.next_observation for s in step]),
                    "achieved_goal": np.stack([s.next_achieved_goal for s in step]),
                    "desired_goal": np.stack([s.desired_goal for s in step])}
        done = np.array([s.terminated or s.truncated for s in step])
        # SB3's VecEnv: TimeLimit.truncated = truncated and not terminated
        infos = [{"TimeLimit.truncated": bool(s.truncated and not s.terminated)} for s in step]
        buffer.add(obs, next_obs, np.stack([s.action for s in step]), np.array([s.reward for s in step]),
                   done, infos)


def batch_differences(sb3_batch: Any, ours: Transitions) -> dict[str, float]:
    """Max |difference| per field between SB3's DictReplayBufferSamples and our batch (inf if shapes differ)."""
    pairs = {
        "observation": (sb3_batch.observations["observation"], ours.observation),
        "achieved_goal": (sb3_batch.observations["achieved_goal"], ours.achieved_goal),
        "desired_goal": (sb3_batch.observations["desired_goal"], ours.desired_goal),
        "next desired_goal": (sb3_batch.next_observations["desired_goal"], ours.desired_goal),
        "next_observation": (sb3_batch.next_observations["observation"], ours.next_observation),
        "next_achieved_goal": (sb3_batch.next_observations["achieved_goal"], ours.next_achieved_goal),
        "action": (sb3_batch.actions, ours.action),
        "reward": (sb3_batch.rewards[:, 0], ours.reward),
        "done": (sb3_batch.dones[:, 0], ours.terminated.astype(np.float32)),
    }
    diffs = {}
    for name, (tensor, mine) in pairs.items():
        theirs = tensor.cpu().numpy()
        if theirs.shape != mine.shape:
            diffs[name] = float("inf")
        else:
            diffs[name] = float(np.abs(theirs - mine).max()) if mine.size else 0.0
    return diffs


def compare_env(env_id: str, seed: int, batch_size: int) -> bool:
    """Fill our buffer and SB3's with the same 2-env steps; sample with the same seed; compare everything."""
    from stable_baselines3 import HerReplayBuffer as SB3HerReplayBuffer
    from stable_baselines3.common.vec_env import DummyVecEnv

    envs = [make_fetch_env(env_id), make_fetch_env(env_id, max_episode_steps=SHORT_EPISODE)]
    streams = [random_steps(env, COMPARE_STEPS, seed + 1000 * i) for i, env in enumerate(envs)]
    compute_reward = env_compute_reward(envs[0])
    observation_space = envs[0].observation_space
    assert isinstance(observation_space, gym.spaces.Dict), "Fetch observations are dicts"
    vec_env = DummyVecEnv([lambda: make_fetch_env(env_id)])  # SB3 computes rewards through env_method
    obs_dim, goal_dim, act_dim = (streams[0].observation.shape[1], streams[0].desired_goal.shape[1],
                                  streams[0].action.shape[1])
    print(f"{env_id}: observation ({obs_dim},), goals ({goal_dim},), action ({act_dim},); 2 envs with episodes of "
          f"{episode_steps(envs[0])} and {SHORT_EPISODE} steps, {COMPARE_STEPS} steps each into "
          f"{COMPARE_BUFFER_SIZE // 2} rows")
    print(f"{'strategy':<8} | {'k':>2} | {'relabeled':>9} | {'reward 0':>8} | {'max |d goal|':>12} | "
          f"{'max |d reward|':>14} | {'other fields':<12} | result")
    ok = True
    for strategy in GoalStrategy:
        for k in COMPARE_KS:
            theirs = SB3HerReplayBuffer(COMPARE_BUFFER_SIZE, observation_space, envs[0].action_space,
                                        vec_env, device="cpu", n_envs=2, n_sampled_goal=k,
                                        goal_selection_strategy=strategy.value)
            ours = HerReplayBuffer(COMPARE_BUFFER_SIZE, 2, obs_dim, goal_dim, act_dim, compute_reward, k, strategy)
            sb3_add(theirs, streams)
            fill_buffer(ours, streams)
            bookkeeping = (np.array_equal(theirs.ep_start, ours.ep_start)
                           and np.array_equal(theirs.ep_length, ours.ep_length))
            np.random.seed(seed + k)  # SB3 samples from the global legacy generator
            sb3_batch = theirs.sample(batch_size)
            batch, relabeled = ours.sample(batch_size, np.random.RandomState(seed + k))
            diffs = batch_differences(sb3_batch, batch)
            goal_diff = max(diffs["desired_goal"], diffs["next desired_goal"])
            others = [name for name, d in diffs.items() if d != 0.0 and name not in ("desired_goal", "reward")]
            passed = bookkeeping and all(d == 0.0 for d in diffs.values())
            ok &= passed
            print(f"{strategy.value:<8} | {k:>2} | {int(relabeled.sum()):>4}/{batch_size:<4} | "
                  f"{np.mean(batch.reward == 0):>8.1%} | {goal_diff:>12.3e} | {diffs['reward']:>14.3e} | "
                  f"{'equal' if not others else ','.join(others):<12} | {'PASS' if passed else 'FAIL'}"
                  f"{'' if bookkeeping else ' (ep_start/ep_length differ)'}")
    valid = int((ours.ep_length > 0).sum())
    print(f"  {valid} of {ours.n_rows * 2} stored transitions sampleable: overwritten and unfinished episodes "
          f"are excluded, the same (ep_start, ep_length) as SB3's")
    for env in envs:
        env.close()
    vec_env.close()
    return ok


def compare_sb3(env_ids: Sequence[str] = ENV_IDS, seed: int = 0, batch_size: int = 256) -> bool:
    """Same steps into both buffers, same seed when sampling: identical batches, goals and rewards?"""
    print("=" * 72)
    print("HER Relabeler -- SB3 Comparison (stable_baselines3.HerReplayBuffer)")
    print("=" * 72)
    print("SB3 relabels the first int(k/(k+1) * batch) draws; its 'future' is inclusive: j in [t, T-1],")
    print("goal = next achieved goal of transition j (the transition's own outcome included).")
    print()
    results = []
    for env_id in env_ids:
        results.append(compare_env(env_id, seed, batch_size))
        print()
    ok = all(results)
    print("[PASS] Same transitions, relabeled goals and rewards as SB3's HerReplayBuffer" if ok else
          "[FAIL] Our batches differ from SB3's HerReplayBuffer")
    return ok


# =============================================================================
# --demo: reward-0 fraction of random episodes before and after relabeling
# =============================================================================

def run_demo(env_ids: Sequence[str] = ENV_IDS, seed: int = 0, n_episodes: int = 10) -> bool:
    """Random-action episodes, relabeled with Algorithm 1 for every strategy and k; print the table."""
    print("=" * 78)
    print("HER Relabeler -- Demo: reward 0 before and after relabeling, random actions")
    print("=" * 78)
    for env_id in env_ids:
        env = make_fetch_env(env_id)
        compute_reward = env_compute_reward(env)
        T = episode_steps(env)
        episodes = [random_steps(env, T, seed + i) for i in range(n_episodes)]
        env.close()
        real = Transitions.concat(episodes)
        moved = sum(float(np.linalg.norm(ep.next_achieved_goal[-1] - ep.achieved_goal[0])) > 0.01 for ep in episodes)
        what = "object" if env_id == PUSH_ENV_ID else "gripper"
        print(f"{env_id}: {n_episodes} episodes x {T} steps (seeds {seed}..{seed + n_episodes - 1}); the {what} "
              f"(achieved goal) ended > 1 cm from its start in {moved} of {n_episodes}")
        print(f"{'strategy':<8} | {'k':>2} | {'transitions':>11} | {'before':>7} | {'after':>7} | "
              f"{'relabeled only':>14} | {'met before a_t':>14}")
        for strategy in GoalStrategy:
            for k in DEMO_KS:
                rng = np.random.RandomState(seed)
                parts = [relabel_episode(ep, strategy, k, compute_reward, rng) for ep in episodes]
                batch = Transitions.concat([p[0] for p in parts])
                relabeled = np.concatenate([p[1] for p in parts])
                copies = batch.take(relabeled)
                # Reward 0 for a goal the transition's start state s_t already satisfied: no movement needed
                met_before = compute_reward(copies.achieved_goal, copies.desired_goal, [{}] * len(copies.reward))
                print(f"{strategy.value:<8} | {k:>2} | {len(batch.reward):>11} | {np.mean(real.reward == 0):>7.1%} | "
                      f"{np.mean(batch.reward == 0):>7.1%} | {np.mean(copies.reward == 0):>14.1%} | "
                      f"{np.mean((copies.reward == 0) & (met_before == 0)):>14.1%}")
        if env_id == PUSH_ENV_ID:
            print(f"Push: the achieved goal is the object, and a random arm seldom moves it ({moved} of {n_episodes} "
                  "episodes here).")
            print("'future' goals of an unmoved object equal its start, so nearly every relabeled 'success' was")
            print("met before acting: it rewards leaving the object where it is. HER on Push teaches pushing")
            print("only once the arm touches the object (exploration first, then the policy's own progress).")
        else:
            print("Reach: the achieved goal is the gripper, which every random action moves, in jittery steps of a")
            print("few cm: relabeled goals are places the arm really went (many within 5 cm of where it already")
            print("was), and a larger k puts more reward-0 transitions in the batch.")
        print()
    print("before: real transitions with reward 0; after: real + k relabeled copies each (Algorithm 1);")
    print("met before a_t: relabeled goal already within 5 cm of ag_t, so reward 0 whatever the action.")
    return True


# =============================================================================
# CLI
# =============================================================================

class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad input as a single line on stderr (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{text} is < {low}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="her_relabeler.py",
        description="HER from scratch: chapter 4's lab (verify, compare with SB3's HerReplayBuffer, demo).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--verify", action="store_true", help="run the lab's checks (exit 1 on a failure)")
    mode.add_argument("--compare-sb3", action="store_true", help="compare our batches with SB3's HerReplayBuffer")
    mode.add_argument("--demo", action="store_true",
                      help="reward-0 fraction before/after relabeling, per strategy and k")
    parser.add_argument("--env", choices=ENV_IDS, default=None,
                        help=f"Fetch env (default: --verify {REACH_ENV_ID}, --compare-sb3 and --demo both)")
    parser.add_argument("--seed", type=_int_at_least(0), default=0, help="random seed (default: 0)")
    parser.add_argument("--episodes", type=_int_at_least(1), default=None,
                        help="with --demo: random episodes per env (default: 10)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.verify or args.compare_sb3 or args.demo):
        parser.error("choose one mode: --verify, --compare-sb3 or --demo")
    if args.episodes is not None and not args.demo:
        parser.error("--episodes only applies to --demo")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.verify:
        return 0 if run_verification(args.env or REACH_ENV_ID, args.seed) else 1
    env_ids = (args.env,) if args.env else ENV_IDS
    if args.compare_sb3:
        return 0 if compare_sb3(env_ids, args.seed) else 1
    return 0 if run_demo(env_ids, args.seed, args.episodes or 10) else 1


if __name__ == "__main__":
    sys.exit(main())
