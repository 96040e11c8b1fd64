"""One sweep layer for ``multi-seed``, ``ablate`` and ``sweep``: trials = seeds x configurations.

A *trial* is one seed of one configuration: train, then evaluate, writing the usual artifacts
under the configuration's root. Backends run trials; aggregation always reads the eval JSONs back
from disk (never results held in memory), so every backend yields the same aggregate schema.

Backends:
- ``local`` — a process pool (``workers`` defaults to the core count); each worker's torch threads
  are set to ``cores // workers`` so workers do not oversubscribe the CPU.
- ``ray``   — one Ray task per trial (``pip install .[ray]``); see :mod:`fetchrl.sweep_ray`.

A failed trial is retried once; other trials still finish. A trial whose eval JSON already
matches its configuration is skipped (so a resumed sweep does not retrain finished seeds).
"""

from __future__ import annotations

import itertools
import os
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fetchrl.artifacts import (
    EvalResult,
    MultiSeedAggregate,
    RunPaths,
    SeedSummary,
    TrainMeta,
    now_iso,
    trial_root,
)
from fetchrl.config import ALGO, EvalConfig, TrainConfig
from fetchrl.errors import FetchRLError
from fetchrl.stats import mean_std, rliable_summary

#: Per-seed metrics carried into aggregates, with their aggregate key names.
SEED_METRICS = ("success_rate", "return_mean", "final_distance_mean")
_AGG_NAMES = {"success_rate": "success_rate", "return_mean": "return", "final_distance_mean": "final_distance"}


@dataclass(frozen=True)
class Trial:
    """One seed of one configuration."""

    config: TrainConfig
    eval_config: EvalConfig
    root: Path
    tag: str = "default"
    """Configuration label, e.g. ``clip_range=0.1`` (seeds of one tag are aggregated together)."""

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.config.env_id, self.config.seed, self.root)

    @property
    def name(self) -> str:
        return f"{self.tag}/seed{self.config.seed}"


@dataclass
class TrialOutcome:
    trial: Trial
    ok: bool
    skipped: bool = False
    attempts: int = 1
    error: str = ""
    seconds: float = 0.0


def is_complete(trial: Trial) -> bool:
    """True when the trial's checkpoint is complete for this config and its eval JSON exists."""
    paths = trial.paths
    if not (paths.meta.is_file() and paths.eval_json.is_file() and paths.checkpoint.is_file()):
        return False
    try:
        meta = TrainMeta.from_json(paths.meta)
        EvalResult.from_json(paths.eval_json)
    except FetchRLError:
        return False
    return (meta.complete and meta.total_steps == trial.config.total_steps
            and meta.hyperparameters == trial.config.hyperparameters)


def run_trial(trial: Trial, progress: bool = False) -> None:
    """Train and evaluate one trial (in whatever process calls it)."""
    from fetchrl.evaluate import evaluate
    from fetchrl.train import train

    train(trial.config, trial.paths, progress=progress)
    evaluate(trial.paths, trial.eval_config, device=trial.config.device, fast=trial.config.fast_env, progress=False)


def _worker_init(torch_threads: int) -> None:
    import torch

    torch.set_num_threads(torch_threads)
    os.environ["FETCHRL_ENV_THREADS"] = str(torch_threads)


def _run_trial_in_worker(trial: Trial) -> tuple[bool, str, float]:
    t0 = time.perf_counter()
    try:
        run_trial(trial)
        return True, "", time.perf_counter() - t0
    except FetchRLError as err:
        return False, str(err), time.perf_counter() - t0
    except Exception as err:  # a trial's crash must not sink the sweep: report it instead
        last = traceback.format_exc().strip().splitlines()[-1]
        return False, f"{type(err).__name__}: {err} ({last})", time.perf_counter() - t0


Runner = Callable[[Sequence[Trial], int, "SweepProgress"], list[TrialOutcome]]


class SweepProgress:
    """Trials done / running / failed with an ETA (rich), shared by every backend."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.total, self.done, self.running, self.failed = total, 0, 0, 0
        self._progress = Progress(
            TextColumn("[bold]sweep"), BarColumn(), TextColumn("{task.completed}/{task.total} trials"),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            disable=not enabled, transient=False,
        )
        self._task = self._progress.add_task("sweep", total=total, status="")

    def __enter__(self) -> SweepProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    def update(self, *, started: int = 0, finished: int = 0, failed: int = 0) -> None:
        self.running += started - finished - failed
        self.done += finished
        self.failed += failed
        self._progress.update(self._task, completed=self.done + self.failed,
                              status=f"done {self.done} · running {self.running} · failed {self.failed}")

    def log(self, message: str) -> None:
        self._progress.console.print(message)


def _local_runner(trials: Sequence[Trial], workers: int, progress: SweepProgress) -> list[TrialOutcome]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    cores = os.cpu_count() or 1
    threads = max(1, cores // workers)
    outcomes: dict[int, TrialOutcome] = {}
    attempts = dict.fromkeys(range(len(trials)), 0)
    # spawn: a fresh interpreter per worker; forking a process that already runs torch threads is unsafe.
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(threads,)) as pool:
        pending: dict[Future[tuple[bool, str, float]], int] = {}

        def submit(i: int) -> None:
            attempts[i] += 1
            pending[pool.submit(_run_trial_in_worker, trials[i])] = i
            progress.update(started=1)

        for i in range(len(trials)):
            submit(i)
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in finished:
                i = pending.pop(fut)
                try:
                    ok, err, secs = fut.result()
                except Exception as exc:  # the worker process itself died
                    ok, err, secs = False, f"worker died: {type(exc).__name__}: {exc}", 0.0
                if not ok and attempts[i] < 2:
                    progress.update(finished=0, started=-1)
                    progress.log(f"[yellow]trial {trials[i].name} failed ({err}); retrying once[/]")
                    submit(i)
                    continue
                progress.update(finished=int(ok), failed=int(not ok))
                if not ok:
                    progress.log(f"[red]trial {trials[i].name} failed twice: {err}[/]")
                outcomes[i] = TrialOutcome(trials[i], ok, attempts=attempts[i], error=err, seconds=secs)
    return [outcomes[i] for i in range(len(trials))]


def get_runner(backend: str, ray_address: str | None = None) -> Runner:
    if backend == "local":
        return _local_runner
    if backend == "ray":
        from fetchrl.sweep_ray import make_ray_runner

        return make_ray_runner(ray_address)
    raise FetchRLError(f"unknown backend {backend!r}: use local or ray")


def run_trials(trials: Sequence[Trial], *, backend: str = "local", workers: int | None = None,
               ray_address: str | None = None, progress: bool = True) -> list[TrialOutcome]:
    """Run every trial not already complete; returns one outcome per trial, in order."""
    todo = [t for t in trials if not is_complete(t)]
    skipped = [TrialOutcome(t, True, skipped=True, attempts=0) for t in trials if t not in todo]
    workers = max(1, min(workers or (os.cpu_count() or 1), max(1, len(todo))))
    runner = get_runner(backend, ray_address)
    with SweepProgress(len(trials), enabled=progress) as bar:
        bar.update(finished=len(skipped))
        if skipped:
            bar.log(f"skipping {len(skipped)} trial(s) already complete")
        ran = runner(todo, workers, bar) if todo else []
    by_trial = {id(o.trial): o for o in [*skipped, *ran]}
    return [by_trial[id(t)] for t in trials]


# ============================================================================ aggregation
def aggregate_from_disk(env_id: str, seeds: Iterable[int], root: Path, config: dict[str, Any] | None = None,
                        *, with_rliable: bool = True) -> MultiSeedAggregate:
    """Aggregate the eval JSONs of ``seeds`` under ``root``: mean ± sample std, IQM with 95 % CIs.

    Seeds whose eval JSON is missing are left out (the sweep reports them as failed).
    """
    per_seed: list[SeedSummary] = []
    for seed in seeds:
        path = RunPaths(env_id, seed, root).eval_json
        if not path.is_file():
            continue
        agg = EvalResult.from_json(path).aggregate
        per_seed.append(SeedSummary(seed, *(float(agg[k]) for k in SEED_METRICS)))
    if not per_seed:
        raise FetchRLError(f"no eval JSON found under {root / 'results'} for seeds {list(seeds)}")
    aggregate: dict[str, float] = {}
    columns: dict[str, list[float]] = {}
    for key in SEED_METRICS:
        values = [getattr(s, key) for s in per_seed]
        columns[key] = values
        mean, std = mean_std(values)
        name = _AGG_NAMES[key]
        aggregate[f"{name}_mean"] = mean
        aggregate[f"{name}_std"] = std
    return MultiSeedAggregate(
        created_at=now_iso(),
        env_id=env_id,
        algo=ALGO,
        seeds=[s.seed for s in per_seed],
        per_seed=per_seed,
        aggregate=aggregate,
        config=config or {},
        rliable=rliable_summary(columns) if with_rliable else {},
    )


# ============================================================================ grids
def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["clip_range=0.1,0.2", "learning_rate=3e-4"]`` -> ``{"clip_range": [0.1, 0.2], ...}``."""
    from fetchrl.config import HYPERPARAMETER_NAMES

    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values:
            raise FetchRLError(f"bad --grid item {item!r}: expected name=v1,v2")
        if name not in HYPERPARAMETER_NAMES or name == "policy":
            raise FetchRLError(f"--grid: {name!r} is not a PPO hyper-parameter ({', '.join(HYPERPARAMETER_NAMES[1:])})")
        kind = type(getattr(TrainConfig(), name))
        try:
            grid[name] = [kind(v) if kind is not int else int(v) for v in values.split(",")]
        except ValueError:
            raise FetchRLError(f"--grid {name}: values must be {kind.__name__}, got {values!r}") from None
    return grid


def config_tag(overrides: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"


@dataclass
class SweepPlan:
    """Configurations (tag -> overrides) times seeds, rooted at ``root``."""

    name: str
    base: TrainConfig
    eval_config: EvalConfig
    seeds: list[int]
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    root: Path = Path(".")

    def config_root(self, tag: str) -> Path:
        # The chapter's multi-seed run keeps the chapter's paths; other sweeps get one root per setting.
        return self.root if self.name == "multi_seed" else trial_root(self.name, tag, self.root)

    def trials(self) -> list[Trial]:
        out = []
        for tag, overrides in self.configs.items():
            for seed in self.seeds:
                cfg = self.base.replace(seed=seed, **overrides)
                out.append(Trial(cfg, self.eval_config, self.config_root(tag), tag))
        return out

    def aggregates(self) -> dict[str, MultiSeedAggregate]:
        out = {}
        for tag, overrides in self.configs.items():
            cfg = self.base.replace(**overrides)
            out[tag] = aggregate_from_disk(cfg.env_id, self.seeds, self.config_root(tag), cfg.hyperparameters)
        return out


def grid_plan(name: str, base: TrainConfig, eval_config: EvalConfig, seeds: Sequence[int],
              grid: dict[str, list[Any]], root: Path = Path(".")) -> SweepPlan:
    names = list(grid)
    configs = {}
    for combo in itertools.product(*(grid[n] for n in names)):
        overrides = dict(zip(names, combo, strict=True))
        base.replace(**overrides)  # validate every configuration before anything runs
        configs[config_tag(overrides)] = overrides
    return SweepPlan(name, base, eval_config, list(seeds), configs or {"default": {}}, root)
