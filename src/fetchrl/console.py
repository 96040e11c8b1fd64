"""The one place a rich ``Console`` is made: tables and paths that stay whole in a log file.

Off a terminal (``> log.txt``, CI, ``nohup``) rich assumes 80 columns: it wraps ``-> path`` lines
and cuts table cells to ``clip_ran…``, so the rows of an ablation could not be told apart in a log.
:func:`make_console` gives such a console a wide page and soft wrapping (a printed line is never
broken; tables are never squeezed below their content), and :func:`new_table` folds a cell that
still does not fit instead of cutting it. On a terminal rich keeps measuring the real width.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

#: Page width (characters) of a console that is not a terminal: wider than any of the chapter's tables.
LOG_WIDTH = 240
#: What a table shows where a spread (std over seeds) was not measured: one seed has none.
NOT_MEASURED = "n/a"


def make_console(*, stderr: bool = False) -> Console:
    """A console on stdout (or stderr) that never truncates or breaks lines when it is not a terminal.

    On a terminal: rich's defaults (the terminal's width, colours). Elsewhere: at least
    :data:`LOG_WIDTH` columns (a larger ``COLUMNS`` is kept) and ``soft_wrap`` so that a printed line
    (a path, an answer) stays one line however long it is.
    """
    console = Console(stderr=stderr)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, width=max(console.width, LOG_WIDTH), soft_wrap=True)


def new_table(title: str, columns: Sequence[str]) -> Table:
    """A table whose cells fold onto a second line when too narrow, never cut with ``…``."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


def mean_pm_std(mean: float, std: float, n: int, fmt: str) -> str:
    """``"0.812 ± 0.034"``; ``"0.812 ± n/a"`` for one value (``n`` < 2), where no spread was measured.

    ``fmt``: the format spec of both numbers, e.g. ``".3f"``.
    """
    spread = format(std, fmt) if n >= 2 else NOT_MEASURED
    return f"{format(mean, fmt)} ± {spread}"
