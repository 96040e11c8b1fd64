"""fetchrl's fast path gives the very numbers of the stock Gymnasium-Robotics / SB3 path.

- FastFetchReachEnv vs gym.make("FetchReach[Dense]-v4"): observations, rewards, is_success,
  terminated/truncated (truncation at step 50) over many random episodes, within 1e-6 (in fact equal).
- ProcessVecEnv (in one process, and split with a worker process) vs SB3
  DummyVecEnv(Monitor(gym.make(...))): the whole step stream, and the policy parameters after two
  PPO rollouts, exactly equal; the worker's errors, death and shutdown reach the caller.
- A checkpoint trained on the fast path loads and evaluates in plain SB3 on the stock env.
No timing assertions: speed is measured by bench/bench_speed.py.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fetchrl.runtime import ENV_PROCS_VAR, FAST_TORCH_THREADS, LEGACY_ENV_PROCS_VAR, Runtime
from fetchrl.tasks import envs, fetchreach
from fetchrl.tasks import fast as fast_envs
from fetchrl.vecenv import factory
from fetchrl.vecenv.process import ProcessVecEnv

ATOL = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _registered() -> None:
    envs.register_envs()


def _reference_env(env_id: str, **kwargs: Any) -> Any:
    import gymnasium as gym

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gym.make(env_id, **kwargs)


def _assert_obs_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], where: str) -> None:
    assert list(a) == list(b), where
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, (where, key)
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=ATOL, err_msg=f"{where} {key}")


def _random_action(rng: np.random.Generator, step: int) -> np.ndarray:
    """Mostly float32 actions (what SB3 sends), some float64, some outside [-1, 1] (clipped)."""
    action = rng.uniform(-1.3, 1.3, size=4)
    return action if step % 7 == 3 else action.astype(np.float32)


@pytest.mark.parametrize("env_id", fetchreach.FAST_ENV_IDS)
def test_fast_env_matches_reference_over_random_episodes(env_id: str) -> None:
    ref, fast = _reference_env(env_id), fast_envs.make(env_id)
    assert fast.spec is not None and fast.spec.max_episode_steps == fast_envs.MAX_EPISODE_STEPS
    assert fast.observation_space == ref.observation_space and fast.action_space == ref.action_space
    rng = np.random.default_rng(123)
    n_episodes = 100
    for episode in range(n_episodes):
        seed = int(rng.integers(0, 2**31 - 1)) if episode % 2 else episode
        obs_ref, _ = ref.reset(seed=seed)
        obs_fast, _ = fast.reset(seed=seed)
        _assert_obs_close(obs_ref, obs_fast, f"reset seed={seed}")
        for t in range(fast_envs.MAX_EPISODE_STEPS):
            action = _random_action(rng, t)
            o1, r1, term1, trunc1, info1 = ref.step(action)
            o2, r2, term2, trunc2, info2 = fast.step(action)
            where = f"seed={seed} t={t}"
            _assert_obs_close(o1, o2, where)
            assert abs(float(r1) - float(r2)) <= ATOL and np.asarray(r1).dtype == np.asarray(r2).dtype, where
            assert info1.keys() == info2.keys() and float(info1["is_success"]) == float(info2["is_success"]), where
            assert (term1, trunc1) == (term2, trunc2), where
        assert trunc2 and not term2  # Fetch never terminates; it is truncated at step 50
    ref.close()
    fast.close()


def test_fast_env_keeps_reference_state_bit_equal() -> None:
    """The lean step callback skips a full mj_forward; the simulator state must not drift at all."""
    ref = _reference_env("FetchReachDense-v4").unwrapped
    fast = fast_envs.make_raw("FetchReachDense-v4")
    rng = np.random.default_rng(7)
    for seed in range(5):
        ref.reset(seed=seed)
        fast.reset(seed=seed)
        for _ in range(fast_envs.MAX_EPISODE_STEPS):
            action = rng.uniform(-1, 1, size=4).astype(np.float32)
            ref.step(action)
            fast.step(action)
            for field in ("qpos", "qvel", "mocap_pos", "mocap_quat", "site_xpos", "xpos", "qacc_warmstart"):
                assert np.array_equal(getattr(ref.data, field), getattr(fast.data, field)), field


def test_fast_env_rejects_wrong_action_shape_and_unknown_id() -> None:
    env = fast_envs.make("FetchReachDense-v4")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="dimension"):
        env.step(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="no fast implementation"):
        fast_envs.make("FetchSlide-v4")


def _sb3_dummy(env_id: str, n_envs: int, seed: int) -> Any:
    """The issue's reference: SB3 make_vec_env -> DummyVecEnv(Monitor(gym.make(env_id)))."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import DummyVecEnv

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_vec_env(env_id, n_envs=n_envs, seed=seed, vec_env_cls=DummyVecEnv)


def _assert_infos_equal(i1: dict[str, Any], i2: dict[str, Any], where: str) -> None:
    assert list(i1) == list(i2), where
    assert float(i1["is_success"]) == float(i2["is_success"]), where
    assert i1["TimeLimit.truncated"] == i2["TimeLimit.truncated"], where
    if "episode" in i1:
        assert i1["episode"]["r"] == i2["episode"]["r"] and i1["episode"]["l"] == i2["episode"]["l"], where
        for key in i1["terminal_observation"]:
            assert np.array_equal(i1["terminal_observation"][key], i2["terminal_observation"][key]), where


@pytest.mark.parametrize(("env_id", "n_procs", "all_in_worker"), [
    ("FetchReachDense-v4", 1, False), ("FetchReachDense-v4", 2, False), ("FetchPush-v4", 2, False),
    ("FetchReachDense-v4", 2, True), ("FetchPush-v4", 2, True)])
def test_process_vec_env_matches_dummy_vec_env(env_id: str, n_procs: int, all_in_worker: bool) -> None:
    """Split 3 here + 2 in the worker, all 5 here, or (``all_in_worker``, FastSAC's) all 5 in the worker;
    ``episode_ends_next`` says beforehand exactly which steps end episodes."""
    n_envs, seed = 5, 11
    ref = _sb3_dummy(env_id, n_envs, seed)
    fast = ProcessVecEnv(env_id, n_envs, seed=seed, n_procs=n_procs, all_in_worker=all_in_worker)
    assert fast.n_procs == n_procs and fast.n_local == (0 if all_in_worker else 3 if n_procs == 2 else 5)
    o1, o2 = ref.reset(), fast.reset()
    for key in o1:
        assert np.array_equal(o1[key], o2[key])
    rng = np.random.default_rng(0)
    episodes_ended = 0
    for t in range(2 * fast_envs.MAX_EPISODE_STEPS + 10):
        actions = rng.uniform(-1, 1, size=(n_envs, 4)).astype(np.float32)
        ends = fast.episode_ends_next()
        obs1, rew1, done1, infos1 = ref.step(actions)
        obs2, rew2, done2, infos2 = fast.step(actions)
        assert ends == done2.any(), t
        for key in obs1:
            assert obs1[key].dtype == obs2[key].dtype and np.array_equal(obs1[key], obs2[key]), (t, key)
        assert rew1.dtype == rew2.dtype and np.array_equal(rew1, rew2), t
        assert np.array_equal(done1, done2), t
        for i1, i2 in zip(infos1, infos2, strict=True):
            _assert_infos_equal(i1, i2, f"t={t}")
        episodes_ended += int(done2.sum())
    assert episodes_ended == 2 * n_envs
    ref.close()
    fast.close()
    fast.close()  # idempotent


def test_process_vec_env_api_reaches_both_processes() -> None:
    from gymnasium.wrappers import TimeLimit
    from stable_baselines3.common.monitor import Monitor

    vec = ProcessVecEnv("FetchReach-v4", 4, seed=0, n_procs=2)  # envs 2 and 3 in the worker
    try:
        assert vec.get_attr("reward_type") == ["sparse"] * 4
        vec.set_attr("distance_threshold", 0.5, indices=[3, 0])
        assert vec.get_attr("distance_threshold", indices=[3, 1, 0]) == [0.5, 0.05, 0.5]
        far = (np.zeros(3), np.full(3, 0.2), {})  # 0.35 apart: a success only for a threshold of 0.5
        assert vec.env_method("compute_reward", *far, indices=[0, 1, 2, 3]) == [0.0, -1.0, -1.0, 0.0]
        assert all(vec.env_is_wrapped(Monitor)) and all(vec.env_is_wrapped(TimeLimit))
        assert vec.env_is_wrapped(gym_wrapper()) == [False] * 4
        assert vec.seed(5) == [5, 6, 7, 8]
        vec.reset()
        with pytest.raises(ValueError, match="dimension"):
            vec.step(np.zeros((4, 2), dtype=np.float32))
        with pytest.raises(AttributeError):  # raised in the worker, re-raised here
            vec.env_method("no_such_method", indices=[2])
        vec.set_attr("n_substeps", "twenty", indices=[3])  # breaks the worker's env: mj_step raises
        with pytest.raises(TypeError):
            vec.step(np.zeros((4, 4), dtype=np.float32))
    finally:
        vec.close()
    assert not vec._worker.is_alive()


def gym_wrapper() -> type:
    from gymnasium.wrappers import RecordEpisodeStatistics

    return RecordEpisodeStatistics


def test_process_vec_env_reports_a_dead_worker() -> None:
    """A worker killed mid-run makes the next step raise (it does not hang), and close() still works."""
    import signal

    vec = ProcessVecEnv("FetchReachDense-v4", 2, seed=0, n_procs=2)
    vec.reset()
    os.kill(vec._worker.pid, signal.SIGKILL)
    vec._worker.join(timeout=10)
    with pytest.raises(RuntimeError, match="worker process died"):
        vec.step(np.zeros((2, 4), dtype=np.float32))
    vec.close()


def test_env_worker_survives_a_group_sigterm_while_stepping_and_unclosed_envs_do_not_block_exit() -> None:
    """A SIGTERM to the whole process group (systemd, Slurm) must not kill the envs under a training
    process that is stopping cleanly; and a script that never closes its VecEnv still exits."""
    import signal
    import subprocess
    import sys

    vec = ProcessVecEnv("FetchReachDense-v4", 2, seed=0, n_procs=2)
    vec.reset()
    os.kill(vec._worker.pid, signal.SIGTERM)
    for _ in range(20):
        _, _, _, infos = vec.step(np.zeros((2, 4), dtype=np.float32))
    assert vec._worker.is_alive() and len(infos) == 2
    vec.close()
    assert vec._worker.exitcode == 0
    script = ("import numpy as np; from fetchrl.vecenv.process import ProcessVecEnv\n"
              "vec = ProcessVecEnv('FetchReachDense-v4', 2, seed=0, n_procs=2); vec.reset()\n"
              "vec.step(np.zeros((2, 4), dtype=np.float32)); print('stepped')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "stepped", done.stderr


def test_env_worker_exits_when_its_parent_dies(tmp_path: Path) -> None:
    """No orphan: a worker whose training process was killed (SIGKILL: no cleanup) exits by itself."""
    import signal
    import subprocess
    import sys
    import time

    script = ("from fetchrl.vecenv.process import ProcessVecEnv; import time, sys\n"
              "vec = ProcessVecEnv('FetchReachDense-v4', 2, seed=0, n_procs=2)\n"
              "print(vec._worker.pid, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    worker_pid = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            return
        with open(f"/proc/{worker_pid}/stat") as f:  # reaped by init, or a zombie awaiting it
            if f.read().split()[2] == "Z":
                return
        time.sleep(0.2)
    os.kill(worker_pid, signal.SIGKILL)
    pytest.fail("the env worker outlived its parent by 15 s")


def test_process_vec_env_state_round_trip_replays_exactly() -> None:
    """get_state/set_state (used by fetchrl.pipeline.resume for bit-exact resume) replay the same stream."""
    import pickle

    vec = ProcessVecEnv("FetchReachDense-v4", 4, seed=1, n_procs=2)
    vec.reset()
    rng = np.random.default_rng(5)
    for _ in range(30):
        vec.step(rng.uniform(-1, 1, size=(4, 4)).astype(np.float32))
    state = pickle.loads(pickle.dumps(vec.get_state()))
    actions = [rng.uniform(-1, 1, size=(4, 4)).astype(np.float32) for _ in range(60)]  # crosses an episode end
    first = [vec.step(a) for a in actions]
    vec.set_state(state)
    ends = []
    second = []
    for a in actions:
        ends.append(vec.episode_ends_next())
        second.append(vec.step(a))
    assert ends == [bool(d.any()) for _, _, d, _ in second] and sum(ends) == 1  # restored counters
    for (o1, r1, d1, i1), (o2, r2, d2, i2) in zip(first, second, strict=True):
        assert all(np.array_equal(o1[k], o2[k]) for k in o1)
        assert np.array_equal(r1, r2) and np.array_equal(d1, d2)
        assert [i.get("episode", {}).get("r") for i in i1] == [i.get("episode", {}).get("r") for i in i2]
    vec.close()


def _tiny_ppo(env: Any, seed: int) -> Any:
    from stable_baselines3 import PPO

    return PPO("MultiInputPolicy", env, n_steps=64, batch_size=128, n_epochs=2, learning_rate=3e-4,
               clip_range=0.2, gae_lambda=0.95, gamma=0.99, seed=seed, device="cpu", verbose=0)


def test_ppo_on_process_vec_env_gives_identical_parameters() -> None:
    """Two PPO rollouts (1,024 steps, one truncation per env) on each vec env: equal weights."""
    import torch

    params = []
    for vec in (_sb3_dummy("FetchReachDense-v4", 8, 3),
                ProcessVecEnv("FetchReachDense-v4", 8, seed=3, n_procs=2)):
        model = _tiny_ppo(vec, seed=3)
        model.learn(2 * 64 * 8)
        params.append({k: v.clone() for k, v in model.policy.state_dict().items()})
        vec.close()
    ref, fast = params
    assert ref.keys() == fast.keys()
    for key in ref:
        assert torch.equal(ref[key], fast[key]), key


def test_checkpoint_from_fast_path_evaluates_in_plain_sb3(tmp_path: Path) -> None:
    from stable_baselines3 import PPO
    from stable_baselines3.common.evaluation import evaluate_policy

    vec = ProcessVecEnv("FetchReachDense-v4", 4, seed=0)
    model = _tiny_ppo(vec, seed=0)
    model.learn(64 * 4)
    path = tmp_path / "fast_model.zip"
    model.save(path)
    vec.close()
    stock = _sb3_dummy("FetchReachDense-v4", 2, 100)
    loaded = PPO.load(path, env=stock, device="cpu")
    mean_return, _ = evaluate_policy(loaded, stock, n_eval_episodes=4, deterministic=True)
    assert -50.0 <= mean_return <= 0.0  # dense reward: minus the distance, 50 steps
    obs = stock.reset()
    a_loaded, _ = loaded.predict(obs, deterministic=True)
    a_model, _ = model.predict(obs, deterministic=True)
    assert np.array_equal(a_loaded, a_model)
    stock.close()


def test_render_rgb_array_matches_reference() -> None:
    envs.ensure_render_backend()
    try:
        ref = _reference_env("FetchReachDense-v4", render_mode="rgb_array")
        ref.reset(seed=0)
        frame_ref = ref.render()
    except Exception as err:  # no GL backend on this machine
        pytest.skip(f"offscreen rendering unavailable: {err}")
    fast = fast_envs.make("FetchReachDense-v4", render_mode="rgb_array")
    fast.reset(seed=0)
    action = np.array([0.5, -0.5, 0.2, 0.0], dtype=np.float32)
    ref.step(action)
    fast.step(action)
    frame_ref, frame_fast = ref.render(), fast.render()
    assert frame_fast.shape == frame_ref.shape and np.array_equal(frame_fast, frame_ref)
    ref.close()
    fast.close()


def _model_bytes(model: Any) -> bytes:
    import mujoco

    buf = np.empty(mujoco.mj_sizeModel(model), dtype=np.uint8)
    mujoco.mj_saveModel(model, None, buf)
    return buf.tobytes()


def test_vec_env_steps_every_env_with_one_shared_model() -> None:
    """One MjModel for all envs (not for rendering ones), byte-for-byte the model each env would build."""
    vec = ProcessVecEnv("FetchReachDense-v4", 4, seed=0)
    assert len({id(e.model) for e in vec.envs}) == 1
    vec.reset()
    for _ in range(60):  # stepping never writes to the shared model
        vec.step(np.random.default_rng(0).uniform(-1, 1, size=(4, 4)).astype(np.float32))
    assert _model_bytes(vec.envs[0].model) == _model_bytes(fast_envs.make_raw("FetchReachDense-v4").model)
    vec.close()
    rendering = ProcessVecEnv("FetchReachDense-v4", 2, seed=0, render_mode="rgb_array")
    assert rendering.envs[0].model is not rendering.envs[1].model  # render() moves the target site
    rendering.close()


# ============================================================================ the runtime decision
def _no_env_procs_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (ENV_PROCS_VAR, LEGACY_ENV_PROCS_VAR):
        monkeypatch.delenv(var, raising=False)


def test_runtime_decides_the_env_path_and_the_factory_follows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast path only for ids with a fast env and without --reference-env; the env factory builds
    what the runtime says, and both paths start from the same observations."""
    _no_env_procs_cap(monkeypatch)
    fast, ref = Runtime.decide("FetchReachDense-v4"), Runtime.decide("FetchReachDense-v4", reference_env=True)
    assert (fast.fast, fast.torch_threads, fast.env_procs) == (True, FAST_TORCH_THREADS, min(2, os.cpu_count() or 1))
    assert (ref.fast, ref.torch_threads, ref.env_procs) == (False, None, 1)
    assert Runtime.decide("FetchPush-v4").fast and not Runtime.decide("FetchSlide-v4").fast  # Slide: plain SB3
    vec_fast, vec_ref = factory.make_vec_env(fast, 2, seed=4), factory.make_vec_env(ref, 2, seed=4)
    try:
        assert isinstance(vec_fast, ProcessVecEnv) and vec_fast.n_procs == fast.env_procs
        assert type(vec_ref).__name__ == "DummyVecEnv"
        o_fast, o_ref = vec_fast.reset(), vec_ref.reset()
        assert all(np.array_equal(o_fast[k], o_ref[k]) for k in o_ref)
    finally:
        vec_fast.close()
        vec_ref.close()
    for runtime, expected in ((fast, True), (ref, False)):
        env = envs.make_env(runtime)
        assert isinstance(env.unwrapped, fetchreach.FastFetchReachEnv) is expected
        env.close()


@pytest.mark.parametrize("var", [ENV_PROCS_VAR, LEGACY_ENV_PROCS_VAR])
def test_env_process_cap_is_read_once_from_the_environment(var: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sweep worker's share of one core: no env worker process (the sweeps' older name still counts)."""
    _no_env_procs_cap(monkeypatch)
    monkeypatch.setenv(var, "1")
    runtime = Runtime.decide("FetchReachDense-v4")
    monkeypatch.setenv(var, "2")  # decided already: later changes do not reach this runtime's envs
    assert runtime.env_procs == 1
    vec = factory.make_vec_env(runtime, 2, seed=0)
    try:
        assert vec.n_procs == 1 and vec.n_local == 2
    finally:
        vec.close()
