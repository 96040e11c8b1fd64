"""One training process per run: an exclusive ``flock`` on ``RunPaths.lock``, holding the holder's PID.

Two ``train --seed 7`` in one root would both write the same checkpoint and two event files into one
TensorBoard run. The second one is refused instead, with one line naming the first one's PID, and exits
with :data:`LOCKED_EXIT_CODE` (75, ``EX_TEMPFAIL`` from ``sysexits.h``: "try again later").

The kernel drops a ``flock`` when its holder dies, even by ``kill -9``, so a stale lock file never
blocks. The file is removed on release (while still locked); a process that opened it just before
then finds, once it holds the lock, that the path no longer names the file it locked, and starts over
(the usual check, so two processes can never hold two different files of the same name).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from fetchrl.artifacts import RunPaths
from fetchrl.errors import FetchRLError

#: Exit code of a run refused because another process trains it (``EX_TEMPFAIL``).
LOCKED_EXIT_CODE = 75


def _holder(path: os.PathLike[str]) -> str:
    """The PID written in the lock file, as the message shows it ("PID 1234", or "another process")."""
    try:
        with open(path, encoding="ascii") as fh:
            pid = fh.read().strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "another process"


def _acquire(paths: RunPaths) -> int:
    """An open, flock-ed descriptor of ``paths.lock`` holding this process's PID; FetchRLError when taken."""
    lock = paths.lock
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FetchRLError(f"cannot write to {lock.parent}: {err.strerror or err} (check --root)") from None
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise FetchRLError(f"cannot create the run's lock file {lock}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise FetchRLError(
                f"seed {paths.seed} of {paths.env_id} in {paths.root} is being trained by {_holder(lock)} "
                f"(lock {lock}); wait for it to finish or stop it",
                exit_code=LOCKED_EXIT_CODE) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # the previous holder removed it between our open and our flock
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            return fd
        os.close(fd)


@contextlib.contextmanager
def run_lock(paths: RunPaths) -> Iterator[None]:
    """Hold the run's lock for the ``with`` block (released however it ends, signals included).

    Raises FetchRLError (exit code :data:`LOCKED_EXIT_CODE`) naming the holder's PID when another
    process holds it.
    """
    created = not paths.lock.parent.exists()
    fd = _acquire(paths)
    refused = False
    try:
        yield
    except FetchRLError:
        refused = created
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(paths.lock)  # still locked here: see the module docstring
        os.close(fd)
        if refused:  # a run refused under the lock (nothing to resume...) leaves no empty checkpoints/ behind
            with contextlib.suppress(OSError):
                paths.lock.parent.rmdir()  # fails, harmlessly, when anything was written in it
