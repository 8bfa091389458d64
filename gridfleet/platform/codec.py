"""msgpack encodings of what travels between ingress, workers and coordinator.

Shard inputs carry the exchange's raw tree JSON as bytes (workers parse it); results, state and
manifests are plain msgpack. Never pickle.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import msgpack

from gridfleet.strategies.context import TickContext


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def array_header(n: int) -> bytes:
    """msgpack's header of an array of ``n`` items (as :func:`packb` writes it)."""
    return msgpack.Packer().pack_array_header(n)


def bin_header(n: int) -> bytes:
    """msgpack's header of ``n`` bytes of binary (as :func:`packb` writes it): with it, a large
    ``bytes`` value can be written where it lies instead of copied into the packed buffer."""
    if n < 1 << 8:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 1 << 16:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def ctx_to_dict(ctx: TickContext) -> dict[str, Any]:
    d = asdict(ctx)
    if d.get("asset_uuids_by_name") is not None:
        d["asset_uuids_by_name"] = dict(d["asset_uuids_by_name"])
    return d


def ctx_from_dict(d: dict[str, Any]) -> TickContext:
    return TickContext(**d)
