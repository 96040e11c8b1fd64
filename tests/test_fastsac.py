"""fetchrl.algos.fastsac.FastSAC is SB3's SAC: identical replay buffer, logs, networks, targets,
optimiser states and entropy coefficient.

Each test trains SB3's ``SAC`` and ``FastSAC`` side by side from the same seed (real envs, real
updates, short runs) and demands exact equality — ``torch.equal`` / ``np.array_equal``, not a
tolerance. No timing assertions: the speed-up is measured by bench/bench_sac.py.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

from fetchrl.algos.fastsac import FastSAC, FlatDictReplayBuffer, LeanSAC
from fetchrl.algos.sac import SAC as SAC_ALGORITHM
from fetchrl.algos.sac import SACConfig
from fetchrl.chapters import CH03
from fetchrl.pipeline.train import train
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs
from fetchrl.vecenv import factory

ENV_ID = "FetchReachDense-v4"
#: The chapter's SAC, shrunk where only time is at stake: 8 envs, batch 256, lr 3e-4, gamma 0.99,
#: tau 0.005, ent_coef "auto", one gradient step per vector step; 40 random vector steps before
#: the first update (learning_starts 320), a small buffer and narrower nets (64-64) for speed.
TINY: dict[str, Any] = dict(batch_size=256, buffer_size=20_000, learning_starts=320, learning_rate=3e-4,
                            gamma=0.99, tau=0.005, ent_coef="auto", train_freq=1, gradient_steps=1,
                            policy_kwargs=dict(net_arch=[64, 64]))


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    envs.register_envs()


def _stock_vec(n_envs: int, seed: int) -> Any:
    """The chapter's set-up: SB3 make_vec_env -> DummyVecEnv(Monitor(gym.make(ENV_ID)))."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sb3_make_vec_env(ENV_ID, n_envs=n_envs, seed=seed, vec_env_cls=DummyVecEnv)


def _fast_vec(n_envs: int, seed: int) -> Any:
    return factory.make_vec_env(Runtime.decide(ENV_ID), n_envs, seed=seed)


def _train(cls: type, vec: Any, seed: int, steps: int, callback: Any = None,
           **overrides: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """Train ``cls`` for ``steps``; returns the model and every train/ and rollout/ value it logged,
    with the generators' states after training appended as ("rng/torch", ...), ("rng/numpy", ...)."""
    model = cls("MultiInputPolicy", vec, seed=seed, device="cpu", verbose=0, **{**TINY, **overrides})
    model.set_logger(configure(None, []))
    logged: list[tuple[str, Any]] = []
    record = model.logger.record

    def spy(key: str, value: Any, exclude: Any = None) -> None:
        if key.startswith(("train/", "rollout/")):
            logged.append((key, value))
        record(key, value, exclude)

    model.logger.record = spy
    model.learn(steps, log_interval=4, callback=callback)
    np_state: Any = np.random.get_state(legacy=True)
    logged += [("rng/torch", torch.get_rng_state().numpy()), ("rng/numpy", np_state[1])]
    return model, logged


def _assert_same_state(ref: Any, fast: Any) -> None:
    sd_ref, sd_fast = ref.policy.state_dict(), fast.policy.state_dict()
    assert sd_ref.keys() == sd_fast.keys() and any(k.startswith("critic_target.") for k in sd_ref)
    for key in sd_ref:
        assert torch.equal(sd_ref[key], sd_fast[key]), key
    for name in ("actor", "critic"):
        _assert_same_optimizer(getattr(ref, name).optimizer, getattr(fast, name).optimizer)
    _assert_same_optimizer(ref.ent_coef_optimizer, fast.ent_coef_optimizer)
    assert torch.equal(ref.log_ent_coef, fast.log_ent_coef)
    assert ref.num_timesteps == fast.num_timesteps and ref._n_updates == fast._n_updates > 0
    assert ref._episode_num == fast._episode_num
    assert [m.training for m in ref.policy.modules()] == [m.training for m in fast.policy.modules()]
    for key in ref._last_obs:
        assert np.array_equal(ref._last_obs[key], fast._last_obs[key]), key
    assert [(a["r"], a["l"]) for a in ref.ep_info_buffer] == [(b["r"], b["l"]) for b in fast.ep_info_buffer]
    assert list(ref.ep_success_buffer) == list(fast.ep_success_buffer)


def _assert_same_optimizer(ref: Any, fast: Any) -> None:
    a, b = ref.state_dict(), fast.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys() and a["state"]
    for idx, state in a["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["state"][idx][name]), (idx, name)


def _assert_same_buffer(ref: DictReplayBuffer, fast: FlatDictReplayBuffer) -> None:
    """SB3 stores float64 observations, FlatDictReplayBuffer float32: every value SB3's networks read
    is SB3's array cast to float32 (preprocess_obs's ``.float()``), so that is what must match."""
    assert isinstance(fast, FlatDictReplayBuffer) and type(ref) is DictReplayBuffer
    assert (ref.pos, ref.full, ref.buffer_size) == (fast.pos, fast.full, fast.buffer_size) and ref.pos > 0
    for key in ref.observations:
        assert np.array_equal(ref.observations[key].astype(np.float32), fast.observations[key]), key
        assert np.array_equal(ref.next_observations[key].astype(np.float32), fast.next_observations[key]), key
    for name in ("actions", "rewards", "dones", "timeouts"):
        assert np.array_equal(getattr(ref, name), getattr(fast, name)), name
    assert fast.timeouts.any()  # the runs cross truncations: terminal observations were stored


def _assert_same_logs(logged_ref: list[tuple[str, Any]], logged_fast: list[tuple[str, Any]]) -> None:
    assert [k for k, _ in logged_ref] == [k for k, _ in logged_fast]
    assert any(k == "train/actor_loss" for k, _ in logged_fast) and any(k == "rollout/success_rate" for k, _ in logged_fast)
    for (key, a), (_, b) in zip(logged_ref, logged_fast, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), key


def test_fast_path_equals_the_chapters_plain_sb3_setup() -> None:
    """Plain SB3 (stock envs, DummyVecEnv, SAC) vs fetchrl's fast path (FastFetchReachEnv,
    ProcessVecEnv, FastSAC): the same buffer, logs and networks after 110 updates (stored rows
    cross two 50-step truncations)."""
    torch.set_num_threads(1)
    steps = 8 * 150
    ref, logged_ref = _train(SAC, _stock_vec(8, 3), 3, steps)
    fast, logged_fast = _train(FastSAC, _fast_vec(8, 3), 3, steps)
    assert isinstance(fast.replay_buffer, FlatDictReplayBuffer) and LeanSAC.of(fast.policy) is not None
    _assert_same_state(ref, fast)
    _assert_same_buffer(ref.replay_buffer, fast.replay_buffer)
    _assert_same_logs(logged_ref, logged_fast)
    ref.env.close()
    fast.env.close()


def test_updates_made_while_the_envs_step_change_nothing(overlap_calls: list[bool]) -> None:
    """The pipeline's VecEnv for FastSAC steps all 8 envs in its worker, and FastSAC makes the update of
    step t while they step when the batch can be drawn before (batch 32 here, so that some batches do
    read the row of step t and wait for it, as do the steps that end episodes): plain SB3's buffer,
    logs, networks and generators, exactly."""
    torch.set_num_threads(1)
    steps = 8 * 150
    ref, logged_ref = _train(SAC, _stock_vec(8, 3), 3, steps, batch_size=32)
    vec = factory.make_vec_env(Runtime.decide(ENV_ID), 8, seed=3, all_in_worker=FastSAC.overlaps_env_steps)
    assert vec.n_local == 0 and vec.n_procs == 2
    fast, logged_fast = _train(FastSAC, vec, 3, steps, batch_size=32)
    calls = overlap_calls
    assert len(calls) == fast._n_updates == 110 and calls.count(True) >= 40 and calls.count(False) >= 10, calls
    _assert_same_state(ref, fast)
    _assert_same_buffer(ref.replay_buffer, fast.replay_buffer)
    _assert_same_logs(logged_ref, logged_fast)
    ref.env.close()
    fast.env.close()


class _Unknown(BaseCallback):
    """A callback FastSAC knows nothing about (no ``allows_overlap``)."""

    def _on_step(self) -> bool:
        return True


def test_a_callback_without_allows_overlap_keeps_steps_and_updates_in_turn(overlap_calls: list[bool]) -> None:
    torch.set_num_threads(1)
    fast, _ = _train(FastSAC, _fast_vec(8, 3), 3, 8 * 60, callback=_Unknown(), batch_size=32)
    assert len(overlap_calls) == 20 and not any(overlap_calls)
    fast2, _ = _train(FastSAC, _fast_vec(8, 3), 3, 8 * 60, callback=[], batch_size=32)
    assert len(overlap_calls) == 40 and any(overlap_calls[20:])  # an empty list allows it: the difference above is the callback's
    _assert_same_state(fast, fast2)
    fast.env.close()
    fast2.env.close()


def test_fastsac_equals_sac_with_the_chapters_networks_on_the_same_vec_env() -> None:
    """SB3's default 256-256 networks (the chapter's), both on the stock DummyVecEnv."""
    torch.set_num_threads(1)
    steps = 8 * 60
    ref, logged_ref = _train(SAC, _stock_vec(8, 11), 11, steps, policy_kwargs=None)
    fast, logged_fast = _train(FastSAC, _stock_vec(8, 11), 11, steps, policy_kwargs=None)
    _assert_same_state(ref, fast)
    _assert_same_logs(logged_ref, logged_fast)


def test_save_load_and_buffer_roundtrip(tmp_path: Any) -> None:
    """A FastSAC checkpoint is an SB3 SAC zip; its replay buffer pickles and reloads unchanged;
    the loaded model keeps training."""
    fast, _ = _train(FastSAC, _fast_vec(2, 4), 4, 2 * 200, learning_starts=100)
    fast.save(tmp_path / "m.zip")
    fast.save_replay_buffer(tmp_path / "rb.pkl")
    assert fast.replay_buffer_class is None  # the saved data says what SB3's says
    with zipfile.ZipFile(tmp_path / "m.zip") as zf:
        data = json.loads(zf.read("data"))
    assert not {"_lean_cache", "_steppers", "_mode_modules"} & data.keys()
    plain = SAC.load(tmp_path / "m.zip", device="cpu")
    for key, value in fast.policy.state_dict().items():
        assert torch.equal(value, plain.policy.state_dict()[key]), key
    again = FastSAC.load(tmp_path / "m.zip", env=_fast_vec(2, 4), device="cpu")
    again.load_replay_buffer(tmp_path / "rb.pkl")
    assert isinstance(again.replay_buffer, FlatDictReplayBuffer)
    assert np.array_equal(again.replay_buffer.obs, fast.replay_buffer.obs)
    again.set_logger(configure(None, []))
    again.learn(2 * 20, reset_num_timesteps=False)
    assert again._n_updates == fast._n_updates + 20
    for model in (fast, again):
        assert model.env is not None
        model.env.close()


def test_the_flat_buffer_costs_less_memory_than_sb3s() -> None:
    """1M transitions of FetchReach: float32 rows instead of float64 per key (np.zeros commits no
    page here, so this is cheap to check)."""
    vec = _stock_vec(1, 0)
    args = (1_000_000, vec.observation_space, vec.action_space)
    ref, flat = DictReplayBuffer(*args, device="cpu", n_envs=8), FlatDictReplayBuffer(*args, device="cpu", n_envs=8)
    nbytes_ref = sum(a.nbytes for d in (ref.observations, ref.next_observations) for a in d.values())
    nbytes_flat = flat.obs.nbytes + flat.next_obs.nbytes
    rest = sum(getattr(ref, n).nbytes for n in ("actions", "rewards", "dones", "timeouts"))
    assert rest == sum(getattr(flat, n).nbytes for n in ("actions", "rewards", "dones", "timeouts"))
    assert nbytes_flat * 2 == nbytes_ref and nbytes_flat + rest < 160e6 < nbytes_ref + rest
    vec.close()


def test_unsupported_settings_fall_back_to_sb3_and_still_match() -> None:
    """gSDE is outside the lean path: FastSAC runs SB3's own methods (still the flat buffer)."""
    torch.set_num_threads(1)
    ref, logged_ref = _train(SAC, _stock_vec(2, 5), 5, 2 * 200, learning_starts=100, use_sde=True)
    fast, logged_fast = _train(FastSAC, _stock_vec(2, 5), 5, 2 * 200, learning_starts=100, use_sde=True)
    assert LeanSAC.of(fast.policy) is None
    _assert_same_state(ref, fast)
    _assert_same_logs(logged_ref, logged_fast)


def test_chapter_3s_fast_path_is_fastsac_and_trains_what_the_reference_path_trains(tmp_path: Path) -> None:
    """Through the pipeline (its callbacks, checkpoint and replay-buffer files): the fast path builds
    FastSAC, and its checkpoint and buffer equal the reference path's (plain SB3 SAC)."""
    assert SAC_ALGORITHM.model_class(fast=True) is FastSAC
    torch.set_num_threads(1)
    config = CH03.defaults.replace(total_steps=1000, n_envs=2, fast_env=True,
                                   algo=SACConfig(learning_starts=500, buffer_size=5000, batch_size=64))
    states = []
    for fast in (True, False):
        paths = CH03.paths(ENV_ID, 0, tmp_path / str(fast))
        train(config.replace(fast_env=fast), paths, progress=False)
        model = SAC.load(paths.checkpoint, device="cpu")
        buffer = pickle.loads(paths.replay_buffer.read_bytes())
        assert isinstance(buffer, FlatDictReplayBuffer) == fast
        states.append((model, buffer))
    (fast_model, fast_buf), (ref_model, ref_buf) = states
    assert fast_model.num_timesteps == ref_model.num_timesteps == 1000
    _assert_same_buffer(ref_buf, fast_buf)
    for key, value in ref_model.policy.state_dict().items():
        assert torch.equal(value, fast_model.policy.state_dict()[key]), key
    for name in ("actor", "critic"):
        _assert_same_optimizer(getattr(ref_model, name).optimizer, getattr(fast_model, name).optimizer)
    _assert_same_optimizer(ref_model.ent_coef_optimizer, fast_model.ent_coef_optimizer)
