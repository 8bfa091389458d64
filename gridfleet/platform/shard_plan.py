"""Pure shard planning: which aggregators' trees go into which shard, without parsing them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import msgspec

from gridfleet.platform.rounds import RoundEvent, TreePart
from gridfleet.platform.shard import Manifest, ShardInput

ShardPlan = list[list[tuple[str, int, int | None]]]
"""Per shard: (aggregator, first row, end row or None) of each tree it takes."""


def plan_shards(aggregators: list[str], sizes: Mapping[str, int], shard_size: int) -> ShardPlan:
    """Pack whole aggregators into shards of about ``shard_size`` assets.

    ``sizes`` (aggregator -> assets in the fleet plan) weighs each tree without parsing it. An
    aggregator bigger than a shard is split into row ranges, one shard each.
    """
    plan: ShardPlan = []
    current: list[tuple[str, int, int | None]] = []
    filled = 0
    for aggregator in aggregators:
        n = sizes.get(aggregator, 0)
        if n > shard_size:
            for start in range(0, n, shard_size):
                stop = start + shard_size if start + shard_size < n else None
                plan.append([(aggregator, start, stop)])
            continue
        if current and filled + n > shard_size:
            plan.append(current)
            current, filled = [], 0
        current.append((aggregator, 0, None))
        filled += n
    if current or not plan:
        plan.append(current)
    return plan


def shard_inputs(plan: ShardPlan, events: Mapping[str, RoundEvent]) -> list[ShardInput]:
    """The planned shards with their trees' raw bytes."""
    trees: dict[str, bytes] = {}

    def tree(aggregator: str) -> bytes:
        if aggregator not in trees:
            raw = events[aggregator].grid_tree
            trees[aggregator] = (
                bytes(raw) if isinstance(raw, msgspec.Raw) else msgspec.json.encode(raw)
            )
        return trees[aggregator]

    return [ShardInput([TreePart(a, tree(a), s, e) for a, s, e in group]) for group in plan]


def cut_shards(
    events: list[tuple[str, RoundEvent]], sizes: Mapping[str, int], shard_size: int
) -> list[ShardInput]:
    """A round's (or a round's remaining) trees as shards: :func:`plan_shards`, filled."""
    return shard_inputs(plan_shards([a for a, _ in events], sizes, shard_size), dict(events))


_ROUND_HEAD = re.compile(rb'"slot_completion":\s*"(\d+)%",\s*"market_slot":\s*"([^"]+)"')


def peek_round(raw: bytes) -> tuple[str, int] | None:
    """(market slot, tick index) from the head of a raw market/tick event, without parsing it.

    gsy-e (and the embedded exchange) put these two keys first; anything else returns None and
    is parsed in full.
    """
    m = _ROUND_HEAD.search(raw, 0, 160)
    if m is None:
        return None
    return m.group(2).decode(), int(m.group(1)) // 10


@dataclass
class StreamedRound:
    """A round whose first shards went out while its events were still arriving."""

    manifest: Manifest  # as sent with the first shards (context, deadline)
    shards: int = 0
    sent: set[str] = field(default_factory=set)  # aggregators whose trees are out

    @property
    def deadline(self) -> float:
        return self.manifest.deadline
