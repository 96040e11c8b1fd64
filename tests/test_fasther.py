"""fetchrl.algos.fasther.FlatHerReplayBuffer is SB3's HerReplayBuffer: the same episodes, draws,
relabeled goals and rewards, batches — and with FastSAC, the same whole training.

- a short training, SB3's ``SAC`` + ``HerReplayBuffer`` on Gymnasium-Robotics' env in a DummyVecEnv (the
  reference path) vs ``FastSAC`` + ``FlatHerReplayBuffer`` on the fast path (fetchrl's env, the process
  VecEnv, rewards computed in this process), from the same seed, with a buffer small enough to wrap
  around (old episodes overwritten and invalidated): equal weights, target critics, entropy
  coefficient, optimiser states and episode bookkeeping, for Reach and Push and all three strategies;
- batch level: both buffers fed the same real transitions return the same batch for the same
  ``np.random`` state, key by key; ``sample_flat`` is that batch's keys side by side; with and without
  the in-process reward function; and on a reward 5 cm from its goal in float64 but not in float32;
- pickling (resume): the buffer round-trips without env and reward function and samples the same once
  the reward function is attached again.

Exact equality throughout (``torch.equal`` / ``np.array_equal``). SB3 keeps observations in float64 and
casts them to float32 at use (``preprocess_obs``); FlatHerReplayBuffer stores float32: the float32 values
are what must match. No timing assertions: the speed is measured by bench/bench_her.py.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC, HerReplayBuffer
from stable_baselines3.common.vec_env import DummyVecEnv

from fetchrl.algos.fasther import FlatHerReplayBuffer
from fetchrl.algos.fastsac import FastSAC
from fetchrl.pipeline.setup import attach_goal_reward
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs
from fetchrl.vecenv import factory

STRATEGIES = ("future", "final", "episode")
#: Chapter 4's SAC + HER, shrunk where only time is at stake: 8 envs, gamma 0.95, lr 3e-4, tau 0.005,
#: ent_coef "auto"; a buffer of 250 rows per env (5 episodes; STEPS = 325 rows: wrapped, mid-episode), 400 random
#: steps, batch 64, 64-64 networks.
TINY: dict[str, Any] = dict(buffer_size=2000, learning_starts=400, batch_size=64, learning_rate=3e-4,
                            gamma=0.95, tau=0.005, ent_coef="auto", train_freq=1, gradient_steps=1,
                            policy_kwargs=dict(net_arch=[64, 64]))
N_ENVS, STEPS, SEED = 8, 2600, 3

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    envs.register_envs()


# ============================================================================ a whole training
def _train(env_id: str, strategy: str, fast: bool) -> Any:
    """SB3's SAC + HerReplayBuffer on the reference path, or FastSAC on the fast path (all envs stepped in
    the worker, as the pipeline builds it, so that updates are made while they step), trained STEPS."""
    runtime = Runtime.decide(env_id, reference_env=not fast)
    assert runtime.fast == fast
    vec = factory.make_vec_env(runtime, N_ENVS, seed=SEED, all_in_worker=fast)
    cls = FastSAC if fast else SAC
    model = cls("MultiInputPolicy", vec, seed=SEED, device="cpu", verbose=0, replay_buffer_class=HerReplayBuffer,
                replay_buffer_kwargs=dict(n_sampled_goal=4, goal_selection_strategy=strategy), **TINY)
    attach_goal_reward(model, runtime)  # nothing for SB3's buffer
    assert type(model.replay_buffer) is (FlatHerReplayBuffer if fast else HerReplayBuffer)
    assert (getattr(model.replay_buffer, "compute_reward_fn", None) is not None) == fast
    model.learn(STEPS)
    vec.close()
    return model


def _assert_same_optimizer(ref: Any, fast: Any) -> None:
    a, b = ref.state_dict(), fast.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys() and a["state"]
    for idx, state in a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["state"][idx][name]), (idx, name)


def _assert_same_her_buffer(ref: HerReplayBuffer, fast: FlatHerReplayBuffer) -> None:
    """Episode bookkeeping equal; every stored value equal as the networks read it (float32), and the
    float64 next achieved goals HER relabels with equal to SB3's."""
    assert (ref.pos, ref.full, ref.buffer_size, ref.n_envs) == (fast.pos, fast.full, fast.buffer_size, fast.n_envs)
    assert np.array_equal(ref.ep_start, fast.ep_start)
    assert np.array_equal(ref.ep_length, fast.ep_length)
    assert np.array_equal(ref._current_ep_start, fast._current_ep_start)
    for key, cols in fast.columns.items():
        assert np.array_equal(ref.observations[key].astype(np.float32), fast.obs[..., cols]), key
        assert np.array_equal(ref.next_observations[key].astype(np.float32), fast.next_obs[..., cols]), key
    assert np.array_equal(ref.next_observations["achieved_goal"], fast.next_achieved)
    for name in ("actions", "rewards", "dones", "timeouts"):
        assert np.array_equal(getattr(ref, name), getattr(fast, name)), name


@pytest.mark.parametrize("env_id, strategy", [
    (env_id, strategy) if strategy == "future" else pytest.param(env_id, strategy, marks=pytest.mark.slow)
    for env_id in ("FetchReach-v4", "FetchPush-v4") for strategy in STRATEGIES])
def test_fast_path_trains_what_sb3s_sac_with_her_trains(env_id: str, strategy: str,
                                                       overlap_calls: list[bool]) -> None:
    """275 updates with a buffer that wrapped around (old episodes invalidated): equal bit for bit, most of
    them made while the envs stepped; those at the steps that end episodes or start overwriting one were not.
    ~20 s each; "final" and "episode" are slow-marked (the batch tests below cover them in seconds)."""
    ref, fast = _train(env_id, strategy, fast=False), _train(env_id, strategy, fast=True)
    calls = overlap_calls  # SB3's SAC makes none of them
    # in turn: the 5 steps that end episodes (rows 100, 150, ..., 300) and the 2 that start overwriting one
    assert len(calls) == 275 and calls.count(False) == 7, calls
    sd_ref, sd_fast = ref.policy.state_dict(), fast.policy.state_dict()
    assert sd_ref.keys() == sd_fast.keys() and any(k.startswith("critic_target.") for k in sd_ref)
    for key in sd_ref:
        assert torch.equal(sd_ref[key], sd_fast[key]), key
    for name in ("actor", "critic"):
        _assert_same_optimizer(getattr(ref, name).optimizer, getattr(fast, name).optimizer)
    _assert_same_optimizer(ref.ent_coef_optimizer, fast.ent_coef_optimizer)
    assert torch.equal(ref.log_ent_coef, fast.log_ent_coef)
    assert ref.num_timesteps == fast.num_timesteps == STEPS
    assert ref._n_updates == fast._n_updates == (STEPS - TINY["learning_starts"]) // N_ENVS
    assert [(a["r"], a["l"]) for a in ref.ep_info_buffer] == [(b["r"], b["l"]) for b in fast.ep_info_buffer]
    buf = fast.replay_buffer
    assert buf.full and (buf.ep_length == 0).any() and (buf.ep_length > 0).any()  # wrapped; episodes dropped
    _assert_same_her_buffer(ref.replay_buffer, buf)


# ============================================================================ batches
def _reference_vec(env_id: str, n_envs: int) -> Any:
    """Gymnasium-Robotics' env in SB3's DummyVecEnv: what SB3's HerReplayBuffer asks for rewards."""
    vec = factory.make_vec_env(Runtime.decide(env_id, reference_env=True), n_envs, seed=SEED)
    assert isinstance(vec, DummyVecEnv)
    return vec


def _buffers(vec: Any, strategy: str, buffer_size: int) -> tuple[HerReplayBuffer, FlatHerReplayBuffer]:
    kwargs = dict(device="cpu", n_envs=vec.num_envs, n_sampled_goal=4, goal_selection_strategy=strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3's memory warning
        ref = HerReplayBuffer(buffer_size, vec.observation_space, vec.action_space, env=vec, **kwargs)
    return ref, FlatHerReplayBuffer(buffer_size, vec.observation_space, vec.action_space, env=vec, **kwargs)


def _fill(vec: Any, buffers: tuple[Any, ...], steps: int) -> None:
    """``steps`` vector steps of random actions, stored as SB3's off-policy loop stores them (a finished
    episode's next observation is its terminal one, not the reset's)."""
    rng = np.random.default_rng(0)
    obs = vec.reset()
    for _ in range(steps):
        action = rng.uniform(-1, 1, (vec.num_envs, *vec.action_space.shape)).astype(np.float32)
        new_obs, reward, done, infos = vec.step(action)
        next_obs = {k: v.copy() for k, v in new_obs.items()}
        for i, d in enumerate(done):
            if d:
                for k in next_obs:
                    next_obs[k][i] = infos[i]["terminal_observation"][k]
        for buf in buffers:
            buf.add(obs, next_obs, action, reward, done, infos)
        obs = new_obs


def _assert_same_batch(ref: HerReplayBuffer, fast: FlatHerReplayBuffer, seed: int, batch_size: int = 256) -> None:
    """The same np.random state -> the same batch, key by key; sample_flat is it, keys side by side."""
    np.random.seed(seed)
    a = ref.sample(batch_size)
    np.random.seed(seed)
    b = fast.sample(batch_size)
    np.random.seed(seed)
    c = fast.sample_flat(batch_size)
    keys = list(ref.observation_space.spaces)
    assert list(fast.columns) == keys
    for key in keys:
        assert a.observations[key].dtype == torch.float64 and b.observations[key].dtype == torch.float32
        assert torch.equal(a.observations[key].float(), b.observations[key]), key
        assert torch.equal(a.next_observations[key].float(), b.next_observations[key]), key
    for name in ("actions", "rewards", "dones"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(c.observations, torch.cat([b.observations[k] for k in keys], dim=1))
    assert torch.equal(c.next_observations, torch.cat([b.next_observations[k] for k in keys], dim=1))
    for name in ("actions", "rewards", "dones"):
        assert torch.equal(getattr(c, name), getattr(b, name)), name


@pytest.fixture(scope="module")
def push_buffers() -> Iterator[dict[str, tuple[HerReplayBuffer, FlatHerReplayBuffer, FlatHerReplayBuffer]]]:
    """Per strategy: SB3's buffer, ours with the in-process reward function, ours asking the VecEnv —
    all fed the same real FetchPush transitions (4 envs, 400 steps into 1,200 transitions: wrapped)."""
    env_id = "FetchPush-v4"
    vec = _reference_vec(env_id, 4)
    out = {}
    for strategy in STRATEGIES:
        ref, fast = _buffers(vec, strategy, buffer_size=1200)
        asking = _buffers(vec, strategy, buffer_size=1200)[1]
        attach_goal_reward(SimpleNamespace(replay_buffer=fast), Runtime.decide(env_id))  # the fast env's method
        assert fast.compute_reward_fn is not None and asking.compute_reward_fn is None
        out[strategy] = (ref, fast, asking)
    _fill(vec, tuple(b for bufs in out.values() for b in bufs), 400)
    yield out
    vec.close()


@pytest.mark.parametrize("in_process", [True, False], ids=["compute_reward_fn", "env_method"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_batches_equal_sb3s_for_the_same_draws(strategy: str, in_process: bool, push_buffers: Any) -> None:
    """8 batches of 256 from the wrapped FetchPush buffers; relabeled rewards computed in this process by
    the fast env's compute_reward, or by SB3's route (env_method on the VecEnv)."""
    ref, fast, asking = push_buffers[strategy]
    fast = fast if in_process else asking
    assert fast.full and np.array_equal(ref.ep_length, fast.ep_length) and np.array_equal(ref.ep_start, fast.ep_start)
    relabeled_successes = 0
    for seed in range(8):
        _assert_same_batch(ref, fast, seed)
        np.random.seed(seed)
        rewards = fast.sample_flat(256).rewards
        relabeled_successes += int((rewards[-int(fast.her_ratio * 256):] == 0).sum())
    assert relabeled_successes > 0  # the relabeled rewards compared include successes, not only -1s


def _threshold_episode(vec: Any, buffers: tuple[Any, ...]) -> None:
    """One 50-step episode in env 0 whose every next achieved goal but the last lies 1.05 - 1.0 = 0.05
    (plus a float64 ulp) from the final one along x: -1 in float64, but 0 if the goals were rounded to
    float32 first (float32(1.05) - 1 < 0.05)."""
    obs = {k: np.zeros((1, *s.shape)) for k, s in vec.observation_space.spaces.items()}
    for t in range(50):
        next_obs = {k: v.copy() for k, v in obs.items()}
        next_obs["achieved_goal"][0] = [1.05 if t < 49 else 1.0, 0.75, 0.42]
        done, infos = np.array([t == 49]), [{"TimeLimit.truncated": t == 49}]
        for buf in buffers:
            buf.add(obs, next_obs, np.zeros((1, 4), dtype=np.float32), np.array([-1.0]), done, infos)
        obs = next_obs


def test_a_reward_on_the_5cm_threshold_rounds_as_sb3s() -> None:
    """HER relabels with float64 achieved goals as SB3 does; float32 ones would flip these rewards."""
    vec = _reference_vec("FetchReach-v4", 1)
    ref, fast = _buffers(vec, "final", buffer_size=100)
    _threshold_episode(vec, (ref, fast))
    reward = envs.local_compute_reward(Runtime.decide("FetchReach-v4", reference_env=True))
    ag, goal = np.array([[1.05, 0.75, 0.42]] * 49), np.array([[1.0, 0.75, 0.42]] * 49)
    assert (reward(ag, goal, None) == -1).all()  # float64: 0.05000000000000004 > 0.05
    assert (reward(ag.astype(np.float32), goal.astype(np.float32), None) == 0).all()  # float32 would say success
    for in_process in (False, True):
        if in_process:
            attach_goal_reward(SimpleNamespace(replay_buffer=fast), Runtime.decide("FetchReach-v4"))
        for seed in range(4):
            _assert_same_batch(ref, fast, seed, batch_size=64)
        np.random.seed(0)
        rewards = fast.sample_flat(64).rewards[-int(fast.her_ratio * 64):]
        assert (rewards == -1).sum() > 0  # the near-threshold transitions were drawn and stayed failures
    vec.close()


# ============================================================================ pickling
def test_the_buffer_pickles_without_env_and_samples_the_same_after_attach() -> None:
    env_id = "FetchReach-v4"
    vec = _reference_vec(env_id, 2)
    ref, fast = _buffers(vec, "future", buffer_size=400)
    attach_goal_reward(SimpleNamespace(replay_buffer=fast), Runtime.decide(env_id))
    _fill(vec, (ref, fast), 260)  # 260 rows into 200: wrapped, one episode in flight per env
    np.random.seed(5)
    fast.sample(64)  # builds the cached index list, which must not be pickled
    assert fast._valid is not None
    loaded = pickle.loads(pickle.dumps(fast))
    assert loaded.env is None and loaded.compute_reward_fn is None and loaded._valid is None
    for name in ("obs", "next_obs", "next_achieved", "actions", "rewards", "dones", "timeouts", "ep_start",
                 "ep_length", "_current_ep_start"):
        assert np.array_equal(getattr(fast, name), getattr(loaded, name)), name
    assert (loaded.pos, loaded.full, loaded.n_sampled_goal, loaded.goal_selection_strategy) == (
        fast.pos, fast.full, fast.n_sampled_goal, fast.goal_selection_strategy)
    with pytest.raises(ValueError, match="neither compute_reward_fn nor a VecEnv"):
        loaded.sample(64)
    attach_goal_reward(SimpleNamespace(replay_buffer=loaded), Runtime.decide(env_id))
    for seed in range(4):
        _assert_same_batch(ref, loaded, seed)
    vec.close()
