"""``scripts/ch02_ppo_dense_reach.py``: parse -> config -> library call -> say where results are.

Every handler is short; the work lives in the stage modules. Bad input exits non-zero with one
line on stderr (2 for usage errors), never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from fetchrl.artifacts import RunPaths
from fetchrl.config import DEFAULT_ENV_ID, EvalConfig, TrainConfig
from fetchrl.errors import FetchRLError

_DEFAULTS = TrainConfig()


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def _int_at_least(minimum: int, expected: str) -> Callable[[str], int]:
    """An argparse ``type`` accepting integers >= ``minimum``; ``expected`` words the error."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _clip_range(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"clip range must be in (0, 1], got {value}")
    return value


def _finite_float(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


# ============================================================================ shared options
def _run_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=_non_negative_int, default=_DEFAULTS.seed, help="training seed (default 0)")
    g.add_argument("--env-id", default=DEFAULT_ENV_ID, help=f"Gymnasium id (default {DEFAULT_ENV_ID})")
    g.add_argument("--root", type=Path, default=Path("."),
                   help="directory holding checkpoints/, results/, runs/, videos/ (default .)")
    g.add_argument("--device", default=_DEFAULTS.device, help="cpu (default; SB3's advice for MLP PPO), cuda, auto")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--reference-env", action="store_true",
                   help="step Gymnasium-Robotics' own env instead of fetchrl's identical fast one")
    return p


def _train_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("PPO (the chapter's defaults)")
    g.add_argument("--total-steps", type=_positive_int, default=_DEFAULTS.total_steps)
    g.add_argument("--n-envs", type=_positive_int, default=_DEFAULTS.n_envs)
    g.add_argument("--n-steps", type=_positive_int, default=_DEFAULTS.n_steps)
    g.add_argument("--batch-size", type=_positive_int, default=_DEFAULTS.batch_size)
    g.add_argument("--n-epochs", type=_positive_int, default=_DEFAULTS.n_epochs)
    g.add_argument("--learning-rate", type=_finite_float, default=_DEFAULTS.learning_rate)
    g.add_argument("--clip-range", type=_clip_range, default=_DEFAULTS.clip_range)
    g.add_argument("--gae-lambda", type=_finite_float, default=_DEFAULTS.gae_lambda)
    g.add_argument("--gamma", type=_finite_float, default=_DEFAULTS.gamma)
    g.add_argument("--ent-coef", type=_finite_float, default=_DEFAULTS.ent_coef)
    g.add_argument("--vf-coef", type=_finite_float, default=_DEFAULTS.vf_coef)
    g.add_argument("--max-grad-norm", type=_finite_float, default=_DEFAULTS.max_grad_norm)
    g.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True): bit-identical reruns on CPU")
    return p


def _eval_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--n-eval-episodes", type=_positive_int, default=EvalConfig().n_episodes,
                   help="deterministic evaluation episodes (default 100)")
    return p


def _sweep_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("sweep")
    g.add_argument("--seeds", type=_positive_int, default=5, help="seeds 0..N-1 (default 5)")
    g.add_argument("--workers", type=_positive_int, default=None,
                   help="trials in flight at once (default: the core count; with --backend ray: the cluster's CPUs)")
    g.add_argument("--backend", choices=("local", "ray"), default="local")
    g.add_argument("--ray-address", default=None,
                   help="with --backend ray: auto (cluster started by 'ray start' on this machine) or HOST:PORT "
                        "(default: start a local Ray instance)")
    return p


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        env_id=args.env_id, seed=args.seed, total_steps=args.total_steps, n_envs=args.n_envs, n_steps=args.n_steps,
        batch_size=args.batch_size, n_epochs=args.n_epochs, learning_rate=args.learning_rate,
        clip_range=args.clip_range, gae_lambda=args.gae_lambda, gamma=args.gamma, ent_coef=args.ent_coef,
        vf_coef=args.vf_coef, max_grad_norm=args.max_grad_norm, device=args.device,
        deterministic_torch=args.deterministic, fast_env=not args.reference_env,
    )


def _paths(args: argparse.Namespace, seed: int | None = None) -> RunPaths:
    return RunPaths(args.env_id, args.seed if seed is None else seed, args.root)


def _eval_config(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(n_episodes=args.n_eval_episodes)


# ============================================================================ handlers
def cmd_check_env(args: argparse.Namespace) -> int:
    from fetchrl.tasks import checkenv

    ok = checkenv.print_checks(args.env_id, checkenv.run_checks(args.env_id, fast=not args.reference_env))
    return 0 if ok else 1


def cmd_train(args: argparse.Namespace) -> int:
    from fetchrl.pipeline.train import train
    from fetchrl.tasks import checkenv

    config = _train_config(args)
    if not checkenv.print_checks(config.env_id, checkenv.run_checks(config.env_id, fast=config.fast_env)):
        raise FetchRLError(f"check-env failed for {config.env_id}; not training", exit_code=1)
    paths = _paths(args)
    meta = train(config, paths, progress=not args.no_progress, resume=args.resume, force=args.force,
                 checkpoint_every=args.checkpoint_every)
    print(f"trained {meta.num_timesteps} steps in {meta.wall_time_s:.1f} s ({meta.steps_per_second:.0f} steps/s)")
    print(f"checkpoint: {paths.checkpoint}\nmetadata:   {paths.meta}\ntensorboard: {paths.tb_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fetchrl.pipeline.evaluate import evaluate

    paths = _paths(args)
    result = evaluate(paths, _eval_config(args), device=args.device, fast=not args.reference_env,
                      progress=not args.no_progress)
    agg = result.aggregate
    print(f"success_rate {agg['success_rate']:.3f}  return_mean {agg['return_mean']:.3f}  "
          f"final_distance_mean {agg['final_distance_mean']:.4f} m  ({result.n_episodes} episodes, "
          f"{result.eval_seconds:.1f} s)")
    print(f"eval JSON: {paths.eval_json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fetchrl.pipeline.commands import report

    return report(_paths(args), fast=not args.reference_env)


def cmd_all(args: argparse.Namespace) -> int:
    from fetchrl.pipeline.commands import run_all

    return run_all(_train_config(args), _eval_config(args), _paths(args), progress=not args.no_progress,
                   video=not args.no_video, resume=args.resume)


def cmd_multi_seed(args: argparse.Namespace) -> int:
    from fetchrl.pipeline.commands import multi_seed

    return multi_seed(_train_config(args), _eval_config(args), list(range(args.seeds)), args.root,
                      backend=args.backend, workers=args.workers, ray_address=args.ray_address,
                      progress=not args.no_progress)


def cmd_ablate(args: argparse.Namespace) -> int:
    from fetchrl.pipeline.commands import ablate

    return ablate(_train_config(args), _eval_config(args), list(range(args.seeds)), args.clip_ranges, args.root,
                  backend=args.backend, workers=args.workers, ray_address=args.ray_address,
                  progress=not args.no_progress)


def cmd_sweep(args: argparse.Namespace) -> int:
    from fetchrl.pipeline.commands import sweep
    from fetchrl.sweep.plan import parse_grid

    return sweep(args.name, _train_config(args), _eval_config(args), list(range(args.seeds)), parse_grid(args.grid),
                 args.root, backend=args.backend, workers=args.workers, ray_address=args.ray_address,
                 progress=not args.no_progress)


def cmd_diagnose(args: argparse.Namespace) -> int:
    from fetchrl.analysis.diagnose import run_diagnose_cli

    return run_diagnose_cli(args.logdir or _paths(args).tb_dir, args.json)


def cmd_plot(args: argparse.Namespace) -> int:
    from fetchrl.pipeline.commands import plot

    return plot(_paths(args), seeds=args.seeds)


def cmd_video(args: argparse.Namespace) -> int:
    from fetchrl.analysis.video import record_video

    out = record_video(_paths(args), episodes=args.episodes, device=args.device)
    print(f"video: {', '.join(str(p) for p in out)}")
    return 0


# ============================================================================ parser
def build_parser() -> argparse.ArgumentParser:
    run, trn, evl, swp = _run_options(), _train_options(), _eval_options(), _sweep_options()
    parser = _Parser(prog="ch02_ppo_dense_reach.py",
                     description="Chapter 2: PPO on FetchReachDense — train, evaluate, report, diagnose.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str,
            parents: Sequence[argparse.ArgumentParser]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, parents=list(parents))  # type: ignore[arg-type]
        p.set_defaults(handler=handler)
        return p

    p = add("train", cmd_train, "check the env, then train PPO and write checkpoint, meta JSON, TensorBoard logs",
            [run, trn])
    p.add_argument("--resume", action="store_true", help="continue this seed's checkpoint up to --total-steps")
    p.add_argument("--force", action="store_true", help="resume even if hyper-parameters or versions differ")
    p.add_argument("--checkpoint-every", type=_positive_int, default=0, metavar="STEPS",
                   help="also checkpoint at the first rollout boundary after every STEPS steps (default: "
                        "only at the end and on Ctrl-C/SIGTERM)")
    add("eval", cmd_eval, "evaluate the seed's checkpoint on deterministic, seeded episodes -> eval JSON",
        [run, evl])
    add("report", cmd_report, "PASS/FAIL against the chapter's three criteria (exit 0/1), beside random and "
        "zero-action baselines", [run])
    p = add("all", cmd_all, "check-env, train, eval, report, diagnose, plots, video, HTML report", [run, trn, evl])
    p.add_argument("--no-video", action="store_true", help="skip the GIF (and its HTML section)")
    p.add_argument("--resume", action="store_true",
                   help="continue this seed's interrupted training (as train --resume), then evaluate and report")
    add("multi-seed", cmd_multi_seed, "train + evaluate seeds 0..N-1 in parallel; aggregate mean ± std",
        [run, trn, evl, swp])
    p = add("ablate", cmd_ablate, "exercise 2.4: train every clip_range setting x seeds; compare", [run, trn, evl, swp])
    p.add_argument("--clip-ranges", type=_clip_range, nargs="+", default=[0.1, 0.2, 0.4])
    p.set_defaults(seeds=1)
    p = add("sweep", cmd_sweep, "grid over seeds x PPO hyper-parameters (e.g. --grid clip_range=0.1,0.2)",
            [run, trn, evl, swp])
    p.add_argument("--grid", nargs="+", required=True, metavar="NAME=V1,V2")
    p.add_argument("--name", default="sweep", help="sweep name: artifacts under sweeps/NAME/ (default sweep)")
    add("check-env", cmd_check_env, "the chapter's common-failure checks: shapes, bounds, reward range", [run])
    p = add("diagnose", cmd_diagnose, "read the TensorBoard logs against the chapter's warning signs", [run])
    p.add_argument("--logdir", type=Path, default=None, help="run directory (default: the seed's)")
    p.add_argument("--json", action="store_true", help="print findings as JSON")
    p = add("plot", cmd_plot, "PNG curves of a run (and of seeds 0..N-1 with --seeds N)", [run])
    p.add_argument("--seeds", type=_positive_int, default=None)
    p = add("video", cmd_video, "GIF (and MP4 with ffmpeg) of the trained policy with distance overlay", [run])
    p.add_argument("--episodes", type=_positive_int, default=5)
    return parser


#: Commands that build environments (their --env-id is checked first) and that write under --root.
_ENV_COMMANDS = frozenset({"train", "eval", "report", "all", "multi-seed", "ablate", "sweep", "check-env",
                           "video"})
_WRITING_COMMANDS = frozenset({"train", "eval", "report", "all", "multi-seed", "ablate", "sweep", "plot", "video"})


def _preflight(args: argparse.Namespace) -> None:
    """Fail before any work (and before worker processes start) on an unknown env id or an unusable --root."""
    if args.command in _WRITING_COMMANDS:
        existing = args.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise FetchRLError(f"--root {args.root} cannot hold output: {existing} is not a writable directory")
    if args.command in _ENV_COMMANDS:
        from fetchrl.tasks import envs

        # MuJoCo picks its GL backend when first imported: choose EGL on a headless machine before that,
        # so `all` and `video` can render offscreen.
        envs.ensure_render_backend()
        envs.validate_env_id(args.env_id)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _preflight(args)
        return int(args.handler(args))
    except FetchRLError as err:
        sys.stderr.write(f"error: {err}\n")
        return err.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130


def run(argv: Sequence[str] | None = None) -> Any:
    """Entry point for scripts: exit with main's code."""
    raise SystemExit(main(argv))
