"""Small helpers shared by the benchmark scripts: timing and writing results with provenance."""

from __future__ import annotations

import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

RESULTS = Path(__file__).resolve().parent / "results"


def best_and_median(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(min, median) wall seconds of ``fn`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def command_line() -> str:
    """How this benchmark was run, as anyone can run it again: ``python -m bench.<name> ARGS``
    (not this machine's path to the script)."""
    script = Path(sys.argv[0])
    head = (
        ["python", "-m", f"bench.{script.stem}"]
        if script.parent.resolve() == RESULTS.parent
        else ["python", script.name]
    )
    return " ".join(shlex.quote(a) for a in [*head, *sys.argv[1:]])


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` with the command line and machine that produced it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": command_line(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    return path
