"""Chapter 4's truth serum: HERDiagnosticsCallback, the ent_coef floor, and ``diagnose --algo sac_her``.

Real short trainings, each a few seconds to ~25 s on the shared 2-core machine:

- two chapter-4 runs through the CLI (``train --her --env FetchPush-v4``: FastSAC, FlatHerReplayBuffer, the
  fast env and process VecEnv, the callbacks attached by ``pipeline.train``), 4 envs, 1,600 steps,
  learning_starts 400, batch 64, ``--ent-coef auto_0.008 --learning-rate 3e-3``: Adam walks log(ent_coef)
  down ~0.003 per gradient step, so in the 300 updates the coefficient falls from 0.008 to ~0.0035 with
  success at 0 -- the book's Push collapse (auto down to 0.005 while success stays ~5 %) in miniature.
  The second run adds ``--ent-coef-min 0.006``, a floor above where the first one ends;
- SB3's own ``SAC`` + ``HerReplayBuffer`` on Gymnasium-Robotics' FetchReach-v4 (2 envs, 1,200 steps): with
  the callback, without it (bit-identical training), and with the classic HER bug -- an env whose
  ``compute_reward`` scores its own goal instead of the goal it is given -- which ``her_inactive`` catches;
- chapter 4's no-HER arm (SB3's SAC, plain buffer) on FetchPush-v4, its policy still near random, with a
  wrapper recording every episode's object position at its start and end: the callback's
  ``her/object_displacement`` equals those numbers, and the object "never moved" (judged with a scaled horizon).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import SAC, HerReplayBuffer
from stable_baselines3.common.logger import configure
from stable_baselines3.common.save_util import load_from_zip_file
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor

from fetchrl import metrics
from fetchrl.algos.fastsac import FastSAC
from fetchrl.analysis import diagnose, plots
from fetchrl.analysis.rules import her as her_rules
from fetchrl.analysis.tbreader import Series, read_scalars
from fetchrl.chapters.ch04 import CHAPTER
from fetchrl.cli import main
from fetchrl.pipeline.her_callbacks import HERDiagnosticsCallback, reward0_fractions
from fetchrl.pipeline.setup import attach_goal_reward
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs
from fetchrl.tasks.envs import has_object
from fetchrl.vecenv.factory import make_vec_env

PUSH, REACH = "FetchPush-v4", "FetchReach-v4"
PUSH_ARGS = ["--total-steps", "1600", "--n-envs", "4", "--learning-starts", "400", "--batch-size", "64",
             "--buffer-size", "20000", "--ent-coef", "auto_0.008", "--learning-rate", "3e-3", "--no-progress"]
FLOOR = 0.006
SB3_STEPS = 1200


# ---------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def push_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"auto": root, "floor": root}``: the collapsing Push run and the same run with --ent-coef-min."""
    roots = {}
    for name, extra in (("auto", []), ("floor", ["--ent-coef-min", str(FLOOR)])):
        root = tmp_path_factory.mktemp(f"push_{name}")
        assert main(["train", "--her", "--env", PUSH, "--root", str(root), *PUSH_ARGS, *extra], CHAPTER) == 0
        roots[name] = root
    return roots


def gym_env(env_id: str) -> gym.Env:  # type: ignore[type-arg]
    """Gymnasium-Robotics' own env (the reference path), registered by fetchrl."""
    return envs.make_env(Runtime.decide(env_id, reference_env=True))


def tb_dir(root: Path) -> Path:
    return root / "runs" / "sac_her" / PUSH / "seed0"


class GoalIgnoringReward(gym.Wrapper):  # type: ignore[type-arg]
    """The classic HER bug: ``compute_reward`` scores the env's *own* current goal, not the goal it is given
    (the stored rewards, computed by the env at each step, stay right)."""

    def compute_reward(self, achieved_goal: Any, desired_goal: Any, info: Any) -> Any:
        goal = np.broadcast_to(self.unwrapped.goal, np.shape(achieved_goal))  # type: ignore[attr-defined]
        return self.unwrapped.compute_reward(achieved_goal, goal, info)  # type: ignore[attr-defined]


def sb3_her(logdir: Path, *, callback: bool = True, broken: bool = False, fast: bool = False) -> SAC:
    """A real short SAC + HER run on FetchReach-v4 (SB3's classes, or FastSAC on fetchrl's fast path)."""
    if fast:
        runtime = Runtime.decide(REACH)
        env: Any = make_vec_env(runtime, 2, seed=0)
    else:
        wrap = GoalIgnoringReward if broken else (lambda e: e)
        env = VecMonitor(DummyVecEnv([lambda: wrap(gym_env(REACH)) for _ in range(2)]))
    cls = FastSAC if fast else SAC
    model = cls("MultiInputPolicy", env, replay_buffer_class=HerReplayBuffer, buffer_size=5000, learning_starts=300,
                batch_size=64, gamma=0.95, seed=0)
    if fast:
        attach_goal_reward(model, runtime)
    model.set_logger(configure(str(logdir), ["tensorboard"]))
    cb = HERDiagnosticsCallback(every=50, seed=1) if callback else None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small nets on a shared 2-core machine
    try:
        model.learn(SB3_STEPS, callback=cb, log_interval=4)
    finally:
        torch.set_num_threads(threads)
        env.close()
    return model


PUSH_SAC_STEPS = 1000


@pytest.fixture(scope="module")
def push_sac(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[float]]:
    """Chapter 4's no-HER arm (SB3's SAC, plain buffer) on Gymnasium-Robotics' FetchPush-v4, 2 envs, 1,000 steps,
    400 updates at SB3's learning rate (the policy still close to random), a log dump every 2 episodes; a
    wrapper records ``||object at the episode's end - at its start||`` of every episode. Returns (logdir, those)."""
    seen: list[float] = []

    class Record(gym.Wrapper):  # type: ignore[type-arg]
        def reset(self, **kwargs: Any) -> Any:
            obs, info = self.env.reset(**kwargs)
            self.start = obs["achieved_goal"].copy()
            return obs, info

        def step(self, action: Any) -> Any:
            obs, reward, terminated, truncated, info = self.env.step(action)
            if terminated or truncated:
                seen.append(float(np.linalg.norm(obs["achieved_goal"] - self.start)))
            return obs, reward, terminated, truncated, info

    logdir = tmp_path_factory.mktemp("push_sac")
    env = VecMonitor(DummyVecEnv([lambda: Record(gym_env(PUSH)) for _ in range(2)]))
    model = SAC("MultiInputPolicy", env, buffer_size=2000, learning_starts=200, batch_size=64, gamma=0.95, seed=3)
    model.set_logger(configure(str(logdir), ["tensorboard"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.learn(PUSH_SAC_STEPS, callback=HERDiagnosticsCallback(track_object=True), log_interval=2)
    finally:
        torch.set_num_threads(threads)
        env.close()
    return logdir, seen


_SB3: dict[str, tuple[Path, SAC]] = {}


@pytest.fixture(scope="module")
def sb3_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, SAC]]:
    """``sb3_run(name)`` -> (logdir, model), trained once per module: "healthy", "plain" (no callback), "broken"."""
    kwargs = {"healthy": {}, "plain": {"callback": False}, "broken": {"broken": True}}

    def get(name: str) -> tuple[Path, SAC]:
        if name not in _SB3:
            logdir = tmp_path_factory.mktemp(name)
            _SB3[name] = (logdir, sb3_her(logdir, **kwargs[name]))
        return _SB3[name]
    return get


def finding(diag: diagnose.Diagnosis, fid: str) -> diagnose.Finding:
    (f,) = [f for f in diag.findings if f.id == fid]
    return f


# ---------------------------------------------------------------- the entropy coefficient's floor
def test_auto_ent_coef_collapses_on_push_and_diagnose_says_so(push_runs: dict[str, Path]) -> None:
    logdir = tb_dir(push_runs["auto"])
    s = read_scalars(logdir, (metrics.ENT_COEF, metrics.SUCCESS_RATE))
    assert float(s[metrics.ENT_COEF].values.min()) < FLOOR  # without the floor it falls below it
    diag = diagnose.diagnose(logdir, algo="sac_her")
    f = finding(diag, "ent_coef_collapse")
    assert f.severity == "warning", f.evidence
    assert f.observed["threshold"] == her_rules.HER_ENT_COEF_COLLAPSE == 0.005
    assert "--ent-coef 0.05" in f.fix and "--ent-coef-min" in f.fix
    assert f.at_step is not None and 400 < f.at_step <= 1600
    # the CLI's diagnose for the HER arm uses these rules (exit 1: a warning sign fired)
    assert main(["diagnose", "--her", "--env", PUSH, "--root", str(push_runs["auto"]), "--json"], CHAPTER) == 1


def test_ent_coef_min_keeps_the_learned_coefficient_at_the_floor(push_runs: dict[str, Path]) -> None:
    logdir = tb_dir(push_runs["floor"])
    logged = read_scalars(logdir, (metrics.ENT_COEF,))[metrics.ENT_COEF].values
    assert logged.size >= 2 and float(logged.min()) >= FLOOR * (1 - 1e-6)  # every update used >= the floor
    _data, _params, variables = load_from_zip_file(push_runs["floor"] / "checkpoints" / f"sac_her_{PUSH}_seed0.zip",
                                                   device="cpu")
    assert variables is not None
    assert float(torch.exp(variables["log_ent_coef"].detach())) == pytest.approx(FLOOR, rel=1e-6)  # sits on it
    meta = json.loads((push_runs["floor"] / "checkpoints" / f"sac_her_{PUSH}_seed0.meta.json").read_text())
    assert meta["hyperparameters"]["ent_coef_min"] == FLOOR
    assert finding(diagnose.diagnose(logdir, algo="sac_her"), "ent_coef_collapse").severity == "ok"


# ---------------------------------------------------------------- the callback's numbers
def test_push_run_logs_her_fractions_and_object_displacement(push_runs: dict[str, Path]) -> None:
    s = read_scalars(tb_dir(push_runs["auto"]), metrics.HER_OPTIONAL)
    relabeled, real = s[metrics.HER_RELABELED_REWARD0].values, s[metrics.HER_REAL_REWARD0].values
    # the object hardly moves: nearly every relabeled goal is where it already lies, a success
    assert np.all(relabeled > 0.8) and np.all(real < 0.3)
    displacement = s[metrics.OBJECT_DISPLACEMENT].values
    assert displacement.size >= 2 and np.all((displacement >= 0) & (displacement < 0.5))


def test_object_displacement_is_each_episodes_start_to_end_distance(push_sac: tuple[Path, list[float]]) -> None:
    """Every log dump (each 2 episodes, one per env) holds the mean of exactly the displacements the wrapper saw."""
    logdir, seen = push_sac
    logged = read_scalars(logdir, (metrics.OBJECT_DISPLACEMENT,))[metrics.OBJECT_DISPLACEMENT]
    per_dump = np.asarray(seen).reshape(-1, 2).mean(axis=1)  # the two envs end their episodes together
    assert logged.values.size == per_dump.size == PUSH_SAC_STEPS // 100
    assert np.allclose(logged.values, per_dump, rtol=1e-5, atol=1e-7)
    assert float(per_dump.max()) > 0  # the arm does bump the object now and then
    assert metrics.HER_RELABELED_REWARD0 not in read_scalars(logdir, None)  # no HER buffer: no fractions
    assert has_object(PUSH) and has_object("FetchPushDense-v4") and not has_object(REACH)


def test_her_callback_leaves_training_bit_identical(sb3_run: Callable[[str], tuple[Path, SAC]]) -> None:
    (with_dir, a), (without_dir, b) = sb3_run("healthy"), sb3_run("plain")
    for (name, pa), pb in zip(a.policy.state_dict().items(), b.policy.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name  # actor, both critics and their targets
    assert torch.equal(a.log_ent_coef, b.log_ent_coef)
    for key in ("observation", "desired_goal"):
        assert np.array_equal(a.replay_buffer.observations[key], b.replay_buffer.observations[key]), key
    ta, tb = read_scalars(with_dir, metrics.SAC_CURVES), read_scalars(without_dir, metrics.SAC_CURVES)
    for tag in metrics.SAC_CURVES:
        assert np.array_equal(ta[tag].values, tb[tag].values), tag
    assert metrics.HER_RELABELED_REWARD0 not in read_scalars(without_dir, None)


def test_her_callback_on_fastsac_and_the_flat_buffer_is_bit_identical_too(
        sb3_run: Callable[[str], tuple[Path, SAC]], tmp_path: Path) -> None:
    """fetchrl's path (FastSAC, FlatHerReplayBuffer with its in-process compute_reward, fast env, process
    VecEnv) with the callback: the same parameters as SB3's plain run without it."""
    fast = sb3_her(tmp_path, fast=True)
    plain = sb3_run("plain")[1]
    for (name, pa), pb in zip(fast.policy.state_dict().items(), plain.policy.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert read_scalars(tmp_path, (metrics.HER_RELABELED_REWARD0,))[metrics.HER_RELABELED_REWARD0].values.size >= 2


@pytest.mark.parametrize("strategy", ["future", "final", "episode"])
def test_fractions_match_what_the_buffer_itself_samples(sb3_run: Callable[[str], tuple[Path, SAC]],
                                                        strategy: str) -> None:
    """The callback's mirror of SB3's relabeling against SB3's own ``sample`` on the same buffer (drawn here,
    outside training): the same reward-0 fractions within sampling error, for each goal strategy."""
    from stable_baselines3.her.goal_selection_strategy import KEY_TO_GOAL_STRATEGY

    buffer = sb3_run("healthy")[1].replay_buffer
    assert isinstance(buffer, HerReplayBuffer)
    buffer.goal_selection_strategy = KEY_TO_GOAL_STRATEGY[strategy]
    try:
        mine = reward0_fractions(buffer, np.random.default_rng(0), batch_size=20_000)
        np.random.seed(0)
        n_virtual = int(buffer.her_ratio * 20_000)
        rewards = buffer.sample(20_000).rewards.numpy().ravel()  # SB3: real first, then the virtual ones
    finally:
        buffer.goal_selection_strategy = KEY_TO_GOAL_STRATEGY["future"]
    assert mine is not None
    assert mine.relabeled == pytest.approx(float(np.mean(rewards[-n_virtual:] == 0)), abs=0.02)
    assert mine.real == pytest.approx(float(np.mean(rewards[:-n_virtual] == 0)), abs=0.02)


# ---------------------------------------------------------------- each rule provoked, the healthy run quiet
def test_healthy_her_run_has_no_warning(sb3_run: Callable[[str], tuple[Path, SAC]]) -> None:
    logdir = sb3_run("healthy")[0]
    diag = diagnose.diagnose(logdir, algo="sac_her")
    assert diag.healthy, diag.summary()
    inactive = finding(diag, "her_inactive")
    assert inactive.severity == "ok" and inactive.observed["relabeled_median"] > 0.1
    assert finding(diag, "object_never_moved").severity == "info"  # Reach: no object
    assert "too early to judge" in finding(diag, "success_flat").evidence


def test_goal_ignoring_compute_reward_fires_her_inactive(sb3_run: Callable[[str], tuple[Path, SAC]]) -> None:
    diag = diagnose.diagnose(sb3_run("broken")[0], algo="sac_her")
    f = finding(diag, "her_inactive")
    assert f.severity == "warning", f.evidence
    assert "compute_reward" in f.fix and f.at_step is not None
    assert not diag.healthy


def test_object_never_moved_and_success_flat_past_scaled_horizons(push_sac: tuple[Path, list[float]]) -> None:
    """The no-HER Push run's real curves: the object barely moved and success stayed 0; judged with horizons
    scaled to the short run (300 steps), both fire; with the chapter's horizons it is too early to judge."""
    logdir = push_sac[0]
    s = diagnose.read_run(logdir, "sac_her")
    disp, ent, succ = s[metrics.OBJECT_DISPLACEMENT], s[metrics.ENT_COEF], s[metrics.SUCCESS_RATE]
    start = int(ent.steps[0])
    moved = her_rules.check_object_never_moved(disp, ent, succ, horizon=300)
    assert moved.severity == "warning" and moved.at_step == start + 300, moved.evidence
    assert "exploration" in moved.likely_problem and moved.observed["last_half_median_m"] <= 0.01
    assert her_rules.check_object_never_moved(disp, ent, succ).severity == "info"
    flat = her_rules.check_her_success_flat(succ, ent, horizon=300)
    assert flat.severity == "warning" and flat.at_step == start + 300
    assert her_rules.check_her_success_flat(succ, ent).severity == "info"
    diag = diagnose.diagnose(logdir, algo="sac_her")  # the chapter's horizons: nothing judged too early
    assert finding(diag, "her_inactive").severity == "info"  # a plain buffer has no relabeling to judge
    assert diag.healthy, diag.summary()


def test_rule_thresholds_on_edge_cases() -> None:
    steps = np.array([1000, 2000, 3000, 4000])
    ent = Series(steps, np.full(4, 0.05))
    # a fixed 0.05 never collapses; chapter 3's 1e-3 line would have missed the book's 0.005
    assert her_rules.check_her_ent_coef_collapse(ent, Series(steps, np.zeros(4))).severity == "ok"
    book = Series(steps, np.array([0.5, 0.05, 0.005, 0.005]))
    assert her_rules.check_her_ent_coef_collapse(book, Series(steps, np.full(4, 0.05))).at_step == 3000
    # HER adding successes early, and late when the real data caught up: ok; adding none: warning
    good = her_rules.check_her_inactive(Series(steps, np.full(4, 0.4)), Series(steps, np.full(4, 0.02)), ent)
    solved = her_rules.check_her_inactive(Series(steps, np.full(4, 0.9)), Series(steps, np.full(4, 0.9)), ent)
    none = her_rules.check_her_inactive(Series(steps, np.full(4, 0.05)), Series(steps, np.full(4, 0.04)), ent)
    assert (good.severity, solved.severity, none.severity) == ("ok", "ok", "warning")
    assert her_rules.check_her_inactive(None, None, ent).severity == "info"
    # Push's ~5 % floor with a noisy 0.12 peak is still flat; a real rise is not
    noisy = Series(steps, np.array([0.05, 0.12, 0.05, 0.06]))
    assert her_rules.check_her_success_flat(noisy, ent, horizon=1000).severity == "warning"
    rising = Series(steps, np.array([0.05, 0.1, 0.3, 0.6]))
    assert her_rules.check_her_success_flat(rising, ent, horizon=1000).severity == "ok"
    # an object pushed ~10 cm per episode has moved
    pushed = Series(steps, np.array([0.004, 0.02, 0.1, 0.12]))
    assert her_rules.check_object_never_moved(pushed, ent, noisy, horizon=1000).severity == "ok"


def test_registry_and_plot_of_a_her_run(push_runs: dict[str, Path], tmp_path: Path) -> None:
    assert diagnose.RULES["sac_her"].required == diagnose.RULES["sac"].required
    assert set(metrics.HER_OPTIONAL) <= set(diagnose.RULES["sac_her"].optional)
    out = plots.plot_run(tb_dir(push_runs["auto"]), tmp_path / "curves.png", algo="sac_her")
    assert out.stat().st_size > 20_000 and out.read_bytes()[:4] == b"\x89PNG"


def test_the_control_arm_is_judged_by_chapter_4s_rules(push_sac: tuple[Path, list[float]],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """SAC without HER on sparse Push (the real short run): chapter 4's sparse-goal tests and numbers, not chapter
    3's dense-Reach milestones; a flat control run is reported as the expected result, pointing at --her."""
    logdir = push_sac[0]
    assert CHAPTER.control is not None
    assert (CHAPTER.control.names_for(PUSH).rules, CHAPTER.names_for(PUSH).rules) == ("sac_sparse", "sac_her")
    diag = diagnose.diagnose(logdir, algo="sac_sparse")
    progress = finding(diag, "success_progress")
    assert "without HER" in progress.evidence and "50-150k" not in progress.evidence, progress.evidence
    assert "0.47" not in finding(diag, "ent_coef_trend").evidence
    assert not {"her_inactive", "object_never_moved"} & {f.id for f in diag.findings}
    s = diagnose.read_run(logdir, "sac_sparse")
    flat = her_rules.check_control_success_flat(s[metrics.SUCCESS_RATE], s[metrics.ENT_COEF], horizon=300)
    assert flat.severity == "warning" and "expected result" in flat.likely_problem and "--her" in flat.fix
    # the command picks the arm's rules: without --her the control's, with it HER's
    assert main(["diagnose", "--env", PUSH, "--logdir", str(logdir), "--json"], CHAPTER) == 0
    ids = {f["id"]: f for f in json.loads(capsys.readouterr().out)["findings"]}
    assert "without HER" in ids["success_progress"]["evidence"] and "her_inactive" not in ids
    assert main(["diagnose", "--her", "--env", PUSH, "--logdir", str(logdir), "--json"], CHAPTER) == 0
    ids = {f["id"]: f for f in json.loads(capsys.readouterr().out)["findings"]}
    assert "her_inactive" in ids and "with HER" in ids["success_progress"]["evidence"]
    assert "50-150k" not in ids["success_progress"]["evidence"]


def test_the_control_arms_figures_are_titled_by_the_arm(push_sac: tuple[Path, list[float]], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``plot --seeds`` of the control arm names it "SAC without HER" (it said "SAC", chapter 3's algorithm)."""
    import shutil

    from fetchrl import workflows

    assert CHAPTER.control is not None
    paths = CHAPTER.control.paths(PUSH, 0, tmp_path)
    shutil.copytree(push_sac[0], paths.tb_dir)
    titles: list[str] = []
    real = plots.plot_multi_seed

    def recording(*args: Any, **kw: Any) -> Path:
        titles.append(kw["algo_title"])
        return real(*args, **kw)

    monkeypatch.setattr(plots, "plot_multi_seed", recording)
    assert workflows.plot(paths, seeds=1) == 0
    assert titles == ["SAC without HER"]
    assert (tmp_path / "results").is_dir() and any(p.suffix == ".png" for p in (tmp_path / "results").iterdir())
