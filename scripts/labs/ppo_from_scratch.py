#!/usr/bin/env python3
"""PPO from scratch -- the chapter 2 lab (Part 2.5, "BUILD IT").

What Stable-Baselines3 does inside `PPO.learn`, with every tensor operation visible. Reads top to
bottom like CleanRL's single-file `ppo_continuous_action.py`: network -> GAE -> losses -> update ->
training loop -> the modes. Depends only on torch, numpy and gymnasium; SB3 is imported only inside
`--compare-sb3`, gymnasium_robotics only inside `--fetch`. For understanding, not production.

Usage:
    python scripts/labs/ppo_from_scratch.py --verify                    # chapter 2.5.6 sanity checks
    python scripts/labs/ppo_from_scratch.py --verify --gae-lambda 0.0   # Exercise 2.5.1
    python scripts/labs/ppo_from_scratch.py --verify --clip-range 0.5   # Exercise 2.5.2
    python scripts/labs/ppo_from_scratch.py --compare-sb3               # our GAE vs SB3's RolloutBuffer
    python scripts/labs/ppo_from_scratch.py --demo [--seed 0]           # CartPole-v1 until avg return >= 195
    python scripts/labs/ppo_from_scratch.py --demo --record             # ... and videos/ppo_cartpole_demo.gif
    python scripts/labs/ppo_from_scratch.py --fetch [--total-steps N]   # FetchReachDense-v4, 100-episode eval

Snippet regions included by the chapter (`--8<-- "scripts/labs/ppo_from_scratch.py:NAME"`):
actor_critic_network, gae_computation, ppo_loss, value_loss, ppo_update, ppo_training_loop.

Gymnasium 1.x vector envs autoreset in `NEXT_STEP` mode by default: the step *after* an episode
ends returns the reset observation and ignores the action. This lab builds its vector envs in
`SAME_STEP` mode instead (the reset happens inside the step that ends the episode, the true last
observation is in `infos["final_obs"]`) and refuses any other mode, so that every stored transition
is real and truncated episodes bootstrap from their true final observation.

The remaining differences from SB3's PPO (2.x, default `MlpPolicy` / `MultiInputPolicy`) -- the bridge:

| Aspect             | This lab                                      | SB3 PPO                                          |
|--------------------|-----------------------------------------------|--------------------------------------------------|
| Network            | shared 2x64 tanh trunk, mean + value heads    | separate 2x64 tanh MLPs for pi and vf            |
| Initialisation     | PyTorch default (Kaiming-uniform)             | orthogonal: gain sqrt(2) hidden, 0.01 mean head, |
|                    |                                               | 1.0 value head                                   |
| log-std            | state-independent parameter, init 0           | same (`log_std_init=0.0`)                        |
| Action clipping    | clip to the action space before `env.step`;   | same                                             |
|                    | log-prob of the unclipped action              |                                                  |
| Value clipping     | none                                          | none by default (`clip_range_vf=None`)           |
| Value loss         | 0.5*MSE (chapter), total uses vf_coef*0.5*MSE | MSE, total uses vf_coef*MSE: twice our weight;   |
|                    | `train/value_loss` logs 0.5*MSE               | `train/value_loss` logs MSE                      |
| Truncation         | reward += gamma * V(final_obs)                | same (`collect_rollouts`)                        |
| Advantage norm.    | per minibatch                                 | same (`normalize_advantage=True`)                |
| Entropy            | sum over action dims, `ent_coef` 0            | same                                             |
| Adam               | eps=1e-5, constant learning rate              | same                                             |
| Fetch observation  | observation, achieved_goal, desired_goal      | Dict space's sorted key order: achieved_goal,    |
|                    | concatenated                                  | desired_goal, observation                        |
| Episode statistics | last 100 episodes (demo: last 20)             | last 100 episodes (`stats_window_size`)          |
| Vector env         | gymnasium SyncVectorEnv, SAME_STEP autoreset  | SB3 DummyVecEnv (resets in the same step)        |
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from torch.distributions import Normal

# TensorBoard tags, exactly as SB3 logs them, so the lab's curves overlay SB3's.
EP_REW_MEAN = "rollout/ep_rew_mean"
EP_LEN_MEAN = "rollout/ep_len_mean"
SUCCESS_RATE = "rollout/success_rate"
VALUE_LOSS = "train/value_loss"
POLICY_GRADIENT_LOSS = "train/policy_gradient_loss"
APPROX_KL = "train/approx_kl"
CLIP_FRACTION = "train/clip_fraction"
ENTROPY_LOSS = "train/entropy_loss"
EXPLAINED_VARIANCE = "train/explained_variance"
LOSS = "train/loss"
STD = "train/std"
FPS = "time/fps"

FETCH_ENV_ID = "FetchReachDense-v4"
FETCH_OBS_KEYS = ("observation", "achieved_goal", "desired_goal")  # the chapter's order
CARTPOLE_SOLVED = 195.0
DEFAULT_GIF = Path("videos/ppo_cartpole_demo.gif")
EVAL_SEED_OFFSET = 1_000_000


@dataclass(frozen=True)
class PPOConfig:
    """Hyper-parameters of one training run (SB3's names; defaults are the chapter's Fetch settings)."""

    n_envs: int = 8
    """parallel environments in the vector env"""
    n_steps: int = 1024
    """steps per environment per rollout (rollout size = n_steps * n_envs)"""
    batch_size: int = 256
    """minibatch size of one gradient step"""
    n_epochs: int = 10
    """passes over each rollout"""
    learning_rate: float = 3e-4
    """Adam step size (constant)"""
    gamma: float = 0.99
    """discount factor"""
    gae_lambda: float = 0.95
    """GAE bias-variance trade-off: 0 = one-step TD, 1 = Monte Carlo"""
    clip_range: float = 0.2
    """PPO ratio clip epsilon"""
    ent_coef: float = 0.0
    """entropy bonus weight c2"""
    vf_coef: float = 0.5
    """value loss weight c1"""
    max_grad_norm: float = 0.5
    """global gradient-norm clip"""
    hidden_dim: int = 64
    """width of the two shared tanh layers"""
    total_timesteps: int = 500_000
    """environment steps to train for (rounded up to whole rollouts)"""
    stats_window_size: int = 100
    """episodes averaged for rollout/ep_rew_mean and rollout/success_rate"""
    seed: int = 0
    """seed of torch, the env resets and the minibatch shuffles"""

    def __post_init__(self) -> None:
        positive = ("n_envs", "n_steps", "batch_size", "n_epochs", "hidden_dim", "total_timesteps",
                    "stats_window_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"PPOConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("gamma", "gae_lambda"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PPOConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.clip_range < 0 or self.max_grad_norm <= 0:
            raise ValueError("PPOConfig: learning_rate and max_grad_norm must be > 0, clip_range >= 0")
        if self.ent_coef < 0 or self.vf_coef < 0 or self.seed < 0:
            raise ValueError("PPOConfig: ent_coef, vf_coef and seed must be >= 0")

    @property
    def rollout_size(self) -> int:
        """Transitions per rollout: n_steps * n_envs."""
        return self.n_steps * self.n_envs


# =============================================================================
# Network
# =============================================================================

# --8<-- [start:actor_critic_network]
class ActorCritic(nn.Module):
    """Gaussian actor and scalar critic on a shared backbone.

        obs [batch, obs_dim] -> Linear-tanh-Linear-tanh -> mean head  -> Normal(mean, exp(log_std))
                                                        -> value head -> value [batch]
    log_std [act_dim] is a free parameter: the exploration noise does not depend on the state.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(  # shared feature extractor
            nn.Linear(obs_dim, hidden_dim),
            nn.Tanh(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.Tanh(),
        )
        self.mean_head = nn.Linear(hidden_dim, act_dim)  # actor: mean of the Gaussian
        self.log_std = nn.Parameter(torch.zeros(act_dim))  # actor: state-independent log std
        self.value_head = nn.Linear(hidden_dim, 1)  # critic: V(x)

    def forward(self, obs: torch.Tensor) -> tuple[Normal, torch.Tensor]:
        """obs: [batch, obs_dim] float32 -> (Normal with mean [batch, act_dim], value [batch])."""
        features = self.trunk(obs)
        mean = self.mean_head(features)
        dist = Normal(mean, self.log_std.exp().expand_as(mean))
        value = self.value_head(features).squeeze(-1)
        return dist, value
# --8<-- [end:actor_critic_network]


class RolloutBatch(NamedTuple):
    """One (mini)batch of flattened experience for `ppo_update`."""

    observations: torch.Tensor  # [batch, obs_dim] float32
    actions: torch.Tensor  # [batch, act_dim] float32, unclipped samples of the rollout policy
    old_log_probs: torch.Tensor  # [batch] float32, log pi_old(a|x)
    advantages: torch.Tensor  # [batch] float32, GAE advantages (not yet normalised)
    returns: torch.Tensor  # [batch] float32, critic targets = advantages + V_rollout


# =============================================================================
# GAE
# =============================================================================

# --8<-- [start:gae_computation]
def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_value: torch.Tensor,
    dones: torch.Tensor,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation, computed backwards through the rollout.

    rewards, values, dones: [T] or [T, n_envs] float32. dones[t] = 1.0 if the episode ended at
    step t (a truncated step already carries gamma * V(final_obs) in rewards[t], as in SB3).
    next_value: [] or [n_envs], V of the observation after the last step.
    Returns (advantages, returns), both shaped like rewards; returns = advantages + values.
    """
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        next_values = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        next_non_terminal = 1.0 - dones[t]  # no bootstrap, no carry-over across an episode end
        # delta_t = r_t + gamma * (1 - d_t) * V(x_{t+1}) - V(x_t): better or worse than expected?
        delta = rewards[t] + gamma * next_non_terminal * next_values - values[t]
        # A_t = delta_t + gamma * lambda * (1 - d_t) * A_{t+1}
        last_gae = delta + gamma * gae_lambda * next_non_terminal * last_gae
        advantages[t] = last_gae
    returns = advantages + values  # critic targets G_t = A_t + V_rollout(x_t)
    return advantages, returns
# --8<-- [end:gae_computation]


# =============================================================================
# Losses
# =============================================================================

# --8<-- [start:ppo_loss]
def compute_ppo_loss(
    dist: Normal,
    old_log_probs: torch.Tensor,
    actions: torch.Tensor,
    advantages: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate loss -L_CLIP = -E[min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)].

    dist: current policy on the batch (mean [batch, act_dim]); old_log_probs, advantages: [batch];
    actions: [batch, act_dim]. Returns (loss to minimise, info).
    """
    new_log_probs = dist.log_prob(actions).sum(dim=-1)  # independent action dims: log-probs add
    log_ratio = new_log_probs - old_log_probs
    ratio = log_ratio.exp()  # rho = pi_theta(a|x) / pi_old(a|x)
    surrogate = ratio * advantages
    clipped_surrogate = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages
    policy_loss = -torch.min(surrogate, clipped_surrogate).mean()  # pessimistic bound, negated

    with torch.no_grad():
        # approx KL(old || new) = E[(rho - 1) - log rho] >= 0, http://joschu.net/blog/kl-approx.html
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip_range).float().mean()
    info = {
        "policy_loss": policy_loss.item(),
        "approx_kl": approx_kl.item(),
        "clip_fraction": clip_fraction.item(),
        "ratio_mean": ratio.mean().item(),
    }
    return policy_loss, info
# --8<-- [end:ppo_loss]


# --8<-- [start:value_loss]
def compute_value_loss(values: torch.Tensor, returns: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Critic loss 0.5 * E[(V_phi(x) - G)^2]. values, returns: [batch] float32."""
    value_loss = 0.5 * (values - returns).pow(2).mean()
    info = {
        "value_loss": value_loss.item(),
        "explained_variance": explained_variance(values.detach(), returns),
    }
    return value_loss, info


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """1 - Var[target - pred] / Var[target]: 1 perfect, 0 no better than the mean, < 0 worse.

    NaN when the target is constant (as SB3's `explained_variance`).
    """
    var_target = target.var()
    if var_target == 0:
        return float("nan")
    return (1.0 - (target - pred).var() / var_target).item()
# --8<-- [end:value_loss]


# --8<-- [start:ppo_update]
def ppo_update(
    model: ActorCritic,
    optimizer: torch.optim.Optimizer,
    batch: RolloutBatch,
    clip_range: float = 0.2,
    vf_coef: float = 0.5,
    ent_coef: float = 0.0,
    max_grad_norm: float = 0.5,
) -> dict[str, float]:
    """One gradient step on total loss = -L_CLIP + c1 * L_value - c2 * H[pi]. Returns diagnostics."""
    dist, values = model(batch.observations)

    # Normalise advantages per minibatch (SB3's normalize_advantage=True)
    advantages = batch.advantages
    if advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

    policy_loss, policy_info = compute_ppo_loss(dist, batch.old_log_probs, batch.actions, advantages, clip_range)
    value_loss, value_info = compute_value_loss(values, batch.returns)
    entropy = dist.entropy().sum(dim=-1).mean()  # H[pi] of the diagonal Gaussian
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy

    optimizer.zero_grad()
    loss.backward()
    grad_norm = nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()

    return {
        **policy_info,
        **value_info,
        "entropy_loss": -entropy.item(),  # SB3 logs -H as train/entropy_loss
        "loss": loss.item(),
        "grad_norm": grad_norm.item(),
    }
# --8<-- [end:ppo_update]


# =============================================================================
# Environments
# =============================================================================

class ContinuousToDiscrete(gym.ActionWrapper):
    """CartPole with a 1-D continuous action in [-1, 1]: push right iff a > 0.

    Lets the demo use the same Gaussian ActorCritic as Fetch. The threshold is part of the
    environment as the learner sees it, so the policy gradient stays exact.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def action(self, action: np.ndarray) -> int:
        return int(np.asarray(action).reshape(-1)[0] > 0.0)


def flatten_goal_obs(obs: dict[str, np.ndarray]) -> np.ndarray:
    """Fetch's dict observation -> [16] float32: observation (10), achieved_goal (3), desired_goal (3)."""
    return np.concatenate([np.asarray(obs[key], dtype=np.float32).reshape(-1) for key in FETCH_OBS_KEYS])


class FlattenGoalObservation(gym.ObservationWrapper):
    """Goal-conditioned input x = (s, g) as one vector, in the chapter's key order."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        size = sum(int(np.prod(env.observation_space[key].shape)) for key in FETCH_OBS_KEYS)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(size,), dtype=np.float32)

    def observation(self, observation: dict[str, np.ndarray]) -> np.ndarray:
        return flatten_goal_obs(observation)


def make_cartpole(render_mode: str | None = None) -> gym.Env:
    """CartPole-v1 (terminates when the pole falls, truncates at 500 steps) with a Box action."""
    return ContinuousToDiscrete(gym.make("CartPole-v1", render_mode=render_mode))


def make_fetch_reach() -> gym.Env:
    """FetchReachDense-v4 with its dict observation. Fetch never terminates: it truncates at 50 steps."""
    import gymnasium_robotics  # only the --fetch mode needs MuJoCo

    gym.register_envs(gymnasium_robotics)
    return gym.make(FETCH_ENV_ID)


def make_vector_env(env_fn: Callable[[], gym.Env], n_envs: int) -> SyncVectorEnv:
    """n_envs copies in one process, autoreset in SAME_STEP mode (final obs in infos["final_obs"])."""
    return SyncVectorEnv([env_fn] * n_envs, autoreset_mode=AutoresetMode.SAME_STEP)


# =============================================================================
# Training loop
# =============================================================================

class Rollout(NamedTuple):
    """n_steps transitions from each of n_envs environments."""

    observations: torch.Tensor  # [n_steps, n_envs, obs_dim] float32, x_t
    actions: torch.Tensor  # [n_steps, n_envs, act_dim] float32, unclipped samples
    log_probs: torch.Tensor  # [n_steps, n_envs] float32, log pi_old(a_t|x_t)
    rewards: torch.Tensor  # [n_steps, n_envs] float32, plus gamma * V(final_obs) on truncation
    dones: torch.Tensor  # [n_steps, n_envs] float32, 1.0 if the episode ended at step t
    values: torch.Tensor  # [n_steps, n_envs] float32, V_rollout(x_t)
    last_value: torch.Tensor  # [n_envs] float32, V_rollout(x_{n_steps})


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
        """rewards, dones: [n_envs] of one vector step, before any bootstrapping; infos: SAME_STEP infos."""
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
class IterationStats:
    """What one iteration (rollout + update) logs; names mirror SB3's tags."""

    iteration: int
    timesteps: int
    seconds: float
    ep_rew_mean: float
    ep_len_mean: float
    success_rate: float
    n_episodes: int
    value_loss: float
    policy_gradient_loss: float
    approx_kl: float
    clip_fraction: float
    entropy_loss: float
    explained_variance: float
    loss: float
    std: float
    fps: int

    def tags(self) -> dict[str, float]:
        """TensorBoard tag -> value (success rate only when the env reports is_success)."""
        tags = {
            EP_REW_MEAN: self.ep_rew_mean, EP_LEN_MEAN: self.ep_len_mean, VALUE_LOSS: self.value_loss,
            POLICY_GRADIENT_LOSS: self.policy_gradient_loss, APPROX_KL: self.approx_kl,
            CLIP_FRACTION: self.clip_fraction, ENTROPY_LOSS: self.entropy_loss,
            EXPLAINED_VARIANCE: self.explained_variance, LOSS: self.loss, STD: self.std, FPS: self.fps,
        }
        if not np.isnan(self.success_rate):
            tags[SUCCESS_RATE] = self.success_rate
        return tags


# --8<-- [start:ppo_training_loop]
def final_obs_values(model: ActorCritic, infos: dict[str, Any], mask: np.ndarray) -> torch.Tensor:
    """[n_envs] V(final_obs) where mask is set (truncated episodes), 0 elsewhere.

    In SAME_STEP mode the observation returned for a finished env is already the reset one; the true
    last observation of the episode is infos["final_obs"][i].
    """
    values = torch.zeros(mask.shape[0])
    if mask.any():
        idx = np.flatnonzero(mask)
        final_obs = np.stack([infos["final_obs"][i] for i in idx]).astype(np.float32)
        with torch.no_grad():
            _, final_values = model(torch.as_tensor(final_obs))
        values[idx] = final_values
    return values


def collect_rollout(
    envs: gym.vector.VectorEnv,
    model: ActorCritic,
    obs: np.ndarray,
    n_steps: int,
    gamma: float,
    stats: EpisodeStats,
) -> tuple[Rollout, np.ndarray]:
    """Run the current policy for n_steps in every env. obs: [n_envs, obs_dim], the envs' current obs.

    Returns the rollout and the observation to continue from.
    """
    if envs.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
        raise ValueError("collect_rollout needs a vector env with autoreset_mode=AutoresetMode.SAME_STEP "
                         "(NEXT_STEP would store a reset step with an ignored action); use make_vector_env")
    low, high = envs.single_action_space.low, envs.single_action_space.high
    steps: dict[str, list[torch.Tensor]] = {k: [] for k in ("obs", "act", "logp", "rew", "done", "val")}
    for _ in range(n_steps):
        obs_t = torch.as_tensor(obs, dtype=torch.float32)
        with torch.no_grad():
            dist, value = model(obs_t)
            action = dist.sample()
            log_prob = dist.log_prob(action).sum(dim=-1)
        # Like SB3: the env gets the action clipped to its bounds, the log-prob keeps the sample
        obs, reward, terminated, truncated, infos = envs.step(np.clip(action.numpy(), low, high))
        done = np.logical_or(terminated, truncated)
        stats.update(reward, done, infos)
        # Time-limit truncation is not a real end: bootstrap from the final observation,
        # as SB3's collect_rollouts does (rewards[idx] += gamma * terminal_value)
        bootstrap = final_obs_values(model, infos, np.logical_and(truncated, ~terminated))
        steps["obs"].append(obs_t)
        steps["act"].append(action)
        steps["logp"].append(log_prob)
        steps["rew"].append(torch.as_tensor(reward, dtype=torch.float32) + gamma * bootstrap)
        steps["done"].append(torch.as_tensor(done, dtype=torch.float32))
        steps["val"].append(value)
    with torch.no_grad():
        _, last_value = model(torch.as_tensor(obs, dtype=torch.float32))
    rollout = Rollout(*(torch.stack(steps[k]) for k in ("obs", "act", "logp", "rew", "done", "val")),
                      last_value=last_value)
    return rollout, obs


def update_policy(
    model: ActorCritic,
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    advantages: torch.Tensor,
    returns: torch.Tensor,
    cfg: PPOConfig,
    generator: torch.Generator,
) -> dict[str, float]:
    """n_epochs passes of shuffled minibatches over the rollout; returns the mean of each diagnostic."""
    # [n_steps, n_envs, ...] -> [n_steps * n_envs, ...]
    data = RolloutBatch(
        observations=rollout.observations.flatten(0, 1),
        actions=rollout.actions.flatten(0, 1),
        old_log_probs=rollout.log_probs.flatten(),
        advantages=advantages.flatten(),
        returns=returns.flatten(),
    )
    n = data.returns.shape[0]
    history: dict[str, list[float]] = {}
    for _ in range(cfg.n_epochs):
        permutation = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            idx = permutation[start:start + cfg.batch_size]
            minibatch = RolloutBatch(*(field[idx] for field in data))
            info = ppo_update(model, optimizer, minibatch, cfg.clip_range, cfg.vf_coef, cfg.ent_coef,
                              cfg.max_grad_norm)
            for key, value in info.items():
                history.setdefault(key, []).append(value)
    metrics = {key: float(np.mean(values)) for key, values in history.items()}
    metrics["loss"] = history["loss"][-1]  # SB3 logs the last minibatch's total loss
    # SB3 logs explained variance of the rollout's values w.r.t. the GAE returns
    metrics["explained_variance"] = explained_variance(rollout.values.flatten(), returns.flatten())
    return metrics


def train(
    envs: gym.vector.VectorEnv,
    cfg: PPOConfig,
    *,
    callback: Callable[[IterationStats], bool] | None = None,
    logdir: str | Path | None = None,
) -> tuple[ActorCritic, int]:
    """PPO: collect -> GAE -> n_epochs of minibatch updates -> discard, until cfg.total_timesteps.

    callback is called after every iteration; returning False stops training.
    Returns the trained model and the environment steps taken.
    """
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    model = ActorCritic(envs.single_observation_space.shape[0], envs.single_action_space.shape[0],
                        cfg.hidden_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, eps=1e-5)
    writer = None
    if logdir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(logdir))
    stats = EpisodeStats(envs.num_envs, cfg.stats_window_size)
    obs, _ = envs.reset(seed=cfg.seed)
    timesteps, iteration, start = 0, 0, time.perf_counter()
    while timesteps < cfg.total_timesteps:
        iteration += 1
        # 1. Collect: the current policy acts in n_envs environments for n_steps
        rollout, obs = collect_rollout(envs, model, obs, cfg.n_steps, cfg.gamma, stats)
        timesteps += cfg.rollout_size
        # 2. Advantages: GAE on the rollout's (constant) value estimates
        advantages, returns = compute_gae(rollout.rewards, rollout.values, rollout.last_value, rollout.dones,
                                          cfg.gamma, cfg.gae_lambda)
        # 3-4. Update actor and critic: n_epochs over shuffled minibatches
        metrics = update_policy(model, optimizer, rollout, advantages, returns, cfg, generator)
        # 5. Log, then discard the rollout (on-policy)
        seconds = time.perf_counter() - start
        it = IterationStats(
            iteration=iteration, timesteps=timesteps, seconds=seconds,
            ep_rew_mean=stats.mean(stats.returns), ep_len_mean=stats.mean(stats.lengths),
            success_rate=stats.mean(stats.successes), n_episodes=stats.n_episodes,
            value_loss=metrics["value_loss"], policy_gradient_loss=metrics["policy_loss"],
            approx_kl=metrics["approx_kl"], clip_fraction=metrics["clip_fraction"],
            entropy_loss=metrics["entropy_loss"], explained_variance=metrics["explained_variance"],
            loss=metrics["loss"], std=model.log_std.exp().mean().item(), fps=int(timesteps / seconds),
        )
        if writer is not None:
            for tag, value in it.tags().items():
                writer.add_scalar(tag, value, timesteps)
        if callback is not None and callback(it) is False:
            break
    if writer is not None:
        writer.close()
    return model, timesteps
# --8<-- [end:ppo_training_loop]


# =============================================================================
# --verify: the chapter's checkpoints as checks that can fail
# =============================================================================

def check(condition: bool, message: str) -> bool:
    """Print `[FAIL] message` when condition is false; return condition."""
    if not condition:
        print(f"  [FAIL] {message}")
    return bool(condition)


def verify_gae(gae_lambda: float | None = None) -> bool:
    """Reward only at the end of a 10-step episode: finite advantages, the last one positive."""
    print("Verifying GAE computation...")
    T = 10
    rewards = torch.zeros(T)
    rewards[-1] = 1.0  # reward only at step 10
    values = torch.linspace(0, 0.5, T)  # increasing value estimates
    next_value = torch.tensor(0.0)
    dones = torch.zeros(T)
    dones[-1] = 1.0  # episode ends
    advantages, returns = compute_gae(rewards, values, next_value, dones)
    print(f"  Advantages: {[round(a, 4) for a in advantages.tolist()]}")
    print(f"  Returns: {[round(r, 4) for r in returns.tolist()]}")
    ok = check(bool(torch.isfinite(advantages).all()), "advantages contain NaN/Inf")
    ok &= check(bool(torch.isfinite(returns).all()), "returns contain NaN/Inf")
    ok &= check(advantages.shape == rewards.shape, f"advantages shape {tuple(advantages.shape)} != ({T},)")
    ok &= check(bool(advantages[-1] > 0), f"last advantage {advantages[-1]:.4f} should be > 0 (unexpected reward)")
    ok &= check(torch.allclose(returns, advantages + values), "returns != advantages + values")
    if gae_lambda is not None:  # Exercise 2.5.1
        ablated, _ = compute_gae(rewards, values, next_value, dones, gae_lambda=gae_lambda)
        print(f"  Exercise 2.5.1 -- gae_lambda={gae_lambda}: {[round(a, 4) for a in ablated.tolist()]}")
        print(f"  mean |A|: lambda={gae_lambda}: {ablated.abs().mean():.4f}  vs  "
              f"lambda=0.95: {advantages.abs().mean():.4f}")
        ok &= check(bool(torch.isfinite(ablated).all()), "ablated advantages contain NaN/Inf")
    if ok:
        print("  [PASS] GAE computation OK")
    return ok


def verify_ppo_loss(clip_range: float | None = None) -> bool:
    """Unchanged policy: ratio 1, approx_kl ~ 0, nothing clipped."""
    print("Verifying PPO loss...")
    model = ActorCritic(obs_dim=4, act_dim=2)
    obs, actions, advantages = torch.randn(32, 4), torch.randn(32, 2), torch.randn(32)
    with torch.no_grad():
        dist, _ = model(obs)
        old_log_probs = dist.log_prob(actions).sum(dim=-1)
    dist, _ = model(obs)  # same model, same parameters
    loss, info = compute_ppo_loss(dist, old_log_probs, actions, advantages)
    print(f"  Loss: {loss.item():.4f}")
    print(f"  Approx KL: {info['approx_kl']:.4f}")
    print(f"  Clip fraction: {info['clip_fraction']:.4f}")
    ok = check(bool(torch.isfinite(loss)), "loss is NaN/Inf")
    ok &= check(abs(info["approx_kl"]) < 1e-6, f"approx_kl {info['approx_kl']:.2e} should be ~0 (same policy)")
    ok &= check(info["clip_fraction"] == 0.0, f"clip_fraction {info['clip_fraction']} should be 0 (same policy)")
    ok &= check(abs(info["ratio_mean"] - 1.0) < 1e-6, f"ratio_mean {info['ratio_mean']:.6f} should be 1")
    # Same policy: the loss is -mean(A), and its gradient is the plain policy gradient
    ok &= check(abs(loss.item() + advantages.mean().item()) < 1e-5, "loss should equal -mean(A) when rho = 1")
    if clip_range is not None:  # Exercise 2.5.2: a policy that moved (mean +0.3, std x1.2)
        with torch.no_grad():
            moved = Normal(dist.mean + 0.3, dist.stddev * 1.2)
        for eps in sorted({0.0, 0.1, 0.2, 0.5, 1.0, clip_range}):
            _, moved_info = compute_ppo_loss(moved, old_log_probs, actions, advantages, clip_range=eps)
            mark = "  <- --clip-range" if eps == clip_range else ""
            print(f"  Exercise 2.5.2 -- moved policy, clip_range={eps:.2f}: "
                  f"clip_fraction={moved_info['clip_fraction']:.3f}{mark}")
    if ok:
        print("  [PASS] PPO loss OK")
    return ok


def verify_update() -> bool:
    """10 updates on one mock batch: the critic learns (value loss falls), the policy moves a little."""
    print("Verifying PPO update...")
    model = ActorCritic(obs_dim=4, act_dim=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    obs, actions = torch.randn(64, 4), torch.randn(64, 2)
    with torch.no_grad():
        dist, values = model(obs)
        old_log_probs = dist.log_prob(actions).sum(dim=-1)
    advantages = torch.randn(64)
    batch = RolloutBatch(obs, actions, old_log_probs, advantages, returns=values + advantages)
    initial_vloss, info = None, {}
    for _ in range(10):
        info = ppo_update(model, optimizer, batch)
        if initial_vloss is None:
            initial_vloss = info["value_loss"]
    _, final_values = model(obs)
    final_vloss = 0.5 * (final_values - batch.returns).pow(2).mean().item()  # after the 10th step
    print(f"  Initial value loss: {initial_vloss:.4f}")
    print(f"  Final value loss: {final_vloss:.4f}")
    print(f"  Approx KL: {info['approx_kl']:.4f}")
    ok = check(np.isfinite(info["loss"]), "total loss is NaN/Inf")
    ok &= check(final_vloss < initial_vloss, f"value loss did not decrease ({initial_vloss:.4f} -> {final_vloss:.4f})")
    ok &= check(0.0 <= info["approx_kl"] < 0.05, f"approx_kl {info['approx_kl']:.4f} not in [0, 0.05)")
    ok &= check(info["approx_kl"] > 0.0, "approx_kl is 0 after 10 updates: the policy did not move")
    if ok:
        print("  [PASS] PPO update OK")
    return ok


def run_verification(gae_lambda: float | None = None, clip_range: float | None = None) -> bool:
    """The chapter's section 2.5.6 output. True when every check passes."""
    torch.manual_seed(0)
    print("=" * 60)
    print("PPO From Scratch -- Verification")
    print("=" * 60)
    results = [verify_gae(gae_lambda)]
    print()
    results.append(verify_ppo_loss(clip_range))
    print()
    results.append(verify_update())
    print()
    print("=" * 60)
    ok = all(results)
    print("[ALL PASS] PPO implementation verified" if ok else "[FAIL] PPO implementation has failing checks")
    print("=" * 60)
    return ok


# =============================================================================
# --compare-sb3: our GAE against SB3's RolloutBuffer
# =============================================================================

def random_rollout(n_steps: int, n_envs: int, gamma: float, seed: int) -> dict[str, np.ndarray]:
    """Random rewards/values with terminations and truncations mid-rollout, as float32 arrays.

    Truncated steps get gamma * V(final_obs) added to the reward -- SB3's collect_rollouts transformation,
    applied once and fed to both implementations. dones = terminated | truncated.
    """
    rng = np.random.default_rng(seed)
    terminated = rng.random((n_steps, n_envs)) < 0.05
    truncated = (rng.random((n_steps, n_envs)) < 0.05) & ~terminated
    terminated[n_steps // 3, 0], truncated[n_steps // 2, 1] = True, True  # at least one of each
    truncated[n_steps // 3, 0], terminated[n_steps // 2, 1] = False, False
    rewards = rng.normal(size=(n_steps, n_envs)).astype(np.float32)
    final_values = rng.normal(size=(n_steps, n_envs)).astype(np.float32)  # V(final_obs)
    rewards = (rewards + gamma * final_values * truncated).astype(np.float32)
    return {
        "rewards": rewards,
        "values": rng.normal(size=(n_steps, n_envs)).astype(np.float32),
        "dones": (terminated | truncated).astype(np.float32),
        "first_episode_starts": (rng.random(n_envs) < 0.5).astype(np.float32),
        "last_values": rng.normal(size=n_envs).astype(np.float32),
        "n_terminated": np.array(terminated.sum()),
        "n_truncated": np.array(truncated.sum()),
    }


def sb3_gae(data: dict[str, np.ndarray], gamma: float, gae_lambda: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns [n_steps, n_envs] from SB3's RolloutBuffer on the same data."""
    from stable_baselines3.common.buffers import RolloutBuffer

    n_steps, n_envs = data["rewards"].shape
    box = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
    buffer = RolloutBuffer(n_steps, box, box, device="cpu", gae_lambda=gae_lambda, gamma=gamma, n_envs=n_envs)
    # SB3 stores episode_starts[t] = "x_t is the first obs of an episode" = dones[t - 1]
    episode_starts = np.concatenate([data["first_episode_starts"][None], data["dones"][:-1]])
    zeros = np.zeros((n_envs, 1), dtype=np.float32)
    for t in range(n_steps):
        buffer.add(zeros, zeros, data["rewards"][t], episode_starts[t], torch.as_tensor(data["values"][t]),
                   torch.zeros(n_envs))
    buffer.compute_returns_and_advantage(torch.as_tensor(data["last_values"]), data["dones"][-1].astype(bool))
    return buffer.advantages, buffer.returns


def compare_sb3(n_steps: int = 128, n_envs: int = 4, seed: int = 0, atol: float = 1e-6) -> bool:
    """Print the chapter's section 2.5.7 comparison; True when both diffs are within atol."""
    gamma, gae_lambda = 0.99, 0.95
    data = random_rollout(n_steps, n_envs, gamma, seed)
    sb3_adv, sb3_ret = sb3_gae(data, gamma, gae_lambda)
    adv, ret = compute_gae(*(torch.as_tensor(data[k]) for k in ("rewards", "values", "last_values", "dones")),
                           gamma=gamma, gae_lambda=gae_lambda)
    adv_diff = float(np.abs(adv.numpy() - sb3_adv).max())
    ret_diff = float(np.abs(ret.numpy() - sb3_ret).max())
    print("=" * 60)
    print("PPO From Scratch -- SB3 Comparison")
    print("=" * 60)
    print(f"Rollout: {n_steps} steps x {n_envs} envs, {int(data['n_terminated'])} terminations, "
          f"{int(data['n_truncated'])} truncations (bootstrapped: reward += gamma * V(final_obs))")
    print(f"Max abs advantage diff: {adv_diff:.3e}")
    print(f"Max abs returns diff: {ret_diff:.3e}")
    print(f"Tolerance (atol): {atol:.1e}")
    print()
    ok = adv_diff <= atol and ret_diff <= atol
    print("[PASS] Our GAE matches SB3 RolloutBuffer" if ok else "[FAIL] Our GAE differs from SB3 RolloutBuffer")
    return ok


# =============================================================================
# --demo / --record: CartPole-v1 from scratch
# =============================================================================

DEMO_CONFIG = PPOConfig(
    n_envs=8, n_steps=256, batch_size=256, n_epochs=10, learning_rate=1e-3, gamma=0.98, gae_lambda=0.8,
    clip_range=0.2, ent_coef=0.0, vf_coef=0.5, max_grad_norm=0.5, total_timesteps=100_000,
    stats_window_size=20,
)
"""CartPole settings for a fast, reliable solve: gamma 0.98 / lambda 0.8 (rl-zoo's CartPole values) keep
the returns the shared trunk must fit small, lr 1e-3 learns fast. Seeds 0-9 all solved in 16k-39k steps."""


def run_demo(seed: int = 0, total_steps: int | None = None, logdir: str | None = None) -> tuple[ActorCritic, bool]:
    """Train CartPole-v1 until the mean return of the last 20 episodes is >= 195. Returns (model, solved)."""
    cfg = PPOConfig(**{**_asdict(DEMO_CONFIG), "seed": seed,
                       "total_timesteps": total_steps or DEMO_CONFIG.total_timesteps})
    torch.set_num_threads(1)  # a 64-unit MLP: threads cost more than they give
    print("=" * 60)
    print("PPO From Scratch -- CartPole Demo")
    print("=" * 60)
    print(f"n_envs={cfg.n_envs} n_steps={cfg.n_steps} batch_size={cfg.batch_size} n_epochs={cfg.n_epochs} "
          f"lr={cfg.learning_rate} seed={cfg.seed} budget={cfg.total_timesteps} steps")
    print()
    print(f"{'Iteration':>9} | {'Steps':>7} | {'Avg Return':>10} | {'Value Loss':>10} | {'Approx KL':>9}")
    solved: list[IterationStats] = []

    def on_iteration(it: IterationStats) -> bool:
        print(f"{it.iteration:>9} | {it.timesteps:>7} | {it.ep_rew_mean:>10.1f} | {it.value_loss:>10.3f} | "
              f"{it.approx_kl:>9.4f}")
        if it.ep_rew_mean >= CARTPOLE_SOLVED:
            solved.append(it)
            return False
        return True

    envs = make_vector_env(make_cartpole, cfg.n_envs)
    start = time.perf_counter()
    model, steps = train(envs, cfg, callback=on_iteration, logdir=logdir)
    envs.close()
    seconds = time.perf_counter() - start
    print()
    if solved:
        print(f"[SOLVED] avg return {solved[0].ep_rew_mean:.1f} >= {CARTPOLE_SOLVED:.0f} "
              f"at iteration {solved[0].iteration}: {steps} steps in {seconds:.1f} s")
    else:
        print(f"[NOT SOLVED] avg return < {CARTPOLE_SOLVED:.0f} after {steps} steps ({seconds:.1f} s)")
    return model, bool(solved)


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


def render_cartpole(state: np.ndarray, width: int = 600, height: int = 400) -> np.ndarray:
    """[height, width, 3] uint8 picture of CartPole state (x, x_dot, theta, theta_dot).

    Same geometry and colours as gymnasium's rgb_array renderer, drawn with numpy: gymnasium's own
    renderer needs pygame, which this project does not depend on.
    """
    x, _, theta, _ = (float(v) for v in state)
    scale = width / 4.8  # the track spans +-2.4 m (x_threshold)
    frame = np.full((height, width, 3), 255, dtype=np.uint8)
    rows, cols = np.mgrid[0:height, 0:width]
    up = height - 1 - rows  # pixel height above the bottom edge
    cart_x, cart_y = x * scale + width / 2.0, 100.0
    frame[height - 1 - int(cart_y)] = 0  # track
    frame[(np.abs(cols - cart_x) <= 25) & (np.abs(up - cart_y) <= 15)] = 0  # cart, 50 x 30 px
    axle_y = cart_y + 30 / 4
    tip = np.array([cart_x + scale * np.sin(theta), axle_y + scale * np.cos(theta)])  # pole: 1 m
    along = np.clip(((cols - cart_x) * (tip[0] - cart_x) + (up - axle_y) * (tip[1] - axle_y)) / scale**2, 0, 1)
    distance = np.hypot(cols - cart_x - along * (tip[0] - cart_x), up - axle_y - along * (tip[1] - axle_y))
    frame[distance <= 5] = (202, 152, 101)  # pole, 10 px wide
    frame[np.hypot(cols - cart_x, up - axle_y) <= 5] = (129, 132, 203)  # axle
    return frame


def record_cartpole(model: ActorCritic, path: Path = DEFAULT_GIF, seed: int = 0, frame_skip: int = 2) -> int:
    """One deterministic episode (mean action) rendered to a GIF; returns the number of frames."""
    env = make_cartpole()
    obs, _ = env.reset(seed=seed)
    frames, episode_return, step = [render_cartpole(env.unwrapped.state)], 0.0, 0
    terminated = truncated = False
    while not (terminated or truncated):
        with torch.no_grad():
            dist, _ = model(torch.as_tensor(obs, dtype=torch.float32)[None])
        obs, reward, terminated, truncated, _ = env.step(dist.mean[0].numpy())
        episode_return += float(reward)
        step += 1
        if step % frame_skip == 0:
            frames.append(render_cartpole(env.unwrapped.state))
    fps = max(1, env.metadata.get("render_fps", 50) // frame_skip)
    env.close()
    write_gif_atomic(frames, path, fps)
    print(f"Recorded {len(frames)} frames of a {step}-step episode (return {episode_return:.0f}) -> {path}")
    return len(frames)


# =============================================================================
# --fetch: the same PPO on FetchReachDense-v4
# =============================================================================

FETCH_CONFIG = PPOConfig()  # the chapter's hyper-parameters (section 2.3)


@dataclass(frozen=True)
class FetchEvalResult:
    """Deterministic evaluation; success = info["is_success"] at each episode's last step."""

    n_episodes: int
    success_rate: float
    return_mean: float
    final_distance_mean: float  # metres, ||achieved_goal - desired_goal|| of the final observation


def evaluate_fetch(model: ActorCritic, n_episodes: int = 100) -> FetchEvalResult:
    """Mean action, episode i reset with seed 1_000_000 + i, 50 steps each (Fetch only truncates)."""
    env = make_fetch_reach()
    low, high = env.action_space.low, env.action_space.high
    successes, returns, distances = [], [], []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=EVAL_SEED_OFFSET + i)
        episode_return, info = 0.0, {}
        terminated = truncated = False
        while not (terminated or truncated):
            with torch.no_grad():
                dist, _ = model(torch.as_tensor(flatten_goal_obs(obs))[None])
            obs, reward, terminated, truncated, info = env.step(np.clip(dist.mean[0].numpy(), low, high))
            episode_return += float(reward)
        successes.append(float(info["is_success"]))
        returns.append(episode_return)
        distances.append(float(np.linalg.norm(obs["achieved_goal"] - obs["desired_goal"])))
    env.close()
    return FetchEvalResult(n_episodes, float(np.mean(successes)), float(np.mean(returns)), float(np.mean(distances)))


def fetch_criteria(result: FetchEvalResult) -> list[tuple[str, float, str, bool]]:
    """(criterion, value, threshold, passed) -- the chapter's section 3.4 pass bar."""
    return [
        ("success rate", result.success_rate, "> 0.90", result.success_rate > 0.90),
        ("return mean", result.return_mean, "> -10", result.return_mean > -10.0),
        ("final distance mean (m)", result.final_distance_mean, "< 0.02", result.final_distance_mean < 0.02),
    ]


def run_fetch(seed: int = 0, total_steps: int | None = None, n_eval_episodes: int = 100,
              logdir: str | None = None) -> bool:
    """Train from scratch on FetchReachDense-v4, evaluate, print the criteria table. True when all pass."""
    cfg = PPOConfig(**{**_asdict(FETCH_CONFIG), "seed": seed,
                       "total_timesteps": total_steps or FETCH_CONFIG.total_timesteps})
    torch.set_num_threads(1)
    print("=" * 72)
    print(f"PPO From Scratch -- {FETCH_ENV_ID}")
    print("=" * 72)
    print(f"n_envs={cfg.n_envs} n_steps={cfg.n_steps} batch_size={cfg.batch_size} n_epochs={cfg.n_epochs} "
          f"lr={cfg.learning_rate} clip={cfg.clip_range} seed={cfg.seed} total={cfg.total_timesteps}")
    print(f"{'Iter':>4} | {'Steps':>7} | {'ep_rew_mean':>11} | {'success':>7} | {'value_loss':>10} | "
          f"{'approx_kl':>9} | {'clip_frac':>9} | {'fps':>5}")

    def on_iteration(it: IterationStats) -> bool:
        print(f"{it.iteration:>4} | {it.timesteps:>7} | {it.ep_rew_mean:>11.2f} | {it.success_rate:>7.2f} | "
              f"{it.value_loss:>10.4f} | {it.approx_kl:>9.4f} | {it.clip_fraction:>9.3f} | {it.fps:>5}",
              flush=True)
        return True

    envs = make_vector_env(lambda: FlattenGoalObservation(make_fetch_reach()), cfg.n_envs)
    start = time.perf_counter()
    model, steps = train(envs, cfg, callback=on_iteration, logdir=logdir)
    envs.close()
    train_seconds = time.perf_counter() - start
    result = evaluate_fetch(model, n_eval_episodes)
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


def _asdict(cfg: PPOConfig) -> dict[str, Any]:
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
        prog="ppo_from_scratch.py",
        description="PPO from scratch: chapter 2's lab (verify, compare with SB3, train CartPole or Fetch).",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--verify", action="store_true", help="run the chapter's sanity checks")
    mode.add_argument("--compare-sb3", action="store_true", help="compare our GAE with SB3's RolloutBuffer")
    mode.add_argument("--demo", action="store_true", help="train CartPole-v1 until avg return >= 195")
    mode.add_argument("--fetch", action="store_true", help=f"train and evaluate {FETCH_ENV_ID}")
    parser.add_argument("--record", action="store_true", help="with --demo: save a GIF of the trained policy")
    parser.add_argument("--video", type=Path, default=DEFAULT_GIF, help="GIF path for --record (default: %(default)s)")
    parser.add_argument("--seed", type=_number(int, 0), default=0, help="random seed (default: 0)")
    parser.add_argument("--total-steps", type=_number(int, 0, low_open=True), default=None,
                        help="training budget in env steps (default: demo 100000, fetch 500000)")
    parser.add_argument("--n-eval-episodes", type=_number(int, 0, low_open=True), default=None,
                        help="with --fetch: evaluation episodes (default: 100)")
    parser.add_argument("--gae-lambda", type=_number(float, 0.0, 1.0), default=None,
                        help="with --verify: Exercise 2.5.1, compare advantages at this lambda")
    parser.add_argument("--clip-range", type=_number(float, 0.0, 10.0), default=None,
                        help="with --verify: Exercise 2.5.2, clip_fraction at this clip range")
    parser.add_argument("--logdir", default=None, help="with --demo/--fetch: TensorBoard log directory")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (args.verify or args.compare_sb3 or args.demo or args.fetch):
        parser.error("choose one mode: --verify, --compare-sb3, --demo or --fetch")
    if args.record and not args.demo:
        parser.error("--record only works with --demo")
    if (args.gae_lambda is not None or args.clip_range is not None) and not args.verify:
        parser.error("--gae-lambda and --clip-range are exercises of --verify")
    if args.total_steps is not None and not (args.demo or args.fetch):
        parser.error("--total-steps only applies to --demo and --fetch")
    if args.logdir is not None and not (args.demo or args.fetch):
        parser.error("--logdir only applies to --demo and --fetch")
    if args.n_eval_episodes is not None and not args.fetch:
        parser.error("--n-eval-episodes only applies to --fetch")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.verify:
        return 0 if run_verification(args.gae_lambda, args.clip_range) else 1
    if args.compare_sb3:
        return 0 if compare_sb3() else 1
    if args.fetch:
        return 0 if run_fetch(args.seed, args.total_steps, args.n_eval_episodes or 100, args.logdir) else 1
    start = time.perf_counter()
    model, solved = run_demo(args.seed, args.total_steps, args.logdir)
    if args.record:
        record_cartpole(model, args.video, seed=args.seed)
    print(f"Total time: {time.perf_counter() - start:.1f} s")
    return 0 if solved else 1


if __name__ == "__main__":
    sys.exit(main())
