"""Loading checkpoints: clear messages for missing, corrupt or mismatched files."""

from __future__ import annotations

import zipfile
from typing import Any

from fetchrl.artifacts import RunPaths, TrainMeta, collect_versions
from fetchrl.config import TrainConfig
from fetchrl.errors import FetchRLError

#: Versions that change the numbers a resumed run produces.
RESUME_VERSION_KEYS = ("stable_baselines3", "torch", "mujoco", "gymnasium_robotics")


def load_meta(paths: RunPaths) -> TrainMeta:
    return TrainMeta.from_json(paths.meta)


def load_model(paths: RunPaths, env: Any = None, *, device: str = "cpu", expected_env_id: str | None = None) -> Any:
    """Load ``paths.checkpoint`` with ``PPO.load``; FetchRLError names the file on any problem."""
    from stable_baselines3 import PPO

    ckpt = paths.checkpoint
    if not ckpt.is_file():
        raise FetchRLError(f"checkpoint not found: {ckpt} (run `train --seed {paths.seed}` first)")
    if not zipfile.is_zipfile(ckpt):
        raise FetchRLError(f"checkpoint {ckpt} is corrupt or truncated (not a zip); retrain or restore it")
    if paths.meta.is_file():
        meta = load_meta(paths)
        env_id = expected_env_id or paths.env_id
        if meta.env_id != env_id:
            raise FetchRLError(f"checkpoint {ckpt} was trained on {meta.env_id}, not {env_id}")
    try:
        model = PPO.load(ckpt, env=env, device=device)
    except (zipfile.BadZipFile, EOFError, KeyError, RuntimeError, ValueError, OSError) as err:
        raise FetchRLError(f"checkpoint {ckpt} cannot be loaded ({type(err).__name__}: {err}); retrain it") from None
    if env is None:
        _check_spaces(model, paths)
    return model


def _check_spaces(model: Any, paths: RunPaths) -> None:
    from fetchrl import envs

    probe = envs.make_env(paths.env_id)
    try:
        if probe.observation_space != model.observation_space or probe.action_space != model.action_space:
            raise FetchRLError(
                f"checkpoint {paths.checkpoint} has observation/action spaces that differ from {paths.env_id}'s"
            )
    finally:
        probe.close()


def load_for_resume(config: TrainConfig, paths: RunPaths, env: Any, *, force: bool = False) -> tuple[Any, TrainMeta]:
    """Load the latest checkpoint of ``config.seed`` to continue it, refusing a mismatched one."""
    meta = load_meta(paths)
    if not force:
        problems = []
        if meta.env_id != config.env_id:
            problems.append(f"env id {meta.env_id} != {config.env_id}")
        for key, value in config.hyperparameters.items():
            if meta.hyperparameters.get(key) != value:
                problems.append(f"{key} {meta.hyperparameters.get(key)!r} != {value!r}")
        now = collect_versions()
        for key in RESUME_VERSION_KEYS:
            if meta.versions.get(key) != now.get(key):
                problems.append(f"{key} {meta.versions.get(key)} != {now.get(key)}")
        if problems:
            raise FetchRLError(
                f"refusing to resume {paths.checkpoint}: " + "; ".join(problems) + " (use --force to resume anyway)"
            )
    if meta.num_timesteps >= config.total_steps:
        raise FetchRLError(
            f"{paths.checkpoint} already has {meta.num_timesteps} steps >= --total-steps {config.total_steps}; "
            "raise --total-steps to train further"
        )
    model = load_model(paths, env=env, device=config.device, expected_env_id=config.env_id)
    return model, meta
