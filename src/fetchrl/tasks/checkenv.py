"""The chapter's "Common failures" checks (section 6): shapes, action bounds, reward range."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from fetchrl.errors import FetchRLError
from fetchrl.runtime import Runtime
from fetchrl.tasks import envs

EXPECTED_OBS_SHAPES = {"observation": (10,), "achieved_goal": (3,), "desired_goal": (3,)}
"""Reach's (chapters 2-4); a task with an object observes more: :data:`OBSERVATION_WIDTH`."""
#: Width of the ``observation`` vector per Fetch task family: Reach 10 (gripper), Push/Slide/PickAndPlace 25
#: (gripper, object position, rotation and velocities).
OBSERVATION_WIDTH = {"FetchReach": 10, "FetchPush": 25, "FetchSlide": 25, "FetchPickAndPlace": 25}
EXPECTED_ACTION_SHAPE = (4,)


def expected_obs_shapes(env_id: str) -> dict[str, tuple[int, ...]]:
    """The observation keys and shapes of a Fetch task (Reach's for an id outside the family)."""
    family = env_id.split("-")[0].removesuffix("Dense")
    return {**EXPECTED_OBS_SHAPES, "observation": (OBSERVATION_WIDTH.get(family, 10),)}


def sparse(env_id: str) -> bool:
    """True for a sparse-reward Fetch task (reward -1 or 0 at every step): ``FetchReach-v4``, ``FetchPush-v4``."""
    return env_id.startswith("Fetch") and "Dense" not in env_id


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


def run_checks(runtime: Runtime, *, n_steps: int = 100, seed: int = 0) -> list[Check]:
    """Observation keys/shapes, action shape and bounds, and rewards of random steps in [-1, 0],
    on the env ``runtime`` trains and evaluates with."""
    env = envs.make_env(runtime)
    try:
        obs, _ = env.reset(seed=seed)
        env.action_space.seed(seed)
        shapes = {k: tuple(v.shape) for k, v in obs.items()} if isinstance(obs, dict) else {"obs": np.shape(obs)}
        space = env.action_space
        expected = expected_obs_shapes(runtime.env_id)
        checks = [
            Check("observation shapes", shapes == expected, f"{shapes} (expected {expected})"),
            *_action_checks(space),
        ]
        rewards = []
        for _ in range(n_steps):
            _, r, term, trunc, _ = env.step(space.sample())
            rewards.append(float(r))
            if term or trunc:
                env.reset()
        lo, hi = min(rewards), max(rewards)
        if sparse(runtime.env_id):
            values = sorted(set(rewards))
            checks.append(Check(f"sparse rewards ({n_steps} random steps)", set(values) <= {-1.0, 0.0},
                                f"{values} (expected only -1 and 0)"))
        else:
            checks.append(Check(f"reward range ({n_steps} random steps)", -1.0 <= lo and hi <= 0.0,
                                f"[{lo:.3f}, {hi:.3f}] (expected inside [-1, 0])"))
        return checks
    finally:
        env.close()


def _action_checks(space: gym.spaces.Space) -> list[Check]:
    """Action shape and bounds; an action space without bounds (``Discrete``: CartPole) fails both rows."""
    if not isinstance(space, gym.spaces.Box):
        return [Check("action shape", False, f"{space} is not a Box (expected Box of shape {EXPECTED_ACTION_SHAPE})"),
                Check("action bounds", False, f"{type(space).__name__} has no bounds (expected [-1, 1])")]
    return [
        Check("action shape", tuple(space.shape) == EXPECTED_ACTION_SHAPE,
              f"{tuple(space.shape)} (expected {EXPECTED_ACTION_SHAPE})"),
        Check("action bounds", bool(np.all(space.low == -1.0) and np.all(space.high == 1.0)),
              f"[{float(np.min(space.low))}, {float(np.max(space.high))}] (expected [-1, 1])"),
    ]


def require_passing(runtime: Runtime) -> None:
    """Refuse, in one line naming the failed checks, a task whose env fails :func:`run_checks` (exit 1, as
    ``train``'s check-env): multi-seed, ablate and sweep ask before starting any trial."""
    failed = [c.name for c in run_checks(runtime) if not c.passed]
    if failed:
        raise FetchRLError(f"check-env failed for {runtime.env_id} ({', '.join(failed)}); not training "
                           f"(details: check-env --env-id {runtime.env_id})", exit_code=1)


def print_checks(env_id: str, checks: list[Check]) -> bool:
    from rich.table import Table

    from fetchrl.console import make_console

    table = Table(title=f"check-env — {env_id}")
    for col in ("check", "result", "observed"):
        table.add_column(col)
    for c in checks:
        table.add_row(c.name, "[green]PASS[/]" if c.passed else "[red]FAIL[/]", c.detail)
    make_console().print(table)  # off a terminal: wide, nothing cut or wrapped
    return all(c.passed for c in checks)
