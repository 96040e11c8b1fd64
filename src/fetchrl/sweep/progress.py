"""The sweep's progress display: trials done / running / queued / failed with an ETA (rich)."""

from __future__ import annotations

import time
from types import TracebackType

from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeElapsedColumn
from rich.text import Text

from fetchrl.console import make_console


def format_seconds(seconds: float) -> str:
    """``3725.4`` -> ``"1:02:05"``."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _EtaColumn(ProgressColumn):
    """The sweep's own ETA (rich's per-task estimate knows nothing of trials in flight)."""

    def __init__(self, sweep: SweepProgress) -> None:
        super().__init__()
        self.sweep = sweep

    def render(self, task: Task) -> Text:
        eta = self.sweep.eta_seconds()
        return Text("ETA " + ("-:--:--" if eta is None else format_seconds(eta)), style="cyan")


class SweepProgress:
    """Trials done / running / queued / failed with an ETA (rich), shared by every backend.

    The ETA is (queued + running trials) x mean successful attempt time / trials in flight, counted
    down between events; skipped trials do not count towards it. On a console that is not a
    terminal (CI, ``nohup``) each event is also logged as one status line.
    """

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.running, self.failed, self.skipped, self.retries = total, 0, 0, 0, 0, 0
        self.enabled = enabled
        self._attempt_seconds: list[float] = []
        self._eta_at: float | None = None
        console = make_console(stderr=True)  # off a terminal: status lines whole, never wrapped
        # A live bar on a terminal; elsewhere (CI logs, nohup) one status line per event instead.
        self._log_events = enabled and not console.is_terminal
        self._progress = Progress(
            TextColumn("[bold]sweep"), BarColumn(bar_width=20), TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), _EtaColumn(self),
            console=console, disable=not enabled or self._log_events, transient=False,
        )
        self._task = self._progress.add_task("sweep", total=total, status=self.status())

    def __enter__(self) -> SweepProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._progress.__exit__(exc_type, exc, tb)

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
            self.log(f"sweep: {self.status()} · ETA {'-:--:--' if eta is None else format_seconds(eta)}")

    def log(self, message: str) -> None:
        """Print one line (rich markup) above the bar, on stderr."""
        self._progress.console.print(message)
