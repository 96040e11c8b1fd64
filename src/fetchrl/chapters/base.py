"""What a chapter is, as data: :class:`Chapter` (and the :class:`Ablation` exercise it may offer).

A chapter module (``fetchrl.chapters.ch02``) fills one :class:`Chapter`; the CLI builds the chapter's
commands, flags, defaults and help from it, and the chapter's script only hands it to
``fetchrl.cli.run``. Chapter 3 (SAC) is a new algorithm module in ``fetchrl.algos``, a new chapter
module here and a three-line script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetchrl.algos.base import Algorithm
from fetchrl.artifacts import ArtifactNames, RunPaths
from fetchrl.config import Criterion, EvalConfig, TrainConfig

#: The eval policies ``fetchrl.pipeline.evaluate.baseline_results`` scores beside the trained one.
KNOWN_BASELINES = ("random", "zero")


@dataclass(frozen=True)
class Ablation:
    """An exercise that trains every value of one hyper-parameter x seeds and compares the settings."""

    exercise: str
    """The book's exercise number: ``"2.4"``."""
    param: str
    """The hyper-parameter varied, by its SB3 name: ``"clip_range"`` (CLI: ``--clip-ranges``)."""
    values: tuple[float, ...]
    """The settings compared by default."""
    seeds: int = 1
    """Seeds per setting by default."""
    flag: str | None = None
    """The CLI flag listing the settings (default: the parameter's flag plus "s": ``--clip-ranges``)."""


@dataclass(frozen=True)
class Chapter:
    """Everything chapter-specific: the algorithm, defaults, criteria, artifact names, commands."""

    number: int
    """The book's chapter number; ``id`` ("ch02") prefixes its result files."""
    title: str
    """``"PPO on FetchReachDense"``."""
    script: str
    """The chapter's script, as the reader types it: ``"scripts/ch02_ppo_dense_reach.py"``."""
    algorithm: Algorithm
    defaults: TrainConfig
    """Default task, run settings and hyper-parameters (``defaults.algo`` is an ``algorithm.config_class``)."""
    criteria: tuple[Criterion, ...]
    """All must pass for ``report`` to exit 0."""
    multi_seed_name: str
    """Stem of the multi-seed aggregate files: ``results/<multi_seed_name>_aggregate.json``."""
    commands: tuple[str, ...]
    """The CLI commands the chapter offers, in ``--help`` order (each one defined in ``fetchrl.cli``)."""
    baselines: tuple[str, ...] = KNOWN_BASELINES
    """Policies the report scores beside the trained one, on the same episode seeds."""
    eval_defaults: EvalConfig = EvalConfig()
    """The evaluation protocol (episodes, seeds, deterministic actions)."""
    seeds: int = 5
    """Seeds of the multi-seed exercise and of sweeps by default."""
    ablation: Ablation | None = None
    """The hyper-parameter exercise behind the ``ablate`` command, if the chapter has one."""
    compare_with: Chapter | None = None
    """The earlier chapter whose run of the same seed ``compare`` sets beside this chapter's (ch03: ch02)."""
    control: Chapter | None = None
    """The control arm, run when the chapter's ``--her`` switch is off (ch04: SAC with a plain replay
    buffer, same numbers otherwise); ``compare`` sets the two arms side by side over seeds."""
    env_criteria: dict[str, tuple[Criterion, ...]] = field(default_factory=dict, hash=False)
    """Criteria of a task that has its own (ch04: FetchPush-v4 adds a final-distance bound); others: ``criteria``."""
    env_overrides: dict[str, dict[str, Any]] = field(default_factory=dict, hash=False)
    """Defaults of a task that has its own (ch04: FetchPush-v4 trains 2M steps with ent_coef 0.05)."""
    arm_title: str = ""
    """How reports name this chapter's runs (default the algorithm's title; ch04's control arm:
    ``"SAC without HER"``)."""
    diagnose_rules: str = ""
    """The ``diagnose`` rule set of this chapter's runs (default the algorithm's; ch04's control arm:
    ``"sac_sparse"``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.defaults.algo, self.algorithm.config_class):
            raise TypeError(f"{self.id}: defaults.algo is a {type(self.defaults.algo).__name__}, "
                            f"not {self.algorithm.name}'s {self.algorithm.config_class.__name__}")
        unknown = sorted(set(self.baselines) - set(KNOWN_BASELINES))
        if unknown:
            raise ValueError(f"{self.id}: unknown baseline(s) {', '.join(unknown)} (known: {', '.join(KNOWN_BASELINES)})")
        tunable = {f.name for f in self.algorithm.config_class.tunable_fields()}
        if self.ablation is not None and self.ablation.param not in tunable:
            raise ValueError(f"{self.id}: ablation of {self.ablation.param!r}, not a tunable {self.algorithm.name} "
                             "hyper-parameter")

    @property
    def id(self) -> str:
        """``"ch02"``: the chapter's prefix in file names and the ``fetchrl`` command's first word."""
        return f"ch{self.number:02d}"

    @property
    def artifacts(self) -> ArtifactNames:
        """The chapter's names in the artifact layout (``fetchrl.artifacts``) for its default task."""
        return self.names_for(self.defaults.env_id)

    def names_for(self, env_id: str) -> ArtifactNames:
        """The chapter's names for runs on ``env_id`` (a ``{env}`` in ``multi_seed_name`` becomes its lower-case id)."""
        return ArtifactNames(chapter=self.id, algo=self.algorithm.name,
                             multi_seed=self.multi_seed_name.format(env=env_id.lower()),
                             title=self.arm_title or self.algorithm.title,
                             html_per_run=self.control is not None or bool(self.env_overrides or self.env_criteria),
                             diagnose_rules=self.diagnose_rules)

    def paths(self, env_id: str, seed: int, root: Path = Path(".")) -> RunPaths:
        """Where one run of this chapter keeps its artifacts."""
        return RunPaths(env_id, seed, root, self.names_for(env_id))

    def criteria_for(self, env_id: str) -> tuple[Criterion, ...]:
        """The criteria a run on ``env_id`` must pass."""
        return self.env_criteria.get(env_id, self.criteria)

    def defaults_for(self, env_id: str) -> TrainConfig:
        """The chapter's default run on ``env_id`` (its task's own defaults applied)."""
        return self.defaults.replace(env_id=env_id, **self.env_overrides.get(env_id, {}))

    def arm(self, treatment: bool) -> Chapter:
        """This chapter (``treatment``) or its control arm; a chapter without one is its own."""
        return self if treatment or self.control is None else self.control
