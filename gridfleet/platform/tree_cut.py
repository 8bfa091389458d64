"""Full grid trees cut down to one aggregator's part without decoding them whole.

gsy-e sends every aggregator the whole grid: at 10 000 assets about 1 MB per event, 11 000
nodes to decode, of which an aggregator owns 1 %. Two aggregators' trees of the same tick
differ only in which leaves carry ``asset_info``. So a shard decodes its first tree whole (the
*reference*); for each further tree it

1. finds the tree's own leaves by a byte search (``{"asset_info":{``),
2. checks that the rest of the tree (its *skeleton*: the tree with each own leaf cut down to
   its ``area_name``, which is how every other leaf looks) is byte for byte the reference's,
3. decodes only its own leaves, and
4. builds a small tree of the reference's nodes: the markets on the paths to those leaves, the
   aggregator's own markets and the Market Maker's way, in the order they have in the tree.

That small tree flattens to the same rows, fees and markets as the whole tree
(``tests/platform/test_tree_cut.py`` compares them). A tree that does not match (another key
order, other market figures, a leaf that does not decode) is decoded whole, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgspec

from gridfleet.exchange.messages import GridNode, GridTree, ProtocolError, decode

# An own leaf starts ``{"asset_info": {`` (gsy-e writes ", " and ": "; compact JSON has none).
_OWN_LEAF = re.compile(rb'\{"asset_info": ?\{')
_NAME_KEY = b'"area_name"'


@dataclass(frozen=True, slots=True)
class _Leaf:
    uid: str
    start: int  # the leaf's "{"
    cut: int  # where its "area_name" key starts: [start + 1, cut) is cut from the skeleton
    end: int  # one past its closing "}"


def own_leaves(tree: bytes) -> list[_Leaf] | None:
    """The tree's leaves that carry ``asset_info``, in document order; None if one of them is not
    laid out as ``"<uuid>": {"asset_info": {...}, ..., "area_name": "<name>"}``."""
    leaves: list[_Leaf] = []
    for m in _OWN_LEAF.finditer(tree):
        start = m.start()
        # the key before it: "<uuid>": or "<uuid>":
        colon = start - 1
        while colon > 0 and tree[colon] == 0x20:
            colon -= 1
        if colon < 2 or tree[colon] != 0x3A or tree[colon - 1] != 0x22:
            return None
        open_quote = tree.rfind(b'"', 0, colon - 1)
        if open_quote < 0:
            return None
        key = tree[open_quote + 1 : colon - 1]
        if b"\\" in key:
            return None
        cut = tree.find(_NAME_KEY, m.end())
        end = _string_object_end(tree, cut + len(_NAME_KEY)) if cut >= 0 else -1
        if end < 0:
            return None
        leaves.append(_Leaf(key.decode(), start, cut, end))
    return leaves


def _string_object_end(tree: bytes, i: int) -> int:
    """After a key: ``: "<string>"`` then ``}``; the index past that ``}``, or -1."""
    n = len(tree)
    while i < n and tree[i] in b" :":
        i += 1
    if i >= n or tree[i] != 0x22:
        return -1
    i += 1
    while True:
        q = tree.find(b'"', i)
        if q < 0:
            return -1
        backslashes = 0
        while tree[q - 1 - backslashes] == 0x5C:
            backslashes += 1
        if backslashes % 2 == 0:
            break
        i = q + 1
    i = q + 1
    while i < n and tree[i] == 0x20:
        i += 1
    return i + 1 if i < n and tree[i] == 0x7D else -1


def skeleton(tree: bytes, leaves: list[_Leaf]) -> bytes:
    """The tree with each own leaf cut down to its ``area_name``."""
    parts = []
    at = 0
    for leaf in leaves:
        parts.append(tree[at : leaf.start + 1])
        at = leaf.cut
    parts.append(tree[at:])
    return b"".join(parts)


@dataclass
class Reference:
    """A shard's first whole tree: its skeleton, and each node's place in it."""

    skeleton: bytes
    tree: GridTree
    # node uuid -> (pre-order number, the market uuids from a root down to its parent)
    place: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    nodes: dict[str, GridNode] = field(default_factory=dict)

    @classmethod
    def of(cls, raw: bytes, tree: GridTree) -> Reference | None:
        leaves = own_leaves(raw)
        if leaves is None:
            return None
        ref = cls(skeleton(raw, leaves), tree)
        visited = 0
        # pre-order, children in document order
        stack: list[tuple[Iterator[tuple[str, GridNode]], tuple[str, ...]]] = [
            (iter(tree.items()), ())
        ]
        while stack:
            items, path = stack[-1]
            for uid, node in items:
                ref.place[uid] = (visited, path)
                ref.nodes[uid] = node
                visited += 1
                if isinstance(node.children, dict):
                    stack.append((iter(node.children.items()), (*path, uid)))
                    break
            else:
                stack.pop()
        if len(ref.place) != visited:
            return None  # a uuid twice in the tree: places would be ambiguous
        return ref

    def cut(
        self, raw: bytes, keep_markets: frozenset[str], way: tuple[str, ...] | None
    ) -> GridTree | None:
        """Aggregator tree ``raw`` as a small tree of this reference's nodes plus its own
        leaves; None if ``raw`` is not this reference's tree with other own leaves."""
        leaves = own_leaves(raw)
        if leaves is None or skeleton(raw, leaves) != self.skeleton:
            return None
        own: dict[str, GridNode] = {}
        for leaf in leaves:
            if leaf.uid not in self.place:
                return None
            try:
                own[leaf.uid] = decode(raw[leaf.start : leaf.end], GridNode)
            except ProtocolError:
                return None
        wanted: set[str] = set(own)
        for uid in own:
            wanted.update(self.place[uid][1])
        for uid in (*keep_markets, *(way or ())):
            where = self.place.get(uid)
            if where is not None:
                wanted.add(uid)
                wanted.update(where[1])
        small: GridTree = {}
        children_of: dict[str, GridTree] = {}
        for uid in sorted(wanted, key=lambda u: self.place[u][0]):
            path = self.place[uid][1]
            level = children_of[path[-1]] if path else small
            node = own.get(uid) or self.nodes[uid]
            if isinstance(node.children, dict):
                kids: GridTree = {}
                children_of[uid] = kids
                node = msgspec.structs.replace(node, children=kids)
            level[uid] = node
        return small
