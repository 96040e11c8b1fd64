"""Tests of the from-scratch SAC lab, scripts/labs/sac_from_scratch.py (chapter 3, Part 2.5).

The lab is a script, not a package module: it is imported from its path with importlib.
"""

from __future__ import annotations

import copy
import importlib.util
import math
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
LAB_PATH = ROOT / "scripts" / "labs" / "sac_from_scratch.py"


@pytest.fixture(scope="module")
def lab() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sac_from_scratch", LAB_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def run_lab(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(LAB_PATH), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def constant_twin_q(lab: ModuleType, obs_dim: int, act_dim: int, q1: float, q2: float) -> Any:
    """A real TwinQNetwork whose last layers are zeroed: Q1 = q1, Q2 = q2 everywhere."""
    net = lab.TwinQNetwork(obs_dim, act_dim, hidden_dim=8)
    with torch.no_grad():
        for head, value in ((net.q1[-1], q1), (net.q2[-1], q2)):
            head.weight.zero_()
            head.bias.fill_(value)
    return net


# ---------------------------------------------------------------------------
# The squashed Gaussian: log-prob with the tanh correction
# ---------------------------------------------------------------------------

def test_log_prob_hand_computed(lab: ModuleType) -> None:
    # mean 0, std 1, u = 0.5: log N(0.5) = -0.125 - 0.5 log(2 pi); correction log(1 - tanh(0.5)^2)
    u = torch.tensor([[0.5]], dtype=torch.float64)
    dist = Normal(torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    expected = -0.125 - 0.5 * math.log(2 * math.pi) - math.log(1 - math.tanh(0.5) ** 2)
    assert lab.squashed_gaussian_log_prob(dist, u, eps=0.0).item() == pytest.approx(expected, abs=1e-12)
    # SB3's eps = 1e-6 inside the log: log(x + 1e-6) - log(x) ~ 1e-6 / x
    with_eps = lab.squashed_gaussian_log_prob(dist, u).item()
    assert with_eps == pytest.approx(expected - 1e-6 / (1 - math.tanh(0.5) ** 2), abs=1e-10)


def test_log_prob_equals_change_of_variables_with_autograd_jacobian(lab: ModuleType) -> None:
    """log pi(a) = log N(u) - log|det d tanh(u)/du|, the Jacobian taken by autograd, no formula assumed."""
    gen = torch.Generator().manual_seed(3)
    mean = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    std = torch.rand(20, 3, generator=gen, dtype=torch.float64) + 0.2
    u = mean + std * torch.randn(20, 3, generator=gen, dtype=torch.float64)
    log_det = torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(torch.tanh, row))[1] for row in u])
    reference = Normal(mean, std).log_prob(u).sum(-1) - log_det
    ours = lab.squashed_gaussian_log_prob(Normal(mean, std), u, eps=0.0)
    torch.testing.assert_close(ours, reference, atol=1e-10, rtol=0)
    # the lab's own reference (used by --verify) agrees too
    torch.testing.assert_close(lab.change_of_variables_log_prob(mean, std.log(), u), reference, atol=1e-10, rtol=0)


def test_stable_softplus_form_equals_the_log_form(lab: ModuleType) -> None:
    """The docstring's claim: log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u))."""
    u = torch.linspace(-8, 8, 101, dtype=torch.float64)
    stable = 2 * (math.log(2) - u - torch.nn.functional.softplus(-2 * u))
    torch.testing.assert_close(stable, torch.log(1 - torch.tanh(u) ** 2), atol=1e-9, rtol=1e-9)


def test_squashed_density_integrates_to_one(lab: ModuleType) -> None:
    """exp(log pi(a)) is a density on (-1, 1): the tanh correction makes it integrate to 1."""
    a = torch.linspace(-1 + 1e-9, 1 - 1e-9, 200_001, dtype=torch.float64)[:, None]
    u = torch.atanh(a)
    dist = Normal(torch.full_like(u, 0.7), torch.full_like(u, 0.6))
    density = lab.squashed_gaussian_log_prob(dist, u, eps=0.0).exp()
    assert torch.trapezoid(density, a[:, 0]).item() == pytest.approx(1.0, abs=1e-4)
    gaussian_only = dist.log_prob(u).sum(-1).exp()  # without the correction it is not a density
    assert abs(torch.trapezoid(gaussian_only, a[:, 0]).item() - 1.0) > 0.1


def test_policy_samples_are_bounded_reparameterised_and_scored(lab: ModuleType) -> None:
    torch.manual_seed(0)
    policy = lab.GaussianPolicy(obs_dim=10, act_dim=4, hidden_dim=32)
    obs = torch.randn(64, 10)
    actions, log_probs = policy(obs)
    assert actions.shape == (64, 4) and log_probs.shape == (64,)
    assert bool((actions.abs() < 1).all())
    # reparameterised: gradients reach the mean head through the sampled action
    actions.sum().backward()
    assert policy.mu.weight.grad is not None and policy.mu.weight.grad.abs().sum() > 0
    # the returned log-prob is the squashed density of the returned action
    with torch.no_grad():
        mean, log_std = policy.distribution_params(obs)
        torch.manual_seed(1)
        actions, log_probs = policy(obs)
        u = torch.atanh(actions.double())
        expected = lab.squashed_gaussian_log_prob(Normal(mean.double(), log_std.double().exp()), u)
    torch.testing.assert_close(log_probs.double(), expected, atol=2e-3, rtol=0)  # atanh of float32 actions
    torch.testing.assert_close(policy.deterministic_action(obs), torch.tanh(mean))
    assert bool((log_std >= -20).all() and (log_std <= 2).all())


def test_log_std_is_clamped(lab: ModuleType) -> None:
    policy = lab.GaussianPolicy(obs_dim=2, act_dim=1, hidden_dim=4)
    with torch.no_grad():
        policy.log_std.weight.zero_()
        policy.log_std.bias.fill_(50.0)
    _, log_std = policy.distribution_params(torch.zeros(1, 2))
    assert log_std.item() == 2.0


# ---------------------------------------------------------------------------
# Critic target and losses against hand-computed values
# ---------------------------------------------------------------------------

def test_q_target_hand_computed(lab: ModuleType) -> None:
    rewards = torch.tensor([1.0, -0.5, 2.0, 0.0])
    dones = torch.tensor([0.0, 0.0, 1.0, 0.0])
    next_q1 = torch.tensor([2.0, 5.0, 9.0, -1.0])
    next_q2 = torch.tensor([3.0, 4.0, 9.0, -2.0])
    next_log_probs = torch.tensor([-1.0, 0.5, 3.0, 0.0])
    y = lab.compute_q_target(rewards, dones, next_q1, next_q2, next_log_probs, alpha=0.5, gamma=0.9)
    expected = [
        1.0 + 0.9 * (2.0 - 0.5 * -1.0),  # min picks Q1
        -0.5 + 0.9 * (4.0 - 0.5 * 0.5),  # min picks Q2
        2.0,  # terminated: no bootstrap
        0.0 + 0.9 * (-2.0 - 0.0),
    ]
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6)


def test_twin_q_loss_uses_target_critics_min_and_the_current_policy(lab: ModuleType) -> None:
    torch.manual_seed(0)
    policy = lab.GaussianPolicy(3, 2, hidden_dim=16)
    q_network = constant_twin_q(lab, 3, 2, 1.0, 1.5)
    target_q_network = constant_twin_q(lab, 3, 2, 4.0, 3.0)  # min = 3
    batch = lab.ReplayBatch(obs=torch.randn(8, 3), actions=torch.rand(8, 2) * 2 - 1, rewards=torch.randn(8),
                            next_obs=torch.randn(8, 3), dones=torch.tensor([0.0, 1.0] * 4))
    torch.manual_seed(5)
    loss, info = lab.compute_twin_q_loss(q_network, target_q_network, policy, batch, alpha=0.2, gamma=0.99)
    torch.manual_seed(5)
    with torch.no_grad():
        _, next_log_probs = policy(batch["next_obs"])  # the same draw a' ~ pi(.|s')
    y = batch["rewards"] + 0.99 * (1 - batch["dones"]) * (3.0 - 0.2 * next_log_probs)
    expected = 0.5 * (((1.0 - y) ** 2).mean() + ((1.5 - y) ** 2).mean())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert info["target_q_mean"] == pytest.approx(y.mean().item(), rel=1e-5)
    assert info["q1_mean"] == pytest.approx(1.0) and info["q2_mean"] == pytest.approx(1.5)
    # the target is a constant: only the online critics get gradients
    loss.backward()
    assert all(p.grad is None for p in target_q_network.parameters())
    assert all(p.grad is None for p in policy.parameters())


def test_actor_loss_hand_computed(lab: ModuleType) -> None:
    q_network = constant_twin_q(lab, 3, 1, 2.0, -1.0)  # min = -1
    log_probs = torch.tensor([-0.5, 0.5, 1.5], requires_grad=True)
    loss, info = lab.compute_actor_loss(q_network, torch.randn(3, 3), torch.zeros(3, 1), log_probs, alpha=0.1)
    assert loss.item() == pytest.approx(float(np.mean([0.1 * lp + 1.0 for lp in (-0.5, 0.5, 1.5)])), rel=1e-6)
    assert info["entropy"] == pytest.approx(-0.5)
    loss.backward()
    torch.testing.assert_close(log_probs.grad, torch.full((3,), 0.1 / 3))  # d/dlogp of alpha * mean(log pi)


@pytest.mark.parametrize(("log_prob", "alpha_rises"), [(6.0, True), (-1.0, False)])
def test_temperature_loss_value_and_sign(lab: ModuleType, log_prob: float, alpha_rises: bool) -> None:
    """Entropy -E[log pi] below the target (-4 here) -> alpha rises; above -> alpha falls."""
    log_alpha = torch.tensor([math.log(0.5)], requires_grad=True)
    log_probs = torch.full((16,), log_prob, requires_grad=True)
    loss, info = lab.compute_temperature_loss(log_alpha, log_probs, target_entropy=-4.0)
    assert info["ent_coef_loss"] == pytest.approx(-math.log(0.5) * (log_prob - 4.0), rel=1e-6)
    loss.backward()
    assert log_probs.grad is None  # log pi is detached: the temperature loss does not train the actor
    assert log_alpha.grad is not None
    torch.optim.SGD([log_alpha], lr=0.1).step()
    assert (log_alpha.exp().item() > 0.5) == alpha_rises


def test_polyak_update_hand_computed(lab: ModuleType) -> None:
    online = [torch.tensor([1.0, 2.0]), torch.tensor([[4.0]])]
    target = [torch.tensor([0.0, 0.0]), torch.tensor([[8.0]])]
    lab.polyak_update(online, target, tau=0.25)
    torch.testing.assert_close(target[0], torch.tensor([0.25, 0.5]))
    torch.testing.assert_close(target[1], torch.tensor([[7.0]]))
    lab.polyak_update(online, target, tau=1.0)  # hard copy
    torch.testing.assert_close(target[0], online[0])
    with pytest.raises(ValueError):
        lab.polyak_update(online, target[:1], tau=0.5)  # mismatched parameter lists fail loudly


def test_sac_update_with_fixed_temperature(lab: ModuleType) -> None:
    torch.manual_seed(0)
    agent = lab.make_agent(4, 2, lab.SACConfig(hidden_dim=16, ent_coef="0.2"))
    assert agent.alpha_optimizer is None and not agent.log_alpha.requires_grad
    batch = lab.ReplayBatch(obs=torch.randn(32, 4), actions=torch.rand(32, 2) * 2 - 1, rewards=torch.randn(32),
                            next_obs=torch.randn(32, 4), dones=torch.zeros(32))
    target_before = copy.deepcopy(agent.target_q_network.state_dict())
    info = lab.sac_update(agent, batch, gamma=0.99, tau=0.005)
    assert info["ent_coef"] == pytest.approx(0.2) and "ent_coef_loss" not in info
    assert agent.log_alpha.exp().item() == pytest.approx(0.2)
    assert {"critic_loss", "actor_loss", "q1_mean", "q2_mean", "target_q_mean", "entropy"} <= set(info)
    moved = [not torch.equal(v, target_before[k]) for k, v in agent.target_q_network.state_dict().items()]
    assert all(moved)


def test_config_parses_ent_coef_and_validates(lab: ModuleType) -> None:
    assert lab.SACConfig().learn_ent_coef and lab.SACConfig().ent_coef_init == 1.0
    assert lab.SACConfig(ent_coef="auto_0.1").ent_coef_init == pytest.approx(0.1)
    fixed = lab.SACConfig(ent_coef="0.05")
    assert not fixed.learn_ent_coef and fixed.ent_coef_init == pytest.approx(0.05)
    for bad in ("autox", "auto0.5", "abc", "-1", "auto_0", "auto_"):
        with pytest.raises(ValueError, match="ent_coef"):
            lab.SACConfig(ent_coef=bad)
    with pytest.raises(ValueError, match="tau"):
        lab.SACConfig(tau=1.5)
    with pytest.raises(ValueError, match="buffer_size"):
        lab.SACConfig(buffer_size=4)


# ---------------------------------------------------------------------------
# Replay buffer
# ---------------------------------------------------------------------------

def test_replay_buffer_stores_wraps_and_samples(lab: ModuleType) -> None:
    buffer = lab.ReplayBuffer(obs_dim=2, act_dim=1, capacity=5, seed=0)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample(4)
    buffer.add(np.array([0.0, 0.0]), np.array([0.5]), -1.0, np.array([1.0, 1.0]), False)  # one transition
    assert buffer.size == 1 and buffer.ptr == 1
    obs = np.arange(1, 7, dtype=np.float64)[:, None].repeat(2, axis=1)
    buffer.add(obs[:4], np.zeros((4, 1)), np.arange(4), obs[:4] + 1, np.zeros(4))  # batched: now full
    assert buffer.size == 5 and buffer.ptr == 0
    buffer.add(obs[4:], np.zeros((2, 1)), np.arange(4, 6), obs[4:] + 1, np.array([0, 1]))  # wraps around
    assert buffer.size == 5 and buffer.ptr == 2
    assert sorted(buffer.obs[:, 0].tolist()) == [2.0, 3.0, 4.0, 5.0, 6.0]  # 0 and 1 overwritten
    batch = buffer.sample(1000)
    assert batch["obs"].shape == batch["next_obs"].shape == (1000, 2) and batch["obs"].dtype == torch.float32
    assert batch["actions"].shape == (1000, 1) and batch["rewards"].shape == batch["dones"].shape == (1000,)
    assert set(batch["obs"][:, 0].tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}  # uniform over the filled slots
    torch.testing.assert_close(batch["next_obs"], batch["obs"] + 1)
    torch.testing.assert_close(batch["rewards"], batch["obs"][:, 0] - 1)
    torch.testing.assert_close(batch["dones"], (batch["obs"][:, 0] == 6).float())
    with pytest.raises(ValueError, match="capacity"):
        buffer.add(np.zeros((6, 2)), np.zeros((6, 1)), np.zeros(6), np.zeros((6, 2)), np.zeros(6))


# ---------------------------------------------------------------------------
# Training loop: truncation, termination, action scaling, autoreset mode
# ---------------------------------------------------------------------------

class CounterEnv(gym.Env):
    """obs = [steps taken in this episode]; reward 1; terminates at `terminate_at` steps if given.

    Action space [-2, 2]; records the actions it receives; is_success = 1 once 3 steps were taken.
    """

    def __init__(self, terminate_at: int | None = None) -> None:
        self.observation_space = gym.spaces.Box(0.0, 100.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
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


def test_truncation_stores_true_final_obs_and_no_done(lab: ModuleType) -> None:
    env = CounterEnv()
    envs = SyncVectorEnv([lambda: TimeLimit(env, max_episode_steps=3)], autoreset_mode=AutoresetMode.SAME_STEP)
    cfg = lab.SACConfig(n_envs=1, buffer_size=100, learning_starts=100, total_timesteps=7, hidden_dim=8,
                        log_interval=1, stats_window_size=10)
    rows: list[Any] = []
    result = lab.train(envs, cfg, callback=lambda row: rows.append(row) is None)
    buffer = result.buffer
    assert result.timesteps == 7 and buffer.size == 7
    # every stored s' is the real next observation: 3 at the time limit, not the reset obs 0
    assert buffer.obs[:7, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert buffer.next_obs[:7, 0].tolist() == [1, 2, 3, 1, 2, 3, 1]
    assert buffer.dones[:7].tolist() == [0.0] * 7  # truncation is not termination: bootstrap through it
    # the env got the buffer's [-1, 1] action rescaled to its [-2, 2] bounds
    np.testing.assert_allclose(np.array(env.received)[:, 0], 2.0 * buffer.actions[:7, 0], rtol=1e-6)
    assert rows[-1].n_episodes == 2 and rows[-1].ep_rew_mean == 3.0 and rows[-1].success_rate == 1.0
    assert np.isnan(rows[-1].critic_loss) and rows[-1].n_updates == 0  # still in the warm-up
    envs.close()


def test_termination_is_stored_as_done(lab: ModuleType) -> None:
    envs = lab.make_vector_env(lambda: CounterEnv(terminate_at=2), 2)
    cfg = lab.SACConfig(n_envs=2, buffer_size=100, learning_starts=100, total_timesteps=10, hidden_dim=8)
    buffer = lab.train(envs, cfg).buffer
    assert buffer.obs[:10, 0].tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    assert buffer.next_obs[:10, 0].tolist() == [1, 1, 2, 2, 1, 1, 2, 2, 1, 1]
    assert buffer.dones[:10].tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    envs.close()


def test_updates_start_after_learning_starts_one_per_vector_step(lab: ModuleType) -> None:
    envs = lab.make_vector_env(lambda: TimeLimit(CounterEnv(), max_episode_steps=5), 4)
    cfg = lab.SACConfig(n_envs=4, buffer_size=1000, learning_starts=40, total_timesteps=100, batch_size=16,
                        hidden_dim=8, log_interval=100)
    rows: list[Any] = []
    lab.train(envs, cfg, callback=lambda row: rows.append(row) is None)
    # SB3's rule: update after a vector step once timesteps > learning_starts: at 44, 48, ..., 100
    assert rows[-1].n_updates == (100 - 44) // 4 + 1
    assert np.isfinite(rows[-1].critic_loss) and np.isfinite(rows[-1].ent_coef_loss)
    envs.close()


def test_next_step_autoreset_and_wrong_env_count_are_refused(lab: ModuleType) -> None:
    envs = SyncVectorEnv([CounterEnv], autoreset_mode=AutoresetMode.NEXT_STEP)
    with pytest.raises(ValueError, match="SAME_STEP"):
        lab.train(envs, lab.SACConfig(n_envs=1, buffer_size=10, total_timesteps=4, hidden_dim=8))
    envs.close()
    envs = lab.make_vector_env(CounterEnv, 2)
    with pytest.raises(ValueError, match="n_envs is 8"):
        lab.train(envs, lab.SACConfig(buffer_size=10, total_timesteps=4, hidden_dim=8))
    envs.close()


def test_flatten_goal_obs_uses_chapter_key_order(lab: ModuleType) -> None:
    obs = {"desired_goal": np.full(3, 3.0), "achieved_goal": np.full(3, 2.0), "observation": np.full(10, 1.0)}
    flat = lab.flatten_goal_obs(obs)
    assert flat.dtype == np.float32 and flat.shape == (16,)
    assert flat.tolist() == [1.0] * 10 + [2.0] * 3 + [3.0] * 3


def test_render_pendulum_draws_the_rod_where_it_is(lab: ModuleType) -> None:
    rod = np.array([204, 77, 77])
    upright = np.nonzero((lab.render_pendulum(0.0) == rod).all(-1))
    left = np.nonzero((lab.render_pendulum(math.pi / 2) == rod).all(-1))
    assert upright[0].mean() < 250 - 40 and abs(upright[1].mean() - 250) < 2  # above the pivot
    assert left[1].mean() < 250 - 40 and abs(left[0].mean() - 250) < 2  # theta > 0: counter-clockwise


def test_lab_imports_no_sb3_and_no_robotics() -> None:
    code = ("import importlib.util, sys; "
            f"spec = importlib.util.spec_from_file_location('lab', {str(LAB_PATH)!r}); "
            "m = importlib.util.module_from_spec(spec); sys.modules['lab'] = m; spec.loader.exec_module(m); "
            "print('stable_baselines3' in sys.modules, 'gymnasium_robotics' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "False"], result.stderr


# ---------------------------------------------------------------------------
# --verify
# ---------------------------------------------------------------------------

def test_verify_passes() -> None:
    result = run_lab("--verify")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    positions = [out.index(s) for s in ("SAC From Scratch -- Verification", "[PASS] Shapes OK", "[PASS] Log-prob OK",
                                        "[PASS] Target OK", "[PASS] SAC update OK",
                                        "[ALL PASS] SAC implementation verified")]
    assert positions == sorted(positions)
    assert "[FAIL]" not in out


def _no_tanh_correction(lab: ModuleType) -> Any:
    def log_prob(dist, u, action=None, eps=1e-6):
        return dist.log_prob(u).sum(dim=-1)

    return log_prob


def _max_target(lab: ModuleType) -> Any:
    def target(rewards, dones, next_q1, next_q2, next_log_probs, alpha, gamma=0.99):
        return rewards + (1 - dones) * gamma * (torch.max(next_q1, next_q2) - alpha * next_log_probs)

    return target


def _no_done_mask_target(lab: ModuleType) -> Any:
    def target(rewards, dones, next_q1, next_q2, next_log_probs, alpha, gamma=0.99):
        return rewards + gamma * (torch.min(next_q1, next_q2) - alpha * next_log_probs)

    return target


def _no_step_update(lab: ModuleType) -> Any:
    def update(agent, batch, gamma=0.99, tau=0.005):
        actions_pi, log_probs_pi = agent.policy(batch["obs"])
        alpha = agent.log_alpha.detach().exp()
        _, critic_info = lab.compute_twin_q_loss(agent.q_network, agent.target_q_network, agent.policy, batch,
                                                 alpha, gamma)
        _, actor_info = lab.compute_actor_loss(agent.q_network, batch["obs"], actions_pi, log_probs_pi, alpha)
        return {"ent_coef": alpha.item(), **critic_info, **actor_info}

    return update


def _wrong_sign_temperature(lab: ModuleType) -> Any:
    correct = lab.compute_temperature_loss

    def loss(log_alpha, log_probs, target_entropy):
        value, info = correct(log_alpha, log_probs, target_entropy)
        return -value, info

    return loss


def _no_polyak(lab: ModuleType) -> Any:
    def polyak(params, target_params, tau):
        return None

    return polyak


@pytest.mark.parametrize(("name", "make_broken", "section"), [
    ("squashed_gaussian_log_prob", _no_tanh_correction, "tanh correction is missing"),
    ("compute_q_target", _max_target, "min over critics"),
    ("compute_q_target", _no_done_mask_target, "no bootstrap"),
    ("sac_update", _no_step_update, "critic loss did not decrease"),
    ("compute_temperature_loss", _wrong_sign_temperature, "alpha moved the wrong way"),
    ("polyak_update", _no_polyak, "Polyak"),
])
def test_verify_fails_when_a_piece_is_broken(lab: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str], name: str,
                                             make_broken: Any, section: str) -> None:
    monkeypatch.setattr(lab, name, make_broken(lab))
    assert lab.main(["--verify"]) == 1  # run_verification() is False -> exit 1
    out = capsys.readouterr().out
    assert "[FAIL]" in out and "[ALL PASS]" not in out
    assert section in out


# ---------------------------------------------------------------------------
# --compare-sb3: the real SB3 SAC on the same weights and batch
# ---------------------------------------------------------------------------

def test_compare_sb3_passes() -> None:
    result = run_lab("--compare-sb3")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[PASS] Our squashed Gaussian log_prob and twin-Q target match SB3" in out
    for label in ("Max abs log_prob diff", "Max abs log_prob diff, formula alone \\(.*?\\)",
                  "Max abs twin-Q target diff", "Max abs logged loss diff \\(.*?\\)",
                  "Max abs parameter diff after one update \\(.*?\\)"):
        match = re.search(rf"{label}: (\S+)", out)
        assert match, label
        assert float(match.group(1)) <= 1e-6, match.group(0)
    terminal = int(re.search(r"of 1000 transitions, (\d+) terminal", out).group(1))
    assert 0 < terminal < 256  # the batch mixes bootstrapped and terminal targets


def test_compare_sb3_catches_a_wrong_target(lab: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(lab, "compute_q_target", _no_done_mask_target(lab))
    assert lab.compare_sb3() is False
    out = capsys.readouterr().out
    assert "[FAIL]" in out
    assert float(re.search(r"Max abs twin-Q target diff: (\S+)", out).group(1)) > 1e-3


# ---------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    [], ["--bogus"], ["--verify", "--demo"], ["--demo", "--total-steps", "-5"], ["--demo", "--total-steps", "x"],
    ["--record"], ["--demo", "--seed", "-1"], ["--verify", "--total-steps", "100"], ["--verify", "--n-eval-episodes", "3"],
    ["--fetch", "--n-eval-episodes", "0"], ["--compare-sb3", "--learning-starts", "5"], ["--demo", "--no-progress"],
    ["--demo", "--learning-starts", "nan"],
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
# --demo and --record: Pendulum from scratch
# ---------------------------------------------------------------------------

class Reach1D(gym.Env):
    """x0 ~ U(-1.5, 1.5); action a in [-1, 1] moves x by 0.25 a; reward -|x|. Optimal return about -1.5
    over 20 steps, uniform random actions about -15: a task SAC learns in a few hundred updates."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.x = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.x = float(self.np_random.uniform(-1.5, 1.5))
        return np.array([self.x], dtype=np.float32), {}

    def step(self, action: np.ndarray):
        self.x = float(np.clip(self.x + 0.25 * float(action[0]), -2.0, 2.0))
        return np.array([self.x], dtype=np.float32), -abs(self.x), False, False, {}


def test_short_run_with_the_demo_settings_learns(lab: ModuleType, one_torch_thread: None) -> None:
    """The demo's loop and settings on a task that takes seconds: the return rises from random to near optimal.

    (Pendulum itself first gets worse -- the young policy spins -- and only improves after ~2,500 updates:
    the full solve is the slow test below.)
    """
    cfg = lab.SACConfig(**{**lab._asdict(lab.DEMO_CONFIG), "total_timesteps": 1_500, "learning_starts": 200,
                           "log_interval": 100})
    rows: list[Any] = []
    envs = lab.make_vector_env(lambda: TimeLimit(Reach1D(), max_episode_steps=20), cfg.n_envs)
    lab.train(envs, cfg, callback=lambda row: rows.append(row) is None)
    envs.close()
    warmup = next(row for row in rows if row.n_episodes >= cfg.stats_window_size)  # 10 random episodes
    assert warmup.timesteps <= cfg.learning_starts and warmup.ep_rew_mean < -9.0
    assert rows[-1].n_updates == (cfg.total_timesteps - cfg.learning_starts) // cfg.n_envs  # 1 per vector step
    assert rows[-1].ep_rew_mean > -5.0, [(r.timesteps, round(r.ep_rew_mean, 1)) for r in rows]
    assert rows[-1].ent_coef < 1.0


def test_demo_not_solved_within_budget_exits_1(lab: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    assert lab.main(["--demo", "--total-steps", "400"]) == 1  # 2 random episodes, no update yet
    out = capsys.readouterr().out
    assert re.search(r"\[NOT SOLVED\] avg return -\d+\.\d \(last 2 episodes\), not > -200 over 10, after 400 steps", out)


@pytest.mark.slow
def test_demo_solves_pendulum_and_records_a_gif(tmp_path: Path) -> None:
    import imageio.v3 as iio

    gif = tmp_path / "pendulum.gif"
    result = run_lab("--demo", "--record", "--seed", "0", "--video", str(gif))
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"\[SOLVED\] avg return (\S+) > -200 \(last 10 episodes\) at (\d+) steps", result.stdout)
    assert match, result.stdout
    assert float(match.group(1)) > -200
    frames = iio.imread(gif)
    assert frames.ndim == 4 and frames.shape[0] > 10 and frames.shape[1:3] == (500, 500)  # still frames merge
    assert not list(tmp_path.glob(".*.gif")), "temporary file left behind"
    recorded = re.search(r"Recorded \d+ frames of a 200-step episode \(return (\S+)\)", result.stdout)
    assert recorded and float(recorded.group(1)) > -500  # swings up and holds (random torque: about -1200)


# ---------------------------------------------------------------------------
# --fetch smoke test
# ---------------------------------------------------------------------------

def test_fetch_smoke_prints_criteria_and_logs_sb3_tags(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_lab("--fetch", "--total-steps", "2000", "--learning-starts", "1000", "--n-eval-episodes", "3",
                     "--logdir", str(tmp_path), "--no-progress")
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    assert "learning_starts=1000" in result.stdout and "total=2000" in result.stdout
    assert re.search(r"^   2000 \|\s+-\d+\.\d+ \|\s+\d\.\d\d \|", result.stdout, re.MULTILINE)  # a learning-curve row
    first, last = map(float, re.search(r"ent_coef: first logged (\S+) -> last (\S+)", result.stdout).groups())
    assert 0 < last <= first < 1  # 125 updates: the temperature fell from its initial 1
    for row in ("success rate", "return mean", "final distance mean (m)"):
        assert re.search(rf"{re.escape(row)}\s+\|\s+-?\d+\.\d+ \|\s+[<>]=? -?[\d.]+ \| (PASS|FAIL)", result.stdout)
    assert "evaluated 3 deterministic episodes (seeds 1000000+i)" in result.stdout
    assert ("[PASS] all criteria met" in result.stdout) == (result.returncode == 0)
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"rollout/ep_rew_mean", "rollout/ep_len_mean", "rollout/success_rate", "train/actor_loss",
            "train/critic_loss", "train/ent_coef", "train/ent_coef_loss", "time/fps"} <= tags
    assert accumulator.Scalars("rollout/ep_len_mean")[-1].value == 50.0  # Fetch truncates at 50 steps
