"""The retry ledger every backend keeps: attempts per trial, the retry-once rule, progress events."""

from __future__ import annotations

from collections.abc import Sequence

from rich.markup import escape

from fetchrl.sweep.progress import SweepProgress
from fetchrl.sweep.trials import Trial, TrialOutcome

#: A trial is attempted at most this often (the first run and one retry), on every backend.
MAX_ATTEMPTS = 2


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
        """One outcome per trial, in order; raises if the backend left a trial unsettled (a bug)."""
        missing = [self.trials[i].name for i in range(len(self.trials)) if i not in self._outcomes]
        if missing:
            raise RuntimeError(f"backend returned without settling trial(s) {missing}")
        return [self._outcomes[i] for i in range(len(self.trials))]
