"""The package's dependency rules, checked on the source: which part may import which.

Dependencies point one way, ``strategies <- exchange <- platform <- workers``; the embedded
exchange (``simulator``) is a sibling of the client and may use only ``exchange`` and ``runtime``;
nothing above ``exchange`` knows which transport runs. Imports are read with ``ast``, so every
import counts: inside functions, under ``TYPE_CHECKING``, relative ones, ``from gridfleet import
platform`` and ``importlib.import_module("gridfleet....")`` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

import gridfleet

PACKAGE = Path(gridfleet.__file__).resolve().parent


@dataclass(frozen=True)
class Import:
    """One module a source file imports, and where."""

    path: Path
    line: int
    module: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(PACKAGE.parent)}:{self.line} imports {self.module}"


def module_name(path: Path) -> str:
    """``gridfleet/platform/rounds.py`` -> ``gridfleet.platform.rounds`` (packages: no __init__)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    # A relative import counts from the importer's package (itself, for an __init__).
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, path: Path, name: str | None = None) -> list[Import]:
    """Every module ``source`` (the file at ``path``) imports, wherever the import sits."""
    importer = name if name is not None else module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(Import(path, node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, importer, is_package)
            found.append(Import(path, node.lineno, module))
            # `from gridfleet.exchange import redis_pubsub` imports the submodule.
            found.extend(
                Import(path, node.lineno, f"{module}.{alias.name}")
                for alias in node.names
                if alias.name != "*"
            )
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append(Import(path, node.lineno, first.value))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def package_imports(*parts: str) -> list[Import]:
    """Imports of every module under ``gridfleet/<parts>`` (a folder or a module)."""
    root = PACKAGE.joinpath(*parts)
    files = [root.with_suffix(".py")] if not root.is_dir() else sorted(root.rglob("*.py"))
    assert files and all(f.exists() for f in files), f"nothing to check under {root}"
    return [imp for f in files for imp in imports_of(f.read_text(), f)]


def is_under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def report(bad: list[Import], rule: str) -> str:
    """The rule and one line per offending import statement (its shortest module name)."""
    first: dict[tuple[Path, int], Import] = {}
    for imp in sorted(bad, key=lambda i: len(i.module)):
        first.setdefault((imp.path, imp.line), imp)
    lines = sorted(first.values(), key=lambda i: (str(i.path), i.line))
    return f"{rule}:\n  " + "\n  ".join(str(i) for i in lines)


# ------------------------------------------------------------------------------------ the rules


# I/O and nondeterminism strategies must not reach for: they are pure functions of their inputs.
STRATEGY_FORBIDDEN_LIBRARIES = ("redis", "celery", "kombu", "time", "random")


def test_strategies_import_nothing_else_of_gridfleet_and_no_io() -> None:
    imports = package_imports("strategies")
    bad = [
        i
        for i in imports
        if (is_under(i.module, ["gridfleet"]) and not is_under(i.module, ["gridfleet.strategies"]))
        or is_under(i.module, STRATEGY_FORBIDDEN_LIBRARIES)
    ]
    assert not bad, report(bad, "gridfleet.strategies is pure: only itself, no I/O modules")


SIMULATOR_FORBIDDEN = (
    "gridfleet.platform",
    "gridfleet.workers",
    "gridfleet.cli",
    "gridfleet.demo",
    "gridfleet.report",
)


def test_the_simulator_imports_nothing_of_the_client() -> None:
    bad = [i for i in package_imports("simulator") if is_under(i.module, SIMULATOR_FORBIDDEN)]
    assert not bad, report(bad, "the embedded exchange uses exchange/ and runtime/ only")


TRANSPORT_MODULES = ("gridfleet.exchange.redis_pubsub",)
TRANSPORT_PREFIXES = ("gridfleet.exchange.rest",)  # rest.py, rest_link.py, rest/ ...


def is_transport(module: str) -> bool:
    return is_under(module, TRANSPORT_MODULES) or any(
        module.startswith(p) for p in TRANSPORT_PREFIXES
    )


def test_nothing_outside_the_exchange_layer_imports_a_transport() -> None:
    outside = [
        f for f in sorted(PACKAGE.rglob("*.py")) if not f.is_relative_to(PACKAGE / "exchange")
    ]
    bad = [i for f in outside for i in imports_of(f.read_text(), f) if is_transport(i.module)]
    assert not bad, report(bad, "use gridfleet.exchange.link (open_link), not a transport module")


def test_the_platform_never_imports_workers_or_the_cli() -> None:
    forbidden = ("gridfleet.workers", "gridfleet.cli")
    bad = [i for i in package_imports("platform") if is_under(i.module, forbidden)]
    assert not bad, report(bad, "the platform sends tasks by name (dispatch.py)")


def test_the_ledger_reads_the_fleet_records_and_nothing_imports_it_back() -> None:
    """The ledger consumes what the platform writes on the broker (keys, runs); the services
    never import the ledger (a database outage must not reach a round), nor does the simulator."""
    forbidden = ("gridfleet.workers", "gridfleet.cli", "gridfleet.simulator", "gridfleet.demo")
    bad = [i for i in package_imports("ledger") if is_under(i.module, forbidden)]
    assert not bad, "\n".join(map(str, bad))
    back = [
        i
        for top in ("platform", "workers", "exchange", "strategies", "simulator")
        for i in package_imports(top)
        if is_under(i.module, ("gridfleet.ledger",))
    ]
    assert not back, "\n".join(map(str, back))


def test_the_exchange_layer_imports_nothing_above_it() -> None:
    above = (
        "gridfleet.platform",
        "gridfleet.workers",
        "gridfleet.cli",
        "gridfleet.simulator",
        "gridfleet.report",
        "gridfleet.config",
        "gridfleet.testing",
    )
    bad = [i for i in package_imports("exchange") if is_under(i.module, above)]
    assert not bad, report(bad, "gridfleet.exchange sits below the fleet services")


def test_only_tests_import_the_testing_helpers() -> None:
    bad = [
        i
        for f in sorted(PACKAGE.rglob("*.py"))
        if f != PACKAGE / "testing.py"
        for i in imports_of(f.read_text(), f)
        if is_under(i.module, ["gridfleet.testing"])
    ]
    assert not bad, report(bad, "gridfleet.testing is for strategy authors' tests, not the fleet")


# ------------------------------------------------------------------------------------ the checker


CHECKER_CASES = [
    ("import gridfleet.platform.rounds", "gridfleet.platform.rounds"),
    ("def f():\n    from gridfleet.workers import tasks\n", "gridfleet.workers.tasks"),
    ("from gridfleet import platform", "gridfleet.platform"),
    ("from ..platform import rounds", "gridfleet.platform.rounds"),
    ("from . import redis_pubsub", "gridfleet.strategies.redis_pubsub"),
    (
        "if TYPE_CHECKING:\n    from gridfleet.exchange.redis_pubsub import ExchangeLink\n",
        "gridfleet.exchange.redis_pubsub",
    ),
    ('importlib.import_module("gridfleet.cli")', "gridfleet.cli"),
    ('__import__("gridfleet.demo")', "gridfleet.demo"),
]


@pytest.mark.parametrize(("source", "module"), CHECKER_CASES)
def test_the_checker_sees_every_form_of_import(source: str, module: str) -> None:
    path = PACKAGE / "strategies" / "example.py"
    found = {i.module for i in imports_of(source, path, name="gridfleet.strategies.example")}
    assert module in found, found


def test_relative_imports_in_a_package_init_count_from_the_package() -> None:
    path = PACKAGE / "strategies" / "builtin" / "__init__.py"
    found = {i.module for i in imports_of("from .orders import spot_orders", path)}
    assert "gridfleet.strategies.builtin.orders" in found


def test_a_rest_transport_would_be_caught_too() -> None:
    assert is_transport("gridfleet.exchange.rest")
    assert is_transport("gridfleet.exchange.rest_link")
    assert is_transport("gridfleet.exchange.redis_pubsub")
    assert not is_transport("gridfleet.exchange.link")
    assert not is_transport("gridfleet.exchange.outbound")
