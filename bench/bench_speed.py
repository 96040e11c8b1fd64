"""Plain SB3 vs fetchrl on the chapter's run, side by side in one invocation (issue 6).

Arms (same algorithm, same hyper-parameters, same seeds):
- ``plain``: what the chapter does — ``sb3.make_vec_env("FetchReachDense-v4", n_envs=8)`` (DummyVecEnv of
  Monitor(gym.make)), ``PPO("MultiInputPolicy", ...)``, torch's default thread count.
- ``fetchrl``: ``fetchrl.pipeline.train.train`` with ``TrainConfig(fast_env=True)`` — the fast path of
  ``fetchrl.runtime.Runtime``: the lean FetchReach step, the process-parallel VecEnv, FastPPO and
  ``fetchrl.runtime.FAST_TORCH_THREADS`` torch threads.

Every measurement runs in its own child process (clean peak RSS, clean torch state); arms alternate so
both see the same machine load. The machine is shared: read the *ratios*, and repeat (``--repeats``).

    python bench/bench_speed.py --quick    # ~1 minute: steps/s, eval seconds, peak RSS
    python bench/bench_speed.py            # + time/steps to the chapter's criteria and learning curves, 3 seeds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ENV_ID = "FetchReachDense-v4"
ARMS = ("plain", "fetchrl")
EVAL_EVERY = 16_384
EVAL_EPISODES_CRITERIA = 50
EVAL_EPISODES_TIMED = 100


# ============================================================================ child-process jobs
class _ChildMemory:
    """Peak private memory (KB) of this process's live child processes — fetchrl's env worker —
    sampled once a second by a daemon thread (reading ``/proc``; Linux only, 0 elsewhere).

    The worker is a fork: its RSS counts the pages it still shares with this process, so only its
    private pages are memory it adds (``Private_Clean + Private_Dirty`` of ``smaps_rollup``).
    """

    def __init__(self, every: float = 1.0) -> None:
        import threading

        self.peak_kb = 0
        self._every = every
        threading.Thread(target=self._run, name="bench-child-memory", daemon=True).start()

    def _run(self) -> None:
        while True:
            self.sample()
            time.sleep(self._every)

    def sample(self) -> None:
        total = 0
        for pid in self._children():
            try:
                with open(f"/proc/{pid}/smaps_rollup") as f:
                    total += sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean", "Private_Dirty")))
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
        self.peak_kb = max(self.peak_kb, total)

    @staticmethod
    def _children() -> list[int]:
        pids: list[int] = []
        try:
            for task in os.listdir("/proc/self/task"):
                with open(f"/proc/self/task/{task}/children") as f:
                    pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
        return pids


_CHILD_MEMORY: _ChildMemory | None = None


def _peak_rss_mb() -> float:
    """This process's peak RSS plus the peak private memory of its children (the env worker)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = _CHILD_MEMORY.peak_kb if _CHILD_MEMORY is not None else 0
    return (own + children) / 1024.0


def _setup(arm: str, torch_threads: int, plain_same_threads: bool = False) -> None:
    """``plain_same_threads``: give plain SB3 fetchrl's torch thread count too (criteria runs)."""
    global _CHILD_MEMORY
    _CHILD_MEMORY = _ChildMemory()
    warnings.simplefilter("ignore")
    import torch

    from fetchrl.tasks import envs

    envs.register_envs()
    if arm == "fetchrl" or plain_same_threads:
        torch.set_num_threads(torch_threads)


def _config(seed: int, total_steps: int) -> Any:
    from fetchrl.config import TrainConfig

    return TrainConfig(seed=seed, total_steps=total_steps)


def _plain_model(seed: int, total_steps: int) -> Any:
    """The chapter's plain SB3 set-up, verbatim."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    cfg = _config(seed, total_steps)
    env = make_vec_env(ENV_ID, n_envs=cfg.n_envs, seed=seed, vec_env_cls=DummyVecEnv)
    return PPO(cfg.policy, env, seed=seed, device="cpu", verbose=0, **cfg.ppo_kwargs())


def _fetchrl_model(seed: int, total_steps: int) -> Any:
    """What fetchrl.pipeline.train.train builds: the runtime's VecEnv and a new model of its class."""
    from fetchrl.pipeline.setup import new_model, runtime_for
    from fetchrl.vecenv import factory

    cfg = _config(seed, total_steps)
    runtime = runtime_for(cfg)
    return new_model(cfg, runtime, factory.make_vec_env(runtime, cfg.n_envs, seed=seed))


def _eval_seconds(arm: str, model: Any) -> float:
    """Wall time of 100 deterministic episodes: SB3's evaluate_policy vs fetchrl's evaluate_policy."""
    t0 = time.perf_counter()
    if arm == "plain":
        from stable_baselines3.common.env_util import make_vec_env
        from stable_baselines3.common.evaluation import evaluate_policy

        env = make_vec_env(ENV_ID, n_envs=1, seed=10**6)
        evaluate_policy(model, env, n_eval_episodes=EVAL_EPISODES_TIMED, deterministic=True)
        env.close()
    else:
        from fetchrl.config import EvalConfig
        from fetchrl.pipeline.evaluate import SB3Policy, evaluate_policy
        from fetchrl.runtime import Runtime

        evaluate_policy(Runtime.decide(ENV_ID), SB3Policy(model), EvalConfig(n_episodes=EVAL_EPISODES_TIMED))
    return time.perf_counter() - t0


#: --breakdown arms: one speed-up at a time, all on SB3's PPO with the chapter's hyper-parameters.
BREAKDOWN = {
    "plain+1thread": "plain SB3, torch threads = 1",
    "fastenv-dummy": "+ lean env step (DummyVecEnv, 1 thread)",
    "fastenv-procs": "+ process-parallel VecEnv (SB3's PPO)",
    "fastppo": "+ FastPPO (pipelined rollout, lean update) = fetchrl",
}


def job_breakdown(arm: str, seed: int, steps: int, torch_threads: int) -> dict[str, Any]:
    """Steps/s of one intermediate configuration (see BREAKDOWN)."""
    _setup("fetchrl", torch_threads)  # torch threads as the fetchrl arm
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    from fetchrl.tasks import fast as fast_envs
    from fetchrl.vecenv.process import ProcessVecEnv

    cfg = _config(seed, steps)
    if arm == "plain+1thread":
        env = make_vec_env(ENV_ID, n_envs=cfg.n_envs, seed=seed, vec_env_cls=DummyVecEnv)
    elif arm == "fastenv-dummy":
        env = make_vec_env(lambda: fast_envs.make(ENV_ID), n_envs=cfg.n_envs, seed=seed, vec_env_cls=DummyVecEnv)
    else:
        env = ProcessVecEnv(ENV_ID, cfg.n_envs, seed=seed)
    if arm == "fastppo":
        from fetchrl.algos.fastppo import FastPPO

        model = FastPPO(cfg.policy, env, seed=seed, device="cpu", verbose=0, **cfg.ppo_kwargs())
    else:
        model = PPO(cfg.policy, env, seed=seed, device="cpu", verbose=0, **cfg.ppo_kwargs())
    t0 = time.perf_counter()
    model.learn(steps)
    seconds = time.perf_counter() - t0
    return {"steps": steps, "train_s": seconds, "sps": steps / seconds, "rss_mb": _peak_rss_mb()}


def job_throughput(arm: str, seed: int, steps: int, torch_threads: int) -> dict[str, Any]:
    """Train ``steps`` steps; for fetchrl through ``fetchrl.pipeline.train.train`` itself (its own clock)."""
    _setup(arm, torch_threads)
    if arm == "plain":
        model = _plain_model(seed, steps)
        t0 = time.perf_counter()
        model.learn(steps)
        seconds = time.perf_counter() - t0
    else:
        from stable_baselines3 import PPO

        from fetchrl.artifacts import RunPaths
        from fetchrl.pipeline.train import train

        with tempfile.TemporaryDirectory() as tmp:
            paths = RunPaths(ENV_ID, seed, Path(tmp))
            meta = train(_config(seed, steps), paths, progress=False)
            seconds = meta.wall_time_s
            model = PPO.load(paths.checkpoint, device="cpu")
    eval_s = _eval_seconds(arm, model)
    return {"steps": steps, "train_s": seconds, "sps": steps / seconds, "eval_s": eval_s, "rss_mb": _peak_rss_mb()}


@dataclass
class _CriteriaState:
    train_s: float = 0.0
    curve: list[dict[str, float]] = field(default_factory=list)
    reached_at: int | None = None
    reached_train_s: float | None = None


def _make_criteria_callback(arm: str, state: _CriteriaState, stop_at_criteria: bool) -> Any:
    import numpy as np
    from stable_baselines3.common.callbacks import BaseCallback

    from fetchrl.chapters.ch02 import CHAPTER
    from fetchrl.config import EvalConfig
    from fetchrl.pipeline.evaluate import SB3Policy, run_episodes
    from fetchrl.runtime import Runtime

    crit = {c.metric: c for c in CHAPTER.criteria}
    seeds = EvalConfig(n_episodes=EVAL_EPISODES_CRITERIA).episode_seeds
    runtime = Runtime.decide(ENV_ID, reference_env=arm != "fetchrl")

    class CriteriaCallback(BaseCallback):
        """Every 16,384 steps: 50 deterministic episodes, clock paused; stop once all criteria hold."""

        def _on_training_start(self) -> None:
            self._t0 = time.perf_counter()

        def _on_step(self) -> bool:
            if self.num_timesteps % EVAL_EVERY:
                return True
            state.train_s += time.perf_counter() - self._t0
            eps = run_episodes(runtime, SB3Policy(self.model), seeds)
            point = {"steps": self.num_timesteps, "train_s": state.train_s,
                     "success": float(np.mean([e.success for e in eps])),
                     "return": float(np.mean([e.return_ for e in eps])),
                     "distance": float(np.mean([e.final_distance for e in eps]))}
            state.curve.append(point)
            ok = (crit["success_rate"].passes(point["success"]) and crit["return_mean"].passes(point["return"])
                  and crit["final_distance_mean"].passes(point["distance"]))
            if ok and state.reached_at is None:
                state.reached_at, state.reached_train_s = self.num_timesteps, state.train_s
            self._t0 = time.perf_counter()
            return not (ok and stop_at_criteria)

        def _on_training_end(self) -> None:
            state.train_s += time.perf_counter() - self._t0

    return CriteriaCallback()


def job_criteria(arm: str, seed: int, steps: int, torch_threads: int, stop_at_criteria: bool) -> dict[str, Any]:
    """Train until the chapter's three criteria hold (or ``steps``); eval time excluded from the clock.

    Both arms use the same torch thread count here: float32 matmuls round differently with two
    threads, and with one thread each the arms do the very same computation (tests/test_fastppo.py),
    so they reach the criteria at the same step and the clocks compare like for like. Plain SB3 trains
    equally fast with one or two torch threads on this model (see ``--breakdown``).
    """
    _setup(arm, torch_threads, plain_same_threads=True)
    model = (_plain_model if arm == "plain" else _fetchrl_model)(seed, steps)
    state = _CriteriaState()
    model.learn(steps, callback=_make_criteria_callback(arm, state, stop_at_criteria))
    return {"steps_to_criteria": state.reached_at, "time_to_criteria_s": state.reached_train_s,
            "train_s": state.train_s, "steps": int(model.num_timesteps),
            "sps": model.num_timesteps / state.train_s, "curve": state.curve, "rss_mb": _peak_rss_mb()}


def job_default_run(arm: str, seed: int, steps: int, torch_threads: int) -> dict[str, Any]:
    """fetchrl's default run (500k steps) through ``fetchrl.pipeline.train.train``: wall time of training."""
    _setup(arm, torch_threads)
    from fetchrl.artifacts import RunPaths
    from fetchrl.pipeline.train import train

    with tempfile.TemporaryDirectory() as tmp:
        meta = train(_config(seed, steps), RunPaths(ENV_ID, seed, Path(tmp)), progress=False)
    return {"steps": steps, "train_s": meta.wall_time_s, "sps": meta.steps_per_second, "rss_mb": _peak_rss_mb()}


JOBS = {"throughput": job_throughput, "criteria": job_criteria, "default_run": job_default_run,
        "breakdown": job_breakdown}


def run_child(job: str, **kwargs: Any) -> dict[str, Any]:
    """Run one job in a fresh interpreter; returns its JSON result."""
    spec = json.dumps({"job": job, **kwargs})
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", spec], capture_output=True,
                         text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child {spec} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ============================================================================ report
def _fmt(values: list[float], digits: int = 0) -> str:
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _ratio(plain: list[float], fast: list[float], higher_is_better: bool) -> str:
    if not plain or not fast or min(plain + fast) <= 0:
        return "n/a"
    p, f = statistics.fmean(plain), statistics.fmean(fast)
    return f"{(f / p if higher_is_better else p / f):.2f}x"


def print_table(rows: list[tuple[str, list[float], list[float], bool, int]]) -> None:
    """rows: (metric, plain values, fetchrl values, higher_is_better, digits)."""
    header = f"{'metric':<30} {'plain SB3':>20} {'fetchrl':>20} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for name, plain, fast, higher, digits in rows:
        print(f"{name:<30} {_fmt(plain, digits):>20} {_fmt(fast, digits):>20} {_ratio(plain, fast, higher):>9}")


def print_curves(results: dict[str, list[dict[str, Any]]]) -> None:
    """Learning curves (eval success / return per 16,384 steps), mean over seeds, both arms."""
    print("\nLearning curves: 50 deterministic eval episodes every 16,384 steps, mean ± std over seeds")
    print(f"{'steps':>8} | {'plain success':>15} {'plain return':>16} | {'fetchrl success':>15} {'fetchrl return':>16}")
    by_arm: dict[str, dict[int, list[dict[str, float]]]] = {arm: {} for arm in ARMS}
    for arm in ARMS:
        for run in results[arm]:
            for point in run["curve"]:
                by_arm[arm].setdefault(int(point["steps"]), []).append(point)
    for steps in sorted(set(by_arm["plain"]) | set(by_arm["fetchrl"])):
        cells = []
        for arm in ARMS:
            pts = by_arm[arm].get(steps, [])
            cells.append(f"{_fmt([p['success'] for p in pts], 2):>15} {_fmt([p['return'] for p in pts], 1):>16}")
        print(f"{steps:>8} | {cells[0]} | {cells[1]}")
    print("(runs stop once all three criteria hold, so late rows average fewer seeds)")


# ============================================================================ driver
def _throughput_rows(tp: dict[str, list[dict[str, Any]]]) -> list[tuple[str, list[float], list[float], bool, int]]:
    def col(arm: str, key: str) -> list[float]:
        return [r[key] for r in tp[arm] if r.get(key) is not None]

    return [("train steps/s", col("plain", "sps"), col("fetchrl", "sps"), True, 0),
            ("eval 100 episodes, s", col("plain", "eval_s"), col("fetchrl", "eval_s"), False, 2),
            ("peak RSS, MB", col("plain", "rss_mb"), col("fetchrl", "rss_mb"), False, 0)]


def _run_breakdown(tp: dict[str, list[dict[str, Any]]], repeats: int, steps: int, threads: int) -> None:
    """Steps/s of each intermediate configuration, relative to plain SB3 measured in this run."""
    sps: dict[str, list[float]] = {arm: [] for arm in BREAKDOWN}
    for rep in range(repeats):
        for arm in BREAKDOWN:
            sps[arm].append(run_child("breakdown", arm=arm, seed=rep, steps=steps, torch_threads=threads)["sps"])
    plain = [r["sps"] for r in tp["plain"]]
    print("\nBreakdown (train steps/s; speed-up vs plain SB3 of this run):")
    print(f"  {'plain SB3 (torch default threads)':<45} {_fmt(plain):>12}")
    for arm, label in BREAKDOWN.items():
        print(f"  {label:<45} {_fmt(sps[arm]):>12} {_ratio(plain, sps[arm], True):>8}")


def _run_criteria(args: argparse.Namespace, threads: int) -> dict[str, list[dict[str, Any]]]:
    crit: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            r = run_child("criteria", arm=arm, seed=seed, steps=args.max_steps, torch_threads=threads,
                          stop_at_criteria=not args.full_curves)
            crit[arm].append(r)
            print(f"  criteria seed {seed} {arm:>7}: steps {r['steps_to_criteria']}, "
                  f"train {r['time_to_criteria_s']} s, {r['sps']:.0f} steps/s", flush=True)
    return crit


def _criteria_rows(crit: dict[str, list[dict[str, Any]]]) -> list[tuple[str, list[float], list[float], bool, int]]:
    def col(arm: str, key: str) -> list[float]:
        return [r[key] for r in crit[arm] if r.get(key) is not None]

    return [("time to criteria, s", col("plain", "time_to_criteria_s"), col("fetchrl", "time_to_criteria_s"),
             False, 1),
            ("steps to criteria", col("plain", "steps_to_criteria"), col("fetchrl", "steps_to_criteria"), False, 0),
            ("steps/s during criteria runs", col("plain", "sps"), col("fetchrl", "sps"), True, 0)]


def _print_full(args: argparse.Namespace, crit: dict[str, list[dict[str, Any]]], threads: int) -> None:
    print_curves(crit)
    def evals(run: dict[str, Any]) -> list[tuple[float, ...]]:
        return [(pt["steps"], pt["success"], pt["return"], pt["distance"]) for pt in run["curve"]]

    same = all(evals(p) == evals(f) and p["steps_to_criteria"] == f["steps_to_criteria"]
               for p, f in zip(crit["plain"], crit["fetchrl"], strict=True))
    print(f"criteria runs: every eval point of both arms identical on seeds {args.seeds}: {'yes' if same else 'NO'}")
    for arm in ARMS:
        missed = sum(r["steps_to_criteria"] is None for r in crit[arm])
        if missed:
            print(f"WARNING: {arm} missed the criteria within {args.max_steps} steps on {missed} seed(s)")
    if not args.skip_default_run:
        r = run_child("default_run", arm="fetchrl", seed=0, steps=500_000, torch_threads=threads)
        verdict = "under" if r["train_s"] < 240 else "OVER"
        print(f"\nfetchrl default run (train, 500,000 steps, seed 0): {r['train_s']:.1f} s "
              f"({r['sps']:.0f} steps/s) — {verdict} the 4-minute goal")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="throughput, eval time and RSS only (~1 minute)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the criteria runs")
    parser.add_argument("--repeats", type=int, default=None, help="throughput repetitions per arm")
    parser.add_argument("--throughput-steps", type=int, default=None, help="steps per throughput run")
    parser.add_argument("--max-steps", type=int, default=500_000, help="step budget of a criteria run")
    parser.add_argument("--full-curves", action="store_true", help="keep training after the criteria hold")
    parser.add_argument("--skip-default-run", action="store_true", help="skip fetchrl's default 500k-step run")
    parser.add_argument("--torch-threads", type=int, default=None, help="fetchrl arm's torch threads")
    parser.add_argument("--breakdown", action="store_true",
                        help="also measure each speed-up alone (steps/s of intermediate configurations)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(JOBS[spec.pop("job")](**spec)))
        return 0

    from fetchrl.runtime import FAST_TORCH_THREADS

    threads = args.torch_threads or FAST_TORCH_THREADS
    repeats = args.repeats or (1 if args.quick else 3)
    tp_steps = args.throughput_steps or (2 * 8192 if args.quick else 4 * 8192)
    t_start = time.perf_counter()
    print(f"bench_speed: {ENV_ID}, chapter hyper-parameters, {os.cpu_count()} CPUs, load avg "
          f"{os.getloadavg()[0]:.2f}; fetchrl torch threads = {threads}; arms alternate in child processes")
    tp: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for rep in range(repeats):
        for arm in ARMS:
            r = run_child("throughput", arm=arm, seed=rep, steps=tp_steps, torch_threads=threads)
            tp[arm].append(r)
            print(f"  throughput rep {rep} {arm:>7}: {r['sps']:.0f} steps/s, eval {r['eval_s']:.2f} s", flush=True)
    rows = _throughput_rows(tp)
    if args.breakdown:
        _run_breakdown(tp, repeats, tp_steps, threads)
    crit: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    if not args.quick:
        crit = _run_criteria(args, threads)
        rows += _criteria_rows(crit)
    print(f"\nResults ({repeats} throughput runs of {tp_steps} steps per arm"
          + ("" if args.quick else f"; criteria runs on seeds {args.seeds}") + "):")
    print_table(rows)
    if not args.quick:
        _print_full(args, crit, threads)
    print(f"\nbench wall time {time.perf_counter() - t_start:.0f} s; load avg now {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
