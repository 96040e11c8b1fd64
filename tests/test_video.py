"""The policy video: real rendering of a really trained checkpoint, read back from the GIF."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fetchrl.analysis import video
from fetchrl.artifacts import RunPaths
from fetchrl.config import EvalConfig
from fetchrl.errors import FetchRLError
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs

WIDTH, HEIGHT = 320, 240
RUNTIME = Runtime.decide("FetchReachDense-v4")
STEPS = 50  # Fetch truncates every episode at 50 steps


@pytest.fixture(scope="module")
def run(tiny_run: RunPaths, tmp_path_factory: pytest.TempPathFactory) -> RunPaths:
    """A private copy of the session's tiny trained checkpoint (the shared run stays untouched)."""
    root = tmp_path_factory.mktemp("video_run")
    paths = RunPaths(tiny_run.env_id, tiny_run.seed, root)
    paths.checkpoint.parent.mkdir(parents=True)
    shutil.copy2(tiny_run.checkpoint, paths.checkpoint)
    shutil.copy2(tiny_run.meta, paths.meta)
    return paths


@pytest.fixture(scope="module")
def recorded(run: RunPaths) -> list[Path]:
    return video.record_video(run, RUNTIME, episodes=1, width=WIDTH, height=HEIGHT)


def _gif_frames(path: Path) -> tuple[list[np.ndarray], list[int], int | None]:
    """Frames as [H, W, 3] uint8, per-frame durations (ms) and the loop count of a GIF."""
    frames, durations = [], []
    with Image.open(path) as im:
        loop = im.info.get("loop")
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
            durations.append(int(im.info["duration"]))
    return frames, durations, loop


def _raw_reset_frame(env_id: str, seed: int) -> np.ndarray:
    env = envs.make_env(Runtime.decide(env_id), render_mode="rgb_array", width=WIDTH, height=HEIGHT)
    try:
        env.reset(seed=seed)
        return np.asarray(env.render())
    finally:
        env.close()


def test_gif_written_to_run_paths(run: RunPaths, recorded: list[Path]) -> None:
    assert recorded[0] == run.video_gif
    assert run.video_gif.is_file() and run.video_gif.stat().st_size > 10_000
    assert not list(run.video_gif.parent.glob(".*tmp*")), "atomic write left a temp file behind"


def test_one_frame_per_step_at_requested_size(recorded: list[Path]) -> None:
    frames, durations, loop = _gif_frames(recorded[0])
    assert len(frames) == STEPS + 1  # the reset frame, then one per step
    assert all(f.shape == (HEIGHT, WIDTH, 3) for f in frames)
    assert loop == 0, "the GIF must loop forever"
    assert durations[0] == 40  # 25 fps: real time for Fetch (0.04 s per step)
    assert durations[-1] == video.HOLD_LAST_FRAME_MS


def test_successive_frames_differ(recorded: list[Path]) -> None:
    frames, _, _ = _gif_frames(recorded[0])
    same = [i for i in range(1, len(frames)) if np.array_equal(frames[i - 1], frames[i])]
    assert not same, f"frames {same} repeat the previous one"


def test_overlay_drawn_on_the_evaluation_episode(run: RunPaths, recorded: list[Path]) -> None:
    """Frame 0 is the first evaluation episode's reset frame plus the overlay panel (top right)."""
    first = _gif_frames(recorded[0])[0][0].astype(np.int16)
    raw = _raw_reset_frame(run.env_id, EvalConfig().episode_seeds[0]).astype(np.int16)
    panel = np.abs(first[: HEIGHT // 4, -WIDTH // 4:] - raw[: HEIGHT // 4, -WIDTH // 4:]).mean()
    scene = np.abs(first[HEIGHT // 2:, : WIDTH // 2] - raw[HEIGHT // 2:, : WIDTH // 2]).mean()
    assert panel > 40, f"no overlay in the top-right corner (mean difference {panel:.1f})"
    assert scene < 6, f"the scene differs from the evaluation seed's reset frame ({scene:.1f})"


def test_mp4_only_with_ffmpeg(run: RunPaths, recorded: list[Path]) -> None:
    if video.ffmpeg_available():
        assert recorded == [run.video_gif, run.video_mp4]
        assert run.video_mp4.stat().st_size > 1_000
    else:
        assert recorded == [run.video_gif]


def test_mp4_skipped_silently_without_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(video, "ffmpeg_available", lambda: False)
    frames = [np.zeros((16, 16, 3), np.uint8)] * 2
    assert video.write_mp4(tmp_path / "v.mp4", frames, [40, 40], 25) is False
    assert not list(tmp_path.iterdir())


def test_overlay_shows_success_and_keeps_input() -> None:
    frame = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
    failing = video.draw_overlay(frame, video.FrameLabel(1, 1, 10, 50, 0.0873, False))
    success = video.draw_overlay(frame, video.FrameLabel(1, 1, 50, 50, 0.0123, True))
    assert (frame == 128).all(), "draw_overlay must not modify its input"
    assert failing.shape == success.shape == frame.shape
    corner = success[HEIGHT - 1, 0].astype(int)
    assert corner[1] > 180 and corner[0] < 120, f"no green success border: {corner}"
    assert (failing[HEIGHT - 1, 0] == 128).all()
    assert not np.array_equal(failing[:, WIDTH // 2:], success[:, WIDTH // 2:])


def test_goal_distance_in_metres() -> None:
    obs = {"achieved_goal": np.array([1.0, 0.5, 0.4]), "desired_goal": np.array([1.03, 0.54, 0.4])}
    assert envs.goal_distance(obs) == pytest.approx(0.05)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FetchRLError, match="checkpoint not found"):
        video.record_video(RunPaths("FetchReachDense-v4", 3, tmp_path), RUNTIME, episodes=1)


@pytest.mark.parametrize("kwargs", [{"episodes": 0}, {"fps": 0}, {"width": 4}, {"seed_offset": -1}])
def test_bad_arguments_are_clear_errors(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(FetchRLError):
        video.record_video(RunPaths("FetchReachDense-v4", 0, tmp_path), RUNTIME, **kwargs)  # type: ignore[arg-type]


def test_broken_gl_is_one_line_error_not_traceback(run: RunPaths, tmp_path: Path) -> None:
    """EGL without a usable driver (no vendor file): one FetchRLError line naming the fix, no traceback."""
    script = textwrap.dedent(f"""
        from pathlib import Path
        from fetchrl.artifacts import RunPaths
        from fetchrl.errors import FetchRLError
        from fetchrl.analysis.video import record_video
        from fetchrl.runtime import Runtime
        try:
            record_video(RunPaths({run.env_id!r}, {run.seed}, Path({str(run.root)!r})), Runtime.decide({run.env_id!r}),
                         episodes=1)
        except FetchRLError as err:
            print(err)
            raise SystemExit(3)
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "PYOPENGL_PLATFORM")}
    env.update(MUJOCO_GL="egl", __EGL_VENDOR_LIBRARY_FILENAMES=str(tmp_path / "no-such-vendor.json"),
               PYTHONPATH=str(Path(video.__file__).parents[1]))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    message = proc.stdout.strip().splitlines()[-1]
    assert "offscreen rendering failed" in message and "apt-get install" in message
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
