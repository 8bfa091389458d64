"""Numbers rendered in bulk, exactly as Python renders them one by one.

The exchange's answers and trade events carry numbers the way gsy-e writes them (``repr`` of a
float, ``round(x, 8)``, ids as 12 hex digits); at 100 000 orders per tick doing that one value
at a time is a large part of the cost. These do it per array, bit for bit the same
(``tests/simulator/test_batch_fast.py`` checks them against the builtins).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson


def round8(x: np.ndarray) -> np.ndarray:
    """``[round(v, 8) for v in x]`` for float64 values, bit for bit, vectorised.

    Python's ``round(v, 8)`` is the double nearest to ``N / 10**8``, ``N`` the exact value
    times 10**8 rounded half-even. For ``|v| < 1e4``, ``v * 1e8`` is within 1e-4 of the exact
    product, so ``rint`` gives ``N`` unless the product is near a half; ``N / 1e8`` is then one
    correctly rounded division. Values near a half, larger ones and non-finite ones go to
    ``round`` itself.
    """
    with np.errstate(all="ignore"):
        y = x * 1e8
        out = np.rint(y) / 1e8
        odd = ~(np.abs(x) < 1e4) | (np.abs(y - np.floor(y) - 0.5) < 1e-3)
    for i in np.flatnonzero(odd).tolist():
        out[i] = round(float(x[i]), 8)
    return out


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_SHIFTS = np.arange(44, -1, -4, dtype=np.int64)


def hex12(values: np.ndarray) -> list[str]:
    """``[f"{v:012x}" for v in values]`` for 0 <= v < 16**12, vectorised."""
    digits = _HEX[(values.astype(np.int64)[:, None] >> _SHIFTS) & 15]
    return list(np.ascontiguousarray(digits).view("S12").ravel().astype("U12").tolist())


def reprs(values: list[Any]) -> list[str]:
    """``[repr(v) for v in values]`` for floats and ints below 2**53, in one orjson call.

    orjson writes the same shortest round-trip digits as ``repr``; the notations differ only
    outside ``1e-4 <= |v| < 1e16`` (``1e-05`` vs ``1e-5``) and for non-finite values, which
    take ``repr`` itself.
    """
    out = orjson.dumps(values)[1:-1].decode().split(",")
    arr = np.asarray(values, dtype=np.float64)
    mag = np.abs(arr)
    with np.errstate(invalid="ignore"):
        odd = ((mag < 1e-4) & (arr != 0)) | ~(mag < 1e16)
    for i in np.flatnonzero(odd).tolist():
        out[i] = repr(values[i])
    return out


def hex12s(values: np.ndarray) -> np.ndarray:
    """``f"{v:012x}"`` for 0 <= v < 16**12 as a numpy ``S12`` array, vectorised."""
    digits = _HEX[(values.astype(np.int64)[:, None] >> _SHIFTS) & 15]
    return np.ascontiguousarray(digits).view("S12").ravel()


def odd_positions(arr: np.ndarray) -> list[int]:
    """Positions of the values outside orjson's ``repr``-compatible notation range."""
    mag = np.abs(arr)
    with np.errstate(invalid="ignore"):
        odd = ((mag < 1e-4) & (arr != 0)) | ~(mag < 1e16)
    return list(np.flatnonzero(odd).tolist())


def _fix_odd(out: list[bytes], arr: np.ndarray, values: Any) -> list[bytes]:
    """Values outside orjson's ``repr``-compatible range get ``repr`` itself."""
    for i in odd_positions(arr):
        out[i] = repr(values[i]).encode()
    return out


def reprs_b(values: list[Any]) -> list[bytes]:
    """:func:`reprs` as bytes."""
    if not values:
        return []
    out = orjson.dumps(values)[1:-1].split(b",")
    return _fix_odd(out, np.asarray(values, dtype=np.float64), values)


def reprs_f64(arr: np.ndarray) -> list[bytes]:
    """``[repr(float(v)).encode() for v in arr]`` for a float64 array, without making Python
    floats: orjson writes numpy's float64 with the same shortest digits as a Python float."""
    if not len(arr):
        return []
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    out = orjson.dumps(arr, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")
    return _fix_odd(out, arr, _Floats(arr))


class _Floats:
    """``values[i]`` as a Python float, for the few values :func:`_fix_odd` renders itself."""

    def __init__(self, arr: np.ndarray) -> None:
        self.arr = arr

    def __getitem__(self, i: int) -> float:
        return float(self.arr[i])
