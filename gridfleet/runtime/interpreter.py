"""Interpreter settings for gridfleet's hot paths: the garbage collector, the GIL and malloc.

All are process-wide, so the library only pauses the collector around its own work; the GIL
switch interval is set by the ``gridfleet`` command (and the benchmarks) for the whole process,
malloc's settings by the processes that host the embedded exchange (``gridfleet sim``,
``gridfleet demo``, the benchmarks that run it; their engine then warms its heap), and with a
warmed heap by the ingress and the workers' pool processes (:func:`warm_heap`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from collections.abc import Iterator

READER_SWITCH_INTERVAL_S = 0.0005
# glibc mallopt parameters and the values keep_freed_memory sets
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_KEEP = ((_M_TRIM_THRESHOLD, 1 << 30), (_M_TOP_PAD, 64 << 20), (_M_MMAP_THRESHOLD, 32 << 20))
_kept = False  # keep_freed_memory took effect in this process

HEAP_KB_PER_ASSET = 2.5
"""What a round holds at its peak per asset, the heap warmed for it: the events and shard
inputs passing through the ingress, the answers, trade events and trees of the embedded
exchange's settling round (~250 MB at 100 000 assets in each)."""


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (the collector is restored as it was).

    Decoding a 100 000-asset round allocates millions of short-lived containers, and each burst
    triggers collections that walk every tracked object of the process: measured at 100 000
    assets, decoding a round took 480 ms with the collector running and 150-260 ms without.
    What these paths allocate dies by reference counting; cyclic garbage waits for the next pass.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def freeze_start_up() -> None:
    """Keep what start-up built (the fleet's plan, its maps of every asset and aggregator) out
    of every later garbage collection: collected once, then frozen. Each full collection of a
    100 000-asset ingress otherwise walked all of it again, inside the rounds."""
    gc.collect()
    gc.freeze()


def favour_reader_threads() -> None:
    """Let reader threads take the GIL within 0.5 ms instead of Python's default 5 ms.

    A thread that reads a socket releases the GIL for each read and then waits for it while
    another thread decodes, merges or applies batches. At 5 ms per hand-over, the 1 000 events of
    a 100 000-asset round sat in the socket for hundreds of milliseconds before ingress saw them,
    and the embedded exchange stamped batches late while it applied earlier ones (it measured
    its own backlog).
    """
    sys.setswitchinterval(min(sys.getswitchinterval(), READER_SWITCH_INTERVAL_S))


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep what a round frees for the next round (False: not glibc).

    A 100 000-asset round allocates and frees hundreds of megabytes (trees, events, answers);
    by default malloc hands large blocks and the top of the heap back to the kernel, and the
    next round pays a page fault per 4 KB to get them again (tens of ms per round, measured in
    the embedded exchange's settling round). Blocks up to 32 MB now come from the heap and up to
    1 GB of freed heap is kept: the process stays at its peak size instead. The client's
    processes set it through :func:`warm_heap` (the ingress, the workers' pool processes): on
    its own its effect there was not clear (one run each), with a warmed heap the run's first
    round with trees went from 660-810 ms to 410-510 ms (p99, replay, 100 000 assets).
    """
    global _kept
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the process's own C library
    if mallopt is None:
        return False
    _kept = all(mallopt(param, value) == 1 for param, value in _KEEP)
    return _kept


def freed_memory_kept() -> bool:
    """Whether this process called :func:`keep_freed_memory` (and glibc took it): the processes
    that host the embedded exchange do, and its engine then warms its heap (:func:`warm_heap`)."""
    return _kept


def heap_for_assets(assets: int, most_mb: int, extra_bytes: int = 0) -> int:
    """Megabytes of heap to warm for a fleet of ``assets`` (:data:`HEAP_KB_PER_ASSET` each) and
    ``extra_bytes`` besides, at most ``most_mb``."""
    return min(most_mb, (int(assets * HEAP_KB_PER_ASSET * 1024) + extra_bytes) >> 20)


def warm_heap(megabytes: int) -> bool:
    """Keep freed memory (:func:`keep_freed_memory`) and fault in ``megabytes`` of heap now, so
    the first big round finds its pages mapped instead of taking a page fault per 4 KB (False:
    not glibc).

    A process's first 100 000-asset round touches hundreds of megabytes it never had; on a VM
    each first touch is dear (fresh tmpfs pages measured 3-5x dearer than reused ones), and the
    run's first round with trees was its slowest by far: its shards took up to 314 ms (later
    rounds 60-90 ms) and its batches went out at 650-750 ms. With the ingress's heap warmed
    (2.5 KB per asset, at most 256 MB) and 64 MB in each pool process: shards at most 43-119 ms,
    the round's p99 410-510 ms (``bench_pipeline --exchange replay``, 100 000 assets, one run
    each).
    """
    if not keep_freed_memory():
        return False
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunk = 8 << 20  # under the mmap threshold: from the heap, and back to it when freed
    blocks = []
    for _ in range(max(0, megabytes) * (1 << 20) // chunk):
        block = libc.malloc(chunk)
        if not block:
            break
        ctypes.memset(block, 0, chunk)
        blocks.append(block)
    for block in blocks:
        libc.free(block)
    return True
