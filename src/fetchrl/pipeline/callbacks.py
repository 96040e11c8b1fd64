"""SB3 callbacks: progress display, the gentle stop used on Ctrl-C / SIGTERM, and every update in the logs."""

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

    def allows_overlap(self) -> bool:
        """For :func:`fetchrl.algos.fastsac.allows_overlap`: always (it reads counters and episode infos only)."""
        return True


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


class UpdateLogCallback(BaseCallback):
    """Write each PPO update's ``train/*`` scalars at the step of that update — the last update too.

    SB3's on-policy ``learn`` records an update's ``train/*`` values in ``train()`` and writes them
    with the *next* iteration's ``dump_logs``: one rollout late, and never for the last update (a
    one-rollout run has no ``train/*`` curve at all). This callback writes them as soon as the update
    is done: in ``on_rollout_start`` (after the update, before the next env step) and in
    ``on_training_end`` (after the last update), at ``num_timesteps``, the step the update was made
    at. Update ``k`` of a run with rollouts of ``R`` steps is then logged at ``k * R``, next to the
    ``rollout/*`` values of the rollout it learned from (as the from-scratch lab logs it), and
    SB3's own ``dump_logs`` finds nothing of ``train/*`` left to write. (A plain SB3 run shows the
    same values one rollout later, without its last update.)

    Put it *first* in the callback list: the logger is then empty when
    :class:`~fetchrl.pipeline.resume.RolloutSnapshots` captures a rollout boundary, so a resumed run
    does not write the same update twice. Nothing is written when no ``train/*`` value is pending (a
    run stopped mid-rollout already wrote its last update at that rollout's start); a checkpoint
    saved before this callback existed still holds its last update pending, and resuming it writes
    that update at the resumed boundary.
    """

    def _flush(self) -> None:
        logger = self.model.logger
        if any(key.startswith("train/") for key in logger.name_to_value):
            logger.dump(step=self.model.num_timesteps)

    def _on_rollout_start(self) -> None:
        self._flush()

    def _on_training_end(self) -> None:
        self._flush()

    def _on_step(self) -> bool:
        return True


class FinalLogCallback(BaseCallback):
    """Write what an off-policy run recorded after SB3's last log dump, at the run's last step.

    SB3's off-policy ``learn`` writes the logs every ``log_interval`` finished episodes
    (:meth:`fetchrl.algos.base.AlgoConfig.learn_kwargs`); the updates after the last such dump would
    never reach TensorBoard. When SB3 dumped at the last step itself, the update that followed it is
    left out rather than written a second time at that step (TensorBoard's steps stay unique).
    """

    def __init__(self) -> None:
        super().__init__()
        self._dumped_at = -1

    def _on_rollout_end(self) -> None:
        # Before the update: an empty logger means SB3 dumped during this step (a finished episode).
        if not self.model.logger.name_to_value:
            self._dumped_at = self.model.num_timesteps

    def _on_training_end(self) -> None:
        logger = self.model.logger
        if logger.name_to_value and self._dumped_at != self.model.num_timesteps:
            logger.dump(step=self.model.num_timesteps)

    def allows_overlap(self) -> bool:
        """For :func:`fetchrl.algos.fastsac.allows_overlap`: always. A step whose update is overlapped ends
        no episode, so SB3 dumps no logs in it, and the logger holds an update's values at
        ``on_rollout_end`` either way."""
        return True

    def _on_step(self) -> bool:
        return True
