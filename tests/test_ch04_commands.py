"""Chapter 4's commands end to end: ``train``/``eval``/``report``/``all``/``video``/``check-env`` on both arms
(``--her``: SAC + SB3's HerReplayBuffer; without: the plain-buffer control) and both tasks.

Real short runs through the real CLI (1,500 SAC steps on FetchReach-v4, 1,000 of them the chapter's random
warm-up; 1,200 on FetchPush-v4), files read back with their schemas and SB3's own loader; Push's distances
are checked against the object's position in the simulator, not against fetchrl's own formula.
Nothing of SB3 or MuJoCo is mocked.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from PIL import Image

from fetchrl.artifacts import EvalResult, TrainMeta
from fetchrl.chapters.ch04 import CHAPTER as CH04
from fetchrl.chapters.ch04 import NO_HER
from fetchrl.cli import _train_config, build_parser, main
from fetchrl.config import EvalConfig
from fetchrl.runtime import Runtime
from fetchrl.tasks import checkenv, envs

REACH, PUSH = "FetchReach-v4", "FetchPush-v4"
#: Small buffer (a 1M-transition buffer would write a ~200 MB replay pickle per run), 4 envs (fewer updates), 2 episodes.
TRAIN = ["--n-envs", "4", "--buffer-size", "5000"]
REACH_STEPS = ["--total-steps", "1500", *TRAIN]
PUSH_STEPS = ["--total-steps", "1200", *TRAIN]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(argv: list[str]) -> int:
    try:
        return main(argv, CH04)
    except SystemExit as exc:  # argparse: --help and usage errors
        return int(exc.code or 0)


def _parse(argv: list[str]) -> argparse.Namespace:
    return build_parser(CH04).parse_args(argv)


# ============================================================================ the parser alone
def test_help_lists_the_commands_and_the_arm_and_task_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "report", "all", "compare", "ablation", "multi-seed", "check-env", "diagnose",
                    "plot", "video"):
        assert command in out, command
    assert _run(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "--her" in out and "--env" in out and "--n-sampled-goal" in out and "--ent-coef-min" in out
    assert "FetchPush-v4: 2000000" in out and "FetchPush-v4: 0.05" in out  # the per-task defaults are shown


def test_push_defaults_apply_when_not_given_and_given_flags_win() -> None:
    """FetchPush-v4 trains 2M steps with a fixed ent_coef 0.05 unless told otherwise; Reach keeps 500k and auto."""
    push = _train_config(_parse(["train", "--her", "--env", PUSH]))
    assert (push.env_id, push.total_steps, push.algo.ent_coef) == (PUSH, 2_000_000, 0.05)
    assert (push.algo.gamma, push.algo.learning_starts, push.algo.n_sampled_goal) == (0.95, 1_000, 4)
    given = _train_config(_parse(["train", "--her", "--env", PUSH, "--total-steps", "3000", "--ent-coef", "auto",
                                  "--n-sampled-goal", "8"]))
    assert (given.total_steps, given.algo.ent_coef, given.algo.n_sampled_goal) == (3000, "auto", 8)
    control = _train_config(_parse(["train", "--env", PUSH]))
    assert (control.total_steps, control.algo.ent_coef, control.algorithm.name) == (2_000_000, 0.05, "sac")
    assert not hasattr(control.algo, "n_sampled_goal")
    reach = _train_config(_parse(["train", "--her", "--env", REACH]))
    assert (reach.total_steps, reach.algo.ent_coef, reach.algorithm.name) == (500_000, "auto", "sac_her")


def test_push_report_criteria_and_reach_criterion() -> None:
    assert [c.name for c in CH04.criteria_for(PUSH)] == ["success rate", "final distance (m)"]
    assert [c.name for c in CH04.criteria_for(REACH)] == ["success rate"]
    assert NO_HER.criteria_for(PUSH) == CH04.criteria_for(PUSH)


# ============================================================================ Reach: both arms
@pytest.fixture(scope="module")
def reach_her(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """``all --her`` (check-env, train, eval, report, diagnose, plots, video, HTML) and its exit code."""
    root = tmp_path_factory.mktemp("ch04_reach_her")
    return root, _run(["all", "--her", "--env", REACH, "--root", str(root), "--no-progress", *REACH_STEPS,
                       "--n-eval-episodes", "2"])


@pytest.fixture(scope="module")
def reach_control(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """The control arm: ``train``, ``eval``, ``report``, then ``all`` on the finished run (no retraining, no
    video). The exit codes by command."""
    root = tmp_path_factory.mktemp("ch04_reach_control")
    base = ["--env", REACH, "--root", str(root), "--no-progress"]
    codes = {
        "train": _run(["train", *base, *REACH_STEPS]),
        "eval": _run(["eval", *base, "--n-eval-episodes", "2"]),
        "report": _run(["report", *base]),
        "all": _run(["all", *base, *REACH_STEPS, "--n-eval-episodes", "2", "--no-video"]),
    }
    return root, codes


def _load_sb3(checkpoint: Path, env_id: str):  # type: ignore[no-untyped-def]
    """SB3's own SAC.load, with the env a HerReplayBuffer needs (it asserts one)."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.vec_env import DummyVecEnv

    envs.register_envs()
    return SAC.load(checkpoint, env=DummyVecEnv([lambda: gym.make(env_id)]), device="cpu")


def test_her_arm_writes_the_books_artifacts(reach_her: tuple[Path, int]) -> None:
    from stable_baselines3 import HerReplayBuffer

    root, code = reach_her
    assert code in (0, 1)  # report's verdict: 1,500 steps do not solve Reach
    ckpt = root / "checkpoints" / "sac_her_FetchReach-v4_seed0.zip"
    assert ckpt.is_file() and (root / "runs" / "sac_her" / REACH / "seed0").is_dir()
    meta = TrainMeta.from_json(root / "checkpoints" / "sac_her_FetchReach-v4_seed0.meta.json")
    assert (meta.algo, meta.env_id, meta.num_timesteps, meta.complete) == ("sac_her", REACH, 1500, True)
    hp = meta.hyperparameters
    assert (hp["gamma"], hp["learning_starts"], hp["n_sampled_goal"], hp["goal_selection_strategy"]) == \
        (0.95, 1000, 4, "future")
    model = _load_sb3(ckpt, REACH)
    assert model.replay_buffer_class is HerReplayBuffer  # what SB3 saved: its own class, not fetchrl's fast one
    assert model.replay_buffer_kwargs == {"n_sampled_goal": 4, "goal_selection_strategy": "future"}
    assert model.gamma == 0.95 and model.learning_starts == 1000


def test_her_arm_all_writes_eval_report_video_and_html(reach_her: tuple[Path, int]) -> None:
    root, code = reach_her
    paths = CH04.paths(REACH, 0, root)
    eval_json = root / "results" / "ch04_sac_her_fetchreach-v4_seed0_eval.json"
    assert paths.eval_json == eval_json
    result = EvalResult.from_json(eval_json)  # chapter 2's schema, every check of it
    assert (result.algo, result.env_id, result.n_episodes, result.policy) == ("sac_her", REACH, 2, "trained")
    assert set(json.loads(eval_json.read_text())) == {f.name for f in dataclasses.fields(EvalResult)}
    assert code == (0 if result.aggregate["success_rate"] >= 0.9 else 1)
    report = paths.report_md.read_text()
    assert report.startswith("# Chapter 4 report: SAC + HER on FetchReach-v4")
    assert "| success rate |" in report and "final distance (m)" not in report  # Reach: one criterion
    gif = Image.open(paths.video_gif)
    assert gif.n_frames == 5 * 51  # 5 episodes of 50 steps plus the reset frame
    html = paths.html_report
    assert html == root / "results" / "ch04_sac_her_fetchreach-v4_seed0_report.html"
    page = html.read_text()
    assert "Chapter 4 report: SAC + HER on FetchReach-v4, seed 0" in page and "data:image/gif;base64," in page
    assert "gripper-to-goal distance" in page
    assert not list(root.rglob(".*"))  # no temp file (atomic writes) and no lock left behind


def test_her_arm_hints_keep_her(reach_her: tuple[Path, int], capsys: pytest.CaptureFixture[str]) -> None:
    """A second ``train --her`` over the finished run is refused with a command that retrains the same arm."""
    root, _ = reach_her
    before = (root / "checkpoints" / "sac_her_FetchReach-v4_seed0.zip").read_bytes()
    code = _run(["train", "--her", "--env", REACH, "--root", str(root), "--no-progress", *REACH_STEPS])
    err = capsys.readouterr().err
    assert code != 0 and "holds a finished run (1500 steps)" in err
    assert f"python scripts/ch04_her_sparse_reach_push.py train --her --force --seed 0 --total-steps 1500 " \
           f"--root {root} --n-envs 4 --buffer-size 5000" in err
    assert (root / "checkpoints" / "sac_her_FetchReach-v4_seed0.zip").read_bytes() == before


def test_control_arm_commands(reach_control: tuple[Path, dict[str, int]]) -> None:
    from stable_baselines3 import HerReplayBuffer

    root, codes = reach_control
    assert codes["train"] == 0 and codes["eval"] == 0 and codes["report"] in (0, 1) and codes["all"] == codes["report"]
    ckpt = root / "checkpoints" / "sac_FetchReach-v4_seed0.zip"
    meta = TrainMeta.from_json(ckpt.with_suffix(".meta.json"))
    assert (meta.algo, meta.hyperparameters["gamma"], meta.hyperparameters["learning_starts"]) == ("sac", 0.95, 1000)
    assert "n_sampled_goal" not in meta.hyperparameters
    assert _load_sb3(ckpt, REACH).replay_buffer_class is not HerReplayBuffer
    assert (root / "runs" / "sac" / REACH / "seed0").is_dir()
    paths = NO_HER.paths(REACH, 0, root)
    assert EvalResult.from_json(paths.eval_json).algo == "sac"
    assert paths.eval_json.name == "ch04_sac_fetchreach-v4_seed0_eval.json"
    assert paths.report_md.read_text().startswith("# Chapter 4 report: SAC without HER on FetchReach-v4")
    # `all` reused the finished run (one training, same weights) and wrote the arm's own HTML page
    assert meta.created_at == TrainMeta.from_json(ckpt.with_suffix(".meta.json")).created_at
    page = paths.html_report.read_text()
    assert paths.html_report.name == "ch04_sac_fetchreach-v4_seed0_report.html"
    assert "SAC without HER on FetchReach-v4" in page and "no video was recorded" in page
    assert not paths.video_gif.exists()


# ============================================================================ Push: the object's distance
def _object_goal_distance(obs: dict[str, np.ndarray]) -> float:
    """||object position - goal||, the object's position read from the observation's own slot (3:6 in Push's
    25-vector: gripper 0:3, object 3:6), not from achieved_goal."""
    return float(np.linalg.norm(obs["observation"][3:6] - obs["desired_goal"]))


def _gripper_goal_distance(obs: dict[str, np.ndarray]) -> float:
    return float(np.linalg.norm(obs["observation"][0:3] - obs["desired_goal"]))


@pytest.fixture(scope="module")
def push(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("ch04_push")
    base = ["--her", "--env", PUSH, "--root", str(root), "--no-progress"]
    printed = io.StringIO()
    codes = {"train": _run(["train", *base, *PUSH_STEPS])}
    with contextlib.redirect_stdout(printed):
        codes["eval"] = _run(["eval", *base, "--n-eval-episodes", "2"])
    (root / "eval_stdout.txt").write_text(printed.getvalue())
    codes |= {"report": _run(["report", *base]), "video": _run(["video", *base, "--episodes", "1"])}
    return root, codes


def _replay(model, env_id: str, seed: int) -> list[dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    """Every observation of one deterministic episode of ``model`` on Gymnasium-Robotics' own env."""
    envs.register_envs()
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    seen = [obs]
    done = False
    while not done:
        action, _ = model.predict({k: v[None] for k, v in obs.items()}, deterministic=True)
        obs, _, terminated, truncated, _ = env.step(action[0])
        seen.append(obs)
        done = terminated or truncated
    env.close()
    return seen


def test_push_eval_final_distance_is_the_objects(push: tuple[Path, dict[str, int]]) -> None:
    from fetchrl.pipeline.checkpoints import load_model

    root, codes = push
    assert codes["train"] == 0 and codes["eval"] == 0
    paths = CH04.paths(PUSH, 0, root)
    assert paths.checkpoint.name == "sac_her_FetchPush-v4_seed0.zip"
    meta = TrainMeta.from_json(paths.meta)
    assert (meta.hyperparameters["ent_coef"], meta.total_steps) == (0.05, 1200)  # Push's default, given steps
    result = EvalResult.from_json(paths.eval_json)
    assert result.env_id == PUSH and result.n_episodes == 2
    assert f"final_distance_mean {result.aggregate['final_distance_mean']:.4f} m (object-to-goal)" in \
        (root / "eval_stdout.txt").read_text()
    model = load_model(paths, Runtime.decide(PUSH, reference_env=True))
    for episode in result.per_episode:
        terminal = _replay(model, PUSH, episode.seed)[-1]
        assert episode.final_distance == pytest.approx(_object_goal_distance(terminal), abs=1e-6)
        assert abs(episode.final_distance - _gripper_goal_distance(terminal)) > 1e-3  # not the gripper's


def test_push_report_has_both_criteria_and_says_what_the_distance_is(push: tuple[Path, dict[str, int]]) -> None:
    root, codes = push
    paths = CH04.paths(PUSH, 0, root)
    result = EvalResult.from_json(paths.eval_json)
    passed = result.aggregate["success_rate"] >= 0.9 and result.aggregate["final_distance_mean"] < 0.05
    assert codes["report"] == (0 if passed else 1)
    report = paths.report_md.read_text()
    assert "| success rate |" in report and "| final distance (m) | < 0.0500 |" in report
    assert "object-to-goal distance" in report
    assert "random policy" in report and "zero policy" in report


def test_push_html_report_names_the_arm_the_task_and_the_distance(push: tuple[Path, dict[str, int]]) -> None:
    from fetchrl.analysis.html_report import write_html_report

    root, _ = push
    paths = CH04.paths(PUSH, 0, root)
    out = write_html_report(paths, result=EvalResult.from_json(paths.eval_json), baselines=[],
                            meta=TrainMeta.from_json(paths.meta), diagnosis=None, curves_png=None, gif=paths.video_gif,
                            criteria=CH04.criteria_for(PUSH))
    assert out == root / "results" / "ch04_sac_her_fetchpush-v4_seed0_report.html"
    page = out.read_text()
    assert "Chapter 4 report: SAC + HER on FetchPush-v4, seed 0" in page
    assert "success rate &gt;= 90% and mean final distance &lt; 0.05 m" in page
    assert "Final distance on FetchPush-v4 is the object-to-goal distance at the episode&#x27;s end" in page
    assert 'alt="video of the trained policy with the object-to-goal distance"' in page


def test_push_baselines_score_the_objects_distance() -> None:
    """Random and zero-action baselines run on Push; the motionless arm leaves the object where it starts, so
    its final distance is the object's initial distance to the goal (the gripper's would be another number)."""
    from fetchrl.pipeline.evaluate import baseline_results

    runtime = Runtime.decide(PUSH, reference_env=False)
    random_, zero = baseline_results(runtime, EvalConfig(n_episodes=2))
    assert (random_.policy, zero.policy, zero.env_id) == ("random", "zero", PUSH)
    envs.register_envs()
    env = gym.make(PUSH)
    for episode in zero.per_episode:
        start, _ = env.reset(seed=episode.seed)
        assert episode.final_distance == pytest.approx(_object_goal_distance(start), abs=2e-3)
        assert not episode.success and episode.return_ == -50.0
    env.close()
    assert all(-50.0 <= e.return_ <= 0.0 for e in random_.per_episode)


def test_push_video_captions_the_object_to_goal_distance(push: tuple[Path, dict[str, int]]) -> None:
    from fetchrl.analysis.video import record_clip
    from fetchrl.pipeline.checkpoints import load_model

    root, codes = push
    paths = CH04.paths(PUSH, 0, root)
    assert codes["video"] == 0
    gif = Image.open(paths.video_gif)
    assert gif.n_frames == 51 and gif.size == (480, 360)
    assert not [p for p in paths.video_gif.parent.iterdir() if p.name.startswith(".")]  # written atomically
    runtime = Runtime.decide(PUSH, reference_env=False)
    clip = record_clip(paths, runtime, episodes=1, width=160, height=120)
    assert {label.measured for label in clip.labels} == {"object-to-goal"}
    assert clip.labels[0].distance_caption == "object-to-goal distance"
    observed = _replay(load_model(paths, runtime), PUSH, EvalConfig().seed_offset)
    assert [label.distance_m for label in clip.labels] == pytest.approx([_object_goal_distance(o) for o in observed],
                                                                        abs=1e-6)


def test_reach_video_captions_the_grippers_distance() -> None:
    assert envs.goal_distance_name(REACH) == "gripper-to-goal"
    assert envs.goal_distance_name("FetchReachDense-v4") == "gripper-to-goal"
    assert envs.goal_distance_name(PUSH) == "object-to-goal"
    assert envs.goal_distance_name("FetchPickAndPlace-v4") == "object-to-goal"


# ============================================================================ check-env
def test_check_env_passes_on_push(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert _run(["check-env", "--env", PUSH, "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "'observation': (25,)" in out and "'achieved_goal': (3,)" in out and "(4,) (expected (4,))" in out
    assert "sparse rewards" in out and "FAIL" not in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("env_id", [PUSH, REACH])
def test_check_env_rows_per_task(env_id: str) -> None:
    checks = {c.name: c for c in checkenv.run_checks(Runtime.decide(env_id, reference_env=False), n_steps=60)}
    assert all(c.passed for c in checks.values()), checks
    width = 25 if env_id == PUSH else 10
    assert f"'observation': ({width},)" in checks["observation shapes"].detail
    sparse = checks["sparse rewards (60 random steps)"]
    assert "expected only -1 and 0" in sparse.detail


def test_check_env_expectations() -> None:
    assert checkenv.expected_obs_shapes(PUSH)["observation"] == (25,)
    assert checkenv.expected_obs_shapes(REACH)["observation"] == (10,)
    assert checkenv.sparse(PUSH) and checkenv.sparse(REACH) and not checkenv.sparse("FetchPushDense-v4")


def test_check_env_judges_a_dense_task_by_its_reward_range() -> None:
    rows = {c.name: c for c in checkenv.run_checks(Runtime.decide("FetchReachDense-v4", reference_env=False),
                                                    n_steps=20)}
    assert rows["reward range (20 random steps)"].passed and not any(name.startswith("sparse") for name in rows)
