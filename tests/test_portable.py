"""Portable mode's contract: it is applied before the libraries load, refused when it cannot hold,
recorded in the checkpoint's metadata, inherited by worker processes, and kept on resume.

The numbers themselves are pinned by ``tests/test_pin.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fetchrl import portable
from fetchrl.artifacts import RunPaths, read_json
from fetchrl.errors import FetchRLError

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ch02_ppo_dense_reach.py"
#: A few PPO updates in seconds.
TINY = ["--total-steps", "512", "--n-envs", "2", "--n-steps", "128", "--batch-size", "64", "--n-epochs", "1"]

needs_portable_cpu = pytest.mark.skipif(portable.unsupported_reason() is not None,
                                        reason=str(portable.unsupported_reason()))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--no-progress"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_cpu_without_avx2_or_x86_is_refused_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(portable, "cpu_info", lambda: {"vendor_id": "GenuineIntel", "flags": "fpu sse2 avx"})
    monkeypatch.setattr(portable.platform, "machine", lambda: "x86_64")
    assert "lacks AVX2, FMA" in str(portable.unsupported_reason())
    with pytest.raises(FetchRLError, match="needs AVX2 and FMA"):
        portable.apply()
    monkeypatch.setattr(portable.platform, "machine", lambda: "aarch64")
    assert "covers x86-64 CPUs; this machine is aarch64" in str(portable.unsupported_reason())


@needs_portable_cpu
def test_apply_before_the_libraries_load_pins_their_kernels() -> None:
    out = _python("import json; from fetchrl import portable; portable.apply(); "
                  "print(json.dumps(portable.dispatch()))")
    assert out.returncode == 0, out.stderr
    dispatch = json.loads(out.stdout)
    assert dispatch["torch_capability"] == "AVX2"
    assert dispatch["torch_threads"] == "1"
    assert dispatch["mkl_cbwr_branch"] in ("3", "?")  # 3: oneMKL's COMPATIBLE branch
    assert dispatch["openblas_core"] in ("Haswell", "?")


@needs_portable_cpu
def test_apply_after_torch_ran_is_refused_naming_what_is_already_fixed() -> None:
    out = _python("import torch; torch.mm(torch.ones(4, 4), torch.ones(4, 4)).tanh(); "
                  "from fetchrl import portable; from fetchrl.errors import FetchRLError\n"
                  "try:\n    portable.apply()\nexcept FetchRLError as err:\n    print(err)")
    assert out.returncode == 0, out.stderr
    assert "must be chosen before torch and numpy load" in out.stdout
    assert "oneMKL runs CNR branch 1, not COMPATIBLE" in out.stdout or "torch runs" in out.stdout


@needs_portable_cpu
def test_portable_run_is_recorded_and_resumes_only_in_the_same_mode(tmp_path: Path) -> None:
    root = ["--root", str(tmp_path), "--seed", "3"]
    first = _cli("train", *root, *TINY, "--portable")
    assert first.returncode == 0, first.stderr
    paths = RunPaths("FetchReachDense-v4", 3, tmp_path)
    assert read_json(paths.meta, "meta")["portable"] is True

    more = [a if a != "512" else "1024" for a in TINY]
    refused = _cli("train", "--resume", *root, *more)
    assert refused.returncode == 2
    assert "refusing to resume" in refused.stderr and "portable True != False" in refused.stderr

    resumed = _cli("train", "--resume", *root, *more, "--portable")
    assert resumed.returncode == 0, resumed.stderr
    meta = read_json(paths.meta, "meta")
    assert meta["portable"] is True and meta["num_timesteps"] == 1024


@needs_portable_cpu
def test_spawned_sweep_workers_run_portably(tmp_path: Path) -> None:
    """A trial's worker is a fresh spawned interpreter: it inherits the CLI's settings, and its
    ``train`` re-checks them (it would fail the trial if torch had loaded other kernels)."""
    out = _cli("multi-seed", "--seeds", "1", "--workers", "1", "--n-eval-episodes", "2", "--root", str(tmp_path),
               *TINY, "--portable")
    assert out.returncode == 0, out.stderr
    assert read_json(RunPaths("FetchReachDense-v4", 0, tmp_path).meta, "meta")["portable"] is True
