"""Plain SB3 SAC + HerReplayBuffer vs fetchrl's fast path on chapter 4's set-up, side by side (issue 17).

Arms (same hyper-parameters, same seed; chapter 4: ``SAC("MultiInputPolicy")`` with
``HerReplayBuffer(n_sampled_goal=4, goal_selection_strategy="future")``, 8 envs, batch 256, buffer 1M,
lr 3e-4, gamma 0.95, tau 0.005, ent_coef "auto" on Reach and 0.05 on Push, one gradient step per
vector step, SB3's 256-256 networks):

- ``plain``: what the chapter does — ``sb3.make_vec_env(env_id, n_envs=8)`` (DummyVecEnv of
  Monitor(gym.make)), ``SAC(..., replay_buffer_class=HerReplayBuffer)``, torch's default thread count.
- ``fetchrl``: the fast path of ``fetchrl.runtime.Runtime`` — the lean Fetch env, the process VecEnv,
  :class:`fetchrl.algos.fastsac.FastSAC` with :class:`fetchrl.algos.fasther.FlatHerReplayBuffer`
  (bit-equal to SB3's SAC + HerReplayBuffer: tests/test_fasther.py), relabeled rewards computed in
  this process (``fetchrl.pipeline.setup.attach_goal_reward``) and ``FAST_TORCH_THREADS`` torch threads.

Every measurement runs in its own child process (clean peak RSS, clean torch state); arms alternate so
both see the same machine load; the table gives the median (min-max) of the repeats. The chapter's
``learning_starts`` (1,000) is kept: HER cannot sample before the first episode ends (50 steps x 8
envs = 400 transitions), and the warm-up phase is timed separately anyway. Since the fast path's
numbers are SB3's, both arms need the same env steps to reach the chapter's criteria: the
time-to-criteria ratio is the steps/s ratio of the update phase.

    python bench/bench_her.py                       # Reach and Push, 2 repeats: ~5 minutes
    python bench/bench_her.py --env FetchPush-v4 --repeats 3 --json her.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sac import _buffer_mb_at_capacity, _fmt, cpu_name, print_update_rows, run_child_of, update_alone  # noqa: E402

ENVS = ("FetchReach-v4", "FetchPush-v4")
N_ENVS = 8
#: Chapter 4's default runs (fetchrl.chapters.ch04): env steps, the first 1,000 with random actions.
CHAPTER_STEPS = {"FetchReach-v4": 500_000, "FetchPush-v4": 2_000_000}
CHAPTER_LEARNING_STARTS = 1_000
#: Chapter 4's SAC + HER hyper-parameters (``learning_starts`` per invocation, ``ent_coef`` per task).
SAC_KWARGS: dict[str, Any] = dict(batch_size=256, buffer_size=1_000_000, learning_rate=3e-4, gamma=0.95,
                                  tau=0.005, train_freq=1, gradient_steps=1)
HER_KWARGS: dict[str, Any] = dict(n_sampled_goal=4, goal_selection_strategy="future")
ENT_COEF: dict[str, Any] = {"FetchReach-v4": "auto", "FetchPush-v4": 0.05}


# ============================================================================ child process
def _model(arm: str, env_id: str, seed: int, learning_starts: int) -> Any:
    """The arm's SAC + HER model on its VecEnv (torch threads set as the arm prescribes)."""
    import torch
    from stable_baselines3 import SAC, HerReplayBuffer

    from fetchrl.tasks import envs

    envs.register_envs()
    kwargs = dict(SAC_KWARGS, ent_coef=ENT_COEF[env_id], learning_starts=learning_starts, seed=seed,
                  device="cpu", verbose=0, replay_buffer_class=HerReplayBuffer,
                  replay_buffer_kwargs=dict(HER_KWARGS))
    if arm in ("fetchrl", "fetchrl-lockstep"):
        from fetchrl.algos.fastsac import FastSAC
        from fetchrl.pipeline.setup import attach_goal_reward
        from fetchrl.runtime import Runtime
        from fetchrl.vecenv import factory

        runtime = Runtime.decide(env_id)
        if runtime.torch_threads is not None:
            torch.set_num_threads(runtime.torch_threads)
        overlap = arm == "fetchrl"  # fetchrl-lockstep: env steps and gradient steps in turn, envs split
        model = FastSAC("MultiInputPolicy", factory.make_vec_env(runtime, N_ENVS, seed=seed, all_in_worker=overlap),
                        **kwargs)
        model.overlaps_env_steps = overlap
        attach_goal_reward(model, runtime)
        return model
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vec = make_vec_env(env_id, n_envs=N_ENVS, seed=seed, vec_env_cls=DummyVecEnv)
    return SAC("MultiInputPolicy", vec, **kwargs)


def job(arm: str, env_id: str, seed: int, learning_starts: int, warm: int, timed: int) -> dict[str, Any]:
    """Warm-up phase (random actions) timed, ``warm`` update steps untimed, ``timed`` update steps timed."""
    import torch

    model = _model(arm, env_id, seed, learning_starts)
    t0 = time.perf_counter()
    model.learn(learning_starts)
    t1 = time.perf_counter()
    model.learn(warm, reset_num_timesteps=False)
    t2 = time.perf_counter()
    model.learn(timed, reset_num_timesteps=False)
    t3 = time.perf_counter()
    result = {"arm": arm, "env_id": env_id, "threads": torch.get_num_threads(),
              "buffer": type(model.replay_buffer).__name__,
              "warmup_sps": learning_starts / (t1 - t0), "update_sps": timed / (t3 - t2),
              "updates": model._n_updates,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "buffer_mb_1m": _buffer_mb_at_capacity(model.replay_buffer),
              **update_alone(model, timed // N_ENVS)}
    model.env.close()
    return result


# ============================================================================ parent
def run_child(**kwargs: Any) -> dict[str, Any]:
    return run_child_of(Path(__file__), **kwargs)


def _chapter_hours(r: dict[str, Any]) -> float:
    """The chapter's default run of this task (Reach 500k, Push 2M steps, 1,000 random) at the two rates."""
    steps = CHAPTER_STEPS[r["env_id"]]
    return (CHAPTER_LEARNING_STARTS / r["warmup_sps"] + (steps - CHAPTER_LEARNING_STARTS) / r["update_sps"]) / 3600


def print_table(results: dict[str, dict[str, list[dict[str, Any]]]], args: argparse.Namespace) -> None:
    print(f"\nCPU: {cpu_name()} ({os.cpu_count()} logical), load average at end {os.getloadavg()[0]:.1f}")
    print(f"chapter 4 SAC + HER (future, k=4), {N_ENVS} envs, learning_starts {args.learning_starts} (both arms), "
          f"{args.timed} timed steps after {args.warm} warm update steps, {args.repeats} repeat(s); median (min-max)")
    for env_id, by_arm in results.items():
        arms = list(by_arm)
        print(f"\n{env_id} (ent_coef {ENT_COEF[env_id]})")
        print(f"{'':30s}" + "".join(f"{a + ' (' + str(by_arm[a][0]['threads']) + ' thr)':>24s}" for a in arms))
        for key, label in (("warmup_sps", "steps/s before updates"), ("update_sps", "steps/s with updates"),
                           ("peak_rss_mb", "peak RSS MB (main process)"),
                           ("buffer_mb_1m", "replay buffer MB at 1M")):
            print(f"{label:30s}" + "".join(f"{_fmt([r[key] for r in by_arm[a]]):>24s}" for a in arms))
        print_update_rows(by_arm, 30)
        hours = {a: [_chapter_hours(r) for r in by_arm[a]] for a in arms}
        label = f"{CHAPTER_STEPS[env_id] // 1000}k-step run, projected h"
        print(f"{label:30s}" + "".join(f"{statistics.median(hours[a]):>24.2f}" for a in arms))
        plain = statistics.median(r["update_sps"] for r in by_arm["plain"])
        fast = statistics.median(r["update_sps"] for r in by_arm["fetchrl"])
        print(f"ratio fetchrl / plain, steps/s with updates: {fast / plain:.2f}x")
        if "fetchrl-lockstep" in by_arm:
            lock = statistics.median(r["update_sps"] for r in by_arm["fetchrl-lockstep"])
            print(f"ratio fetchrl / fetchrl-lockstep (updates made while the envs step): {fast / lock:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", action="append", choices=ENVS, help="task (repeatable; default: both)")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per arm and task (alternating)")
    parser.add_argument("--learning-starts", type=int, default=CHAPTER_LEARNING_STARTS,
                        help="env steps of random actions")
    parser.add_argument("--warm", type=int, default=160, help="untimed env steps with updates")
    parser.add_argument("--timed", type=int, default=800, help="timed env steps with updates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write every measurement to this JSON file")
    parser.add_argument("--lockstep-arm", action="store_true",
                        help="add the fetchrl-lockstep arm (env steps and gradient steps in turn)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(job(**json.loads(args.child))))
        return 0
    if min(args.repeats, args.warm, args.timed) < 1 or args.learning_starts < 50 * N_ENVS:
        print(f"bench_her: --repeats, --warm, --timed must be >= 1 and --learning-starts >= {50 * N_ENVS} "
              "(HER samples from finished episodes only)", file=sys.stderr)
        return 2
    env_ids = args.env or list(ENVS)
    arms = ["plain", "fetchrl"] + (["fetchrl-lockstep"] if args.lockstep_arm else [])
    results: dict[str, dict[str, list[dict[str, Any]]]] = {e: {a: [] for a in arms} for e in env_ids}
    for env_id in env_ids:
        for rep in range(args.repeats):
            for arm in arms if rep % 2 == 0 else arms[::-1]:
                r = run_child(arm=arm, env_id=env_id, seed=args.seed, learning_starts=args.learning_starts,
                              warm=args.warm, timed=args.timed)
                results[env_id][arm].append(r)
                print(f"  {env_id} {arm:8s} rep {rep}: {r['update_sps']:.1f} steps/s with updates, "
                      f"{r['warmup_sps']:.0f} before ({r['buffer']})", flush=True)
    print_table(results, args)
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_name(), "load_average": os.getloadavg(), "args": {
            k: str(v) for k, v in vars(args).items() if k != "child"}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
