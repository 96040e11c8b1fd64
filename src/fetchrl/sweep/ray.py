"""The Ray sweep backend: one Ray task per trial, on a local Ray instance or a cluster.

Ray is an optional extra (``pip install '.[ray]'``), imported only when a Ray runner is made.

Where artifacts land — always on the driver:
  Each task trains and evaluates in a temporary directory on its own node (through the very
  function the local backend runs, :func:`fetchrl.sweep.trials.run_trial_in_worker`), then returns
  every file the trial wrote — checkpoint zip, meta JSON, TensorBoard events, eval JSON — as bytes.
  The driver writes them under the trial's root, atomically, meta and eval JSON last (they vouch for
  the rest). So a cluster needs no shared filesystem, a relative ``--root`` means the driver's
  directory, only the driver ever writes the sweep's directory, and the artifacts are byte for byte
  what the local backend writes (the ``checkpoint`` fields of the meta and eval JSON name the
  driver's path). The cost is shipping a few hundred kB per trial through Ray's object store.

Resume: a trial that holds an interrupted (or finished but unevaluated) run on the driver — its
checkpoint, meta JSON, an off-policy run's replay buffer (``.replay_buffer.pkl``, which the checkpoint
names by digest) and TensorBoard logs, and the same of its ``.partial`` run — gets those files shipped
into the task's temp root first (:func:`resume_files`), so the task continues it exactly as the local
backend would (:func:`fetchrl.pipeline.train.train_or_resume`) instead of starting over; the driver's
files of the run that the task's result no longer has (a partial run it promoted) are removed.

Retries: a task is attempted at most twice whatever went wrong — an exception in the trial comes
back as a failed attempt, a dead worker or node as a Ray error — exactly like the local backend
(Ray's own ``max_retries`` is 0 so the two retry counts do not multiply).

Each task reserves ``cpus_per_trial`` CPUs and limits torch's threads (and the fast env's stepping
processes) to as many, so tasks packed onto one node do not oversubscribe it.

Exposure: whoever reaches a Ray instance's ports can run code on it. Without an address, the local
instance this module starts listens on 127.0.0.1 only and has no dashboard; a cluster's address is
probed before Ray dials it, so an unreachable one is one line, not minutes of retries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import shutil
import socket
import sys
import tempfile
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import IO, Protocol

from fetchrl.artifacts import RunPaths, atomic_write_bytes, read_json, write_json
from fetchrl.errors import FetchRLError
from fetchrl.sweep.base import Runner, register_backend
from fetchrl.sweep.ledger import TrialLedger
from fetchrl.sweep.progress import SweepProgress
from fetchrl.sweep.trials import Attempt, Trial, TrialOutcome, run_trial_in_worker, worker_init

RAY_MISSING = "Ray is not installed: pip install '.[ray]'"
#: Seconds the driver tries a TCP connection to ``--ray-address`` before calling it unreachable.
PROBE_SECONDS = 5.0
#: Set before ``import ray`` when no address is given: Ray then gives the local instance it starts the
#: loopback address, so its GCS, raylet, object manager and agents listen on 127.0.0.1 only (Ray's own
#: default on macOS and Windows). Whoever reaches a Ray instance's ports can run code on it, unless
#: token authentication is on (docs/sweeps.md, "Security").
LOOPBACK_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
#: What every "cannot connect" error suggests.
CONNECT_HINT = ("Start a cluster with `ray start --head` and pass --ray-address auto (or HOST:PORT), "
                "or omit --ray-address to start a local instance")
#: Environment variables with this prefix are forwarded from the driver to every task.
FORWARDED_ENV_PREFIX = "FETCHRL_"
#: Seconds ray.wait blocks before the loop looks again for free slots (the cluster may grow).
WAIT_SECONDS = 2.0


def import_ray(*, loopback: bool = False) -> ModuleType:
    """``import ray`` or a FetchRLError saying how to install it (a module: Ray is optional and untyped here).

    ``loopback``: a local instance will be started, bound to 127.0.0.1 (:data:`LOOPBACK_ENV`; it only
    takes effect when Ray is not imported yet, so :func:`connect` checks the address it got).
    """
    if loopback:
        os.environ[LOOPBACK_ENV[0]] = LOOPBACK_ENV[1]
    try:
        import ray
    except ImportError:
        raise FetchRLError(RAY_MISSING) from None
    return ray


# ============================================================================ inside the task
@dataclass(frozen=True)
class TaskResult:
    """What one Ray task sends back to the driver."""

    ok: bool
    error: str
    """Why the attempt failed, one line (empty on success)."""
    seconds: float
    """Wall time of the attempt on the node."""
    node: str
    """Host name of the node that ran it (named in errors)."""
    files: dict[str, bytes] = field(default_factory=dict)
    """Every file the trial wrote, ``{path relative to the trial root: bytes}``; empty unless ``ok``."""


@contextlib.contextmanager
def _forwarded_env(env: Mapping[str, str]) -> Iterator[None]:
    """The driver's FETCHRL_* variables for the duration of one task (Ray reuses worker processes)."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
    for k in saved:
        del os.environ[k]
    os.environ.update(env)
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith(FORWARDED_ENV_PREFIX)]:
            del os.environ[k]
        os.environ.update(saved)


def _pack(local: Trial, trial: Trial) -> dict[str, bytes]:
    """Every file under ``local.root`` as ``{relative path: bytes}``, checkpoint fields pointing at ``trial``."""
    for json_path in (local.paths.meta, local.paths.eval_json):
        what = "checkpoint metadata" if json_path == local.paths.meta else "eval JSON"
        data = read_json(json_path, what)
        data["checkpoint"] = str(trial.paths.checkpoint)
        write_json(json_path, data)
    root = Path(local.root)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_trial_task(trial: Trial, threads: int, env: Mapping[str, str],
                   state: Mapping[str, bytes] | None = None) -> TaskResult:
    """Body of the Ray task: run ``trial`` in a node-local temp root; return its files as bytes.

    ``state``: the driver's run of the trial to continue (:func:`resume_files`), written into the temp
    root before the trial runs.
    """
    with _forwarded_env(env), tempfile.TemporaryDirectory(prefix="fetchrl-trial-") as tmp:
        worker_init(threads)  # inside: it sets FETCHRL_ENV_THREADS, which _forwarded_env restores after
        local = dataclasses.replace(trial, root=Path(tmp))
        for rel, data in (state or {}).items():
            atomic_write_bytes(Path(tmp) / rel, data)
        ok, error, seconds = run_trial_in_worker(local)
        files: dict[str, bytes] = {}
        if ok:
            try:
                files = _pack(local, trial)
            except (OSError, FetchRLError) as err:
                ok, error = False, f"packing the artifacts failed: {err}"
    return TaskResult(ok, error, seconds, socket.gethostname(), files)


# ============================================================================ on the driver
def _run_files(paths: RunPaths) -> list[Path]:
    """A run's own files: checkpoint, meta, replay buffer (when it has one), every file of its TensorBoard dir."""
    logs = sorted(f for f in paths.tb_dir.rglob("*") if f.is_file()) if paths.tb_dir.is_dir() else []
    return [f for f in (paths.checkpoint, paths.meta, paths.replay_buffer) if f.is_file()] + logs


def resume_files(trial: Trial) -> dict[str, bytes]:
    """The driver's run of ``trial`` to continue in the task, ``{path relative to the trial root: bytes}``:
    its checkpoint, meta, replay buffer and logs, and those of its ``.partial`` run; ``{}`` when it has
    no checkpoint here (the task then trains from scratch). The task decides, as ``train_or_resume``
    does, whether they are continued, reused (a finished run of the trial's config) or replaced."""
    root = Path(trial.root)
    out: dict[str, bytes] = {}
    for paths in (trial.paths, trial.paths.partial):
        if paths.checkpoint.is_file():
            out |= {f.relative_to(root).as_posix(): f.read_bytes() for f in _run_files(paths)}
    return out


def write_trial_files(trial: Trial, files: Mapping[str, bytes]) -> None:
    """Write a task's files under ``trial.root``: a fresh TensorBoard dir, meta then eval JSON last; then
    remove what the task's result no longer holds of the run (a partial run it continued and promoted)."""
    paths = trial.paths
    root = Path(trial.root)
    last = [paths.meta.relative_to(root).as_posix(), paths.eval_json.relative_to(root).as_posix()]
    missing = [rel for rel in last if rel not in files]
    if missing:
        raise FetchRLError(f"trial {trial.name} returned no {', '.join(missing)}")
    partial = paths.partial
    stale = [f for f in (partial.checkpoint, partial.meta, partial.replay_buffer, paths.replay_buffer)
             if f.is_file() and f.relative_to(root).as_posix() not in files]
    partial_logs = f"{partial.tb_dir.relative_to(root).as_posix()}/"
    stale_logs = partial.tb_dir.is_dir() and not any(rel.startswith(partial_logs) for rel in files)
    if paths.tb_dir.exists():  # a rerun replaces the seed's logs, as train() does
        shutil.rmtree(paths.tb_dir)
    for rel in sorted(files, key=lambda r: last.index(r) + 1 if r in last else 0):
        atomic_write_bytes(root / rel, files[rel])
    for f in stale:  # after the new run is whole on disk: a crash before here loses nothing
        f.unlink(missing_ok=True)
    if stale_logs:
        shutil.rmtree(partial.tb_dir, ignore_errors=True)


def _collect(ray: ModuleType, ref: object, trial: Trial) -> Attempt:
    """A finished task's attempt, its files written on the driver; Ray errors become failed attempts."""
    try:
        result: TaskResult = ray.get(ref)
    except ray.exceptions.RayError as err:  # worker/node died, task cancelled, object lost
        first = (str(err).strip().splitlines() or [""])[0]
        return Attempt(False, f"Ray task failed: {type(err).__name__}: {first}", 0.0)
    if result.ok:
        try:
            write_trial_files(trial, result.files)
        except (FetchRLError, OSError) as err:
            return Attempt(False, f"writing artifacts from node {result.node} failed: {err}", result.seconds)
    return Attempt(result.ok, result.error, result.seconds)


def probe(address: str, timeout: float = PROBE_SECONDS) -> None:
    """Fail at once, in one line, when nothing accepts a TCP connection at ``address``.

    ``address``: ``HOST:PORT`` or ``ray://HOST:PORT``; ``auto`` is Ray's to resolve (not probed).
    Without this, Ray retries an unreachable GCS for minutes, printing raw C++ log lines.
    Raises FetchRLError: exit 2 for a malformed address, 1 for an unreachable one.
    """
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise FetchRLError(f"--ray-address {address!r}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        why = err.strerror or str(err) or type(err).__name__
        raise FetchRLError(f"cannot reach the Ray cluster at {address!r}: {why}. {CONNECT_HINT}",
                           exit_code=1) from None


@contextlib.contextmanager
def _stderr_fd_to(file: IO[bytes]) -> Iterator[None]:
    """Point file descriptor 2 at ``file`` (Ray's C++ core writes its log lines there, not to sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


class RayContext(Protocol):
    """What ``ray.init`` returns, as far as :func:`connect` reads it."""

    address_info: Mapping[str, object]


def _init(ray: ModuleType, address: str) -> RayContext:
    """``ray.init`` with our logging settings; the dashboard is never started."""
    return ray.init(address=address, ignore_reinit_error=True, include_dashboard=False,
                    logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)


def connect(ray: ModuleType, address: str | None) -> bool:
    """Connect to a cluster, or start a local instance; True when this call did it (so we shut it down).

    ``address`` None: a fresh local instance (Ray's ``"local"``: never a cluster that happens to run on
    this machine, nor ``RAY_ADDRESS``), dashboard off, every server on 127.0.0.1 (see
    :data:`LOOPBACK_ENV`); FetchRLError if Ray put it on another address. A cluster address is probed
    first (:func:`probe`), and Ray's raw C++ output while connecting is held back: a failure is one
    line; after a success that output is passed on to stderr.
    """
    if ray.is_initialized():  # e.g. a test's ray.init(num_cpus=2): use it as it is
        return False
    where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
    try:
        if address is None:
            ctx = _init(ray, "local")
        else:
            probe(address)
            with tempfile.TemporaryFile() as held:
                with _stderr_fd_to(held):
                    ctx = _init(ray, address)
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise FetchRLError(f"cannot connect to {where}: {type(err).__name__}: {str(err).rstrip('.')}. "
                           f"{CONNECT_HINT}", exit_code=1) from None
    node_ip = str(ctx.address_info.get("node_ip_address", "")) if address is None else ""
    if address is None and not _is_loopback(node_ip):
        ray.shutdown()
        raise FetchRLError(f"the local Ray instance would listen on {node_ip}, not on 127.0.0.1 (whoever "
                           f"reaches it could run code): Ray was imported before fetchrl could set "
                           f"{LOOPBACK_ENV[0]}=0; set it before Python starts, or start Ray yourself", exit_code=1)
    return True


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _slots(ray: ModuleType, workers: int, cpus_per_trial: int) -> int:
    """Tasks to keep in flight: ``workers`` if given, else what the cluster's CPUs hold right now."""
    if workers > 0:
        return workers
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // cpus_per_trial)


def make_ray_runner(ray_address: str | None = None, *, cpus_per_trial: int = 1) -> Runner:
    """A sweep runner with one Ray task per trial.

    Args:
        ray_address: ``None`` starts a local Ray instance, bound to 127.0.0.1 with no dashboard
            (unless Ray is already initialised in this process, e.g. by a test's
            ``ray.init(num_cpus=2)``; then that one is used); ``"auto"``
            joins the cluster started on this machine by ``ray start``; ``"HOST:PORT"`` (or
            ``"ray://HOST:10001"``) a remote one. Every node needs this project installed with the
            same versions (``pip install -c constraints.txt '.[ray]'``).
        cpus_per_trial: CPUs each task reserves; torch runs that many threads in it.

    Raises FetchRLError at once when Ray is not installed.
    """
    import_ray(loopback=ray_address is None)
    if cpus_per_trial < 1:
        raise FetchRLError(f"cpus_per_trial must be >= 1, got {cpus_per_trial}")

    def run_ray(trials: Sequence[Trial], workers: int, progress: SweepProgress) -> list[TrialOutcome]:
        ray = import_ray()
        started_here = connect(ray, ray_address)
        task = ray.remote(num_cpus=cpus_per_trial, max_retries=0)(run_trial_task)
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
        ledger = TrialLedger(trials, progress)
        queue = deque(range(len(trials)))
        pending: dict[object, int] = {}  # Ray ObjectRef -> trial index
        try:
            while queue or pending:
                while queue and len(pending) < _slots(ray, workers, cpus_per_trial):
                    i = queue.popleft()
                    ledger.start(i)
                    pending[task.remote(trials[i], cpus_per_trial, env, resume_files(trials[i]))] = i
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_SECONDS)
                for ref in ready:
                    i = pending.pop(ref)
                    if ledger.settle(i, *_collect(ray, ref, trials[i])):
                        queue.append(i)
        except BaseException:  # Ctrl-C or a driver error: do not leave tasks running on the cluster
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            if started_here:
                ray.shutdown()
        return ledger.outcomes()

    return run_ray


register_backend("ray", make_ray_runner)
