"""SB3 callbacks: progress display and the gentle stop used on Ctrl-C / SIGTERM."""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback


class ProgressCallback(BaseCallback):
    """A tqdm bar over environment steps: steps/s, ETA and the latest rollout success rate."""

    def __init__(self, total_steps: int, desc: str = "train", start: int = 0, disable: bool = False) -> None:
        super().__init__()
        self.total_steps = total_steps
        self.desc = desc
        self.start = start
        self.disable = disable
        self._bar = None

    def _on_training_start(self) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=self.total_steps,
            initial=self.start,
            desc=self.desc,
            unit="step",
            unit_scale=True,
            dynamic_ncols=True,
            disable=self.disable,
            # A log file (CI, nohup) gets a line every 30 s, not thousands of carriage-return updates.
            mininterval=0.5 if sys.stderr.isatty() else 30.0,
        )

    def _on_step(self) -> bool:
        if self._bar is not None:
            self._bar.update(self.training_env.num_envs)
        return True

    def _on_rollout_end(self) -> None:
        buf = getattr(self.model, "ep_success_buffer", None)
        if self._bar is not None and buf:
            self._bar.set_postfix(success=f"{np.mean(buf):.2f}", refresh=False)

    def _on_training_end(self) -> None:
        if self._bar is not None:
            self._bar.close()


class StopFlagCallback(BaseCallback):
    """Return False (SB3's way to stop ``learn``) as soon as ``should_stop()`` is true.

    A signal handler only sets a flag; stopping happens here, at a step boundary, so the model,
    optimiser and counters are consistent when the caller saves them.
    """

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        super().__init__()
        self.should_stop = should_stop

    def _on_step(self) -> bool:
        return not self.should_stop()
