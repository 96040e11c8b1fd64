"""fetchrl.analysis.diagnose and fetchrl.analysis.tbreader: the chapter's warning signs as numeric tests.

Synthetic event files (written with TensorBoard's writer through torch.utils.tensorboard) pin each
rule's thresholds and borderline cases; real short training runs check that a healthy run stays
quiet and that each warning fires when training really provokes it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fetchrl import metrics
from fetchrl.analysis import diagnose
from fetchrl.analysis.tbreader import read_scalars
from fetchrl.artifacts import RunPaths
from fetchrl.config import TrainConfig
from fetchrl.errors import FetchRLError

N = 10
STEPS = [1024 * (i + 1) for i in range(N)]


# ---------------------------------------------------------------- synthetic event files
def write_events(logdir: Path, series: dict[str, list[float]], steps: list[int] | None = None,
                 walltime: float | None = None) -> Path:
    """One event file in ``logdir`` with ``series[tag][i]`` logged at ``steps[i]``."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(logdir))
    try:
        for tag, values in series.items():
            for i, v in enumerate(values):
                step = (steps or STEPS)[i]
                writer.add_scalar(tag, v, step, walltime=None if walltime is None else walltime + i)
    finally:
        writer.close()
    return logdir


def healthy_series(**override: list[float]) -> dict[str, list[float]]:
    """Every chapter curve behaving as the chapter's healthy table says, with ``override`` applied."""
    kl = [0.01] * N
    kl[4] = 0.045  # an occasional spike: allowed
    series = {
        metrics.EP_REW_MEAN: list(np.linspace(-12.0, -2.0, N)),
        metrics.SUCCESS_RATE: list(np.linspace(0.0, 1.0, N)),
        metrics.VALUE_LOSS: list(5.0 * np.exp(-np.linspace(0.0, 2.0, N))),
        metrics.APPROX_KL: kl,
        metrics.CLIP_FRACTION: [0.15] * N,
        metrics.ENTROPY_LOSS: list(np.linspace(-5.7, -4.0, N)),
    }
    for key, values in override.items():
        series[getattr(metrics, key)] = values
    return series


def finding(diag: diagnose.Diagnosis, fid: str) -> diagnose.Finding:
    (match,) = [f for f in diag.findings if f.id == fid]
    return match


def diagnose_synthetic(tmp_path: Path, **override: list[float]) -> diagnose.Diagnosis:
    return diagnose.diagnose(write_events(tmp_path / "run", healthy_series(**override)))


WARNING_IDS = ("flat_reward", "value_loss_explodes", "approx_kl_high", "clip_fraction_saturated",
               "entropy_collapse")


def test_synthetic_healthy_run_is_quiet(tmp_path: Path) -> None:
    diag = diagnose_synthetic(tmp_path)
    assert diag.healthy, diag.to_markdown()
    assert [f.id for f in diag.findings if f.severity == "ok"] == [f.id for f in diag.findings]
    assert {f.id for f in diag.findings} >= set(WARNING_IDS)


@pytest.mark.parametrize(
    ("rewards", "fires"),
    [
        ([-50.0] * N, True),  # exactly constant
        ([-50.0 + 0.4 * (i % 2) for i in range(N)], True),  # inside 1 % of |first| = 0.5
        ([-50.0 + 0.6 * (i % 2) for i in range(N)], False),  # leaves the band once: not a flatline
        ([0.0] * N, True),  # zero reward: the 0.01 floor applies
        ([0.0, 0.02] + [0.0] * (N - 2), False),
    ],
)
def test_flat_reward_band(tmp_path: Path, rewards: list[float], fires: bool) -> None:
    f = finding(diagnose_synthetic(tmp_path, EP_REW_MEAN=rewards), "flat_reward")
    assert (f.severity == "warning") is fires, f.evidence
    if fires:
        assert f.likely_problem == "Environment misconfigured" and "obs/action shapes" in f.fix


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_value_loss_non_finite_is_an_explosion(tmp_path: Path, bad: float) -> None:
    losses = [1.0] * N
    losses[6] = bad
    f = finding(diagnose_synthetic(tmp_path, VALUE_LOSS=losses), "value_loss_explodes")
    assert f.severity == "warning" and f"step {STEPS[6]}" in f.evidence
    assert f.fix.startswith("Check reward range")


@pytest.mark.parametrize(("peak", "fires"), [(100.0, True), (99.0, False)])
def test_value_loss_growth_of_two_orders_of_magnitude(tmp_path: Path, peak: float, fires: bool) -> None:
    losses = [1.0] * N
    losses[7] = peak
    f = finding(diagnose_synthetic(tmp_path, VALUE_LOSS=losses), "value_loss_explodes")
    assert (f.severity == "warning") is fires, f.evidence


def test_value_loss_tiny_start_is_floored(tmp_path: Path) -> None:
    """0.001 -> 0.5 is 500x but stays below 100 x 0.01: an already-fitted critic, not an explosion."""
    losses = [0.001] + [0.5] * (N - 1)
    assert finding(diagnose_synthetic(tmp_path, VALUE_LOSS=losses), "value_loss_explodes").severity == "ok"


def test_value_loss_above_reward_bound_fires_without_growth(tmp_path: Path) -> None:
    """Rewards 1000x too large give a huge loss from the first update, falling: the ceiling catches it."""
    losses = list(np.linspace(2e6, 5e5, N))
    f = finding(diagnose_synthetic(tmp_path, VALUE_LOSS=losses), "value_loss_explodes")
    assert f.severity == "warning" and f.observed["growth"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("kl", "fires"),
    [
        ([0.06] * N, True),
        ([0.3, 0.2, 0.1] + [0.01] * (N - 3), False),  # early spikes, then settles
        ([0.01] * 4 + [0.08] * 6, True),  # gets worse: 6/10 above, second half above
        ([0.08] * 5 + [0.01] * 5, False),  # exactly half above and settled: not "consistently"
        ([0.01, 0.08] * 5, False),  # alternating: exactly half above is not "more than half"
    ],
)
def test_approx_kl_consistently_high(tmp_path: Path, kl: list[float], fires: bool) -> None:
    f = finding(diagnose_synthetic(tmp_path, APPROX_KL=kl), "approx_kl_high")
    assert (f.severity == "warning") is fires, f.evidence
    if fires:
        assert f.fix == "Reduce learning_rate to 1e-4"


def test_approx_kl_nan_counts_as_high(tmp_path: Path) -> None:
    f = finding(diagnose_synthetic(tmp_path, APPROX_KL=[float("nan")] * N), "approx_kl_high")
    assert f.severity == "warning"


@pytest.mark.parametrize(("clip", "saturated", "range_severity"),
                         [(0.95, True, "info"), (0.6, False, "info"), (0.2, False, "ok"), (0.05, False, "info")])
def test_clip_fraction_saturated_and_range(tmp_path: Path, clip: float, saturated: bool,
                                           range_severity: str) -> None:
    diag = diagnose_synthetic(tmp_path, CLIP_FRACTION=[clip] * N)
    assert (finding(diag, "clip_fraction_saturated").severity == "warning") is saturated
    assert finding(diag, "clip_fraction_range").severity == range_severity
    assert diag.healthy is not saturated


@pytest.mark.parametrize(
    ("entropy", "fires"),
    [
        ([0.5] * N, True),  # collapsed from the first update
        ([-0.005] + list(np.linspace(-0.1, -0.05, N - 1)), True),  # within the 0.01 tolerance at update 1
        ([-5.0, -0.5] + [0.0] * (N - 2), False),  # zero from update 3 of 10: not "immediately"
        (list(np.linspace(-5.7, 0.5, N)), False),  # slowly reaches 0 at the end: healthy
    ],
)
def test_entropy_collapse_is_early_zero(tmp_path: Path, entropy: list[float], fires: bool) -> None:
    f = finding(diagnose_synthetic(tmp_path, ENTROPY_LOSS=entropy), "entropy_collapse")
    assert (f.severity == "warning") is fires, f.evidence


def test_too_few_points_are_info_not_warnings(tmp_path: Path) -> None:
    series = {tag: values[:2] for tag, values in healthy_series(APPROX_KL=[0.5] * N).items()}
    diag = diagnose.diagnose(write_events(tmp_path / "run", series))
    assert finding(diag, "approx_kl_high").severity == "info"
    assert finding(diag, "flat_reward").severity == "info"
    assert diag.healthy


# ---------------------------------------------------------------- reading event files
def test_read_scalars_merges_a_resumed_run(tmp_path: Path) -> None:
    """A resumed run appends a second event file; a step logged twice keeps the later value."""
    run = tmp_path / "run"
    write_events(run, {metrics.APPROX_KL: [0.1, 0.2, 0.3, 0.4]}, steps=[10, 20, 30, 40], walltime=1000.0)
    write_events(run, {metrics.APPROX_KL: [0.9, 0.5, 0.6]}, steps=[40, 50, 60], walltime=2000.0)
    assert len(list(run.iterdir())) == 2
    s = read_scalars(run, [metrics.APPROX_KL])[metrics.APPROX_KL]
    np.testing.assert_array_equal(s.steps, [10, 20, 30, 40, 50, 60])
    np.testing.assert_allclose(s.values, [0.1, 0.2, 0.3, 0.9, 0.5, 0.6], rtol=1e-6)
    assert s.steps.dtype == np.int64 and s.values.dtype == np.float64


def test_read_scalars_keeps_every_point(tmp_path: Path) -> None:
    """TensorBoard's default reservoir keeps 10,000 points per tag; we keep all."""
    n = 10_050
    run = write_events(tmp_path / "run", {metrics.FPS: [float(i) for i in range(n)]}, steps=list(range(n)))
    assert read_scalars(run, [metrics.FPS])[metrics.FPS].steps.size == n


def _bad_dirs(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    empty = tmp_path / "empty"
    empty.mkdir()
    parent = tmp_path / "runs" / "ppo" / "FetchReachDense-v4"
    write_events(parent / "seed0", healthy_series())
    partial = write_events(tmp_path / "partial", {metrics.EP_REW_MEAN: [-1.0, -0.5]}, steps=[512, 1024])
    return {
        "missing": (tmp_path / "nope", ["not found", "nope"]),
        "no_events": (empty, ["no TensorBoard event files", str(empty)]),
        "parent": (parent, ["no TensorBoard event files", "seed0"]),
        "missing_tag": (partial, [str(partial), metrics.VALUE_LOSS, "first PPO update"]),
    }


@pytest.mark.parametrize("case", ["missing", "no_events", "parent", "missing_tag"])
def test_bad_input_is_exit_code_2_and_says_why(tmp_path: Path, case: str) -> None:
    logdir, words = _bad_dirs(tmp_path)[case]
    with pytest.raises(FetchRLError) as err:
        diagnose.run_diagnose_cli(logdir, as_json=True)
    assert err.value.exit_code == 2
    for word in words:
        assert word in str(err.value)


# ---------------------------------------------------------------- outputs
def test_cli_handler_json_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write_events(tmp_path / "good", healthy_series())
    assert diagnose.run_diagnose_cli(good, as_json=True) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["healthy"] is True and out["warnings"] == []
    assert {"id", "severity", "evidence", "signal", "observed", "likely_problem", "fix"} <= set(out["findings"][0])

    bad = write_events(tmp_path / "bad", healthy_series(APPROX_KL=[0.2] * N, VALUE_LOSS=[float("nan")] * N))
    assert diagnose.run_diagnose_cli(bad, as_json=True) == 1
    text = capsys.readouterr().out
    out = json.loads(text)  # NaN is written as null: strict JSON
    assert "NaN" not in text
    assert out["healthy"] is False and set(out["warnings"]) == {"approx_kl_high", "value_loss_explodes"}

    assert diagnose.run_diagnose_cli(bad, as_json=False) == 1
    table = capsys.readouterr().out
    assert "approx_kl_high" in table and "WARNING" in table and "2 warning sign(s)" in table


def test_markdown_and_json_file(tmp_path: Path) -> None:
    diag = diagnose_synthetic(tmp_path, CLIP_FRACTION=[0.97] * N)
    md = diag.to_markdown()
    assert md.startswith("| signal | check | observed | verdict | likely problem | fix |")
    assert "**WARNING**" in md and "Reduce learning_rate or clip_range" in md
    assert md.count("\n| `") == len(diag.findings)
    paths = RunPaths("FetchReachDense-v4", 0, root=tmp_path)
    write_events(paths.tb_dir, healthy_series(CLIP_FRACTION=[0.97] * N))
    assert diagnose.diagnose_run(paths).to_dict() == diag.to_dict() | {"logdir": str(paths.tb_dir)}
    assert json.loads(paths.diagnosis_json.read_text())["warnings"] == ["clip_fraction_saturated"]


# ---------------------------------------------------------------- real training
ENV_ID = "FetchReachDense-v4"
SMALL = dict(total_steps=4096, n_envs=2, n_steps=256, batch_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_small(root: Path, **changes: Any) -> Path:
    from fetchrl.pipeline.train import train

    config = TrainConfig(**{**SMALL, **changes})
    paths = RunPaths(config.env_id, config.seed, root=root)
    train(config, paths, progress=False)
    return paths.tb_dir


def train_sb3_wrapped(logdir: Path, wrapper: Callable[[Any], Any] | None = None,
                      policy_kwargs: dict[str, Any] | None = None, **changes: Any) -> Path:
    """SB3 PPO with fetchrl's config and env, a wrapper *inside* Monitor (so ep_rew_mean sees it)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import configure

    from fetchrl.tasks import envs

    config = TrainConfig(**{**SMALL, "total_steps": 2048, "n_steps": 128, **changes})

    def make() -> Any:
        env = envs.make_env(ENV_ID, fast=config.fast_env)
        return wrapper(env) if wrapper else env

    venv = make_vec_env(make, n_envs=config.n_envs, seed=config.seed)
    try:
        model = PPO(config.policy, venv, seed=config.seed, verbose=0, policy_kwargs=policy_kwargs,
                    **config.ppo_kwargs())
        model.set_logger(configure(str(logdir), ["tensorboard"]))
        model.learn(config.total_steps)
    finally:
        venv.close()
    return logdir


def reward_wrapper(fn: Callable[[float], float]) -> Callable[[Any], Any]:
    import gymnasium as gym

    class _Reward(gym.RewardWrapper):
        def reward(self, reward: Any) -> Any:
            return fn(reward)

    return _Reward


def warnings_of(logdir: Path) -> set[str]:
    return {f.id for f in diagnose.diagnose(logdir).warnings}


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_real_healthy_short_run_stays_quiet(tmp_path: Path, seed: int) -> None:
    diag = diagnose.diagnose(train_small(tmp_path, seed=seed))
    assert diag.healthy, diag.to_markdown()
    assert finding(diag, "approx_kl_range").severity == "ok"


@pytest.mark.slow
def test_real_chapter_config_run_stays_quiet(tmp_path: Path) -> None:
    """The chapter's own hyper-parameters (8 envs x 1024 steps), 5 updates."""
    logdir = train_small(tmp_path, total_steps=6 * 8 * 1024, n_envs=8, n_steps=1024, batch_size=256)
    diag = diagnose.diagnose(logdir)
    assert diag.healthy, diag.to_markdown()


def test_real_high_learning_rate_fires_approx_kl_and_clip_fraction(tmp_path: Path) -> None:
    """learning_rate 0.05 with 30 epochs per rollout: the policy leaves the trust region at once."""
    logdir = train_small(tmp_path, total_steps=2560, learning_rate=0.05, n_epochs=30)
    assert {"approx_kl_high", "clip_fraction_saturated"} <= warnings_of(logdir)


def test_real_reward_scale_fires_value_loss(tmp_path: Path) -> None:
    """Rewards x1000 (in [-1000, 0], the chapter's "something is misconfigured")."""
    logdir = train_sb3_wrapped(tmp_path / "run", reward_wrapper(lambda r: 1000.0 * r))
    assert warnings_of(logdir) == {"value_loss_explodes"}


def test_real_constant_reward_fires_flat_reward(tmp_path: Path) -> None:
    """A reward that ignores the agent (always 0): ep_rew_mean is a flat line from the start."""
    logdir = train_sb3_wrapped(tmp_path / "run", reward_wrapper(lambda r: 0.0))
    assert warnings_of(logdir) == {"flat_reward"}


def test_real_collapsed_policy_fires_entropy_collapse(tmp_path: Path) -> None:
    """A policy that starts (nearly) deterministic: std e^-3 = 0.05 gives entropy_loss ~ +6.3."""
    logdir = train_sb3_wrapped(tmp_path / "run", policy_kwargs={"log_std_init": -3.0})
    assert warnings_of(logdir) == {"entropy_collapse"}
