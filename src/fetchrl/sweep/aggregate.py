"""Multi-seed aggregates, computed only from the eval JSON files on disk (never from memory)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fetchrl.analysis.stats import mean_std, rliable_summary
from fetchrl.artifacts import (
    DEFAULT_NAMES,
    ArtifactNames,
    EvalResult,
    MultiSeedAggregate,
    RunPaths,
    SeedSummary,
    now_iso,
)
from fetchrl.errors import FetchRLError

#: Per-seed metrics carried into aggregates (the eval JSON's aggregate keys, SeedSummary's fields).
SEED_METRICS = ("success_rate", "return_mean", "final_distance_mean")
#: The name each per-seed metric has in :attr:`MultiSeedAggregate.aggregate` (``{name}_mean``, ``{name}_std``).
AGGREGATE_NAMES = {"success_rate": "success_rate", "return_mean": "return", "final_distance_mean": "final_distance"}


def aggregate_from_disk(env_id: str, seeds: Iterable[int], root: Path, config: dict[str, object] | None = None,
                        *, with_rliable: bool = True, names: ArtifactNames = DEFAULT_NAMES) -> MultiSeedAggregate:
    """Aggregate the eval JSONs of ``seeds`` under ``root``: mean ± sample std, IQM with 95 % CIs.

    Seeds whose eval JSON is missing are left out (the sweep reports them as failed).
    ``config``: the configuration's hyper-parameters, recorded in the aggregate as they are.
    ``names``: the chapter's artifact names (default chapter 2's): where the eval JSONs are.
    """
    seeds = list(seeds)
    per_seed: list[SeedSummary] = []
    for seed in seeds:
        path = RunPaths(env_id, seed, root, names).eval_json
        if not path.is_file():
            continue
        agg = EvalResult.from_json(path).aggregate
        per_seed.append(SeedSummary(seed, *(float(agg[k]) for k in SEED_METRICS)))
    if not per_seed:
        raise FetchRLError(f"no eval JSON found under {root / 'results'} for seeds {seeds}")
    aggregate: dict[str, float] = {}
    columns: dict[str, list[float]] = {}
    for key in SEED_METRICS:
        values = [getattr(s, key) for s in per_seed]
        columns[key] = values
        mean, std = mean_std(values)
        name = AGGREGATE_NAMES[key]
        aggregate[f"{name}_mean"] = mean
        aggregate[f"{name}_std"] = std
    return MultiSeedAggregate(
        created_at=now_iso(),
        env_id=env_id,
        algo=names.algo,
        seeds=[s.seed for s in per_seed],
        per_seed=per_seed,
        aggregate=aggregate,
        config=config or {},
        rliable=rliable_summary(columns) if with_rliable else {},
    )
