"""The sweep layer: a tiny real 2-seed x 2-config sweep on the local and the Ray backend, a trial
made to fail, resume, aggregation recomputed from the eval JSONs on disk, and the grid parser."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fetchrl.config import EvalConfig, TrainConfig
from fetchrl.errors import FetchRLError
from fetchrl.sweep.aggregate import aggregate_from_disk
from fetchrl.sweep.base import get_runner, run_trials
from fetchrl.sweep.ledger import TrialLedger
from fetchrl.sweep.plan import SweepPlan, grid_plan, parse_grid
from fetchrl.sweep.progress import SweepProgress
from fetchrl.sweep.ray import probe, run_trial_task
from fetchrl.sweep.trials import FAIL_TRIAL_ENV, Trial, TrialOutcome, is_complete

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ch02_ppo_dense_reach.py"
#: A few PPO updates per trial: seconds of training, real artifacts.
TINY_SWEEP = TrainConfig(total_steps=1024, n_envs=2, n_steps=256, batch_size=64, n_epochs=2)
TINY_SWEEP_EVAL = EvalConfig(n_episodes=3)
SEEDS = [0, 1]
GRID: dict[str, list[Any]] = {"clip_range": [0.1, 0.2]}
#: A fifth trial, seed 2 of the first configuration, made to fail in the worker by the test hook.
FAILING_TAG, FAILING_SEED = "clip_range=0.1", 2
METRICS = {"success_rate": "success_rate", "return_mean": "return", "final_distance_mean": "final_distance"}
RLIABLE_FIELDS = {"iqm", "iqm_ci", "mean", "mean_ci", "n_runs"}


@dataclass
class SweepRun:
    plan: SweepPlan
    outcomes: list[TrialOutcome]


def _plan(root: Path) -> SweepPlan:
    return grid_plan("tiny", TINY_SWEEP, TINY_SWEEP_EVAL, SEEDS, GRID, root)


def _failing_trial(plan: SweepPlan) -> Trial:
    cfg = plan.base.replace(seed=FAILING_SEED, **plan.configs[FAILING_TAG])
    return Trial(cfg, plan.eval_config, plan.config_root(FAILING_TAG), FAILING_TAG)


def _run_sweep(root: Path, backend: str) -> SweepRun:
    """The 2 x 2 sweep plus the failing trial, on two workers."""
    plan = _plan(root)
    failing = _failing_trial(plan)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(FAIL_TRIAL_ENV, failing.name)
        outcomes = run_trials([*plan.trials(), failing], backend=backend, workers=2, progress=False)
    return SweepRun(plan, outcomes)


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory: pytest.TempPathFactory) -> SweepRun:
    return _run_sweep(tmp_path_factory.mktemp("sweep_local"), "local")


@pytest.fixture(scope="module")
def ray_sweep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SweepRun]:
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install '.[ray]'): Ray backend untested")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        yield _run_sweep(tmp_path_factory.mktemp("sweep_ray"), "ray")
    finally:
        ray.shutdown()


def _schema(obj: Any) -> Any:
    """The shape of a JSON document: keys and value types, not values."""
    if isinstance(obj, dict):
        return {k: _schema(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_schema(v) for v in obj[:1]]
    return type(obj).__name__


def _aggregate_jsons(run: SweepRun, out_dir: Path) -> dict[str, dict[str, Any]]:
    """Every configuration's aggregate, written to disk and read back as plain JSON."""
    out = {}
    for tag, agg in run.plan.aggregates().items():
        path = out_dir / f"{tag}.json"
        agg.to_json(path)
        out[tag] = json.loads(path.read_text())
    return out


def _check_outcomes(run: SweepRun) -> None:
    *good, failed = run.outcomes
    assert [o.trial.name for o in good] == [t.name for t in run.plan.trials()]
    assert all(o.ok and not o.skipped and o.attempts == 1 and o.seconds > 0 for o in good), good
    assert not failed.ok and failed.attempts == 2, failed  # retried once, then reported
    assert "injected failure" in failed.error and failed.trial.name == f"{FAILING_TAG}/seed{FAILING_SEED}"
    assert not failed.trial.paths.eval_json.exists()


def _check_against_eval_jsons(run: SweepRun, aggregates: dict[str, dict[str, Any]]) -> None:
    """Means and sample stds equal those recomputed from the per-trial eval JSON files."""
    assert set(aggregates) == set(run.plan.configs)
    for tag, agg in aggregates.items():
        root = run.plan.config_root(tag)
        evals = [json.loads(t.paths.eval_json.read_text()) for t in run.plan.trials() if t.tag == tag]
        assert agg["seeds"] == SEEDS  # the failed seed 2 is left out
        assert agg["config"] == run.plan.base.replace(**run.plan.configs[tag]).hyperparameters
        assert [s["seed"] for s in agg["per_seed"]] == SEEDS
        for key, name in METRICS.items():
            values = np.array([e["aggregate"][key] for e in evals])
            assert [s[key] for s in agg["per_seed"]] == pytest.approx(values.tolist())
            assert agg["aggregate"][f"{name}_mean"] == pytest.approx(values.mean())
            assert agg["aggregate"][f"{name}_std"] == pytest.approx(values.std(ddof=1))
            r = agg["rliable"][key]
            assert set(r) == RLIABLE_FIELDS and r["n_runs"] == len(SEEDS)
            assert r["iqm_ci"][0] <= r["iqm"] <= r["iqm_ci"][1]
            assert r["mean_ci"][0] <= r["mean"] <= r["mean_ci"][1]
            assert r["mean"] == pytest.approx(values.mean())
        assert root.is_dir()


# ============================================================================ local backend
def test_local_sweep_finishes_every_trial_despite_one_that_fails(local_sweep: SweepRun) -> None:
    _check_outcomes(local_sweep)
    for t in local_sweep.plan.trials():
        assert is_complete(t), t.name
        assert t.paths.root == local_sweep.plan.root / "sweeps" / "tiny" / t.tag
        assert t.paths.tb_dir.is_dir()


def test_local_aggregates_equal_recomputation_from_eval_jsons(local_sweep: SweepRun, tmp_path: Path) -> None:
    _check_against_eval_jsons(local_sweep, _aggregate_jsons(local_sweep, tmp_path))


def test_resumed_sweep_skips_completed_trials_and_reruns_the_failed_one(local_sweep: SweepRun) -> None:
    trials = local_sweep.plan.trials()
    files = [p for t in trials for p in (t.paths.checkpoint, t.paths.meta, t.paths.eval_json)]
    mtimes = [p.stat().st_mtime_ns for p in files]
    failing = _failing_trial(local_sweep.plan)
    outcomes = run_trials([*trials, failing], backend="local", workers=2, progress=False)
    *skipped, rerun = outcomes
    assert all(o.ok and o.skipped and o.attempts == 0 for o in skipped)
    assert [p.stat().st_mtime_ns for p in files] == mtimes  # no trial trained or evaluated again
    assert rerun.ok and not rerun.skipped and rerun.attempts == 1 and is_complete(failing)


def test_is_complete_rejects_stale_or_mismatched_artifacts(local_sweep: SweepRun) -> None:
    trial = local_sweep.plan.trials()[0]
    assert is_complete(trial)
    assert not is_complete(Trial(trial.config.replace(total_steps=2048), trial.eval_config, trial.root, trial.tag))
    assert not is_complete(Trial(trial.config.replace(gamma=0.9), trial.eval_config, trial.root, trial.tag))
    assert not is_complete(Trial(trial.config, EvalConfig(n_episodes=4), trial.root, trial.tag))
    meta = trial.paths.meta
    stat = meta.stat()
    try:  # a meta newer than the eval JSON: the eval belongs to an earlier checkpoint
        os.utime(meta, ns=(stat.st_atime_ns, trial.paths.eval_json.stat().st_mtime_ns + 10**9))
        assert not is_complete(trial)
    finally:
        os.utime(meta, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert is_complete(trial)


# ============================================================================ Ray backend
def test_ray_sweep_matches_the_local_one(ray_sweep: SweepRun, local_sweep: SweepRun, tmp_path: Path) -> None:
    """Real local Ray instance (num_cpus=2): same outcomes, same artifact layout, same aggregate schema."""
    _check_outcomes(ray_sweep)
    ray_aggs = _aggregate_jsons(ray_sweep, tmp_path / "ray")
    local_aggs = _aggregate_jsons(local_sweep, tmp_path / "local")
    _check_against_eval_jsons(ray_sweep, ray_aggs)
    assert _schema(ray_aggs) == _schema(local_aggs)

    def layout(run: SweepRun) -> list[str]:
        root = run.plan.root
        return sorted(p.relative_to(root).as_posix() for t in run.plan.trials()
                      for p in (t.paths.checkpoint, t.paths.meta, t.paths.eval_json) if p.is_file())

    assert layout(ray_sweep) == layout(local_sweep)
    for t in ray_sweep.plan.trials():  # the artifacts name the driver's paths, not the task's temp dir
        assert json.loads(t.paths.meta.read_text())["checkpoint"] == str(t.paths.checkpoint)
        assert json.loads(t.paths.eval_json.read_text())["checkpoint"] == str(t.paths.checkpoint)
        assert any(t.paths.tb_dir.glob("events.out.tfevents.*"))
    if (os.cpu_count() or 1) < 4:  # one torch thread per trial on both backends: identical numbers
        for tag in ray_aggs:
            assert ray_aggs[tag]["per_seed"] == local_aggs[tag]["per_seed"]


def test_ray_missing_gives_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(FetchRLError, match=r"Ray is not installed: pip install '\.\[ray\]'"):
        get_runner("ray")


# ============================================================================ bookkeeping
def test_ledger_retries_once_and_progress_counts_add_up() -> None:
    trials = _plan(Path("unused")).trials()[:3]
    progress = SweepProgress(len(trials) + 1, enabled=False)
    progress.update(skipped=1)
    ledger = TrialLedger(trials, progress)
    for i in range(3):
        ledger.start(i)
    assert (progress.running, progress.queued, progress.done) == (3, 0, 1)
    assert ledger.settle(0, True, "", 2.0) is False
    assert ledger.settle(1, False, "boom", 0.5) is True  # first failure: retry
    assert (progress.running, progress.queued, progress.retries) == (1, 1, 1)
    ledger.start(1)
    assert ledger.settle(1, False, "boom again", 0.5) is False  # second failure: reported
    assert ledger.settle(2, True, "", 3.0) is False
    assert (progress.done, progress.failed, progress.running, progress.queued) == (3, 1, 0, 0)
    assert progress.eta_seconds() == 0.0
    out = ledger.outcomes()
    assert [(o.ok, o.attempts, o.error) for o in out] == [(True, 1, ""), (False, 2, "boom again"), (True, 1, "")]
    assert out[1].seconds == pytest.approx(1.0)


def test_run_trials_rejects_unknown_backends_and_colliding_trials(tmp_path: Path) -> None:
    trials = _plan(tmp_path).trials()
    with pytest.raises(FetchRLError, match="unknown backend 'dask'"):
        run_trials(trials, backend="dask", progress=False)
    with pytest.raises(FetchRLError, match="same artifacts"):
        run_trials([trials[0], trials[0]], progress=False)


def test_aggregate_from_disk_without_eval_json_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FetchRLError, match="no eval JSON found"):
        aggregate_from_disk(TINY_SWEEP.env_id, iter([0, 1]), tmp_path)


# ============================================================================ grids
def test_parse_grid_types_values_and_plans_every_combination(tmp_path: Path) -> None:
    grid = parse_grid(["clip_range=0.1,0.2,0.4", "learning_rate=3e-4,1e-4", "n-epochs=5"])
    assert grid == {"clip_range": [0.1, 0.2, 0.4], "learning_rate": [3e-4, 1e-4], "n_epochs": [5]}
    assert isinstance(grid["n_epochs"][0], int)
    plan = grid_plan("g", TINY_SWEEP, TINY_SWEEP_EVAL, [0, 1], grid, tmp_path)
    assert len(plan.configs) == 6 and len(plan.trials()) == 12
    assert "clip_range=0.1,learning_rate=0.0003,n_epochs=5" in plan.configs


@pytest.mark.parametrize(("items", "message"), [
    (["clip_range"], "expected name=v1,v2"),
    (["clip_range="], "expected name=v1,v2"),
    (["seed=1,2"], "not a PPO hyper-parameter"),
    (["policy=MlpPolicy"], "not a PPO hyper-parameter"),
    (["clip_range=0.1,abc"], "values must be float"),
    (["n_steps=256,1e3"], "values must be int"),
    (["clip_range=0.1,,0.2"], "values must be float"),
    (["learning_rate=nan"], "finite"),
    (["clip_range=0.1,0.1"], "duplicate value"),
    (["clip_range=0.1", "clip_range=0.2"], "given twice"),
])
def test_parse_grid_errors(items: list[str], message: str) -> None:
    with pytest.raises(FetchRLError, match=message):
        parse_grid(items)


def test_grid_plan_validates_every_configuration_before_running(tmp_path: Path) -> None:
    with pytest.raises(FetchRLError, match="--clip-range must be in"):
        grid_plan("bad", TINY_SWEEP, TINY_SWEEP_EVAL, [0], {"clip_range": [0.2, 1.5]}, tmp_path)


def test_ray_task_body_forwards_the_driver_env_and_restores_the_worker_env(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task body runs without Ray; a reused Ray worker must not keep one sweep's FETCHRL_* variables."""
    import torch

    trial = _plan(tmp_path).trials()[0]
    monkeypatch.setenv("FETCHRL_ENV_THREADS", "7")
    monkeypatch.delenv(FAIL_TRIAL_ENV, raising=False)
    threads = torch.get_num_threads()
    try:
        result = run_trial_task(trial, 1, {FAIL_TRIAL_ENV: trial.name})
    finally:
        torch.set_num_threads(threads)
    assert result.ok is False and "injected failure" in result.error and result.files == {}
    assert FAIL_TRIAL_ENV not in os.environ and os.environ["FETCHRL_ENV_THREADS"] == "7"
    assert not trial.paths.checkpoint.exists()


# ============================================================================ Ray: where it connects, what it exposes
def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probe_fails_at_once_on_an_unreachable_or_malformed_address() -> None:
    port = _closed_port()
    with pytest.raises(FetchRLError, match=rf"cannot reach the Ray cluster at '127\.0\.0\.1:{port}': Connection refused") as err:
        probe(f"127.0.0.1:{port}")
    assert err.value.exit_code == 1
    with pytest.raises(FetchRLError, match="expected auto, HOST:PORT or ray://HOST:PORT") as err:
        probe("head-node")
    assert err.value.exit_code == 2
    probe("auto")  # Ray resolves it (from `ray start`'s address file)


def test_unreachable_ray_address_is_one_clear_line(tmp_path: Path) -> None:
    """Ray retries an unreachable GCS for minutes, printing raw gcs_client/rpc_client lines; we do not dial it."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install '.[ray]'): Ray backend untested")
    port = _closed_port()
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "multi-seed", "--backend", "ray", "--ray-address", f"127.0.0.1:{port}",
         "--seeds", "1", "--total-steps", "1024", "--n-envs", "2", "--n-steps", "512", "--n-eval-episodes", "2",
         "--no-progress", "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the Ray cluster at '127.0.0.1:{port}'"), proc.stderr
    assert not list(tmp_path.rglob("*.zip"))  # nothing trained


#: Run in a fresh interpreter (Ray reads the loopback switch when it is imported): start the sweep's own
#: local Ray instance and report its addresses and every TCP port its processes listen on.
_LOCAL_RAY_PROBE = r"""
import ipaddress, json, os
from pathlib import Path
from fetchrl.sweep.ray import connect, import_ray

def listening() -> list[str]:
    # LISTEN sockets (state 0A) of this process and its descendants (GCS, raylet, agents, workers)
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, rest = stat.read_text().split(") ", 1)
        except OSError:
            continue
        children.setdefault(int(rest.split()[1]), []).append(int(stat.parent.name))
    pids, todo = set(), [os.getpid()]
    while todo:
        pid = todo.pop()
        pids.add(pid)
        todo += children.get(pid, [])
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    out = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:
                continue
            hexip, port = f[1].split(":")
            raw = bytes.fromhex(hexip)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            ip = ipaddress.ip_address(raw)
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                ip = ip.ipv4_mapped
            out.append(f"{ip}:{int(port, 16)}")
    return out

ray = import_ray(loopback=True)
assert connect(ray, None)
try:
    ctx = ray.init(ignore_reinit_error=True)
    print(json.dumps({"node_ip": ray.util.get_node_ip_address(), "gcs": ctx.address_info["gcs_address"],
                      "dashboard_url": ctx.dashboard_url, "listening": listening()}))
finally:
    ray.shutdown()
"""


def test_local_ray_instance_listens_on_loopback_only_with_no_dashboard() -> None:
    """Ray has no authentication (CVE-2023-48022): the instance a sweep starts must not be reachable
    from the network. Every port its processes listen on is on 127.0.0.1, and the dashboard is off."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install '.[ray]'): Ray backend untested")
    proc = subprocess.run([sys.executable, "-c", _LOCAL_RAY_PROBE], capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["node_ip"] == "127.0.0.1" and seen["gcs"].startswith("127.0.0.1:")
    assert not seen["dashboard_url"]
    assert seen["gcs"] in seen["listening"], seen  # the probe does see Ray's own sockets
    assert all(ipaddress.ip_address(a.rpartition(":")[0]).is_loopback for a in seen["listening"]), seen
