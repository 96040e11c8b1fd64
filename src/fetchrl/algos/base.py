"""What every algorithm module provides: a hyper-parameter dataclass and an :class:`Algorithm` descriptor.

An algorithm module (``fetchrl.algos.ppo`` today; ``sac`` next) declares

- one frozen dataclass, a subclass of :class:`AlgoConfig`, whose fields are SB3's keyword arguments
  with the chapter's defaults, a docstring under each (it becomes the CLI flag's ``--help``) and
  :class:`Bounds` on each number (they validate the dataclass *and* type the CLI flag);
- one :class:`Algorithm`: its short name, the SB3 class, the fast class if there is one, the
  dataclass, and the TensorBoard tags a healthy run must leave.

This module imports neither torch nor SB3: the CLI builds ``--help`` from it, and that must stay fast.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from fetchrl.errors import FetchRLError

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

T = TypeVar("T")

#: Run settings that change the learning problem as much as a hyper-parameter does: they are written
#: with the hyper-parameters into the metadata JSON, and a resumed run must match them too.
RUN_HYPERPARAMETERS = ("n_envs",)


@dataclass(frozen=True)
class Bounds:
    """The values a numeric hyper-parameter may take: an interval, open or closed at each end.

    One description serves the dataclass's validation and the CLI flag's ``type``, so both accept the
    same values and word a refusal the same way ("must be in (0, 1]", "must be a positive integer").
    """

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def contains(self, value: object) -> bool:
        """True for a finite number (an int if ``integer``; never a bool) inside the interval."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):  # an int is finite (isfinite overflows on 10**400)
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self) -> str:
        """``"a positive integer"``, ``"in (0, 1]"``, ``"> 0"``, ``">= 0"``: what follows "must be"."""
        if self.integer and self.high == math.inf and self.low in (0, 1):
            return "a positive integer" if self.low == 1 else "an integer >= 0"
        if self.integer:
            return f"an integer in [{self.low:g}, {self.high:g}]"
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"

    def refusal(self, value: object) -> str:
        """What follows "must be" when refusing ``value`` (None: not a number at all).

        An integer count names the end it broke: ``"an integer <= 100000"`` above the upper end, the
        lower end's words (``"a positive integer"``, ``"an integer >= 0"``) otherwise; anything else
        is :meth:`describe`.
        """
        if self.integer and isinstance(value, int) and not isinstance(value, bool) and value > self.high:
            return f"an integer <= {self.high:.0f}"
        if self.integer and self.low in (0, 1):
            return "a positive integer" if self.low == 1 else "an integer >= 0"
        return self.describe()


POSITIVE_INT = Bounds(low=1, integer=True)
NON_NEGATIVE_INT = Bounds(low=0, integer=True)
POSITIVE = Bounds(low=0, low_open=True)
NON_NEGATIVE = Bounds(low=0)
UNIT_OPEN_CLOSED = Bounds(low=0, high=1, low_open=True)
"""(0, 1]: a discount factor, PPO's clip range."""
UNIT_CLOSED = Bounds(low=0, high=1)
"""[0, 1]: GAE's lambda."""

#: Largest seed numpy, torch and Gymnasium accept (numpy: "Seed must be between 0 and 2**32 - 1").
MAX_SEED = 2**32 - 1
#: Most transitions one rollout may hold (n_steps * n_envs): a rollout buffer of a few hundred MB at most.
MAX_ROLLOUT = 2**20
#: Most episodes one evaluation runs: one small record per episode (~0.5 kB) stays in memory.
MAX_EVAL_EPISODES = 100_000

#: Every integer of the command line that is not a hyper-parameter, with a sane upper end: a count's
#: work (memory, processes, time) is bounded, and a seed stays one numpy accepts. The CLI types its
#: flags with these and :class:`~fetchrl.config.TrainConfig` validates with the same ones
#: (:func:`check_run_value`), so both refuse the same values in the same words. ``episodes`` is the
#: video's: every frame is kept until the GIF is written (about 26 MB an episode at 480x360).
RUN_BOUNDS: dict[str, Bounds] = {
    "seed": Bounds(low=0, high=MAX_SEED, integer=True),
    "total_steps": Bounds(low=1, high=10**9, integer=True),
    "n_envs": Bounds(low=1, high=256, integer=True),
    "n_eval_episodes": Bounds(low=1, high=MAX_EVAL_EPISODES, integer=True),
    "seeds": Bounds(low=1, high=1000, integer=True),
    "workers": Bounds(low=1, high=256, integer=True),
    "episodes": Bounds(low=1, high=20, integer=True),
    "checkpoint_every": Bounds(low=1, high=10**9, integer=True),
}


def check_run_value(name: str, value: object) -> None:
    """Raise FetchRLError ``"--name must be <bounds>, got <value>"`` for a value outside ``RUN_BOUNDS[name]``."""
    bounds = RUN_BOUNDS[name]
    if not bounds.contains(value):
        raise FetchRLError(f"--{name.replace('_', '-')} must be {bounds.refusal(value)}, got {value!r}")


def check_seed_span(seed: int, n_seeds: int, what: str = "--n-envs") -> None:
    """Refuse a ``seed`` whose run would seed past :data:`MAX_SEED`: env ``i`` is seeded ``seed + i``
    (SB3's rule), so ``seed + n_seeds - 1`` must still be a seed numpy accepts."""
    last = seed + n_seeds - 1
    if last > MAX_SEED:
        raise FetchRLError(f"--seed {seed} with {what} {n_seeds} seeds envs up to {last}, past 2**32 - 1; "
                           f"use --seed <= {MAX_SEED - n_seeds + 1}")


@dataclass(frozen=True)
class AutoOrPositive:
    """The values of SAC's ``ent_coef``: ``"auto"`` (learned, starting at 1), ``"auto_<x>"`` (learned,
    starting at x > 0) or a positive number (fixed). Used like :class:`Bounds`: it validates the
    dataclass and types the CLI flag, so both accept the same values and word a refusal the same way.
    """

    def contains(self, value: object) -> bool:
        """True for ``"auto"``, ``"auto_<x>"`` with finite x > 0, or a finite number > 0 (never a bool)."""
        if isinstance(value, str):
            if value == "auto":
                return True
            head, _, tail = value.partition("_")
            return head == "auto" and POSITIVE.contains(_float_or_none(tail))
        return POSITIVE.contains(value)

    def describe(self) -> str:
        """What follows "must be"."""
        return "'auto', 'auto_<initial value>' or a number > 0"

    def parse(self, text: str) -> str | float:
        """``"auto"`` / ``"auto_0.1"`` as given, anything else as a float; ValueError when not allowed."""
        value: str | float | None = text if text.startswith("auto") else _float_or_none(text)
        if value is None or not self.contains(value):
            raise ValueError(f"expected {self.describe()}, got {text!r}")
        return value


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Choice:
    """A hyper-parameter that is one of a few words (HER's ``goal_selection_strategy``: future, final,
    episode). Used like :class:`Bounds`: it validates the dataclass and types the CLI flag."""

    values: tuple[str, ...]

    def contains(self, value: object) -> bool:
        return isinstance(value, str) and value in self.values

    def describe(self) -> str:
        """What follows "must be"."""
        return "one of " + ", ".join(self.values)

    def parse(self, text: str) -> str:
        if not self.contains(text):
            raise ValueError(f"expected {self.describe()}, got {text[:40]!r}")
        return text


#: What a hyper-parameter field may declare as its accepted values.
ValueSpec = Bounds | AutoOrPositive | Choice


def hyperparameter(default: T, bounds: ValueSpec, *, sb3: bool = True) -> T:
    """A dataclass field that is a tunable hyper-parameter: a CLI flag, a sweep-grid name, validated.
    ``sb3=False``: fetchrl's own setting (applied by a callback or a buffer), not an SB3 keyword."""
    return field(default=default, metadata={"bounds": bounds, "sb3": sb3})


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (and of its dataclass bases), whitespace collapsed.

    Python keeps no attribute docstrings at run time, so they are read from the source, as CleanRL's
    ``tyro`` does; a class whose source is unavailable gets none. Returns ``{field name: text}``.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:], strict=False):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def flag_name(name: str) -> str:
    """The CLI flag of a field: ``clip_range`` -> ``--clip-range``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class AlgoConfig:
    """Base of every algorithm's hyper-parameter dataclass (fields are declared by the subclass).

    Subclasses list SB3's keyword arguments as fields after ``policy``; fields made with
    :func:`hyperparameter` are validated here and offered as CLI flags and sweep-grid names.
    """

    policy: str = "MultiInputPolicy"
    """SB3 policy class; ``MultiInputPolicy`` flattens Fetch's dict observation for the MLP."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def hyperparameters(self) -> dict[str, object]:
        """Every field by name, in declaration order (the metadata JSON's order)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def sb3_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the SB3 class (``policy`` is its first positional argument)."""
        kwargs = self.hyperparameters
        del kwargs["policy"]
        for f in dataclasses.fields(self):
            if not f.metadata.get("sb3", True):
                del kwargs[f.name]
        return kwargs

    @classmethod
    def tunable_fields(cls) -> tuple[dataclasses.Field[object], ...]:
        """Fields with :class:`Bounds`: the CLI's flags and the names a sweep grid may vary."""
        return tuple(f for f in dataclasses.fields(cls) if "bounds" in f.metadata)  # type: ignore[arg-type]

    def validate(self) -> None:
        """Raise FetchRLError naming the flag, the allowed values and the bad one."""
        for f in self.tunable_fields():
            bounds: ValueSpec = f.metadata["bounds"]
            value = getattr(self, f.name)
            if not bounds.contains(value):
                raise FetchRLError(f"{flag_name(f.name)} must be {bounds.describe()}, got {value!r}")

    def check_run(self, n_envs: int) -> None:
        """Checks that need the run's settings too (PPO: a minibatch fits in a rollout). None by default."""

    def learn_kwargs(self, n_envs: int) -> dict[str, Any]:
        """Extra keyword arguments for SB3's ``learn`` (none by default: SB3's own)."""
        return {}

    def rollout_size(self, n_envs: int) -> int:
        """Transitions collected between two updates (an off-policy algorithm: one step of every env)."""
        return n_envs

    def steps_trained(self, total_steps: int, n_envs: int) -> int:
        """Steps SB3 really runs for ``total_steps``: ``learn`` stops at the first whole collection past it."""
        size = self.rollout_size(n_envs)
        return -(-total_steps // size) * size


@dataclass(frozen=True)
class Algorithm:
    """One algorithm as the pipeline and the chapters see it."""

    name: str
    """Short id: artifact names (``ppo_FetchReachDense-v4_seed0.zip``, ``runs/ppo/``), the meta JSON's ``algo``."""
    title: str
    """How the book writes it: ``PPO``."""
    config_class: type[AlgoConfig]
    """The hyper-parameter dataclass (SB3's names, the chapter's defaults)."""
    load_sb3_class: Callable[[], type[BaseAlgorithm]]
    """Returns SB3's class. A function, so that importing the descriptor does not import torch."""
    load_fast_class: Callable[[], type[BaseAlgorithm]] | None
    """Returns fetchrl's bit-equal fast subclass, or None when the algorithm has none."""
    diagnostics_tags: tuple[str, ...]
    """TensorBoard tags (``fetchrl.metrics``) every training run of this algorithm must leave."""
    checkpoint_members: tuple[str, ...] = ("data", "policy.pth", "policy.optimizer.pth")
    """Members SB3's zip of this algorithm always has (a truncated zip lacks some)."""
    on_policy: bool = True
    """True: rollouts then updates (PPO; snapshots at every rollout boundary, updates logged by
    fetchrl). False: a replay buffer (SAC; saved beside the checkpoint, snapshots only when due)."""

    @property
    def resume_names(self) -> tuple[str, ...]:
        """Hyper-parameters a resumed run must match exactly (the meta JSON's ``hyperparameters`` keys)."""
        fields = tuple(f.name for f in dataclasses.fields(self.config_class))  # type: ignore[arg-type]
        return (*fields, *RUN_HYPERPARAMETERS)

    def model_class(self, *, fast: bool) -> type[BaseAlgorithm]:
        """The class to build or load a model with: the fast one on the fast path, else SB3's own."""
        if fast and self.load_fast_class is not None:
            return self.load_fast_class()
        return self.load_sb3_class()
