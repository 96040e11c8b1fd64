"""The chapter's configuration, defined once.

Field names are Stable-Baselines3's so ``config.ppo_kwargs()`` passes straight to ``PPO(...)``.
Defaults are the chapter's table in section 2.3 (and SB3's defaults where the chapter is silent).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fetchrl.errors import FetchRLError

DEFAULT_ENV_ID = "FetchReachDense-v4"
ALGO = "ppo"
#: Environment variable a sweep worker sets to its share of the cores; the fast VecEnv reads it (one
#: core: no env worker process) so that parallel trials do not oversubscribe the CPU.
ENV_THREADS_VAR = "FETCHRL_ENV_THREADS"

#: Hyper-parameters that define the learning problem; a resumed run must match them exactly.
HYPERPARAMETER_NAMES = (
    "policy",
    "n_steps",
    "batch_size",
    "n_epochs",
    "learning_rate",
    "clip_range",
    "gae_lambda",
    "gamma",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
    "n_envs",
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines one training run of PPO on a Fetch task."""

    env_id: str = DEFAULT_ENV_ID
    """Gymnasium id of the task (the chapter: FetchReachDense-v4)."""
    seed: int = 0
    """Seed of the policy initialisation, the rollouts' RNG and the training environments."""
    total_steps: int = 500_000
    """Environment steps to train for, summed over all parallel environments."""
    n_envs: int = 8
    """Parallel environments; a rollout holds n_steps * n_envs transitions."""
    policy: str = "MultiInputPolicy"
    """SB3 policy class: flattens the dict observation and feeds a 64-64 tanh MLP."""
    n_steps: int = 1024
    """Steps per environment per rollout."""
    batch_size: int = 256
    """Minibatch size of each gradient step."""
    n_epochs: int = 10
    """Passes over each rollout."""
    learning_rate: float = 3e-4
    """Adam step size (constant)."""
    clip_range: float = 0.2
    """PPO's epsilon: the likelihood ratio is clipped to [1 - eps, 1 + eps]."""
    gae_lambda: float = 0.95
    """GAE's lambda: 0 is one-step TD, 1 is Monte Carlo."""
    gamma: float = 0.99
    """Discount factor."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient c2."""
    vf_coef: float = 0.5
    """Value loss coefficient c1."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip (SB3's default)."""
    device: str = "cpu"
    """Torch device; SB3 recommends CPU for PPO with an MLP policy."""
    deterministic_torch: bool = False
    """Force deterministic torch kernels (CPU results are already repeatable; this costs little)."""
    fast_env: bool = True
    """Use fetchrl's bit-compatible fast FetchReach step where available (False: Gymnasium-Robotics' own)."""

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- derived values
    @property
    def rollout_size(self) -> int:
        """Transitions per rollout: n_steps * n_envs."""
        return self.n_steps * self.n_envs

    @property
    def steps_in_whole_rollouts(self) -> int:
        """Steps SB3 really trains: total_steps rounded up to whole rollouts (500,000 -> 507,904)."""
        return -(-self.total_steps // self.rollout_size) * self.rollout_size

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """All learning hyper-parameters, as written into the metadata JSON."""
        return {name: getattr(self, name) for name in HYPERPARAMETER_NAMES}

    def ppo_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``stable_baselines3.PPO`` (policy and env excluded)."""
        hp = self.hyperparameters
        hp.pop("policy")
        hp.pop("n_envs")
        return hp

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise FetchRLError with an actionable one-line message on a bad value."""
        positive_ints = ("total_steps", "n_envs", "n_steps", "batch_size", "n_epochs")
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise FetchRLError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.seed < 0:
            raise FetchRLError(f"--seed must be >= 0, got {self.seed}")
        if not 0.0 < self.clip_range <= 1.0:
            raise FetchRLError(f"--clip-range must be in (0, 1], got {self.clip_range}")
        if not 0.0 <= self.gae_lambda <= 1.0:
            raise FetchRLError(f"--gae-lambda must be in [0, 1], got {self.gae_lambda}")
        if not 0.0 < self.gamma <= 1.0:
            raise FetchRLError(f"--gamma must be in (0, 1], got {self.gamma}")
        if self.learning_rate <= 0:
            raise FetchRLError(f"--learning-rate must be > 0, got {self.learning_rate}")
        for name in ("ent_coef", "vf_coef", "max_grad_norm"):
            if getattr(self, name) < 0:
                raise FetchRLError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.batch_size > self.rollout_size:
            raise FetchRLError(
                f"--batch-size {self.batch_size} is larger than a rollout "
                f"(n_steps * n_envs = {self.rollout_size}); lower it or raise --n-steps"
            )
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise FetchRLError(f"--device must be cpu, cuda, cuda:N or auto, got {self.device!r}")


@dataclass(frozen=True)
class EvalConfig:
    """How a checkpoint is evaluated: deterministic actions on explicitly seeded episodes."""

    n_episodes: int = 100
    """Episodes to run; episode i is reset with seed ``seed_offset + i``."""
    seed_offset: int = 1_000_000
    """First reset seed. Far from training seeds so evaluation never replays a training episode."""
    deterministic: bool = True
    """Use the policy's mean action (the chapter's protocol)."""
    n_envs: int = 10
    """Episodes run side by side (vectorised); does not change any number."""

    def __post_init__(self) -> None:
        if isinstance(self.n_episodes, bool) or not isinstance(self.n_episodes, int) or self.n_episodes <= 0:
            raise FetchRLError(f"--n-eval-episodes must be a positive integer, got {self.n_episodes!r}")
        if self.seed_offset < 0:
            raise FetchRLError(f"eval seed offset must be >= 0, got {self.seed_offset}")

    @property
    def episode_seeds(self) -> list[int]:
        """The reset seed of every evaluation episode, in order."""
        return [self.seed_offset + i for i in range(self.n_episodes)]


@dataclass(frozen=True)
class Criteria:
    """The chapter's passing criteria (section 3.4)."""

    min_success_rate: float = 0.90
    min_return_mean: float = -10.0
    max_final_distance: float = 0.02
