"""The local sweep backend: one fresh spawn worker process per attempt, Ctrl-C forwarded to them.

At most ``workers`` trials run at a time (default: the core count). Every attempt gets a fresh
single-use worker process, so a worker that crashes (segfault, OOM kill) fails only its own trial,
and torch is limited to ``cores // workers`` threads in it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from types import FrameType, TracebackType
from typing import Any

from fetchrl.sweep.base import Runner, register_backend
from fetchrl.sweep.ledger import TrialLedger
from fetchrl.sweep.progress import SweepProgress
from fetchrl.sweep.trials import Attempt, Trial, TrialOutcome, run_trial_in_worker, worker_init

#: What ``signal.signal`` returns and accepts (typeshed's ``_HANDLER``).
SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


#: Set in a local worker while it runs a trial (see :func:`local_worker_init`).
_busy = threading.Event()
#: The worker's driver, as the worker saw it at start.
_driver_pid = 0


def local_worker_init(torch_threads: int) -> None:
    """A local worker: thread limits, its own process group, and it stops when its driver dies.

    Own process group: a terminal's Ctrl-C reaches only the driver, which forwards it exactly once
    (a worker that got it twice would take the second as "quit now" and skip saving). A driver
    killed with SIGKILL cannot forward anything, so each worker watches its parent: in a trial it sends
    itself SIGTERM — training then stops and saves an incomplete, resumable checkpoint, and
    :func:`run_in_local_worker` exits — otherwise it exits at once. (A pool worker left idle would wait
    for its next task forever, holding the dead driver's stdout and stderr open.)
    """
    global _driver_pid
    worker_init(torch_threads)
    os.setpgrp()
    _driver_pid = parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        if _busy.is_set():
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            os._exit(1)

    threading.Thread(target=watch_parent, name="fetchrl-parent-watch", daemon=True).start()


def run_in_local_worker(trial: Trial) -> Attempt:
    """:func:`run_trial_in_worker` in a local worker; the worker exits after it when the driver died meanwhile
    (nobody is left to read the result)."""
    _busy.set()
    try:
        attempt = run_trial_in_worker(trial)
    finally:
        _busy.clear()
    if os.getppid() != _driver_pid:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    return attempt


def _attempt_result(fut: Future[Attempt]) -> Attempt:
    """The worker's report, or a failed attempt when the worker process itself died."""
    try:
        ok, err, secs = fut.result()
        return Attempt(bool(ok), str(err), float(secs))
    except Exception as exc:  # the worker process itself died (BrokenProcessPool) or could not start
        return Attempt(False, f"worker died: {type(exc).__name__}: {exc}", 0.0)


class SignalForwarder:
    """Driver side of Ctrl-C / SIGTERM: remember the signal and pass it on to every live worker.

    Workers run in their own process groups (see :func:`local_worker_init`), so this is the only
    way they hear of it: each then saves an incomplete checkpoint, and the driver stops submitting.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.pools: list[ProcessPoolExecutor] = []
        self._previous: dict[int, SignalHandler] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        for pool in list(self.pools):
            # The executor's own process table: the only handle on its (single) worker's pid.
            for pid in list(getattr(pool, "_processes", None) or {}):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)

    def __enter__(self) -> SignalForwarder:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run_local(trials: Sequence[Trial], workers: int, progress: SweepProgress) -> list[TrialOutcome]:
    """At most ``workers`` trials at a time (0: the core count), each attempt in its own fresh spawn worker.

    Raises TrainingInterrupted (exit code 130 / 143) after a SIGINT / SIGTERM, once every running
    trial has saved its incomplete checkpoint.
    """
    # Imported here: pulls in torch and SB3, which the driver of a sweep otherwise never needs.
    from fetchrl.pipeline.train import SIGNAL_EXIT_CODES, TrainingInterrupted

    workers = max(1, min(workers or (os.cpu_count() or 1), len(trials)))
    # spawn: a fresh interpreter per worker; forking a process that already runs torch threads is unsafe.
    ctx = mp.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    ledger = TrialLedger(trials, progress)
    queue = deque(range(len(trials)))
    running: dict[Future[Attempt], tuple[int, ProcessPoolExecutor]] = {}
    with SignalForwarder() as stop:
        try:
            while running or (queue and stop.signum is None):
                while queue and stop.signum is None and len(running) < workers:
                    i = queue.popleft()
                    # One single-use pool per attempt: a crash breaks only this pool, so it is charged
                    # to this trial alone (a shared pool would fail every trial in flight).
                    pool = ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=local_worker_init,
                                               initargs=(threads,))
                    stop.pools.append(pool)
                    ledger.start(i)
                    running[pool.submit(run_in_local_worker, trials[i])] = (i, pool)
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    i, pool = running.pop(fut)
                    pool.shutdown(wait=True)
                    stop.pools.remove(pool)
                    if ledger.settle(i, *_attempt_result(fut), retry=stop.signum is None):
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


def make_local_runner(ray_address: str | None = None) -> Runner:
    """The local backend's runner (``ray_address`` is ignored: the local backend needs no cluster)."""
    return run_local


register_backend("local", make_local_runner)
