"""Trials (one seed of one configuration), the completeness check, and what a worker runs per attempt.

Test hooks (the Ray backend forwards both to its workers):

- ``FETCHRL_FAIL_TRIAL="tag/seedN [pattern ...]"`` (whitespace-separated shell-style patterns matched
  against :attr:`Trial.name`; tags contain commas) makes those trials raise inside the worker, on every
  attempt, before training;
- ``FETCHRL_KILL_TRIAL="DIR pattern [pattern ...]"`` makes the worker of a matching trial kill itself
  with SIGKILL (a dead worker, as the OOM killer leaves one) before training, on its first attempt
  only: the attempt leaves a marker file in the existing directory DIR, so the retry runs.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from fetchrl.artifacts import DEFAULT_NAMES, ArtifactNames, EvalResult, RunPaths, TrainMeta, atomic_write_text
from fetchrl.config import ENV_THREADS_VAR, EvalConfig, TrainConfig
from fetchrl.errors import FetchRLError

#: Test hook read by the worker: whitespace-separated patterns of trial names made to fail.
FAIL_TRIAL_ENV = "FETCHRL_FAIL_TRIAL"
#: Test hook read by the worker: a marker directory, then patterns of trial names whose first attempt dies.
KILL_TRIAL_ENV = "FETCHRL_KILL_TRIAL"


@dataclass(frozen=True)
class Trial:
    """One seed of one configuration."""

    config: TrainConfig
    eval_config: EvalConfig
    root: Path
    tag: str = "default"
    """Configuration label, e.g. ``clip_range=0.1`` (seeds of one tag are aggregated together)."""
    names: ArtifactNames = DEFAULT_NAMES
    """The chapter's artifact names (default chapter 2's)."""
    checkpoint_every: int = 0
    """As ``train --checkpoint-every``: also checkpoint every this many steps, so a worker killed mid-run
    (OOM, a closed session) loses at most that much when the sweep is run again (0: only at the end and
    on a signal). Not part of the trial's identity: a rerun with another value continues the same run."""

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.config.env_id, self.config.seed, self.root, self.names)

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
    """Attempts made (0 when skipped; at most :data:`fetchrl.sweep.ledger.MAX_ATTEMPTS`)."""
    error: str = ""
    """The last attempt's error (empty on success)."""
    seconds: float = 0.0
    """Wall time of all attempts together, as measured in the worker."""


class Attempt(NamedTuple):
    """The result of one attempt at a trial, as a worker reports it to its backend."""

    ok: bool
    error: str
    """Why the attempt failed, one line (empty on success)."""
    seconds: float
    """Wall time of the attempt in the worker."""


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
    # Imported here, not at the top: only workers train, and the driver (and `sweep --grid` parsing)
    # should not pay for loading torch and SB3.
    from fetchrl.pipeline.evaluate import evaluate
    from fetchrl.pipeline.setup import runtime_for
    from fetchrl.pipeline.train import train_or_resume

    runtime = runtime_for(trial.config)  # one env path for the trial's training and evaluation
    train_or_resume(trial.config, trial.paths, progress=progress, checkpoint_every=trial.checkpoint_every,
                    runtime=runtime)
    evaluate(trial.paths, trial.eval_config, runtime, device=trial.config.device, progress=False)


def worker_init(torch_threads: int) -> None:
    """Limit one worker to ``torch_threads`` threads so parallel trials do not oversubscribe the CPU.

    Also sets ``FETCHRL_ENV_THREADS`` (:data:`fetchrl.config.ENV_THREADS_VAR`), which the process
    VecEnv reads to decide whether the trial's share of the CPUs allows a stepping process.
    """
    import torch  # workers only (see run_trial)

    torch.set_num_threads(torch_threads)
    os.environ[ENV_THREADS_VAR] = str(torch_threads)


def _injected_failure(trial: Trial) -> None:
    """The :data:`FAIL_TRIAL_ENV` test hook: raise for the trials it names."""
    if any(fnmatch.fnmatchcase(trial.name, p) for p in os.environ.get(FAIL_TRIAL_ENV, "").split()):
        raise RuntimeError(f"injected failure for {trial.name} ({FAIL_TRIAL_ENV} test hook)")


def _injected_death(trial: Trial) -> None:
    """The :data:`KILL_TRIAL_ENV` test hook: SIGKILL this worker on the first attempt of the trials it names."""
    marker_dir, *patterns = os.environ.get(KILL_TRIAL_ENV, "").split() or [""]
    if not any(fnmatch.fnmatchcase(trial.name, p) for p in patterns):
        return
    marker = Path(marker_dir) / f"killed_{trial.name.replace('/', '_')}"
    if marker.exists():
        return
    atomic_write_text(marker, f"{os.getpid()}\n")  # the test hook's marker, written like every artifact
    os.kill(os.getpid(), signal.SIGKILL)


def run_trial_in_worker(trial: Trial) -> Attempt:
    """Run one attempt and never raise: every backend's worker calls this."""
    t0 = time.perf_counter()
    try:
        _injected_death(trial)
        _injected_failure(trial)
        run_trial(trial)
        return Attempt(True, "", time.perf_counter() - t0)
    except FetchRLError as err:
        return Attempt(False, str(err), time.perf_counter() - t0)
    except Exception as err:  # a trial's crash must not sink the sweep: report it instead
        where = traceback.extract_tb(err.__traceback__)[-1]
        return Attempt(False, f"{type(err).__name__}: {err} (at {Path(where.filename).name}:{where.lineno})",
                       time.perf_counter() - t0)
