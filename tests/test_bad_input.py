"""The bad-input matrix: every subcommand x every kind of bad input.

Each case must give one line on stderr naming the problem, a non-zero exit code (2 for usage
errors), no traceback, no partial file, and leave earlier artifacts untouched — before any
training starts. The cases run in-process through ``fetchrl.cli.main`` (fast); a representative
few run through the real script in a subprocess.

Unwritable output: tests run as root, where a read-only directory is still writable, so "cannot
write" is provoked with a path under a regular *file* (``--root somefile/sub``), which fails for
every user.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from fetchrl.artifacts import RunPaths
from fetchrl.cli import main

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ch02_ppo_dense_reach.py"
ENV_ID = "FetchReachDense-v4"
PATHS = RunPaths(ENV_ID, 0)  # relative layout; joined to each case's root

SUBCOMMANDS = ("train", "eval", "report", "all", "multi-seed", "ablate", "sweep", "check-env", "diagnose", "plot",
               "video")
TRAINERS = ("train", "all", "multi-seed", "ablate", "sweep")
EVALUATORS = ("eval", "all", "multi-seed", "ablate", "sweep")
SWEEPERS = ("multi-seed", "ablate", "sweep")
#: Arguments a subcommand needs before the bad one (sweep requires --grid).
REQUIRED = {"sweep": ["--grid", "clip_range=0.2"]}
USAGE = 2
POSITIVE = "expected a positive integer"


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    message: str
    """Regex the one stderr line must match."""
    code: int = USAGE
    setup: Callable[[Path], None] | None = None
    """Puts files under the case's root before the command runs."""


def _cmd(command: str, *bad: str) -> tuple[str, ...]:
    return (command, *REQUIRED.get(command, []), *bad)


def _no_checkpoint(root: Path) -> None:
    pass


def _corrupt_checkpoint(root: Path) -> None:
    ckpt = root / PATHS.checkpoint
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"PK\x03\x04 this zip was cut short")


def _eval_json_missing_fields(root: Path) -> None:
    path = root / PATHS.eval_json
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"created_at": "2026-01-01T00:00:00+00:00", "algo": "ppo", "env_id": ENV_ID}))


def _empty_logdir(root: Path) -> None:
    (root / PATHS.tb_dir).mkdir(parents=True)


def _root_under_a_file(root: Path) -> None:
    (root / "somefile").write_text("a regular file, not a directory\n")


def _usage_cases() -> list[Case]:
    """argparse's and the config's checks: unknown names, bad numbers, clip range outside (0, 1]."""
    cases = [Case("unknown-subcommand", ("frobnicate",), r"invalid choice: 'frobnicate'")]
    for cmd in SUBCOMMANDS:
        cases.append(Case(f"{cmd}-unknown-flag", _cmd(cmd, "--frobnicate"), r"unrecognized arguments: --frobnicate"))
        unknown = r"FetchReachDense-v9" if cmd in ("diagnose", "plot", "video") else \
            r"unknown env id 'FetchReachDense-v9'; did you mean FetchReachDense-v4\?"
        cases.append(Case(f"{cmd}-unknown-env-id", _cmd(cmd, "--env-id", "FetchReachDense-v9"), unknown))
        cases.append(Case(f"{cmd}-negative-seed", _cmd(cmd, "--seed", "-1"), r"--seed: expected an integer >= 0"))
    for cmd in TRAINERS:
        for flag in ("--total-steps", "--n-envs"):
            cases += [Case(f"{cmd}{flag}={v}", _cmd(cmd, flag, v), rf"{flag}: {POSITIVE}") for v in ("abc", "0", "-5")]
        cases += [Case(f"{cmd}-clip-range={v}", _cmd(cmd, "--clip-range", v),
                       r"--clip-range: (clip range must be in \(0, 1\]|expected a number in \(0, 1\])")
                  for v in ("0", "1.5", "-0.1", "abc", "nan")]
        # Every hyper-parameter flag takes its bounds from the algorithm's dataclass (fetchrl.algos.ppo).
        cases += [Case(f"{cmd}-gamma=1.5", _cmd(cmd, "--gamma", "1.5"), r"--gamma: gamma must be in \(0, 1\], got 1.5"),
                  Case(f"{cmd}-learning-rate=inf", _cmd(cmd, "--learning-rate", "inf"),
                       r"--learning-rate: learning rate must be > 0, got inf"),
                  Case(f"{cmd}-batch-larger-than-rollout", _cmd(cmd, "--n-envs", "2", "--n-steps", "8"),
                       r"--batch-size 256 is larger than a rollout \(n_steps \* n_envs = 16\)")]
    cases.append(Case("ablate-clip-ranges=1.5", ("ablate", "--clip-ranges", "0.2", "1.5"),
                      r"--clip-ranges: clip range must be in \(0, 1\], got 1.5"))
    cases.append(Case("sweep-grid-clip-range=1.5", ("sweep", "--grid", "clip_range=0.2,1.5"),
                      r"--clip-range must be in \(0, 1\], got 1.5"))
    counts = [(cmd, "--n-eval-episodes") for cmd in EVALUATORS] + [("video", "--episodes")] + \
        [(cmd, "--seeds") for cmd in (*SWEEPERS, "plot")]
    for cmd, flag in counts:
        cases += [Case(f"{cmd}{flag}={v}", _cmd(cmd, flag, v), rf"{flag}: {POSITIVE}") for v in ("abc", "0", "-3")]
    return cases


def _file_cases() -> list[Case]:
    """Missing, corrupt or incomplete inputs on disk; an output root that cannot exist."""
    cases = []
    for cmd in ("eval", "video"):
        cases.append(Case(f"{cmd}-missing-checkpoint", (cmd,), r"checkpoint not found: .*ppo_FetchReachDense-v4_seed0\.zip",
                          setup=_no_checkpoint))
        cases.append(Case(f"{cmd}-corrupt-checkpoint", (cmd,),
                          r"checkpoint .*ppo_FetchReachDense-v4_seed0\.zip is corrupt or truncated",
                          setup=_corrupt_checkpoint))
    cases += [
        Case("train-resume-missing-checkpoint", ("train", "--resume", "--total-steps", "256"),
             r"nothing to resume: no checkpoint at .*seed0\.zip"),
        Case("train-resume-corrupt-checkpoint", ("train", "--resume", "--total-steps", "256"),
             r"checkpoint .*seed0\.zip is corrupt or truncated", setup=_corrupt_checkpoint),
        Case("report-missing-eval-json", ("report",), r"eval JSON not found: .*seed0_eval\.json"),
        Case("report-eval-json-missing-fields", ("report",),
             r"eval JSON .*seed0_eval\.json is missing field\(s\): aggregate, checkpoint", setup=_eval_json_missing_fields),
        Case("diagnose-logdir-without-events", ("diagnose", "--logdir", "{root}/" + str(PATHS.tb_dir)),
             r"no TensorBoard event files .* in .*seed0", setup=_empty_logdir),
        Case("plot-logdir-without-events", ("plot",), r"no TensorBoard event files .* in .*seed0",
             setup=_empty_logdir),
    ]
    for cmd in ("train", "eval", "report", "all", "multi-seed", "ablate", "sweep", "plot", "video"):
        cases.append(Case(f"{cmd}-root-under-a-file", (*_cmd(cmd), "--root", "{root}/somefile/sub"),
                          r"--root .*somefile/sub cannot hold output: .*somefile is not a writable directory",
                          setup=_root_under_a_file))
    return cases


CASES = _usage_cases() + _file_cases()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _prepare(case: Case, root: Path) -> tuple[list[str], dict[str, bytes]]:
    """Earlier artifacts in the root, the case's own files, and the argv with the root filled in."""
    (root / "results").mkdir()
    (root / "results" / "earlier_eval.json").write_text('{"an": "earlier artifact"}\n')
    if case.setup is not None:
        case.setup(root)
    argv = [a.replace("{root}", str(root)) for a in case.argv]
    if case.argv[0] in SUBCOMMANDS:
        if "--root" not in argv and case.argv[0] != "diagnose":
            argv += ["--root", str(root)]
        argv.append("--no-progress")
    return argv, _files(root)


def _check(case: Case, code: int, stderr: str, before: dict[str, bytes], root: Path) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    assert re.search(case.message, lines[0]), lines[0]
    assert code == case.code and code != 0, (code, lines[0])
    assert _files(root) == before, "a file was created, changed or removed"


def _run_in_process(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code or 0)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_in_process(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, before = _prepare(case, tmp_path)
    code = _run_in_process(argv)
    _check(case, code, capsys.readouterr().err, before, tmp_path)


def test_matrix_covers_every_subcommand() -> None:
    from fetchrl.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(SUBCOMMANDS)  # type: ignore[arg-type]
    for cmd in SUBCOMMANDS:
        assert {f"{cmd}-unknown-flag", f"{cmd}-unknown-env-id"} <= {c.id for c in CASES}


#: A representative few through the real script: usage error, bad number, corrupt file, unwritable root,
#: an unknown env id stopped before multi-seed starts any worker process.
SUBPROCESS_CASES = ("unknown-subcommand", "train--total-steps=0", "eval-corrupt-checkpoint",
                    "train-root-under-a-file", "multi-seed-unknown-env-id")


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process(case_id: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    argv, before = _prepare(case, tmp_path)
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    _check(case, proc.returncode, proc.stderr, before, tmp_path)
