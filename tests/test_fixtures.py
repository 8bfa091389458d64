"""The suite is self-contained: its data lives in tests/fixtures, unchanged, and nothing reaches
for the capture folder beside the repository.

A clone on its own (no capture folder beside it) must pass the whole suite, so no file under
``tests/`` or ``bench/`` may reach outside the repository for data. This file names no path
outside the repository either: it learns the capture folder's name from the fixtures' README,
the one file that records where they came from. The vendored captures are the
contract, so they are checked against the checksums recorded when they were copied.
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, PROTOCOL_DIR, REPO_ROOT, STRATEGY_DATA_DIR

SCANNED = ("tests", "bench")
# The one file allowed to name the capture folder: it records where the fixtures came from.
PROVENANCE = FIXTURES / "README.md"
SUMS = FIXTURES / "SHA256SUMS"


def capture_folder_name() -> str:
    """The capture folder's name, as the provenance README gives it ("...capture folder (`X/`")."""
    found = re.search(r"capture folder \(`([\w.-]+)/`", PROVENANCE.read_text(encoding="utf-8"))
    assert found, f"{PROVENANCE} no longer says where the fixtures came from"
    return found.group(1)


CAPTURE = capture_folder_name()
# The parent directory then the capture folder, in any spelling (slash, backslash, path parts),
# in any text, code or not.
PARENT_CAPTURE = re.compile(r"""\.\.["']?\s*[/\\,]+\s*["']?""" + re.escape(CAPTURE) + r"\b")
# Data files are scanned too (a fleet file or a bench input could name the path); captures are
# big and are checked by their checksums instead.
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".yaml", ".yml", ".json", ".cfg", ".ini", ".sh"}


def scanned_files() -> list[Path]:
    """Every text file under tests/ and bench/ except the vendored captures themselves."""
    out = []
    for top in SCANNED:
        for path in sorted((REPO_ROOT / top).rglob("*")):
            if (
                not path.is_file()
                or path.suffix not in TEXT_SUFFIXES
                or "__pycache__" in path.parts
            ):
                continue
            if path.is_relative_to(PROTOCOL_DIR) or path.is_relative_to(STRATEGY_DATA_DIR):
                continue
            out.append(path)
    return out


def capture_paths_in_code(source: str) -> list[int]:
    """Lines where Python code builds a path through the capture folder.

    Catches ``Path(...).parent / NAME``, ``os.path.join(root, UP, NAME)`` and the like: any
    string constant that is exactly the folder's name or starts a path through it.
    """
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            value = node.value.strip().replace("\\", "/")
            if value == CAPTURE or value.startswith(f"{CAPTURE}/"):
                lines.append(node.lineno)
    return lines


def offending_lines(path: Path, root: Path = REPO_ROOT) -> list[str]:
    """``path:line: text`` for every line of ``path`` that names a path to the capture folder."""
    text = path.read_text(encoding="utf-8", errors="replace")
    hits = {n for n, line in enumerate(text.splitlines(), 1) if PARENT_CAPTURE.search(line)}
    if path.suffix == ".py":
        hits.update(capture_paths_in_code(text))
    lines = text.splitlines()
    rel = path.relative_to(root)
    return [f"{rel}:{n}: {lines[n - 1].strip()}" for n in sorted(hits)]


def test_nothing_under_tests_or_bench_names_the_capture_folder() -> None:
    files = [p for p in scanned_files() if p not in (PROVENANCE, Path(__file__).resolve())]
    assert len(files) > 50, "the scan found too few files: is REPO_ROOT right?"
    hits = [hit for path in files for hit in offending_lines(path)]
    assert not hits, "read the vendored copies in tests/fixtures instead:\n" + "\n".join(hits)


# The spellings the scan must catch, built from parts so that this file itself names no path
# outside the repository.
UP = ".."


@pytest.mark.parametrize(
    "source",
    [
        f'ROOT = Path(__file__).parents[2].parent / "{CAPTURE}" / "strategy-data"',
        f'p = os.path.join(here, "{UP}", "{CAPTURE}", "protocol")',
        f'DATA = "{UP}/{CAPTURE}/protocol/examples"',
        f'DATA = Path("{CAPTURE}/strategy-data")',
        f'"""Reads {UP}\\\\{CAPTURE}\\\\protocol on Windows."""',
    ],
)
def test_the_scan_catches_every_spelling_of_a_capture_path(tmp_path: Path, source: str) -> None:
    path = tmp_path / "probe.py"
    path.write_text(source + "\n")
    assert offending_lines(path, root=tmp_path), source


def test_the_scan_lets_the_word_through_in_prose() -> None:
    assert not capture_paths_in_code(f'"""Helpers {CAPTURE} by the benchmark scripts."""\nx = 1\n')
    assert not PARENT_CAPTURE.search(f"# the cores are {CAPTURE} with other work")


def test_vendored_fixtures_are_the_captures_as_copied() -> None:
    """Byte for byte what was copied: the captures are edited by nobody."""
    recorded = {}
    for line in SUMS.read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        recorded[name] = digest
    present = {
        p.relative_to(FIXTURES).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for top in (PROTOCOL_DIR, STRATEGY_DATA_DIR)
        for p in top.rglob("*")
        if p.is_file()
    }
    assert set(present) == set(recorded), "fixtures added or removed without updating SHA256SUMS"
    changed = sorted(name for name, digest in present.items() if recorded[name] != digest)
    assert not changed, f"vendored captures changed by hand: {changed}"
    assert len(list((PROTOCOL_DIR / "examples").glob("*.json"))) == 80
