"""fetchrl.algos.fastppo.FastPPO is SB3's PPO: identical rollouts, logs, weights and optimiser state.

Each test trains SB3's ``PPO`` and ``FastPPO`` side by side from the same seed (real envs, real
updates, short runs) and demands exact equality — ``torch.equal`` / ``np.array_equal``, not a
tolerance — or checks that FastPPO fails where SB3 fails. No timing assertions: the speed-up is
measured by bench/bench_speed.py.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure

from fetchrl.algos.fastppo import FastPPO, LeanPolicy
from fetchrl.pipeline.setup import model_class
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs
from fetchrl.vecenv import factory

ENV_ID = "FetchReachDense-v4"
#: Small but complete: 8 envs, rollouts of 128 steps (each crosses two 50-step truncations),
#: 4 epochs of 4 minibatches; the chapter's learning rate, clip range, gamma, GAE lambda.
TINY = dict(n_steps=128, batch_size=256, n_epochs=4, learning_rate=3e-4, clip_range=0.2, gae_lambda=0.95,
            gamma=0.99, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5)
ROLLOUT = 128 * 8


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    envs.register_envs()


def _stock_vec(n_envs: int, seed: int) -> Any:
    """The chapter's set-up: SB3 make_vec_env -> DummyVecEnv(Monitor(gym.make(ENV_ID)))."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_vec_env(ENV_ID, n_envs=n_envs, seed=seed, vec_env_cls=DummyVecEnv)


def _fast_vec(n_envs: int, seed: int) -> Any:
    """fetchrl's fast path: the process VecEnv, through the env factory."""
    return factory.make_vec_env(Runtime.decide(ENV_ID), n_envs, seed=seed)


class _Recorder(BaseCallback):
    """Counts steps and optionally stops training after ``stop_after`` calls to on_step."""

    def __init__(self, stop_after: int | None = None) -> None:
        super().__init__()
        self.stop_after = stop_after
        self.calls = 0
        self.rollout_ends = 0

    def _on_step(self) -> bool:
        self.calls += 1
        assert self.locals["infos"] is not None and len(self.locals["dones"]) == self.training_env.num_envs
        return self.stop_after is None or self.calls < self.stop_after

    def _on_rollout_end(self) -> None:
        self.rollout_ends += 1


def _train(cls: type, vec: Any, seed: int, steps: int, callback: BaseCallback | None = None,
           **overrides: Any) -> tuple[Any, list[tuple[str, Any]]]:
    """Train ``cls`` for ``steps``; returns the model and every (key, value) it logged."""
    model = cls("MultiInputPolicy", vec, seed=seed, device="cpu", verbose=0, **{**TINY, **overrides})
    model.set_logger(configure(None, []))
    logged: list[tuple[str, Any]] = []
    record = model.logger.record

    def spy(key: str, value: Any, exclude: Any = None) -> None:
        if key.startswith(("train/", "rollout/")):
            logged.append((key, value))
        record(key, value, exclude)

    model.logger.record = spy
    model.learn(steps, callback=callback)
    return model, logged


def _assert_same_model(ref: Any, fast: Any) -> None:
    sd_ref, sd_fast = ref.policy.state_dict(), fast.policy.state_dict()
    assert sd_ref.keys() == sd_fast.keys()
    for key in sd_ref:
        assert torch.equal(sd_ref[key], sd_fast[key]), key
    opt_ref, opt_fast = ref.policy.optimizer.state_dict(), fast.policy.optimizer.state_dict()
    assert opt_ref["param_groups"] == opt_fast["param_groups"]  # FastPPO restores Adam's "foreach"
    for idx, state in opt_ref["state"].items():
        for name, value in state.items():
            assert torch.equal(value, opt_fast["state"][idx][name]), (idx, name)
    assert ref.num_timesteps == fast.num_timesteps and ref._n_updates == fast._n_updates
    for key in ref._last_obs:
        assert np.array_equal(ref._last_obs[key], fast._last_obs[key]), key
    assert np.array_equal(ref._last_episode_starts, fast._last_episode_starts)
    assert list(ref.ep_info_buffer) == list(fast.ep_info_buffer) or all(
        (a["r"], a["l"]) == (b["r"], b["l"]) for a, b in zip(ref.ep_info_buffer, fast.ep_info_buffer, strict=True))
    assert list(ref.ep_success_buffer) == list(fast.ep_success_buffer)


def _assert_same_buffer(ref: Any, fast: Any) -> None:
    rb, fb = ref.rollout_buffer, fast.rollout_buffer
    for name in ("actions", "rewards", "episode_starts", "values", "log_probs", "advantages", "returns"):
        assert np.array_equal(getattr(rb, name), getattr(fb, name)), name
    for key in rb.observations:
        assert np.array_equal(rb.observations[key], fb.observations[key]), key


def test_the_runtime_picks_fastppo_on_the_fast_path_only() -> None:
    assert model_class(Runtime.decide(ENV_ID)) is FastPPO
    assert model_class(Runtime.decide(ENV_ID, reference_env=True)) is PPO
    assert model_class(Runtime.decide("FetchSlide-v4")) is PPO  # no fast env: plain SB3 throughout


def test_fast_path_equals_the_chapters_plain_sb3_setup() -> None:
    """The claim of issue 6: plain SB3 (stock envs, DummyVecEnv, PPO) and fetchrl's fast path
    (FastFetchReachEnv, ProcessVecEnv stepping while FastPPO does the bookkeeping, lean update)
    produce the same rollouts, the same logs and the same network after three updates."""
    ref, logged_ref = _train(PPO, _stock_vec(8, 7), 7, 3 * ROLLOUT)
    fast, logged_fast = _train(FastPPO, _fast_vec(8, 7), 7, 3 * ROLLOUT)
    _assert_same_model(ref, fast)
    _assert_same_buffer(ref, fast)
    assert [k for k, _ in logged_ref] == [k for k, _ in logged_fast]
    assert any(k == "train/approx_kl" for k, _ in logged_fast) and any(k == "rollout/ep_rew_mean" for k, _ in logged_fast)
    for (key, a), (_, b) in zip(logged_ref, logged_fast, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b)), key
    ref.env.close()
    fast.env.close()


@pytest.mark.parametrize("vec_kind", ["stock", "fast"])
def test_fastppo_equals_ppo_on_the_same_vec_env(vec_kind: str) -> None:
    """Same VecEnv class under both (a synchronous DummyVecEnv: pipelining changes only the order)."""
    make = _stock_vec if vec_kind == "stock" else _fast_vec
    ref, _ = _train(PPO, make(4, 2), 2, 2 * 128 * 4, n_steps=128, batch_size=128)
    fast, _ = _train(FastPPO, make(4, 2), 2, 2 * 128 * 4, n_steps=128, batch_size=128)
    _assert_same_model(ref, fast)
    _assert_same_buffer(ref, fast)


def test_unsupported_settings_fall_back_to_sb3_and_still_match() -> None:
    """target_kl (early stop) and a clipped value function use SB3's own train(); gSDE its rollout."""
    for overrides in ({"target_kl": 0.001}, {"clip_range_vf": 0.2}):
        ref, _ = _train(PPO, _fast_vec(4, 1), 1, 2 * 128 * 4, n_steps=128, batch_size=128, **overrides)
        fast, _ = _train(FastPPO, _fast_vec(4, 1), 1, 2 * 128 * 4, n_steps=128, batch_size=128, **overrides)
        _assert_same_model(ref, fast)
    fast, _ = _train(FastPPO, _fast_vec(2, 1), 1, 64 * 2, n_steps=64, batch_size=64, use_sde=True)
    assert LeanPolicy.of(fast.policy) is None and fast.num_timesteps == 128


def test_other_optimiser_settings_take_torchs_own_step() -> None:
    """AMSGrad and AdamW are outside the direct Adam step; torch's own clip and step must still match."""
    for kwargs in ({"optimizer_kwargs": {"amsgrad": True}}, {"optimizer_class": torch.optim.AdamW}):
        ref, _ = _train(PPO, _fast_vec(4, 6), 6, 2 * 128 * 4, n_steps=128, batch_size=128, policy_kwargs=kwargs)
        fast, _ = _train(FastPPO, _fast_vec(4, 6), 6, 2 * 128 * 4, n_steps=128, batch_size=128, policy_kwargs=kwargs)
        _assert_same_model(ref, fast)


def test_relu_policy_is_reproduced_too() -> None:
    ref, _ = _train(PPO, _fast_vec(4, 5), 5, 128 * 4, n_steps=128, batch_size=128,
                    policy_kwargs={"activation_fn": torch.nn.ReLU, "net_arch": [32]})
    fast, _ = _train(FastPPO, _fast_vec(4, 5), 5, 128 * 4, n_steps=128, batch_size=128,
                     policy_kwargs={"activation_fn": torch.nn.ReLU, "net_arch": [32]})
    assert LeanPolicy.of(fast.policy) is not None
    _assert_same_model(ref, fast)


def test_callback_stop_mid_rollout_matches_sb3_and_leaves_env_usable() -> None:
    """A callback returning False at step 37: same step count as SB3, no step in flight, and the
    envs exactly where SB3 leaves them (simulator states equal); the env keeps working."""
    counts, sims = [], []
    for cls in (PPO, FastPPO):
        rec = _Recorder(stop_after=37)
        vec = _fast_vec(4, 3)
        model, _ = _train(cls, vec, 3, 10 * ROLLOUT, callback=rec, n_steps=128, batch_size=128)
        counts.append((rec.calls, model.num_timesteps, rec.rollout_ends))
        sims.append([st["sim"] for st in vec.get_state()])
        vec.reset()
        vec.step(np.zeros((4, 4), dtype=np.float32))
        vec.close()
    assert counts[0] == counts[1] == (37, 37 * 4, 0)
    assert all(np.array_equal(a, b) for a, b in zip(*sims, strict=True))


class _NoisyCallback(BaseCallback):
    """Draws from torch's global generator on every step, as a callback with its own sampling would."""

    def _on_step(self) -> bool:
        torch.rand(3)
        return True


def test_callback_drawing_random_numbers_keeps_sb3_noise_order() -> None:
    ref, _ = _train(PPO, _fast_vec(4, 4), 4, 2 * 128 * 4, callback=_NoisyCallback(), n_steps=128, batch_size=128)
    fast, _ = _train(FastPPO, _fast_vec(4, 4), 4, 2 * 128 * 4, callback=_NoisyCallback(), n_steps=128,
                     batch_size=128)
    _assert_same_model(ref, fast)
    _assert_same_buffer(ref, fast)


def test_nan_parameters_fail_like_sb3() -> None:
    """Diverged weights: SB3's validated Normal raises ValueError; FastPPO must not train on NaN."""
    for cls in (PPO, FastPPO):
        model = cls("MultiInputPolicy", _fast_vec(2, 0), seed=0, device="cpu", **{**TINY, "n_steps": 64,
                                                                                 "batch_size": 64})
        with torch.no_grad():
            model.policy.action_net.bias.fill_(float("nan"))
        with pytest.raises(ValueError, match="constraint"):
            model.learn(128)
        model.env.close()
    model = FastPPO("MultiInputPolicy", _fast_vec(2, 0), seed=0, device="cpu", **{**TINY, "n_steps": 64,
                                                                                 "batch_size": 64})
    with torch.no_grad():
        model.policy.log_std.fill_(float("-inf"))  # std 0
    with pytest.raises(ValueError, match="constraint"):
        model.learn(128)
    model.env.close()


def test_nan_parameters_in_the_update_fail_like_sb3() -> None:
    """Weights that turn NaN between rollout and update: SB3's validated Normal raises in
    evaluate_actions; FastPPO's lean update must raise the same error rather than step on NaN."""
    for cls in (PPO, FastPPO):
        model = cls("MultiInputPolicy", _fast_vec(2, 0), seed=0, device="cpu", **{**TINY, "n_steps": 64,
                                                                                 "batch_size": 64})
        model.learn(128)  # rollout buffer full, optimiser state created
        with torch.no_grad():
            model.policy.action_net.bias.fill_(float("nan"))
        with pytest.raises(ValueError, match="constraint"):
            model.train()
        model.env.close()


def test_threaded_vec_env_async_protocol() -> None:
    vec = _fast_vec(2, 0)
    vec.reset()
    actions = np.zeros((2, 4), dtype=np.float32)
    with pytest.raises(RuntimeError, match="without step_async"):
        vec.step_wait()
    vec.step_async(actions)
    with pytest.raises(RuntimeError, match="twice"):
        vec.step_async(actions)
    obs, rewards, dones, infos = vec.step_wait()
    assert obs["observation"].shape == (2, 10) and rewards.shape == (2,) and len(infos) == 2
    vec.step_async(actions)
    vec.reset()  # waits for the step in flight before touching the envs
    vec.step_async(actions)
    vec.close()  # likewise
