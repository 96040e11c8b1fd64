"""A video of the trained policy, with the live distance to the goal drawn on every frame.

The distance is ||achieved_goal - desired_goal||, and the overlay says what that is on the task: the
gripper's distance to the goal on Reach ("gripper-to-goal"), the object's on Push ("object-to-goal":
its ``achieved_goal`` is the object's position), as :func:`fetchrl.tasks.envs.goal_distance_name` names it.

The episodes follow the evaluation protocol (:mod:`fetchrl.pipeline.evaluate`): the policy's mean action
(``deterministic=True``) and reset seeds from :class:`~fetchrl.config.EvalConfig`'s documented list,
so the video shows the first evaluation episodes. Fetch never terminates: every episode is
*truncated* at 50 steps, so an episode is 51 frames (the reset frame, then one per step).

Frames are rendered offscreen: without a display :func:`fetchrl.tasks.envs.ensure_render_backend` sets
``MUJOCO_GL=egl``, which runs on the CPU through Mesa (llvmpipe) when there is no GPU.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fetchrl.artifacts import RunPaths, atomic_path
from fetchrl.config import EvalConfig
from fetchrl.errors import FetchRLError
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs

if TYPE_CHECKING:  # gymnasium's env only after the GL backend is chosen; SB3 (torch) only to record
    import gymnasium as gym
    from stable_baselines3.common.base_class import BaseAlgorithm

#: A font Pillow draws with (FreeType when available, its bitmap font otherwise).
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

#: Milliseconds the last frame of each episode stays on screen, so the final distance can be read.
HOLD_LAST_FRAME_MS = 800
#: Colours of the GIF's one shared palette, the format's maximum (sharing it keeps the file small and
#: the colours steady from frame to frame).
GIF_COLORS = 256
#: Palette entries kept for small but telling colours: the goal sphere's reds, the success green.
_FIXED_COLOURS: tuple[tuple[int, int, int], ...] = (
    *((v, 0, 0) for v in range(112, 256, 16)), (240, 40, 36), (208, 48, 32), (60, 220, 90), (245, 245, 245),
)
#: Frames per colour-sampling image when the GIF palette is built.
_PALETTE_SAMPLE_EVERY = 25
#: Gymnasium-Robotics' Fetch episode length, used when the env carries no spec.
_DEFAULT_MAX_STEPS = 50
#: Gymnasium-Robotics' Fetch success radius (``distance_threshold``), used when the env has none.
_DEFAULT_THRESHOLD_M = 0.05

_GREEN = (60, 220, 90, 255)
_WHITE = (245, 245, 245, 255)
_GREY = (190, 190, 190, 255)
_PANEL = (0, 0, 0, 165)

Obs = dict[str, np.ndarray]


# ============================================================================ overlay
@dataclass(frozen=True)
class FrameLabel:
    """What the overlay of one frame says."""

    episode: int
    """1-based episode number."""
    episodes: int
    """Episodes in the video."""
    step: int
    """Steps taken so far (0 on the reset frame)."""
    max_steps: int
    """Episode length (Fetch: truncated at 50)."""
    distance_m: float
    """||achieved_goal - desired_goal|| of the frame's observation, metres."""
    success: bool
    """``info["is_success"]`` of the step that produced the frame (False on the reset frame)."""
    threshold_m: float = _DEFAULT_THRESHOLD_M
    """The env's success radius, metres."""
    measured: str = "gripper-to-goal"
    """What ``distance_m`` is (:func:`fetchrl.tasks.envs.goal_distance_name`): ``"object-to-goal"`` on Push."""

    @property
    def distance_caption(self) -> str:
        """The line above the number: ``"object-to-goal distance"``."""
        return f"{self.measured} distance"


@functools.lru_cache(maxsize=8)
def _font(size: int) -> Font:
    """Pillow's bundled font at ``size`` px (no system font needed); its bitmap font without FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError, ValueError):
        return ImageFont.load_default()


@dataclass(frozen=True)
class _Layout:
    """Fonts and a fixed panel size for one frame size and label template (the panel never jumps)."""

    small: Font
    big: Font
    pad: int
    line_heights: tuple[int, int, int, int]
    panel: tuple[int, int, int, int]
    border: int


@functools.lru_cache(maxsize=8)
def _layout(frame_width: int, height: int, episodes: int, max_steps: int, threshold_mm: int,
            caption: str) -> _Layout:
    scale = height / 360
    small, big = _font(max(8, round(14 * scale))), _font(max(10, round(26 * scale)))
    pad = max(3, round(8 * scale))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widest = [
        (f"episode {episodes}/{episodes}    step {max_steps}/{max_steps}", small),
        (caption, small),
        ("8888.8 mm", big),
        ("SUCCESS", big),
        (f"success when < {threshold_mm} mm", small),
    ]
    width = max(probe.textlength(text, font=font) for text, font in widest)
    line_heights = tuple(probe.textbbox((0, 0), "Ag", font=font)[3] for font in (small, small, big, big))
    panel_w, panel_h = round(2 * pad + width), round(pad * (2 + len(line_heights) / 2) + sum(line_heights))
    # top-right: the arm, the table and every goal of the task stay in the left and middle of the frame
    panel = (frame_width - pad - panel_w, pad, frame_width - pad, pad + panel_h)
    return _Layout(small, big, pad, line_heights, panel, max(2, round(4 * scale)))  # type: ignore[arg-type]


def draw_overlay(frame: np.ndarray, label: FrameLabel) -> np.ndarray:
    """Draw the episode/step counter, the distance in mm (captioned with what it measures: gripper- or
    object-to-goal) and the success flag in the top-right corner.

    frame: [H, W, 3] uint8 -> a new [H, W, 3] uint8 array (the input is not modified). Only the
    panel's pixels are blended, which keeps this to a few milliseconds per frame.
    """
    img = Image.fromarray(np.array(frame, dtype=np.uint8, copy=True))
    threshold_mm = round(label.threshold_m * 1000)
    lay = _layout(img.width, img.height, label.episodes, label.max_steps, threshold_mm, label.distance_caption)
    if label.success:
        status = ("SUCCESS", lay.big, _GREEN)
    else:
        status = (f"success when < {threshold_mm} mm", lay.small, _GREY)
    counter = f"episode {label.episode}/{label.episodes}    step {label.step}/{label.max_steps}"
    lines = [
        (counter, lay.small, _WHITE),
        (label.distance_caption, lay.small, _GREY),
        (f"{label.distance_m * 1000:.1f} mm", lay.big, _WHITE),
        status,
    ]
    x0, y0, x1, y1 = lay.panel
    shade = Image.new("RGBA", (x1 - x0, y1 - y0), (0, 0, 0, 0))
    ImageDraw.Draw(shade).rounded_rectangle((0, 0, x1 - x0 - 1, y1 - y0 - 1), radius=lay.pad, fill=_PANEL)
    panel = Image.alpha_composite(img.crop(lay.panel).convert("RGBA"), shade)
    draw = ImageDraw.Draw(panel)
    y = lay.pad
    for (text, font, colour), h in zip(lines, lay.line_heights, strict=True):
        draw.text((lay.pad, y), text, font=font, fill=colour)
        y += h + lay.pad // 2
    img.paste(panel.convert("RGB"), (x0, y0))
    if label.success:  # a green border: success is visible even in a thumbnail
        ImageDraw.Draw(img).rectangle((0, 0, img.width - 1, img.height - 1), outline=_GREEN[:3], width=lay.border)
    return np.asarray(img)


# ============================================================================ rendering
@contextlib.contextmanager
def _quiet_unraisable() -> Iterator[None]:
    """Silence 'Exception ignored in __del__' noise from half-built GL contexts after a failure."""
    previous = sys.unraisablehook
    sys.unraisablehook = lambda _args: None
    try:
        yield
    finally:
        sys.unraisablehook = previous


def _try_render(runtime: Runtime, width: int, height: int) -> tuple[gym.Env | None, object, str | None]:
    """(env, first frame, None) or (None, None, what went wrong); a failed env is closed and collected."""
    env: gym.Env | None = None
    frame: object = None
    problem = None
    # A GL context that failed half-way complains from __del__ ("Exception ignored ...") when the
    # exception that holds it is dropped: keep that noise off the user's terminal.
    with _quiet_unraisable(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # glfw warns twice before failing without a display
        try:
            try:
                env = envs.make_env(runtime, render_mode="rgb_array", width=width, height=height)
            except TypeError:  # an env without width/height kwargs: frames are resized instead
                env = envs.make_env(runtime, render_mode="rgb_array")
            env.reset(seed=0)
            frame = env.render()
        except FetchRLError:
            raise
        except Exception as err:  # MuJoCo / PyOpenGL raise many types when no GL context can be made
            problem = envs.describe_error(err)
        if problem is None and not (isinstance(frame, np.ndarray) and frame.ndim == 3):
            problem = f"render() returned {type(frame).__name__}, not an RGB array"
        if problem is not None:
            if env is not None:
                with contextlib.suppress(Exception):
                    env.close()
            env = frame = None
            gc.collect()
    return env, frame, problem


def _open_env(runtime: Runtime, width: int, height: int) -> tuple[gym.Env, np.ndarray]:
    """A rendering env (frames width x height when supported) and a first test frame."""
    env, frame, problem = _try_render(runtime, width, height)
    if problem is not None:
        raise envs.render_backend_error(problem)
    assert env is not None and isinstance(frame, np.ndarray)  # no problem: both were checked
    return env, frame


def _fit(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """frame: [h, w, 3] uint8 -> [height, width, 3] uint8 (resized only when the env ignored the size)."""
    if frame.shape[0] == height and frame.shape[1] == width:
        return frame
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BILINEAR))


@dataclass
class Clip:
    """Rendered frames and how long each is shown."""

    frames: list[np.ndarray]
    """[height, width, 3] uint8 each, overlay drawn."""
    durations_ms: list[int]
    """Display time of each frame, milliseconds."""
    labels: list[FrameLabel] = field(default_factory=list)
    """What each frame's overlay says (its distance, and what that distance measures)."""


def _record_episodes(env: gym.Env, model: BaseAlgorithm, seeds: list[int], *, fps: int, width: int, height: int,
                     measured: str = "gripper-to-goal") -> Clip:
    """Render the episodes; ``measured`` captions the distance (:attr:`FrameLabel.measured`)."""
    from fetchrl.pipeline.evaluate import SB3Policy

    policy = SB3Policy(model, deterministic=True)
    max_steps = int(getattr(env.spec, "max_episode_steps", None) or _DEFAULT_MAX_STEPS)
    threshold = float(getattr(env.unwrapped, "distance_threshold", _DEFAULT_THRESHOLD_M))
    frame_ms = round(1000 / fps)
    clip = Clip([], [])
    for k, seed in enumerate(seeds, start=1):
        obs, _ = env.reset(seed=seed)
        policy.reset([seed])
        success, step, done = False, 0, False  # success: info["is_success"] of the latest step
        while True:
            label = FrameLabel(k, len(seeds), step, max_steps, envs.goal_distance(obs), success, threshold, measured)
            clip.frames.append(draw_overlay(_fit(cast(np.ndarray, env.render()), width, height), label))
            clip.labels.append(label)
            clip.durations_ms.append(HOLD_LAST_FRAME_MS if done else frame_ms)
            if done:
                break
            action = policy({key: value[None] for key, value in obs.items()})[0]
            obs, _, terminated, truncated, info = env.step(action)
            step += 1
            success = bool(float(info.get("is_success", 0.0)) >= 0.5)
            done = bool(terminated or truncated)  # Fetch: truncated at max_steps, never terminated
    return clip


# ============================================================================ writers
def _gif_palette(frames: list[np.ndarray]) -> Image.Image:
    """One palette for every frame: adaptive colours from a sample of frames, plus fixed colours.

    The goal is a red sphere of a few dozen pixels that an adaptive palette would average away
    (to brown), so its reds and the overlay's green are reserved entries.
    """
    sample = np.concatenate(frames[::_PALETTE_SAMPLE_EVERY] + [frames[-1]], axis=0)
    adaptive = GIF_COLORS - len(_FIXED_COLOURS)
    pal = Image.fromarray(sample).quantize(colors=adaptive, method=Image.Quantize.MEDIANCUT,
                                           dither=Image.Dither.NONE)
    entries = (pal.getpalette() or [])[: 3 * adaptive]
    entries += [0] * (3 * adaptive - len(entries))
    pal.putpalette(entries + [c for rgb in _FIXED_COLOURS for c in rgb])
    return pal


def write_gif(target: Path, frames: list[np.ndarray], durations_ms: list[int]) -> Path:
    """Write an endlessly looping GIF atomically; frames: [H, W, 3] uint8, durations in ms."""
    palette = _gif_palette(frames)
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    with atomic_path(target) as tmp:
        try:
            # Pillow stores each frame as its difference from the previous one (optimize=True, the default)
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=durations_ms,
                           loop=0)
        except OSError as err:
            raise FetchRLError(f"cannot write {target}: {err.strerror or err}", exit_code=1) from None
    return target


def ffmpeg_available() -> bool:
    """True when imageio's ffmpeg plugin can run (the imageio-ffmpeg package and its binary)."""
    try:
        import imageio_ffmpeg

        return bool(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError, OSError):
        return False


def write_mp4(target: Path, frames: list[np.ndarray], durations_ms: list[int], fps: int) -> bool:
    """Write an H.264 MP4 atomically when ffmpeg is available; False (nothing written) otherwise."""
    if not ffmpeg_available():
        return False
    import imageio.v2 as iio

    try:
        with atomic_path(target) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # imageio warns when it pads odd frame sizes for yuv420p
            writer = iio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    pixelformat="yuv420p", macro_block_size=2, ffmpeg_log_level="error")
            with writer:
                for frame, ms in zip(frames, durations_ms, strict=True):
                    for _ in range(max(1, round(ms * fps / 1000))):  # held frames repeat at the video's fps
                        writer.append_data(frame)
    except (OSError, RuntimeError, ValueError, FetchRLError):
        return False
    return True


# ============================================================================ entry point
def _check_args(episodes: int, fps: int, width: int, height: int, seed_offset: int | None) -> None:
    for name, value, low in (("episodes", episodes, 1), ("fps", fps, 1), ("width", width, 16),
                             ("height", height, 16)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise FetchRLError(f"--{name} must be an integer >= {low}, got {value!r}")
    if fps > 100:
        raise FetchRLError(f"--fps must be <= 100 (GIF frame times are in 1/100 s), got {fps}")
    if seed_offset is not None and seed_offset < 0:
        raise FetchRLError(f"video seed offset must be >= 0, got {seed_offset}")


def record_clip(paths: RunPaths, runtime: Runtime, *, episodes: int = 5, device: str = "cpu", fps: int = 25,
                width: int = 480, height: int = 360, seed_offset: int | None = None) -> Clip:
    """The frames :func:`record_video` writes, with their overlays' labels; nothing is written (same arguments)."""
    from fetchrl.pipeline.checkpoints import load_model

    _check_args(episodes, fps, width, height, seed_offset)
    offset = EvalConfig().seed_offset if seed_offset is None else seed_offset
    seeds = EvalConfig(n_episodes=episodes, seed_offset=offset).episode_seeds
    envs.ensure_render_backend()
    envs.import_mujoco()
    model = load_model(paths, runtime, device=device)
    env, _ = _open_env(runtime, width, height)
    try:
        return _record_episodes(env, model, seeds, fps=fps, width=width, height=height,
                                measured=envs.goal_distance_name(runtime.env_id))
    finally:
        env.close()


def record_video(paths: RunPaths, runtime: Runtime, *, episodes: int = 5, device: str = "cpu", fps: int = 25,
                 width: int = 480, height: int = 360, seed_offset: int | None = None) -> list[Path]:
    """Render ``episodes`` deterministic episodes of the checkpoint at ``paths`` with a distance overlay
    (gripper-to-goal on Reach, object-to-goal on Push), written atomically.

    Args:
        paths: the run; reads ``paths.checkpoint``, writes ``paths.video_gif`` (and ``paths.video_mp4``).
        runtime: the env path the episodes are rendered on (same frames on either path).
        episodes: episodes to show; episode i is reset with seed ``seed_offset + i``.
        device: torch device of the policy.
        fps: playback rate; 25 is real time for Fetch (one step is 0.04 s of simulation).
        width, height: frame size in pixels.
        seed_offset: first reset seed; None means EvalConfig's, so the video shows evaluation episodes.

    Returns:
        ``[gif]``, or ``[gif, mp4]`` when imageio's ffmpeg plugin works.

    Raises:
        FetchRLError: missing/corrupt checkpoint, bad argument, or offscreen rendering impossible.
    """
    clip = record_clip(paths, runtime, episodes=episodes, device=device, fps=fps, width=width, height=height,
                       seed_offset=seed_offset)
    out = [write_gif(paths.video_gif, clip.frames, clip.durations_ms)]
    if write_mp4(paths.video_mp4, clip.frames, clip.durations_ms, fps):
        out.append(paths.video_mp4)
    return out
