"""PPO: its hyper-parameters (SB3's names, chapter 2's defaults) and its :class:`~fetchrl.algos.base.Algorithm`.

The SB3 class and the fast class (:class:`fetchrl.algos.fastppo.FastPPO`, bit-equal to SB3's PPO)
are imported only when a model is built: this module is imported by ``fetchrl.config`` and by the
CLI's ``--help``, which must not wait for torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fetchrl import metrics
from fetchrl.algos.base import (
    MAX_ROLLOUT,
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_INT,
    UNIT_CLOSED,
    UNIT_OPEN_CLOSED,
    AlgoConfig,
    Algorithm,
    hyperparameter,
)
from fetchrl.errors import FetchRLError

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm


@dataclass(frozen=True)
class PPOConfig(AlgoConfig):
    """``stable_baselines3.PPO``'s hyper-parameters; defaults are the chapter's table in section 2.3
    (and SB3's where the chapter is silent)."""

    policy: str = "MultiInputPolicy"
    """SB3 policy class: flattens the dict observation and feeds a 64-64 tanh MLP."""
    n_steps: int = hyperparameter(1024, POSITIVE_INT)
    """Steps per environment per rollout."""
    batch_size: int = hyperparameter(256, POSITIVE_INT)
    """Minibatch size of each gradient step."""
    n_epochs: int = hyperparameter(10, POSITIVE_INT)
    """Passes over each rollout."""
    learning_rate: float = hyperparameter(3e-4, POSITIVE)
    """Adam step size (constant)."""
    clip_range: float = hyperparameter(0.2, UNIT_OPEN_CLOSED)
    """PPO's epsilon: the likelihood ratio is clipped to [1 - eps, 1 + eps]."""
    gae_lambda: float = hyperparameter(0.95, UNIT_CLOSED)
    """GAE's lambda: 0 is one-step TD, 1 is Monte Carlo."""
    gamma: float = hyperparameter(0.99, UNIT_OPEN_CLOSED)
    """Discount factor."""
    ent_coef: float = hyperparameter(0.0, NON_NEGATIVE)
    """Entropy bonus coefficient c2."""
    vf_coef: float = hyperparameter(0.5, NON_NEGATIVE)
    """Value loss coefficient c1."""
    max_grad_norm: float = hyperparameter(0.5, POSITIVE)
    """Global gradient-norm clip (SB3's default; 0 would scale every gradient to zero)."""

    def rollout_size(self, n_envs: int) -> int:
        """Transitions per rollout: n_steps * n_envs (8 * 1024 = 8,192 with the chapter's settings)."""
        return self.n_steps * n_envs

    def check_run(self, n_envs: int) -> None:
        """A rollout of at most ``MAX_ROLLOUT`` transitions, tiled by whole minibatches of at least 2
        (SB3 would assert, or only warn and train on a truncated minibatch)."""
        size = self.rollout_size(n_envs)
        if size > MAX_ROLLOUT:
            raise FetchRLError(f"a rollout of n_steps * n_envs = {size} transitions is more than {MAX_ROLLOUT}; "
                               "lower --n-steps or --n-envs")
        if self.batch_size > size:
            raise FetchRLError(
                f"--batch-size {self.batch_size} is larger than a rollout "
                f"(n_steps * n_envs = {size}); lower it or raise --n-steps"
            )
        # SB3 asserts batch_size > 1 (advantages are normalised per minibatch) and only warns, over
        # several lines, when the minibatches do not tile the rollout: refuse both with the rule.
        if self.batch_size < 2:
            raise FetchRLError(f"--batch-size must be >= 2 (advantages are normalised per minibatch), "
                               f"got {self.batch_size}")
        if size % self.batch_size:
            raise FetchRLError(f"--batch-size {self.batch_size} must divide the rollout (n_steps * n_envs = {size}) "
                               f"so every minibatch is full; e.g. --batch-size {_largest_divisor(size, self.batch_size)}")


def _largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is <= ``at_most`` (the batch size nearest below a refused one)."""
    return next(d for d in range(at_most, 0, -1) if n % d == 0)


def _sb3_ppo() -> type[BaseAlgorithm]:
    from stable_baselines3 import PPO as SB3PPO

    return SB3PPO


def _fast_ppo() -> type[BaseAlgorithm]:
    from fetchrl.algos.fastppo import FastPPO

    return FastPPO


PPO = Algorithm(
    name="ppo",
    title="PPO",
    config_class=PPOConfig,
    load_sb3_class=_sb3_ppo,
    load_fast_class=_fast_ppo,
    diagnostics_tags=metrics.REQUIRED_TAGS,
)
