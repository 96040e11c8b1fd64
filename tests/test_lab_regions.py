"""Every lab's snippet regions, which the book includes with ``--8<-- "scripts/labs/FILE:NAME"``:
present, balanced, non-empty, and each one parses and defines a function or class."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import pytest

LABS = Path(__file__).resolve().parents[1] / "scripts" / "labs"
#: The regions each chapter includes, by lab file.
REGIONS = {
    "ppo_from_scratch.py": ("actor_critic_network", "gae_computation", "ppo_loss", "value_loss", "ppo_update",
                            "ppo_training_loop"),
    "sac_from_scratch.py": ("gaussian_policy", "twin_q_network", "replay_buffer", "twin_q_loss", "actor_loss",
                            "temperature_loss", "sac_update", "sac_training_loop"),
    "her_relabeler.py": ("data_structures", "goal_sampling", "relabel_transition", "her_buffer_insert",
                         "her_buffer_sample"),
}
MARKER = re.compile(r"\s*# --8<-- \[(start|end):(\w+)\]\s*$")


def region_spans(lines: list[str]) -> dict[str, tuple[int, int]]:
    """``{name: (start marker line, end marker line)}``; fails on a region opened twice or left open."""
    open_regions: dict[str, int] = {}
    spans: dict[str, tuple[int, int]] = {}
    for i, line in enumerate(lines):
        if not (m := MARKER.match(line)):
            continue
        kind, name = m.groups()
        if kind == "start":
            assert name not in open_regions and name not in spans, f"region {name} opened twice"
            open_regions[name] = i
        else:
            assert name in open_regions, f"region {name} ends before it starts"
            spans[name] = (open_regions.pop(name), i)
    assert not open_regions, f"unclosed regions: {sorted(open_regions)}"
    return spans


@pytest.mark.parametrize("lab", sorted(REGIONS))
def test_snippet_regions_exist_balanced_and_parse(lab: str) -> None:
    lines = (LABS / lab).read_text().splitlines()
    spans = region_spans(lines)
    assert set(REGIONS[lab]) <= set(spans), sorted(set(REGIONS[lab]) - set(spans))
    for name in REGIONS[lab]:
        start, end = spans[name]
        body = "\n".join(lines[start + 1:end])
        assert body.strip(), f"region {name} is empty"
        tree = ast.parse(textwrap.dedent(body))
        assert any(isinstance(node, ast.FunctionDef | ast.ClassDef) for node in tree.body), name


def test_a_broken_region_is_caught() -> None:
    with pytest.raises(AssertionError, match="unclosed"):
        region_spans(["# --8<-- [start:x]", "def f(): pass"])
    with pytest.raises(AssertionError, match="ends before"):
        region_spans(["# --8<-- [end:x]"])
