"""A shard's shortcuts answer what the general calls answer: uuids packed by one join are what
hiredis packs, the HMGETs sharing them read what ``hmget_many`` reads (a real Redis, fakeredis),
and strategies looked up per run of an aggregator's rows are the spec's per row."""

from __future__ import annotations

import fakeredis
import hiredis
import numpy as np
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from gridfleet.platform.bulk_redis import bulk_strings, hmget_many
from gridfleet.platform.keys import Keys
from gridfleet.platform.shard import FleetSpec
from gridfleet.strategies.context import AssetBatch

ASSETS = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(2000)]
MARKETS = [f"{i:08x}-1111-4000-8000-000000000000" for i in range(3)]


@given(st.lists(st.text(max_size=5) | st.sampled_from(ASSETS[:5]), min_size=1, max_size=6))
def test_fields_packed_by_one_join_are_what_hiredis_packs(fields: list[str]) -> None:
    packed = bulk_strings(fields)
    if packed is not None:
        header = hiredis.pack_command(("HMGET", "k"))  # type: ignore[arg-type]
        whole = hiredis.pack_command(("HMGET", "k", *fields))  # type: ignore[arg-type]
        assert whole == b"*%d" % (len(fields) + 2) + header[2:] + packed
    else:
        assert not all(f.isascii() for f in fields) or len({len(f) for f in fields}) > 1


def fill(r: redis.Redis, keys: Keys) -> None:
    r.hset(keys.state, mapping={u: u[:4].encode() for u in ASSETS[::7] + MARKETS[:1]})
    r.hset(keys.rejections, mapping={u: b"no" for u in ASSETS[::5]})
    r.hset(keys.market_answers, mapping={MARKETS[2]: b"\x00\xff"})


def requests(keys: Keys, assets: list[str], markets: list[str]) -> list[tuple[str, list[str]]]:
    return [
        (keys.state, assets + markets),
        (keys.rejections, assets),
        (keys.market_answers, markets),
    ]


@pytest.mark.integration
def test_hmgets_of_uuids_packed_by_one_join_read_what_redis_py_reads(redis_url: str) -> None:
    r = redis.Redis.from_url(redis_url)
    keys = Keys("reads")
    fill(r, keys)
    odd = [*ASSETS[:3], "é-not-ascii", "short"]  # not uuids of one length: the general way
    for assets, markets in [(ASSETS, MARKETS), (ASSETS, []), ([], MARKETS), ([], []), (odd, [])]:
        asked = requests(keys, assets, markets)
        assert hmget_many(r, asked) == [r.hmget(k, f) if f else [] for k, f in asked]
    assert r.ping() and r.hget(keys.market_answers, MARKETS[2]) == b"\x00\xff"


def test_fakeredis_reads_the_same_through_redis_py() -> None:
    r = fakeredis.FakeRedis()
    keys = Keys("reads")
    fill(r, keys)
    got = hmget_many(r, requests(keys, ASSETS[:50], MARKETS))
    assert got == [r.hmget(k, f) for k, f in requests(keys, ASSETS[:50], MARKETS)]


def batch_of(aggregators: list[str], kinds: list[int], uuids: list[str]) -> AssetBatch:
    n = len(aggregators)
    z = np.zeros(n)
    kind = np.array(kinds, dtype=np.int8)
    return AssetBatch(uuids, uuids, aggregators, uuids, kind, z, z, z, z, z, z, z)


@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 3)), max_size=30),
    st.dictionaries(st.sampled_from(ASSETS[:40]), st.integers(0, 4), max_size=3),
)
def test_strategies_per_run_of_rows_are_the_specs_per_row(
    rows: list[tuple[str, int]], by_asset: dict[str, int]
) -> None:
    spec = FleetSpec(
        strategies=[],
        by_kind={"a": [0, 1, 2, 3], "b": [3, 3, 0, 1], "c": [4, 4, 4, 4]},
        by_asset=by_asset,
    )
    batch = batch_of([a for a, _ in rows], [k for _, k in rows], ASSETS[: len(rows)])
    got = spec.strategy_indices(batch)
    assert got.dtype == np.int64 and got.tolist() == spec.strategy_indices_per_row(batch).tolist()


def test_an_aggregator_without_strategies_fails_as_the_spec_does() -> None:
    spec = FleetSpec(strategies=[], by_kind={"a": [0, 0, 0, 0]})
    with pytest.raises(KeyError):
        spec.strategy_indices(batch_of(["a", "z"], [0, 0], ASSETS[:2]))
