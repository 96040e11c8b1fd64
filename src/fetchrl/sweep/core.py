"""One sweep layer for ``multi-seed``, ``ablate`` and ``sweep``: trials = seeds x configurations.

A *trial* is one seed of one configuration: train, then evaluate, writing the usual artifacts
under the configuration's root. Backends run trials; aggregation always reads the eval JSONs back
from disk (never results held in memory), so every backend yields the same aggregate schema.

Backends (both run :func:`_run_trial_in_worker`, both keep the same books through :class:`TrialLedger`):
- ``local`` — a spawn process pool with at most ``workers`` trials at a time (default: the core
  count). Every attempt gets a fresh single-use worker process, so a worker that crashes (segfault,
  OOM kill) fails only its own trial, and torch is limited to ``cores // workers`` threads in it.
- ``ray``   — one Ray task per trial (``pip install '.[ray]'``); see :mod:`fetchrl.sweep.ray_backend`.

A failed attempt (an exception or a dead worker) is retried once; other trials still finish.
A trial whose checkpoint and eval JSON already match its configuration is skipped, so a resumed
sweep does not retrain finished seeds.

Test hook: ``FETCHRL_FAIL_TRIAL="tag/seedN [pattern ...]"`` (whitespace-separated shell-style
patterns matched against :attr:`Trial.name`; tags contain commas) makes those trials raise inside
the worker, on every attempt, before training. The Ray backend forwards it to its workers.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import math
import os
import signal
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fetchrl.analysis.stats import mean_std, rliable_summary
from fetchrl.artifacts import (
    EvalResult,
    MultiSeedAggregate,
    RunPaths,
    SeedSummary,
    TrainMeta,
    now_iso,
    trial_root,
)
from fetchrl.config import ALGO, ENV_THREADS_VAR, EvalConfig, TrainConfig
from fetchrl.errors import FetchRLError

if TYPE_CHECKING:
    from rich.progress import Task
    from rich.text import Text

#: Per-seed metrics carried into aggregates, with their aggregate key names.
SEED_METRICS = ("success_rate", "return_mean", "final_distance_mean")
_AGG_NAMES = {"success_rate": "success_rate", "return_mean": "return", "final_distance_mean": "final_distance"}

#: Names of the backends (``--backend``).
BACKENDS = ("local", "ray")
#: A trial is attempted at most this often (the first run and one retry), on every backend.
MAX_ATTEMPTS = 2
#: Test hook read by the worker: whitespace-separated patterns of trial names made to fail.
FAIL_TRIAL_ENV = "FETCHRL_FAIL_TRIAL"


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
    """What became of one trial."""

    trial: Trial
    ok: bool
    skipped: bool = False
    """True when the trial was already complete on disk and did not run."""
    attempts: int = 1
    """Attempts made (0 when skipped; at most :data:`MAX_ATTEMPTS`)."""
    error: str = ""
    """The last attempt's error (empty on success)."""
    seconds: float = 0.0
    """Wall time of all attempts together, as measured in the worker."""


def is_complete(trial: Trial) -> bool:
    """True when the trial's checkpoint is complete for this config and its eval JSON matches it.

    The eval JSON must have the trial's episode seeds and be no older than the checkpoint's meta
    (an eval that failed after a retrain leaves the previous, now stale, eval JSON behind).
    """
    paths = trial.paths
    if not (paths.meta.is_file() and paths.eval_json.is_file() and paths.checkpoint.is_file()):
        return False
    try:
        meta = TrainMeta.from_json(paths.meta)
        result = EvalResult.from_json(paths.eval_json)
    except FetchRLError:
        return False
    return (meta.complete and meta.total_steps == trial.config.total_steps
            and meta.hyperparameters == trial.config.hyperparameters
            and result.seeds == trial.eval_config.episode_seeds
            and result.deterministic == trial.eval_config.deterministic
            and paths.eval_json.stat().st_mtime >= paths.meta.stat().st_mtime)


def run_trial(trial: Trial, progress: bool = False) -> None:
    """Train (or resume an interrupted run) and evaluate one trial, in whatever process calls it."""
    from fetchrl.pipeline.evaluate import evaluate
    from fetchrl.pipeline.train import train_or_resume

    train_or_resume(trial.config, trial.paths, progress=progress)
    evaluate(trial.paths, trial.eval_config, device=trial.config.device, fast=trial.config.fast_env, progress=False)


def _worker_init(torch_threads: int) -> None:
    """Limit one worker to ``torch_threads`` threads so parallel trials do not oversubscribe the CPU."""
    import torch

    torch.set_num_threads(torch_threads)
    os.environ[ENV_THREADS_VAR] = str(torch_threads)


def _local_worker_init(torch_threads: int) -> None:
    """A local worker: thread limits, its own process group, and it stops when its driver dies.

    Own process group: a terminal's Ctrl-C reaches only the driver, which forwards it exactly once
    (a worker that got it twice would take the second as "quit now" and skip saving). A driver
    killed with SIGKILL cannot forward anything, so each worker watches its parent and sends itself
    SIGTERM — training then stops and saves an incomplete, resumable checkpoint.
    """
    import threading

    _worker_init(torch_threads)
    os.setpgrp()
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch_parent, name="fetchrl-parent-watch", daemon=True).start()


def _injected_failure(trial: Trial) -> None:
    """The :data:`FAIL_TRIAL_ENV` test hook: raise for the trials it names."""
    if any(fnmatch.fnmatchcase(trial.name, p) for p in os.environ.get(FAIL_TRIAL_ENV, "").split()):
        raise RuntimeError(f"injected failure for {trial.name} ({FAIL_TRIAL_ENV} test hook)")


def _run_trial_in_worker(trial: Trial) -> tuple[bool, str, float]:
    """Run one attempt; returns ``(ok, error, seconds)`` and never raises (every backend calls this)."""
    t0 = time.perf_counter()
    try:
        _injected_failure(trial)
        run_trial(trial)
        return True, "", time.perf_counter() - t0
    except FetchRLError as err:
        return False, str(err), time.perf_counter() - t0
    except Exception as err:  # a trial's crash must not sink the sweep: report it instead
        where = traceback.extract_tb(err.__traceback__)[-1]
        return False, f"{type(err).__name__}: {err} (at {Path(where.filename).name}:{where.lineno})", \
            time.perf_counter() - t0


Runner = Callable[[Sequence[Trial], int, "SweepProgress"], list[TrialOutcome]]


# ============================================================================ progress
def _format_seconds(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class SweepProgress:
    """Trials done / running / queued / failed with an ETA (rich), shared by every backend.

    The ETA is (queued + running trials) x mean successful attempt time / trials in flight, counted
    down between events; skipped trials do not count towards it. On a console that is not a
    terminal (CI, ``nohup``) each event is also logged as one status line.
    """

    def __init__(self, total: int, enabled: bool = True) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
        from rich.text import Text

        sweep = self

        class EtaColumn(ProgressColumn):
            def render(self, task: Task) -> Text:
                eta = sweep.eta_seconds()
                return Text("ETA " + ("-:--:--" if eta is None else _format_seconds(eta)), style="cyan")

        self.total, self.done, self.running, self.failed, self.skipped, self.retries = total, 0, 0, 0, 0, 0
        self.enabled = enabled
        self._attempt_seconds: list[float] = []
        self._eta_at: float | None = None
        console = Console(stderr=True)
        # A live bar on a terminal; elsewhere (CI logs, nohup) one status line per event instead.
        self._log_events = enabled and not console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]sweep"), BarColumn(bar_width=20), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), EtaColumn(),
            console=console, disable=not enabled or self._log_events, transient=False,
        )
        self._task = self._progress.add_task("sweep", total=total, status=self.status())

    def __enter__(self) -> SweepProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.__exit__(*exc)

    @property
    def queued(self) -> int:
        return self.total - self.done - self.failed - self.running

    def status(self) -> str:
        skipped = f" ({self.skipped} skipped)" if self.skipped else ""
        retries = f" · retries {self.retries}" if self.retries else ""
        return (f"done {self.done}{skipped} · running {self.running} · queued {self.queued} · "
                f"failed {self.failed}{retries}")

    def eta_seconds(self) -> float | None:
        """Seconds left, or None before the first attempt has succeeded."""
        if self.done + self.failed >= self.total:
            return 0.0
        if self._eta_at is None:
            return None
        return max(0.0, self._eta_at - time.monotonic())

    def update(self, *, started: int = 0, finished: int = 0, failed: int = 0, skipped: int = 0,
               retried: int = 0, seconds: float | None = None) -> None:
        """Record events: attempts ``started``; trials ``finished`` (ok) or ``failed`` for good;
        trials ``skipped`` (complete on disk); attempts ``retried`` (back in the queue); and the
        ``seconds`` of a successful attempt (feeds the ETA)."""
        self.running += started - finished - failed - retried
        self.done += finished + skipped
        self.skipped += skipped
        self.failed += failed
        self.retries += retried
        if seconds is not None:
            self._attempt_seconds.append(seconds)
        if self._attempt_seconds:
            mean = sum(self._attempt_seconds) / len(self._attempt_seconds)
            left = (self.queued + self.running) * mean / max(1, self.running)
            self._eta_at = time.monotonic() + left
        self._progress.update(self._task, completed=self.done + self.failed, status=self.status())
        if self._log_events and (finished or failed or skipped or retried):
            eta = self.eta_seconds()
            self.log(f"sweep: {self.status()} · ETA {'-:--:--' if eta is None else _format_seconds(eta)}")

    def log(self, message: str) -> None:
        self._progress.console.print(message)


class TrialLedger:
    """Attempts, the retry-once rule and progress events for one batch of trials; every backend uses it.

    A backend calls :meth:`start` when it hands trial ``i`` to a worker and :meth:`settle` with the
    attempt's result; ``settle`` returns True when the trial must be submitted again.
    """

    def __init__(self, trials: Sequence[Trial], progress: SweepProgress) -> None:
        self.trials, self.progress = trials, progress
        self.attempts = [0] * len(trials)
        self.seconds = [0.0] * len(trials)
        self._outcomes: dict[int, TrialOutcome] = {}

    def start(self, i: int) -> None:
        self.attempts[i] += 1
        self.progress.update(started=1)

    def settle(self, i: int, ok: bool, error: str, seconds: float, *, retry: bool = True) -> bool:
        """Book one attempt's result; True means "retry it" (the first failure of a trial).

        ``retry=False`` (the sweep is being interrupted) settles a failure for good.
        """
        from rich.markup import escape

        name, why = escape(self.trials[i].name), escape(error)
        self.seconds[i] += seconds
        if not ok and retry and self.attempts[i] < MAX_ATTEMPTS:
            self.progress.update(retried=1)
            self.progress.log(f"[yellow]trial {name} failed ({why}); retrying once[/]")
            return True
        self.progress.update(finished=int(ok), failed=int(not ok), seconds=seconds if ok else None)
        if not ok:
            self.progress.log(f"[red]trial {name} failed after {self.attempts[i]} attempts: {why}[/]")
        self._outcomes[i] = TrialOutcome(self.trials[i], ok, attempts=self.attempts[i], error=error,
                                         seconds=self.seconds[i])
        return False

    def outcomes(self) -> list[TrialOutcome]:
        missing = [self.trials[i].name for i in range(len(self.trials)) if i not in self._outcomes]
        if missing:
            raise RuntimeError(f"backend returned without settling trial(s) {missing}")
        return [self._outcomes[i] for i in range(len(self.trials))]


# ============================================================================ local backend
def _local_result(fut: Any) -> tuple[bool, str, float]:
    try:
        ok, err, secs = fut.result()
        return bool(ok), str(err), float(secs)
    except Exception as exc:  # the worker process itself died (BrokenProcessPool) or could not start
        return False, f"worker died: {type(exc).__name__}: {exc}", 0.0


class _SignalForwarder:
    """Driver side of Ctrl-C / SIGTERM: remember the signal and pass it on to every live worker.

    Workers run in their own process groups (see :func:`_local_worker_init`), so this is the only
    way they hear of it: each then saves an incomplete checkpoint, and the driver stops submitting.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.pools: list[Any] = []
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        for pool in list(self.pools):
            for pid in list(getattr(pool, "_processes", None) or {}):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    def __enter__(self) -> _SignalForwarder:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _local_runner(trials: Sequence[Trial], workers: int, progress: SweepProgress) -> list[TrialOutcome]:
    """At most ``workers`` trials at a time, each attempt in its own fresh spawn worker process."""
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    from fetchrl.pipeline.train import SIGNAL_EXIT_CODES, TrainingInterrupted

    # spawn: a fresh interpreter per worker; forking a process that already runs torch threads is unsafe.
    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    ledger = TrialLedger(trials, progress)
    queue = deque(range(len(trials)))
    running: dict[Future[tuple[bool, str, float]], tuple[int, ProcessPoolExecutor]] = {}
    with _SignalForwarder() as stop:
        try:
            while running or (queue and stop.signum is None):
                while queue and stop.signum is None and len(running) < workers:
                    i = queue.popleft()
                    # One single-use pool per attempt: a crash breaks only this pool, so it is charged
                    # to this trial alone (a shared pool would fail every trial in flight).
                    pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_local_worker_init,
                                               initargs=(threads,))
                    stop.pools.append(pool)
                    ledger.start(i)
                    running[pool.submit(_run_trial_in_worker, trials[i])] = (i, pool)
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    i, pool = running.pop(fut)
                    pool.shutdown(wait=True)
                    stop.pools.remove(pool)
                    if ledger.settle(i, *_local_result(fut), retry=stop.signum is None):
                        queue.append(i)
        finally:
            for _, pool in running.values():
                pool.shutdown(wait=True, cancel_futures=True)
    if stop.signum is not None:
        sig = signal.Signals(stop.signum)
        raise TrainingInterrupted(
            f"sweep stopped by {sig.name}: interrupted trials saved incomplete checkpoints; "
            "run the same command again to resume (finished trials are skipped)",
            exit_code=SIGNAL_EXIT_CODES[sig],
        )
    return ledger.outcomes()


def get_runner(backend: str, ray_address: str | None = None) -> Runner:
    if backend == "local":
        return _local_runner
    if backend == "ray":
        from fetchrl.sweep.ray_backend import make_ray_runner

        return make_ray_runner(ray_address)
    raise FetchRLError(f"unknown backend {backend!r}: use local or ray")


def _check_distinct(trials: Sequence[Trial]) -> None:
    seen: dict[Path, str] = {}
    for t in trials:
        key = t.paths.checkpoint
        if key in seen:
            raise FetchRLError(f"trials {seen[key]} and {t.name} would write the same artifacts ({key})")
        seen[key] = t.name


def run_trials(trials: Sequence[Trial], *, backend: str = "local", workers: int | None = None,
               ray_address: str | None = None, progress: bool = True) -> list[TrialOutcome]:
    """Run every trial not already complete; returns one outcome per trial, in order.

    ``workers``: trials in flight at once. Default: the core count for ``local``; for ``ray``, as
    many as the cluster has CPUs for (re-read as nodes join).
    """
    if backend not in BACKENDS:
        raise FetchRLError(f"unknown backend {backend!r}: use {' or '.join(BACKENDS)}")
    _check_distinct(trials)
    todo = [i for i, t in enumerate(trials) if not is_complete(t)]
    outcomes = [TrialOutcome(t, True, skipped=True, attempts=0) for t in trials]
    if backend == "local":
        workers = max(1, min(workers or (os.cpu_count() or 1), max(1, len(todo))))
    else:
        workers = workers or 0  # 0: the Ray runner sizes itself to the cluster
    runner = get_runner(backend, ray_address) if todo else _local_runner
    with SweepProgress(len(trials), enabled=progress) as bar:
        if len(todo) < len(trials):
            bar.log(f"skipping {len(trials) - len(todo)} trial(s) already complete")
            bar.update(skipped=len(trials) - len(todo))
        ran = runner([trials[i] for i in todo], workers, bar) if todo else []
    for i, outcome in zip(todo, ran, strict=True):
        outcomes[i] = outcome
    return outcomes


# ============================================================================ aggregation
def aggregate_from_disk(env_id: str, seeds: Iterable[int], root: Path, config: dict[str, Any] | None = None,
                        *, with_rliable: bool = True) -> MultiSeedAggregate:
    """Aggregate the eval JSONs of ``seeds`` under ``root``: mean ± sample std, IQM with 95 % CIs.

    Seeds whose eval JSON is missing are left out (the sweep reports them as failed).
    """
    seeds = list(seeds)
    per_seed: list[SeedSummary] = []
    for seed in seeds:
        path = RunPaths(env_id, seed, root).eval_json
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
        if name in grid:
            raise FetchRLError(f"--grid: {name} is given twice; list all its values once: {name}=v1,v2")
        kind = type(getattr(TrainConfig(), name))
        try:
            parsed = [kind(v) for v in values.split(",")]
        except ValueError:
            raise FetchRLError(f"--grid {name}: values must be {kind.__name__}, got {values!r}") from None
        if not all(math.isfinite(v) for v in parsed):
            raise FetchRLError(f"--grid {name}: values must be finite numbers, got {values!r}")
        if len(set(parsed)) < len(parsed):
            raise FetchRLError(f"--grid {name}: duplicate value in {values!r}")
        grid[name] = parsed
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
            out[tag] = aggregate_from_disk(cfg.env_id, by_tag[tag], root, cfg.hyperparameters)
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
