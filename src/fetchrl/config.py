"""Run, evaluation and criteria configuration: frozen dataclasses, defined once.

A training run is a :class:`TrainConfig`: where and how long to train (task, seed, step budget,
parallel envs, device) composed with the algorithm's hyper-parameters (``algo``: one frozen
dataclass per algorithm in ``fetchrl.algos``, fields named as SB3's keyword arguments, so
``config.algo.sb3_kwargs()`` passes straight to the SB3 class). ``TrainConfig()`` is chapter 2's
run: PPO on FetchReachDense-v4 with the chapter's table in section 2.3.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fetchrl.algos.base import RUN_HYPERPARAMETERS, AlgoConfig, Algorithm, check_run_value, check_seed_span
from fetchrl.algos.her import SAC_HER
from fetchrl.algos.ppo import PPO, PPOConfig
from fetchrl.algos.sac import SAC
from fetchrl.errors import FetchRLError

DEFAULT_ENV_ID = "FetchReachDense-v4"
#: Chapter 2's algorithm, for modules that write ``algo`` into artifacts without a chapter at hand.
ALGO = PPO.name
#: Environment variable a sweep worker sets to its share of the cores; the fast VecEnv reads it (one
#: core: no env worker process) so that parallel trials do not oversubscribe the CPU.
ENV_THREADS_VAR = "FETCHRL_ENV_THREADS"

#: Chapter 2's (PPO's) hyper-parameters that define the learning problem; a resumed run must match
#: them exactly. Generic code reads ``config.hyperparameters`` (any algorithm) instead.
HYPERPARAMETER_NAMES = PPO.resume_names

#: Every algorithm fetchrl trains, by short name (``RunPaths.names.algo``, the meta JSON's ``algo``).
ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (PPO, SAC, SAC_HER)}


def algorithm_named(name: str) -> Algorithm:
    """The algorithm whose short name is ``name`` ("ppo", "sac"); ValueError for another."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r} (known: {', '.join(ALGORITHMS)})") from None


@dataclass(frozen=True, init=False)
class TrainConfig:
    """Everything that determines one training run on a Fetch task.

    Build it with run fields and, optionally, ``algo=`` (default: chapter 2's :class:`PPOConfig`);
    any other keyword is a hyper-parameter of ``algo`` by its SB3 name and replaces that field:
    ``TrainConfig(total_steps=2048, n_steps=256)``. Hyper-parameters also read through
    (``config.n_steps`` is ``config.algo.n_steps``), because the CLI flags, the sweep grids and the
    metadata JSON name them flat. Every value is validated on construction.
    """

    env_id: str = DEFAULT_ENV_ID
    """Gymnasium id of the task (chapter 2: FetchReachDense-v4)."""
    seed: int = 0
    """Seed of the policy initialisation, the rollouts' RNG and the training environments."""
    total_steps: int = 500_000
    """Environment steps to train for, summed over all parallel environments."""
    n_envs: int = 8
    """Parallel environments (PPO: a rollout holds n_steps * n_envs transitions; SAC: n_envs per vector step)."""
    device: str = "cpu"
    """Torch device; SB3 recommends CPU for PPO with an MLP policy."""
    deterministic_torch: bool = False
    """Force deterministic torch kernels (CPU results are already repeatable; this costs little)."""
    fast_env: bool = True
    """Use fetchrl's bit-compatible fast FetchReach step where available (False: Gymnasium-Robotics' own)."""
    portable: bool = False
    """The same numbers on any x86-64 CPU with AVX2: torch's, oneMKL's and OpenBLAS's kernels pinned, one
    thread (``--portable``, :mod:`fetchrl.portable`). Off, the numbers depend on the CPU."""
    algo: AlgoConfig = PPOConfig()
    """The algorithm's hyper-parameters (chapter 2: PPO with the chapter's table)."""

    def __init__(self, **values: Any) -> None:
        fields = {f.name: f for f in dataclasses.fields(self)}
        algo: AlgoConfig = values.pop("algo", fields["algo"].default)
        tunable = {name: values.pop(name) for name in list(values) if name not in fields}
        unknown = sorted(set(tunable) - set(algo.hyperparameters))
        if unknown:
            raise TypeError(f"TrainConfig has no field or {type(algo).__name__} hyper-parameter "
                            f"{', '.join(unknown)}")
        for name, f in fields.items():
            if name != "algo":
                object.__setattr__(self, name, values.get(name, f.default))
        object.__setattr__(self, "algo", dataclasses.replace(algo, **tunable) if tunable else algo)
        self.validate()

    def __getattr__(self, name: str) -> Any:
        # Only called when ordinary lookup fails: a hyper-parameter read by its SB3 name.
        algo = self.__dict__.get("algo")
        if algo is not None and not name.startswith("_") and name in algo.hyperparameters:
            return getattr(algo, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---------------------------------------------------------------- derived values
    @property
    def algorithm(self) -> Algorithm:
        """The :class:`~fetchrl.algos.base.Algorithm` whose hyper-parameters ``algo`` holds."""
        for candidate in ALGORITHMS.values():
            if type(self.algo) is candidate.config_class:
                return candidate
        raise ValueError(f"no algorithm has the hyper-parameter class {type(self.algo).__name__}")

    @property
    def rollout_size(self) -> int:
        """Transitions collected between two updates (PPO: n_steps * n_envs)."""
        return self.algo.rollout_size(self.n_envs)

    @property
    def steps_in_whole_rollouts(self) -> int:
        """Steps SB3 really trains: total_steps rounded up to whole rollouts (500,000 -> 507,904)."""
        return self.algo.steps_trained(self.total_steps, self.n_envs)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """All learning hyper-parameters (``n_envs`` last), as written into the metadata JSON."""
        return {**self.algo.hyperparameters, **{name: getattr(self, name) for name in RUN_HYPERPARAMETERS}}

    def sb3_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the algorithm's SB3 class (policy and env excluded)."""
        return self.algo.sb3_kwargs()

    def ppo_kwargs(self) -> dict[str, Any]:
        """Chapter 2's name for :meth:`sb3_kwargs`."""
        return self.sb3_kwargs()

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields or hyper-parameters changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise FetchRLError with an actionable one-line message on a bad value."""
        for name in ("seed", "total_steps", "n_envs"):  # the CLI flags' own bounds
            check_run_value(name, getattr(self, name))
        check_seed_span(self.seed, self.n_envs)  # env i is seeded seed + i: numpy refuses past 2**32 - 1
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise FetchRLError(f"--device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        self.algo.check_run(self.n_envs)


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


Comparison = Literal[">", ">=", "<", "<="]
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
}


@dataclass(frozen=True)
class Criterion:
    """One passing criterion of a chapter: ``aggregate[metric] <op> threshold`` on an eval JSON."""

    name: str
    """What the report's table calls it: ``"success rate"``, ``"final distance (m)"``."""
    metric: str
    """Key of the eval JSON's ``aggregate`` block: ``"success_rate"``, ``"final_distance_mean"``."""
    op: Comparison
    """How the measured value must compare with the threshold."""
    threshold: float

    def __post_init__(self) -> None:
        if self.op not in _COMPARE:
            raise ValueError(f"criterion {self.name!r}: op must be one of {', '.join(_COMPARE)}, got {self.op!r}")

    def passes(self, value: float) -> bool:
        """True when ``value`` meets the criterion (NaN never does)."""
        return _COMPARE[self.op](value, self.threshold)
