"""SAC's diagnose rules and SACDiagnosticsCallback, each rule provoked by a real short SB3 SAC training.

Every run: FetchReachDense-v4 (Gymnasium-Robotics' env), 2 envs, buffer 5,000, learning_starts 200,
batch 64, 800 environment steps (~300 gradient steps), the callback measuring every 50 gradient
steps and every 200 environment steps — a few seconds each. The provocations:

- healthy: SB3's defaults otherwise; no warning, and the horizon rule says "too early to judge";
- ent_coef collapse: target_entropy -1000, lr 1e-2, ent_coef starting at 0.01 ("auto_0.01");
- ent_coef explosion: target_entropy +100 (above the 2.8 nats 4-D actions in [-1, 1] allow), lr 1e-2;
- critic divergence: rewards scaled by 1000 (a VecEnv wrapper);
- over-estimation: tau 1 (no target smoothing), lr 3e-3, gamma 0.999;
- success flat: the healthy run's success stays 0, judged with a horizon scaled to 500 steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import VecEnvWrapper

from fetchrl import metrics
from fetchrl.algos.fastsac import FastSAC
from fetchrl.analysis import diagnose, plots
from fetchrl.analysis.rules import sac as sac_rules
from fetchrl.analysis.tbreader import Series, read_scalars
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.offpolicy_callbacks import SACDiagnosticsCallback, replay_fill, sample_age
from fetchrl.runtime import Runtime
from fetchrl.vecenv.factory import make_vec_env

ENV_ID = "FetchReachDense-v4"
STEPS = 800


class ScaleReward(VecEnvWrapper):
    """Multiplies every reward by ``scale`` (the critic-divergence provocation)."""

    def __init__(self, venv: Any, scale: float) -> None:
        super().__init__(venv)
        self.scale = scale

    def reset(self) -> Any:
        return self.venv.reset()

    def step_wait(self) -> Any:
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs, rewards * self.scale, dones, infos


def train_sac(logdir: Path, *, callback: bool = True, reward_scale: float | None = None, **kwargs: Any) -> SAC:
    """A real short SB3 SAC run logging to ``logdir`` (TensorBoard); returns the trained model."""
    env = make_vec_env(Runtime.decide(ENV_ID, reference_env=True), 2, seed=0)
    if reward_scale is not None:
        env = ScaleReward(env, reward_scale)
    model = SAC("MultiInputPolicy", env, **({"buffer_size": 5000, "learning_starts": 200, "batch_size": 64,
                                              "seed": 0} | kwargs))
    model.set_logger(configure(str(logdir), ["tensorboard"]))
    cb = SACDiagnosticsCallback(every=50, eval_every=200, eval_episodes=2) if callback else None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small nets on a shared 2-core machine: more threads only contend
    try:
        model.learn(STEPS, callback=cb)
    finally:
        torch.set_num_threads(threads)
        env.close()
    return model


_RUNS: dict[str, Path] = {}
_PROVOCATIONS: dict[str, dict[str, Any]] = {
    "collapse": {"learning_rate": 1e-2, "target_entropy": -1000.0, "ent_coef": "auto_0.01"},
    "explode": {"learning_rate": 1e-2, "target_entropy": 100.0},
    "diverge": {"reward_scale": 1000.0},
    "overestimate": {"tau": 1.0, "learning_rate": 3e-3, "gamma": 0.999},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``run_dir(name)``: the TensorBoard directory of provocation ``name``, trained once per module."""
    def get(name: str) -> Path:
        if name not in _RUNS:
            logdir = tmp_path_factory.mktemp(name)
            train_sac(logdir, **_PROVOCATIONS[name])
            _RUNS[name] = logdir
        return _RUNS[name]
    return get


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SAC, Path, SAC]:
    """The default-ish run with the callback, and the same run without it."""
    with_cb, without = tmp_path_factory.mktemp("healthy"), tmp_path_factory.mktemp("healthy_plain")
    return with_cb, train_sac(with_cb), without, train_sac(without, callback=False)


def finding(diag: diagnose.Diagnosis, fid: str) -> diagnose.Finding:
    (f,) = [f for f in diag.findings if f.id == fid]
    return f


# ---------------------------------------------------------------- the callback
def test_callback_leaves_training_bit_identical(healthy: tuple[Path, SAC, Path, SAC]) -> None:
    with_dir, a, without_dir, b = healthy
    for (name, pa), pb in zip(a.policy.state_dict().items(), b.policy.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name  # actor, both critics and their targets
    assert torch.equal(a.log_ent_coef, b.log_ent_coef)
    assert np.array_equal(a.replay_buffer.actions, b.replay_buffer.actions)
    ta, tb = read_scalars(with_dir, metrics.SAC_CURVES), read_scalars(without_dir, metrics.SAC_CURVES)
    for tag in metrics.SAC_CURVES:
        assert np.array_equal(ta[tag].values, tb[tag].values), tag


def test_callback_on_fastsac_and_the_process_vecenv_is_bit_identical_too(
        healthy: tuple[Path, SAC, Path, SAC], tmp_path: Path) -> None:
    """Chapter 3's path: FastSAC (bit-equal to SB3's SAC) on fetchrl's fast env and process VecEnv, the
    callback making its evaluation env from the VecEnv's id; same numbers as the plain run without it."""
    env = make_vec_env(Runtime.decide(ENV_ID), 2, seed=0)
    model = FastSAC("MultiInputPolicy", env, buffer_size=5000, learning_starts=200, batch_size=64, seed=0)
    model.set_logger(configure(str(tmp_path), ["tensorboard"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.learn(STEPS, callback=SACDiagnosticsCallback(every=50, eval_every=200, eval_episodes=2))
    finally:
        torch.set_num_threads(threads)
        env.close()
    plain = healthy[3]
    for (name, pa), pb in zip(model.policy.state_dict().items(), plain.policy.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert read_scalars(tmp_path, (metrics.Q_OVERESTIMATION,))[metrics.Q_OVERESTIMATION].values.size >= 2


def test_callback_logs_q_stats_replay_and_mc_gap(healthy: tuple[Path, SAC, Path, SAC]) -> None:
    logdir, model, _, _ = healthy
    s = read_scalars(logdir, metrics.SAC_OPTIONAL[1:])  # all but ent_coef_loss (SB3's own, also there)
    # SB3 splits buffer_size 5000 over 2 envs: 2500 positions; 800 steps fill 400 of them
    assert replay_fill(model.replay_buffer) == pytest.approx(400 / 2500)
    fill = s[metrics.REPLAY_FILL].values  # measured before the last few steps: at most the final fill
    assert np.all(np.diff(fill) > 0) and 0 < fill[0] and fill[-1] <= 400 / 2500 + 1e-6
    ages = s[metrics.REPLAY_SAMPLE_AGE].values
    assert np.all((ages >= 0) & (ages < STEPS))  # uniform over what is stored: younger than the run
    for q, q_max in ((metrics.Q1_MEAN, metrics.Q1_MAX), (metrics.Q2_MEAN, metrics.Q2_MAX),
                     (metrics.Q_TARGET_MEAN, metrics.Q_TARGET_MAX)):
        assert np.all(s[q_max].values >= s[q].values) and np.all(np.isfinite(s[q].values))
    gap = s[metrics.Q_OVERESTIMATION].values
    assert gap.size >= 2
    assert np.allclose(gap, s[metrics.EVAL_Q].values - s[metrics.EVAL_MC_RETURN].values, rtol=1e-5, atol=1e-3)


def test_sample_age_counts_environment_steps(healthy: tuple[Path, SAC, Path, SAC]) -> None:
    buffer = healthy[1].replay_buffer  # pos 400 (2 envs): position 399 is the newest
    assert sample_age(buffer, np.array([399, 0, 200])).tolist() == [0.0, 798.0, 398.0]


# ---------------------------------------------------------------- the healthy run stays quiet
def test_healthy_short_run_has_no_warning_and_is_too_early_to_judge(healthy: tuple[Path, SAC, Path, SAC]) -> None:
    logdir = healthy[0]
    diag = diagnose.diagnose(logdir, algo="sac")
    assert diag.healthy, diag.summary()
    assert finding(diag, "success_flat").severity == "info"
    assert "too early to judge" in finding(diag, "success_flat").evidence
    assert finding(diag, "q_overestimation").severity == "ok"  # a lagging critic is not an over-estimating one
    assert 0 < finding(diag, "replay_health").observed["fill"] <= 0.16 + 1e-6
    assert diagnose.run_diagnose_cli(logdir, as_json=True, algo="sac") == 0


def test_success_flat_fires_past_a_scaled_horizon(healthy: tuple[Path, SAC, Path, SAC]) -> None:
    s = read_scalars(healthy[0], (metrics.SUCCESS_RATE, metrics.ENT_COEF))
    assert float(np.max(s[metrics.SUCCESS_RATE].values)) == 0.0
    f = sac_rules.check_success_flat(s[metrics.SUCCESS_RATE], s[metrics.ENT_COEF], horizon=300)
    assert f.severity == "warning" and f.at_step == int(s[metrics.ENT_COEF].steps[0]) + 300
    later = sac_rules.check_success_flat(s[metrics.SUCCESS_RATE], s[metrics.ENT_COEF], horizon=10_000)
    assert later.severity == "info"


# ---------------------------------------------------------------- each rule provoked
@pytest.mark.parametrize(("name", "rule"), [
    ("collapse", "ent_coef_collapse"),
    ("explode", "ent_coef_explodes"),
    ("diverge", "critic_loss_diverges"),
    ("overestimate", "q_overestimation"),
])
def test_each_provocation_fires_its_rule(run_dir: Callable[[str], Path], name: str, rule: str) -> None:
    logdir = run_dir(name)
    diag = diagnose.diagnose(logdir, algo="sac")
    f = finding(diag, rule)
    assert f.severity == "warning", f.evidence
    assert f.at_step is not None and 0 < f.at_step <= STEPS
    assert f.likely_problem and f.fix
    assert not diag.healthy
    assert diagnose.run_diagnose_cli(logdir, as_json=True, algo="sac") == 1


def test_collapse_is_not_the_healthy_fall_after_solving() -> None:
    steps = np.array([1000, 2000, 3000])
    ent = Series(steps, np.array([0.4, 0.01, 4e-4]))
    solved = Series(steps, np.array([0.2, 0.95, 1.0]))
    assert sac_rules.check_ent_coef_collapse(ent, solved).severity == "ok"
    unsolved = Series(steps, np.array([0.0, 0.1, 0.2]))
    assert sac_rules.check_ent_coef_collapse(ent, unsolved).at_step == 3000
    # chapter 4's FetchPush: auto fell to 0.005 unsolved — flagged with its own threshold
    assert sac_rules.check_ent_coef_collapse(ent, unsolved, threshold=0.01).at_step == 2000


def test_overestimation_needs_a_run_of_measurements_and_names_its_start() -> None:
    steps = np.array([100, 200, 300, 400])
    mc = Series(steps, np.array([-12.0, -12.0, -10.0, -8.0]))
    assert sac_rules.check_q_overestimation(Series(steps, np.array([0.0, 25.0, 1.0, 25.0])), mc).severity == "ok"
    f = sac_rules.check_q_overestimation(Series(steps, np.array([0.0, 1.0, 25.0, math.inf])), mc)
    assert f.severity == "warning" and f.at_step == 300
    catching_up = Series(steps, np.array([60.0, 50.0, 40.0, 30.0]))  # an older, larger ent_coef's bonus fading
    assert sac_rules.check_q_overestimation(catching_up, Series(steps, np.full(4, 5.0))).severity == "ok"
    assert sac_rules.check_q_overestimation(None, None).severity == "info"


# ---------------------------------------------------------------- registry, bad input, plots
def test_registry_keeps_ppo_the_default() -> None:
    assert set(diagnose.RULES) >= {"ppo", "sac"}
    assert diagnose.RULES["ppo"].checks == diagnose.CHECKS
    with pytest.raises(FetchRLError, match="no diagnose rules for algorithm 'dqn'") as err:
        diagnose.rules_for("dqn")
    assert err.value.exit_code == 2


def test_sac_rules_on_a_ppo_run_is_bad_input(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as w:
        for tag in metrics.CHAPTER_CURVES:
            w.add_scalar(tag, 0.5, 1)
    with pytest.raises(FetchRLError, match="train/ent_coef") as err:
        diagnose.run_diagnose_cli(tmp_path, as_json=True, algo="sac")
    assert err.value.exit_code == 2


def test_sac_plot_marks_the_warning(run_dir: Callable[[str], Path], tmp_path: Path) -> None:
    out = plots.plot_run(run_dir("explode"), tmp_path / "curves.png", algo="sac")
    assert out.stat().st_size > 20_000 and out.read_bytes()[:4] == b"\x89PNG"
