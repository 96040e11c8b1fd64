#!/usr/bin/env python3
"""SAC from scratch -- the chapter 3 lab (Part 2.5, "BUILD IT").

What Stable-Baselines3 does inside `SAC.learn`, with every tensor operation visible. Reads top to
bottom like CleanRL's single-file `sac_continuous_action.py`: networks -> replay buffer -> losses ->
update -> training loop -> the modes. Depends only on torch, numpy and gymnasium; SB3 is imported only
inside `--compare-sb3`, gymnasium_robotics only inside `--fetch`. For understanding, not production.

Sources: Haarnoja et al. 2018, "Soft Actor-Critic: Off-Policy Maximum Entropy Deep Reinforcement
Learning with a Stochastic Actor" (arXiv:1801.01290) for the soft Bellman target, the reparameterised
actor loss and the tanh squashing (its Appendix C); Haarnoja et al. 2018, "Soft Actor-Critic Algorithms
and Applications" (arXiv:1812.05905) for twin critics and the automatic temperature (its section 5).

Usage:
    python scripts/labs/sac_from_scratch.py --verify                 # section 2.5.8 sanity checks
    python scripts/labs/sac_from_scratch.py --compare-sb3            # log-prob, target, one update vs SB3
    python scripts/labs/sac_from_scratch.py --demo [--seed 0]        # Pendulum-v1 until last-10 mean > -200
    python scripts/labs/sac_from_scratch.py --demo --record          # ... and videos/sac_pendulum_demo.gif
    python scripts/labs/sac_from_scratch.py --fetch [--total-steps N]  # FetchReachDense-v4, 100-episode eval

Snippet regions included by the chapter (`--8<-- "scripts/labs/sac_from_scratch.py:NAME"`):
gaussian_policy, twin_q_network, replay_buffer, twin_q_loss, actor_loss, temperature_loss, sac_update,
sac_training_loop.

Gymnasium 1.x vector envs autoreset in `NEXT_STEP` mode by default: the step *after* an episode ends
returns the reset observation and ignores the action. This lab builds its vector envs in `SAME_STEP`
mode (the true last observation is in `infos["final_obs"]`) and refuses any other mode, so that every
stored transition is real. Fetch never terminates, it truncates at 50 steps: a truncated transition is
stored with done = 0 and its true final observation, so the target bootstraps through the time limit.

The differences from SB3's SAC (2.x, `MlpPolicy` / `MultiInputPolicy`, defaults) -- the bridge:

| Aspect             | This lab                                       | SB3 SAC                                          |
|--------------------|------------------------------------------------|--------------------------------------------------|
| Networks           | actor: 2x256 ReLU trunk, mean and log-std      | same (net_arch [256, 256], no orthogonal init,   |
|                    | heads, log-std clamped to [-20, 2]; critics:   | separate feature extractors)                     |
|                    | two 2x256 ReLU MLPs on concat(s, a)            |                                                  |
| Squash correction  | log(1 - tanh(u)^2 + 1e-6), summed over dims    | same (SquashedDiagGaussianDistribution,          |
|                    | (the original SAC code's epsilon form)         | epsilon=1e-6)                                    |
| Update order       | sample a ~ pi(.|s) once; temperature step;     | same (`SAC.train`)                               |
|                    | critic step; actor step with the updated       |                                                  |
|                    | critic; Polyak                                 |                                                  |
| Temperature loss   | -(log_alpha * (log pi + H_target)).mean():     | same (softlearning's form; the paper's           |
|                    | gradient w.r.t. log alpha, init alpha = 1      | -alpha * (...) differs by a factor alpha)        |
| alpha in losses    | exp(log_alpha) before this step's update       | same                                             |
| Critic loss        | 0.5 * (MSE(Q1, y) + MSE(Q2, y))                | same                                             |
| Target network     | Polyak after every gradient step, tau 0.005    | same (target_update_interval=1)                  |
| Warm-up            | uniform actions in [-1, 1] while steps <       | action_space.sample(), then scaled; same timing  |
|                    | learning_starts; updates once steps > it       |                                                  |
| Replay buffer      | one flat circular array, uniform indices from  | [buffer_size / n_envs, n_envs] arrays, a random  |
|                    | a seeded numpy Generator                       | row and env (same distribution, other stream)    |
| Truncation         | done = terminated, next_obs = final_obs        | done * (1 - timeout), next_obs = terminal obs    |
| Fetch observation  | observation, achieved_goal, desired_goal       | Dict space's sorted key order: achieved_goal,    |
|                    | concatenated                                   | desired_goal, observation                        |
| Logging            | every log_interval steps; train/* = mean over  | every 4 episodes; train/* = the last train()     |
|                    | the updates since the last log                 | call (one gradient step)                         |
| Episode statistics | last 100 episodes (demo: last 10)              | last 100 episodes (`stats_window_size`)          |
| Vector env         | gymnasium SyncVectorEnv, SAME_STEP autoreset   | SB3 DummyVecEnv (resets in the same step)        |
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from torch.distributions import Normal
from tqdm import tqdm

# TensorBoard tags, exactly as SB3 logs them, so the lab's curves overlay SB3's.
EP_REW_MEAN = "rollout/ep_rew_mean"
EP_LEN_MEAN = "rollout/ep_len_mean"
SUCCESS_RATE = "rollout/success_rate"
ACTOR_LOSS = "train/actor_loss"
CRITIC_LOSS = "train/critic_loss"
ENT_COEF = "train/ent_coef"
ENT_COEF_LOSS = "train/ent_coef_loss"
FPS = "time/fps"

FETCH_ENV_ID = "FetchReachDense-v4"
FETCH_OBS_KEYS = ("observation", "achieved_goal", "desired_goal")  # the chapter's order
PENDULUM_ENV_ID = "Pendulum-v1"
PENDULUM_SOLVED = -200.0
DEFAULT_GIF = Path("videos/sac_pendulum_demo.gif")
EVAL_SEED_OFFSET = 1_000_000
SQUASH_EPS = 1e-6  # SB3's SquashedDiagGaussianDistribution(epsilon=1e-6), from the original SAC code


@dataclass(frozen=True)
class SACConfig:
    """Hyper-parameters of one training run (SB3's names; defaults are the chapter's Fetch settings)."""

    n_envs: int = 8
    """parallel environments in the vector env"""
    buffer_size: int = 1_000_000
    """replay buffer capacity in transitions (the oldest are overwritten)"""
    learning_starts: int = 10_000
    """env steps of uniform random actions before the first update"""
    batch_size: int = 256
    """transitions per gradient step, sampled uniformly from the buffer"""
    learning_rate: float = 3e-4
    """Adam step size of actor, critics and temperature (constant)"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak coefficient: target <- (1 - tau) * target + tau * online"""
    train_freq: int = 1
    """vector-env steps between two rounds of updates (1 vector step = n_envs transitions)"""
    gradient_steps: int = 1
    """gradient steps per round of updates"""
    ent_coef: str = "auto"
    """temperature alpha: "auto" learns it from 1.0, "auto_0.1" from 0.1, "0.2" fixes it"""
    target_entropy: float | None = None
    """entropy the temperature steers towards; None = -dim(A) (SB3's target_entropy="auto")"""
    hidden_dim: int = 256
    """width of the two ReLU layers of actor and critics"""
    total_timesteps: int = 500_000
    """environment steps to train for (rounded up to whole vector steps)"""
    stats_window_size: int = 100
    """episodes averaged for rollout/ep_rew_mean and rollout/success_rate"""
    log_interval: int = 2_000
    """env steps between two log rows (callback calls)"""
    seed: int = 0
    """seed of torch, the env resets, the warm-up actions and the buffer's sampling"""

    def __post_init__(self) -> None:
        positive = ("n_envs", "buffer_size", "batch_size", "train_freq", "gradient_steps", "hidden_dim",
                    "total_timesteps", "stats_window_size", "log_interval")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"SACConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("gamma", "tau"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SACConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.learning_starts < 0 or self.seed < 0:
            raise ValueError("SACConfig: learning_rate must be > 0, learning_starts and seed >= 0")
        if self.buffer_size < self.n_envs:
            raise ValueError(f"SACConfig.buffer_size {self.buffer_size} must hold one vector step ({self.n_envs})")
        _ = self.ent_coef_init  # parse now: a malformed ent_coef fails at construction

    @property
    def learn_ent_coef(self) -> bool:
        """True when the temperature is learned ("auto" or "auto_<init>")."""
        return self.ent_coef.startswith("auto")

    @property
    def ent_coef_init(self) -> float:
        """Initial (or fixed) alpha: 1.0 for "auto", X for "auto_X" or "X"."""
        if self.ent_coef == "auto":
            return 1.0
        try:
            value = float(self.ent_coef.removeprefix("auto_"))
        except ValueError:
            raise ValueError(f"SACConfig.ent_coef must be 'auto', 'auto_<float>' or a float, "
                             f"got {self.ent_coef!r}") from None
        if not value > 0:
            raise ValueError(f"SACConfig.ent_coef must be > 0, got {self.ent_coef!r}")
        return value


# =============================================================================
# Networks
# =============================================================================

def mlp(in_dim: int, hidden_dim: int, out_dim: int | None = None) -> nn.Sequential:
    """Linear-ReLU-Linear-ReLU [-> Linear(out_dim)], PyTorch's default initialisation (as SB3's SAC)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
    if out_dim is not None:
        layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


# --8<-- [start:gaussian_policy]
def squashed_gaussian_log_prob(
    dist: Normal, u: torch.Tensor, action: torch.Tensor | None = None, eps: float = SQUASH_EPS
) -> torch.Tensor:
    """log pi(a|s) of a = tanh(u), u ~ dist = N(mean, std^2). u, action: [batch, act_dim] -> [batch].

    Change of variables (SAC paper, Appendix C): da_i/du_i = 1 - tanh(u_i)^2, so
        log pi(a|s) = sum_i [ log N(u_i; mean_i, std_i) - log(1 - tanh(u_i)^2) ].
    Like SB3 (and the original SAC code) we add eps = 1e-6 inside the log so a saturated tanh
    (1 - a^2 rounds to 0 in float32) gives a finite value. The exact, numerically stable form is
    log(1 - tanh(u)^2) = 2 * (log 2 - u - softplus(-2u)) (Spinning Up); it differs from ours by
    about eps / (1 - a^2) per dimension, so we keep SB3's form and `--compare-sb3` can match to 1e-6.
    action = tanh(u) when the caller already has it (one tanh node in the graph, as SB3).
    """
    if action is None:
        action = torch.tanh(u)
    return dist.log_prob(u).sum(dim=-1) - torch.log(1 - action**2 + eps).sum(dim=-1)


class GaussianPolicy(nn.Module):
    """Squashed Gaussian actor pi_theta(a|s).

        obs [batch, obs_dim] -> latent_pi (Linear-ReLU-Linear-ReLU) -> mu      -> mean    [batch, act_dim]
                                                                    -> log_std -> log std [batch, act_dim]
        u = mean + std * noise (reparameterised), a = tanh(u) in (-1, 1)^act_dim
    Unlike PPO's state-independent log-std, SAC's exploration noise depends on the state.
    """

    LOG_STD_MIN = -20.0  # SB3's (and the SAC code's) clamp: std in [2e-9, 7.4]
    LOG_STD_MAX = 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.latent_pi = mlp(obs_dim, hidden_dim)  # SB3's attribute names: state dicts load both ways
        self.mu = nn.Linear(hidden_dim, act_dim)
        self.log_std = nn.Linear(hidden_dim, act_dim)

    def distribution_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [batch, obs_dim] -> (mean, log_std), each [batch, act_dim]; log_std clamped to [-20, 2]."""
        latent = self.latent_pi(obs)
        log_std = torch.clamp(self.log_std(latent), self.LOG_STD_MIN, self.LOG_STD_MAX)
        return self.mu(latent), log_std

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample a ~ pi(.|s): obs [batch, obs_dim] -> (action [batch, act_dim], log_prob [batch]).

        rsample keeps the sample differentiable w.r.t. theta (the reparameterisation trick), which the
        actor loss needs: its gradient flows through the action into Q.
        """
        mean, log_std = self.distribution_params(obs)
        dist = Normal(mean, log_std.exp())
        u = dist.rsample()  # u = mean + std * noise, noise ~ N(0, I)
        action = torch.tanh(u)
        return action, squashed_gaussian_log_prob(dist, u, action)

    def deterministic_action(self, obs: torch.Tensor) -> torch.Tensor:
        """tanh(mean): the evaluation action (SB3's deterministic=True). [batch, obs_dim] -> [batch, act_dim]."""
        mean, _ = self.distribution_params(obs)
        return torch.tanh(mean)
# --8<-- [end:gaussian_policy]


# --8<-- [start:twin_q_network]
class TwinQNetwork(nn.Module):
    """Two independent critics Q_phi1(s, a), Q_phi2(s, a) (clipped double Q, Fujimoto et al. 2018).

        concat(obs [batch, obs_dim], action [batch, act_dim]) -> Linear-ReLU-Linear-ReLU-Linear -> [batch]
    Taking the minimum of two estimates in the target counters the overestimation a max (or a
    policy chasing the critic's errors) builds up.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.q1 = mlp(obs_dim + act_dim, hidden_dim, 1)
        self.q2 = mlp(obs_dim + act_dim, hidden_dim, 1)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(obs [batch, obs_dim], action [batch, act_dim] in [-1, 1]) -> (q1 [batch], q2 [batch])."""
        x = torch.cat([obs, action], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)
# --8<-- [end:twin_q_network]


# =============================================================================
# Replay buffer
# =============================================================================

# --8<-- [start:replay_buffer]
class ReplayBatch(TypedDict):
    """A uniform sample of transitions (s, a, r, s', d)."""

    obs: torch.Tensor  # [batch, obs_dim] float32, s
    actions: torch.Tensor  # [batch, act_dim] float32, a in [-1, 1] (the policy's scale)
    rewards: torch.Tensor  # [batch] float32, r
    next_obs: torch.Tensor  # [batch, obs_dim] float32, s' (the true last obs when the episode ended)
    dones: torch.Tensor  # [batch] float32, 1.0 only for a real termination (no bootstrap)


class ReplayBuffer:
    """Circular buffer of the last `capacity` transitions; off-policy SAC reuses each one many times.

    PPO discards its rollout after each update; SAC stores every transition and samples uniformly,
    so a transition collected by an old policy still trains the critic (the soft Bellman target only
    needs (s, a, r, s'), not the policy that chose a).
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int = 1_000_000, seed: int = 0) -> None:
        self.obs_dim, self.act_dim, self.capacity = obs_dim, act_dim, capacity
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.actions = np.zeros((capacity, act_dim), dtype=np.float32)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.dones = np.zeros(capacity, dtype=np.float32)
        self.ptr = 0  # next slot to write
        self.size = 0  # filled slots
        self.rng = np.random.default_rng(seed)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: Any, next_obs: np.ndarray, done: Any) -> None:
        """Store n transitions: obs, next_obs [n, obs_dim] or [obs_dim]; action [n, act_dim] or [act_dim];
        reward, done [n] or scalars. done = 1 only when the episode *terminated*: a time-limit
        truncation is stored with done = 0 and its true final observation, so the target bootstraps.
        """
        obs = np.asarray(obs, dtype=np.float32).reshape(-1, self.obs_dim)
        n = obs.shape[0]
        if n > self.capacity:
            raise ValueError(f"cannot add {n} transitions to a buffer of capacity {self.capacity}")
        idx = (self.ptr + np.arange(n)) % self.capacity  # wraps around: the oldest are overwritten
        self.obs[idx] = obs
        self.actions[idx] = np.asarray(action, dtype=np.float32).reshape(n, self.act_dim)
        self.rewards[idx] = np.asarray(reward, dtype=np.float32).reshape(n)
        self.next_obs[idx] = np.asarray(next_obs, dtype=np.float32).reshape(n, self.obs_dim)
        self.dones[idx] = np.asarray(done, dtype=np.float32).reshape(n)
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> ReplayBatch:
        """batch_size transitions drawn uniformly with replacement from the filled part."""
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        idx = self.rng.integers(0, self.size, size=batch_size)
        return ReplayBatch(
            obs=torch.from_numpy(self.obs[idx]),
            actions=torch.from_numpy(self.actions[idx]),
            rewards=torch.from_numpy(self.rewards[idx]),
            next_obs=torch.from_numpy(self.next_obs[idx]),
            dones=torch.from_numpy(self.dones[idx]),
        )
# --8<-- [end:replay_buffer]


# =============================================================================
# Losses
# =============================================================================

# --8<-- [start:twin_q_loss]
def compute_q_target(
    rewards: torch.Tensor,
    dones: torch.Tensor,
    next_q1: torch.Tensor,
    next_q2: torch.Tensor,
    next_log_probs: torch.Tensor,
    alpha: torch.Tensor | float,
    gamma: float = 0.99,
) -> torch.Tensor:
    """Soft Bellman target y = r + gamma * (1 - d) * (min(Q1'(s', a'), Q2'(s', a')) - alpha * log pi(a'|s')).

    All tensors [batch]; a' ~ pi(.|s') is a fresh sample of the *current* policy, Q' the target
    critics. The -alpha * log pi term is the entropy bonus of the next state: a state where the
    policy can stay random is worth more.
    """
    soft_next_value = torch.min(next_q1, next_q2) - alpha * next_log_probs
    return rewards + (1 - dones) * gamma * soft_next_value


def compute_twin_q_loss(
    q_network: TwinQNetwork,
    target_q_network: TwinQNetwork,
    policy: GaussianPolicy,
    batch: ReplayBatch,
    alpha: torch.Tensor | float,
    gamma: float = 0.99,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Critic loss 0.5 * (E[(Q1(s, a) - y)^2] + E[(Q2(s, a) - y)^2]), y held fixed (no gradient).

    Returns (loss to minimise, info). Draws one sample a' ~ pi(.|s') from torch's global generator.
    """
    with torch.no_grad():
        next_actions, next_log_probs = policy(batch["next_obs"])
        next_q1, next_q2 = target_q_network(batch["next_obs"], next_actions)
        target = compute_q_target(batch["rewards"], batch["dones"], next_q1, next_q2, next_log_probs, alpha, gamma)
    q1, q2 = q_network(batch["obs"], batch["actions"])
    critic_loss = 0.5 * (F.mse_loss(q1, target) + F.mse_loss(q2, target))
    info = {
        "critic_loss": critic_loss.item(),
        "q1_mean": q1.mean().item(),
        "q2_mean": q2.mean().item(),
        "target_q_mean": target.mean().item(),
    }
    return critic_loss, info
# --8<-- [end:twin_q_loss]


# --8<-- [start:actor_loss]
def compute_actor_loss(
    q_network: TwinQNetwork,
    obs: torch.Tensor,
    actions_pi: torch.Tensor,
    log_probs_pi: torch.Tensor,
    alpha: torch.Tensor | float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Actor loss E[alpha * log pi(a|s) - min(Q1(s, a), Q2(s, a))], a = tanh(u) ~ pi(.|s) reparameterised.

    obs [batch, obs_dim]; actions_pi [batch, act_dim] and log_probs_pi [batch] from `policy(obs)`, still
    attached to the policy's graph: the gradient reaches theta through log pi and through Q's input a.
    Minimising it raises Q (better actions) and entropy -E[log pi] (exploration), weighed by alpha.
    """
    q1_pi, q2_pi = q_network(obs, actions_pi)
    actor_loss = (alpha * log_probs_pi - torch.min(q1_pi, q2_pi)).mean()
    info = {
        "actor_loss": actor_loss.item(),
        "entropy": -log_probs_pi.mean().item(),  # H[pi] estimated as -E[log pi]
    }
    return actor_loss, info
# --8<-- [end:actor_loss]


# --8<-- [start:temperature_loss]
def compute_temperature_loss(
    log_alpha: torch.Tensor, log_probs: torch.Tensor, target_entropy: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Temperature loss -E[log_alpha * (log pi(a|s) + H_target)], gradient w.r.t. log_alpha only.

    log_alpha [1] (alpha = exp(log_alpha) > 0 for free); log_probs [batch]; target_entropy H_target,
    typically -dim(A). When the entropy -E[log pi] is below H_target, (log pi + H_target) > 0, the
    gradient w.r.t. log_alpha is negative, so gradient descent *raises* alpha (more exploration); above
    the target, alpha falls. ("SAC Algorithms and Applications", eq. 18, optimised in log alpha as
    softlearning and SB3 do: same fixed point, gradient divided by alpha.)
    """
    ent_coef_loss = -(log_alpha * (log_probs + target_entropy).detach()).mean()
    return ent_coef_loss, {"ent_coef_loss": ent_coef_loss.item()}
# --8<-- [end:temperature_loss]


# =============================================================================
# Update
# =============================================================================

# --8<-- [start:sac_update]
@dataclass
class SACAgent:
    """Everything one SAC update reads and changes."""

    policy: GaussianPolicy  # pi_theta
    q_network: TwinQNetwork  # Q_phi1, Q_phi2
    target_q_network: TwinQNetwork  # Q_phi1', Q_phi2': Polyak copies, never trained by gradients
    log_alpha: torch.Tensor  # [1], log of the temperature alpha
    policy_optimizer: torch.optim.Optimizer
    q_optimizer: torch.optim.Optimizer
    alpha_optimizer: torch.optim.Optimizer | None  # None: alpha stays fixed
    target_entropy: float  # H_target, -dim(A) by default


def polyak_update(params: Any, target_params: Any, tau: float) -> None:
    """target <- (1 - tau) * target + tau * online, in place, for each pair of parameter tensors."""
    with torch.no_grad():
        for param, target_param in zip(params, target_params, strict=True):
            target_param.mul_(1 - tau)
            target_param.add_(param, alpha=tau)


def sac_update(agent: SACAgent, batch: ReplayBatch, gamma: float = 0.99, tau: float = 0.005) -> dict[str, float]:
    """One gradient step on temperature, critics and actor, then the Polyak update (SB3's order).

    Draws a ~ pi(.|s) first and a' ~ pi(.|s') second from torch's global generator. Returns the
    diagnostics under SB3's names (critic_loss, actor_loss, ent_coef, ent_coef_loss) plus q/entropy.
    """
    # 1. Sample a ~ pi(.|s) once: the temperature and actor losses both use it
    actions_pi, log_probs_pi = agent.policy(batch["obs"])

    # 2. Temperature: alpha for this step's losses is the value *before* its update, detached
    alpha = agent.log_alpha.detach().exp()
    info: dict[str, float] = {"ent_coef": alpha.item()}
    if agent.alpha_optimizer is not None:
        ent_coef_loss, alpha_info = compute_temperature_loss(agent.log_alpha, log_probs_pi, agent.target_entropy)
        agent.alpha_optimizer.zero_grad()
        ent_coef_loss.backward()
        agent.alpha_optimizer.step()
        info.update(alpha_info)

    # 3. Critics: regress both Q1 and Q2 on the soft Bellman target
    critic_loss, critic_info = compute_twin_q_loss(agent.q_network, agent.target_q_network, agent.policy, batch,
                                                   alpha, gamma)
    agent.q_optimizer.zero_grad()
    critic_loss.backward()
    agent.q_optimizer.step()

    # 4. Actor: maximise min Q - alpha * log pi under the just-updated critics
    actor_loss, actor_info = compute_actor_loss(agent.q_network, batch["obs"], actions_pi, log_probs_pi, alpha)
    agent.policy_optimizer.zero_grad()
    actor_loss.backward()  # also leaves gradients in the critics; q_optimizer.zero_grad() clears them
    agent.policy_optimizer.step()

    # 5. Target critics slowly track the online ones (a moving but stable regression target)
    polyak_update(agent.q_network.parameters(), agent.target_q_network.parameters(), tau)
    return {**info, **critic_info, **actor_info}
# --8<-- [end:sac_update]


def make_agent(obs_dim: int, act_dim: int, cfg: SACConfig) -> SACAgent:
    """Fresh networks (torch's global seed decides the weights), target = copy of the critics, Adam x3."""
    policy = GaussianPolicy(obs_dim, act_dim, cfg.hidden_dim)
    q_network = TwinQNetwork(obs_dim, act_dim, cfg.hidden_dim)
    target_q_network = copy.deepcopy(q_network).requires_grad_(False)
    log_alpha = torch.log(torch.ones(1) * cfg.ent_coef_init).requires_grad_(cfg.learn_ent_coef)
    return SACAgent(
        policy=policy,
        q_network=q_network,
        target_q_network=target_q_network,
        log_alpha=log_alpha,
        policy_optimizer=torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate),
        q_optimizer=torch.optim.Adam(q_network.parameters(), lr=cfg.learning_rate),
        alpha_optimizer=torch.optim.Adam([log_alpha], lr=cfg.learning_rate) if cfg.learn_ent_coef else None,
        target_entropy=float(-act_dim) if cfg.target_entropy is None else cfg.target_entropy,
    )


# =============================================================================
# Environments
# =============================================================================

def flatten_goal_obs(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Fetch's dict observation -> [16] float32: observation (10), achieved_goal (3), desired_goal (3)."""
    return np.concatenate([np.asarray(obs[key], dtype=np.float32).reshape(-1) for key in FETCH_OBS_KEYS])


class FlattenGoalObservation(gym.ObservationWrapper):
    """Goal-conditioned input x = (s, g) as one vector, in the chapter's key order."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        assert isinstance(env.observation_space, gym.spaces.Dict), "FlattenGoalObservation needs a Dict space"
        size = sum(box(env.observation_space[key]).shape[0] for key in FETCH_OBS_KEYS)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)

    def observation(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return flatten_goal_obs(observation)


def make_pendulum() -> gym.Env:
    """Pendulum-v1: swing up and balance; torque in [-2, 2]; never terminates, truncates at 200 steps."""
    return gym.make(PENDULUM_ENV_ID)


def make_fetch_reach() -> gym.Env:
    """FetchReachDense-v4 with its dict observation. Fetch never terminates: it truncates at 50 steps."""
    import gymnasium_robotics  # only the --fetch mode needs MuJoCo

    gym.register_envs(gymnasium_robotics)
    return gym.make(FETCH_ENV_ID)


def make_vector_env(env_fn: Callable[[], gym.Env], n_envs: int) -> SyncVectorEnv:
    """n_envs copies in one process, autoreset in SAME_STEP mode (final obs in infos["final_obs"])."""
    return SyncVectorEnv([env_fn] * n_envs, autoreset_mode=AutoresetMode.SAME_STEP)


def box(space: gym.Space) -> gym.spaces.Box:
    """The space as a flat Box (SAC's networks take and give vectors); ValueError for anything else."""
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"this lab needs flat Box observation and action spaces, got {space}")
    return space


def pendulum_angle(env: gym.Env) -> float:
    """theta of a Pendulum-v1 env (0 = upright), from its physical state (the observation is cos, sin)."""
    return float(env.unwrapped.state[0])  # type: ignore[attr-defined]


def unscale_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """[-1, 1] (tanh's range) -> [low, high], as SB3's `policy.unscale_action`. Shapes [..., act_dim]."""
    return low + 0.5 * (action + 1.0) * (high - low)


# =============================================================================
# Training loop
# =============================================================================

class EpisodeStats:
    """Undiscounted episode returns, lengths and successes over the last `window` episodes."""

    def __init__(self, n_envs: int, window: int) -> None:
        self.running_return = np.zeros(n_envs)
        self.running_length = np.zeros(n_envs, dtype=np.int64)
        self.returns: deque[float] = deque(maxlen=window)
        self.lengths: deque[int] = deque(maxlen=window)
        self.successes: deque[float] = deque(maxlen=window)
        self.n_episodes = 0

    def update(self, rewards: np.ndarray, dones: np.ndarray, infos: dict[str, Any]) -> None:
        """rewards, dones: [n_envs] of one vector step; infos: SAME_STEP infos."""
        self.running_return += rewards
        self.running_length += 1
        final_info = infos.get("final_info", {})
        for i in np.flatnonzero(dones):
            self.returns.append(float(self.running_return[i]))
            self.lengths.append(int(self.running_length[i]))
            if "is_success" in final_info and final_info["_is_success"][i]:
                self.successes.append(float(final_info["is_success"][i]))  # info of the last step
            self.running_return[i] = 0.0
            self.running_length[i] = 0
            self.n_episodes += 1

    @staticmethod
    def mean(values: deque[float] | deque[int]) -> float:
        return float(np.mean(values)) if values else float("nan")


@dataclass(frozen=True)
class LogStats:
    """What one log row holds; names mirror SB3's tags. train/* are means since the previous row."""

    timesteps: int
    seconds: float
    ep_rew_mean: float
    ep_len_mean: float
    success_rate: float
    n_episodes: int
    n_updates: int
    actor_loss: float
    critic_loss: float
    ent_coef: float
    ent_coef_loss: float
    fps: int

    @classmethod
    def collect(cls, timesteps: int, seconds: float, stats: EpisodeStats, history: dict[str, list[float]],
                n_updates: int) -> LogStats:
        """A row from the episode window and the per-update diagnostics since the last row (NaN if none)."""
        means = {key: float(np.mean(values)) for key, values in history.items()}
        nan = float("nan")
        return cls(
            timesteps=timesteps, seconds=seconds, ep_rew_mean=stats.mean(stats.returns),
            ep_len_mean=stats.mean(stats.lengths), success_rate=stats.mean(stats.successes),
            n_episodes=stats.n_episodes, n_updates=n_updates, actor_loss=means.get("actor_loss", nan),
            critic_loss=means.get("critic_loss", nan), ent_coef=means.get("ent_coef", nan),
            ent_coef_loss=means.get("ent_coef_loss", nan), fps=int(timesteps / seconds),
        )

    def tags(self) -> dict[str, float]:
        """TensorBoard tag -> value; NaN entries (no episode or no update yet) are left out."""
        tags = {
            EP_REW_MEAN: self.ep_rew_mean, EP_LEN_MEAN: self.ep_len_mean, SUCCESS_RATE: self.success_rate,
            ACTOR_LOSS: self.actor_loss, CRITIC_LOSS: self.critic_loss, ENT_COEF: self.ent_coef,
            ENT_COEF_LOSS: self.ent_coef_loss, FPS: float(self.fps),
        }  # no train/n_updates: SB3 keeps it out of TensorBoard too
        return {tag: value for tag, value in tags.items() if not np.isnan(value)}


class TrainResult(NamedTuple):
    """What `train` hands back."""

    agent: SACAgent
    buffer: ReplayBuffer  # every stored transition (the chapter's checkpoints look inside)
    timesteps: int  # environment steps taken


# --8<-- [start:sac_training_loop]
def final_observations(next_obs: np.ndarray, infos: dict[str, Any], dones: np.ndarray) -> np.ndarray:
    """[n_envs, obs_dim] s' of each transition: next_obs, except the true last observation where an
    episode ended (SAME_STEP autoreset already put the reset observation in next_obs)."""
    real_next_obs = next_obs.copy()
    for i in np.flatnonzero(dones):
        real_next_obs[i] = infos["final_obs"][i]
    return real_next_obs


def select_actions(agent: SACAgent, obs: np.ndarray, warmup: bool, rng: np.random.Generator) -> np.ndarray:
    """obs [n_envs, obs_dim] -> actions [n_envs, act_dim] in [-1, 1]: uniform during the warm-up, else a ~ pi(.|s)."""
    if warmup:
        return rng.uniform(-1.0, 1.0, size=(obs.shape[0], agent.policy.mu.out_features)).astype(np.float32)
    with torch.no_grad():
        actions, _ = agent.policy(torch.as_tensor(obs, dtype=torch.float32))
    return actions.numpy()


def check_vector_env(envs: gym.vector.VectorEnv, cfg: SACConfig) -> tuple[int, gym.spaces.Box]:
    """(obs_dim, action space) of a vector env train() can use; ValueError with the fix otherwise."""
    if envs.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
        raise ValueError("train needs a vector env with autoreset_mode=AutoresetMode.SAME_STEP "
                         "(NEXT_STEP would store a reset step with an ignored action); use make_vector_env")
    if envs.num_envs != cfg.n_envs:
        raise ValueError(f"the vector env has {envs.num_envs} envs but cfg.n_envs is {cfg.n_envs}")
    return box(envs.single_observation_space).shape[0], box(envs.single_action_space)


def train(
    envs: gym.vector.VectorEnv,
    cfg: SACConfig,
    *,
    callback: Callable[[LogStats], bool] | None = None,
    logdir: str | Path | None = None,
) -> TrainResult:
    """SAC: act -> store -> sample a batch -> sac_update (gradient_steps every train_freq vector steps),
    until cfg.total_timesteps. callback gets a LogStats every cfg.log_interval env steps; False stops training.
    """
    obs_dim, action_space = check_vector_env(envs, cfg)
    act_dim = action_space.shape[0]
    torch.manual_seed(cfg.seed)
    agent = make_agent(obs_dim, act_dim, cfg)
    buffer = ReplayBuffer(obs_dim, act_dim, cfg.buffer_size, seed=cfg.seed)
    warmup_rng = np.random.default_rng(cfg.seed)
    low, high = action_space.low, action_space.high
    writer = None
    if logdir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(logdir))
    stats = EpisodeStats(envs.num_envs, cfg.stats_window_size)
    history: dict[str, list[float]] = {}
    obs, _ = envs.reset(seed=cfg.seed)
    timesteps, vector_steps, n_updates, next_log, start = 0, 0, 0, cfg.log_interval, time.perf_counter()
    while timesteps < cfg.total_timesteps:
        # 1. Act: uniform random actions during warm-up (SB3's learning_starts), then a ~ pi(.|s)
        actions = select_actions(agent, obs, timesteps < cfg.learning_starts, warmup_rng)
        # 2. Step: the env gets the action rescaled from [-1, 1] to its bounds; the buffer keeps [-1, 1]
        next_obs, rewards, terminated, truncated, infos = envs.step(unscale_action(actions, low, high))
        dones = np.logical_or(terminated, truncated)
        # 3. Store: done = terminated only -- a truncated episode bootstraps from its true final obs
        buffer.add(obs, actions, rewards, final_observations(next_obs, infos, dones), terminated)
        stats.update(rewards, dones, infos)
        obs = next_obs
        timesteps += envs.num_envs
        vector_steps += 1
        # 4. Learn: gradient_steps updates per train_freq vector steps, once past the warm-up
        if timesteps > cfg.learning_starts and vector_steps % cfg.train_freq == 0:
            for _ in range(cfg.gradient_steps):
                info = sac_update(agent, buffer.sample(cfg.batch_size), cfg.gamma, cfg.tau)
                n_updates += 1
                for key, value in info.items():
                    history.setdefault(key, []).append(value)
        # 5. Log
        if timesteps >= next_log or timesteps >= cfg.total_timesteps:
            next_log += cfg.log_interval
            row = LogStats.collect(timesteps, time.perf_counter() - start, stats, history, n_updates)
            history.clear()
            if writer is not None:
                for tag, value in row.tags().items():
                    writer.add_scalar(tag, value, timesteps)
            if callback is not None and callback(row) is False:
                break
    if writer is not None:
        writer.close()
    return TrainResult(agent, buffer, timesteps)
# --8<-- [end:sac_training_loop]


# =============================================================================
# --verify: the chapter's checkpoints as checks that can fail
# =============================================================================

def check(condition: bool, message: str) -> bool:
    """Print `[FAIL] message` when condition is false; return condition."""
    if not condition:
        print(f"  [FAIL] {message}")
    return bool(condition)


def verify_shapes() -> bool:
    """Policy, twin critics and replay buffer: shapes, bounds, wrap-around."""
    print("Verifying shapes...")
    obs_dim, act_dim, batch_size = 10, 4, 32
    policy, q_network = GaussianPolicy(obs_dim, act_dim), TwinQNetwork(obs_dim, act_dim)
    obs = torch.randn(batch_size, obs_dim)
    actions, log_probs = policy(obs)
    q1, q2 = q_network(obs, actions)
    buffer = ReplayBuffer(obs_dim, act_dim, capacity=100)
    for i in range(130):  # 30 more than fit: the first 30 are overwritten
        buffer.add(np.full(obs_dim, i), np.zeros(act_dim), -0.5, np.full(obs_dim, i + 1), False)
    batch = buffer.sample(batch_size)
    print(f"  Policy: actions {list(actions.shape)} in [{actions.min():.2f}, {actions.max():.2f}], "
          f"log_probs {list(log_probs.shape)}, mean {log_probs.mean():.4f}")
    print(f"  Twin Q: q1 {list(q1.shape)} mean {q1.mean():.4f}, q2 {list(q2.shape)} mean {q2.mean():.4f}")
    print(f"  Replay buffer: size {buffer.size}/{buffer.capacity}, sample obs {list(batch['obs'].shape)}, "
          f"actions {list(batch['actions'].shape)}, rewards {list(batch['rewards'].shape)}")
    ok = check(actions.shape == (batch_size, act_dim), f"actions shape {tuple(actions.shape)}")
    ok &= check(bool((actions.abs() < 1.0).all()), "actions outside (-1, 1): tanh squashing missing")
    ok &= check(log_probs.shape == (batch_size,), f"log_probs shape {tuple(log_probs.shape)} != ({batch_size},)")
    ok &= check(bool(torch.isfinite(log_probs).all()), "log_probs contain NaN/Inf")
    ok &= check(q1.shape == q2.shape == (batch_size,), f"q shapes {tuple(q1.shape)}, {tuple(q2.shape)}")
    ok &= check(batch["obs"].shape == batch["next_obs"].shape == (batch_size, obs_dim), "sampled obs shape")
    ok &= check(batch["rewards"].shape == batch["dones"].shape == (batch_size,), "sampled rewards/dones shape")
    ok &= check(buffer.size == 100 and int(buffer.obs[:, 0].min()) == 30, "buffer did not overwrite the oldest")
    ok &= check(bool((batch["next_obs"] == batch["obs"] + 1).all()), "sampled (s, s') pairs are mixed up")
    if ok:
        print("  [PASS] Shapes OK")
    return ok


def change_of_variables_log_prob(mean: torch.Tensor, log_std: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Reference log density of a = tanh(u) in float64: log N(u) - log|det J|, J = d tanh(u)/du by autograd.

    mean, log_std, u: [batch, act_dim] -> [batch]. No formula for the Jacobian is assumed.
    """
    mean, log_std, u = (t.double() for t in (mean, log_std, u))
    gaussian = Normal(mean, log_std.exp()).log_prob(u).sum(-1)
    log_det = torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(torch.tanh, row))[1]
                           for row in u])
    return gaussian - log_det


def verify_log_prob() -> bool:
    """Squashed-Gaussian log-prob against the change-of-variables formula with an autograd Jacobian."""
    print("Verifying squashed-Gaussian log-prob...")
    mean, log_std = torch.randn(64, 4), 0.5 * torch.randn(64, 4)
    u = mean + log_std.exp() * torch.randn(64, 4)
    u = u.clamp(-3.0, 3.0)  # |u| <= 3: 1 - tanh^2 >= 0.0099, the eps bias stays below 1e-4 per dim
    reference = change_of_variables_log_prob(mean, log_std, u)
    exact = squashed_gaussian_log_prob(Normal(mean.double(), log_std.double().exp()), u.double(), eps=0.0)
    ours = squashed_gaussian_log_prob(Normal(mean, log_std.exp()), u)
    no_correction = Normal(mean, log_std.exp()).log_prob(u).sum(-1)
    exact_diff = (exact - reference).abs().max().item()
    eps_diff = (ours.double() - reference).abs().max().item()
    correction = (ours - no_correction).mean().item()  # -E[sum_i log(1 - tanh(u_i)^2 + eps)] > 0
    print(f"  max |ours(eps=0, float64) - change of variables|: {exact_diff:.2e}")
    print(f"  max |ours(eps=1e-6, float32) - change of variables|: {eps_diff:.2e}")
    print(f"  mean tanh correction -sum_i log(1 - tanh(u_i)^2): {correction:.4f} nats")
    ok = check(exact_diff < 1e-9, f"log-prob (eps=0) differs from the change of variables by {exact_diff:.2e}")
    ok &= check(eps_diff < 1e-3, f"log-prob (eps=1e-6) differs from the change of variables by {eps_diff:.2e}")
    ok &= check(correction > 0.1, "the tanh correction is missing (log-prob equals the Gaussian's)")
    saturated = squashed_gaussian_log_prob(Normal(torch.zeros(1, 1), torch.ones(1, 1)), torch.full((1, 1), 30.0))
    ok &= check(bool(torch.isfinite(saturated).all()), "log-prob of a saturated tanh (u = 30) is not finite")
    if ok:
        print("  [PASS] Log-prob OK")
    return ok


def verify_target() -> bool:
    """Twin-Q target on hand-computed numbers, then inside the critic loss with a terminal batch."""
    print("Verifying twin-Q target...")
    # y = 1 + 0.9 * (min(2, 3) - 0.5 * (-1)) = 3.25 ; terminal: y = r = 1
    y = compute_q_target(torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0]), torch.tensor([2.0, 2.0]),
                         torch.tensor([3.0, 3.0]), torch.tensor([-1.0, -1.0]), alpha=0.5, gamma=0.9)
    print("  y = r + gamma * (1 - d) * (min(Q1', Q2') - alpha * log pi'): "
          f"r=1, gamma=0.9, Q'=(2, 3), alpha=0.5, log pi'=-1 -> {y[0]:.4f} (expected 3.2500); done -> {y[1]:.4f}")
    ok = check(abs(y[0].item() - 3.25) < 1e-6, f"target {y[0].item():.4f} != 3.25 (min over critics, -alpha log pi)")
    ok &= check(abs(y[1].item() - 1.0) < 1e-6, f"terminal target {y[1].item():.4f} != r = 1 (no bootstrap)")
    policy, q_network = GaussianPolicy(6, 2, 32), TwinQNetwork(6, 2, 32)
    batch = ReplayBatch(obs=torch.randn(16, 6), actions=torch.rand(16, 2) * 2 - 1, rewards=torch.randn(16),
                        next_obs=torch.randn(16, 6), dones=torch.ones(16))
    q1, q2 = q_network(batch["obs"], batch["actions"])
    expected = 0.5 * (((q1 - batch["rewards"]) ** 2).mean() + ((q2 - batch["rewards"]) ** 2).mean())
    loss, _ = compute_twin_q_loss(q_network, copy.deepcopy(q_network), policy, batch, alpha=0.2)
    ok &= check(abs(loss.item() - expected.item()) < 1e-5,
                f"critic loss {loss.item():.5f} on terminal transitions != 0.5 * sum of MSE to r ({expected.item():.5f})")
    if ok:
        print("  [PASS] Target OK")
    return ok


def verify_update() -> bool:
    """One sac_update: each loss falls when re-evaluated with the same batch and the same noise.

    sac_update draws a ~ pi(.|s) first and a' ~ pi(.|s') second; reseeding reproduces both draws.
    """
    print("Verifying SAC update...")
    cfg = SACConfig(hidden_dim=64)
    agent = make_agent(8, 2, cfg)
    batch = ReplayBatch(obs=torch.randn(256, 8), actions=torch.rand(256, 2) * 2 - 1,
                        rewards=torch.rand(256) - 1.0, next_obs=torch.randn(256, 8),
                        dones=(torch.rand(256) < 0.1).float())
    with torch.no_grad():  # let the target critics lag the online ones, as they do during training
        for target_param in agent.target_q_network.parameters():
            target_param.add_(0.05 * torch.randn_like(target_param))
    before = copy.deepcopy(agent)
    seed = 1234
    torch.manual_seed(seed)
    info = sac_update(agent, batch, cfg.gamma, cfg.tau)

    def critic_loss(q_network: TwinQNetwork) -> float:
        torch.manual_seed(seed)
        before.policy(batch["obs"])  # draw 1: a ~ pi(.|s)
        loss, _ = compute_twin_q_loss(q_network, before.target_q_network, before.policy, batch,
                                      before.log_alpha.exp().detach(), cfg.gamma)  # draw 2: a' ~ pi(.|s')
        return loss.item()

    def actor_loss(policy: GaussianPolicy) -> float:
        torch.manual_seed(seed)
        actions_pi, log_probs_pi = policy(batch["obs"])  # draw 1, through the new or the old theta
        loss, _ = compute_actor_loss(agent.q_network, batch["obs"], actions_pi, log_probs_pi,
                                     before.log_alpha.exp().detach())
        return loss.item()

    critic_before, critic_after = critic_loss(before.q_network), critic_loss(agent.q_network)
    actor_before, actor_after = actor_loss(before.policy), actor_loss(agent.policy)
    alpha_before, alpha_after = before.log_alpha.exp().item(), agent.log_alpha.exp().item()
    entropy_low = info["entropy"] < agent.target_entropy
    polyak_error = max((t_new - ((1 - cfg.tau) * t_old + cfg.tau * q_new)).abs().max().item()
                       for t_new, t_old, q_new in zip(agent.target_q_network.parameters(),
                                                      before.target_q_network.parameters(),
                                                      agent.q_network.parameters(), strict=True))
    print(f"  Critic loss (same batch, same noise): {critic_before:.4f} -> {critic_after:.4f}")
    print(f"  Actor loss (updated critic, same noise): {actor_before:.4f} -> {actor_after:.4f}")
    print(f"  Entropy {info['entropy']:.3f} vs target {agent.target_entropy:.1f}: "
          f"alpha {alpha_before:.6f} -> {alpha_after:.6f}")
    print(f"  Target critics = (1 - tau) * old + tau * online: max error {polyak_error:.1e}")
    ok = check(all(np.isfinite(v) for v in info.values()), f"non-finite diagnostics: {info}")
    ok &= check(critic_after < critic_before, f"critic loss did not decrease ({critic_before:.5f} -> {critic_after:.5f})")
    ok &= check(actor_after < actor_before, f"actor loss did not decrease ({actor_before:.5f} -> {actor_after:.5f})")
    ok &= check((alpha_after > alpha_before) == entropy_low and alpha_after != alpha_before,
                f"alpha moved the wrong way ({alpha_before:.6f} -> {alpha_after:.6f}) for entropy "
                f"{'below' if entropy_low else 'above'} the target")
    ok &= check(polyak_error < 1e-6, f"target critics are not a Polyak average (error {polyak_error:.1e})")
    if ok:
        print("  [PASS] SAC update OK")
    return ok


def run_verification() -> bool:
    """The chapter's section 2.5.8 output. True when every check passes."""
    torch.manual_seed(0)
    print("=" * 60)
    print("SAC From Scratch -- Verification")
    print("=" * 60)
    results = []
    for verify in (verify_shapes, verify_log_prob, verify_target, verify_update):
        results.append(verify())
        print()
    print("=" * 60)
    ok = all(results)
    print("[ALL PASS] SAC implementation verified" if ok else "[FAIL] SAC implementation has failing checks")
    print("=" * 60)
    return ok


# =============================================================================
# --compare-sb3: the same weights and batch through SB3's SAC.train
# =============================================================================

class SpacesOnlyEnv(gym.Env):
    """Fetch's shapes (16-dim observation, 4-dim action in [-1, 1]) for building an SB3 SAC; never stepped."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(16,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        return np.zeros(16, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        return np.zeros(16, dtype=np.float32), 0.0, False, False, {}


def sb3_sac_train_step(
    n_transitions: int, batch_size: int, seed: int
) -> tuple[SACAgent, ReplayBatch, dict[str, Any]]:
    """Fill a real SB3 SAC's replay buffer, run `SAC.train(gradient_steps=1)` once, and record what it saw.

    Returns (a lab agent with SB3's initial weights, the batch SB3 sampled, records): records hold SB3's
    (actions, log_probs) for s and s', its twin-Q target, its logged losses and its weights after the step.
    SB3 is observed, never replaced: sample() and action_log_prob() are wrapped to record their outputs,
    and the target is read from the F.mse_loss call in SAC.train.
    """
    import stable_baselines3.sac.sac as sb3_sac_module
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import configure

    model = SAC("MlpPolicy", SpacesOnlyEnv(), buffer_size=n_transitions, batch_size=batch_size, learning_starts=0,
                seed=seed, device="cpu")
    model.set_logger(configure(None, []))
    cfg = SACConfig()  # SB3's defaults are the chapter's: lr 3e-4, gamma 0.99, tau 0.005, 256-256, "auto"
    agent = make_agent(16, 4, cfg)
    agent.policy.load_state_dict(model.actor.state_dict())  # same attribute names as SB3's Actor
    critic_state = {key.replace("qf0", "q1").replace("qf1", "q2"): value
                    for key, value in model.critic.state_dict().items()}
    agent.q_network.load_state_dict(critic_state)
    agent.target_q_network.load_state_dict(critic_state)

    buffer = model.replay_buffer
    assert buffer is not None
    rng = np.random.default_rng(seed)
    for _ in range(n_transitions):
        buffer.add(rng.normal(size=(1, 16)).astype(np.float32),
                                rng.normal(size=(1, 16)).astype(np.float32),
                                rng.uniform(-1, 1, size=(1, 4)).astype(np.float32),
                                rng.uniform(-1, 0, size=1).astype(np.float32),
                                (rng.random(1) < 0.2).astype(np.float32), [{}])
    records: dict[str, Any] = {"log_prob_calls": []}
    original_sample, original_log_prob = buffer.sample, model.actor.action_log_prob

    def recording_sample(*args: Any, **kwargs: Any) -> Any:
        records["sample"] = original_sample(*args, **kwargs)
        return records["sample"]

    def recording_log_prob(obs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        actions, log_prob = original_log_prob(obs)
        records["log_prob_calls"].append((actions.detach().clone(), log_prob.detach().clone()))
        return actions, log_prob

    def recording_mse(current_q: torch.Tensor, target_q: torch.Tensor) -> torch.Tensor:
        records["target"] = target_q.detach().clone()
        return F.mse_loss(current_q, target_q)

    buffer.sample = recording_sample  # type: ignore[method-assign]
    model.actor.action_log_prob = recording_log_prob  # type: ignore[method-assign]
    original_functional = sb3_sac_module.F
    sb3_sac_module.F = argparse.Namespace(mse_loss=recording_mse)  # type: ignore[assignment]
    try:
        torch.manual_seed(seed)
        model.train(gradient_steps=1, batch_size=batch_size)
    finally:
        sb3_sac_module.F = original_functional
    samples = records["sample"]
    batch = ReplayBatch(obs=samples.observations, actions=samples.actions, rewards=samples.rewards.flatten(),
                        next_obs=samples.next_observations, dones=samples.dones.flatten())
    records["losses"] = {key: model.logger.name_to_value[f"train/{key}"]
                         for key in ("critic_loss", "actor_loss", "ent_coef", "ent_coef_loss")}
    records["params_after"] = (list(model.actor.parameters()) + list(model.critic.parameters())
                               + list(model.critic_target.parameters()) + [model.log_ent_coef])
    return agent, batch, records


def compare_sb3(seed: int = 0, batch_size: int = 256, atol: float = 1e-6) -> bool:
    """Print the chapter's section 2.5.9 comparison; True when log-prob and twin-Q target are within atol."""
    import stable_baselines3

    agent, batch, sb3 = sb3_sac_train_step(n_transitions=1_000, batch_size=batch_size, seed=seed)
    alpha = agent.log_alpha.detach().exp()
    # Same weights, same batch, same noise: draw 1 for s, draw 2 for s', as in SAC.train and sac_update
    with torch.no_grad():
        torch.manual_seed(seed)
        actions_pi, log_probs_pi = agent.policy(batch["obs"])
        next_actions, next_log_probs = agent.policy(batch["next_obs"])
        next_q1, next_q2 = agent.target_q_network(batch["next_obs"], next_actions)
        target = compute_q_target(batch["rewards"], batch["dones"], next_q1, next_q2, next_log_probs, alpha, 0.99)
    (sb3_actions, sb3_log_probs), (sb3_next_actions, sb3_next_log_probs) = sb3["log_prob_calls"]
    log_prob_diff = max((log_probs_pi - sb3_log_probs).abs().max().item(),
                        (next_log_probs - sb3_next_log_probs).abs().max().item())
    action_diff = max((actions_pi - sb3_actions).abs().max().item(), (next_actions - sb3_next_actions).abs().max().item())
    target_diff = (target - sb3["target"].flatten()).abs().max().item()
    # The formula alone, on saturated samples too (|u| up to 12: tanh(u)^2 rounds to 1 in float32)
    from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution

    gen = torch.Generator().manual_seed(seed)
    mean, log_std = torch.randn(512, 4, generator=gen), torch.randn(512, 4, generator=gen)
    u = 4.0 * torch.randn(512, 4, generator=gen)
    sb3_dist = SquashedDiagGaussianDistribution(4).proba_distribution(mean, log_std)
    ours_formula = squashed_gaussian_log_prob(Normal(mean, log_std.exp()), u)
    formula_diff = (ours_formula - sb3_dist.log_prob(torch.tanh(u), u)).abs().max().item()
    # The whole update: losses SB3 logged and every parameter after its step
    torch.manual_seed(seed)
    info = sac_update(agent, batch, 0.99, 0.005)
    loss_diff = max(abs(info[key] - value) for key, value in sb3["losses"].items())
    ours_after = (list(agent.policy.parameters()) + list(agent.q_network.parameters())
                  + list(agent.target_q_network.parameters()) + [agent.log_alpha])
    param_diff = max((a - b).abs().max().item() for a, b in zip(ours_after, sb3["params_after"], strict=True))
    print("=" * 60)
    print("SAC From Scratch -- SB3 Comparison")
    print("=" * 60)
    print(f"SB3 {stable_baselines3.__version__} SAC('MlpPolicy'), obs 16, act 4, 256-256 networks, same weights; "
          f"one SAC.train step on a batch of {batch_size} (of 1000 transitions, {int(batch['dones'].sum())} terminal)")
    print("Squash correction: SB3 log(1 - tanh(u)^2 + 1e-6) (SquashedDiagGaussianDistribution); ours the same")
    print(f"Max abs action diff (a ~ pi(.|s), a' ~ pi(.|s')): {action_diff:.3e}")
    print(f"Max abs log_prob diff: {log_prob_diff:.3e}")
    print(f"Max abs log_prob diff, formula alone (|u| up to {u.abs().max():.0f}): {formula_diff:.3e}")
    print(f"Max abs twin-Q target diff: {target_diff:.3e}")
    print(f"Max abs logged loss diff (critic_loss, actor_loss, ent_coef, ent_coef_loss): {loss_diff:.3e}")
    print(f"Max abs parameter diff after one update (actor, critics, targets, log alpha): {param_diff:.3e}")
    print(f"Tolerance (atol): {atol:.1e}")
    print()
    ok = max(log_prob_diff, formula_diff, target_diff) <= atol
    print("[PASS] Our squashed Gaussian log_prob and twin-Q target match SB3" if ok
          else "[FAIL] Our squashed Gaussian log_prob or twin-Q target differs from SB3")
    return ok


# =============================================================================
# --demo / --record: Pendulum-v1 from scratch
# =============================================================================

DEMO_CONFIG = SACConfig(
    n_envs=2, buffer_size=50_000, learning_starts=1_000, batch_size=256, learning_rate=3e-3,
    hidden_dim=64, total_timesteps=30_000, stats_window_size=10, log_interval=200,
)
"""Pendulum settings for a fast solve on a CPU. The cost is the number of updates (about 3,000-4,000
whatever the setting): 2 envs with one update per vector step need fewer of them than 1 env (7-8k env
steps instead of 5k, but less time); 64-unit networks cost a third of 256-unit ones per update and
solve in as many steps; lr 3e-3 (rl-zoo uses 1e-3) is a little faster still. Seeds 0-2 solved in 7.2k-8k steps."""


def run_demo(seed: int = 0, total_steps: int | None = None, logdir: str | None = None,
             learning_starts: int | None = None) -> tuple[SACAgent, bool]:
    """Train Pendulum-v1 until the mean return of the last 10 episodes is > -200. Returns (agent, solved)."""
    overrides: dict[str, Any] = {"seed": seed}
    if total_steps is not None:
        overrides["total_timesteps"] = total_steps
    if learning_starts is not None:
        overrides["learning_starts"] = learning_starts
    cfg = SACConfig(**{**_asdict(DEMO_CONFIG), **overrides})
    torch.set_num_threads(1)  # small MLPs: threads cost more than they give
    print("=" * 60)
    print("SAC From Scratch -- Pendulum Demo")
    print("=" * 60)
    print(f"n_envs={cfg.n_envs} batch_size={cfg.batch_size} lr={cfg.learning_rate} hidden={cfg.hidden_dim} "
          f"learning_starts={cfg.learning_starts} seed={cfg.seed} budget={cfg.total_timesteps} steps")
    print()
    print(f"{'Steps':>6} | {'Avg Return (10 ep)':>18} | {'Critic Loss':>11} | {'Actor Loss':>10} | {'Alpha':>7}")
    solved: list[LogStats] = []
    last: list[LogStats] = []

    def on_log(row: LogStats) -> bool:
        last[:] = [row]
        done = row.n_episodes >= cfg.stats_window_size and row.ep_rew_mean > PENDULUM_SOLVED
        if row.timesteps % 1_000 == 0 or done:
            print(f"{row.timesteps:>6} | {row.ep_rew_mean:>18.1f} | {row.critic_loss:>11.3f} | "
                  f"{row.actor_loss:>10.2f} | {row.ent_coef:>7.4f}", flush=True)
        if done:
            solved.append(row)
            return False
        return True

    envs = make_vector_env(make_pendulum, cfg.n_envs)
    start = time.perf_counter()
    agent, _, steps = train(envs, cfg, callback=on_log, logdir=logdir)
    envs.close()
    seconds = time.perf_counter() - start
    print()
    if solved:
        print(f"[SOLVED] avg return {solved[0].ep_rew_mean:.1f} > {PENDULUM_SOLVED:.0f} (last 10 episodes) "
              f"at {steps} steps in {seconds:.1f} s")
    else:
        avg, n = (last[0].ep_rew_mean, min(last[0].n_episodes, cfg.stats_window_size)) if last else (float("nan"), 0)
        print(f"[NOT SOLVED] avg return {avg:.1f} (last {n} episodes), not > {PENDULUM_SOLVED:.0f} over 10, "
              f"after {steps} steps ({seconds:.1f} s)")
    return agent, bool(solved)


def write_gif_atomic(frames: list[np.ndarray], path: Path, fps: int) -> None:
    """Write frames as a looping GIF: temp file in the same directory, then os.replace."""
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".gif", prefix=f".{path.stem}-", dir=path.parent)
    os.close(fd)
    try:
        iio.imwrite(tmp, np.stack(frames), extension=".gif", duration=1000 / fps, loop=0)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_pendulum(theta: float, size: int = 500) -> np.ndarray:
    """[size, size, 3] uint8 picture of the pendulum at angle theta (0 = upright, positive = counter-clockwise).

    Same geometry and colours as gymnasium's rgb_array renderer, drawn with numpy: gymnasium's own
    renderer needs pygame, which this project does not depend on.
    """
    scale = size / 4.4  # the view spans +-2.2
    frame = np.full((size, size, 3), 255, dtype=np.uint8)
    rows, cols = np.mgrid[0:size, 0:size]
    x, y = cols - size / 2.0, size / 2.0 - rows  # y up, origin at the pivot
    tip = scale * np.array([-np.sin(theta), np.cos(theta)])  # rod: 1 m
    along = np.clip((x * tip[0] + y * tip[1]) / scale**2, 0.0, 1.0)
    distance = np.hypot(x - along * tip[0], y - along * tip[1])
    frame[distance <= 0.1 * scale] = (204, 77, 77)  # rod, 0.2 m wide, rounded ends
    frame[np.hypot(x, y) <= 0.05 * scale] = (0, 0, 0)  # axle
    return frame


def record_pendulum(agent: SACAgent, path: Path = DEFAULT_GIF, seed: int = 0, frame_skip: int = 2) -> int:
    """One deterministic episode (tanh(mean) action) rendered to a GIF; returns the number of frames."""
    env = make_pendulum()
    action_space = box(env.action_space)
    obs, _ = env.reset(seed=seed)
    frames, episode_return, step = [render_pendulum(pendulum_angle(env))], 0.0, 0
    terminated = truncated = False
    while not (terminated or truncated):
        with torch.no_grad():
            action = agent.policy.deterministic_action(torch.as_tensor(obs, dtype=torch.float32)[None])[0]
        obs, reward, terminated, truncated, _ = env.step(unscale_action(action.numpy(), action_space.low,
                                                                        action_space.high))
        episode_return += float(reward)
        step += 1
        if step % frame_skip == 0:
            frames.append(render_pendulum(pendulum_angle(env)))
    fps = max(1, env.metadata.get("render_fps", 30) // frame_skip)
    env.close()
    write_gif_atomic(frames, path, fps)
    print(f"Recorded {len(frames)} frames of a {step}-step episode (return {episode_return:.0f}) -> {path}")
    return len(frames)


# =============================================================================
# --fetch: the same SAC on FetchReachDense-v4
# =============================================================================

FETCH_CONFIG = SACConfig()  # the chapter's hyper-parameters (section 3.3)


@dataclass(frozen=True)
class FetchEvalResult:
    """Deterministic evaluation; success = info["is_success"] at each episode's last step."""

    n_episodes: int
    success_rate: float
    return_mean: float
    final_distance_mean: float  # metres, ||achieved_goal - desired_goal|| of the final observation


def evaluate_fetch(agent: SACAgent, n_episodes: int = 100) -> FetchEvalResult:
    """tanh(mean) action, episode i reset with seed 1_000_000 + i, 50 steps each (Fetch only truncates)."""
    env = make_fetch_reach()
    action_space = box(env.action_space)
    successes, returns, distances = [], [], []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=EVAL_SEED_OFFSET + i)
        episode_return, info = 0.0, dict[str, Any]()
        terminated = truncated = False
        while not (terminated or truncated):
            with torch.no_grad():
                action = agent.policy.deterministic_action(torch.as_tensor(flatten_goal_obs(obs))[None])[0]
            obs, reward, terminated, truncated, info = env.step(
                unscale_action(action.numpy(), action_space.low, action_space.high))
            episode_return += float(reward)
        successes.append(float(info["is_success"]))
        returns.append(episode_return)
        distances.append(float(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"])))
    env.close()
    return FetchEvalResult(n_episodes, float(np.mean(successes)), float(np.mean(returns)), float(np.mean(distances)))


def fetch_criteria(result: FetchEvalResult) -> list[tuple[str, float, str, bool]]:
    """(criterion, value, threshold, passed) -- the chapter's pass bar for SAC on dense Reach."""
    return [
        ("success rate", result.success_rate, ">= 0.95", result.success_rate >= 0.95),
        ("return mean", result.return_mean, "> -5", result.return_mean > -5.0),
        ("final distance mean (m)", result.final_distance_mean, "< 0.03", result.final_distance_mean < 0.03),
    ]


def run_fetch(seed: int = 0, total_steps: int | None = None, n_eval_episodes: int = 100,
              logdir: str | None = None, learning_starts: int | None = None, progress: bool = True) -> bool:
    """Train from scratch on FetchReachDense-v4, evaluate, print the criteria table. True when all pass."""
    overrides: dict[str, Any] = {"seed": seed}
    if total_steps is not None:
        overrides["total_timesteps"] = total_steps
    if learning_starts is not None:
        overrides["learning_starts"] = learning_starts
    cfg = SACConfig(**{**_asdict(FETCH_CONFIG), **overrides})
    torch.set_num_threads(1)
    print("=" * 72)
    print(f"SAC From Scratch -- {FETCH_ENV_ID}")
    print("=" * 72)
    print(f"n_envs={cfg.n_envs} batch_size={cfg.batch_size} buffer_size={cfg.buffer_size} "
          f"learning_starts={cfg.learning_starts} lr={cfg.learning_rate} gamma={cfg.gamma} tau={cfg.tau} "
          f"ent_coef={cfg.ent_coef} seed={cfg.seed} total={cfg.total_timesteps}")
    print(f"{'Steps':>7} | {'ep_rew_mean':>11} | {'success':>7} | {'critic_loss':>11} | {'actor_loss':>10} | "
          f"{'ent_coef':>8} | {'fps':>5}")
    rows: list[LogStats] = []
    print_every = max(cfg.log_interval, cfg.total_timesteps // 20)  # about 20 rows of the learning curve
    bar = tqdm(total=cfg.total_timesteps, unit="step", disable=not progress, file=sys.stderr)

    def on_log(row: LogStats) -> bool:
        if not rows or row.timesteps // print_every > rows[-1].timesteps // print_every:
            tqdm.write(f"{row.timesteps:>7} | {row.ep_rew_mean:>11.2f} | {row.success_rate:>7.2f} | "
                       f"{row.critic_loss:>11.4f} | {row.actor_loss:>10.3f} | {row.ent_coef:>8.4g} | {row.fps:>5}",
                       file=sys.stdout)
        rows.append(row)
        bar.set_postfix(success=f"{row.success_rate:.2f}", ep_rew=f"{row.ep_rew_mean:.2f}",
                        ent_coef=f"{row.ent_coef:.2g}", refresh=False)
        bar.update(row.timesteps - bar.n)
        return True

    envs = make_vector_env(lambda: FlattenGoalObservation(make_fetch_reach()), cfg.n_envs)
    start = time.perf_counter()
    agent, _, steps = train(envs, cfg, callback=on_log, logdir=logdir)
    envs.close()
    bar.close()
    train_seconds = time.perf_counter() - start
    alphas = [row.ent_coef for row in rows if not np.isnan(row.ent_coef)]
    if alphas:
        print(f"ent_coef: first logged {alphas[0]:.3g} -> last {alphas[-1]:.3g} "
              f"(the chapter's SB3 run: ~0.47 -> ~0.0004 over 500k steps)")
    result = evaluate_fetch(agent, n_eval_episodes)
    print()
    print(f"Trained {steps} steps in {train_seconds:.0f} s ({steps / train_seconds:.0f} steps/s); "
          f"evaluated {result.n_episodes} deterministic episodes (seeds {EVAL_SEED_OFFSET}+i)")
    print(f"{'Criterion':<24} | {'Value':>8} | {'Threshold':>9} | Result")
    criteria = fetch_criteria(result)
    for name, value, threshold, passed in criteria:
        print(f"{name:<24} | {value:>8.4f} | {threshold:>9} | {'PASS' if passed else 'FAIL'}")
    ok = all(passed for *_, passed in criteria)
    print("[PASS] all criteria met" if ok else "[FAIL] some criteria not met")
    return ok


def _asdict(cfg: SACConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


# =============================================================================
# CLI
# =============================================================================

class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad input as a single line on stderr (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind: type, low: float, high: float = float("inf"), low_open: bool = False) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__}, got {text!r}") from None
        if not np.isfinite(value) or value < low or (low_open and value == low) or value > high:
            bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"{text} is outside {bounds}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sac_from_scratch.py",
        description="SAC from scratch: chapter 3's lab (verify, compare with SB3, train Pendulum or Fetch).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--verify", action="store_true", help="run the chapter's sanity checks")
    mode.add_argument("--compare-sb3", action="store_true",
                      help="compare log-prob, twin-Q target and one update with SB3's SAC")
    mode.add_argument("--demo", action="store_true", help="train Pendulum-v1 until last-10-episode mean > -200")
    mode.add_argument("--fetch", action="store_true", help=f"train and evaluate {FETCH_ENV_ID}")
    parser.add_argument("--record", action="store_true", help="with --demo: save a GIF of the trained policy")
    parser.add_argument("--video", type=Path, default=DEFAULT_GIF, help="GIF path for --record (default: %(default)s)")
    parser.add_argument("--seed", type=_number(int, 0), default=0, help="random seed (default: 0)")
    parser.add_argument("--total-steps", type=_number(int, 0, low_open=True), default=None,
                        help=f"training budget in env steps (default: demo {DEMO_CONFIG.total_timesteps}, "
                             f"fetch {FETCH_CONFIG.total_timesteps})")
    parser.add_argument("--learning-starts", type=_number(int, 0), default=None,
                        help=f"random-action warm-up in env steps (default: demo {DEMO_CONFIG.learning_starts}, "
                             f"fetch {FETCH_CONFIG.learning_starts})")
    parser.add_argument("--n-eval-episodes", type=_number(int, 0, low_open=True), default=None,
                        help="with --fetch: evaluation episodes (default: 100)")
    parser.add_argument("--logdir", default=None, help="with --demo/--fetch: TensorBoard log directory")
    parser.add_argument("--no-progress", action="store_true", help="with --fetch: no progress bar")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.verify or args.compare_sb3 or args.demo or args.fetch):
        parser.error("choose one mode: --verify, --compare-sb3, --demo or --fetch")
    if args.record and not args.demo:
        parser.error("--record only works with --demo")
    for flag in ("total_steps", "learning_starts", "logdir"):
        if getattr(args, flag) is not None and not (args.demo or args.fetch):
            parser.error(f"--{flag.replace('_', '-')} only applies to --demo and --fetch")
    if (args.n_eval_episodes is not None or args.no_progress) and not args.fetch:
        parser.error("--n-eval-episodes and --no-progress only apply to --fetch")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.verify:
        return 0 if run_verification() else 1
    if args.compare_sb3:
        return 0 if compare_sb3(args.seed) else 1
    if args.fetch:
        return 0 if run_fetch(args.seed, args.total_steps, args.n_eval_episodes or 100, args.logdir,
                              args.learning_starts, progress=not args.no_progress) else 1
    start = time.perf_counter()
    agent, solved = run_demo(args.seed, args.total_steps, args.logdir, args.learning_starts)
    if args.record:
        record_pendulum(agent, args.video, seed=args.seed)
    print(f"Total time: {time.perf_counter() - start:.1f} s")
    return 0 if solved else 1


if __name__ == "__main__":
    sys.exit(main())
