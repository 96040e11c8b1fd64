"""Plain SB3 SAC vs fetchrl's FastSAC on chapter 3's set-up, side by side in one invocation (issue 16).

Arms (same hyper-parameters, same seed; chapter 3: ``SAC("MultiInputPolicy")``, FetchReachDense-v4,
8 envs, batch 256, buffer 1M, lr 3e-4, gamma 0.99, tau 0.005, ent_coef "auto", one gradient step per
vector step, SB3's 256-256 networks):

- ``plain``: what the chapter does — ``sb3.make_vec_env("FetchReachDense-v4", n_envs=8)`` (DummyVecEnv
  of Monitor(gym.make)), ``SAC("MultiInputPolicy", ...)``, torch's default thread count.
- ``plain-1t`` (``--one-thread-plain``): the same with one torch thread, to separate the thread
  count's share of the speed-up from the code's.
- ``fetchrl``: the fast path of ``fetchrl.runtime.Runtime`` — the lean FetchReach step, the process
  VecEnv, :class:`fetchrl.algos.fastsac.FastSAC` (bit-equal to SB3's SAC: tests/test_fastsac.py) and
  ``fetchrl.runtime.FAST_TORCH_THREADS`` torch threads; its gradient steps made while the envs step in
  the worker where that changes nothing (``FastSAC._batches_ahead``).
- ``fetchrl-lockstep`` (``--lockstep-arm``): the same with env steps and gradient steps in turn (the
  envs split between the two processes), to measure what the overlap gains.

Every measurement runs in its own child process (clean peak RSS, clean torch state); arms alternate so
all see the same machine load. ``learning_starts`` is lowered to ``--learning-starts`` for both arms
(the update phase is what dominates a run; the warm-up phase, random actions, is timed separately).
Since FastSAC's numbers are SB3's, both arms need the same env steps to reach the chapter's
criteria: the time-to-criteria ratio is the steps/s ratio of the update phase.
The machine may be shared: read the *ratios*, and repeat (``--repeats``). torch's default thread
count (two here) makes the ``plain`` arm swing with the load of the other processes (OpenMP threads
spin-waiting for a core: 33-386 steps/s in one invocation); ``plain-1t`` isolates what the code gains.

    python bench/bench_sac.py                  # ~2-4 minutes
    python bench/bench_sac.py --one-thread-plain --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ENV_ID = "FetchReachDense-v4"
N_ENVS = 8
#: Chapter 3's default run: 500k env steps, the first 10k with random actions (fetchrl.chapters.ch03).
CHAPTER_STEPS, CHAPTER_LEARNING_STARTS = 500_000, 10_000
#: Chapter 3's SAC hyper-parameters (``learning_starts`` is set per invocation, the same for all arms).
SAC_KWARGS: dict[str, Any] = dict(batch_size=256, buffer_size=1_000_000, learning_rate=3e-4, gamma=0.99,
                                  tau=0.005, ent_coef="auto", train_freq=1, gradient_steps=1)


# ============================================================================ child process
def _model(arm: str, seed: int, learning_starts: int) -> Any:
    """The arm's SAC model on its VecEnv (torch threads set as the arm prescribes)."""
    import torch
    from stable_baselines3 import SAC

    from fetchrl.tasks import envs

    envs.register_envs()
    kwargs = dict(SAC_KWARGS, learning_starts=learning_starts, seed=seed, device="cpu", verbose=0)
    if arm in ("fetchrl", "fetchrl-lockstep"):
        from fetchrl.algos.fastsac import FastSAC
        from fetchrl.runtime import Runtime
        from fetchrl.vecenv import factory

        runtime = Runtime.decide(ENV_ID)
        if runtime.torch_threads is not None:
            torch.set_num_threads(runtime.torch_threads)
        overlap = arm == "fetchrl"
        model = FastSAC("MultiInputPolicy", factory.make_vec_env(runtime, N_ENVS, seed=seed, all_in_worker=overlap),
                        **kwargs)
        model.overlaps_env_steps = overlap
        return model
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    if arm == "plain-1t":
        torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vec = make_vec_env(ENV_ID, n_envs=N_ENVS, seed=seed, vec_env_cls=DummyVecEnv)
    return SAC("MultiInputPolicy", vec, **kwargs)


def _buffer_mb_at_capacity(buf: Any) -> float:
    """Bytes the replay buffer's arrays take once full (np.zeros commits pages as rows are written)."""
    import numpy as np

    arrays = [v for v in vars(buf).values() if isinstance(v, np.ndarray)]
    arrays += [a for v in vars(buf).values() if isinstance(v, dict) for a in v.values() if isinstance(a, np.ndarray)]
    return sum(a.nbytes for a in arrays) / 1e6


def job(arm: str, seed: int, learning_starts: int, warm: int, timed: int) -> dict[str, Any]:
    """Warm-up phase (random actions) timed, ``warm`` update steps untimed, ``timed`` update steps timed."""
    import torch

    model = _model(arm, seed, learning_starts)
    t0 = time.perf_counter()
    model.learn(learning_starts)
    t1 = time.perf_counter()
    model.learn(warm, reset_num_timesteps=False)
    t2 = time.perf_counter()
    model.learn(timed, reset_num_timesteps=False)
    t3 = time.perf_counter()
    result = {"arm": arm, "threads": torch.get_num_threads(),
              "warmup_sps": learning_starts / (t1 - t0), "update_sps": timed / (t3 - t2),
              "updates": model._n_updates,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "buffer_mb_1m": _buffer_mb_at_capacity(model.replay_buffer),
              **update_alone(model, timed // N_ENVS)}
    model.env.close()
    return result


def update_alone(model: Any, n: int) -> dict[str, float]:
    """The gradient step on its own, after the timed phase: ``model.train(1, batch_size)`` ``n`` times
    without env steps between them -> ms per gradient step; its floating-point work counted by torch's
    ``FlopCounterMode`` (matrix products forward and backward, as dispatched; element-wise work and Adam
    are left out, so GFLOP/s is a lower bound of what the CPU does); and the share of a vector step's
    wall time (at ``update_sps``) the gradient step takes, i.e. what overlapping env stepping with it
    could remove at most."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.train(gradient_steps=1, batch_size=model.batch_size)
    flops = counter.get_total_flops()
    t0 = time.perf_counter()
    for _ in range(n):
        model.train(gradient_steps=1, batch_size=model.batch_size)
    ms = (time.perf_counter() - t0) / n * 1000
    return {"update_ms": ms, "update_mflop": flops / 1e6, "update_gflops": flops / ms / 1e6}


# ============================================================================ parent
def run_child(**kwargs: Any) -> dict[str, Any]:
    return run_child_of(Path(__file__), **kwargs)


def run_child_of(script: Path, **kwargs: Any) -> dict[str, Any]:
    """Run ``script --child JSON`` (one measurement in a fresh process) and return the JSON it prints last."""
    out = subprocess.run([sys.executable, str(script.resolve()), "--child", json.dumps(kwargs)],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"bench child failed ({kwargs}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def print_update_rows(results: dict[str, list[dict[str, Any]]], width: int) -> None:
    """The rows of :func:`update_alone`'s measurements, one column per arm, then each arm's work count."""
    arms = list(results)
    share = {a: [r["update_ms"] * r["update_sps"] / N_ENVS / 10 for r in results[a]] for a in arms}
    for label, values in (("gradient step alone, ms", {a: [r["update_ms"] for r in results[a]] for a in arms}),
                          ("  its matmul GFLOP/s", {a: [r["update_gflops"] for r in results[a]] for a in arms}),
                          ("  % of a vector step", share)):
        print(f"{label:{width}s}" + "".join(f"{_fmt(values[a]):>24s}" for a in arms))
    print("matrix products per gradient step (torch FlopCounterMode): "
          + ", ".join(f"{a} {results[a][0]['update_mflop']:.0f} MFLOP" for a in arms))


def _chapter_minutes(r: dict[str, Any]) -> float:
    """The chapter's default run (500k steps, 10k random) at this measurement's two rates. FastSAC's
    numbers are SB3's, so it reaches the criteria at the same env step: this ratio is the time-to-criteria
    ratio at any step count (the update phase dominates it)."""
    return (CHAPTER_LEARNING_STARTS / r["warmup_sps"]
            + (CHAPTER_STEPS - CHAPTER_LEARNING_STARTS) / r["update_sps"]) / 60


def _fmt(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:8.1f}" + (f" ({min(values):.0f}-{max(values):.0f})" if len(values) > 1 else "")


def print_table(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    import os

    print(f"\nCPU: {cpu_name()} ({os.cpu_count()} logical), load average at end {os.getloadavg()[0]:.1f}")
    print(f"chapter 3 SAC, {N_ENVS} envs, learning_starts {args.learning_starts} (both arms), "
          f"{args.timed} timed steps after {args.warm} warm update steps, {args.repeats} repeat(s); median (min-max)")
    arms = list(results)
    header = f"{'':28s}" + "".join(f"{a + ' (' + str(results[a][0]['threads']) + ' thr)':>24s}" for a in arms)
    print(header)
    for key, label in (("warmup_sps", "steps/s before updates"), ("update_sps", "steps/s with updates"),
                       ("peak_rss_mb", "peak RSS MB (main process)"), ("buffer_mb_1m", "replay buffer MB at 1M")):
        print(f"{label:28s}" + "".join(f"{_fmt([r[key] for r in results[a]]):>24s}" for a in arms))
    print_update_rows(results, 28)
    minutes = {a: [_chapter_minutes(r) for r in results[a]] for a in arms}
    print(f"{'500k-step run, projected min':28s}" + "".join(f"{_fmt(minutes[a]):>24s}" for a in arms))
    plain = statistics.median(r["update_sps"] for r in results["plain"])
    for arm in arms[1:]:
        fast = statistics.median(r["update_sps"] for r in results[arm])
        print(f"ratio {arm} / plain, steps/s with updates: {fast / plain:.2f}x; "
              f"projected time of the chapter's run: {statistics.median(minutes['plain']) / statistics.median(minutes[arm]):.2f}x")
    if "fetchrl" in results and "plain-1t" in results:
        one = statistics.median(r["update_sps"] for r in results["plain-1t"])
        fast = statistics.median(r["update_sps"] for r in results["fetchrl"])
        print(f"ratio fetchrl / plain-1t (code alone, same thread count): {fast / one:.2f}x")
    if "fetchrl-lockstep" in results:
        lock = statistics.median(r["update_sps"] for r in results["fetchrl-lockstep"])
        fast = statistics.median(r["update_sps"] for r in results["fetchrl"])
        print(f"ratio fetchrl / fetchrl-lockstep (updates made while the envs step): {fast / lock:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2, help="measurements per arm (alternating)")
    parser.add_argument("--learning-starts", type=int, default=2_000, help="env steps of random actions")
    parser.add_argument("--warm", type=int, default=160, help="untimed env steps with updates")
    parser.add_argument("--timed", type=int, default=800, help="timed env steps with updates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one-thread-plain", action="store_true", help="add the plain-1t arm")
    parser.add_argument("--lockstep-arm", action="store_true", help="add the fetchrl-lockstep arm")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(job(**json.loads(args.child))))
        return 0
    if min(args.repeats, args.learning_starts, args.warm, args.timed) < 1 or args.learning_starts < 256:
        print("bench_sac: --repeats, --warm, --timed must be >= 1 and --learning-starts >= 256 (one batch)",
              file=sys.stderr)
        return 2
    arms = (["plain", "fetchrl"] + (["plain-1t"] if args.one_thread_plain else [])
            + (["fetchrl-lockstep"] if args.lockstep_arm else []))
    results: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for rep in range(args.repeats):
        for arm in arms if rep % 2 == 0 else arms[::-1]:
            r = run_child(arm=arm, seed=args.seed, learning_starts=args.learning_starts, warm=args.warm,
                          timed=args.timed)
            results[arm].append(r)
            print(f"  {arm:9s} rep {rep}: {r['update_sps']:.1f} steps/s with updates, "
                  f"{r['warmup_sps']:.0f} before", flush=True)
    print_table(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
