"""fetchrl.analysis.plots: bootstrap band math, step-grid interpolation, and the three figures written as PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fetchrl import metrics
from fetchrl.analysis import diagnose, plots
from fetchrl.analysis.tbreader import Series, read_scalars
from fetchrl.artifacts import RunPaths, ablation_plot_path, multi_seed_plot_path
from fetchrl.config import TrainConfig
from fetchrl.errors import FetchRLError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_run(logdir: Path, seed: int, n: int = 12, step: int = 1024, offset: int = 0) -> Path:
    """A noisy, healthy-looking run: every chapter curve, ``n`` points ``step`` apart."""
    from torch.utils.tensorboard import SummaryWriter

    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n)
    curves = {
        metrics.EP_REW_MEAN: -12 + 10 * t + rng.normal(0, 0.5, n),
        metrics.SUCCESS_RATE: np.clip(t**2 + rng.normal(0, 0.05, n), 0, 1),
        metrics.VALUE_LOSS: 5 * np.exp(-2 * t) + rng.uniform(0, 0.3, n),
        metrics.APPROX_KL: 0.01 + rng.uniform(0, 0.01, n),
        metrics.CLIP_FRACTION: 0.15 + rng.uniform(-0.05, 0.05, n),
        metrics.ENTROPY_LOSS: -5.7 + 2 * t + rng.normal(0, 0.05, n),
    }
    writer = SummaryWriter(log_dir=str(logdir))
    try:
        for tag, values in curves.items():
            for i, v in enumerate(values):
                writer.add_scalar(tag, float(v), offset + step * (i + 1))
    finally:
        writer.close()
    return logdir


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG header."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_MAGIC
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def no_temp_files_left(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if ".tmp" in p.name]


# ---------------------------------------------------------------- numbers
def test_bootstrap_band_hand_computed() -> None:
    values = np.array([[0.0, 1.0], [2.0, 1.0]])  # [n_seeds=2, n_points=2]
    mean, low, high = plots.bootstrap_band(values, reps=4000)
    np.testing.assert_allclose(mean, [1.0, 1.0])
    # Resampling 2 seeds: means 0, 1, 2 with probabilities 1/4, 1/2, 1/4 -> 2.5/97.5 percentiles 0 and 2.
    np.testing.assert_allclose(low, [0.0, 1.0])
    np.testing.assert_allclose(high, [2.0, 1.0])
    again = plots.bootstrap_band(values, reps=4000)
    np.testing.assert_array_equal(again[1], low)  # seeded: reproducible figures


def test_bootstrap_band_single_seed_has_no_width() -> None:
    mean, low, high = plots.bootstrap_band(np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_array_equal(mean, low)
    np.testing.assert_array_equal(mean, high)


def test_common_grid_interpolates_on_the_overlap() -> None:
    a = Series(np.array([0, 10, 20]), np.array([0.0, 1.0, 2.0]))
    b = Series(np.array([5, 15, 25]), np.array([0.0, 10.0, 20.0]))
    grid, values = plots.common_grid([a, b], n_points=4)
    np.testing.assert_allclose(grid, [5.0, 10.0, 15.0, 20.0])
    np.testing.assert_allclose(values, [[0.5, 1.0, 1.5, 2.0], [0.0, 5.0, 10.0, 15.0]])
    with pytest.raises(FetchRLError, match="do not overlap"):
        plots.common_grid([a, Series(np.array([30, 40]), np.array([0.0, 1.0]))])


# ---------------------------------------------------------------- figures


def test_plot_run_from_a_real_training_run(tmp_path: Path, one_torch_thread: None) -> None:
    from fetchrl.pipeline.train import train

    config = TrainConfig(total_steps=2048, n_envs=2, n_steps=128, batch_size=64, seed=0)
    paths = RunPaths(config.env_id, config.seed, root=tmp_path)
    train(config, paths, progress=False)
    out = plots.plot_run(paths.tb_dir, paths.curves_png)
    assert out == paths.curves_png
    width, height = png_size(out)
    assert width > height > 500  # 2x3 panels, landscape
    assert no_temp_files_left(out.parent)


def test_plot_multi_seed_with_iqm_row(tmp_path: Path) -> None:
    dirs = {s: write_run(tmp_path / f"seed{s}", seed=s, offset=100 * s) for s in range(3)}
    out = multi_seed_plot_path(tmp_path)
    plots.plot_multi_seed(dirs, out)
    w2, h2 = png_size(out)
    scores = {"success_rate": [0.9, 1.0, 0.95], "return_mean": [-0.5, -0.4, -0.45]}
    plots.plot_multi_seed(dirs, out, final_scores=scores)  # overwrites atomically
    w3, h3 = png_size(out)
    assert w3 == w2 and h3 > h2  # one more row for the rliable IQM panels
    assert no_temp_files_left(out.parent)


def test_plot_multi_seed_single_seed(tmp_path: Path) -> None:
    out = plots.plot_multi_seed({0: write_run(tmp_path / "seed0", 0)}, tmp_path / "one.png",
                                final_scores={"success_rate": [1.0]})
    assert png_size(out)[0] > 0


def test_plot_ablation_overlays_settings(tmp_path: Path) -> None:
    groups = {
        f"clip_range={c}": [write_run(tmp_path / f"c{c}" / f"seed{s}", seed=10 * i + s) for s in range(2)]
        for i, c in enumerate((0.1, 0.2, 0.4))
    }
    out = plots.plot_ablation(groups, ablation_plot_path("clip_range", tmp_path))
    assert out.name == "ch02_ablation_clip_range.png" and png_size(out)[0] > 0


def test_failed_plot_leaves_previous_png_untouched(tmp_path: Path) -> None:
    out = tmp_path / "results" / "curves.png"
    out.parent.mkdir()
    out.write_bytes(b"previous")
    with pytest.raises(FetchRLError) as err:
        plots.plot_run(tmp_path / "missing", out)
    assert err.value.exit_code == 2
    with pytest.raises(FetchRLError):
        plots.plot_ablation({"a": [write_run(tmp_path / "a", 0)], "b": [tmp_path / "nope"]}, out)
    assert out.read_bytes() == b"previous"
    assert no_temp_files_left(out.parent)


# ---------------------------------------------------------------- the diagnosis in the figure
def test_band_legends_use_the_diagnosis_words(tmp_path: Path) -> None:
    """The panel note is the band the diagnosis judges by; the legend carries the table's verdict and phrase."""
    logdir = write_run(tmp_path / "run", seed=0)
    kl = Series(np.arange(1, 13) * 1024, np.where(np.arange(12) >= 6, 0.04, 0.01))
    finding = diagnose.check_approx_kl_range(kl)
    assert finding.severity == "outside_range"
    label = plots.diagnosis_label(finding).replace("\n", " ")
    assert label.startswith("diagnose: outside range — ")
    assert diagnose.band_phrase(finding.observed, diagnose.APPROX_KL_BAND) in label
    assert "6/12 updates (50%) outside < 0.03, mostly outside from step 7,168 on" in label
    assert plots.HEALTHY_NOTE[metrics.APPROX_KL] in finding.evidence  # "healthy: < 0.03, occasional spikes OK"
    healthy = diagnose.check_clip_fraction_range(read_scalars(logdir, [metrics.CLIP_FRACTION])[metrics.CLIP_FRACTION])
    assert plots.diagnosis_label(healthy).startswith("diagnose: ok — 0/12 updates (0%) outside 0.1–0.3")
    out = plots.plot_run(logdir, tmp_path / "curves.png")
    assert png_size(out)[0] > 0


def test_plot_run_marks_an_entropy_collapse(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    logdir = write_run(tmp_path / "run", seed=1)
    writer = SummaryWriter(log_dir=str(logdir))  # a second file: entropy 0 from update 3 on, success ~0
    try:
        for i in range(12):
            writer.add_scalar(metrics.ENTROPY_LOSS, 0.0 if i >= 2 else -5.0, 1024 * (i + 1))
    finally:
        writer.close()
    collapse = next(f for f in diagnose.diagnose(logdir).findings if f.id == "entropy_collapse")
    assert collapse.severity == "warning" and collapse.at_step == 3 * 1024
    assert plots.diagnosis_label(collapse) == "diagnose: WARNING entropy_collapse at step 3,072"
    assert png_size(plots.plot_run(logdir, tmp_path / "curves.png"))[0] > 0
