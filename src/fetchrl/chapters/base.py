"""What a chapter is, as data: :class:`Chapter` (and the :class:`Ablation` exercise it may offer).

A chapter module (``fetchrl.chapters.ch02``) fills one :class:`Chapter`; the CLI builds the chapter's
commands, flags, defaults and help from it, and the chapter's script only hands it to
``fetchrl.cli.run``. Chapter 3 (SAC) is a new algorithm module in ``fetchrl.algos``, a new chapter
module here and a three-line script.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
        """The chapter's names in the artifact layout (``fetchrl.artifacts``)."""
        return ArtifactNames(chapter=self.id, algo=self.algorithm.name, multi_seed=self.multi_seed_name)

    def paths(self, env_id: str, seed: int, root: Path = Path(".")) -> RunPaths:
        """Where one run of this chapter keeps its artifacts."""
        return RunPaths(env_id, seed, root, self.artifacts)
