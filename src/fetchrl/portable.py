"""Portable mode (``--portable``): the same config and seed give the same bits on any x86-64 CPU with AVX2.

By default a run's weights and eval JSON depend on the machine, because the libraries under SB3 pick
their kernels when they load, by CPU vendor, instruction set and core count (measured; docs/portable.md):

- **oneMKL**, torch's BLAS for every ``Linear`` layer, runs its AVX-512 or AVX2 kernels on an Intel
  CPU and a generic path on an AMD one; with several threads it splits the work differently again;
- **ATen**, torch's own kernels (tanh, Adam, reductions), has default / AVX2 / AVX-512 builds;
- **OpenBLAS**, numpy's BLAS, computes the eval JSON's ``final_distance`` (``np.linalg.norm`` of a
  3-vector is a ``ddot``) with its SkylakeX kernel on AVX-512 CPUs and its Haswell kernel on AVX2 ones.

Portable mode pins all three to kernels every AVX2 CPU runs identically (:data:`SETTINGS`), and one
thread. MuJoCo needs no pin: it is compiled for AVX with no run-time dispatch; the libm functions it
calls choose their FMA variants on every AVX2 CPU. Every setting is read once, when its library loads,
so :func:`apply` must run before torch or numpy is imported: the CLI calls it first thing, and every
process started later (the forked env worker, spawned sweep workers) inherits the environment.
"""

from __future__ import annotations

import ctypes
import glob
import os
import platform
import sys
from pathlib import Path

from fetchrl.errors import FetchRLError

#: What portable mode sets (before torch and numpy load), and why.
SETTINGS: dict[str, str] = {
    # oneMKL's conditional numerical reproducibility on its SSE2 branch: the one branch oneMKL honours
    # on every vendor (on an AMD CPU it turns any other branch into AUTO, its own generic path).
    "MKL_CBWR": "COMPATIBLE",
    # ATen's AVX2 kernels (their math is torch's bundled Sleef, not the system libm).
    "ATEN_CPU_CAPABILITY": "avx2",
    # numpy's OpenBLAS: the AVX2 kernels, whatever wider ones the CPU has.
    "OPENBLAS_CORETYPE": "Haswell",
    # One thread: MKL's COMPATIBLE branch is reproducible only at a fixed thread count, and eval's
    # forward passes measurably change with it. Training on the fast path uses one thread anyway.
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MKL_DYNAMIC": "FALSE",
}
#: CPU flags (as /proc/cpuinfo spells them) portable mode needs: ATen's AVX2 build and OpenBLAS's
#: Haswell kernels use both, and glibc's libm picks the same variants on every CPU that has them.
REQUIRED_FLAGS = ("avx2", "fma")
#: oneMKL's code for the COMPATIBLE branch (mkl.h: MKL_CBWR_COMPATIBLE) and the query for the branch.
_MKL_CBWR_COMPATIBLE = 3
_MKL_CBWR_BRANCH = 1


# ============================================================================ the CPU and its libraries
def cpu_info() -> dict[str, str]:
    """Vendor, family, model, model name and flags of the first CPU in /proc/cpuinfo ({} elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    return info


def unsupported_reason() -> str | None:
    """Why portable mode cannot run on this machine (None: it can)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return f"portable mode covers x86-64 CPUs; this machine is {platform.machine() or 'unknown'}"
    flags = set(cpu_info().get("flags", "").split())
    if not flags:
        return "portable mode reads the CPU's flags from /proc/cpuinfo, which this system does not have"
    missing = [f.upper() for f in REQUIRED_FLAGS if f not in flags]
    if missing:
        return f"portable mode needs AVX2 and FMA (x86-64-v3); this CPU lacks {', '.join(missing)}"
    return None


def _torch_cpu_library() -> ctypes.CDLL | None:
    """torch's libtorch_cpu (oneMKL is linked into it), if torch is loaded."""
    torch = sys.modules.get("torch")
    if torch is None or torch.__file__ is None:
        return None
    try:
        return ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
    except OSError:
        return None


def _mkl_int(name: str, *args: int) -> int | None:
    """An int-returning oneMKL service function inside libtorch_cpu (None: not there)."""
    lib = _torch_cpu_library()
    func = getattr(lib, name, None) if lib is not None else None
    if func is None:
        return None
    func.restype = ctypes.c_int
    func.argtypes = [ctypes.c_int] * len(args)
    return int(func(*args))


def _openblas_core() -> str | None:
    """The kernel set numpy's OpenBLAS chose ("SkylakeX", "Haswell", ...), if numpy is loaded."""
    numpy = sys.modules.get("numpy")
    if numpy is None or numpy.__file__ is None:
        return None
    libs_dir = Path(numpy.__file__).parent.parent / "numpy.libs"
    for path in sorted(glob.glob(str(libs_dir / "*openblas*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for symbol in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename"):
            func = getattr(lib, symbol, None)
            if func is not None:
                func.restype = ctypes.c_char_p
                name: bytes = func()
                return name.decode()
    return None


def dispatch() -> dict[str, str]:
    """What this process's libraries chose: the facts that decide a run's numbers on this CPU.

    Imports torch and numpy (so call it after :func:`apply` when portable mode is wanted). The values
    are strings for the metadata and the pin file; "?" where a library does not say.
    """
    import numpy  # noqa: F401  (loads OpenBLAS, so _openblas_core can ask it)
    import torch

    info = cpu_info()
    flags = set(info.get("flags", "").split())
    mkl_type = _mkl_int("mkl_serv_cpu_detect")
    mkl_branch = _mkl_int("mkl_serv_cbwr_get", _MKL_CBWR_BRANCH)
    return {
        "cpu": f"{info.get('vendor_id', '?')} family {info.get('cpu family', '?')} model {info.get('model', '?')}",
        "cpu_name": info.get("model name", platform.processor() or "?"),
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": str(torch.get_num_threads()),
        "mkl_cpu_type": "?" if mkl_type is None else str(mkl_type),
        "mkl_cbwr_branch": "?" if mkl_branch is None else str(mkl_branch),
        "openblas_core": _openblas_core() or "?",
        "libm_fma": str(all(f in flags for f in REQUIRED_FLAGS)),
    }


# ============================================================================ the mode
def active() -> bool:
    """True when this process's environment holds every portable setting."""
    return all(os.environ.get(k) == v for k, v in SETTINGS.items())


def problems() -> list[str]:
    """Why this process does not run portably although :func:`apply` ran (empty: it does).

    A library that loaded before :func:`apply` set its variable keeps the kernels it chose then.
    """
    out = [f"{k}={os.environ.get(k)!r}, not {v!r}" for k, v in SETTINGS.items() if os.environ.get(k) != v]
    torch = sys.modules.get("torch")
    if torch is not None:
        capability = torch.backends.cpu.get_cpu_capability()
        if capability != "AVX2":
            out.append(f"torch runs its {capability} kernels, not AVX2")
        if torch.get_num_threads() != 1:
            out.append(f"torch runs {torch.get_num_threads()} threads, not 1")
        branch = _mkl_int("mkl_serv_cbwr_get", _MKL_CBWR_BRANCH)
        if branch is not None and branch != _MKL_CBWR_COMPATIBLE:
            out.append(f"oneMKL runs CNR branch {branch}, not COMPATIBLE ({_MKL_CBWR_COMPATIBLE})")
    core = _openblas_core()
    if core is not None and core != SETTINGS["OPENBLAS_CORETYPE"]:
        out.append(f"numpy's OpenBLAS runs its {core} kernels, not {SETTINGS['OPENBLAS_CORETYPE']}")
    return out


def apply() -> dict[str, str]:
    """Enter portable mode in this process (and every process it starts); return what it set.

    Call it before torch or numpy is imported. Raises FetchRLError when this CPU cannot run the mode,
    or when torch or numpy already loaded with other kernels (nothing can switch them afterwards).
    """
    reason = unsupported_reason()
    if reason is not None:
        raise FetchRLError(f"--portable: {reason}")
    os.environ.update(SETTINGS)
    if "torch" in sys.modules:  # loaded already: its thread count can still be set, its kernels not
        sys.modules["torch"].set_num_threads(1)
    late = problems()
    if late:
        raise FetchRLError(
            "--portable must be chosen before torch and numpy load, but in this process "
            + "; ".join(late) + ". Run the CLI with --portable, or call fetchrl.portable.apply() "
            "before importing torch, numpy or SB3"
        )
    return dict(SETTINGS)


def require(portable: bool) -> None:
    """Make sure a run configured with ``portable`` can run here: :func:`apply` when it asks for the mode."""
    if portable:
        apply()
