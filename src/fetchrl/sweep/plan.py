"""Sweep plans: ``--grid`` parsing, configuration tags, and configurations x seeds as trials."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fetchrl.artifacts import DEFAULT_NAMES, ArtifactNames, MultiSeedAggregate, trial_root
from fetchrl.config import HYPERPARAMETER_NAMES, EvalConfig, TrainConfig
from fetchrl.errors import FetchRLError
from fetchrl.sweep.aggregate import aggregate_from_disk
from fetchrl.sweep.trials import Trial, is_complete

#: One value of a grid's hyper-parameter (the TrainConfig field's type: int or float).
GridValue = int | float


def parse_grid(items: Sequence[str]) -> dict[str, list[GridValue]]:
    """``["clip_range=0.1,0.2", "learning_rate=3e-4"]`` -> ``{"clip_range": [0.1, 0.2], ...}``.

    Values take the type of the TrainConfig field (int or float); FetchRLError on anything else.
    """
    grid: dict[str, list[GridValue]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values:
            raise FetchRLError(f"bad --grid item {item!r}: expected name=v1,v2")
        if name not in HYPERPARAMETER_NAMES or name == "policy":
            raise FetchRLError(f"--grid: {name!r} is not a PPO hyper-parameter ({', '.join(HYPERPARAMETER_NAMES[1:])})")
        if name in grid:
            raise FetchRLError(f"--grid: {name} is given twice; list all its values once: {name}=v1,v2")
        kind = type(getattr(TrainConfig(), name))
        try:
            parsed = [kind(v) for v in values.split(",")]
        except ValueError:
            raise FetchRLError(f"--grid {name}: values must be {kind.__name__}, got {values!r}") from None
        if not all(math.isfinite(v) for v in parsed):
            raise FetchRLError(f"--grid {name}: values must be finite numbers, got {values!r}")
        check_distinct(f"--grid {name}", parsed, sep=",")
        grid[name] = parsed
    return grid


def check_distinct(flag: str, values: Sequence[object], *, sep: str = " ") -> None:
    """FetchRLError naming ``flag`` when a value is listed twice (``0.1`` and ``0.10`` are the same value).

    ``sep`` joins the values in the message as the user typed them (``,`` in ``--grid``).

    A grid runs each setting once: a duplicate would otherwise be dropped without a word.
    """
    seen: list[object] = []
    for v in values:
        if v in seen:
            listed = sep.join(str(x) for x in values)
            raise FetchRLError(f"{flag}: duplicate value {v} in {listed!r}; list each value once")
        seen.append(v)


def config_tag(overrides: Mapping[str, object]) -> str:
    """``{"clip_range": 0.1, "n_epochs": 5}`` -> ``"clip_range=0.1,n_epochs=5"``; ``{}`` -> ``"default"``."""
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"


@dataclass
class SweepPlan:
    """Configurations (tag -> overrides) times seeds, rooted at ``root``."""

    name: str
    base: TrainConfig
    eval_config: EvalConfig
    seeds: list[int]
    configs: dict[str, dict[str, GridValue]] = field(default_factory=dict)
    root: Path = Path(".")
    names: ArtifactNames = DEFAULT_NAMES
    """The chapter's artifact names (default chapter 2's): every trial's paths."""

    def config_root(self, tag: str) -> Path:
        # The chapter's multi-seed run keeps the chapter's paths; other sweeps get one root per setting.
        return self.root if self.name == "multi_seed" else trial_root(self.name, tag, self.root)

    def trials(self) -> list[Trial]:
        """Every configuration x every seed, configuration by configuration."""
        out = []
        for tag, overrides in self.configs.items():
            for seed in self.seeds:
                cfg = self.base.replace(seed=seed, **overrides)
                out.append(Trial(cfg, self.eval_config, self.config_root(tag), tag, self.names))
        return out

    def aggregates(self) -> dict[str, MultiSeedAggregate]:
        """One aggregate per configuration, over the seeds whose trial is complete on disk.

        Seeds that failed are left out even when an older run left an eval JSON at their path.
        """
        out = {}
        by_tag: dict[str, list[int]] = {tag: [] for tag in self.configs}
        for trial in self.trials():
            if is_complete(trial):
                by_tag[trial.tag].append(trial.config.seed)
        for tag, overrides in self.configs.items():
            cfg = self.base.replace(**overrides)
            root = self.config_root(tag)
            if not by_tag[tag]:
                raise FetchRLError(f"no complete trial of {tag} under {root} (seeds {self.seeds}); see the errors above")
            out[tag] = aggregate_from_disk(cfg.env_id, by_tag[tag], root, cfg.hyperparameters, names=self.names)
        return out


def grid_plan(name: str, base: TrainConfig, eval_config: EvalConfig, seeds: Sequence[int],
              grid: Mapping[str, Sequence[GridValue]], root: Path = Path("."),
              names: ArtifactNames = DEFAULT_NAMES) -> SweepPlan:
    """Every combination of the grid's values as one configuration (``{}`` -> the base alone)."""
    params = list(grid)
    for n in params:  # parse_grid and the ablation's flag check this first, naming the flag
        check_distinct(n, grid[n])
    configs = {}
    for combo in itertools.product(*(grid[n] for n in params)):
        overrides = dict(zip(params, combo, strict=True))
        base.replace(**overrides)  # validate every configuration before anything runs
        configs[config_tag(overrides)] = overrides
    return SweepPlan(name, base, eval_config, list(seeds), configs or {"default": {}}, root, names)
