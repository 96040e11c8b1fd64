"""FastFetchPushEnv gives the very numbers of Gymnasium-Robotics' own FetchPush env.

- vs ``gym.make("FetchPush[Dense]-v4")``: every observation key, reward, terminated, truncated and
  ``info["is_success"]`` exactly equal (``np.array_equal``, same dtypes), over random episodes
  (float32 and float64 actions, extreme ±1, out-of-bound ones that get clipped, resets with and without
  a seed) and over episodes of a scripted pusher that drives the gripper behind the block and pushes it
  toward the goal, so contacts happen, the block moves, tips and sometimes falls off the table.
- The simulator state (qpos, qvel, the solver's warm start, the mocap) stays bit-equal although the lean
  step skips the stock callback's full ``mj_forward``.
- ``mat2euler`` for one matrix equals the stock vectorised one, gimbal lock included.
The long sweep (hundreds of episodes, both reward types) is marked slow; the unmarked tests take ~15 s.
No timing assertions: speed is measured by bench/bench_push_env.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import mujoco
import numpy as np
import pytest

from fetchrl.tasks import envs, fetchpush
from fetchrl.tasks import fast as fast_envs

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from gymnasium_robotics.utils import rotations

EPISODE_STEPS = 50
#: MjData fields the next step depends on: they must stay bit-equal, not just the observations.
STATE_FIELDS = ("qpos", "qvel", "qacc_warmstart", "mocap_pos", "mocap_quat", "time")

Obs = dict[str, np.ndarray]
Policy = Callable[[Obs, np.random.Generator, int], Any]


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    envs.register_envs()


def _stock_env(env_id: str, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gym.make(env_id, **kwargs)


def _fast_env(env_id: str, **kwargs: Any) -> Any:
    return fast_envs.make(env_id, **kwargs)


# ============================================================================ policies
def random_action(obs: Obs, rng: np.random.Generator, t: int) -> Any:
    """Mostly float32 actions (what SB3 sends); some float64, exact ±1, far out of bounds, or a list."""
    action = rng.uniform(-1.3, 1.3, size=4)
    kind = t % 6
    if kind == 1:
        return np.sign(action).astype(np.float32)  # extremes: exactly ±1
    if kind == 2:
        return action * 10.0  # float64, clipped to ±1
    if kind == 3:
        return action  # float64, sometimes out of bounds
    if kind == 4:
        return [float(x) for x in action]  # a plain list (np.clip accepts it)
    return action.astype(np.float32)


def pushing_action(obs: Obs, rng: np.random.Generator, t: int) -> np.ndarray:
    """A scripted pusher: above the point behind the block (seen from the goal), down to the block's
    height, then through the block toward the goal. [4] float32, gripper command random (ignored)."""
    o = obs["observation"]
    grip, block, goal = o[:3], o[3:6], obs["desired_goal"]
    to_goal = goal[:2] - block[:2]
    u = to_goal / (np.linalg.norm(to_goal) + 1e-9)
    behind = block[:2] - u * 0.05
    off = np.linalg.norm(grip[:2] - behind)
    in_line = np.dot(grip[:2] - block[:2], u) < 0 and off < 0.04 and grip[2] < block[2] + 0.02
    target = np.empty(3)
    if off > 0.025 and not in_line:  # go around: up first, then over the point behind the block
        target[:2] = behind if grip[2] > block[2] + 0.04 else grip[:2]
        target[2] = block[2] + 0.06
    elif grip[2] > block[2] + 0.01:  # down behind the block
        target[:2], target[2] = behind, block[2]
    else:  # push
        target[:2], target[2] = block[:2] + u * 0.05, block[2]
    action = np.empty(4, dtype=np.float32)
    action[:3] = np.clip((target - grip) * 20.0, -1.0, 1.0) + rng.normal(0.0, 0.05, size=3)
    action[3] = rng.uniform(-1.0, 1.0)
    return action


# ============================================================================ comparison
def _assert_obs_equal(a: Obs, b: Obs, where: str) -> None:
    assert list(a) == list(b), where
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, (where, key)
        assert np.array_equal(a[key], b[key]), f"{where} {key}: {a[key]} != {b[key]}"


def _assert_state_equal(stock: Any, fast: Any, where: str) -> None:
    for field in STATE_FIELDS:
        assert np.array_equal(getattr(stock.unwrapped.data, field), getattr(fast.unwrapped.data, field)), (where, field)


def _reset_seed(episode: int, rng: np.random.Generator) -> int | None:
    """Seeded resets (small and large seeds) and unseeded ones that continue the env's own generator."""
    if episode == 0 or episode % 3 == 0:
        return episode
    return None if episode % 3 == 1 else int(rng.integers(0, 2**31 - 1))


def run_episodes(stock: Any, fast: Any, policy: Policy, n_episodes: int, seed: int,
                 check_state: bool = False) -> tuple[list[float], int]:
    """Step both envs through ``n_episodes`` with the same actions, asserting equal outputs at every step.

    Returns the distance the block moved in each episode (metres) and how many steps were successes.
    """
    rng = np.random.default_rng(seed)
    moved, successes = [], 0
    for episode in range(n_episodes):
        reset_seed = _reset_seed(episode, rng)
        obs_stock, info_stock = stock.reset(seed=reset_seed)
        obs_fast, info_fast = fast.reset(seed=reset_seed)
        _assert_obs_equal(obs_stock, obs_fast, f"reset {episode} seed={reset_seed}")
        assert info_stock == info_fast
        start = obs_stock["achieved_goal"].copy()
        for t in range(EPISODE_STEPS):
            action = policy(obs_stock, rng, t)
            o1, r1, term1, trunc1, info1 = stock.step(action)
            o2, r2, term2, trunc2, info2 = fast.step(action)
            where = f"episode {episode} seed={reset_seed} t={t}"
            _assert_obs_equal(o1, o2, where)
            assert type(r1) is type(r2) and np.array_equal(r1, r2), (where, r1, r2)
            assert list(info1) == list(info2) == ["is_success"], where
            s1, s2 = info1["is_success"], info2["is_success"]
            assert type(s1) is type(s2) and np.array_equal(s1, s2), where
            assert (term1, trunc1) == (term2, trunc2) == (False, t == EPISODE_STEPS - 1), where
            successes += int(s2)
            if check_state:
                _assert_state_equal(stock, fast, where)
            obs_stock = o1
        moved.append(float(np.linalg.norm(obs_stock["achieved_goal"] - start)))
    return moved, successes


# ============================================================================ tests
@pytest.mark.parametrize("env_id", fetchpush.FAST_ENV_IDS)
def test_fast_push_matches_stock_env(env_id: str) -> None:
    """Random and pushing episodes, exactly equal outputs and simulator state at every step."""
    stock, fast = _stock_env(env_id), _fast_env(env_id)
    assert isinstance(fast.unwrapped, fetchpush.FastFetchPushEnv)
    assert fast.unwrapped.reward_type == stock.unwrapped.reward_type == gym.spec(env_id).kwargs["reward_type"]
    run_episodes(stock, fast, random_action, n_episodes=6, seed=1, check_state=True)
    moved, successes = run_episodes(stock, fast, pushing_action, n_episodes=6, seed=2, check_state=True)
    assert min(moved) > 0.01, moved  # the pusher moves the block in every episode: contacts happened
    assert successes > 0  # and brings it within 5 cm of the goal: both sparse reward values compared
    stock.close()
    fast.close()


@pytest.mark.slow
@pytest.mark.parametrize("env_id", fetchpush.FAST_ENV_IDS)
def test_fast_push_matches_stock_env_long_sweep(env_id: str) -> None:
    """Hundreds of episodes per reward type, several seeds."""
    stock, fast = _stock_env(env_id), _fast_env(env_id)
    for seed in (10, 11, 12):
        run_episodes(stock, fast, random_action, n_episodes=50, seed=seed)
        moved, successes = run_episodes(stock, fast, pushing_action, n_episodes=20, seed=seed + 100)
        assert np.mean(np.array(moved) > 0.02) > 0.8 and successes > 0, (moved, successes)
    stock.close()
    fast.close()


def _rotation(rng: np.random.Generator) -> np.ndarray:
    quat = rng.normal(size=4)
    mat = np.empty(9)
    mujoco.mju_quat2Mat(mat, quat / np.linalg.norm(quat))
    return mat.reshape(3, 3)


def _about_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def test_mat2euler_equals_stock_one_including_gimbal_lock() -> None:
    rng = np.random.default_rng(0)
    mats = [_rotation(rng) for _ in range(2000)]
    tilted = [_about_y(np.pi / 2), _about_y(-np.pi / 2), _rotation(rng) @ _about_y(np.pi / 2)]
    mats += tilted + [_about_y(np.pi / 2 - 1e-17), _about_y(np.pi / 2 - 1e-6), np.full((3, 3), np.nan)]
    for mat in mats:
        expected = rotations.mat2euler(mat)
        got = fetchpush.mat2euler(mat)
        assert got.dtype == expected.dtype and got.shape == (3,)
        assert np.array_equal(got, expected, equal_nan=True), (mat, got, expected)
    gimbal = _about_y(np.pi / 2)
    assert np.sqrt(gimbal[2, 2] ** 2 + gimbal[1, 2] ** 2) <= fetchpush.EULER_EPS4  # the second branch ran


def _wrapper_names(env: gym.Env) -> list[str]:
    names = []
    while isinstance(env, gym.Wrapper):
        names.append(type(env).__name__)
        env = env.env
    return names


def test_make_mirrors_gym_make_and_rejects_what_it_cannot_do() -> None:
    stock, fast = _stock_env("FetchPushDense-v4"), _fast_env("FetchPushDense-v4")
    assert _wrapper_names(fast) == _wrapper_names(stock) == ["TimeLimit", "OrderEnforcing", "PassiveEnvChecker"]
    assert fast.spec is not None and stock.spec is not None
    assert fast.spec.max_episode_steps == stock.spec.max_episode_steps == EPISODE_STEPS
    assert fast.observation_space == stock.observation_space and fast.action_space == stock.action_space
    assert fast.unwrapped.reward_type == "dense"
    with pytest.raises(gym.error.ResetNeeded):  # OrderEnforcing, as gym.make adds it
        fast.step(np.zeros(4, dtype=np.float32))
    fast.reset(seed=0)
    with pytest.raises(ValueError, match="dimension"):
        fast.step(np.zeros(3, dtype=np.float32))
    raw = fast_envs.make_raw("FetchPush-v4")
    assert type(raw) is fetchpush.FastFetchPushEnv and raw.reward_type == "sparse"
    assert fast_envs.make_raw("FetchPush-v4", reward_type="dense").reward_type == "dense"  # kwargs override
    for wrong in ("FetchPush-v3", "FetchSlide-v4"):
        with pytest.raises(ValueError, match="no fast implementation"):
            fast_envs.make(wrong)
    stock.close()
    fast.close()


def _model_bytes(model: mujoco.MjModel) -> bytes:
    buf = np.empty(mujoco.mj_sizeModel(model), dtype=np.uint8)
    mujoco.mj_saveModel(model, None, buf)
    return buf.tobytes()


def test_envs_on_one_shared_model_match_the_stock_env() -> None:
    """Two fast envs stepping on one MjModel give the stock numbers, and stepping never writes the model."""
    first = fast_envs.make_raw("FetchPush-v4")
    model = first.model
    before = _model_bytes(model)
    second = _fast_env("FetchPush-v4", shared_model=model)
    assert second.unwrapped.model is model and second.unwrapped.data is not first.data
    moved, _ = run_episodes(_stock_env("FetchPush-v4"), second, pushing_action, n_episodes=2, seed=5, check_state=True)
    assert min(moved) > 0.01
    first.reset(seed=1)
    first.step(np.ones(4, dtype=np.float32))
    assert _model_bytes(model) == before == _model_bytes(fast_envs.make_raw("FetchPush-v4").model)


def test_render_rgb_array_matches_stock() -> None:
    envs.ensure_render_backend()
    try:
        stock = _stock_env("FetchPush-v4", render_mode="rgb_array", width=96, height=96)
        stock.reset(seed=0)
        stock.render()
    except Exception as err:  # no GL backend on this machine
        pytest.skip(f"offscreen rendering unavailable: {err}")
    fast = _fast_env("FetchPush-v4", render_mode="rgb_array", width=96, height=96)
    fast.reset(seed=0)
    rng = np.random.default_rng(0)
    for t in range(5):
        action = random_action({}, rng, t)
        stock.step(action)
        fast.step(action)
        frame_stock, frame_fast = stock.render(), fast.render()
        assert frame_fast.shape == frame_stock.shape == (96, 96, 3) and np.array_equal(frame_fast, frame_stock)
    stock.close()
    fast.close()


def test_module_imports_without_torch() -> None:
    """The env worker process imports the fast env: it must not pull in torch or SB3."""
    import subprocess
    import sys

    script = ("import sys, fetchrl.tasks.fetchpush\n"
              "print(sorted(m for m in ('torch', 'stable_baselines3') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
