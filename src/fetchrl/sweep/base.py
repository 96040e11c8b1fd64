"""What every sweep backend shares: the Runner protocol, the backend registry and :func:`run_trials`.

The backends import this module and register themselves in :data:`BACKENDS`
(``fetchrl.sweep`` imports them, so the registry is full whenever this module is usable);
this module never imports a backend, and registering the Ray backend does not import ``ray``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from fetchrl.errors import FetchRLError
from fetchrl.sweep.progress import SweepProgress
from fetchrl.sweep.trials import Trial, TrialOutcome, is_complete


class Runner(Protocol):
    """Runs every trial it is given (retrying through a :class:`~fetchrl.sweep.ledger.TrialLedger`).

    Args:
        trials: the trials to run, none of them complete on disk yet.
        workers: trials in flight at once; 0 lets the backend choose.
        progress: the sweep's display, updated by the ledger.

    Returns one outcome per trial, in order.
    """

    def __call__(self, trials: Sequence[Trial], workers: int, progress: SweepProgress) -> list[TrialOutcome]: ...


class RunnerFactory(Protocol):
    """Makes a backend's :class:`Runner`; ``ray_address`` is where a Ray cluster is (local ignores it).

    Fails fast (FetchRLError) when the backend cannot run here, e.g. Ray is not installed.
    """

    def __call__(self, ray_address: str | None) -> Runner: ...


#: Backend name (``--backend``) -> its runner factory, filled by :func:`register_backend`.
BACKENDS: dict[str, RunnerFactory] = {}


def register_backend(name: str, factory: RunnerFactory) -> None:
    """Make ``factory`` the backend called ``name``; each backend module calls this once on import."""
    BACKENDS[name] = factory


def _unknown_backend(backend: str) -> FetchRLError:
    return FetchRLError(f"unknown backend {backend!r}: use {' or '.join(sorted(BACKENDS))}")


def get_runner(backend: str, ray_address: str | None = None) -> Runner:
    """The runner of ``backend`` (``local`` or ``ray``); FetchRLError for unknown or unusable ones."""
    if backend not in BACKENDS:
        raise _unknown_backend(backend)
    return BACKENDS[backend](ray_address)


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
        raise _unknown_backend(backend)
    _check_distinct(trials)
    todo = [i for i, t in enumerate(trials) if not is_complete(t)]
    outcomes = [TrialOutcome(t, True, skipped=True, attempts=0) for t in trials]
    # Only a sweep with work to do needs its backend (a finished Ray sweep reruns without Ray).
    runner = get_runner(backend, ray_address) if todo else None
    with SweepProgress(len(trials), enabled=progress) as bar:
        if len(todo) < len(trials):
            bar.log(f"skipping {len(trials) - len(todo)} trial(s) already complete")
            bar.update(skipped=len(trials) - len(todo))
        ran = runner([trials[i] for i in todo], workers or 0, bar) if runner else []
    for i, outcome in zip(todo, ran, strict=True):
        outcomes[i] = outcome
    return outcomes
