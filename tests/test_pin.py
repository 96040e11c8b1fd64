"""The numbers pin: a short real run's weights, optimiser state and eval episodes, against stored digests.

A change anywhere on the train/eval path that alters a single bit fails here, naming the artifact, so
such a change is always made deliberately. Two pins (``tests/pin_digests.json``):

- **portable mode** (``--portable``, :mod:`fetchrl.portable`): one digest for every x86-64 CPU with
  AVX2 — it must hold on an Intel Xeon and an AMD EPYC alike;
- **default mode**: the numbers depend on the CPU, so one digest per *dispatch key* — the kernels
  torch, oneMKL and OpenBLAS chose and torch's thread count, as :func:`fetchrl.portable.dispatch`
  reports them. A key with no stored digest is skipped (with the key), never failed.

To accept new numbers on purpose (a new torch, an intended algorithm change), rerun with
``FETCHRL_UPDATE_PIN=1 .venv/bin/python -m pytest tests/test_pin.py`` and commit the updated
``tests/pin_digests.json`` with the reason. Both tests train through the chapter's own script,
exactly as a reader types it (~30 s each).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

from fetchrl import portable
from fetchrl.artifacts import RunPaths, collect_versions, read_json, write_json

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ch02_ppo_dense_reach.py"
PIN_FILE = Path(__file__).with_name("pin_digests.json")
#: Set to 1 to record this machine's digests instead of comparing them.
UPDATE_VAR = "FETCHRL_UPDATE_PIN"
UPDATE_HINT = f"{UPDATE_VAR}=1 .venv/bin/python -m pytest tests/test_pin.py"
#: The pinned run: the chapter's PPO, short.
SEED, TOTAL_STEPS, EVAL_EPISODES = 5, 16_384, 10
#: What is pinned, in the order a mismatch is reported.
ARTIFACTS = ("policy.pth", "policy.optimizer.pth", "per_episode")


def _cli(*args: str, root: Path, mode: list[str], env: dict[str, str] | None = None) -> None:
    cmd = [sys.executable, str(SCRIPT), *args, "--seed", str(SEED), "--no-progress", "--root", str(root), *mode]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}"


def _run_digests(root: Path, *, portable_mode: bool) -> tuple[dict[str, str], dict[str, Any]]:
    """Train and evaluate the pinned run; (sha256 of each artifact, the checkpoint's meta JSON)."""
    mode = ["--portable"] if portable_mode else []
    _cli("train", "--total-steps", str(TOTAL_STEPS), root=root, mode=mode)
    _cli("eval", "--n-eval-episodes", str(EVAL_EPISODES), root=root, mode=mode)
    paths = RunPaths("FetchReachDense-v4", SEED, root)
    with zipfile.ZipFile(paths.checkpoint) as zf:
        digests = {name: hashlib.sha256(zf.read(name)).hexdigest() for name in ARTIFACTS[:2]}
    episodes = read_json(paths.eval_json, "eval JSON")["per_episode"]
    digests["per_episode"] = hashlib.sha256(json.dumps(episodes, sort_keys=True).encode()).hexdigest()
    return digests, read_json(paths.meta, "checkpoint metadata")


def _dispatch(*, portable_mode: bool) -> dict[str, str]:
    """What torch, oneMKL and OpenBLAS choose in a fresh process of this mode (as the CLI's runs do)."""
    code = ("import json; from fetchrl import portable; "
            + ("portable.apply(); " if portable_mode else "")
            + "print(json.dumps(portable.dispatch()))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    dispatch: dict[str, str] = json.loads(proc.stdout)
    return dispatch


def default_key(dispatch: dict[str, str]) -> str:
    """The default-mode pin's key: the CPU and every kernel choice that changes a number (not its name)."""
    return " | ".join(f"{k}={dispatch[k]}" for k in ("cpu", "torch_capability", "torch_threads", "mkl_cpu_type",
                                                     "mkl_cbwr_branch", "openblas_core", "libm_fma"))


def _load_pins() -> dict[str, Any]:
    return read_json(PIN_FILE, "pin file") if PIN_FILE.is_file() else {"portable": None, "default": {}}


def _check(where: str, pinned: dict[str, Any] | None, got: dict[str, str], dispatch: dict[str, str],
           store: Any) -> None:
    """Compare ``got`` with ``pinned``; on FETCHRL_UPDATE_PIN=1 record it instead (via ``store``)."""
    if os.environ.get(UPDATE_VAR) == "1":
        store({"digests": got, "recorded_with": {**dispatch, **collect_versions()}})
        return
    if pinned is None:
        pytest.skip(f"no {where} pin stored for this machine ({default_key(dispatch)}); "
                    f"record one with {UPDATE_HINT}")
    changed = [f"{name}: pinned {pinned['digests'][name][:16]}, now {got[name][:16]}"
               for name in ARTIFACTS if pinned["digests"][name] != got[name]]
    if changed:
        recorded = pinned.get("recorded_with", {})
        pytest.fail(
            f"{where}: seed {SEED}, {TOTAL_STEPS:,} steps, {EVAL_EPISODES} eval episodes changed numbers — "
            + "; ".join(changed)
            + f". Pinned with torch {recorded.get('torch')}, numpy {recorded.get('numpy')}, mujoco "
            f"{recorded.get('mujoco')}, SB3 {recorded.get('stable_baselines3')} on {recorded.get('cpu_name')}. "
            f"If the change is intended, update the pin deliberately: {UPDATE_HINT}, then commit "
            f"tests/{PIN_FILE.name} saying why.",
            pytrace=False,
        )


def test_portable_mode_pin(tmp_path: Path) -> None:
    """--portable: the same digest on every x86-64 CPU with AVX2 (skipped, with the reason, elsewhere)."""
    reason = portable.unsupported_reason()
    if reason is not None:
        pytest.skip(reason)
    got, meta = _run_digests(tmp_path, portable_mode=True)
    assert meta["portable"] is True

    def store(entry: dict[str, Any]) -> None:
        write_json(PIN_FILE, {**_load_pins(), "portable": entry})

    _check("portable mode", _load_pins().get("portable"), got, _dispatch(portable_mode=True), store)


def test_default_mode_pin_for_this_cpu(tmp_path: Path) -> None:
    """Default mode: this CPU's own digest, when one was recorded for its dispatch key."""
    dispatch = _dispatch(portable_mode=False)
    key = default_key(dispatch)
    pins = _load_pins()
    if os.environ.get(UPDATE_VAR) != "1" and key not in pins.get("default", {}):
        pytest.skip(f"no default-mode pin for this CPU ({key}); numbers in default mode are per CPU — "
                    f"record one with {UPDATE_HINT}")
    got, meta = _run_digests(tmp_path, portable_mode=False)
    assert meta["portable"] is False

    def store(entry: dict[str, Any]) -> None:
        fresh = _load_pins()
        write_json(PIN_FILE, {**fresh, "default": {**fresh.get("default", {}), key: entry}})

    _check(f"default mode on {dispatch['cpu_name']}", pins.get("default", {}).get(key), got, dispatch, store)
