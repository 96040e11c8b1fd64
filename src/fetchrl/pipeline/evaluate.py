"""Deterministic, explicitly seeded evaluation episodes -> one typed :class:`EvalResult`.

Protocol (the chapter's section 3.4, made exact):
- episode ``i`` is reset with seed ``EvalConfig.seed_offset + i`` — never drawn from the training
  seed stream, so every policy (trained, random, zero) is scored on the very same goals;
- the trained policy acts with its mean action (``deterministic=True``);
- ``success`` is ``info["is_success"]`` at the episode's last step;
- ``final_distance`` is ||achieved_goal - desired_goal|| of the *terminal* observation (we step
  plain envs without autoreset, so the observation at truncation is the terminal one): the gripper's
  distance to the goal on Reach, the *object's* on Push (its achieved_goal is the object's position).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Protocol

import gymnasium as gym
import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from tqdm.auto import tqdm

from fetchrl.algos.base import check_run_value
from fetchrl.artifacts import (
    EpisodeRecord,
    EvalResult,
    RunPaths,
    aggregate_episodes,
    collect_versions,
    now_iso,
)
from fetchrl.config import ALGO, EvalConfig
from fetchrl.pipeline.checkpoints import Checkpoint, load_model
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs

Obs = dict[str, np.ndarray]


class Policy(Protocol):
    name: str

    def reset(self, seeds: Sequence[int]) -> None:
        """Called at the start of a batch of episodes with their reset seeds."""

    def __call__(self, obs: Obs) -> np.ndarray:
        """obs: dict of [batch, ...] arrays -> actions [batch, act_dim] float32."""


class SB3Policy:
    """A loaded SB3 model acting deterministically (mean action, clipped to the action space)."""

    name = "trained"

    def __init__(self, model: BaseAlgorithm, deterministic: bool = True) -> None:
        self.model = model
        self.deterministic = deterministic

    def reset(self, seeds: Sequence[int]) -> None:
        pass

    def __call__(self, obs: Obs) -> np.ndarray:
        action, _ = self.model.predict(obs, deterministic=self.deterministic)
        return np.asarray(action, dtype=np.float32)


class RandomPolicy:
    """Uniform actions; episode ``seed``'s actions come from ``default_rng(seed)`` (reproducible)."""

    name = "random"

    def __init__(self, act_dim: int, low: float = -1.0, high: float = 1.0) -> None:
        self.act_dim, self.low, self.high = act_dim, low, high
        self._rngs: list[np.random.Generator] = []

    def reset(self, seeds: Sequence[int]) -> None:
        self._rngs = [np.random.default_rng(s) for s in seeds]

    def __call__(self, obs: Obs) -> np.ndarray:
        n = len(next(iter(obs.values())))
        return np.stack([rng.uniform(self.low, self.high, self.act_dim) for rng in self._rngs[:n]]).astype(np.float32)


class ZeroPolicy:
    """Does nothing: the arm stays where it starts. Its return shows what 'return > -10' is worth."""

    name = "zero"

    def __init__(self, act_dim: int) -> None:
        self.act_dim = act_dim

    def reset(self, seeds: Sequence[int]) -> None:
        pass

    def __call__(self, obs: Obs) -> np.ndarray:
        n = len(next(iter(obs.values())))
        return np.zeros((n, self.act_dim), dtype=np.float32)


def _episode_record(seed: int, rewards: list[float], actions: list[np.ndarray], successes: list[float],
                    terminal_obs: Obs) -> EpisodeRecord:
    acts = np.asarray(actions, dtype=np.float64)
    smooth = float(np.linalg.norm(np.diff(acts, axis=0), axis=1).mean()) if len(acts) > 1 else 0.0
    hit = [i + 1 for i, s in enumerate(successes) if s >= 0.5]
    return EpisodeRecord(
        seed=int(seed),
        return_=float(np.sum(rewards, dtype=np.float64)),
        length=len(rewards),
        success=bool(successes[-1] >= 0.5),
        final_distance=envs.goal_distance(terminal_obs),
        time_to_success=hit[0] if hit else None,
        action_smoothness=smooth,
        action_max_abs=float(np.abs(acts).max()),
    )


def run_episodes(runtime: Runtime, policy: Policy, seeds: Sequence[int], *, n_envs: int = 10,
                 progress: bool = False) -> list[EpisodeRecord]:
    """Run one episode per seed on ``runtime``'s env, ``n_envs`` side by side; records in ``seeds`` order."""
    pool = [envs.make_env(runtime) for _ in range(min(n_envs, len(seeds)))]
    records: list[EpisodeRecord] = []
    bar = tqdm(total=len(seeds), desc=f"eval {policy.name}", unit="ep", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(seeds), len(pool)):
            chunk = list(seeds[start:start + len(pool)])
            records.extend(_run_chunk(pool[:len(chunk)], policy, chunk))
            bar.update(len(chunk))
    finally:
        bar.close()
        for e in pool:
            e.close()
    return records


def _run_chunk(pool: list[gym.Env], policy: Policy, seeds: list[int]) -> list[EpisodeRecord]:
    policy.reset(seeds)
    obs = [e.reset(seed=s)[0] for e, s in zip(pool, seeds, strict=True)]
    n = len(pool)
    rewards: list[list[float]] = [[] for _ in range(n)]
    actions: list[list[np.ndarray]] = [[] for _ in range(n)]
    successes: list[list[float]] = [[] for _ in range(n)]
    terminal: list[Obs | None] = [None] * n
    active = list(range(n))
    while active:
        batch = {k: np.stack([obs[i][k] for i in active]) for k in obs[active[0]]}
        acts = policy(batch)
        still = []
        for row, i in enumerate(active):
            o, r, term, trunc, info = pool[i].step(acts[row])
            rewards[i].append(float(r))
            actions[i].append(np.asarray(acts[row]))
            successes[i].append(float(info.get("is_success", 0.0)))
            obs[i] = o
            if term or trunc:
                terminal[i] = o
            else:
                still.append(i)
        active = still
    return [_episode_record(seeds[i], rewards[i], actions[i], successes[i], terminal[i])  # type: ignore[arg-type]
            for i in range(n)]


def evaluate_policy(runtime: Runtime, policy: Policy, eval_config: EvalConfig, *, checkpoint: str = "",
                    device: str = "cpu", progress: bool = False, algo: str = ALGO) -> EvalResult:
    """Score ``policy`` on ``runtime``'s task and the documented episode seeds; nothing is written.

    Memory is flat in the episode count but for one small :class:`EpisodeRecord` (~0.5 kB) an episode:
    only the ``n_envs`` episodes in flight keep their steps, and at most ``MAX_EVAL_EPISODES`` (100,000)
    episodes are run (more is refused, as the CLI refuses it).
    """
    check_run_value("n_eval_episodes", eval_config.n_episodes)
    t0 = time.perf_counter()
    episodes = run_episodes(runtime, policy, eval_config.episode_seeds, n_envs=eval_config.n_envs,
                            progress=progress)
    return EvalResult(
        created_at=now_iso(),
        algo=algo,
        env_id=runtime.env_id,
        checkpoint=checkpoint,
        device=device,
        n_episodes=len(episodes),
        seeds=list(eval_config.episode_seeds),
        deterministic=eval_config.deterministic,
        aggregate=aggregate_episodes(episodes),
        per_episode=episodes,
        versions=collect_versions(),
        policy=policy.name,
        eval_seconds=round(time.perf_counter() - t0, 3),
    )


def evaluate(paths: RunPaths, eval_config: EvalConfig, runtime: Runtime, *, device: str = "cpu",
             progress: bool = True) -> EvalResult:
    """Load the checkpoint at ``paths``, evaluate it on ``runtime``'s env and write the eval JSON atomically."""
    checkpoint = Checkpoint.read(paths)  # read once: loaded, and its digest recorded (report refuses a stale pair)
    model = load_model(paths, runtime, device=device, checkpoint=checkpoint)
    result = evaluate_policy(runtime, SB3Policy(model, eval_config.deterministic), eval_config,
                             checkpoint=str(paths.checkpoint), device=str(model.device), progress=progress,
                             algo=paths.names.algo)
    result.checkpoint_sha256 = hashlib.sha256(checkpoint.data).hexdigest()
    result.checkpoint_created_at = checkpoint.meta.created_at if checkpoint.meta is not None else ""
    result.to_json(paths.eval_json)
    return result


def baseline_results(runtime: Runtime, eval_config: EvalConfig) -> list[EvalResult]:
    """Random and zero-action policies on the same episode seeds (the report's reference rows)."""
    probe = envs.make_env(runtime)
    shape = probe.action_space.shape
    assert shape is not None, "a Box action space"  # for mypy: Space.shape is Optional
    act_dim = int(shape[0])
    probe.close()
    return [evaluate_policy(runtime, p, eval_config) for p in (RandomPolicy(act_dim), ZeroPolicy(act_dim))]
