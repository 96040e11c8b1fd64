"""SAC: its hyper-parameters (SB3's names, chapter 3's defaults) and its :class:`~fetchrl.algos.base.Algorithm`.

Chapter 3 trains SB3's ``SAC("MultiInputPolicy")`` on FetchReachDense-v4 with 8 envs and one gradient
step per vector step (``train_freq=1``, ``gradient_steps=1``: one update per 8 transitions), SB3's
default 256-256 networks. SB3's class is imported only when a model is built (this module is read by
``--help``); the fast class, when :mod:`fetchrl.algos.fastsac` exists, likewise.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fetchrl import metrics
from fetchrl.algos.base import (
    NON_NEGATIVE,
    NON_NEGATIVE_INT,
    POSITIVE,
    POSITIVE_INT,
    UNIT_OPEN_CLOSED,
    AlgoConfig,
    Algorithm,
    AutoOrPositive,
    hyperparameter,
)
from fetchrl.errors import FetchRLError

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

#: Steps of a Fetch episode (its ``TimeLimit``; Fetch never terminates, it truncates at 50 steps).
FETCH_EPISODE_STEPS = 50
#: SB3's off-policy ``learn`` writes the logs every ``log_interval`` finished episodes; fetchrl asks
#: for about this many env steps between two writes (SB3's default, 4 episodes, is every 200 steps).
LOG_EVERY_STEPS = 1_000


@dataclass(frozen=True)
class SACConfig(AlgoConfig):
    """``stable_baselines3.SAC``'s hyper-parameters; defaults are chapter 3's setup (SB3's where it is silent)."""

    policy: str = "MultiInputPolicy"
    """SB3 policy class: flattens the dict observation; actor and twin critics are SB3's default 256-256 MLPs."""
    buffer_size: int = hyperparameter(1_000_000, POSITIVE_INT)
    """Replay buffer capacity in transitions (all envs together)."""
    learning_starts: int = hyperparameter(10_000, NON_NEGATIVE_INT)
    """Steps of uniformly random actions before the first gradient step."""
    batch_size: int = hyperparameter(256, POSITIVE_INT)
    """Transitions sampled from the replay buffer per gradient step."""
    learning_rate: float = hyperparameter(3e-4, POSITIVE)
    """Adam step size of actor, critics and entropy coefficient (constant)."""
    gamma: float = hyperparameter(0.99, UNIT_OPEN_CLOSED)
    """Discount factor."""
    tau: float = hyperparameter(0.005, UNIT_OPEN_CLOSED)
    """Polyak coefficient of the target critics: target <- (1 - tau) * target + tau * critic."""
    ent_coef: str | float = hyperparameter("auto", AutoOrPositive())
    """Entropy coefficient alpha: 'auto' (learned from 1), 'auto_<x>' (learned from x) or a fixed number."""
    ent_coef_min: float = hyperparameter(0.0, NON_NEGATIVE, sb3=False)
    """Floor of a learned ent_coef (0: none). Not SB3's: fetchrl clamps log(alpha) after every update, so a
    run cannot collapse its exploration below it (chapter 4: sparse Push with 'auto' fell to 0.005)."""
    train_freq: int = hyperparameter(1, POSITIVE_INT)
    """Vector-env steps between two updates (each step adds n_envs transitions)."""
    gradient_steps: int = hyperparameter(1, POSITIVE_INT)
    """Gradient steps per update (1 with train_freq 1 and 8 envs: one step per 8 transitions)."""

    def rollout_size(self, n_envs: int) -> int:
        """Transitions collected between two updates: train_freq * n_envs (8 with the chapter's settings)."""
        return self.train_freq * n_envs

    def validate(self) -> None:
        super().validate()
        if self.ent_coef_min > 0 and not str(self.ent_coef).startswith("auto"):
            raise FetchRLError(f"--ent-coef-min {self.ent_coef_min:g} floors a learned coefficient; --ent-coef "
                               f"{self.ent_coef} is fixed (use --ent-coef auto, or drop --ent-coef-min)")
        initial = self.ent_coef[5:] if isinstance(self.ent_coef, str) and self.ent_coef.startswith("auto_") else None
        if initial is not None and float(initial) < self.ent_coef_min:
            raise FetchRLError(f"--ent-coef {self.ent_coef} starts below --ent-coef-min {self.ent_coef_min:g}")

    def check_run(self, n_envs: int) -> None:
        """A batch must fit in the buffer (SB3 would sample the same transitions again and again)."""
        if self.batch_size > self.buffer_size:
            raise FetchRLError(f"--batch-size {self.batch_size} is larger than --buffer-size {self.buffer_size}; "
                               "lower it or raise --buffer-size")
        if self.buffer_size < n_envs:
            raise FetchRLError(f"--buffer-size {self.buffer_size} holds less than one step of --n-envs {n_envs}")

    def learn_kwargs(self, n_envs: int) -> dict[str, Any]:
        """``log_interval`` (episodes) so that SB3 writes ``train/*`` about every :data:`LOG_EVERY_STEPS`
        steps: a multiple of ``n_envs``, because the envs finish their 50-step episodes together."""
        rounds = max(1, round(LOG_EVERY_STEPS / (FETCH_EPISODE_STEPS * n_envs)))
        return {"log_interval": rounds * n_envs}


def _sb3_sac() -> type[BaseAlgorithm]:
    from stable_baselines3 import SAC as SB3SAC

    return SB3SAC


def _fast_sac() -> type[BaseAlgorithm]:
    """fetchrl's bit-equal fast SAC (``fetchrl.algos.fastsac.FastSAC``) once that module exists, else SB3's."""
    if importlib.util.find_spec("fetchrl.algos.fastsac") is None:
        return _sb3_sac()
    module = importlib.import_module("fetchrl.algos.fastsac")
    fast: type[BaseAlgorithm] = module.FastSAC
    return fast


SAC = Algorithm(
    name="sac",
    title="SAC",
    config_class=SACConfig,
    load_sb3_class=_sb3_sac,
    load_fast_class=_fast_sac,
    diagnostics_tags=(*metrics.SAC_CURVES, metrics.FPS),
    checkpoint_members=("data", "policy.pth", "actor.optimizer.pth", "critic.optimizer.pth"),
    on_policy=False,
)
