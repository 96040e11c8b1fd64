"""Stock FetchPush-v4 vs fetchrl's FastFetchPushEnv: env steps per second, side by side in one invocation.

Arms (same random float32 actions, a reset every 50 steps, resets included in the time):
- ``stock``: ``gym.make("FetchPush-v4")`` — Gymnasium-Robotics' env behind gym.make's wrappers;
- ``fast``: ``fetchrl.tasks.fast_envs.make("FetchPush-v4")`` — the same wrappers around the lean env;
- ``stock-raw`` / ``fast-raw`` (``--raw``): the unwrapped envs, as a process VecEnv steps them.

Rounds alternate between the arms so both see the same machine load; the machine is shared: read the
ratio of medians, and repeat.

    python bench/bench_push_env.py                  # ~30 s
    python bench/bench_push_env.py --rounds 9 --raw
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from fetchrl.tasks import envs, fetchpush  # noqa: E402
from fetchrl.tasks import fast as fast_envs

EPISODE_STEPS = 50


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(arm: str, env_id: str) -> gym.Env:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = fast_envs.make(env_id) if arm.startswith("fast") else gym.make(env_id)
    return env.unwrapped if arm.endswith("-raw") else env


def steps_per_second(env: gym.Env, actions: np.ndarray, seed: int) -> float:
    """Step ``env`` through ``actions`` ([n, 4] float32), resetting every 50 steps; steps per second."""
    start = time.perf_counter()
    for i, action in enumerate(actions):
        if i % EPISODE_STEPS == 0:
            env.reset(seed=seed + i)
        env.step(action)
    return len(actions) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-id", default="FetchPush-v4", choices=fetchpush.FAST_ENV_IDS)
    parser.add_argument("--steps", type=int, default=1500, help="env steps per arm and round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median reported)")
    parser.add_argument("--raw", action="store_true", help="also time the unwrapped envs")
    args = parser.parse_args()
    if args.steps < EPISODE_STEPS or args.rounds < 1:
        parser.error(f"--steps must be >= {EPISODE_STEPS} and --rounds >= 1")

    envs.register_envs()
    arms = ["stock", "fast"] + (["stock-raw", "fast-raw"] if args.raw else [])
    built = {arm: build(arm, args.env_id) for arm in arms}
    actions = np.random.default_rng(0).uniform(-1, 1, size=(args.steps, 4)).astype(np.float32)
    for env in built.values():  # warm-up: first-call costs (env checker, caches) out of the timing
        steps_per_second(env, actions[:EPISODE_STEPS], seed=0)
    results: dict[str, list[float]] = {arm: [] for arm in arms}
    for r in range(args.rounds):
        order: Callable[[list[str]], list[str]] = (lambda a: a) if r % 2 == 0 else (lambda a: a[::-1])
        for arm in order(arms):
            results[arm].append(steps_per_second(built[arm], actions, seed=1000 * r))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bench_push_env: {args.env_id}, {args.steps} steps x {args.rounds} rounds per arm, "
          f"CPU {cpu_name()} ({os.cpu_count()} CPUs), load avg {load:.1f}")
    print(f"{'arm':<10} {'median steps/s':>15} {'min':>8} {'max':>8}")
    medians = {arm: statistics.median(v) for arm, v in results.items()}
    for arm, values in results.items():
        print(f"{arm:<10} {medians[arm]:>15.0f} {min(values):>8.0f} {max(values):>8.0f}")
    print(f"ratio fast/stock (gym.make): {medians['fast'] / medians['stock']:.2f}x")
    if args.raw:
        print(f"ratio fast/stock (unwrapped): {medians['fast-raw'] / medians['stock-raw']:.2f}x")


if __name__ == "__main__":
    main()
