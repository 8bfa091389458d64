"""One home for settings: every GRIDFLEET_* variable is a Settings field with a row in
docs/settings.md, read nowhere else, and secrets never shown."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from gridfleet.settings import ENV_PREFIX, Settings, SettingsError, get_settings
from tests.cli.helpers import REPO

DOC = REPO / "docs" / "settings.md"
PACKAGE = REPO / "gridfleet"


def _documented() -> list[str]:
    return re.findall(r"^\| `(GRIDFLEET_[A-Z0-9_]+)` \|", DOC.read_text(), flags=re.MULTILINE)


def test_every_setting_has_one_row_in_the_docs_and_every_row_a_setting() -> None:
    fields = sorted(ENV_PREFIX + name.upper() for name in Settings.model_fields)
    rows = _documented()
    assert len(rows) == len(set(rows)), f"a variable has two rows: {rows}"
    assert sorted(rows) == fields


def _named(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith(ENV_PREFIX)
    )


def _reads_of_gridfleet_variables(path: Path) -> list[str]:
    """``os.environ[...]``, ``os.environ.get(...)``, ``os.getenv(...)`` and click's ``envvar=``
    naming a GRIDFLEET_* variable. Writing a child's environment is not a read."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        hit = False
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            hit = ast.unparse(node.value).endswith("environ") and _named(node.slice)
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            reads_env = func.endswith(("environ.get", "getenv", "environ.pop", "setdefault"))
            hit = (reads_env and bool(node.args) and _named(node.args[0])) or any(
                k.arg == "envvar"
                and (_named(k.value) or any(_named(e) for e in getattr(k.value, "elts", [])))
                for k in node.keywords
            )
        if hit:
            found.append(f"{path.relative_to(REPO)}:{getattr(node, 'lineno', '?')}")
    return found


def test_no_module_but_settings_reads_a_gridfleet_variable() -> None:
    reads = [
        read
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != PACKAGE / "settings.py"
        for read in _reads_of_gridfleet_variables(path)
    ]
    assert reads == []


def test_the_scan_finds_each_kind_of_read(tmp_path: Path) -> None:
    probe = REPO / "tests" / "cli" / "_probe_reads.py"
    probe.write_text(
        "import os, click\n"
        "a = os.environ['GRIDFLEET_A']\n"
        "b = os.environ.get('GRIDFLEET_B')\n"
        "c = os.getenv('GRIDFLEET_C')\n"
        "d = click.option('--d', envvar='GRIDFLEET_D')\n"
        "os.environ['GRIDFLEET_E'] = 'a write, not a read'\n"
    )
    try:
        assert len(_reads_of_gridfleet_variables(probe)) == 4
    finally:
        probe.unlink()


def test_secrets_stay_out_of_repr_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDFLEET_BROKER_URL", "redis://:hunter2@broker:6379/0")
    monkeypatch.setenv("GRIDFLEET_EXCHANGE_URL", "rediss://:s3cret@exchange:6380/0")
    monkeypatch.setenv("GRIDFLEET_FLOWER_BASIC_AUTH", "admin:pa55word")
    settings = Settings()
    for text in (repr(settings), str(settings), str(settings.model_dump())):
        assert "hunter2" not in text and "s3cret" not in text and "pa55word" not in text
    assert settings.broker_url is not None
    assert settings.broker_url.get_secret_value() == "redis://:hunter2@broker:6379/0"


def test_a_bad_variable_is_named_and_its_value_is_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GRIDFLEET_METRICS_PORT", "not-a-port-hunter2")
    monkeypatch.setenv("GRIDFLEET_LOG_FORMAT", "xml")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError) as info:
            get_settings()
    finally:
        get_settings.cache_clear()
    message = str(info.value)
    assert "GRIDFLEET_METRICS_PORT" in message and "GRIDFLEET_LOG_FORMAT" in message
    assert "hunter2" not in message


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(ENV_PREFIX + name.upper(), raising=False)
    settings = Settings()
    assert settings.metrics_port == 9100
    assert settings.worker_soft_shutdown_timeout == 10.0
    assert settings.task_events is False
    assert settings.broker_url is None and settings.exchange_url is None
