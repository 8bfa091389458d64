"""The event round's cheaper paths against the general ones: leaves laid out in place, trees
joined with their braces, large events published without a copy (same bytes throughout)."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import orjson
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from gridfleet.runtime.redis_server import RedisServer
from gridfleet.simulator.door import Pieces
from gridfleet.simulator.events import EventBuilder, market_heads
from gridfleet.simulator.redis_door import _NO_COPY_BYTES, RedisOutbox
from gridfleet.simulator.stats import MarketStats
from tests.simulator.reference import events_v1
from tests.simulator.test_batch_fast import Twin, _batch


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 1000), relayout=st.integers(0, 2))
def test_leaves_laid_out_in_place_and_trees_equal_the_original(seed: int, relayout: int) -> None:
    """Every own leaf and every tree is the original's bytes, tick after tick, also when a
    template changes between ticks (the layout is made again from the numbers last rendered)."""
    rng = random.Random(seed)
    tw = Twin(seed % 7)
    ids: list[str] = []
    assets = list(range(tw.grid.n_assets - 10))
    half = assets[: len(assets) // 2]
    new, old = EventBuilder(tw.grid, "pruned"), events_v1.EventBuilder(tw.grid, "pruned")
    for b in (new, old):
        b.template("agg", half, [1])
        b.template("rest", assets[len(half) :])
        b.template("none", [])
    for tick in range(3):
        tw.set_time(tick)
        tw.apply(_batch(rng, tw, ids, tick))
        tw.match()
        if tick == relayout:  # one aggregator's selection changes: half of its assets go
            for b in (new, old):
                b.forget("rest")
                b.template("agg", half[: len(half) // 2], [1])
        for b in (new, old):
            b.refresh_heads(tw.new)  # type: ignore[arg-type]
            b.refresh_own_leaves(tw.new, assets)  # type: ignore[arg-type]
        own0 = len(tw.grid.markets)
        for a in assets:
            leaf = new.own_leaf(a)
            if leaf is not None:
                assert leaf == old.pool[own0 + a].encode()
        for key in ("agg", "rest", "none", "unknown"):
            assert new.tree(key) == old.tree(key)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as s:
        yield s


def test_events_published_in_pieces_arrive_whole_and_in_order(server: RedisServer) -> None:
    """Events go out as written, whole or in pieces (long pieces, memoryviews among them,
    written where they lie, short ones copied between them): subscribers get each event's
    bytes joined, in order, on their channels."""
    client = redis.Redis.from_url(server.url)
    sub = client.pubsub()
    sub.psubscribe("external-aggregator/*")
    sub.get_message(timeout=2)  # the subscription's confirmation
    rng = random.Random(3)
    sizes = [0, 10, _NO_COPY_BYTES - 1, _NO_COPY_BYTES, 3 * _NO_COPY_BYTES, 200, 5 << 20]
    sent: list[tuple[str, bytes]] = []
    out = RedisOutbox(client, "")
    for i, n in enumerate(sizes):
        whole = rng.randbytes(n)
        out.aggregator_event(f"agg-{i % 3}", whole)
        sent.append((f"agg-{i % 3}", whole))
        cuts = sorted(rng.sample(range(n + 1), min(n + 1, 3)))
        pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
        pieces[len(pieces) // 2] = memoryview(pieces[len(pieces) // 2])  # as Arrow's slices
        out.batch_response(f"agg-{i % 3}", Pieces(pieces))
        sent.append((f"agg-{i % 3}", whole))
    out.send()
    got: list[tuple[str, bytes]] = []
    while len(got) < len(sent):
        msg = sub.get_message(timeout=5)
        assert msg is not None, "an event did not arrive"
        if msg["type"] == "pmessage":
            got.append((msg["channel"].decode().split("/")[2], msg["data"]))
    assert got == sent
    out.send()  # nothing queued: nothing written
    sub.close()
    client.close()


def test_an_error_reply_is_raised_after_every_reply_is_read(server: RedisServer) -> None:
    """Redis refusing one command (here a channel name too long for nothing: an ACL-less
    server accepts all, so a bad command is written by hand) leaves the connection in step:
    the next send's replies are its own."""
    client = redis.Redis.from_url(server.url)
    out = RedisOutbox(client, "")
    out.heartbeat(b"1")
    out._small += b"*1\r\n$7\r\nNOTACMD\r\n"  # one reply more: an error
    out._count += 1
    out.heartbeat(b"2")
    with pytest.raises(redis.ResponseError, match="unknown command"):
        out.send()
    out.heartbeat(b"3")
    out.send()  # reads exactly its own reply
    assert client.ping()
    client.close()


def _head_as_gsy_e_node(stats: MarketStats, last: float, cur: float, uuid: str, name: str) -> bytes:
    """The definition: one market's node serialised by orjson, cut before its children."""
    node = {
        "last_market_bill": {"accumulated_trades": {}, "external_trades": {}},
        "last_market_stats": stats.last_market_stats(0),
        "last_market_fee": last,
        "current_market_fee": cur if cur else None,
        "area_name": name,
    }
    return orjson.dumps(uuid) + b":" + orjson.dumps(node)[:-1] + b',"children":{'


_rates = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.sampled_from([0.0, -0.0, 1e-05, 1.5e-07, 1e16, 1e17, 123456.789, 30.000000005]),
)


@settings(max_examples=200, deadline=None)
@given(
    markets=st.lists(
        st.tuples(
            st.one_of(st.none(), st.tuples(*[_rates] * 5)),  # no trade, or the five statistics
            _rates,
            _rates,
            st.text(max_size=8),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_market_heads_in_bulk_equal_each_node_serialised(
    markets: list[tuple[tuple[float, ...] | None, float, float, str]],
) -> None:
    n = len(markets)
    stats = MarketStats.empty(n)
    for m, (five, _, _, _) in enumerate(markets):
        if five is not None:
            (
                stats.min_rate[m],
                stats.max_rate[m],
                stats.avg_rate[m],
                stats.median_rate[m],
                stats.volume[m],
            ) = five
    last = np.array([x[1] for x in markets])
    cur = np.array([x[2] for x in markets])
    uuids = [f"m-{m}" for m in range(n)]
    names = [x[3] for x in markets]
    got = market_heads(
        stats, last, cur, [orjson.dumps(u) for u in uuids], [orjson.dumps(x) for x in names]
    )
    for m in range(n):
        one = MarketStats.empty(1)
        for f in ("min_rate", "max_rate", "avg_rate", "median_rate", "volume"):
            getattr(one, f)[0] = getattr(stats, f)[m]
        want = _head_as_gsy_e_node(one, float(last[m]), float(cur[m]), uuids[m], names[m])
        assert got[m] == want
