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
from fetchrl.analysis.tbreader import Series, read_scalars
from fetchrl.artifacts import RunPaths
from fetchrl.config import TrainConfig
from fetchrl.errors import FetchRLError
from fetchrl.pipeline.callbacks import UpdateLogCallback

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
                         [(0.95, True, "outside_range"), (0.6, False, "outside_range"), (0.2, False, "ok"),
                          (0.05, False, "outside_range")])
def test_clip_fraction_saturated_and_range(tmp_path: Path, clip: float, saturated: bool,
                                           range_severity: str) -> None:
    diag = diagnose_synthetic(tmp_path, CLIP_FRACTION=[clip] * N)
    assert (finding(diag, "clip_fraction_saturated").severity == "warning") is saturated
    assert finding(diag, "clip_fraction_range").severity == range_severity
    assert diag.healthy is not saturated


@pytest.mark.parametrize(
    ("entropy", "fires"),
    [
        ([0.5] * N, True),  # collapsed from the first update, success 0
        ([-0.005] + list(np.linspace(-0.1, -0.05, N - 1)), True),  # within the 0.01 tolerance at update 1
        ([-5.0, -0.5] + [0.0] * (N - 2), True),  # zero from update 3 of 10, success still 0.22
        (list(np.linspace(-5.7, -0.5, N)), False),  # sharpens, never reaches 0
        (list(np.linspace(-5.7, 0.5, N)), False),  # reaches 0 only at the end, success 1: healthy
    ],
)
def test_entropy_collapse_is_zero_entropy_before_success(tmp_path: Path, entropy: list[float], fires: bool) -> None:
    f = finding(diagnose_synthetic(tmp_path, ENTROPY_LOSS=entropy), "entropy_collapse")
    assert (f.severity == "warning") is fires, f.evidence
    if fires:
        assert f.likely_problem == "Policy collapsed" and f.fix == "Increase ent_coef" and f.at_step is not None


# ---------------------------------------------------------------- entropy collapse against learning progress
M = 100
M_STEPS = np.arange(1, M + 1, dtype=np.int64) * 8192


def _entropy_collapsing_at(index: int) -> np.ndarray:
    """[M] entropy_loss of a 4-D Gaussian: -5.68 (std 1) rising linearly to ~0 (std 0.24) at ``index``."""
    return np.concatenate([np.linspace(-5.68, -0.005, index + 1), np.full(M - index - 1, 0.2)])


def _series(values: np.ndarray) -> Series:
    return Series(M_STEPS, np.asarray(values, dtype=np.float64))


def test_entropy_gone_at_12_percent_while_success_is_0_14_is_a_collapse() -> None:
    """The policy stopped exploring before it learned: flagged, at the step it happened, far past the first 10 %."""
    collapse = 11  # update 12 of 100: 12 % of the run
    success = np.concatenate([np.linspace(0.0, 0.14, collapse + 1), np.full(M - collapse - 1, 0.14)])
    f = diagnose.check_entropy_collapse(_series(_entropy_collapsing_at(collapse)), _series(success))
    assert f.severity == "warning", f.evidence
    assert f.at_step == M_STEPS[collapse] and f.observed["collapse_success_rate"] == pytest.approx(0.14)
    assert "12% of the run" in f.evidence and "success_rate was 0.14" in f.evidence


def test_the_same_entropy_with_the_task_already_solved_is_not_a_collapse() -> None:
    success = np.minimum(1.0, np.linspace(0.5, 3.0, M))  # > 0.9 from update 17 on; >= 0.5 throughout
    success[:12] = np.linspace(0.5, 0.95, 12)  # already 0.95 when the entropy reaches 0 at update 12
    f = diagnose.check_entropy_collapse(_series(_entropy_collapsing_at(11)), _series(success))
    assert f.severity == "ok", f.evidence


def test_std_halved_while_unsolved_is_a_collapse_without_entropy_zero() -> None:
    """train/std down to 0.45 of its start (entropy_loss still -2.5) at success 0.1: exploration gone."""
    std = np.concatenate([np.linspace(1.0, 0.45, 20), np.full(M - 20, 0.4)])
    entropy = -4 * (0.5 + 0.5 * np.log(2 * np.pi) + np.log(std))  # SB3's -H of a 4-D Gaussian with that std
    low = _series(np.full(M, 0.1))
    f = diagnose.check_entropy_collapse(_series(entropy), low, _series(std))
    assert f.severity == "warning" and f.at_step == M_STEPS[int(np.argmax(std <= 0.5))], f.evidence
    assert f.observed["collapse_std_ratio"] <= diagnose.COLLAPSE_STD_FRACTION
    assert diagnose.check_entropy_collapse(_series(entropy), low).severity == "ok"  # no std: entropy alone
    solved = _series(np.full(M, 0.95))
    assert diagnose.check_entropy_collapse(_series(entropy), solved, _series(std)).severity == "ok"


def test_std_start_is_sb3s_initial_std_unless_the_log_starts_higher() -> None:
    """SB3 logs train/std after each update: 0.77 after one fast update still started from std 1."""
    assert diagnose.std_start(Series(np.array([512]), np.array([0.77]))) == 1.0
    assert diagnose.std_start(Series(np.array([512]), np.array([2.7]))) == 2.7


def test_healthy_slow_sharpening_is_quiet() -> None:
    """Seed 0's shape: success passes 0.5 with the std still ~0.88; the entropy passes 0 only once solved."""
    success = np.clip(np.linspace(0.0, 2.0, M), 0.0, 1.0)
    std = np.exp(np.linspace(0.0, np.log(0.15), M))
    entropy = -4 * (0.5 + 0.5 * np.log(2 * np.pi) + np.log(std))
    f = diagnose.check_entropy_collapse(_series(entropy), _series(success), _series(std))
    assert f.severity == "ok", f.evidence


# ---------------------------------------------------------------- healthy bands: "outside range", when, how often
@pytest.mark.parametrize(("flags", "expected"), [
    ([False, True, False, True, True], 1),  # 3 of the last 4
    ([True, False, False], None),
    ([True, True, False], 0),
    ([False, False, True], 2),
    ([], None),
])
def test_mostly_from_hand_computed(flags: list[bool], expected: int | None) -> None:
    assert diagnose.mostly_from(np.array(flags, dtype=bool)) == expected


def _seed0_like_kl() -> np.ndarray:
    """[61] approx_kl: inside the band for the first 30 updates (one early spike), then 19/31 >= 0.03."""
    kl = np.full(61, 0.015)
    kl[3] = 0.04
    late = np.array([0.034, 0.036, 0.028] * 11)[:31]  # 2nd-half median 0.034
    kl[30:] = late
    return kl


def test_seed0_like_approx_kl_is_outside_range_not_ok(tmp_path: Path) -> None:
    steps = [8192 * (i + 1) for i in range(61)]
    kl = _seed0_like_kl()
    assert int(np.sum(kl >= 0.03)) == 22 and np.median(kl[30:]) == pytest.approx(0.034)
    series = {tag: list(np.resize(values, 61)) for tag, values in healthy_series().items()}
    series[metrics.APPROX_KL] = list(kl)
    series[metrics.SUCCESS_RATE] = list(np.linspace(0, 1, 61))
    diag = diagnose.diagnose(write_events(tmp_path / "run", series, steps=steps))
    f = finding(diag, "approx_kl_range")
    assert f.severity == "outside_range" and f.verdict == "outside range"
    assert f.observed["first_outside_step"] == steps[3] and f.at_step == f.observed["outside_from_step"]
    assert f.at_step == steps[30]
    assert "22/61 updates (36%) outside < 0.03" in f.evidence and f"first at step {steps[3]:,}" in f.evidence
    assert f"mostly outside from step {steps[30]:,} on" in f.evidence
    assert finding(diag, "approx_kl_high").severity == "ok"  # not a warning sign: 0.034 < 0.05
    assert diag.healthy and diag.outside_range == [f]
    assert f"outside range (information, not a warning sign): approx_kl_range from step {steps[30]:,}" in diag.summary()
    assert diagnose.run_diagnose_cli(tmp_path / "run", as_json=True) == 0  # information: exit 0


@pytest.mark.parametrize(("clip", "severity", "words"), [
    ([0.15] * 6 + [0.32, 0.34, 0.35, 0.33], "outside_range", "mostly outside from step"),  # 2nd half settles above
    ([0.03, 0.06] + [0.15] * 8, "ok", "2/10 updates (20%) outside 0.1–0.3, first at step 1,024"),  # early only
    ([0.05, 0.35, 0.05] + [0.2] * 7, "outside_range",  # 30 %, both sides: more than occasional
     "3/10 updates (30%) outside 0.1–0.3 (2 below, 1 above)"),
])
def test_clip_fraction_band_verdicts(tmp_path: Path, clip: list[float], severity: str, words: str) -> None:
    f = finding(diagnose_synthetic(tmp_path, CLIP_FRACTION=clip), "clip_fraction_range")
    assert f.severity == severity, f.evidence
    assert words in f.evidence


def test_one_spike_in_ten_is_occasional(tmp_path: Path) -> None:
    f = finding(diagnose_synthetic(tmp_path), "approx_kl_range")  # healthy_series: one spike of 0.045
    assert f.severity == "ok" and f.at_step is None and "1/10 updates (10%) outside < 0.03" in f.evidence


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
    assert {"id", "severity", "evidence", "signal", "observed", "likely_problem", "fix", "at_step"} <= set(
        out["findings"][0])  # the earlier fields are kept; at_step, outside_range and summary were added
    assert out["outside_range"] == [] and out["summary"].startswith("healthy")

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
    written = json.loads(paths.diagnosis_json.read_text())
    assert written["warnings"] == ["clip_fraction_saturated"] and written["outside_range"] == ["clip_fraction_range"]
    assert "| `train/clip_fraction` | `clip_fraction_range` | 10/10 updates (100%) outside 0.1–0.3" in md
    assert "| outside range |" in md and f"**Diagnosis: {diag.summary()}.**" in md
    assert [f["at_step"] for f in written["findings"] if f["id"] == "clip_fraction_range"] == [STEPS[0]]


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
                      policy_kwargs: dict[str, Any] | None = None, sb3_kwargs: dict[str, Any] | None = None,
                      **changes: Any) -> Path:
    """SB3 PPO with fetchrl's config and env, a wrapper *inside* Monitor (so ep_rew_mean sees it).

    ``sb3_kwargs`` go to ``PPO`` past fetchrl's validation (e.g. a negative ent_coef); every update
    is logged, the last one too (``UpdateLogCallback``, as ``train`` does).
    """
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import configure

    from fetchrl.tasks import envs

    config = TrainConfig(**{**SMALL, "total_steps": 2048, "n_steps": 128, **changes})
    envs.register_envs()

    def make() -> Any:
        env = gym.make(ENV_ID)  # Gymnasium-Robotics' own env: the same numbers as fetchrl's fast one
        return wrapper(env) if wrapper else env

    venv = make_vec_env(make, n_envs=config.n_envs, seed=config.seed)
    try:
        model = PPO(config.policy, venv, seed=config.seed, verbose=0, policy_kwargs=policy_kwargs,
                    **{**config.ppo_kwargs(), **(sb3_kwargs or {})})
        model.set_logger(configure(str(logdir), ["tensorboard"]))
        model.learn(config.total_steps, callback=UpdateLogCallback())
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


def test_real_negative_ent_coef_collapses_mid_run(tmp_path: Path) -> None:
    """ent_coef -1 rewards *losing* entropy: the std halves within four updates while success stays ~0.

    The policy starts healthy (std 1, entropy_loss -5.7), so this is not "immediately 0": the check
    fires on the std falling to half its start before anything was learned.
    """
    logdir = train_sb3_wrapped(tmp_path / "run", sb3_kwargs={"ent_coef": -1.0, "learning_rate": 3e-3},
                               n_steps=256)
    diag = diagnose.diagnose(logdir)
    f = finding(diag, "entropy_collapse")
    assert f.severity == "warning", f.evidence
    assert f.observed["first"] < -4.0  # it did not start collapsed
    assert f.observed["collapse_std_ratio"] <= diagnose.COLLAPSE_STD_FRACTION
    assert f.observed["collapse_success_rate"] < diagnose.COLLAPSE_SUCCESS_BELOW and f.at_step is not None
