"""One environment factory shared by train, eval, video, checks and tests.

Fetch tasks never terminate: every episode is *truncated* by the TimeLimit wrapper at 50 steps.
Anything that bootstraps values (GAE) must therefore treat episode ends as truncations, and the
final distance of an episode must be read from its terminal observation, not from the reset
observation a vector env returns in its place.

Which implementation a call builds (fetchrl's fast env or Gymnasium-Robotics' own) is not decided
here: every factory takes the :class:`~fetchrl.runtime.Runtime` the caller was given.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from fetchrl.errors import FetchRLError
from fetchrl.runtime import Runtime

if TYPE_CHECKING:  # imported lazily below: MuJoCo's GL backend must be chosen first
    import gymnasium as gym
    import numpy.typing as npt

#: gymnasium-robotics releases that break with mujoco >= 3.12 (AssertionError in set_joint_qpos).
_BROKEN_WITH_NEW_MUJOCO = ("1.4.0", "1.4.1", "1.4.2")
_MUJOCO_FIX = "pip install 'mujoco==3.11.0'"

_registered = False


def _version_tuple(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split("+")[0].split("."):
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_dependencies() -> None:
    """Fail fast, with the one-line fix, on a mujoco / gymnasium-robotics pair known to break.

    gymnasium-robotics 1.4.2 (newest release) asserts inside ``mujoco_utils.set_joint_qpos`` with
    mujoco >= 3.12 — deep inside the first reset. We check versions before anything runs.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        mj = version("mujoco")
        gr = version("gymnasium-robotics")
    except PackageNotFoundError as err:
        raise FetchRLError(f"{err.name} is not installed; run `make run` or pip install -c constraints.txt -e .") from None
    if gr in _BROKEN_WITH_NEW_MUJOCO and _version_tuple(mj) >= (3, 12):
        raise FetchRLError(
            f"mujoco {mj} is incompatible with gymnasium-robotics {gr} (AssertionError in set_joint_qpos); "
            f"fix: {_MUJOCO_FIX}"
        )


def ensure_render_backend() -> None:
    """Offscreen MuJoCo rendering needs a GL backend: use EGL (Mesa works on CPU) without a display."""
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"  # mujoco.egl sets PYOPENGL_PLATFORM to match


#: The one-line fix for a render failure, by MUJOCO_GL backend (Debian/Ubuntu package names).
EGL_PACKAGES = "libegl1 libopengl0 libgl1-mesa-dri"
_GL_FIXES = {
    "egl": f"apt-get install {EGL_PACKAGES} (Mesa renders on the CPU), or MUJOCO_GL=osmesa with libosmesa6",
    "osmesa": f"apt-get install libosmesa6, or MUJOCO_GL=egl with {EGL_PACKAGES}",
    "glfw": f"a glfw window needs a display; without one set MUJOCO_GL=egl (apt-get install {EGL_PACKAGES})",
}


def describe_error(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters), for one-line reports."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {first}"[:200]


def render_backend_error(problem: str) -> FetchRLError:
    """The one-line error, with its fix, for a MuJoCo GL backend that cannot load or render."""
    backend = os.environ.get("MUJOCO_GL", "")
    fix = _GL_FIXES.get(backend.lower().strip(), f"set MUJOCO_GL=egl and apt-get install {EGL_PACKAGES}")
    message = f"offscreen rendering failed with MUJOCO_GL={backend or '<unset>'} ({problem}); fix: {fix}"
    return FetchRLError(message, exit_code=1)


def import_mujoco() -> None:
    """Import MuJoCo, which loads the GL backend named by MUJOCO_GL at import time.

    A missing libEGL/libOSMesa or a bad MUJOCO_GL value surfaces as ImportError, AttributeError or
    RuntimeError from deep inside MuJoCo; every command gets the one-line fix instead.
    """
    problem = None
    try:
        import mujoco  # noqa: F401
    except Exception as err:
        problem = describe_error(err)
    if problem is not None:
        raise render_backend_error(problem)


def register_envs() -> None:
    """Register Gymnasium-Robotics (and fetchrl's fast env ids) once, quietly."""
    global _registered
    if _registered:
        return
    check_dependencies()
    import_mujoco()
    import gymnasium as gym

    # gymnasium_robotics prints an unrelated Adroit notice to stderr on import; keep our output clean.
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    _registered = True


def validate_env_id(env_id: str) -> None:
    """Raise FetchRLError for an unknown id, suggesting the closest registered one."""
    import gymnasium as gym

    register_envs()
    if env_id in gym.registry:
        return
    close = difflib.get_close_matches(env_id, list(gym.registry.keys()), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise FetchRLError(f"unknown env id {env_id!r}{hint}")


def make_env(runtime: Runtime, *, render_mode: str | None = None, **kwargs: Any) -> gym.Env:
    """Create one Gymnasium env of ``runtime.env_id`` on ``runtime``'s path (TimeLimit of 50 steps for Fetch).

    Args:
        runtime: the task and its path: fetchrl's fast env, or Gymnasium-Robotics' own (same numbers).
        render_mode: ``"rgb_array"`` for offscreen frames (sets MUJOCO_GL=egl when headless).
        kwargs: passed to the env's constructor (e.g. ``width``, ``height``).
    """
    import gymnasium as gym

    validate_env_id(runtime.env_id)
    if render_mode is not None:
        ensure_render_backend()
    if runtime.fast:
        # imported here: it imports MuJoCo, whose GL backend must be chosen first (ensure_render_backend)
        from fetchrl.tasks import fast

        return fast.make(runtime.env_id, render_mode=render_mode, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gym.make(runtime.env_id, render_mode=render_mode, **kwargs)


def goal_distance(obs: Mapping[str, npt.ArrayLike]) -> float:
    """||achieved_goal - desired_goal|| in metres for one goal-conditioned observation ([3] arrays)."""
    import numpy as np

    return float(np.linalg.norm(np.asarray(obs["achieved_goal"]) - np.asarray(obs["desired_goal"])))


#: Fetch task families whose goal is an object's position: their ``achieved_goal`` is the object's, not the gripper's.
OBJECT_TASKS = ("FetchPush", "FetchSlide", "FetchPickAndPlace")


def has_object(env_id: str) -> bool:
    """True for a Fetch task with an object to move (``FetchPush-v4``): :func:`goal_distance` is then the
    object's distance to the goal."""
    return env_id.split("-")[0].removesuffix("Dense") in OBJECT_TASKS


def goal_distance_name(env_id: str) -> str:
    """What :func:`goal_distance` measures on ``env_id``: ``"object-to-goal"`` (Push: achieved_goal is the
    object's position) or ``"gripper-to-goal"`` (Reach: the gripper's)."""
    return "object-to-goal" if has_object(env_id) else "gripper-to-goal"


_REWARD_ENVS: dict[tuple[str, bool], Any] = {}


def local_compute_reward(runtime: Runtime) -> Callable[[Any, Any, Any], Any]:
    """The task's ``compute_reward(achieved_goal, desired_goal, info)``, bound to one env built in this
    process (kept for the process's life): what HER calls to reward a relabeled transition. The same
    class and code as the training envs' own method, so the rewards are the same numbers."""
    key = (runtime.env_id, runtime.fast)
    env = _REWARD_ENVS.get(key)
    if env is None:
        env = _REWARD_ENVS[key] = make_env(runtime).unwrapped
    fn: Callable[[Any, Any, Any], Any] = env.compute_reward  # type: ignore[union-attr]
    return fn
