"""Training speed per number of envs (chapter 3's ``throughput``): where does scaling stop being linear?

For each ``n_envs``, one short timed training in its own child process (a fresh interpreter: no
thread pool, allocator or MuJoCo state carried from one measurement to the next): a model of the
chapter's algorithm with the chapter's hyper-parameters, except ``learning_starts`` (the warm-up
of random actions, small for a timing run) and ``buffer_size`` (just large enough never to wrap:
the cost of a step does not depend on it). The clock starts at the first step past the warm-up
and stops at the end, so the number is steps/s of *learning*: env steps plus one gradient step per
vector step (``train_freq=1``) — which is why more envs are faster per env step: 8 envs do one
gradient step per 8 transitions, 1 env one per transition.

The answer: speed-up = steps/s over the smallest ``n_envs``' steps/s, efficiency = speed-up over the
ideal ratio of env counts; scaling "stops being linear" at the first ``n_envs`` whose efficiency
falls below :data:`LINEAR_BELOW`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure
from stable_baselines3.common.callbacks import BaseCallback

import fetchrl
from fetchrl.algos.sac import SACConfig
from fetchrl.artifacts import ThroughputPoint, ThroughputResult, atomic_path, now_iso
from fetchrl.config import TrainConfig
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.setup import new_model, runtime_for, torch_threads, training_env

#: Efficiency (speed-up over the ideal) below which scaling is called no longer linear.
LINEAR_BELOW = 0.8
#: A timing child that takes longer than this is stuck (the default run takes seconds per point).
CHILD_TIMEOUT_S = 1800


class _Clock(BaseCallback):
    """Notes the time and step count at the first step past ``start`` and at the end of training."""

    def __init__(self, start: int) -> None:
        super().__init__()
        self.start = start
        self.t0: float | None = None
        self.step0 = 0
        self.t1 = 0.0

    def _on_step(self) -> bool:
        if self.t0 is None and self.num_timesteps >= self.start:
            self.t0, self.step0 = time.perf_counter(), self.num_timesteps
        return True

    def _on_training_end(self) -> None:
        self.t1 = time.perf_counter()


def timing_config(config: TrainConfig, n_envs: int, steps: int, learning_starts: int) -> TrainConfig:
    """``config`` with ``n_envs`` envs, ``learning_starts + steps`` total steps and a buffer that never wraps."""
    if not isinstance(config.algo, SACConfig):
        raise FetchRLError("throughput times an off-policy (SAC) chapter's training")
    total = learning_starts + steps
    buffer = max(config.algo.batch_size, total + n_envs)
    return config.replace(n_envs=n_envs, total_steps=total,
                          algo=dataclasses.replace(config.algo, learning_starts=learning_starts,
                                                      buffer_size=buffer))


def time_one(config: TrainConfig) -> tuple[int, float]:
    """Train ``config`` in this process; (env steps after the warm-up, their seconds)."""
    algo = config.algo
    assert isinstance(algo, SACConfig)
    runtime = runtime_for(config)
    env = training_env(config, runtime)
    try:
        with torch_threads(runtime):
            model = new_model(config, runtime, env)
            clock = _Clock(algo.learning_starts + 1)
            model.learn(config.total_steps, callback=clock, progress_bar=False)
    finally:
        env.close()
    if clock.t0 is None:
        raise FetchRLError("throughput: training ended before the warm-up did")
    return model.num_timesteps - clock.step0, clock.t1 - clock.t0


def _child(config: TrainConfig) -> tuple[int, float]:
    """:func:`time_one` in a fresh interpreter; FetchRLError with the child's last stderr line on failure."""
    src = str(Path(fetchrl.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    payload = json.dumps({"env_id": config.env_id, "seed": config.seed, "n_envs": config.n_envs,
                          "total_steps": config.total_steps, "device": config.device, "fast_env": config.fast_env,
                          "algo": config.algo.hyperparameters})
    proc = subprocess.run([sys.executable, "-m", "fetchrl.analysis.throughput", payload], env=env,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FetchRLError(f"throughput: the timing run with --n-envs {config.n_envs} failed: {last}")
    steps, seconds = json.loads(proc.stdout.strip().splitlines()[-1])
    return int(steps), float(seconds)


def answer(points: Sequence[ThroughputPoint], linear_below: float = LINEAR_BELOW) -> str:
    """Where scaling stops being linear, from the points (sorted by n_envs)."""
    base = points[0]
    for p in points[1:]:
        if p.efficiency < linear_below:
            return (f"scaling stops being linear at n_envs={p.n_envs}: {p.steps_per_second:.0f} steps/s is "
                    f"{p.speedup:.2f}x n_envs={base.n_envs}'s {base.steps_per_second:.0f}, "
                    f"{p.efficiency:.0%} of the ideal {p.n_envs / base.n_envs:g}x (below {linear_below:.0%})")
    last = points[-1]
    return (f"scaling stays near-linear up to the largest n_envs tried ({last.n_envs}: {last.speedup:.2f}x, "
            f"{last.efficiency:.0%} of the ideal); try more envs")


def measure(config: TrainConfig, n_envs_list: Sequence[int], steps: int, learning_starts: int,
            out_json: Path, out_png: Path, *, progress: bool = True) -> ThroughputResult:
    """Time every ``n_envs`` (each in its own process), write the JSON and the plot; return the result."""
    timed: list[tuple[int, int, float]] = []
    if progress:
        print(f"timing {steps:,} env steps per n_envs after {learning_starts:,} warm-up steps of random actions "
              f"(not timed; small for a timing run, the chapter's is {config.algo.hyperparameters['learning_starts']:,})",
              flush=True)
    for n in sorted(set(n_envs_list)):
        one = timing_config(config, n, steps, learning_starts)
        done, seconds = _child(one)
        timed.append((n, done, seconds))
        if progress:
            print(f"n_envs={n}: {done:,} steps in {seconds:.1f} s = {done / seconds:.0f} steps/s", flush=True)
    n0, done0, s0 = timed[0]
    sps0 = done0 / s0
    points = [ThroughputPoint(n_envs=n, steps=done, seconds=sec, steps_per_second=done / sec,
                              speedup=(done / sec) / sps0, efficiency=(done / sec) / sps0 / (n / n0))
              for n, done, sec in timed]
    algo = timing_config(config, n0, steps, learning_starts).algo
    result = ThroughputResult(created_at=now_iso(), algo=config.algorithm.name, env_id=config.env_id,
                              learning_starts=learning_starts, timed_steps=steps, linear_below=LINEAR_BELOW,
                              points=points, answer=answer(points), hyperparameters=dict(algo.hyperparameters))
    result.to_json(out_json)
    plot_throughput(result, out_png)
    return result


def plot_throughput(result: ThroughputResult, out_png: Path) -> Path:
    """Left: steps/s against n_envs (log-log) with the linear ideal; right: efficiency with the threshold."""
    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    n = [p.n_envs for p in result.points]
    sps = [p.steps_per_second for p in result.points]
    left.plot(n, sps, "o-", label="measured")
    left.plot(n, [sps[0] * k / n[0] for k in n], "--", color="grey", label="linear")
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("n_envs")
    left.set_ylabel(f"env steps/s (after {result.learning_starts} warm-up steps)")
    left.legend()
    right.plot(n, [p.efficiency for p in result.points], "o-")
    right.axhline(result.linear_below, color="red", linestyle="--", label=f"{result.linear_below:.0%} of linear")
    right.set_xscale("log", base=2)
    right.set_xlabel("n_envs")
    right.set_ylabel("speed-up / ideal")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result.algo.upper()} {result.env_id}: {result.timed_steps:,} timed steps per point", fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return out_png


def _main(payload: str) -> None:
    """The child: time one config given as JSON; print ``[steps, seconds]`` as the last stdout line."""
    d = json.loads(payload)
    config = TrainConfig(env_id=d["env_id"], seed=d["seed"], total_steps=d["total_steps"], n_envs=d["n_envs"],
                         device=d["device"], fast_env=d["fast_env"], algo=SACConfig(**d["algo"]))
    print(json.dumps(list(time_one(config))))


if __name__ == "__main__":
    _main(sys.argv[1])
