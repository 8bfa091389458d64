"""Process-wide interpreter settings."""

from __future__ import annotations

import platform

import pytest

from gridfleet.runtime.interpreter import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_malloc_keeps_freed_memory_on_glibc() -> None:
    """Every setting is accepted (mallopt refuses values out of its range with 0)."""
    assert keep_freed_memory() is True
