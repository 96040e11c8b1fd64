"""What the chapter's commands print when stdout is a log file, not a terminal.

Off a terminal rich used to assume 80 columns: ``-> path`` lines were broken in two and table cells
cut to ``clip_ran…``, so an ablation's rows could not be told apart in a log; one seed printed
``± 0.000`` where no spread was measured, and a plot that could not be drawn printed ``plot: None``.
The real commands run here (short trainings) with stdout captured to a pipe, ``COLUMNS`` unset and
``TERM=dumb``, and what they printed is read back.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fetchrl import workflows
from fetchrl.console import LOG_WIDTH, make_console, mean_pm_std, new_table

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ch02_ppo_dense_reach.py"
#: One PPO update and two evaluation episodes per trial: seconds, real artifacts.
SHORT = ["--total-steps", "1024", "--n-envs", "2", "--n-steps", "512", "--n-eval-episodes", "2", "--no-progress"]
ELLIPSIS = "…"


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    """The chapter's script, stdout and stderr to pipes (not a terminal), COLUMNS unset, TERM=dumb."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    env |= {"TERM": "dumb", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def _deep_root(tmp_path: Path) -> Path:
    """A root long enough that every artifact path is wider than 80 columns."""
    return tmp_path / ("a-long-directory-name-for-the-log-" * 3) / "root"


def _path_line(stdout: str, name: str) -> Path:
    """The path printed on the line ``name: PATH``; the line must hold the whole path."""
    lines = [line for line in stdout.splitlines() if line.startswith(f"{name}: ")]
    assert len(lines) == 1, f"expected one '{name}: ' line in:\n{stdout}"
    path = Path(lines[0].removeprefix(f"{name}: "))
    assert path.is_file(), f"{name}: {path} is not a file (a path broken over two lines?)"
    return path


def _table_rows(stdout: str) -> list[list[str]]:
    """Body rows of the rich tables in ``stdout`` as stripped cells."""
    return [[c.strip() for c in line.strip().strip("│").split("│")] for line in stdout.splitlines()
            if line.startswith("│")]


def test_ablation_log_keeps_whole_settings_na_spread_and_paths(tmp_path: Path) -> None:
    root = _deep_root(tmp_path)
    proc = _run(["ablate", "--clip-ranges", "0.1", "0.2", "--seeds", "1", "--workers", "2", "--root", str(root),
                 *SHORT])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert ELLIPSIS not in out
    settings = {row[0]: row for row in _table_rows(out)}
    assert set(settings) == {"clip_range=0.1", "clip_range=0.2"}, out
    for row in settings.values():  # one seed: the spread reads n/a, never ± 0.000
        assert row[1] == "1"
        assert all(cell.endswith("± n/a") for cell in row[2:5]), row
    assert "± 0.0" not in out
    assert "seed noise n/a, one seed" in out
    assert _path_line(out, "ablation").name == "ch02_ablation_clip_range.json"
    assert _path_line(out, "plot").suffix == ".png"
    assert "None" not in out


def test_single_seed_multi_seed_says_no_spread_was_measured(tmp_path: Path) -> None:
    root = _deep_root(tmp_path)
    proc = _run(["multi-seed", "--seeds", "1", "--root", str(root), *SHORT])
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert ELLIPSIS not in out
    mean_row = next(row for row in _table_rows(out) if row[0] == "mean ± std")
    assert all(cell.endswith("± n/a") for cell in mean_row[1:]), mean_row
    robustness = next(line for line in out.splitlines() if line.startswith("robustness"))
    assert "n/a" in robustness and "PASS" not in robustness
    _path_line(out, "aggregate")
    _path_line(out, "plot")
    assert "None" not in out


def test_all_log_has_whole_criteria_rows_and_paths(tmp_path: Path) -> None:
    root = _deep_root(tmp_path)
    proc = _run(["all", "--no-video", "--root", str(root), *SHORT])
    assert proc.returncode in (0, 1), proc.stderr  # a 1,024-step run may well fail the criteria
    out = proc.stdout
    assert ELLIPSIS not in out
    rows = {row[0]: row for row in _table_rows(out)}
    assert {"success rate", "mean return", "final distance (m)"} <= set(rows), out  # at 80 columns: "final" / "distance (m)"
    for name in ("report", "curves", "HTML report"):
        _path_line(out, name)
    assert not any(line.endswith(": None") for line in out.splitlines())


def test_check_env_table_is_not_wrapped_in_a_log() -> None:
    proc = _run(["check-env"])
    assert proc.returncode == 0, proc.stderr
    assert ELLIPSIS not in proc.stdout
    rows = {row[0]: row for row in _table_rows(proc.stdout)}
    # each check is one line, its observation whole (at 80 columns they wrapped over several lines)
    assert rows["reward range (100 random steps)"][2].endswith("(expected inside [-1, 0])"), proc.stdout
    assert rows["observation shapes"][2].count("desired_goal") == 2


def test_duplicate_clip_range_is_rejected_like_the_sweep_grid(tmp_path: Path) -> None:
    for args, flag in ((["ablate", "--clip-ranges", "0.1", "0.1"], "--clip-ranges"),
                       (["sweep", "--grid", "clip_range=0.1,0.1"], "--grid clip_range")):
        proc = _run([*args, "--root", str(tmp_path), *SHORT])
        assert proc.returncode == 2
        assert proc.stderr.splitlines() == [f"error: {flag}: duplicate value 0.1 in "
                                            f"'0.1{',' if 'grid' in flag else ' '}0.1'; list each value once"]
        assert not (tmp_path / "sweeps").exists()  # rejected before anything ran


def test_a_skipped_plot_is_named_not_printed_as_none(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    workflows.print_outputs({"aggregate": tmp_path / "x.json", "plot": None})
    assert capsys.readouterr().out.splitlines() == [f"aggregate: {tmp_path / 'x.json'}", "plot: skipped (see above)"]


def test_console_off_a_terminal_is_wide_and_folds_instead_of_cutting() -> None:
    console = make_console()  # pytest captures stdout: not a terminal
    assert not console.is_terminal and console.width >= LOG_WIDTH
    key = "clip_range=0.1,learning_rate=0.0003,n_epochs=10"
    table = new_table("t", ("setting", "success"))
    table.add_row(key, mean_pm_std(0.5, 0.0, 1, ".3f"))
    with console.capture() as cap:
        console.print(table, width=30)  # far too narrow: the key folds over lines, every character kept
    text = cap.get()
    assert ELLIPSIS not in text
    assert "".join(c.strip() for c in (r[0] for r in _table_rows(text))) == key
    assert mean_pm_std(0.5, 0.01, 3, ".3f") == "0.500 ± 0.010"
