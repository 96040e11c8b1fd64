"""Chapters as data: chapter 2's spec reproduces the chapter's paths, flags and criteria exactly, and a
new chapter (another number, algorithm name, defaults, criteria) gets its own CLI and artifact names
from its spec alone."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import pytest

from fetchrl import artifacts
from fetchrl.algos.base import UNIT_CLOSED, AlgoConfig, Algorithm, Bounds, field_docs, hyperparameter
from fetchrl.algos.ppo import PPO, PPOConfig
from fetchrl.artifacts import ArtifactNames, EvalResult, RunPaths, now_iso
from fetchrl.chapters import CHAPTERS
from fetchrl.chapters.base import Ablation, Chapter
from fetchrl.chapters.ch02 import CHAPTER as CH02
from fetchrl.chapters.ch03 import CHAPTER as CH03
from fetchrl.chapters.ch04 import CHAPTER as CH04
from fetchrl.cli import build_fetchrl_parser, build_parser, fetchrl_main, main
from fetchrl.config import HYPERPARAMETER_NAMES, Criterion, TrainConfig
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.report import CHAPTER_CRITERIA, check_criteria

ENV_ID = "FetchReachDense-v4"


@dataclasses.dataclass(frozen=True)
class _TauConfig(AlgoConfig):
    tau: float = hyperparameter(0.005, UNIT_CLOSED)
    """Soft update coefficient."""


def _chapter_9() -> Chapter:
    """A made-up chapter: a renamed algorithm (PPO's classes), other defaults, two criteria, no ablation."""
    algo = dataclasses.replace(PPO, name="xppo", title="XPPO")
    return Chapter(
        number=9, title="XPPO on FetchReach", script="scripts/ch09_xppo_reach.py", algorithm=algo,
        defaults=TrainConfig(env_id="FetchReach-v4", total_steps=4096, n_envs=2, algo=PPOConfig(n_steps=64, batch_size=64, gamma=0.95)),
        criteria=(Criterion("success rate", "success_rate", ">=", 0.95),
                  Criterion("final distance (m)", "final_distance_mean", "<", 0.03)),
        multi_seed_name="ch09_xppo_reach", commands=("train", "report", "sweep"), baselines=("zero",), seeds=3,
    )


# ============================================================================ chapter 2 stays exactly as it was
def test_chapter_2_paths_are_the_books() -> None:
    paths = CH02.paths(ENV_ID, 3, Path("out"))
    assert paths == RunPaths(ENV_ID, 3, Path("out"))  # the default names are chapter 2's
    assert {k: str(getattr(paths, k)) for k in ("checkpoint", "meta", "eval_json", "report_md", "diagnosis_json",
                                                 "curves_png", "html_report", "video_gif", "video_mp4", "tb_dir")} == {
        "checkpoint": "out/checkpoints/ppo_FetchReachDense-v4_seed3.zip",
        "meta": "out/checkpoints/ppo_FetchReachDense-v4_seed3.meta.json",
        "eval_json": "out/results/ch02_ppo_fetchreachdense-v4_seed3_eval.json",
        "report_md": "out/results/ch02_ppo_fetchreachdense-v4_seed3_report.md",
        "diagnosis_json": "out/results/ch02_ppo_fetchreachdense-v4_seed3_diagnosis.json",
        "curves_png": "out/results/ch02_ppo_fetchreachdense-v4_seed3_curves.png",
        "html_report": "out/results/ch02_report_seed3.html",
        "video_gif": "out/videos/ch02_ppo_fetchreachdense-v4_seed3.gif",
        "video_mp4": "out/videos/ch02_ppo_fetchreachdense-v4_seed3.mp4",
        "tb_dir": "out/runs/ppo/FetchReachDense-v4/seed3",
    }
    names = CH02.artifacts
    root = Path(".")
    assert str(artifacts.multi_seed_aggregate_path(root, names)) == "results/ch02_ppo_reachdense_aggregate.json"
    assert str(artifacts.multi_seed_plot_path(root, names)) == "results/ch02_ppo_reachdense_aggregate.png"
    assert str(artifacts.ablation_path("clip_range", root, names)) == "results/ch02_ablation_clip_range.json"
    assert str(artifacts.sweep_summary_path("lr", root, names)) == "results/ch02_sweep_lr.json"


def test_lower_layers_default_to_what_chapter_2_states() -> None:
    """Code that does not name a chapter gets chapter 2's defaults; the spec must say the same."""
    assert CH02.artifacts == artifacts.DEFAULT_NAMES
    assert CH02.defaults == TrainConfig()
    assert CH02.criteria == CHAPTER_CRITERIA
    assert CHAPTERS == {"ch02": CH02, "ch03": CH03, "ch04": CH04}


def test_chapter_2_hyperparameter_flags_are_generated_from_ppo_config() -> None:
    train = _subparser(build_parser(), "train")
    flags = {a.dest: a for a in train._actions}
    for f in PPOConfig.tunable_fields():
        action = flags[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")]
        assert action.default == getattr(PPOConfig(), f.name)
        assert field_docs(PPOConfig)[f.name] in (action.help or "")
    assert "policy" not in flags  # not tunable: SB3's policy class stays the chapter's
    assert build_parser().prog == "ch02_ppo_dense_reach.py"


def test_resume_names_are_the_meta_jsons_keys_in_order() -> None:
    assert PPO.resume_names == HYPERPARAMETER_NAMES
    assert tuple(TrainConfig().hyperparameters) == HYPERPARAMETER_NAMES


# ============================================================================ the run config composed with the algorithm's
def test_hyperparameters_given_flat_go_to_the_algorithms_dataclass() -> None:
    config = TrainConfig(total_steps=2048, n_envs=2, n_steps=256, clip_range=0.1)
    assert config.algo == PPOConfig(n_steps=256, clip_range=0.1)
    assert (config.n_steps, config.total_steps, config.rollout_size, config.steps_in_whole_rollouts) == (256, 2048,
                                                                                                      512, 2048)
    changed = config.replace(gamma=0.9, seed=4)
    assert changed.algo.gamma == 0.9 and changed.seed == 4 and changed.algo.n_steps == 256
    assert config.sb3_kwargs() == {k: v for k, v in config.algo.hyperparameters.items() if k != "policy"}
    assert pickle.loads(pickle.dumps(changed)) == changed  # sweeps send configs to worker processes
    assert TrainConfig().steps_in_whole_rollouts == 507_904  # 500,000 rounded up to whole 8,192-step rollouts
    with pytest.raises(TypeError, match="no field or PPOConfig hyper-parameter tau"):
        TrainConfig(tau=0.005)
    with pytest.raises(AttributeError):
        _ = config.tau


@pytest.mark.parametrize(("changes", "message"), [
    ({"clip_range": 0.0}, r"--clip-range must be in \(0, 1\], got 0.0"),
    ({"gae_lambda": 1.5}, r"--gae-lambda must be in \[0, 1\], got 1.5"),
    ({"learning_rate": math.inf}, r"--learning-rate must be > 0, got inf"),
    ({"ent_coef": -0.1}, r"--ent-coef must be >= 0, got -0.1"),
    ({"n_epochs": True}, r"--n-epochs must be a positive integer, got True"),
    ({"batch_size": 4096, "n_envs": 2, "n_steps": 1024},
     r"--batch-size 4096 is larger than a rollout \(n_steps \* n_envs = 2048\); lower it or raise --n-steps"),
    ({"total_steps": 0}, r"--total-steps must be a positive integer, got 0"),
])
def test_bad_values_are_refused_with_the_flag_and_the_allowed_values(changes: dict[str, object], message: str) -> None:
    with pytest.raises(FetchRLError, match=message):
        TrainConfig(**changes)


def test_bounds() -> None:
    unit = Bounds(low=0, high=1, low_open=True)
    assert [unit.contains(v) for v in (0.0, 1e-9, 1.0, 1.5, math.nan, True, "0.5")] == [False, True, True, False,
                                                                                     False, False, False]
    assert unit.describe() == "in (0, 1]" and Bounds(low=0).describe() == ">= 0"
    assert Bounds(low=1, integer=True).describe() == "a positive integer"
    assert not Bounds(low=1, integer=True).contains(2.0)


def test_criterion_comparisons() -> None:
    at_least = Criterion("success rate", "success_rate", ">=", 0.95)
    assert at_least.passes(0.95) and not at_least.passes(0.9499) and not at_least.passes(math.nan)
    assert not Criterion("final distance (m)", "final_distance_mean", "<", 0.02).passes(0.02)
    with pytest.raises(ValueError, match="op must be one of"):
        Criterion("x", "success_rate", "=>", 1.0)  # type: ignore[arg-type]


# ============================================================================ a new chapter from its spec alone
def test_another_chapter_gets_its_own_names() -> None:
    ch03 = ArtifactNames(chapter="ch03", algo="sac", multi_seed="ch03_sac_reachdense")
    paths = RunPaths(ENV_ID, 1, Path("."), ch03)
    assert str(paths.checkpoint) == "checkpoints/sac_FetchReachDense-v4_seed1.zip"
    assert str(paths.eval_json) == "results/ch03_sac_fetchreachdense-v4_seed1_eval.json"
    assert str(paths.tb_dir) == "runs/sac/FetchReachDense-v4/seed1"
    assert str(_chapter_9().paths("FetchReach-v4", 0).eval_json) == "results/ch09_xppo_fetchreach-v4_seed0_eval.json"


def test_another_chapter_gets_its_own_cli() -> None:
    chapter = _chapter_9()
    parser = build_parser(chapter)
    assert parser.prog == "ch09_xppo_reach.py"
    assert set(_subparser(parser, "COMMAND").choices) == {"train", "report", "sweep"}  # type: ignore[arg-type]
    args = parser.parse_args(["train", "--clip-range", "0.3"])
    assert (args.env_id, args.total_steps, args.n_envs, args.n_steps, args.gamma, args.clip_range) == (
        "FetchReach-v4", 4096, 2, 64, 0.95, 0.3)
    help_ = {a.dest: a.help for a in _subparser(parser, "COMMAND")._choices_actions}  # type: ignore[attr-defined]
    assert help_["report"] == "PASS/FAIL against the chapter's two criteria (exit 0/1), beside zero-action baselines"
    assert help_["train"].startswith("check the env, then train XPPO")
    sweep = _subparser(parser, "sweep")
    assert next(a for a in sweep._actions if a.dest == "seeds").default == 3


def test_a_chapter_validates_its_own_spec() -> None:
    with pytest.raises(ValueError, match="'policy', not a tunable"):
        dataclasses.replace(CH02, ablation=Ablation("2.9", "policy", (1.0,)))
    with pytest.raises(ValueError, match="unknown baseline"):
        dataclasses.replace(CH02, baselines=("random", "expert"))
    sac_like = Algorithm("sac", "SAC", _TauConfig, PPO.load_sb3_class, None, ())
    with pytest.raises(TypeError, match="defaults.algo is a PPOConfig, not sac's _TauConfig"):
        dataclasses.replace(CH02, algorithm=sac_like)
    assert field_docs(_TauConfig) == {"policy": field_docs(AlgoConfig)["policy"], "tau": "Soft update coefficient."}


def test_criteria_are_checked_generically() -> None:
    result = _eval_result(success=0.95, ret=-3.0, distance=0.025)
    assert [r.passed for r in check_criteria(result, _chapter_9().criteria)] == [True, True]
    assert [r.passed for r in check_criteria(result, CH02.criteria)] == [True, True, False]


# ============================================================================ the fetchrl console script
def test_fetchrl_names_the_chapter_and_runs_its_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_fetchrl_parser()
    assert parser.prog == "fetchrl"
    ch02 = _subparser(parser, "ch02")
    assert ch02.prog == "fetchrl ch02" and _subparser(ch02, "train").prog == "fetchrl ch02 train"
    with pytest.raises(SystemExit) as usage:
        fetchrl_main(["ch02", "train", "--gamma", "1.5"])
    assert usage.value.code == 2
    assert "fetchrl ch02 train: error: argument --gamma: gamma must be in (0, 1], got 1.5" in capsys.readouterr().err
    # The same command through both entry points: same exit code, same file.
    paths = CH02.paths(ENV_ID, 0, tmp_path)
    _eval_result(success=1.0, ret=-1.0, distance=0.01).to_json(paths.eval_json)
    common = ["report", "--root", str(tmp_path), "--no-progress"]
    assert fetchrl_main(["ch02", *common]) == 0
    first = paths.report_md.read_text()
    assert main(common) == 0 and paths.report_md.read_text() == first


def _subparser(parser: object, name: str) -> object:
    """The subparser ``name`` of ``parser`` (or, for ``"COMMAND"``, the subparsers action itself)."""
    import argparse

    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # type: ignore[attr-defined]
    return action if name == "COMMAND" else action.choices[name]


def _eval_result(*, success: float, ret: float, distance: float) -> EvalResult:
    """Two episodes with ``ret`` and ``distance`` (rows and aggregate agree, as a loaded eval JSON must;
    a ``success`` other than 0 or 1 is set on the aggregate only, for check_criteria)."""
    rows = [artifacts.EpisodeRecord(seed, ret, 50, success == 1.0, distance, 1 if success == 1.0 else None, 0.0, 0.0)
            for seed in (1_000_000, 1_000_001)]
    aggregate = artifacts.aggregate_episodes(rows) | {"success_rate": success}
    return EvalResult(now_iso(), "ppo", ENV_ID, "checkpoints/x.zip", "cpu", 2, [1_000_000, 1_000_001], True,
                      aggregate, rows, {})
