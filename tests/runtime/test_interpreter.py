"""Process-wide interpreter settings."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

KEEP = "import sys; from gridfleet.runtime.interpreter import keep_freed_memory as k; sys.exit(0 if k() else 1)"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_keeps_freed_memory_on_glibc() -> None:
    """Every setting is accepted (mallopt refuses values out of its range with 0); in a process
    of its own, as the exchange's, so the test runner's malloc stays as it was."""
    assert subprocess.run([sys.executable, "-c", KEEP], check=False).returncode == 0


WARM = """
import sys, psutil
from gridfleet.runtime.interpreter import warm_heap
rss = psutil.Process().memory_info().rss
assert warm_heap(64)
grown = psutil.Process().memory_info().rss - rss
print(grown >> 20)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_a_warmed_heap_stays_mapped_for_the_first_round() -> None:
    """The memory faulted in is freed to malloc, not to the kernel: the process keeps it mapped
    (resident), so the first big round does not fault it in again."""
    out = subprocess.run([sys.executable, "-c", WARM], check=True, capture_output=True, text=True)
    assert int(out.stdout) >= 60
