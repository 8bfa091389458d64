"""Text built a column at a time in Arrow: per row byte strings, joined in C, no Python object
per row.

Every column is ``large_binary``: its int64 offsets cannot overflow, where a tick's text
(a million trades of ~600 bytes per side) would come close to binary's 2 GiB.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from gridfleet.simulator.numfmt import odd_positions

TEXT = pa.large_binary()
# Arrow's default pool (mimalloc) maps its arenas on 2 MB huge pages; the kernel sometimes spends
# a few hundred ms compacting memory to find them on first touch, inside a round (seen in about
# one process in ten). The C library's malloc reuses what a round frees instead (see
# runtime.interpreter.keep_freed_memory), for ~2 ms per settling round.
pa.set_memory_pool(pa.system_memory_pool())


def texts(values: Sequence[bytes]) -> pa.Array:
    """The byte strings as a text column."""
    return pa.array(values, TEXT)


def fixed(values: np.ndarray) -> pa.Array:
    """A numpy ``S`` array whose rows all fill its width (no NUL padding) as a text column,
    its bytes shared. ``pa.array`` would cut each row at its first NUL instead."""
    values = np.ascontiguousarray(values)
    offsets = np.arange(0, (len(values) + 1) * values.itemsize, values.itemsize, dtype=np.int64)
    buffers = [None, pa.py_buffer(offsets), pa.py_buffer(values)]
    return pa.Array.from_buffers(TEXT, len(values), buffers)


def floats(values: np.ndarray) -> pa.Array:
    """``repr(float(v)).encode()`` per float64 value: one orjson call (same shortest digits),
    ``repr`` itself for the few values orjson writes otherwise (as :func:`numfmt.reprs_f64`)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    if not len(values):
        return texts([])
    dumped = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    out = pc.split_pattern(pa.scalar(dumped, TEXT), b",").values
    odd = odd_positions(values)
    if not odd:
        return out
    mask = np.zeros(len(values), dtype=bool)
    mask[odd] = True
    return pc.replace_with_mask(out, mask, texts([repr(float(values[i])).encode() for i in odd]))


def join(*pieces: pa.Array | bytes) -> pa.Array:
    """Per row, the pieces concatenated; a ``bytes`` piece is the same in every row."""
    cols = [p if isinstance(p, pa.Array) else pa.scalar(p, TEXT) for p in pieces]
    return pc.binary_join_element_wise(*cols, pa.scalar(b"", TEXT))  # the last: the separator


def where(cond: np.ndarray, yes: pa.Array, no: bytes) -> pa.Array:
    """Per row, ``yes``'s text where ``cond`` holds, else ``no``."""
    return pc.if_else(cond, yes, pa.scalar(no, TEXT))


def spans(column: pa.Array) -> tuple[np.ndarray, memoryview]:
    """A text column's row offsets (``len + 1``) into its data: rows ``i..j`` are
    ``data[offsets[i]:offsets[j]]``, one slice without copying."""
    if column.type != TEXT:  # binary's offsets are int32
        raise TypeError(f"not a text column: {column.type}")
    _, offsets, data = column.buffers()
    starts = np.frombuffer(offsets, dtype=np.int64, count=len(column) + 1, offset=8 * column.offset)
    return starts, memoryview(data)


def warm_up() -> None:
    """Call the kernels once: each one's first call in a process costs a few to tens of ms."""
    one = floats(np.array([1.0, 1e-5]))  # one for repr: replace_with_mask too
    where(np.ones(2, dtype=bool), join(one.take(np.zeros(2, dtype=np.int64)), b","), b"")
