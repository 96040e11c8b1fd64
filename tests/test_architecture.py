"""The package's shape, checked: no private name crosses a module boundary.

The layer order itself is import-linter's job (``make lint``; contracts in pyproject.toml).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fetchrl"


def test_no_private_name_is_imported_from_another_fetchrl_module() -> None:
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fetchrl"):
                private = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                if private:
                    offenders.append(f"{path.relative_to(SRC)}: from {node.module} import {', '.join(private)}")
    assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)


def test_every_package_folder_has_a_docstring() -> None:
    for init in sorted(SRC.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.relative_to(SRC)} says nothing about its layer"
