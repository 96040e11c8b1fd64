"""Train SB3 PPO on a Fetch task with the chapter's configuration and write its artifacts.

Artifacts (see ``fetchrl.artifacts.RunPaths``): the checkpoint zip, its meta JSON and the
TensorBoard run directory. Ctrl-C / SIGTERM stop training at the next step, save an *incomplete*
checkpoint and raise :class:`TrainingInterrupted`; ``resume=True`` continues it.
"""

from __future__ import annotations

import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from fetchrl import envs
from fetchrl.artifacts import RunPaths, TrainMeta, atomic_path, collect_versions, now_iso
from fetchrl.callbacks import ProgressCallback, StopFlagCallback, WallClockCallback
from fetchrl.config import ALGO, TrainConfig
from fetchrl.errors import FetchRLError

#: Exit codes of a process stopped by a signal (128 + signal number), as shells report them.
SIGNAL_EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class TrainingInterrupted(FetchRLError):
    """Training stopped on SIGINT/SIGTERM after saving an incomplete checkpoint."""


@dataclass
class StopRequest:
    """Set by a signal handler; read by :class:`StopFlagCallback` at the next step."""

    signum: int | None = None
    _previous: dict[int, Any] = field(default_factory=dict)

    def __call__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:  # second signal: leave at once; every artifact write is atomic
            raise SystemExit(SIGNAL_EXIT_CODES.get(signal.Signals(signum), 1))
        self.signum = signum

    def install(self) -> StopRequest:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in SIGNAL_EXIT_CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _configure_torch(config: TrainConfig) -> None:
    import torch

    if config.deterministic_torch:
        torch.use_deterministic_algorithms(True)


def _new_model(config: TrainConfig, env: Any) -> Any:
    from stable_baselines3 import PPO

    return PPO(
        config.policy,
        env,
        seed=config.seed,
        device=config.device,
        verbose=0,
        **config.ppo_kwargs(),
    )


def _reset_tb_dir(tb_dir: Path) -> None:
    """A rerun of a seed replaces that seed's logs (SB3 would append ``_1``, ``_2``...)."""
    if tb_dir.exists():
        shutil.rmtree(tb_dir)
    tb_dir.mkdir(parents=True, exist_ok=True)


def save_checkpoint(model: Any, config: TrainConfig, paths: RunPaths, *, wall_time_s: float,
                    complete: bool, stop_reason: str) -> TrainMeta:
    """Write checkpoint zip then its meta JSON, each atomically (meta last: it vouches for the zip)."""
    with atomic_path(paths.checkpoint) as tmp:
        model.save(tmp)
    meta = TrainMeta(
        created_at=now_iso(),
        algo=ALGO,
        env_id=config.env_id,
        seed=config.seed,
        device=str(model.device),
        n_envs=config.n_envs,
        total_steps=config.total_steps,
        hyperparameters=config.hyperparameters,
        wall_time_s=round(wall_time_s, 3),
        steps_per_second=round(model.num_timesteps / wall_time_s, 1) if wall_time_s > 0 else 0.0,
        checkpoint=str(paths.checkpoint),
        versions=collect_versions(),
        num_timesteps=int(model.num_timesteps),
        complete=complete,
        stop_reason=stop_reason,
        fast_env=config.fast_env,
        observation_space=repr(model.observation_space),
        action_space=repr(model.action_space),
    )
    meta.to_json(paths.meta)
    return meta


def train(config: TrainConfig, paths: RunPaths, *, progress: bool = True, resume: bool = False,
          force: bool = False) -> TrainMeta:
    """Train (or resume) one run and write its checkpoint, meta JSON and TensorBoard logs.

    Returns the meta written. Raises TrainingInterrupted (exit 130/143) after saving an
    incomplete checkpoint when SIGINT/SIGTERM arrives.
    """
    from stable_baselines3.common.logger import configure

    envs.validate_env_id(config.env_id)
    _configure_torch(config)
    env = envs.make_vec_env(config.env_id, config.n_envs, seed=config.seed, fast=config.fast_env)
    try:
        if resume:
            from fetchrl.checkpoints import load_for_resume

            model, prior = load_for_resume(config, paths, env, force=force)
            prior_wall = prior.wall_time_s
            paths.tb_dir.mkdir(parents=True, exist_ok=True)
        else:
            model = _new_model(config, env)
            prior_wall = 0.0
            _reset_tb_dir(paths.tb_dir)
        model.set_logger(configure(str(paths.tb_dir), ["tensorboard"]))
        remaining = config.total_steps - model.num_timesteps
        start = model.num_timesteps
        stop = StopRequest().install()
        clock = WallClockCallback()
        callbacks = [clock, StopFlagCallback(stop), ProgressCallback(config.total_steps, f"train seed {config.seed}",
                                                                      start=start, disable=not progress)]
        try:
            if remaining > 0:
                model.learn(remaining, callback=callbacks, reset_num_timesteps=not resume, progress_bar=False)
        finally:
            stop.uninstall()
        wall = prior_wall + clock.seconds
        if stop.signum is not None:
            name = signal.Signals(stop.signum).name
            save_checkpoint(model, config, paths, wall_time_s=wall, complete=False, stop_reason=f"interrupted by {name}")
            raise TrainingInterrupted(
                f"training stopped by {name} at {model.num_timesteps} of {config.total_steps} steps; "
                f"checkpoint saved to {paths.checkpoint} — resume with: train --seed {config.seed} --resume",
                exit_code=SIGNAL_EXIT_CODES[signal.Signals(stop.signum)],
            )
        return save_checkpoint(model, config, paths, wall_time_s=wall, complete=True, stop_reason="completed")
    finally:
        env.close()
