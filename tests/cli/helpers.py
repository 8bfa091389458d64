"""Running the real ``gridfleet`` command as a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str


def gridfleet(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> Outcome:
    """Run ``python -m gridfleet.cli ARGS`` with no ``GRIDFLEET_*`` variable but those in ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GRIDFLEET_")}
    clean["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "gridfleet.cli", *args],
        env={**clean, **(env or {})},
        cwd=cwd or REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def assert_one_clear_error(outcome: Outcome, code: int) -> str:
    """The command failed with ``code`` and said why on stderr, without a traceback."""
    assert outcome.code == code, (outcome.code, outcome.stderr)
    assert "Traceback" not in outcome.stderr, outcome.stderr
    message = outcome.stderr.strip()
    assert message, "the command failed silently"
    return message
