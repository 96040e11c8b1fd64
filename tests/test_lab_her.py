"""Tests of the from-scratch HER lab, scripts/labs/her_relabeler.py (chapter 4).

The lab is a script, not a package module: it is imported from its path with importlib. Synthetic
"counting" episodes (achieved goal ag_s = [0.1 s, episode id, 0]) make every relabeled goal decodable and
every reward hand-computable; the real Fetch envs and SB3's own HerReplayBuffer are used where the brief
says "the env's compute_reward" and "the same as SB3".
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB_PATH = ROOT / "scripts" / "labs" / "her_relabeler.py"


@pytest.fixture(scope="module")
def lab() -> ModuleType:
    spec = importlib.util.spec_from_file_location("her_relabeler", LAB_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # NamedTuple / dataclass annotations resolve through sys.modules
    spec.loader.exec_module(module)
    return module


def run_lab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LAB_PATH), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def decode(goals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counting-episode goals [n, 3] -> (step s of ag_s, episode id)."""
    return np.rint(goals[:, 0] / 0.1).astype(int), np.rint(goals[:, 1]).astype(int)


def stream(lab: ModuleType, lengths: list[int], ids: list[int], n_steps: int) -> Any:
    """Consecutive counting episodes of one env, cut to n_steps (the last one may be unfinished)."""
    episodes = lab.Transitions.concat([lab.counting_episode(T, i) for T, i in zip(lengths, ids, strict=True)])
    return episodes.take(slice(0, n_steps))


# ---------------------------------------------------------------------------
# Data structures and goal sampling, hand-computed
# ---------------------------------------------------------------------------

def test_counting_episode_is_what_the_docstring_says(lab: ModuleType) -> None:
    ep = lab.counting_episode(4, episode_id=7)
    assert ep.observation[:, 0].tolist() == [0, 1, 2, 3] and ep.next_observation[:, 0].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(ep.achieved_goal[:, 0], [0.0, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(ep.next_achieved_goal[:, 0], [0.1, 0.2, 0.3, 0.4])
    assert (ep.achieved_goal[:, 1] == 7).all()
    assert ep.reward.tolist() == [-1.0] * 4 and ep.reward.dtype == np.float32
    assert ep.truncated.tolist() == [False, False, False, True] and not ep.terminated.any()
    assert lab.her_ratio(4) == pytest.approx(0.8) and lab.her_ratio(1) == 0.5 and lab.her_ratio(0) == 0.0


# j = index of the transition whose outcome ag_{j+1} becomes the goal, for T = 4
EXPECTED_J = {
    "future": {0: {0, 1, 2, 3}, 1: {1, 2, 3}, 2: {2, 3}, 3: {3}},  # inclusive: j = t is the own outcome
    "final": {0: {3}, 1: {3}, 2: {3}, 3: {3}},
    "episode": {0: {0, 1, 2, 3}, 1: {0, 1, 2, 3}, 2: {0, 1, 2, 3}, 3: {0, 1, 2, 3}},
}


@pytest.mark.parametrize("strategy", ["future", "final", "episode"])
def test_goal_index_ranges_are_exact(lab: ModuleType, strategy: str) -> None:
    rng = np.random.RandomState(0)
    for t, expected in EXPECTED_J[strategy].items():
        j = lab.sample_goal_indices(np.full(400, t), np.full(400, 4), lab.GoalStrategy(strategy), rng)
        assert j.shape == (400,) and j.dtype == np.int64
        assert set(j.tolist()) == expected, (strategy, t)
    ep = lab.counting_episode(4)
    steps, _ = decode(lab.sample_her_goals(ep, 1, lab.GoalStrategy(strategy), 200, rng))
    assert set(steps.tolist()) == {j + 1 for j in EXPECTED_J[strategy][1]}  # goals are ag_{j+1}


def test_sampling_consumes_numpy_legacy_stream_like_sb3(lab: ModuleType) -> None:
    """SB3 calls np.random.randint(t, T) (future) / randint(0, T) (episode): same seed, same j."""
    t, T = np.array([0, 3, 7, 2]), np.array([10, 10, 8, 3])
    np.random.seed(3)
    sb3_future = np.random.randint(t, T)
    sb3_episode = np.random.randint(0, T)
    rng = np.random.RandomState(3)
    assert lab.sample_goal_indices(t, T, lab.GoalStrategy.FUTURE, rng).tolist() == sb3_future.tolist()
    assert lab.sample_goal_indices(t, T, lab.GoalStrategy.EPISODE, rng).tolist() == sb3_episode.tolist()
    assert lab.sample_goal_indices(t, T, lab.GoalStrategy.FINAL, rng).tolist() == [9, 9, 7, 2]


def test_relabel_episode_final_hand_computed(lab: ModuleType) -> None:
    ep = lab.counting_episode(4)
    batch, relabeled = lab.relabel_episode(ep, lab.GoalStrategy.FINAL, 2, lab.sparse_reward,
                                           np.random.RandomState(0))
    assert len(batch.reward) == 12 and relabeled.tolist() == [False] * 4 + [True] * 8
    copies = batch.take(relabeled)
    assert copies.observation[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]  # k copies of each transition
    np.testing.assert_allclose(copies.desired_goal, np.tile([0.4, 0.0, 0.0], (8, 1)))  # ag_4, the final one
    # ||ag_{t+1} - ag_4|| = 0.1 (3 - t): reward 0 only for the last transition
    assert copies.reward.tolist() == [-1, -1, -1, -1, -1, -1, 0, 0]
    assert batch.reward[:4].tolist() == [-1] * 4  # the real ones keep their goal and reward
    np.testing.assert_array_equal(batch.desired_goal[:4], ep.desired_goal)


@pytest.mark.parametrize("strategy", ["future", "episode"])
def test_relabel_episode_random_strategies_reward_iff_own_outcome(lab: ModuleType, strategy: str) -> None:
    ep = lab.counting_episode(6)
    batch, relabeled = lab.relabel_episode(ep, lab.GoalStrategy(strategy), 4, lab.sparse_reward,
                                           np.random.RandomState(1))
    assert relabeled.sum() == 24 and len(relabeled) == 30  # exactly k/(k+1)
    copies = batch.take(relabeled)
    t = copies.observation[:, 0].astype(int)
    j = decode(copies.desired_goal)[0] - 1
    low = t if strategy == "future" else np.zeros_like(t)
    assert ((j >= low) & (j <= 5)).all()
    assert ((copies.reward == 0) == (j == t)).all()  # goals 10 cm apart: only the own outcome is within 5 cm


# ---------------------------------------------------------------------------
# Relabeling one transition: rewards from compute_reward
# ---------------------------------------------------------------------------

def test_relabel_own_achieved_goal_gives_reward_zero(lab: ModuleType) -> None:
    ep = lab.counting_episode(5)
    own = lab.relabel_transition(ep, ep.next_achieved_goal, lab.sparse_reward)
    assert own.reward.tolist() == [0.0] * 5 and own.reward.dtype == np.float32
    np.testing.assert_array_equal(own.desired_goal, ep.next_achieved_goal)
    for name in ("observation", "achieved_goal", "action", "next_observation", "next_achieved_goal", "truncated"):
        np.testing.assert_array_equal(getattr(own, name), getattr(ep, name))
    # the *start* achieved goal ag_t is 10 cm from ag_{t+1}: the reward is of where a_t led
    before = lab.relabel_transition(ep, ep.achieved_goal, lab.sparse_reward)
    assert before.reward.tolist() == [-1.0] * 5
    assert ep.desired_goal[0].tolist() == [10.0, 10.0, 10.0]  # input untouched


def test_sparse_reward_boundary_and_env_agreement(lab: ModuleType) -> None:
    assert lab.sparse_reward(np.zeros(3), np.array([0.05, 0.0, 0.0])) == 0.0  # 5 cm: still reward 0
    assert lab.sparse_reward(np.zeros(3), np.array([0.0500001, 0.0, 0.0])) == -1.0
    env = lab.make_fetch_env("FetchPush-v4")
    compute_reward = lab.env_compute_reward(env)
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (500, 3))
    b = a + rng.uniform(-0.06, 0.06, (500, 3))
    expected = compute_reward(a, b, [{}] * 500)
    assert 0 < (expected == 0).sum() < 500
    np.testing.assert_array_equal(lab.sparse_reward(a, b), expected)
    # a real random Push episode: env step rewards = compute_reward(ag_{t+1}, g); own goal -> 0
    ep = lab.random_steps(env, 50, seed=3)
    env.close()
    assert ep.observation.shape == (50, 25) and ep.desired_goal.shape == (50, 3) and ep.action.shape == (50, 4)
    assert ep.truncated.tolist() == [False] * 49 + [True]
    np.testing.assert_array_equal(ep.reward, compute_reward(ep.next_achieved_goal, ep.desired_goal, [{}] * 50))
    assert (lab.relabel_transition(ep, ep.next_achieved_goal, compute_reward).reward == 0).all()


# ---------------------------------------------------------------------------
# The replay buffer: episode bookkeeping (hand-computed, and SB3's), sampling
# ---------------------------------------------------------------------------

class CountingGoalEnv(gym.Env):
    """A goal env of counting-episode shapes, only so that SB3's buffer can call compute_reward."""

    def __init__(self, compute_reward: Any) -> None:
        box = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float64)
        self.observation_space = gym.spaces.Dict({
            "observation": gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float64),
            "achieved_goal": box, "desired_goal": box})
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)
        self.compute_reward = compute_reward

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError

    def step(self, action: np.ndarray) -> Any:
        raise NotImplementedError


def two_env_streams(lab: ModuleType) -> list[Any]:
    """env 0: episodes of 4 steps (ids 0, 1); env 1: episodes of 3 (ids 10, 11, 12 unfinished); 8 steps each."""
    return [stream(lab, [4, 4], [0, 1], 8), stream(lab, [3, 3, 3], [10, 11, 12], 8)]


def test_bookkeeping_hand_computed_and_equal_to_sb3(lab: ModuleType) -> None:
    from stable_baselines3 import HerReplayBuffer as SB3HerReplayBuffer
    from stable_baselines3.common.vec_env import DummyVecEnv
    from stable_baselines3.her.goal_selection_strategy import KEY_TO_GOAL_STRATEGY

    streams = two_env_streams(lab)
    ours = lab.HerReplayBuffer(12, 2, 1, 3, 4, lab.sparse_reward, 4, lab.GoalStrategy.FUTURE)  # 6 rows
    lab.fill_buffer(ours, streams)
    # env 0: episode 0 (rows 0-3) loses row 0 at step 6 -> dropped whole; episode 1 = steps 4-7 wraps to
    # rows 4, 5, 0, 1. env 1: episodes 10 (rows 0-2) and 11 (rows 3-5); 12 is unfinished on rows 0, 1,
    # and overwriting row 0 dropped episode 10.
    assert ours.pos == 2
    assert ours.ep_length[:, 0].tolist() == [4, 4, 0, 0, 4, 4]
    assert ours.ep_start[:, 0].tolist() == [4, 4, 0, 0, 4, 4]
    assert ours.ep_length[:, 1].tolist() == [0, 0, 0, 3, 3, 3]
    assert ours.ep_start[:, 1].tolist() == [0, 0, 0, 3, 3, 3]
    env = CountingGoalEnv(lab.sparse_reward)
    vec_env = DummyVecEnv([lambda: env])
    assert isinstance(env.observation_space, gym.spaces.Dict)  # SB3's HerReplayBuffer takes only dict spaces
    theirs = SB3HerReplayBuffer(12, env.observation_space, env.action_space, vec_env, device="cpu", n_envs=2,
                                n_sampled_goal=4, goal_selection_strategy="future")
    lab.sb3_add(theirs, streams)
    np.testing.assert_array_equal(theirs.ep_length, ours.ep_length)
    np.testing.assert_array_equal(theirs.ep_start, ours.ep_start)
    for strategy in ("future", "final", "episode"):
        ours.strategy = lab.GoalStrategy(strategy)
        theirs.goal_selection_strategy = KEY_TO_GOAL_STRATEGY[strategy]
        np.random.seed(11)
        sb3_batch = theirs.sample(50)
        batch, relabeled = ours.sample(50, np.random.RandomState(11))
        diffs = lab.batch_differences(sb3_batch, batch)
        assert all(d == 0.0 for d in diffs.values()), (strategy, diffs)
        assert relabeled.sum() == 40


@pytest.mark.parametrize("strategy", ["future", "final", "episode"])
def test_sample_relabels_within_the_same_episode(lab: ModuleType, strategy: str) -> None:
    ours = lab.HerReplayBuffer(12, 2, 1, 3, 4, lab.sparse_reward, 4, lab.GoalStrategy(strategy))
    lab.fill_buffer(ours, two_env_streams(lab))
    batch, relabeled = ours.sample(2000, np.random.RandomState(0))
    assert relabeled.tolist() == [False] * 400 + [True] * 1600  # real ones first, as SB3 returns them
    t = batch.observation[:, 0].astype(int)
    own_id = decode(batch.achieved_goal)[1]
    assert set(own_id.tolist()) == {1, 11}  # only finished, not overwritten episodes are sampled
    real, copies = ~relabeled, relabeled
    assert (batch.desired_goal[real] == 10.0).all() and (batch.reward[real] == -1).all()
    steps, goal_id = decode(batch.desired_goal[copies])
    j, tc = steps - 1, t[copies]
    T = np.where(own_id[copies] == 1, 4, 3)
    assert (goal_id == own_id[copies]).all()  # goal from the transition's own episode (and env)
    low = {"future": tc, "final": T - 1, "episode": np.zeros_like(tc)}[strategy]
    assert ((j >= low) & (j <= T - 1)).all()
    if strategy != "final":
        assert (j == low).any() and (j == T - 1).any()  # both ends of the range are reached
    assert ((batch.reward[copies] == 0) == (j == tc)).all()


@pytest.mark.parametrize("k", [0, 1, 2, 4, 8])
def test_relabeled_count_is_sb3_fixed_split(lab: ModuleType, k: int) -> None:
    """SB3 relabels the first int(her_ratio * batch) draws: a fixed count, not a coin flip per draw."""
    ours = lab.HerReplayBuffer(12, 2, 1, 3, 4, lab.sparse_reward, k, lab.GoalStrategy.FUTURE)
    lab.fill_buffer(ours, two_env_streams(lab))
    rng = np.random.RandomState(0)
    for batch_size in (1, 7, 100, 256):
        batch, relabeled = ours.sample(batch_size, rng)
        assert len(batch.reward) == batch_size
        assert relabeled.sum() == int((1 - 1 / (k + 1)) * batch_size)
        assert abs(relabeled.mean() - k / (k + 1)) <= 1 / batch_size  # (a batch of 1 is never relabeled)


@pytest.mark.parametrize("k", [1, 4])
def test_each_drawn_transition_is_relabeled_with_probability_k_over_k_plus_1(lab: ModuleType, k: int) -> None:
    """Which draws are relabeled does not depend on the transition: per group, a binomial share."""
    ours = lab.HerReplayBuffer(40, 2, 1, 3, 4, lab.sparse_reward, k, lab.GoalStrategy.FUTURE)
    lab.fill_buffer(ours, [stream(lab, [5] * 4, [0, 1, 2, 3], 20), stream(lab, [4] * 5, [10, 11, 12, 13, 14], 20)])
    rng = np.random.RandomState(5)
    ids, flags = [], []
    for _ in range(60):
        batch, relabeled = ours.sample(100, rng)
        ids.append(decode(batch.achieved_goal)[1])
        flags.append(relabeled)
    episode_id, is_relabeled = np.concatenate(ids), np.concatenate(flags)
    p = k / (k + 1)
    for group in np.unique(episode_id):
        draws = is_relabeled[episode_id == group]
        sigma = np.sqrt(p * (1 - p) / draws.size)
        assert abs(draws.mean() - p) < 4 * sigma, (group, draws.mean(), draws.size)


def test_sample_refuses_an_empty_or_unfinished_buffer(lab: ModuleType) -> None:
    ours = lab.HerReplayBuffer(20, 1, 1, 3, 4, lab.sparse_reward)
    with pytest.raises(ValueError, match="no finished episode"):
        ours.sample(4, np.random.RandomState(0))
    lab.fill_buffer(ours, [stream(lab, [5], [0], 4)])  # 4 of 5 steps: unfinished
    with pytest.raises(ValueError, match="no finished episode"):
        ours.sample(4, np.random.RandomState(0))


# ---------------------------------------------------------------------------
# The chapter's checkpoints, verbatim: the "!!! lab Checkpoint" code blocks of
# tutorials/ch04_her_sparse_reach_push.md (github.com/VladPrytula/robotics_series at e871ca2), which the
# book's readers type against this lab. Each runs unchanged in a `from her_relabeler import *` namespace;
# the global np.random is seeded first (the snippets draw from it, as SB3 does) so the output is exact.
# ---------------------------------------------------------------------------

# Section 4.5.1 "Data Structures: Transitions and Episodes", Checkpoint
SNIPPET_4_5_1 = """\
import numpy as np
t = Transition(
    obs=np.zeros(10), action=np.zeros(4), reward=-1.0,
    next_obs=np.zeros(10), done=False,
    achieved_goal=np.array([0.5, 0.4, 0.15]),
    desired_goal=np.array([0.3, 0.2, 0.10]),
)
print(f"Reward:        {t.reward}")            # -1.0 (failure)
print(f"Achieved goal: {t.achieved_goal}")     # [0.5, 0.4, 0.15]
print(f"Desired goal:  {t.desired_goal}")      # [0.3, 0.2, 0.10]
print(f"Goal distance: {np.linalg.norm(t.achieved_goal - t.desired_goal):.3f}")  # ~0.283m
"""

# Section 4.5.2 "Goal Sampling Strategies", Checkpoint
SNIPPET_4_5_2 = """\
episode = create_synthetic_episode(n_steps=20)

# FUTURE at idx=5 of 20-step episode -> goals from indices [6, 19]
goals = sample_her_goals(episode, transition_idx=5, strategy=GoalStrategy.FUTURE, k=4)
print(f"FUTURE: {len(goals)} goals sampled")  # 4

# FINAL -> all goals identical (last achieved_goal)
goals = sample_her_goals(episode, transition_idx=5, strategy=GoalStrategy.FINAL, k=4)
all_same = all(np.array_equal(g, goals[0]) for g in goals)
print(f"FINAL: all identical? {all_same}")     # True
"""

# Section 4.5.3 "Relabeling a Transition", Checkpoint
SNIPPET_4_5_3 = """\
episode = create_synthetic_episode(n_steps=10)
transition = episode.transitions[5]

# Relabel with own achieved goal -> guaranteed success
relabeled = relabel_transition(transition, transition.achieved_goal, sparse_reward)
print(f"Original reward:  {transition.reward}")    # -1.0 (failure)
print(f"Relabeled reward: {relabeled.reward}")     # 0.0 (success!)
print(f"Achieved unchanged: {np.array_equal(relabeled.achieved_goal, transition.achieved_goal)}")  # True

# Relabel with a distant goal -> still failure
far_goal = transition.achieved_goal + np.array([1.0, 1.0, 1.0])
relabeled_far = relabel_transition(transition, far_goal, sparse_reward)
print(f"Distant goal reward: {relabeled_far.reward}")  # -1.0 (still failure)
"""

# Section 4.5.4 "The Data Amplification Effect", Checkpoint
SNIPPET_4_5_4 = """\
episode = create_synthetic_episode(n_steps=50)

# Original: ~0% success (random trajectory, sparse rewards)
original_success = compute_success_fraction(episode.transitions)
print(f"Original: {len(episode)} transitions, {original_success:.0%} success")

# With HER: ~210 transitions, ~16% success
her_transitions = process_episode_with_her(
    episode, sparse_reward, strategy=GoalStrategy.FUTURE, k=4, her_ratio=0.8
)
her_success = compute_success_fraction(her_transitions)
print(f"With HER: {len(her_transitions)} transitions, {her_success:.0%} success")
"""

# Section 4.5.5 "Wiring It Together: Full Episode Processing", Checkpoint
SNIPPET_4_5_5 = """\
episode = create_synthetic_episode(n_steps=50)
her_transitions = process_episode_with_her(
    episode, sparse_reward, strategy=GoalStrategy.FUTURE, k=4, her_ratio=0.8
)
n_original = len(episode)          # 50
n_relabeled = len(her_transitions) - n_original  # ~160 (50 * 0.8 * 4)
ratio = n_relabeled / len(her_transitions)
print(f"Original:  {n_original}")
print(f"Relabeled: {n_relabeled}")
print(f"Total:     {len(her_transitions)}")
print(f"HER ratio: {ratio:.2f}")     # ~0.76
"""


def run_snippet(lab: ModuleType, code: str, seed: int = 0) -> tuple[str, dict[str, Any]]:
    """Exec a chapter snippet as a reader does after `from her_relabeler import *`: (stdout, its namespace)."""
    namespace = {name: value for name, value in vars(lab).items() if not name.startswith("_")}
    np.random.seed(seed)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<chapter snippet>", "exec"), namespace)
    return out.getvalue(), namespace


def test_checkpoint_4_5_1_transition_fields(lab: ModuleType) -> None:
    out, ns = run_snippet(lab, SNIPPET_4_5_1)
    # The book's comments write the arrays as Python lists and the distance as ~0.283 m; numpy prints
    # arrays without commas, and ||(0.2, 0.2, 0.05)|| = sqrt(0.0825) = 0.287 (0.283 = sqrt(0.08) forgets z)
    assert out.splitlines() == [
        "Reward:        -1.0",
        "Achieved goal: [0.5  0.4  0.15]",
        "Desired goal:  [0.3 0.2 0.1]",
        "Goal distance: 0.287",
    ]
    assert isinstance(ns["t"], lab.Transition) and ns["t"]._fields == (
        "obs", "action", "reward", "next_obs", "done", "achieved_goal", "desired_goal")
    assert [s.value for s in lab.GoalStrategy] == ["future", "final", "episode"]  # the text after the block


def test_checkpoint_4_5_2_goal_sampling(lab: ModuleType) -> None:
    out, ns = run_snippet(lab, SNIPPET_4_5_2)
    assert out.splitlines() == ["FUTURE: 4 goals sampled", "FINAL: all identical? True"]
    episode = ns["episode"]
    assert len(episode) == 20
    np.testing.assert_array_equal(ns["goals"][0], episode.transitions[-1].achieved_goal)  # FINAL: ag_T
    # The comment says "goals from indices [6, 19]"; SB3's inclusive "future" (this lab) gives [5, 19]:
    # transition 5's own outcome is a goal too
    goals = lab.sample_her_goals(episode, transition_idx=5, strategy=lab.GoalStrategy.FUTURE, k=2000)
    outcomes = episode.achieved_goals()
    indices = {int(np.flatnonzero((outcomes == g).all(axis=1))[0]) for g in goals}
    assert indices == set(range(5, 20))


def test_checkpoint_4_5_3_relabel_one_transition(lab: ModuleType) -> None:
    out, ns = run_snippet(lab, SNIPPET_4_5_3)
    assert out.splitlines() == [
        "Original reward:  -1.0",
        "Relabeled reward: 0.0",
        "Achieved unchanged: True",
        "Distant goal reward: -1.0",
    ]
    transition, relabeled = ns["transition"], ns["relabeled"]
    np.testing.assert_array_equal(relabeled.desired_goal, transition.achieved_goal)
    assert relabeled.obs is transition.obs and relabeled.next_obs is transition.next_obs
    # "Before/after with concrete numbers" under the block: 0 m -> reward 0; 0.287 m > 0.05 m -> reward -1
    record = transition._replace(achieved_goal=np.array([0.50, 0.40, 0.15]))
    assert lab.relabel_transition(record, np.array([0.50, 0.40, 0.15]), lab.sparse_reward).reward == 0.0
    assert lab.relabel_transition(record, np.array([0.30, 0.20, 0.10]), lab.sparse_reward).reward == -1.0


def test_checkpoint_4_5_4_data_amplification(lab: ModuleType) -> None:
    out, ns = run_snippet(lab, SNIPPET_4_5_4)
    # Seed 0: 37 of 50 transitions got their 4 copies (the book: ~210 = 50 + 0.8 * 50 * 4); 8 % success
    # (the book: ~16 %, one draw of a wide spread -- see the next test)
    assert out.splitlines() == ["Original: 50 transitions, 0% success", "With HER: 198 transitions, 8% success"]
    stored = ns["her_transitions"]
    copies_sd = 4 * np.sqrt(50 * 0.8 * 0.2)  # 4 copies per Binomial(50, 0.8) coin: sd 11.3 around 160
    assert (len(stored) - 50) % 4 == 0 and abs(len(stored) - 210) <= 4 * copies_sd
    assert lab.future_copy_errors(ns["episode"], stored, 4) == []


def test_checkpoint_4_5_4_success_fraction_over_seeds_inclusive_vs_book_future(
        lab: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The "~16%" depends on the random episode. Over seeds, SB3's inclusive future averages 13 %, the
    chapter's exclusive one ([t+1, T-1]; the last step keeps its own outcome) 10 %, on the same episodes."""
    def success(seed: int) -> float:
        np.random.seed(seed)
        episode = lab.create_synthetic_episode(n_steps=50)
        stored = lab.process_episode_with_her(episode, lab.sparse_reward, lab.GoalStrategy.FUTURE, 4, 0.8)
        return float(lab.compute_success_fraction(stored))

    seeds = range(100)
    inclusive = np.array([success(s) for s in seeds])
    monkeypatch.setattr(lab, "sample_goal_indices",
                        lambda t, T, strategy, rng=None: np.random.randint(np.minimum(t + 1, T - 1), T))
    exclusive = np.array([success(s) for s in seeds])
    assert 0.10 < inclusive.mean() < 0.17 and 0.06 < exclusive.mean() < 0.12
    assert (inclusive >= exclusive).mean() > 0.8
    assert inclusive.min() < 0.16 < inclusive.max()  # the book's ~16 % is among the seeds' values


def test_checkpoint_4_5_5_counts(lab: ModuleType) -> None:
    out, ns = run_snippet(lab, SNIPPET_4_5_5)
    # The book: 50 / ~160 / ~210 / ~0.76; 148 = 4 * 37 coins that came up out of 50 (p = 0.8)
    assert out.splitlines() == ["Original:  50", "Relabeled: 148", "Total:     198", "HER ratio: 0.75"]
    assert ns["n_relabeled"] == 4 * 37
    # Expected values: 4 * 0.8 * 50 = 160 relabeled; 160 / 210 = 0.76 -- check the mean over seeds
    counts = []
    for seed in range(200):
        np.random.seed(seed)
        episode = lab.create_synthetic_episode(n_steps=50)
        counts.append(len(lab.process_episode_with_her(episode, lab.sparse_reward, her_ratio=0.8)) - 50)
    assert abs(np.mean(counts) - 160) < 4 * 4 * np.sqrt(50 * 0.8 * 0.2 / 200)


def test_book_names_are_in_the_regions_the_book_includes() -> None:
    """The chapter includes these regions and then calls these names: each is defined inside its region."""
    text = LAB_PATH.read_text()
    wanted = {"data_structures": ("Transition", "Episode", "GoalStrategy"),
              "goal_sampling": ("sample_her_goals",),
              "relabel_transition": ("relabel_transition", "sparse_reward"),
              "her_buffer_insert": ("process_episode_with_her", "compute_success_fraction")}
    for region, names in wanted.items():
        body = text.split(f"# --8<-- [start:{region}]")[1].split(f"# --8<-- [end:{region}]")[0]
        tree = ast.parse(textwrap.dedent(body))
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
        assert set(names) <= defined, (region, set(names) - defined)


def test_process_episode_with_her_is_relabel_episode_per_record_on_a_real_episode(lab: ModuleType) -> None:
    """her_ratio=1.0 is Algorithm 1: the same goals and rewards as the vectorised relabel_episode for the
    same rng, on a real FetchReach episode with the env's compute_reward; her_ratio=0 stores no copy."""
    env = lab.make_fetch_env("FetchReach-v4")
    compute_reward = lab.env_compute_reward(env)
    steps = lab.random_steps(env, 50, seed=2)
    env.close()
    episode = lab.Episode.from_transitions(steps)
    assert len(episode) == 50 and [r.done for r in episode.transitions] == [False] * 49 + [True]
    np.testing.assert_array_equal(episode.achieved_goals(), steps.next_achieved_goal)
    for strategy in lab.GoalStrategy:
        stored = lab.process_episode_with_her(episode, compute_reward, strategy, 4, 1.0, np.random.RandomState(7))
        batch, relabeled = lab.relabel_episode(steps, strategy, 4, compute_reward, np.random.RandomState(7))
        copies = [r for i, r in enumerate(stored) if i % 5]  # original, its 4 copies, next original, ...
        assert all(stored[i] is original for i, original in zip(range(0, 250, 5), episode.transitions, strict=True))
        np.testing.assert_array_equal(np.stack([c.desired_goal for c in copies]), batch.desired_goal[relabeled])
        np.testing.assert_array_equal([c.reward for c in copies], batch.reward[relabeled])
        assert lab.compute_success_fraction(stored) == pytest.approx(float(np.mean(batch.reward == 0)))
        assert all(np.array_equal(c.achieved_goal, steps.next_achieved_goal[i // 4]) for i, c in enumerate(copies))
    only_real = lab.process_episode_with_her(episode, compute_reward, her_ratio=0.0)
    assert len(only_real) == 50 and all(a is b for a, b in zip(only_real, episode.transitions, strict=True))


def test_book_functions_refuse_bad_arguments(lab: ModuleType) -> None:
    episode = lab.create_synthetic_episode(n_steps=5, rng=np.random.RandomState(0))
    with pytest.raises(ValueError, match="transition_idx 5 is outside"):
        lab.sample_her_goals(episode, transition_idx=5)
    with pytest.raises(ValueError, match="her_ratio is a probability"):
        lab.process_episode_with_her(episode, lab.sparse_reward, her_ratio=1.5)
    with pytest.raises(ValueError, match="no transitions"):
        lab.compute_success_fraction([])
    with pytest.raises(ValueError, match="n_steps must be >= 1"):
        lab.create_synthetic_episode(n_steps=0)


def test_verify_fails_when_relabeled_copies_keep_the_old_reward(
        lab: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--verify's HER processing section fails on copies whose reward was not recomputed."""
    correct = lab.relabel_transition

    def stale_reward(transition, new_goal, compute_reward):  # type: ignore[no-untyped-def]
        relabeled = correct(transition, new_goal, compute_reward)
        return relabeled._replace(reward=transition.reward) if isinstance(relabeled, lab.Transition) else relabeled

    monkeypatch.setattr(lab, "relabel_transition", stale_reward)
    assert lab.verify_her_processing(seed=0) is False
    out = capsys.readouterr().out
    assert "!= sparse_reward(achieved, new goal)" in out and "[PASS] HER processing OK" not in out


# ---------------------------------------------------------------------------
# Imports (the lab stands alone; its snippet regions: tests/test_lab_regions.py)
# ---------------------------------------------------------------------------

def test_lab_imports_no_sb3_and_no_robotics() -> None:
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('lab', {str(LAB_PATH)!r}); "
            "m = importlib.util.module_from_spec(spec); sys.modules['lab'] = m; spec.loader.exec_module(m); "
            "print('stable_baselines3' in sys.modules, 'gymnasium_robotics' in sys.modules, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False", "False"], result.stderr


# ---------------------------------------------------------------------------
# --verify, and --verify failing when a piece is broken
# ---------------------------------------------------------------------------

def test_verify_passes() -> None:
    result = run_lab("--verify")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    positions = [out.index(s) for s in ("HER Relabeler -- Verification", "[PASS] Goal sampling OK",
                                        "[PASS] Relabeling OK", "[PASS] HER processing OK",
                                        "[PASS] Relabeled fraction OK",
                                        "[ALL PASS] HER implementation verified")]
    assert positions == sorted(positions)
    assert "[FAIL]" not in out
    assert "future : t=5 of T=10 -> j in 5..9, goals ag_6..ag_10" in out
    assert "Relabeled with its own achieved goal ag_(t+1): reward 0 in 50 of 50" in out
    assert "  Original success rate: 0.0%\n" in out  # section 4.5.6's expected lines, with seed 0's values
    amplified = re.search(r"Transitions: 50 -> (\d+) \((\d+) relabeled", out)
    assert amplified and int(amplified[1]) == 50 + int(amplified[2]) and int(amplified[2]) % 4 == 0
    assert re.search(r"k=4: k/\(k\+1\)=0\.800\s+sampled batch: 800/1000 relabeled", out)


def _future_ignores_t(lab: ModuleType) -> Any:
    correct = lab.sample_goal_indices

    def sample(t, episode_length, strategy, rng):  # type: ignore[no-untyped-def]
        if strategy is lab.GoalStrategy.FUTURE:
            return rng.randint(0, episode_length)  # "future" goals from the past too
        return correct(t, episode_length, strategy, rng)

    return sample


def _reward_of_start_state(lab: ModuleType) -> Any:
    def relabel(batch, new_goal, compute_reward):  # type: ignore[no-untyped-def]
        reward = np.asarray(compute_reward(batch.achieved_goal, new_goal, [{}] * len(new_goal)), dtype=np.float32)
        return batch._replace(desired_goal=np.array(new_goal), reward=reward)  # ag_t instead of ag_{t+1}

    return relabel


@pytest.mark.parametrize(("name", "make_broken", "message"), [
    ("sample_goal_indices", _future_ignores_t, "future: t="),
    ("relabel_transition", _reward_of_start_state, "own achieved goal"),
    ("her_ratio", lambda lab: (lambda k: 0.5), "relabeled, expected int(k/(k+1)"),
])
def test_verify_fails_when_a_piece_is_broken(lab: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str], name: str,
                                             make_broken: Any, message: str) -> None:
    monkeypatch.setattr(lab, name, make_broken(lab))
    assert lab.run_verification() is False
    out = capsys.readouterr().out
    assert "[FAIL]" in out and "[ALL PASS]" not in out
    assert message in out


def test_verify_exit_code_1_on_failure(lab: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lab, "her_ratio", lambda k: 0.5)
    assert lab.main(["--verify"]) == 1


# ---------------------------------------------------------------------------
# --compare-sb3 against the real HerReplayBuffer
# ---------------------------------------------------------------------------

def test_compare_sb3_passes() -> None:
    result = run_lab("--compare-sb3")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[PASS] Same transitions, relabeled goals and rewards as SB3's HerReplayBuffer" in out
    rows = re.findall(r"^(future|final|episode)\s+\|\s+(\d+) \|\s+(\d+)/(\d+)\s+\|.*\| (PASS|FAIL)$", out, re.M)
    assert len(rows) == 2 * 3 * 3  # Reach and Push, 3 strategies, k = 1, 4, 8
    assert all(row[4] == "PASS" for row in rows)
    assert {(int(k), int(n)) for _, k, n, _, _ in rows} == {(1, 128), (4, 204), (8, 227)}
    assert "FetchPush-v4: observation (25,), goals (3,), action (4,)" in out
    assert out.count("174 of 240 stored transitions sampleable") == 2


def test_compare_sb3_catches_a_strict_future(lab: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The textbook-strict "future" (j > t, own outcome excluded) is not SB3's: the comparison must say so."""
    correct = lab.sample_goal_indices

    def strict_future(t, episode_length, strategy, rng):  # type: ignore[no-untyped-def]
        if strategy is lab.GoalStrategy.FUTURE:
            return np.minimum(rng.randint(t, episode_length) + 1, episode_length - 1)
        return correct(t, episode_length, strategy, rng)

    monkeypatch.setattr(lab, "sample_goal_indices", strict_future)
    assert lab.compare_sb3(("FetchReach-v4",)) is False
    out = capsys.readouterr().out
    assert "[FAIL]" in out
    assert re.search(r"^future .*\| FAIL$", out, re.M) and re.search(r"^final .*\| PASS$", out, re.M)


# ---------------------------------------------------------------------------
# --demo
# ---------------------------------------------------------------------------

def test_demo_prints_the_table_for_reach_and_push() -> None:
    result = run_lab("--demo", "--episodes", "4", "--seed", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "FetchReach-v4: 4 episodes x 50 steps (seeds 1..4)" in out and "FetchPush-v4: 4 episodes" in out
    rows = re.findall(r"^(future|final|episode)\s+\|\s+(\d+) \|\s+(\d+) \|\s+(\S+)% \|\s+(\S+)% \|\s+(\S+)% \|"
                      r"\s+(\S+)%$", out, re.M)
    assert len(rows) == 2 * 3 * 4
    for strategy, k, n, before, after, relabeled_only, _ in rows:
        assert int(n) == (int(k) + 1) * 200
        # after = (before + k * relabeled_only) / (k + 1): the relabeled share is exactly k/(k+1)
        expected = (float(before) + int(k) * float(relabeled_only)) / (int(k) + 1)
        assert float(after) == pytest.approx(expected, abs=0.15), (strategy, k)
    reach_future = [float(r[4]) for r in rows[:4]]
    assert reach_future[-1] > reach_future[0]  # k = 8 puts more reward-0 transitions in than k = 1
    assert "a random arm seldom moves it" in out and "'future' goals of an unmoved object equal its start" in out


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    [], ["--bogus"], ["--verify", "--demo"], ["--demo", "--episodes", "0"], ["--demo", "--episodes", "x"],
    ["--verify", "--episodes", "3"], ["--demo", "--seed", "-1"], ["--compare-sb3", "--env", "FetchSlide-v4"],
])
def test_bad_input_is_one_line_exit_2(lab: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        lab.main(argv)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err
