"""The chapters' command line, built from each chapter's spec (:mod:`fetchrl.chapters`).

``scripts/ch02_ppo_dense_reach.py`` is ``run(CH02)``: the chapter's commands, with its defaults,
criteria and artifact names; ``fetchrl ch02 ...`` (the installed console script) is the same parser
one word down. The algorithm's hyper-parameter flags are generated from its dataclass's fields
(name, type, bounds, default, docstring as help).

parse -> config -> library call -> say where results are: every handler is short; the work lives
in the stage modules. Bad input exits non-zero with one line on stderr (2 for usage errors), never
a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from fetchrl import portable
from fetchrl.algos.base import MAX_EVAL_EPISODES, RUN_BOUNDS, Bounds, field_docs, flag_name
from fetchrl.artifacts import RunPaths
from fetchrl.chapters import CH02, CHAPTERS
from fetchrl.chapters.base import Chapter
from fetchrl.config import EvalConfig, TrainConfig
from fetchrl.errors import FetchRLError
from fetchrl.runtime import Runtime

if TYPE_CHECKING:  # heavy (torch, SB3): imported where it is used
    from fetchrl.pipeline.train import CommandLine


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        raise SystemExit(2)


def _run_int(name: str) -> Callable[[str], int]:
    """An argparse ``type`` for the run setting ``name``: the integers ``RUN_BOUNDS[name]`` accepts (the
    ones TrainConfig accepts), refused in its words: "expected a positive integer, got 0"."""
    return _count(RUN_BOUNDS[name])


def _count(bounds: Bounds) -> Callable[[str], int]:
    """An argparse ``type`` for the integers ``bounds`` accepts, refused in :meth:`Bounds.refusal`'s words."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {bounds.refusal(None)}, got {text[:40]!r}") from None
        if not bounds.contains(value):
            shown = str(value) if len(str(value)) <= 40 else f"{str(value)[:12]}... ({len(str(value))} digits)"
            raise argparse.ArgumentTypeError(f"expected {bounds.refusal(value)}, got {shown}")
        return value

    return parse


def _device(text: str) -> str:
    """An argparse ``type`` for ``--device``: its form only; :func:`_resolve_device` asks torch."""
    if text in ("cpu", "cuda", "mps", "auto") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N, mps or auto, got {text[:40]!r}")


def _bounded(name: str, bounds: Bounds) -> Callable[[str], int | float]:
    """An argparse ``type`` for a hyper-parameter: the values its dataclass accepts, worded the same way."""
    label = name.replace("_", " ")

    def parse(text: str) -> int | float:
        try:
            value: int | float = int(text) if bounds.integer else float(text)
        except ValueError:
            expected = bounds.describe() if bounds.integer else f"a number {bounds.describe()}"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not bounds.contains(value):
            if bounds.integer:
                raise argparse.ArgumentTypeError(f"expected {bounds.describe()}, got {value}")
            raise argparse.ArgumentTypeError(f"{label} must be {bounds.describe()}, got {value}")
        return value

    return parse


def _parsed(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse ``type`` from a value spec's own ``parse`` (ValueError carries the message)."""

    def parse_arg(text: str) -> object:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse_arg


def _chapter(args: argparse.Namespace) -> Chapter:
    """The chapter the command runs: with a control arm (ch04), the ``--her`` switch picks the arm."""
    chapter: Chapter = args.chapter
    return chapter.arm(bool(getattr(args, "her", False)))


# ============================================================================ shared options
def _run_options(chapter: Chapter) -> _Parser:
    d = chapter.defaults
    p = _Parser(add_help=False)
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=_run_int("seed"), default=d.seed,
                   help=f"training seed, 0 .. 2**32 - 1 - (n_envs - 1) (default {d.seed})")
    g.add_argument("--env-id", "--env", dest="env_id", default=d.env_id, help=f"Gymnasium id (default {d.env_id})")
    if chapter.control is not None:
        g.add_argument("--her", action="store_true",
                       help=f"the {chapter.algorithm.title} arm (default: the control arm, {chapter.control.algorithm.title} "
                            "with a plain replay buffer)")
    g.add_argument("--root", type=Path, default=Path("."),
                   help="directory holding checkpoints/, results/, runs/, videos/ (default .)")
    g.add_argument("--device", type=_device, default=d.device,
                   help="cpu (default; SB3 advises the CPU for small MLP policies), cuda, cuda:N, mps (refused when torch cannot use "
                        "it), auto (cuda when available, else cpu)")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g.add_argument("--reference-env", action="store_true",
                   help="step Gymnasium-Robotics' own env instead of fetchrl's identical fast one")
    g.add_argument("--portable", action="store_true",
                   help="the same numbers on any x86-64 CPU with AVX2 (pinned kernels, one thread; docs/portable.md)")
    return p


def _field_help(docs: dict[str, str], name: str, default: object) -> str | None:
    """A dataclass field's docstring and default as a flag's help text."""
    return f"{docs[name]} (default {default})".replace("%", "%%") if name in docs else None


def _train_options(chapter: Chapter) -> _Parser:
    """Run length and parallelism, then one flag per tunable field of the algorithm's dataclass
    (``clip_range`` -> ``--clip-range``: its bounds type the flag, its docstring is the help)."""
    d, algo = chapter.defaults, chapter.defaults.algo
    run_docs, algo_docs = field_docs(TrainConfig), field_docs(type(algo))
    p = _Parser(add_help=False)
    g = p.add_argument_group(f"{chapter.algorithm.title} (the chapter's defaults)")
    for name in ("total_steps", "n_envs"):
        g.add_argument(flag_name(name), type=_run_int(name), default=_default(chapter, name, getattr(d, name)),
                       help=_field_help(run_docs, name, _shown_default(chapter, name, getattr(d, name))))
    only_treatment = _treatment_only(chapter)
    for f in algo.tunable_fields():
        default = getattr(algo, f.name)
        spec = f.metadata["bounds"]
        kind = _bounded(f.name, spec) if isinstance(spec, Bounds) else _parsed(spec.parse)
        shown = _shown_default(chapter, f.name, default) + ("; with --her only" if f.name in only_treatment else "")
        g.add_argument(flag_name(f.name), type=kind, default=_default(chapter, f.name, default),
                       help=_field_help(algo_docs, f.name, shown))
    g.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True): bit-identical reruns on CPU")
    return p


def _overridden(chapter: Chapter) -> set[str]:
    """Settings some task of the chapter defaults differently (ch04: FetchPush-v4's total_steps, ent_coef)."""
    return {name for overrides in chapter.env_overrides.values() for name in overrides}


def _default(chapter: Chapter, name: str, default: object) -> object:
    """A flag's argparse default: None for a setting whose default depends on the task (resolved by
    :func:`_train_config` once the task is known)."""
    return None if name in _overridden(chapter) else default


def _shown_default(chapter: Chapter, name: str, default: object) -> str:
    """``"500000; FetchPush-v4: 2000000"``: the default as --help shows it."""
    per_env = [f"{env}: {overrides[name]}" for env, overrides in chapter.env_overrides.items() if name in overrides]
    return "; ".join([str(default), *per_env])


def _treatment_only(chapter: Chapter) -> set[str]:
    """Hyper-parameters of the treatment arm that the control arm has not (ch04: HER's)."""
    if chapter.control is None:
        return set()
    control = {f.name for f in chapter.control.defaults.algo.tunable_fields()}
    return {f.name for f in chapter.defaults.algo.tunable_fields()} - control


def _eval_options(chapter: Chapter) -> _Parser:
    episodes = chapter.eval_defaults.n_episodes
    p = _Parser(add_help=False)
    p.add_argument("--n-eval-episodes", type=_run_int("n_eval_episodes"), default=episodes,
                   help=f"deterministic evaluation episodes (default {episodes}, at most {MAX_EVAL_EPISODES:,})")
    return p


def _sweep_options(chapter: Chapter) -> _Parser:
    p = _Parser(add_help=False)
    g = p.add_argument_group("sweep")
    g.add_argument("--seeds", type=_run_int("seeds"), default=chapter.seeds,
                   help=f"seeds 0..N-1 (default {chapter.seeds}, at most {RUN_BOUNDS['seeds'].high:.0f})")
    g.add_argument("--workers", type=_run_int("workers"), default=None,
                   help="trials in flight at once (default: the core count; with --backend ray: the cluster's CPUs)")
    g.add_argument("--backend", choices=("local", "ray"), default="local")
    g.add_argument("--ray-address", default=None,
                   help="with --backend ray: auto (cluster started by 'ray start' on this machine) or HOST:PORT "
                        "(default: start a local Ray instance)")
    _checkpoint_every(g, "each trial also checkpoints")
    return p


def _train_config(args: argparse.Namespace) -> TrainConfig:
    """The run the flags describe: the chapter's (arm's) defaults for the task, then every flag given.

    A flag only the treatment arm has (ch04: ``--n-sampled-goal``), given for the control arm, is refused.
    """
    chapter = _chapter(args)
    treatment: Chapter = args.chapter
    for name in sorted(_treatment_only(treatment)):
        if chapter is not treatment and getattr(args, name) != getattr(treatment.defaults.algo, name):
            raise FetchRLError(f"{flag_name(name)} is a setting of the --her arm; add --her or drop it")
    return _arm_config(args, chapter)


def _arm_config(args: argparse.Namespace, chapter: Chapter) -> TrainConfig:
    """The run of ``chapter`` (an arm) the flags describe: its defaults for the task, then every flag it has."""
    base = chapter.defaults_for(args.env_id)
    hyperparameters = {f.name: getattr(args, f.name) for f in base.algo.tunable_fields()}
    hyperparameters = {k: v for k, v in hyperparameters.items() if v is not None}
    return base.replace(
        seed=args.seed, total_steps=base.total_steps if args.total_steps is None else args.total_steps,
        n_envs=args.n_envs, device=args.device, deterministic_torch=args.deterministic,
        fast_env=not args.reference_env, portable=args.portable,
        algo=dataclasses.replace(base.algo, **hyperparameters),
    )


def _paths(args: argparse.Namespace, seed: int | None = None) -> RunPaths:
    return _chapter(args).paths(args.env_id, args.seed if seed is None else seed, args.root)


def _eval_config(args: argparse.Namespace) -> EvalConfig:
    return dataclasses.replace(_chapter(args).eval_defaults, n_episodes=args.n_eval_episodes)


def _runtime(args: argparse.Namespace) -> Runtime:
    return Runtime.decide(args.env_id, reference_env=args.reference_env)


# ============================================================================ handlers
def cmd_check_env(args: argparse.Namespace) -> int:
    from fetchrl.tasks import checkenv

    ok = checkenv.print_checks(args.env_id, checkenv.run_checks(_runtime(args)))
    return 0 if ok else 1


def _command_line(args: argparse.Namespace) -> CommandLine:
    """The chapter's script and defaults, for the commands training prints (pipeline.train.CommandLine)."""
    from fetchrl.pipeline.train import CommandLine

    chapter = _chapter(args)
    return CommandLine(chapter.script, chapter.defaults, ("--her",) if chapter.control is not None else ())


def cmd_train(args: argparse.Namespace) -> int:
    from fetchrl.pipeline.train import summary, train
    from fetchrl.tasks import checkenv

    config, runtime = _train_config(args), _runtime(args)
    if not checkenv.print_checks(config.env_id, checkenv.run_checks(runtime)):
        raise FetchRLError(f"check-env failed for {config.env_id}; not training", exit_code=1)
    paths = _paths(args)
    meta = train(config, paths, progress=not args.no_progress, resume=args.resume, force=args.force,
                 checkpoint_every=args.checkpoint_every, runtime=runtime, command=_command_line(args))
    print(summary(meta))
    print(f"checkpoint: {paths.checkpoint}\nmetadata:   {paths.meta}\ntensorboard: {paths.tb_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from fetchrl.pipeline.evaluate import evaluate
    from fetchrl.tasks import envs

    paths = _paths(args)
    result = evaluate(paths, _eval_config(args), _runtime(args), device=args.device, progress=not args.no_progress)
    agg = result.aggregate
    measured = f" ({envs.goal_distance_name(args.env_id)})" if envs.has_object(args.env_id) else ""  # Push: the object's
    print(f"success_rate {agg['success_rate']:.3f}  return_mean {agg['return_mean']:.3f}  "
          f"final_distance_mean {agg['final_distance_mean']:.4f} m{measured}  ({result.n_episodes} episodes, "
          f"{result.eval_seconds:.1f} s)")
    print(f"eval JSON: {paths.eval_json}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fetchrl.workflows import report

    return report(_paths(args), _runtime(args), criteria=_chapter(args).criteria_for(args.env_id))


def cmd_all(args: argparse.Namespace) -> int:
    from fetchrl.workflows import run_all

    return run_all(_train_config(args), _eval_config(args), _paths(args), progress=not args.no_progress,
                   video=not args.no_video, resume=args.resume, force=args.force, command=_command_line(args),
                   criteria=_chapter(args).criteria_for(args.env_id), checkpoint_every=args.checkpoint_every)


def cmd_multi_seed(args: argparse.Namespace) -> int:
    from fetchrl.workflows import multi_seed

    return multi_seed(_train_config(args), _eval_config(args), list(range(args.seeds)), args.root,
                      backend=args.backend, workers=args.workers, ray_address=args.ray_address,
                      progress=not args.no_progress, names=_chapter(args).names_for(args.env_id),
                      checkpoint_every=args.checkpoint_every)


def cmd_ablate(args: argparse.Namespace) -> int:
    from fetchrl.workflows import ablate

    chapter = _chapter(args)
    treatment: Chapter = args.chapter
    if chapter.ablation is None and treatment.ablation is not None:  # ch04: n_sampled_goal is HER's
        # the book types `ablation --env FetchPush-v4 --nsg-values 2,4,8`: the setting exists only with HER
        args.her = True
        chapter = treatment
        print(f"ablation varies {treatment.ablation.param}, a setting of {treatment.algorithm.title}: "
              "training the --her arm")
    assert chapter.ablation is not None  # the command exists only for a chapter with an ablation
    values = [v for group in args.ablation_values for v in group]
    return ablate(_train_config(args), _eval_config(args), list(range(args.seeds)), values, args.root,
                  param=chapter.ablation.param, exercise=chapter.ablation.exercise,
                  flag=chapter.ablation.flag or f"{flag_name(chapter.ablation.param)}s",
                  names=chapter.names_for(args.env_id), backend=args.backend, workers=args.workers,
                  ray_address=args.ray_address, progress=not args.no_progress, checkpoint_every=args.checkpoint_every)


def cmd_sweep(args: argparse.Namespace) -> int:
    from fetchrl.sweep.plan import parse_grid
    from fetchrl.workflows import sweep

    return sweep(args.name, _train_config(args), _eval_config(args), list(range(args.seeds)), parse_grid(args.grid),
                 args.root, backend=args.backend, workers=args.workers, ray_address=args.ray_address,
                 progress=not args.no_progress, checkpoint_every=args.checkpoint_every)


def cmd_diagnose(args: argparse.Namespace) -> int:
    from fetchrl.analysis.diagnose import run_diagnose_cli

    return run_diagnose_cli(args.logdir or _paths(args).tb_dir, args.json, algo=_paths(args).names.rules)


def cmd_plot(args: argparse.Namespace) -> int:
    from fetchrl.workflows import plot

    return plot(_paths(args), seeds=args.seeds)


def cmd_video(args: argparse.Namespace) -> int:
    from fetchrl.analysis.video import record_video

    out = record_video(_paths(args), _runtime(args), episodes=args.episodes, device=args.device)
    print(f"video: {', '.join(str(p) for p in out)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fetchrl.analysis.compare import CompareInput, compare, summary_lines
    from fetchrl.artifacts import compare_json_path, compare_plot_path

    chapter = _chapter(args)
    if chapter.compare_with is None:
        raise FetchRLError(f"{chapter.id} has no earlier chapter to compare with")
    sides = [CompareInput(c.id, f"{c.algorithm.title} ({c.id})", c.paths(args.env_id, args.seed, args.root),
                          c.criteria, f"{c.script} all --seed {args.seed} --root {args.root}")
             for c in (chapter.compare_with, chapter)]
    out_json = compare_json_path(args.seed, args.root, chapter.artifacts)
    out_png = compare_plot_path(args.seed, args.root, chapter.artifacts)
    result = compare(sides, out_json, out_png)
    print("\n".join(summary_lines(result)))
    print(f"-> {out_json}, {out_png}")
    return 0 if all(r.passed for r in result.runs) else 1


def cmd_compare_arms(args: argparse.Namespace) -> int:
    from fetchrl.analysis.her_compare import ArmInput
    from fetchrl.workflows import compare_arms

    treatment: Chapter = args.chapter
    assert treatment.control is not None  # the command is this chapter's only when it has a control arm
    arms = (treatment, treatment.control)
    configs = [_arm_config(args, arm) for arm in arms]  # HER-only flags apply to the HER arm
    names = [arm.names_for(args.env_id) for arm in arms]
    inputs = [ArmInput(n, n.title, cfg.total_steps) for n, cfg in zip(names, configs, strict=True)]
    return compare_arms(configs, inputs, _eval_config(args), list(range(args.seeds)), args.root,
                        chapter=treatment.id, backend=args.backend, workers=args.workers,
                        ray_address=args.ray_address, progress=not args.no_progress,
                        checkpoint_every=args.checkpoint_every)


def cmd_throughput(args: argparse.Namespace) -> int:
    from fetchrl.analysis.throughput import measure
    from fetchrl.artifacts import throughput_json_path, throughput_plot_path

    chapter = _chapter(args)
    config = chapter.defaults.replace(env_id=args.env_id, seed=args.seed, device=args.device,
                                      fast_env=not args.reference_env)
    result = measure(config, args.n_envs_list, args.steps, args.learning_starts,
                     throughput_json_path(args.root, chapter.artifacts),
                     throughput_plot_path(args.root, chapter.artifacts), progress=not args.no_progress)
    print(result.answer)
    print(f"-> {throughput_json_path(args.root, chapter.artifacts)}, {throughput_plot_path(args.root, chapter.artifacts)}")
    return 0


# ============================================================================ commands
_NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_BASELINE_WORDS = {"random": "random", "zero": "zero-action"}


def _words(chapter: Chapter) -> dict[str, str]:
    """What the commands' help texts say about a chapter: ``{algo}``, ``{n_criteria}``, ``{baselines}``..."""
    n = len(chapter.criteria)
    baselines = [_BASELINE_WORDS[b] for b in chapter.baselines]
    words = {
        "algo": chapter.algorithm.title,
        "n_criteria": ("criteria for the task" if chapter.env_criteria else
                       f"{_NUMBER_WORDS[n] if n < len(_NUMBER_WORDS) else n} {'criterion' if n == 1 else 'criteria'}"),
        "baselines": " and ".join(baselines) if len(baselines) <= 2 else ", ".join(baselines),
        "grid_example": f"{chapter.defaults.algo.tunable_fields()[0].name}=...",
    }
    if chapter.ablation is not None:
        a = chapter.ablation
        words |= {"exercise": a.exercise, "param": a.param,
                  "grid_example": f"{a.param}={','.join(str(v) for v in a.values[:2])}"}
    return words


def _train_extras(p: argparse.ArgumentParser, chapter: Chapter) -> None:
    p.add_argument("--resume", action="store_true", help="continue this seed's checkpoint up to --total-steps")
    p.add_argument("--force", action="store_true",
                   help="train over this seed's finished run (kept until the new run completes); with --resume: "
                        "resume even if hyper-parameters or versions differ")
    _checkpoint_every(p)


def _checkpoint_every(p: argparse.ArgumentParser | argparse._ArgumentGroup, who: str = "also checkpoint") -> None:
    p.add_argument("--checkpoint-every", type=_run_int("checkpoint_every"), default=0, metavar="STEPS",
                   help=f"{who} at the first rollout boundary after every STEPS steps (default: only at the end "
                        "and on Ctrl-C/SIGTERM), so a killed run loses at most about STEPS steps")


def _all_extras(p: argparse.ArgumentParser, chapter: Chapter) -> None:
    p.add_argument("--no-video", action="store_true", help="skip the GIF (and its HTML section)")
    p.add_argument("--resume", action="store_true",
                   help="continue this seed's interrupted training (as train --resume; nothing to train when it "
                        "finished), then evaluate and report")
    p.add_argument("--force", action="store_true",
                   help="train over this seed's finished run (kept until the new run completes), as train --force")
    _checkpoint_every(p)


#: Most env steps one throughput point times (a few minutes on a laptop core at 8 envs).
THROUGHPUT_STEPS = Bounds(low=1, high=10**7, integer=True)


def _n_envs_list(text: str) -> list[int]:
    """``"1,2,4"`` -> [1, 2, 4], each a valid --n-envs."""
    parse = _run_int("n_envs")
    values = [parse(part.strip()) for part in text.split(",")]
    if len(set(values)) < 2:
        raise argparse.ArgumentTypeError(f"expected at least two different env counts, got {text[:40]!r}")
    return values


def _throughput_extras(p: argparse.ArgumentParser, chapter: Chapter) -> None:
    fields = {f.name: f for f in chapter.algorithm.config_class.tunable_fields()}
    if "learning_starts" not in fields:
        raise ValueError(f"{chapter.id} offers 'throughput' but {chapter.algorithm.name} has no learning_starts")
    p.add_argument("--n-envs-list", type=_n_envs_list, default=[1, 2, 4, 8, 16], metavar="N1,N2,...",
                   help="env counts to time, each in its own process (default 1,2,4,8,16)")
    # 2,000: the whole default list in about a minute on 2 quiet cores (n_envs=1, one gradient step per
    # env step, takes half of it); 4,000 took 3 minutes on 2 cores under a load of ~4
    p.add_argument("--steps", type=_count(THROUGHPUT_STEPS), default=2_000,
                   help="env steps timed per env count, after the warm-up (default 2000)")
    p.add_argument("--learning-starts", type=_bounded("learning_starts", fields["learning_starts"].metadata["bounds"]),
                   default=500, help="warm-up steps of random actions before the clock starts, not timed (default "
                                     f"500, small for timing; the chapter trains with "
                                     f"{chapter.defaults.algo.hyperparameters['learning_starts']})")


def _listed(parse: Callable[[str], int | float]) -> Callable[[str], list[int | float]]:
    """An argparse ``type`` for ``"2,4,8"`` (and, with ``nargs="+"``, ``2 4 8``): each value parsed."""

    def parse_list(text: str) -> list[int | float]:
        parts = [part.strip() for part in text.split(",")]
        if not all(parts):
            raise argparse.ArgumentTypeError(f"expected comma-separated values, got {text[:40]!r}")
        return [parse(part) for part in parts]

    return parse_list


def _ablate_extras(p: argparse.ArgumentParser, chapter: Chapter) -> None:
    if chapter.ablation is None:
        raise ValueError(f"{chapter.id} offers 'ablate' but has no ablation")
    a = chapter.ablation
    bounds = chapter.algorithm.config_class.tunable_fields()
    field = next(f for f in bounds if f.name == a.param)
    p.add_argument(a.flag or f"{flag_name(a.param)}s", dest="ablation_values", nargs="+", metavar="V[,V...]",
                   type=_listed(_bounded(a.param, field.metadata["bounds"])), default=[list(a.values)],
                   help=f"{a.param} settings to compare (default {','.join(str(v) for v in a.values)})")
    p.set_defaults(seeds=a.seeds)


def _sweep_extras(p: argparse.ArgumentParser, chapter: Chapter) -> None:
    p.add_argument("--grid", nargs="+", required=True, metavar="NAME=V1,V2")
    p.add_argument("--name", default="sweep", help="sweep name: artifacts under sweeps/NAME/ (default sweep)")


def _diagnose_extras(p: argparse.ArgumentParser, chapter: Chapter) -> None:
    p.add_argument("--logdir", type=Path, default=None, help="run directory (default: the seed's)")
    p.add_argument("--json", action="store_true", help="print findings as JSON")


def _plot_extras(p: argparse.ArgumentParser, chapter: Chapter) -> None:
    p.add_argument("--seeds", type=_run_int("seeds"), default=None)


def _video_extras(p: argparse.ArgumentParser, chapter: Chapter) -> None:
    p.add_argument("--episodes", type=_run_int("episodes"), default=5,
                   help=f"episodes in the GIF (default 5, at most {RUN_BOUNDS['episodes'].high:.0f}: every frame is "
                        "held in memory)")


@dataclass(frozen=True)
class Command:
    """One CLI command a chapter may offer (``Chapter.commands`` names them)."""

    handler: Callable[[argparse.Namespace], int]
    help: str
    """Formatted with :func:`_words` of the chapter."""
    options: tuple[str, ...]
    """Shared option groups: ``run``, ``train``, ``eval``, ``sweep``."""
    extras: Callable[[argparse.ArgumentParser, Chapter], None] | None = None
    builds_envs: bool = True
    """Its --env-id is checked (and MuJoCo's GL backend chosen) before any work."""
    writes: bool = True
    """Its --root must be able to hold output; checked before any work."""


COMMANDS: dict[str, Command] = {
    "train": Command(cmd_train, "check the env, then train {algo} and write checkpoint, meta JSON, TensorBoard logs",
                     ("run", "train"), _train_extras),
    "eval": Command(cmd_eval, "evaluate the seed's checkpoint on deterministic, seeded episodes -> eval JSON",
                    ("run", "eval")),
    "report": Command(cmd_report, "PASS/FAIL against the chapter's {n_criteria} (exit 0/1), beside "
                      "{baselines} baselines", ("run",)),
    "all": Command(cmd_all, "check-env, train, eval, report, diagnose, plots, video, HTML report",
                   ("run", "train", "eval"), _all_extras),
    "multi-seed": Command(cmd_multi_seed, "train + evaluate seeds 0..N-1 in parallel; aggregate mean ± std",
                          ("run", "train", "eval", "sweep")),
    "ablate": Command(cmd_ablate, "exercise {exercise}: train every {param} setting x seeds; compare",
                      ("run", "train", "eval", "sweep"), _ablate_extras),
    "ablation": Command(cmd_ablate, "{exercise}: train every {param} setting x seeds; compare",
                        ("run", "train", "eval", "sweep"), _ablate_extras),
    "sweep": Command(cmd_sweep, "grid over seeds x {algo} hyper-parameters (e.g. --grid {grid_example})",
                     ("run", "train", "eval", "sweep"), _sweep_extras),
    "compare": Command(cmd_compare, "this chapter's run beside the previous chapter's of the same seed: final metrics, "
                       "steps to each criterion, wall time, steps/s -> JSON + plot (exit 0 when both pass)", ("run",),
                       builds_envs=False),
    "throughput": Command(cmd_throughput, "training steps/s per --n-envs-list (warm-up excluded) -> JSON + plot, and "
                          "where scaling stops being linear", ("run",), _throughput_extras),
    "check-env": Command(cmd_check_env, "the chapter's common-failure checks: shapes, bounds, reward range", ("run",),
                         writes=False),
    "diagnose": Command(cmd_diagnose, "read the TensorBoard logs against the chapter's warning signs", ("run",),
                        _diagnose_extras, builds_envs=False, writes=False),
    "plot": Command(cmd_plot, "PNG curves of a run (and of seeds 0..N-1 with --seeds N)", ("run",), _plot_extras,
                    builds_envs=False),
    "video": Command(cmd_video, "GIF (and MP4 with ffmpeg) of the trained policy with distance overlay", ("run",),
                     _video_extras),
}


#: What a command is in a chapter with a control arm (ch04), where it differs: ``compare`` sets the two
#: arms side by side over seeds (training what is missing) instead of this chapter beside the previous one.
ARM_COMMANDS: dict[str, Command] = {
    "compare": Command(cmd_compare_arms, "{algo} vs its control arm over seeds 0..N-1 (missing trials trained "
                       "first): success per arm (mean, Student-t CI), the difference's Welch CI and the chapter's "
                       "> 50 pp claim -> JSON + plot (exit 0 when the claim passes)", ("run", "train", "eval", "sweep")),
}


def command_for(chapter: Chapter, name: str) -> Command:
    """The command ``name`` as ``chapter`` offers it (a chapter with a control arm has its own ``compare``)."""
    if chapter.control is not None and name in ARM_COMMANDS:
        return ARM_COMMANDS[name]
    return COMMANDS[name]


# ============================================================================ parser
def add_chapter_commands(parser: argparse.ArgumentParser, chapter: Chapter) -> None:
    """Give ``parser`` one subcommand per command the chapter offers, with the chapter's defaults."""
    shared = {"run": _run_options(chapter), "train": _train_options(chapter), "eval": _eval_options(chapter),
              "sweep": _sweep_options(chapter)}
    words = _words(chapter)
    parser.set_defaults(chapter=chapter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for name in chapter.commands:
        command = command_for(chapter, name)
        help_ = command.help.format(**words)
        p = sub.add_parser(name, help=help_, description=help_,
                           parents=[shared[o] for o in command.options])
        p.set_defaults(handler=command.handler)
        if command.extras is not None:
            command.extras(p, chapter)


def _description(chapter: Chapter) -> str:
    return f"Chapter {chapter.number}: {chapter.title} — train, evaluate, report, diagnose."


def build_parser(chapter: Chapter = CH02) -> argparse.ArgumentParser:
    """The parser of one chapter's script (``prog`` is the script's name)."""
    parser = _Parser(prog=Path(chapter.script).name, description=_description(chapter))
    add_chapter_commands(parser, chapter)
    return parser


def build_fetchrl_parser() -> argparse.ArgumentParser:
    """The ``fetchrl`` console script's parser: ``fetchrl CHAPTER COMMAND [options]``."""
    parser = _Parser(prog="fetchrl", description="The book's chapters, one subcommand each: fetchrl CHAPTER "
                     "COMMAND [options] runs the same command as the chapter's script.")
    sub = parser.add_subparsers(dest="chapter_id", required=True, metavar="CHAPTER", parser_class=_Parser)
    for chapter in CHAPTERS.values():
        p = sub.add_parser(chapter.id, help=f"{chapter.title} (as {chapter.script})",
                           description=_description(chapter))
        add_chapter_commands(p, chapter)
    return parser


def _preflight(args: argparse.Namespace) -> None:
    """Fail before any work (and before worker processes start) on an unknown env id or an unusable --root."""
    command = command_for(args.chapter, args.command)
    if command.writes:
        existing = args.root
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise FetchRLError(f"--root {args.root} cannot hold output: {existing} is not a writable directory")
    if command.builds_envs:
        from fetchrl.tasks import envs

        # MuJoCo picks its GL backend when first imported: choose EGL on a headless machine before that,
        # so `all` and `video` can render offscreen.
        envs.ensure_render_backend()
        envs.validate_env_id(args.env_id)
    if "sweep" in command.options:  # trials in other processes would each fail on a task that is not Fetch's
        from fetchrl.tasks import checkenv

        checkenv.require_passing(_runtime(args))


def _resolve_device(args: argparse.Namespace) -> None:
    """Refuse a ``--device`` torch cannot use here (SB3 would train on the CPU without a word); resolve
    ``auto`` and say what it chose (the meta and eval JSONs record the model's device)."""
    requested = getattr(args, "device", "cpu")
    if requested == "cpu":
        return
    import torch  # only for a device other than the CPU: --help and CPU runs need not wait for it

    if requested == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"--device auto: {args.device}")
    elif requested == "mps":
        if not torch.backends.mps.is_available():
            raise FetchRLError("--device mps: torch has no Apple MPS device on this machine; use --device cpu")
    elif not torch.cuda.is_available():
        raise FetchRLError(f"--device {requested}: torch {torch.__version__} sees no CUDA GPU on this machine; "
                           "use --device cpu (or auto)")
    elif requested.startswith("cuda:") and int(requested[5:]) >= torch.cuda.device_count():
        raise FetchRLError(f"--device {requested}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                           f"cuda:0 .. cuda:{torch.cuda.device_count() - 1}")


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if getattr(args, "portable", False):  # first: the kernels are chosen when torch and numpy load
            portable.apply()
        _resolve_device(args)
        _preflight(args)
        return int(args.handler(args))
    except FetchRLError as err:
        sys.stderr.write(f"error: {err}\n")
        return err.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130


def main(argv: Sequence[str] | None = None, chapter: Chapter = CH02) -> int:
    """One chapter's command line (chapter 2's by default); returns the exit code."""
    return _dispatch(build_parser(chapter).parse_args(argv))


def fetchrl_main(argv: Sequence[str] | None = None) -> int:
    """The ``fetchrl`` console script: ``fetchrl ch02 train --seed 0``; returns the exit code."""
    return _dispatch(build_fetchrl_parser().parse_args(argv))


def run(chapter: Chapter = CH02, argv: Sequence[str] | None = None) -> Any:
    """Entry point of a chapter's script: exit with :func:`main`'s code."""
    raise SystemExit(main(argv, chapter))
