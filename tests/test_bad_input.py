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
import torch

from fetchrl.algos.base import MAX_EVAL_EPISODES, MAX_ROLLOUT, MAX_SEED, RUN_BOUNDS
from fetchrl.artifacts import EpisodeRecord, EvalResult, RunPaths, aggregate_episodes
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
HAS_GPU = torch.cuda.is_available()


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


def _valid_eval(n: int = 4) -> dict[str, object]:
    """An eval JSON every check accepts (FetchReachDense-v4: returns in [-250, 0], 50 steps, rows = aggregate)."""
    rows = [EpisodeRecord(seed=1_000_000 + i, return_=-7.0 + 0.5 * i, length=50, success=i % 2 == 0,
                          final_distance=0.01 + 0.02 * i, time_to_success=10 if i % 2 == 0 else None,
                          action_smoothness=0.01, action_max_abs=0.5) for i in range(n)]
    return EvalResult(created_at="2026-01-01T00:00:00+00:00", algo="ppo", env_id=ENV_ID,
                      checkpoint=str(PATHS.checkpoint), device="cpu", n_episodes=n, seeds=[r.seed for r in rows],
                      deterministic=True, aggregate=aggregate_episodes(rows), per_episode=rows, versions={},
                      checkpoint_sha256="0" * 64).to_dict()


def _bad_eval(change: Callable[[dict], None], paths: RunPaths = PATHS) -> Callable[[Path], None]:  # type: ignore[type-arg]
    """Writes the valid eval JSON at ``paths.eval_json`` with ``change`` applied (NaN written as JSON's NaN,
    as Python's json reads it)."""

    def setup(root: Path) -> None:
        data = _valid_eval()
        change(data)
        path = root / paths.eval_json
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))

    return setup


def _stale_pair(root: Path) -> None:
    """An eval JSON recording one checkpoint digest beside a checkpoint with another (the seed was retrained)."""
    _bad_eval(lambda d: None)(root)
    ckpt = root / PATHS.checkpoint
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"the weights of a later training run")


#: Issue class 4: impossible values in an eval JSON are refused at load, naming the file and the value.
BAD_EVALS: dict[str, tuple[Callable[[dict], None], str]] = {  # type: ignore[type-arg]
    "success-rate-word": (lambda d: d["aggregate"].update(success_rate="high"),
                          r"aggregate\.success_rate must be a finite number in \[0, 1\], got 'high'"),
    "success-rate-nan": (lambda d: d["aggregate"].update(success_rate=float("nan")),
                         r"aggregate\.success_rate must be a finite number in \[0, 1\], got nan"),
    "success-rate-null": (lambda d: d["aggregate"].update(success_rate=None), r"aggregate\.success_rate .* got None"),
    "success-rate-1.5": (lambda d: d["aggregate"].update(success_rate=1.5), r"aggregate\.success_rate .* got 1\.5"),
    "negative-distance": (lambda d: d["aggregate"].update(final_distance_mean=-5),
                          r"aggregate\.final_distance_mean must be a finite number in \[0, 5\], got -5"),
    "return-1e9": (lambda d: d["aggregate"].update(return_mean=1e9),
                   r"aggregate\.return_mean must be a finite number in \[-250, 0\], got 1000000000\.0"),
    "return-inf": (lambda d: d["aggregate"].update(return_mean=float("-inf")), r"aggregate\.return_mean .* got -inf"),
    "aggregate-disagrees": (lambda d: d["aggregate"].update(return_mean=-1.0),
                            r"aggregate\.return_mean = -1\.0 disagrees with its per_episode rows \(which give -6\.25\)"),
    "row-negative-distance": (lambda d: d["per_episode"][2].update(final_distance=-0.1),
                              r"per_episode\[2\]\.final_distance must be a finite number in \[0, 5\], got -0\.1"),
    "row-too-long": (lambda d: d["per_episode"][1].update(length=51), r"per_episode\[1\]\.length must be an integer <= 50"),
    "row-success-word": (lambda d: d["per_episode"][0].update(success="yes"), r"per_episode\[0\]\.success must be true"),
    "row-seed": (lambda d: d["per_episode"][3].update(seed=5), r"per_episode\[3\]\.seed 5 is not seeds\[3\] = 1000003"),
    "n-episodes": (lambda d: d.update(n_episodes=100), r"n_episodes is 100 but there are 4 per_episode rows and 4 seeds"),
}


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
    return cases + _bound_cases(counts) + _task_cases()


def _bound_cases(counts: list[tuple[str, str]]) -> list[Case]:
    """Issue classes 2 and 3: every count has an upper end, seeds stay numpy's, --device is one torch can use,
    and every hyper-parameter follows one rule (fetchrl.algos.base); each refused before any work."""
    cases = []
    for cmd in SUBCOMMANDS:
        cases += [Case(f"{cmd}-seed={v}", _cmd(cmd, "--seed", v), rf"--seed: expected an integer <= {MAX_SEED}, got {v}")
                  for v in ("99999999999", str(MAX_SEED + 1))]
        cases.append(Case(f"{cmd}-seed=10**60", _cmd(cmd, "--seed", "1" + "0" * 60),
                          rf"--seed: expected an integer <= {MAX_SEED}, got 100000000000\.\.\. \(61 digits\)"))
        cases.append(Case(f"{cmd}-device=gpu", _cmd(cmd, "--device", "gpu"),
                          r"--device: expected cpu, cuda, cuda:N, mps or auto, got 'gpu'"))
        if not HAS_GPU:  # SB3 would train on the CPU without a word
            cases += [Case(f"{cmd}-device={v}", _cmd(cmd, "--device", v), rf"--device {v}: torch .* sees no CUDA GPU")
                      for v in ("cuda", "cuda:5")]
        if not torch.backends.mps.is_available():
            cases.append(Case(f"{cmd}-device=mps", _cmd(cmd, "--device", "mps"), r"--device mps: torch has no Apple MPS"))
    for cmd in TRAINERS:
        cases += [
            # env i is seeded seed + i: the last of the 8 envs would be past 2**32 - 1 (numpy's ValueError)
            Case(f"{cmd}-seed-span", _cmd(cmd, "--seed", str(MAX_SEED - 3)),
                 rf"--seed {MAX_SEED - 3} with --n-envs 8 seeds envs up to {MAX_SEED + 4}, past 2\*\*32 - 1; "
                 rf"use --seed <= {MAX_SEED - 7}"),
            Case(f"{cmd}-total-steps=10**10", _cmd(cmd, "--total-steps", str(10**10)),
                 r"--total-steps: expected an integer <= 1000000000, got 10000000000"),
            Case(f"{cmd}-n-envs=1000", _cmd(cmd, "--n-envs", "1000"), r"--n-envs: expected an integer <= 256, got 1000"),
            Case(f"{cmd}-max-grad-norm=0", _cmd(cmd, "--max-grad-norm", "0"),
                 r"--max-grad-norm: max grad norm must be > 0, got 0.0"),
            Case(f"{cmd}-vf-coef=-1", _cmd(cmd, "--vf-coef", "-1"), r"--vf-coef: vf coef must be >= 0, got -1.0"),
            Case(f"{cmd}-ent-coef=nan", _cmd(cmd, "--ent-coef", "nan"), r"--ent-coef: ent coef must be >= 0, got nan"),
            Case(f"{cmd}-n-epochs=0", _cmd(cmd, "--n-epochs", "0"), r"--n-epochs: expected a positive integer, got 0"),
            Case(f"{cmd}-batch-size=3", _cmd(cmd, "--batch-size", "3"),
                 r"--batch-size 3 must divide the rollout \(n_steps \* n_envs = 8192\) so every minibatch is full; "
                 r"e\.g\. --batch-size 2"),
            Case(f"{cmd}-batch-size=1", _cmd(cmd, "--batch-size", "1"), r"--batch-size must be >= 2 .*, got 1"),
            Case(f"{cmd}-rollout-too-large", _cmd(cmd, "--n-steps", "1000000"),
                 rf"a rollout of n_steps \* n_envs = 8000000 transitions is more than {MAX_ROLLOUT}"),
        ]
    cases.append(Case("train-checkpoint-every=10**10", ("train", "--checkpoint-every", str(10**10)),
                      r"--checkpoint-every: expected an integer <= 1000000000"))
    cases.append(Case("sweep-grid-max-grad-norm=0", ("sweep", "--grid", "max_grad_norm=0.5,0"),
                      r"--max-grad-norm must be > 0, got 0.0"))
    cases.append(Case("sweep-grid-batch-size=3", ("sweep", "--grid", "batch_size=3"),
                      r"--batch-size 3 must divide the rollout"))
    for cmd, flag in counts:
        high = f"{RUN_BOUNDS[flag[2:].replace('-', '_')].high:.0f}" if flag != "--n-eval-episodes" else \
            str(MAX_EVAL_EPISODES)
        big = "99999999999999"  # the issue's: 24 GB resident before the OOM killer, no message
        cases.append(Case(f"{cmd}{flag}={big}", _cmd(cmd, flag, big), rf"{flag}: expected an integer <= {high}, got {big}"))
    for cmd in SWEEPERS:
        cases.append(Case(f"{cmd}-workers=1000", _cmd(cmd, "--workers", "1000"),
                          r"--workers: expected an integer <= 256, got 1000"))
    return cases


def _task_cases() -> list[Case]:
    """A registered id that is not a Fetch task: check-env's verdict, never an AttributeError from deep inside."""
    cases = []
    for env_id in ("CartPole-v1", "Pendulum-v1"):  # Discrete actions; a Box observation
        cases += [Case(f"{cmd}-{env_id}", _cmd(cmd, "--env-id", env_id), rf"check-env failed for {env_id}", code=1)
                  for cmd in TRAINERS]
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
        *(Case(f"report-eval-{name}", ("report",), r"eval JSON .*seed0_eval\.json is invalid: " + message,
               setup=_bad_eval(change)) for name, (change, message) in BAD_EVALS.items()),
        Case("report-stale-eval", ("report",), r".*seed0_eval\.json was made from another checkpoint than "
             r".*ppo_FetchReachDense-v4_seed0\.zip \(sha256 000000000000; now [0-9a-f]{12}\): the seed was retrained "
             r"since; run `eval --seed 0 --root .*` first", setup=_stale_pair),
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


def _files(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory (None) under ``root``: an empty folder left behind counts too."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


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
    assert _files(root) == before, "a file or folder was created, changed or removed"


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
        assert {f"{cmd}-unknown-flag", f"{cmd}-unknown-env-id", f"{cmd}-seed=99999999999", f"{cmd}-device=gpu"} <= \
            {c.id for c in CASES}
    assert len({c.id for c in CASES}) == len(CASES)


def test_check_env_on_a_task_that_is_not_fetch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-env's own job: FAIL rows on stdout and exit 1 (no stderr line), never an AttributeError."""
    code = _run_in_process(["check-env", "--env-id", "CartPole-v1", "--root", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 1 and err == "", err
    assert "Discrete(2) is not a Box" in out and "FAIL" in out and "PASS" not in out
    assert list(tmp_path.iterdir()) == []


def _chapter_cases(chapter_id: str) -> list[Case]:
    """The run-level bounds on every command of one chapter's script (its hyper-parameters are its own)."""
    from fetchrl.chapters import CHAPTERS
    from fetchrl.cli import command_for

    cases = []
    for cmd in CHAPTERS[chapter_id].commands:
        options = command_for(CHAPTERS[chapter_id], cmd).options
        cases += [Case(f"{chapter_id}-{cmd}-seed=2**32", _cmd(cmd, "--seed", str(MAX_SEED + 1)),
                       rf"--seed: expected an integer <= {MAX_SEED}"),
                  Case(f"{chapter_id}-{cmd}-device=gpu", _cmd(cmd, "--device", "gpu"), r"--device: expected cpu, cuda")]
        if not HAS_GPU:
            cases.append(Case(f"{chapter_id}-{cmd}-device=cuda", _cmd(cmd, "--device", "cuda"), r"sees no CUDA GPU"))
        if "train" in options:
            cases += [Case(f"{chapter_id}-{cmd}-seed-span", _cmd(cmd, "--seed", str(MAX_SEED), "--n-envs", "2"),
                           rf"--seed {MAX_SEED} with --n-envs 2 seeds envs up to {MAX_SEED + 1}"),
                      Case(f"{chapter_id}-{cmd}-total-steps=10**10", _cmd(cmd, "--total-steps", str(10**10)),
                           r"--total-steps: expected an integer <= 1000000000")]
        if cmd == "report":  # the chapter's own eval JSON, with a word for a rate
            cases.append(Case(f"{chapter_id}-report-eval-success-rate-word", ("report",),
                              rf"eval JSON .*{chapter_id}_.*_seed0_eval\.json is invalid: aggregate\.success_rate",
                              setup=_bad_eval(lambda d: d["aggregate"].update(success_rate="high"),
                                              _default_paths(chapter_id))))
        if "eval" in options:
            cases.append(Case(f"{chapter_id}-{cmd}-n-eval-episodes=10**14", _cmd(cmd, "--n-eval-episodes", str(10**14)),
                              rf"--n-eval-episodes: expected an integer <= {MAX_EVAL_EPISODES}"))
    if CHAPTERS[chapter_id].control is not None:  # ch04: its ablation varies a setting of the --her arm
        cases = [Case(c.id, (c.argv[0], "--her", *c.argv[1:]), c.message, c.code, c.setup)
                 if c.argv[0] == "ablation" else c for c in cases]
    return cases


def _default_paths(chapter_id: str) -> RunPaths:
    """The run a chapter's command reads without options: its default task, the arm without --her (ch04's control)."""
    from fetchrl.chapters import CHAPTERS

    chapter = CHAPTERS[chapter_id]
    return chapter.arm(False).paths(chapter.defaults.env_id, 0)


def _chapter_ids() -> list[str]:
    from fetchrl.chapters import CHAPTERS

    return list(CHAPTERS)


CHAPTER_CASES = [(chapter_id, case) for chapter_id in _chapter_ids() for case in _chapter_cases(chapter_id)]


@pytest.mark.parametrize(("chapter_id", "case"), CHAPTER_CASES, ids=[c.id for _, c in CHAPTER_CASES])
def test_bad_input_every_chapter(chapter_id: str, case: Case, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Every chapter script inherits the shared bounds: the same refusal on each of its commands."""
    from fetchrl.chapters import CHAPTERS

    argv, before = _prepare(case, tmp_path)
    try:
        code = main(argv, CHAPTERS[chapter_id])
    except SystemExit as exc:
        code = int(exc.code or 0)
    _check(case, code, capsys.readouterr().err, before, tmp_path)


#: A representative few through the real script: usage error, bad number, corrupt file, unwritable root,
#: an unknown env id stopped before multi-seed starts any worker process.
SUBPROCESS_CASES = ("unknown-subcommand", "train--total-steps=0", "eval-corrupt-checkpoint",
                    "train-root-under-a-file", "multi-seed-unknown-env-id", "train-seed=4294967296",
                    "eval--n-eval-episodes=99999999999999", "train-CartPole-v1", "report-eval-success-rate-word")


@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process(case_id: str, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == case_id)
    argv, before = _prepare(case, tmp_path)
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    _check(case, proc.returncode, proc.stderr, before, tmp_path)


# ============================================================================ chapter 4 (and chapter 3's SAC flags)
CH04_SCRIPT = SCRIPT.parent / "ch04_her_sparse_reach_push.py"
#: Refused on the --her arm's (and the control arm's) own settings, before any env is stepped or file written.
CH04_CASES = [
    Case("ch04-n-sampled-goal-without-her", ("train", "--n-sampled-goal", "8"),
         r"^error: --n-sampled-goal is a setting of the --her arm; add --her or drop it$"),
    Case("ch04-goal-selection-strategy-without-her", ("train", "--goal-selection-strategy", "final"),
         r"^error: --goal-selection-strategy is a setting of the --her arm"),
    Case("ch04-goal-selection-strategy=bogus", ("train", "--her", "--goal-selection-strategy", "bogus"),
         r"argument --goal-selection-strategy: expected one of future, final, episode, got 'bogus'"),
    Case("ch04-ent-coef-min-with-a-fixed-ent-coef", ("train", "--her", "--ent-coef-min", "0.01", "--ent-coef", "0.05"),
         r"^error: --ent-coef-min 0\.01 floors a learned coefficient; --ent-coef 0\.05 is fixed"),
    Case("ch04-ent-coef-auto-below-its-floor", ("train", "--her", "--ent-coef-min", "0.1", "--ent-coef", "auto_0.01"),
         r"^error: --ent-coef auto_0\.01 starts below --ent-coef-min 0\.1$"),
    Case("ch04-ent-coef=-1", ("train", "--her", "--ent-coef", "-1"),
         r"argument --ent-coef: expected 'auto', 'auto_<initial value>' or a number > 0, got '-1'"),
    Case("ch04-ent-coef-min=-1", ("train", "--her", "--ent-coef-min", "-1"), r"argument --ent-coef-min: .*got -1"),
    *(Case(f"ch04-{cmd}-env-typo", (cmd, "--her", "--env", "FetchPsuh-v4"),
           r"^error: unknown env id 'FetchPsuh-v4'; did you mean FetchPush-v4\?$")
      for cmd in ("train", "eval", "all", "check-env", "video")),
    Case("ch04-nsg-values=2,,4", ("ablation", "--her", "--nsg-values", "2,,4"),
         r"argument --nsg-values: expected comma-separated values, got '2,,4'"),
    Case("ch04-nsg-values=0", ("ablation", "--her", "--nsg-values", "0"),
         r"argument --nsg-values: expected a positive integer, got 0"),
    Case("ch04-nsg-values=2,2", ("ablation", "--her", "--nsg-values", "2,2"),
         r"^error: --nsg-values: duplicate value 2 in .*; list each value once$"),
    Case("ch04-ablation-without-her-bad-value", ("ablation", "--nsg-values", "2,0"),
         r"argument --nsg-values: expected a positive integer, got 0"),
    Case("ch04-eval-push-missing-checkpoint", ("eval", "--her", "--env", "FetchPush-v4"),
         r"checkpoint not found: .*sac_her_FetchPush-v4_seed0\.zip"),
]

#: SAC's hyper-parameters (chapter 3's, and chapter 4's both arms): each refused in its own words.
SAC_CASES = [
    ("tau=0", ("--tau", "0"), r"argument --tau: tau must be in \(0, 1\], got 0\.0"),
    ("tau=1.5", ("--tau", "1.5"), r"argument --tau: tau must be in \(0, 1\], got 1\.5"),
    ("gamma=0", ("--gamma", "0"), r"argument --gamma: gamma must be in \(0, 1\], got 0\.0"),
    ("batch-size=0", ("--batch-size", "0"), r"argument --batch-size: expected a positive integer, got 0"),
    ("batch-larger-than-buffer", ("--buffer-size", "10", "--batch-size", "256"),
     r"^error: --batch-size 256 is larger than --buffer-size 10; lower it or raise --buffer-size$"),
    ("learning-starts=-1", ("--learning-starts", "-1"), r"argument --learning-starts: expected an integer >= 0, got -1"),
    ("ent-coef=auto_0", ("--ent-coef", "auto_0"), r"argument --ent-coef: expected .*, got 'auto_0'"),
    ("ent-coef=abc", ("--ent-coef", "abc"), r"argument --ent-coef: expected .*, got 'abc'"),
    ("train-freq=0", ("--train-freq", "0"), r"argument --train-freq: expected a positive integer, got 0"),
]
SAC_CHAPTER_CASES = [
    (chapter_id, Case(f"{chapter_id}-{arm}train-{name}", ("train", *(("--her",) if arm else ()), *bad), message))
    for chapter_id, arms in (("ch03", ("",)), ("ch04", ("her-", ""))) for arm in arms for name, bad, message in SAC_CASES
]


def _run_chapter(chapter_id: str, case: Case, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One case through ``main(argv, chapter)`` with ``--root`` the case's own (earlier artifacts in it)."""
    from fetchrl.chapters import CHAPTERS

    (root / "results").mkdir()
    (root / "results" / "earlier_eval.json").write_text('{"an": "earlier artifact"}\n')
    before = _files(root)
    try:
        code = main([*case.argv, "--root", str(root), "--no-progress"], CHAPTERS[chapter_id])
    except SystemExit as exc:
        code = int(exc.code or 0)
    _check(case, code, capsys.readouterr().err, before, root)


@pytest.mark.parametrize("case", CH04_CASES, ids=[c.id for c in CH04_CASES])
def test_bad_input_chapter_4(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run_chapter("ch04", case, tmp_path, capsys)


@pytest.mark.parametrize(("chapter_id", "case"), SAC_CHAPTER_CASES, ids=[c.id for _, c in SAC_CHAPTER_CASES])
def test_bad_input_sac_hyperparameters(chapter_id: str, case: Case, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _run_chapter(chapter_id, case, tmp_path, capsys)


@pytest.mark.parametrize("case_id", ["ch04-n-sampled-goal-without-her", "ch04-train-env-typo", "ch04-nsg-values=2,2"])
def test_bad_input_chapter_4_in_a_real_process(case_id: str, tmp_path: Path) -> None:
    case = next(c for c in CH04_CASES if c.id == case_id)
    (tmp_path / "results").mkdir()
    before = _files(tmp_path)
    proc = subprocess.run([sys.executable, str(CH04_SCRIPT), *case.argv, "--root", str(tmp_path), "--no-progress"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    _check(case, proc.returncode, proc.stderr, before, tmp_path)
