"""The chapter's commands as library calls: report, all, multi-seed, ablate, sweep, plot.

Each function returns the process exit code; the CLI only parses arguments and calls one of them.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NotRequired, TypedDict, Unpack

from rich.markup import escape

from fetchrl import artifacts
from fetchrl.artifacts import DEFAULT_NAMES, ArtifactNames, EvalResult, RunPaths, SettingSummary, SweepSummary
from fetchrl.config import Criterion, EvalConfig, TrainConfig
from fetchrl.console import NOT_MEASURED, make_console, mean_pm_std, new_table
from fetchrl.errors import FetchRLError
from fetchrl.runtime import Runtime

if TYPE_CHECKING:  # heavy (torch, SB3): imported where it is used
    from fetchrl.analysis.findings import Diagnosis
    from fetchrl.analysis.her_compare import ArmInput
    from fetchrl.pipeline.train import CommandLine
    from fetchrl.sweep.plan import GridValue, SweepPlan

console = make_console()

#: The chapter's robustness bar for multi-seed validation (exercise 2.2): success std < 5 %.
ROBUST_SUCCESS_STD = 0.05


def _diagnosis_or_none(paths: RunPaths) -> Diagnosis | None:
    from fetchrl.analysis.diagnose import diagnose_run

    try:
        return diagnose_run(paths, algo=paths.names.rules)
    except FetchRLError as err:
        console.print(f"[yellow]diagnosis skipped: {err}[/]")
        return None


def _plot_or_none(plot_fn: Callable[..., Path], *args: object, **kwargs: object) -> Path | None:
    """Draw a figure; a run too short to have every curve gets a warning, not a failed command."""
    try:
        return plot_fn(*args, **kwargs)
    except FetchRLError as err:
        console.print(f"[yellow]plot skipped: {err}[/]")
        return None


def _baselines(result: EvalResult, runtime: Runtime) -> list[EvalResult]:
    from fetchrl.pipeline.evaluate import baseline_results

    eval_config = EvalConfig(n_episodes=result.n_episodes, seed_offset=result.seeds[0])
    return baseline_results(runtime, eval_config)


def report(paths: RunPaths, runtime: Runtime, *, diagnosis: Diagnosis | None = None,
           baselines: list[EvalResult] | None = None, criteria: Sequence[Criterion] | None = None,
           diagnose: bool = True) -> int:
    """Criteria table (trained vs random vs zero-action), diagnosis; writes the report markdown.

    ``criteria``: the chapter's (default chapter 2's); the titles name the chapter of ``paths.names``.
    ``diagnose``: read the run's logs when no ``diagnosis`` is given (False: the caller already tried,
    as ``all`` does, so a skipped diagnosis is not tried and reported twice).
    """
    from fetchrl.pipeline.report import CHAPTER_CRITERIA, chapter_heading, print_criteria, write_report

    criteria = CHAPTER_CRITERIA if criteria is None else criteria
    heading = chapter_heading(paths.names)

    result = EvalResult.from_json(paths.eval_json)
    if result.env_id != paths.env_id:
        raise FetchRLError(f"eval JSON {paths.eval_json} is for {result.env_id}, not {paths.env_id}")
    stale = artifacts.check_eval_freshness(result, paths)  # raises when the seed was retrained since
    if stale is not None:
        sys.stderr.write(f"warning: {stale}\n")
    baselines = baselines if baselines is not None else _baselines(result, runtime)
    if diagnosis is None and diagnose:
        diagnosis = _diagnosis_or_none(paths)
    ok = print_criteria(result, baselines, f"{heading[0]} criteria — {result.env_id}, {result.n_episodes} episodes",
                        criteria=criteria)
    if diagnosis is not None:
        diagnosis.print_table()
    write_report(paths, result, baselines, diagnosis.to_markdown() if diagnosis is not None else "",
                 criteria=criteria, title=f"{heading[0]} report: {heading[1]}")
    console.print(f"report: {paths.report_md}")
    return 0 if ok else 1


def run_all(config: TrainConfig, eval_config: EvalConfig, paths: RunPaths, *, progress: bool = True,
            video: bool = True, resume: bool = False, force: bool = False, command: CommandLine | None = None,
            criteria: Sequence[Criterion] | None = None, checkpoint_every: int = 0) -> int:
    """check-env -> train -> eval -> report (+ diagnosis) -> plots -> video -> HTML report.

    When the seed's run of exactly ``config`` already finished (a second ``all``, or ``all`` died
    during evaluation), training is skipped and the finished run evaluated.
    ``resume``: continue an interrupted training (``train --resume``).
    ``force``: as ``train --force`` (retrain over a finished run; with ``resume``: despite differences).
    ``command``: the chapter's :class:`fetchrl.pipeline.train.CommandLine` (default chapter 2's).
    ``checkpoint_every``: as ``train --checkpoint-every`` (0: checkpoints only at the end and on a signal).
    """
    from fetchrl.analysis.html_report import write_html_report
    from fetchrl.analysis.plots import plot_run
    from fetchrl.pipeline.evaluate import evaluate
    from fetchrl.pipeline.report import CHAPTER_CRITERIA
    from fetchrl.pipeline.setup import runtime_for
    from fetchrl.pipeline.train import SCRIPT, finished_run, summary, train
    from fetchrl.tasks import checkenv

    runtime = runtime_for(config)  # the env path of every stage below
    if not checkenv.print_checks(config.env_id, checkenv.run_checks(runtime)):
        raise FetchRLError(f"check-env failed for {config.env_id}; not training", exit_code=1)
    # A finished run of exactly this config is reused, so a second `make run` re-evaluates instead of
    # refusing; --force retrains it (the finished run is kept until the new one completes).
    done = None if force and not resume else finished_run(config, paths)
    if done is not None:
        meta = done
        console.print(f"training already finished: {summary(meta)} -> {paths.checkpoint} (--force retrains)")
    else:
        meta = train(config, paths, progress=progress, resume=resume, force=force, runtime=runtime,
                     checkpoint_every=checkpoint_every, command=command or SCRIPT)
        console.print(f"{summary(meta)} -> {paths.checkpoint}")
    result = evaluate(paths, eval_config, runtime, device=config.device, progress=progress)
    console.print(f"evaluated {result.n_episodes} episodes in {result.eval_seconds:.1f} s -> {paths.eval_json}")
    diagnosis = _diagnosis_or_none(paths)
    baselines = _baselines(result, runtime)
    code = report(paths, runtime, diagnosis=diagnosis, baselines=baselines, criteria=criteria, diagnose=False)
    curves = _plot_or_none(plot_run, paths.tb_dir, paths.curves_png, algo=paths.names.algo,
                           rules=paths.names.rules)
    gif = None
    if video:
        from fetchrl.analysis.video import record_video

        gif = record_video(paths, runtime, device=config.device)[0]
    html = write_html_report(paths, result=result, baselines=baselines, meta=meta, diagnosis=diagnosis,
                             curves_png=curves, gif=gif, criteria=CHAPTER_CRITERIA if criteria is None else criteria)
    print_outputs({"curves": curves} | ({"video": gif} if video else {}) | {"HTML report": html})
    return code


# ============================================================================ sweeps
class RunOptions(TypedDict):
    """How a sweep's trials run (:func:`fetchrl.sweep.base.run_trials`'s keywords, and the trials' checkpoints)."""

    backend: str
    workers: int | None
    ray_address: str | None
    progress: bool
    checkpoint_every: NotRequired[int]
    """As ``train --checkpoint-every``, for every trial (local backend only)."""


def _run_plan(plan: SweepPlan, **kw: Unpack[RunOptions]) -> dict[str, list[int]]:
    """Run a SweepPlan; returns the failed seeds per configuration tag."""
    return _run_plans([plan], **kw)


def _run_plans(plans: Sequence[SweepPlan], *, backend: str, workers: int | None, ray_address: str | None,
               progress: bool, checkpoint_every: int = 0) -> dict[str, list[int]]:
    """Run the trials of several SweepPlans in one sweep (one worker pool, one progress display); returns the
    failed seeds per configuration tag (tags must differ across the plans)."""
    from fetchrl.sweep.base import run_trials

    if checkpoint_every and backend != "local":
        # a Ray task trains in a temp dir on its node and ships the run back only when it ends: a periodic
        # checkpoint there would not survive the task, so it would promise what it cannot keep
        raise FetchRLError("--checkpoint-every needs --backend local (a Ray task's run comes back only when it ends)")
    trials = [dataclasses.replace(t, checkpoint_every=checkpoint_every) for plan in plans for t in plan.trials()]
    outcomes = run_trials(trials, backend=backend, workers=workers, ray_address=ray_address, progress=progress)
    failed: dict[str, list[int]] = {tag: [] for plan in plans for tag in plan.configs}
    for o in outcomes:
        if not o.ok:
            failed[o.trial.tag].append(o.trial.config.seed)
            console.print(f"[red]trial {escape(o.trial.name)} failed: {escape(o.error)}[/]")
    return failed


def print_outputs(outputs: dict[str, Path | None]) -> None:
    """One ``name: path`` line per artifact, each whole on one line (no markup, no wrapping).

    ``None`` (e.g. a plot that could not be drawn) reads ``skipped (see above)``: the warning that
    said why was printed when it was skipped.
    """
    for name, path in outputs.items():
        console.print(f"{name}: {path if path is not None else 'skipped (see above)'}",
                      markup=False, highlight=False, soft_wrap=True)


def _spread(agg: artifacts.MultiSeedAggregate, name: str, fmt: str) -> str:
    """``"mean ± std"`` of aggregate metric ``name``; ``± n/a`` for one seed (no spread measured)."""
    return mean_pm_std(agg.aggregate[f"{name}_mean"], agg.aggregate[f"{name}_std"], len(agg.seeds), fmt)


def _print_aggregate(agg: artifacts.MultiSeedAggregate) -> None:
    table = new_table(f"{agg.env_id}: {len(agg.seeds)} seed(s)",
                      ("seed", "success_rate", "return_mean", "final_distance_mean"))
    for s in agg.per_seed:
        table.add_row(str(s.seed), f"{s.success_rate:.3f}", f"{s.return_mean:.3f}", f"{s.final_distance_mean:.4f}")
    table.add_row("mean ± std", _spread(agg, "success_rate", ".3f"), _spread(agg, "return", ".3f"),
                  _spread(agg, "final_distance", ".4f"))
    console.print(table)
    if agg.rliable:
        for metric, r in agg.rliable.items():
            console.print(f"  {metric}: IQM {r['iqm']:.4g} (95% CI {r['iqm_ci'][0]:.4g}–{r['iqm_ci'][1]:.4g})")


def multi_seed(config: TrainConfig, eval_config: EvalConfig, seeds: Sequence[int], root: Path, *,
               backend: str = "local", workers: int | None = None, ray_address: str | None = None,
               progress: bool = True, names: ArtifactNames = DEFAULT_NAMES, checkpoint_every: int = 0) -> int:
    """Exercise 2.2: seeds in parallel, aggregate from the eval JSONs, chapter's robustness verdict.

    ``names``: the chapter's artifact names (default chapter 2's).
    """
    from fetchrl.analysis.plots import curves_of, plot_multi_seed
    from fetchrl.sweep.aggregate import SEED_METRICS
    from fetchrl.sweep.plan import SweepPlan

    plan = SweepPlan("multi_seed", config, eval_config, list(seeds), {"default": {}}, root, names)
    failed = _run_plan(plan, backend=backend, workers=workers, ray_address=ray_address, progress=progress,
                       checkpoint_every=checkpoint_every)
    agg = plan.aggregates()["default"]
    out = artifacts.multi_seed_aggregate_path(root, names)
    agg.to_json(out)
    _print_aggregate(agg)
    std = agg.aggregate["success_rate_std"]
    robust = std < ROBUST_SUCCESS_STD  # one seed: std 0.0, so the exit code does not depend on it
    verdict = (f"[{'green' if robust else 'red'}]{'PASS' if robust else 'FAIL'}[/] (std {std:.1%})"
               if len(agg.seeds) > 1 else f"{NOT_MEASURED} (one seed: no spread measured; use --seeds 2 or more)")
    console.print(f"robustness (success std < {ROBUST_SUCCESS_STD:.0%}): {verdict}")
    logdirs = {s: RunPaths(config.env_id, s, root, names).tb_dir for s in agg.seeds}
    png = _plot_or_none(plot_multi_seed, logdirs, artifacts.multi_seed_plot_path(root, names),
                        final_scores={k: [getattr(s, k) for s in agg.per_seed] for k in SEED_METRICS},
                        curves=curves_of(config.algorithm.on_policy), algo_title=names.title or config.algorithm.title)
    print_outputs({"aggregate": out, "plot": png})
    return 0 if robust and not failed["default"] else 1


def compare_arms(configs: Sequence[TrainConfig], arms: Sequence[ArmInput], eval_config: EvalConfig,
                 seeds: Sequence[int], root: Path, *, chapter: str, **kw: Unpack[RunOptions]) -> int:
    """Chapter 4's compare: the treatment and control arms over ``seeds``, then the claim's verdict.

    Every trial not yet complete (each arm's multi-seed run: the chapter's own paths under ``root``) is
    trained and evaluated first, both arms in one sweep; finished trials are skipped and a failed one is
    retried once, as in ``multi-seed``. Then both arms' eval JSONs are read back
    (:func:`fetchrl.analysis.her_compare.compare_arms`), the JSON and the plot written.

    ``configs``, ``arms``: [treatment, control], each arm's run and its artifact names.
    Returns 0 when the claim's verdict is PASS, 1 otherwise (inconclusive, refuted, or a failed trial).
    """
    from fetchrl.analysis import her_compare
    from fetchrl.sweep.plan import SweepPlan
    from fetchrl.sweep.trials import is_complete

    if len(configs) != 2 or len(arms) != 2:
        raise ValueError("compare_arms needs exactly two arms: [treatment, control]")
    plans = [SweepPlan("multi_seed", cfg, eval_config, list(seeds), {arm.names.algo: {}}, root, arm.names)
             for cfg, arm in zip(configs, arms, strict=True)]
    failed = _run_plans(plans, **kw)
    complete = {arm.names.algo: [t.config.seed for t in plan.trials() if is_complete(t)]
                for plan, arm in zip(plans, arms, strict=True)}
    failed_names = [f"{tag}/seed{s}" for tag, ss in failed.items() for s in ss]
    env_id = configs[0].env_id
    result = her_compare.compare_arms(arms[0], arms[1], env_id, complete, root, chapter=chapter,
                                      n_eval_episodes=eval_config.n_episodes, failed_trials=failed_names)
    out = artifacts.arms_compare_json_path(env_id, root, arms[0].names)
    result.to_json(out)
    for line in her_compare.summary_lines(result):
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    png = _plot_or_none(her_compare.plot_arms, result, root, [a.names for a in arms],
                        artifacts.arms_compare_plot_path(env_id, root, arms[0].names))
    print_outputs({"compare": out, "plot": png})
    return 0 if result.verdict == "PASS" and not failed_names else 1


def _training_means(logdirs: list[Path]) -> dict[str, float]:
    """Mean over training (and seeds) of clip_fraction, approx_kl; share of updates with approx_kl > 0.03."""
    import numpy as np

    from fetchrl import metrics
    from fetchrl.analysis.diagnose import APPROX_KL_HEALTHY
    from fetchrl.analysis.tbreader import read_scalars

    kl: list[float] = []
    clip: list[float] = []
    for d in logdirs:
        try:
            series = read_scalars(d, (metrics.APPROX_KL, metrics.CLIP_FRACTION))
        except FetchRLError as err:  # e.g. a run shorter than one update: leave it out, say so
            console.print(f"[yellow]training curves of {d} left out: {err}[/]")
            continue
        kl.extend(series[metrics.APPROX_KL].values.tolist())
        clip.extend(series[metrics.CLIP_FRACTION].values.tolist())
    if not kl:
        return {}
    return {
        "clip_fraction_mean": float(np.mean(clip)),
        "approx_kl_mean": float(np.mean(kl)),
        "approx_kl_max": float(np.max(kl)),
        "approx_kl_share_above_0.03": float(np.mean(np.asarray(kl) > APPROX_KL_HEALTHY)),
    }


def _summarise(plan: SweepPlan, failed: dict[str, list[int]]) -> list[SettingSummary]:
    aggs = plan.aggregates()
    settings = []
    for tag, overrides in plan.configs.items():
        root = plan.config_root(tag)
        agg = aggs[tag]
        logdirs = [RunPaths(plan.base.env_id, s, root, plan.names).tb_dir for s in agg.seeds]
        training = _training_means(logdirs) if plan.base.algorithm.on_policy else {}
        settings.append(SettingSummary(tag, overrides, str(root), agg, training, failed[tag]))
    return settings


def answer_ablation(settings: list[SettingSummary]) -> dict[str, str]:
    """Exercise 2.4's three questions, answered from the numbers (not from expectations)."""
    aggs = [s.aggregate for s in settings]
    succ = [a.aggregate["success_rate_mean"] for a in aggs]
    spread = max(succ) - min(succ)
    noise = max((a.aggregate["success_rate_std"] for a in aggs), default=0.0)
    changes = spread > max(2 * noise, 0.05)
    measured = all(len(a.seeds) > 1 for a in aggs)
    noise_text = f"{noise:.1%}" if measured else f"{NOT_MEASURED}, one seed"
    perf = ", ".join(f"{s.tag}: {v:.1%}" for s, v in zip(settings, succ, strict=True))
    kl = ", ".join(f"{s.tag}: mean {s.training.get('approx_kl_mean', float('nan')):.4f}, "
                   f"{s.training.get('approx_kl_share_above_0.03', float('nan')):.0%} of updates > 0.03"
                   for s in settings)
    cf_vals = [s.training.get("clip_fraction_mean", float("nan")) for s in settings]
    cf = ", ".join(f"{s.tag}: {v:.3f}" for s, v in zip(settings, cf_vals, strict=True))
    order = "decreases" if all(a >= b for a, b in zip(cf_vals, cf_vals[1:], strict=False)) else "is not monotonic"
    return {
        "final_performance": f"{'yes' if changes else 'no clear change'} — success rate {perf} "
                             f"(spread {spread:.1%} vs seed noise {noise_text})",
        "stability": f"approx_kl per setting — {kl}",
        "clip_fraction": f"mean clip_fraction — {cf}; across settings in the given order it {order}",
    }


def _print_settings(title: str, settings: list[SettingSummary]) -> None:
    ppo = any(s.training for s in settings)  # PPO's training means; an off-policy run has none to show
    table = new_table(title, ("setting", "seeds", "success", "return", "final dist (m)")
                      + (("clip_fraction", "approx_kl") if ppo else ()))
    for s in settings:
        agg = s.aggregate
        training = (f"{s.training.get('clip_fraction_mean', float('nan')):.3f}",
                    f"{s.training.get('approx_kl_mean', float('nan')):.4f}") if ppo else ()
        table.add_row(
            s.tag, str(len(agg.seeds)),
            _spread(agg, "success_rate", ".3f"), _spread(agg, "return", ".2f"), _spread(agg, "final_distance", ".4f"),
            *training,
        )
    console.print(table)


def _run_grid(name: str, config: TrainConfig, eval_config: EvalConfig, seeds: Sequence[int],
              grid: dict[str, list[GridValue]], root: Path, names: ArtifactNames = DEFAULT_NAMES,
              **kw: Unpack[RunOptions]) -> tuple[SweepPlan, list[SettingSummary], bool]:
    from fetchrl.sweep.plan import grid_plan

    plan = grid_plan(name, config, eval_config, seeds, grid, root, names)
    failed = _run_plan(plan, **kw)
    return plan, _summarise(plan, failed), any(failed.values())


def ablate(config: TrainConfig, eval_config: EvalConfig, seeds: Sequence[int], values: Sequence[float],
           root: Path, *, param: str = "clip_range", exercise: str = "2.4", flag: str = "--clip-ranges",
           names: ArtifactNames = DEFAULT_NAMES, **kw: Unpack[RunOptions]) -> int:
    """An ablation exercise: every ``param`` setting x seeds (exercise 2.4: clip_range; chapter 4's
    experiment 3: n_sampled_goal); PPO's clip ablation answers the exercise's three questions."""
    from fetchrl.analysis.plots import curves_of, plot_ablation
    from fetchrl.sweep.plan import check_distinct

    check_distinct(flag, values)  # as sweep's --grid does: nothing is dropped silently
    grid: dict[str, list[GridValue]] = {param: list(values)}
    name = f"ablation_{param}"
    plan, settings, any_failed = _run_grid(name, config, eval_config, seeds, grid, root, names=names, **kw)
    answers = answer_ablation(settings) if param == "clip_range" else answer_generic(param, settings)
    summary = SweepSummary(artifacts.now_iso(), name, config.env_id, list(seeds),
                           config.total_steps, grid, settings, answers)
    out = artifacts.ablation_path(param, root, names)
    summary.to_json(out)
    exercise_title = f"Exercise {exercise}" if exercise[:1].isdigit() else exercise.capitalize()
    _print_settings(f"{exercise_title} — {param} ablation", settings)
    for question, answer in summary.answers.items():
        console.print(f"[bold]{question}[/]: {answer}")
    groups = {s.tag: [RunPaths(config.env_id, seed, Path(s.root), names).tb_dir for seed in s.aggregate.seeds]
              for s in settings}
    png = _plot_or_none(plot_ablation, groups, artifacts.ablation_plot_path(param, root, names),
                        curves=curves_of(config.algorithm.on_policy))
    print_outputs({"ablation": out, "plot": png})
    return 1 if any_failed else 0


def answer_generic(param: str, settings: list[SettingSummary]) -> dict[str, str]:
    """Does ``param`` change the final success rate beyond the seeds' noise? Answered from the numbers."""
    aggs = [s.aggregate for s in settings]
    succ = [a.aggregate["success_rate_mean"] for a in aggs]
    spread = max(succ) - min(succ)
    noise = max((a.aggregate["success_rate_std"] for a in aggs), default=0.0)
    measured = all(len(a.seeds) > 1 for a in aggs)
    noise_text = f"{noise:.1%}" if measured else f"{NOT_MEASURED}, one seed"
    perf = ", ".join(f"{s.tag}: {v:.1%}" for s, v in zip(settings, succ, strict=True))
    changes = spread > max(2 * noise, 0.05)
    return {"final_performance": f"{'yes' if changes else 'no clear change'} — success rate {perf} "
                                 f"(spread {spread:.1%} vs seed noise {noise_text})"}


def sweep(name: str, config: TrainConfig, eval_config: EvalConfig, seeds: Sequence[int],
          grid: dict[str, list[GridValue]], root: Path, names: ArtifactNames = DEFAULT_NAMES,
          **kw: Unpack[RunOptions]) -> int:
    """A grid over seeds x hyper-parameters; one aggregate per configuration plus a summary JSON.

    ``names``: the chapter's artifact names (default chapter 2's).
    """
    from fetchrl.analysis.plots import curves_of, plot_ablation

    plan, settings, any_failed = _run_grid(name, config, eval_config, seeds, grid, root, names=names, **kw)
    for s in settings:
        s.aggregate.to_json(artifacts.multi_seed_aggregate_path(Path(s.root), names))
    summary = SweepSummary(artifacts.now_iso(), name, config.env_id, list(seeds), config.total_steps, grid, settings)
    out = artifacts.sweep_summary_path(name, root, names)
    summary.to_json(out)
    _print_settings(f"sweep {name}", settings)
    groups = {s.tag: [RunPaths(config.env_id, seed, Path(s.root), names).tb_dir for seed in s.aggregate.seeds]
              for s in settings}
    png = _plot_or_none(plot_ablation, groups, artifacts.sweep_plot_path(name, root, names),
                        curves=curves_of(config.algorithm.on_policy))
    print_outputs({"sweep": out, "plot": png})
    return 1 if any_failed else 0


def plot(paths: RunPaths, *, seeds: int | None = None) -> int:
    from fetchrl.analysis.plots import curves_of, plot_multi_seed, plot_run
    from fetchrl.config import algorithm_named

    out = [plot_run(paths.tb_dir, paths.curves_png, algo=paths.names.algo, rules=paths.names.rules)]
    if seeds:
        algorithm = algorithm_named(paths.names.algo)
        logdirs = {s: RunPaths(paths.env_id, s, paths.root, paths.names).tb_dir for s in range(seeds)}
        out.append(plot_multi_seed(logdirs, artifacts.multi_seed_plot_path(paths.root, paths.names),
                                   curves=curves_of(algorithm.on_policy),
                                   algo_title=paths.names.title or algorithm.title))
    console.print("plots: " + ", ".join(str(p) for p in out), markup=False, highlight=False, soft_wrap=True)
    return 0


