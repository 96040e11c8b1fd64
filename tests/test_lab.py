"""Tests of the from-scratch PPO lab, scripts/labs/ppo_from_scratch.py (chapter 2, Part 2.5).

The lab is a script, not a package module: it is imported from its path with importlib.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from gymnasium.wrappers import TimeLimit
from torch.distributions import Normal

ROOT = Path(__file__).resolve().parents[1]
LAB_PATH = ROOT / "scripts" / "labs" / "ppo_from_scratch.py"


@pytest.fixture(scope="module")
def lab() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ppo_from_scratch", LAB_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def run_lab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LAB_PATH), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


# ---------------------------------------------------------------------------
# The chapter's checkpoints (section 2.5.1 - 2.5.5), with their stated expectations
# ---------------------------------------------------------------------------

def test_checkpoint_actor_critic_shapes(lab: ModuleType) -> None:
    torch.manual_seed(0)
    model = lab.ActorCritic(obs_dim=16, act_dim=4, hidden_dim=64)
    obs = torch.randn(1, 16)
    dist, value = model(obs)
    assert isinstance(dist, Normal)
    assert dist.mean.shape == (1, 4)
    assert value.shape == (1,)
    assert sum(p.numel() for p in model.parameters()) == 5_577
    dist, value = model(torch.randn(32, 16))
    assert dist.mean.shape == dist.stddev.shape == (32, 4)
    assert value.shape == (32,)
    # state-independent std: the same for every observation, exp(0) = 1 at initialisation
    assert torch.equal(dist.stddev, torch.ones(32, 4))


def test_checkpoint_gae_reward_at_end(lab: ModuleType) -> None:
    T = 10
    rewards = torch.zeros(T)
    rewards[-1] = 1.0
    values = torch.linspace(0, 0.5, T)
    next_value = torch.tensor(0.0)
    dones = torch.zeros(T)
    dones[-1] = 1.0
    advantages, returns = lab.compute_gae(rewards, values, next_value, dones)
    assert advantages[-1] > 0
    assert bool(torch.isfinite(advantages).all())
    # hand-computed: the episode ends at the last step, so A_9 = r_9 - V_9 = 1 - 0.5
    assert advantages[-1].item() == pytest.approx(0.5)
    # one step earlier: delta_8 = 0 + 0.99 * 0.5 - V_8, A_8 = delta_8 + 0.99 * 0.95 * A_9
    v8 = values[8].item()
    assert advantages[8].item() == pytest.approx(0.99 * 0.5 - v8 + 0.99 * 0.95 * 0.5, abs=1e-6)
    torch.testing.assert_close(returns, advantages + values)


def test_checkpoint_ppo_loss_unchanged_policy(lab: ModuleType) -> None:
    torch.manual_seed(0)
    model = lab.ActorCritic(obs_dim=4, act_dim=2)
    obs, actions = torch.randn(32, 4), torch.randn(32, 2)
    with torch.no_grad():
        dist, _ = model(obs)
        old_log_probs = dist.log_prob(actions).sum(dim=-1)
    dist, _ = model(obs)
    loss, info = lab.compute_ppo_loss(dist, old_log_probs, actions, torch.randn(32))
    assert set(info) == {"policy_loss", "approx_kl", "clip_fraction", "ratio_mean"}
    assert info["clip_fraction"] == 0.0
    assert info["ratio_mean"] == pytest.approx(1.0, abs=1e-6)
    assert info["approx_kl"] == pytest.approx(0.0, abs=1e-6)
    assert loss.requires_grad and torch.isfinite(loss)


def test_ppo_loss_clips_a_moved_policy(lab: ModuleType) -> None:
    """Hand-made ratios: the clipped objective takes the pessimistic term."""
    actions = torch.zeros(2, 1)
    dist = Normal(torch.zeros(2, 1), torch.ones(2, 1))
    old_log_probs = dist.log_prob(actions).sum(-1) - float(np.log(2.0))  # rho = 2 for both samples
    advantages = torch.tensor([2.0, -1.0])
    loss, info = lab.compute_ppo_loss(dist, old_log_probs, actions, advantages, clip_range=0.2)
    # A > 0: min(2 * 2, 1.2 * 2) = 2.4; A < 0: min(2 * -1, 1.2 * -1) = -2
    assert loss.item() == pytest.approx(-(2.4 - 2.0) / 2, abs=1e-5)
    assert info["clip_fraction"] == 1.0
    assert info["ratio_mean"] == pytest.approx(2.0, abs=1e-5)
    assert info["approx_kl"] == pytest.approx(1.0 - np.log(2.0), abs=1e-5)


def test_checkpoint_value_loss_at_init(lab: ModuleType) -> None:
    torch.manual_seed(0)
    values = torch.randn(64) * 0.01
    returns = torch.randn(64)
    loss, info = lab.compute_value_loss(values, returns)
    assert set(info) == {"value_loss", "explained_variance"}
    assert info["value_loss"] == pytest.approx(0.5 * ((values - returns) ** 2).mean().item(), rel=1e-6)
    assert 0.25 < info["value_loss"] < 1.0  # ~0.5: large error
    assert abs(info["explained_variance"]) < 0.05  # ~0: no prediction skill
    _, perfect = lab.compute_value_loss(returns.clone(), returns)
    assert perfect["value_loss"] == 0.0 and perfect["explained_variance"] == 1.0


def test_checkpoint_ppo_update_value_loss_decreases(lab: ModuleType) -> None:
    torch.manual_seed(0)
    model = lab.ActorCritic(obs_dim=4, act_dim=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    obs, actions = torch.randn(64, 4), torch.randn(64, 2)
    with torch.no_grad():
        dist, values = model(obs)
        old_log_probs = dist.log_prob(actions).sum(dim=-1)
    advantages = torch.randn(64)
    batch = lab.RolloutBatch(obs, actions, old_log_probs, advantages, values + advantages)
    initial_vloss, info = None, {}
    for _ in range(10):
        info = lab.ppo_update(model, optimizer, batch)
        if initial_vloss is None:
            initial_vloss = info["value_loss"]
    assert info["value_loss"] < initial_vloss
    assert 0.0 < info["approx_kl"] < 0.05
    assert {"policy_loss", "value_loss", "approx_kl", "clip_fraction", "entropy_loss", "explained_variance",
            "loss", "grad_norm"} <= set(info)


def test_ppo_update_total_loss_combines_terms(lab: ModuleType) -> None:
    """total = -L_clip + c1 * L_value - c2 * H, with per-minibatch advantage normalisation."""
    torch.manual_seed(1)
    model = lab.ActorCritic(obs_dim=3, act_dim=2)
    obs, actions, advantages, returns = torch.randn(16, 3), torch.randn(16, 2), torch.randn(16), torch.randn(16)
    with torch.no_grad():
        dist, values = model(obs)
        old = dist.log_prob(actions).sum(-1)
        norm_adv = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        expected = (-(norm_adv.mean()) + 0.5 * 0.5 * ((values - returns) ** 2).mean()
                    - 0.01 * dist.entropy().sum(-1).mean())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    info = lab.ppo_update(model, optimizer, lab.RolloutBatch(obs, actions, old, advantages, returns),
                          vf_coef=0.5, ent_coef=0.01)
    assert info["loss"] == pytest.approx(expected.item(), abs=1e-5)
    assert info["entropy_loss"] == pytest.approx(-dist.entropy().sum(-1).mean().item(), abs=1e-6)


# ---------------------------------------------------------------------------
# GAE against an independent reference and against SB3
# ---------------------------------------------------------------------------

def reference_gae(rewards: np.ndarray, values: np.ndarray, next_value: np.ndarray, dones: np.ndarray,
                  gamma: float, lam: float) -> np.ndarray:
    """A_t = sum_k (gamma * lam)^(k - t) * prod_{t <= j < k} (1 - d_j) * delta_k, as an explicit double sum."""
    T = rewards.shape[0]
    next_values = np.concatenate([values[1:], next_value[None]])
    deltas = rewards + gamma * (1.0 - dones) * next_values - values
    advantages = np.zeros_like(rewards)
    for t in range(T):
        for k in range(t, T):
            alive = np.prod(1.0 - dones[t:k], axis=0)  # 0 once the episode ended between t and k
            advantages[t] += (gamma * lam) ** (k - t) * alive * deltas[k]
    return advantages


@pytest.mark.parametrize(("gamma", "lam"), [(0.99, 0.95), (0.9, 0.0), (0.98, 1.0)])
def test_gae_matches_double_sum_reference(lab: ModuleType, gamma: float, lam: float) -> None:
    rng = np.random.default_rng(42)
    T, n_envs = 40, 3
    rewards, values = rng.normal(size=(T, n_envs)), rng.normal(size=(T, n_envs))
    next_value = rng.normal(size=n_envs)
    dones = (rng.random((T, n_envs)) < 0.15).astype(np.float64)
    dones[T // 2, 0] = 1.0
    assert 0 < dones.sum() < dones.size
    expected = reference_gae(rewards, values, next_value, dones, gamma, lam)
    advantages, returns = lab.compute_gae(*(torch.as_tensor(a) for a in (rewards, values, next_value, dones)),
                                          gamma=gamma, gae_lambda=lam)
    np.testing.assert_allclose(advantages.numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(returns.numpy(), expected + values, atol=1e-10)
    # 1-D input, one environment: same numbers
    adv_1d, _ = lab.compute_gae(*(torch.as_tensor(a[..., 0] if a.ndim else a)
                                  for a in (rewards, values, next_value, dones)), gamma=gamma, gae_lambda=lam)
    np.testing.assert_allclose(adv_1d.numpy(), expected[:, 0], atol=1e-10)


def test_compare_sb3_passes() -> None:
    result = run_lab("--compare-sb3")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "[PASS] Our GAE matches SB3 RolloutBuffer" in result.stdout
    adv = float(re.search(r"Max abs advantage diff: (\S+)", result.stdout).group(1))
    ret = float(re.search(r"Max abs returns diff: (\S+)", result.stdout).group(1))
    assert adv <= 1e-6 and ret <= 1e-6
    assert re.search(r"[1-9]\d* terminations, [1-9]\d* truncations", result.stdout)


def test_compare_sb3_catches_a_wrong_gae(lab: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    correct = lab.compute_gae

    def ignores_dones(rewards, values, next_value, dones, gamma=0.99, gae_lambda=0.95):
        return correct(rewards, values, next_value, torch.zeros_like(dones), gamma, gae_lambda)

    monkeypatch.setattr(lab, "compute_gae", ignores_dones)
    assert lab.compare_sb3() is False
    assert "[FAIL]" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Vector env autoreset, truncation bootstrapping, action clipping
# ---------------------------------------------------------------------------

class CounterEnv(gym.Env):
    """obs = [steps taken in this episode]; reward 1; terminates at `terminate_at` steps if given.

    Records the actions it receives; reports is_success = 1 once 3 steps were taken.
    """

    def __init__(self, terminate_at: int | None = None) -> None:
        self.observation_space = gym.spaces.Box(0.0, 100.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.terminate_at = terminate_at
        self.t = 0
        self.received: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action: np.ndarray):
        self.received.append(np.array(action))
        self.t += 1
        terminated = self.terminate_at is not None and self.t >= self.terminate_at
        return np.array([self.t], dtype=np.float32), 1.0, terminated, False, {"is_success": float(self.t >= 3)}


class ValueIsObs(torch.nn.Module):
    """V(x) = 10 + x[0], so a value tells which observation it came from; policy mean fixed."""

    def __init__(self, mean: float = 0.0) -> None:
        super().__init__()
        self.mean = mean

    def forward(self, obs: torch.Tensor) -> tuple[Normal, torch.Tensor]:
        return Normal(torch.full((obs.shape[0], 1), self.mean), torch.ones(obs.shape[0], 1)), 10.0 + obs[:, 0]


def test_truncation_bootstraps_from_true_final_observation(lab: ModuleType) -> None:
    gamma = 0.9
    envs = lab.make_vector_env(lambda: TimeLimit(CounterEnv(), max_episode_steps=3), 2)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    stats = lab.EpisodeStats(2, window=10)
    obs, _ = envs.reset(seed=0)
    rollout, obs = lab.collect_rollout(envs, ValueIsObs(), obs, 7, gamma, stats)
    # every stored observation is a real one: the reset obs 0 follows the truncated step directly
    assert rollout.observations[:, 0, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert rollout.dones[:, 0].tolist() == [0, 0, 1, 0, 0, 1, 0]
    # truncated at obs 3: reward 1 + gamma * V(3) = 1 + 0.9 * 13, not V(reset obs) = 10
    expected = [1.0, 1.0, 1.0 + gamma * 13.0, 1.0, 1.0, 1.0 + gamma * 13.0, 1.0]
    np.testing.assert_allclose(rollout.rewards[:, 0].numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(rollout.values[:, 0].numpy(), [10, 11, 12, 10, 11, 12, 10])
    assert rollout.last_value.tolist() == [11.0, 11.0] and obs[:, 0].tolist() == [1.0, 1.0]
    # episode statistics use the raw rewards and the last step's info
    assert list(stats.returns) == [3.0] * 4 and list(stats.lengths) == [3] * 4
    assert list(stats.successes) == [1.0] * 4
    envs.close()


def test_termination_is_not_bootstrapped(lab: ModuleType) -> None:
    envs = lab.make_vector_env(lambda: CounterEnv(terminate_at=2), 1)
    obs, _ = envs.reset(seed=0)
    rollout, _ = lab.collect_rollout(envs, ValueIsObs(), obs, 5, 0.9, lab.EpisodeStats(1, 10))
    assert rollout.observations[:, 0, 0].tolist() == [0, 1, 0, 1, 0]
    assert rollout.dones[:, 0].tolist() == [0, 1, 0, 1, 0]
    assert rollout.rewards[:, 0].tolist() == [1.0] * 5
    envs.close()


def test_next_step_autoreset_is_refused(lab: ModuleType) -> None:
    envs = SyncVectorEnv([CounterEnv], autoreset_mode=AutoresetMode.NEXT_STEP)
    obs, _ = envs.reset(seed=0)
    with pytest.raises(ValueError, match="SAME_STEP"):
        lab.collect_rollout(envs, ValueIsObs(), obs, 4, 0.99, lab.EpisodeStats(1, 10))
    envs.close()


def test_actions_clipped_for_env_but_log_prob_of_sample(lab: ModuleType) -> None:
    torch.manual_seed(0)
    env = CounterEnv()
    envs = SyncVectorEnv([lambda: env], autoreset_mode=AutoresetMode.SAME_STEP)
    obs, _ = envs.reset(seed=0)
    rollout, _ = lab.collect_rollout(envs, ValueIsObs(mean=3.0), obs, 50, 0.99, lab.EpisodeStats(1, 10))
    sampled = rollout.actions[:, 0, 0]
    received = np.array(env.received)[:, 0]
    assert (sampled > 1.0).any()
    np.testing.assert_allclose(received, np.clip(sampled.numpy(), -1.0, 1.0))
    expected = Normal(torch.tensor(3.0), torch.tensor(1.0)).log_prob(sampled)
    torch.testing.assert_close(rollout.log_probs[:, 0], expected)
    envs.close()


def test_flatten_goal_obs_uses_chapter_key_order(lab: ModuleType) -> None:
    obs = {"desired_goal": np.full(3, 3.0), "achieved_goal": np.full(3, 2.0), "observation": np.full(10, 1.0)}
    flat = lab.flatten_goal_obs(obs)
    assert flat.dtype == np.float32 and flat.shape == (16,)
    assert flat.tolist() == [1.0] * 10 + [2.0] * 3 + [3.0] * 3


def test_config_validation(lab: ModuleType) -> None:
    assert lab.PPOConfig().rollout_size == 8 * 1024
    with pytest.raises(ValueError, match="gae_lambda"):
        lab.PPOConfig(gae_lambda=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        lab.PPOConfig(batch_size=0)


def test_lab_imports_no_sb3_and_no_robotics() -> None:
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('lab', {str(LAB_PATH)!r}); "
            "m = importlib.util.module_from_spec(spec); sys.modules['lab'] = m; spec.loader.exec_module(m); "
            "print('stable_baselines3' in sys.modules, 'gymnasium_robotics' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr


# ---------------------------------------------------------------------------
# --verify and the exercises
# ---------------------------------------------------------------------------

def test_verify_passes() -> None:
    result = run_lab("--verify")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    positions = [out.index(s) for s in ("PPO From Scratch -- Verification", "[PASS] GAE computation OK",
                                        "[PASS] PPO loss OK", "[PASS] PPO update OK",
                                        "[ALL PASS] PPO implementation verified")]
    assert positions == sorted(positions)
    assert "[FAIL]" not in out


def _zeros_gae(rewards, values, next_value, dones, gamma=0.99, gae_lambda=0.95):
    return torch.zeros_like(rewards), torch.zeros_like(rewards)


def _wrong_ratio_loss(lab: ModuleType):
    correct = lab.compute_ppo_loss

    def loss(dist, old_log_probs, actions, advantages, clip_range=0.2):
        return correct(dist, old_log_probs - 0.5, actions, advantages, clip_range)  # stale log-probs

    return loss


def _no_step_update(lab: ModuleType):
    def update(model, optimizer, batch, clip_range=0.2, vf_coef=0.5, ent_coef=0.0, max_grad_norm=0.5):
        dist, values = model(batch.observations)
        _, policy_info = lab.compute_ppo_loss(dist, batch.old_log_probs, batch.actions, batch.advantages)
        _, value_info = lab.compute_value_loss(values, batch.returns)
        return {**policy_info, **value_info, "loss": 0.0, "entropy_loss": 0.0, "grad_norm": 0.0}

    return update


@pytest.mark.parametrize(("name", "make_broken", "section"), [
    ("compute_gae", lambda lab: _zeros_gae, "last advantage"),
    ("compute_ppo_loss", _wrong_ratio_loss, "approx_kl"),
    ("ppo_update", _no_step_update, "value loss did not decrease"),
])
def test_verify_fails_when_a_piece_is_broken(lab: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str], name: str,
                                             make_broken: Any, section: str) -> None:
    monkeypatch.setattr(lab, name, make_broken(lab))
    assert lab.run_verification() is False
    out = capsys.readouterr().out
    assert "[FAIL]" in out and "[ALL PASS]" not in out
    assert section in out
    assert lab.main(["--verify"]) == 1


def test_exercise_gae_lambda(lab: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert lab.main(["--verify", "--gae-lambda", "0.0"]) == 0
    out = capsys.readouterr().out
    assert "Exercise 2.5.1 -- gae_lambda=0.0" in out
    match = re.search(r"mean \|A\|: lambda=0.0: (\S+)\s+vs\s+lambda=0.95: (\S+)", out)
    assert match and float(match.group(1)) < float(match.group(2))  # one-step TD: smaller advantages


def test_exercise_clip_range(lab: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert lab.main(["--verify", "--clip-range", "0.5"]) == 0
    out = capsys.readouterr().out
    fractions = {float(eps): float(frac) for eps, frac in
                 re.findall(r"clip_range=(\S+): clip_fraction=(\S+)", out)}
    assert set(fractions) == {0.0, 0.1, 0.2, 0.5, 1.0}
    assert fractions[0.5] < fractions[0.2] <= fractions[0.0] == 1.0
    assert re.search(r"clip_range=0.50: .*<- --clip-range", out)


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    [], ["--bogus"], ["--verify", "--demo"], ["--demo", "--total-steps", "-5"], ["--demo", "--total-steps", "x"],
    ["--verify", "--gae-lambda", "1.5"], ["--record"], ["--demo", "--seed", "-1"], ["--demo", "--gae-lambda", "0.5"],
    ["--verify", "--n-eval-episodes", "3"], ["--fetch", "--n-eval-episodes", "0"], ["--verify", "--clip-range", "nan"],
])
def test_bad_input_is_one_line_exit_2(lab: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        lab.main(argv)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err


def test_bad_input_subprocess_has_no_traceback() -> None:
    result = run_lab("--demo", "--total-steps", "0")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------
# --demo and --record: CartPole solved from scratch
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    gif = tmp_path_factory.mktemp("demo") / "cartpole.gif"
    return run_lab("--demo", "--record", "--seed", "0", "--total-steps", "60000", "--video", str(gif)), gif


def test_demo_solves_cartpole_within_budget(demo_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, _ = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"Iteration \|\s+Steps \|\s+Avg Return \|\s+Value Loss \|\s+Approx KL", result.stdout)
    match = re.search(r"\[SOLVED\] avg return (\S+) >= 195 at iteration \d+: (\d+) steps in (\S+) s", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) >= 195 and int(match.group(2)) <= 60_000


def test_record_writes_a_readable_gif(demo_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    import imageio.v3 as iio

    result, gif = demo_run
    assert result.returncode == 0, result.stdout + result.stderr
    frames = iio.imread(gif)
    assert frames.ndim == 4 and frames.shape[0] > 10 and frames.shape[1:3] == (400, 600)
    assert not list(gif.parent.glob(".*.gif")), "temporary file left behind"
    assert f"-> {gif}" in result.stdout


def test_render_cartpole_draws_the_pole_where_it_is(lab: ModuleType) -> None:
    upright = lab.render_cartpole(np.array([0.0, 0.0, 0.0, 0.0]))
    leaning = lab.render_cartpole(np.array([0.0, 0.0, 0.5, 0.0]))
    pole = np.array([202, 152, 101])
    cols_upright = np.nonzero((upright == pole).all(-1))[1]
    cols_leaning = np.nonzero((leaning == pole).all(-1))[1]
    assert abs(cols_upright.mean() - 300) < 2  # centred on the cart
    assert cols_leaning.mean() > cols_upright.mean() + 20  # positive angle leans right


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_demo_solves_other_seeds(lab: ModuleType, seed: int) -> None:
    _, solved = lab.run_demo(seed=seed, total_steps=60_000)
    assert solved


# ---------------------------------------------------------------------------
# --fetch smoke test
# ---------------------------------------------------------------------------

def test_fetch_smoke_prints_criteria_and_logs_sb3_tags(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_lab("--fetch", "--total-steps", "8192", "--n-eval-episodes", "3", "--logdir", str(tmp_path))
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    for row in ("success rate", "return mean", "final distance mean (m)"):
        assert re.search(rf"{re.escape(row)}\s+\|\s+-?\d+\.\d+ \|\s+[<>] -?[\d.]+ \| (PASS|FAIL)", result.stdout)
    assert ("[PASS] all criteria met" in result.stdout) == (result.returncode == 0)
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"rollout/ep_rew_mean", "rollout/success_rate", "train/value_loss", "train/approx_kl",
            "train/clip_fraction", "train/entropy_loss", "train/explained_variance", "time/fps"} <= tags
