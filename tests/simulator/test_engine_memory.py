"""The engine's heap is faulted in before its first round, in a process that keeps freed memory."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from gridfleet.runtime.interpreter import HEAP_KB_PER_ASSET

ASSETS = 40_000
FIRST_ROUND = """
import sys, psutil
from gridfleet.runtime.interpreter import keep_freed_memory
from gridfleet.simulator import SimConfig, Simulator, generate_grid
if sys.argv[1] == "keep":
    assert keep_freed_memory()
sim = Simulator(generate_grid(int(sys.argv[2]), seed=0), config=SimConfig(tick_interval=None))
sim.start(engine=False)
rss = psutil.Process().memory_info().rss
sim.step()  # opens the first slot: its trees are empty, a small round
print((psutil.Process().memory_info().rss - rss) >> 20)
sim.stop()
"""


def _first_round_growth_mb(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", FIRST_ROUND, mode, str(ASSETS)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_engine_warms_its_heap_where_freed_memory_is_kept() -> None:
    """As ``gridfleet sim`` runs it (freed memory kept), the first dispatch leaves the heap a
    heavy round needs resident; in a process that did not ask for it, nothing of the kind."""
    expected = int(ASSETS * HEAP_KB_PER_ASSET) >> 10
    assert _first_round_growth_mb("keep") >= expected * 0.9
    assert _first_round_growth_mb("default") < expected / 2
