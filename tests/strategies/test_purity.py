"""The strategy package stays pure: no platform or worker imports, no I/O modules."""

from __future__ import annotations

import ast
from pathlib import Path

import gridfleet.strategies

PACKAGE = Path(gridfleet.strategies.__file__).parent
FORBIDDEN = (
    "gridfleet.platform",
    "gridfleet.workers",
    "redis",
    "celery",
    "kombu",
    "time",
    "random",
)


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_no_forbidden_imports():
    for path in PACKAGE.rglob("*.py"):
        for module in imported_modules(path):
            assert not any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN), (
                f"{path.relative_to(PACKAGE)} imports {module}"
            )
