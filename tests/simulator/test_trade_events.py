"""The engine's trade events in bulk (:func:`trade_payloads`) against their readable definition
(tests/simulator/reference/trade_events_v2.py: :func:`trade_rows` per part, joined per
aggregator into :func:`trade_event`), byte for byte."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridfleet.simulator import arrow_text
from gridfleet.simulator.grid import Grid, generate_grid
from gridfleet.simulator.settlement import ORDER_ID_PREFIX as SETTLEMENT_PREFIX
from gridfleet.simulator.state import SPOT_ORDER_ID_PREFIX, TradeReport
from gridfleet.simulator.trade_events import AssetLabels, owner_array, trade_payloads
from tests.simulator.reference.trade_events_v2 import trade_event, trade_rows

BASE = generate_grid(24, houses_size=6, seed=3)
KEYS = ["agg-a", "agg-b", "agg-c", "agg-d"]
# numbers repr and orjson write differently (1e-05, 1e+16, nan) or that round(x, 8) treats apart
SPECIAL = [0.0, -0.0, 1.0, 3.0, 1e-05, 9.99e-05, 1e-4, 1e16, 1e17, 5e-324, 1.7976931348623157e308]
SPECIAL += [0.1 + 0.2, 12345.000000005, 2.5e-9, float("nan"), float("inf"), float("-inf")]
numbers = st.one_of(
    st.sampled_from(SPECIAL),
    st.integers(-(10**6), 10**6).map(float),
    st.floats(-1e5, 1e5),
    st.floats(),
)
order_seqs = st.one_of(st.just(-1), st.integers(0, 16**10))  # -1: the Market Maker's order


def _name_js(grid: Grid) -> list[str]:
    return [orjson.dumps(x).decode() for x in grid.asset_name]


def _sent(
    parts: list[TradeReport],
    grid: Grid,
    owner: tuple[np.ndarray, list[str]],
    when: str,
    seq: int,
    trees: dict[str, bytes],
    rates: tuple[float | None, float | None],
) -> dict[str, bytes]:
    """The events as the engine made them from the readable definition: each part's rows, an
    aggregator's settlement entries after its spot ones."""
    rows: dict[str, list[bytes]] = {}
    for part in parts:
        for agg, entries in trade_rows(part, grid, owner, when, seq).items():
            text = ",".join(entries).encode()
            rows[agg] = [*rows[agg], b",", text] if agg in rows else [text]
        seq += len(part)
    return {agg: trade_event(pieces, trees[agg], *rates) for agg, pieces in rows.items()}


@st.composite
def reports(draw: st.DrawFn, prefix: str) -> TradeReport:
    n = draw(st.integers(0, 14))

    def column(values: st.SearchStrategy[Any], dtype: Any) -> np.ndarray:
        return np.array(draw(st.lists(values, min_size=n, max_size=n)), dtype=dtype)

    asset = st.integers(-1, BASE.n_assets - 1)  # -1: the Market Maker
    return TradeReport(
        buyer=column(asset, np.int64),
        seller=column(asset, np.int64),
        energy=column(numbers, np.float64),
        price=column(numbers, np.float64),
        fee=column(numbers, np.float64),
        bid_seq=column(order_seqs, np.int64),
        offer_seq=column(order_seqs, np.int64),
        bid_residual=column(st.booleans(), bool),
        offer_residual=column(st.booleans(), bool),
        id_prefix=draw(st.one_of(st.just(prefix), st.text(max_size=6))),
    )


@settings(max_examples=400, deadline=None)
@given(
    spot=reports(SPOT_ORDER_ID_PREFIX),
    settled=st.one_of(st.none(), reports(SETTLEMENT_PREFIX)),
    names=st.lists(
        st.text(min_size=1, max_size=8), min_size=BASE.n_assets + 1, max_size=BASE.n_assets + 1
    ),
    uuids=st.lists(
        st.one_of(st.uuids().map(str), st.text(max_size=12)),
        min_size=BASE.n_assets,
        max_size=BASE.n_assets,
    ),
    owned=st.lists(st.sampled_from([None, *KEYS]), min_size=BASE.n_assets, max_size=BASE.n_assets),
    when=st.one_of(st.just("2024-06-01T12:00:00+00:00"), st.text(max_size=8)),
    seq=st.integers(0, 10**6),
    rates=st.tuples(st.one_of(st.none(), numbers), st.one_of(st.none(), numbers)),
)
def test_payloads_are_the_readable_events(
    spot: TradeReport,
    settled: TradeReport | None,
    names: list[str],
    uuids: list[str],
    owned: list[str | None],
    when: str,
    seq: int,
    rates: tuple[float | None, float | None],
) -> None:
    """Same events in the same order, for spot and settlement trades, owned by one side, both or
    none, with Market Maker sides and orders, residual ids, odd numbers, names and ids."""
    grid = dataclasses.replace(
        BASE, asset_name=names[:-1], asset_uuid=uuids, market_maker_name=names[-1]
    )
    owner = owner_array(grid, {a: k for a, k in enumerate(owned) if k is not None})
    trees = {k: f'{{"tree":"{k}"}}'.encode() for k in KEYS}
    parts = [spot] if settled is None else [spot, settled]
    got = trade_payloads(
        parts, AssetLabels(grid, _name_js(grid)), owner, when, seq, trees.__getitem__, rates
    )
    want = _sent(parts, grid, owner, when, seq, trees, rates)
    assert list(got) == list(want)
    assert {k: p.join() for k, p in got.items()} == want


def test_a_settling_tick_is_the_readable_events() -> None:
    """Thousands of trades between many aggregators' assets, as at a slot end."""
    grid = generate_grid(3000, houses_size=10, seed=1)
    rng = np.random.default_rng(1)
    n = 5000
    owned = rng.integers(-1, 40, grid.n_assets)
    owner = owner_array(grid, {a: f"agg-{k:02d}" for a, k in enumerate(owned.tolist()) if k >= 0})
    seqs = rng.integers(0, 10**7, n)
    spot = TradeReport(
        buyer=rng.integers(-1, grid.n_assets, n),
        seller=rng.integers(-1, grid.n_assets, n),
        energy=rng.random(n),
        price=rng.random(n) * 30,
        fee=np.round(rng.random(n), 3),
        bid_seq=np.where(rng.random(n) < 0.1, -1, seqs),
        offer_seq=np.where(rng.random(n) < 0.1, -1, seqs + 1),
        bid_residual=rng.random(n) < 0.3,
        offer_residual=rng.random(n) < 0.3,
    )
    settled = dataclasses.replace(spot, id_prefix=SETTLEMENT_PREFIX, energy=spot.energy[::-1])
    trees = {k: f'{{"tree":"{k}"}}'.encode() for k in owner[1]}
    when = "2024-06-01T12:00:00+00:00"
    got = trade_payloads(
        [spot, settled],
        AssetLabels(grid, _name_js(grid)),
        owner,
        when,
        7,
        trees.__getitem__,
        (10.0, 30.0),
    )
    want = _sent([spot, settled], grid, owner, when, 7, trees, (10.0, 30.0))
    assert list(got) == list(want)
    assert {k: p.join() for k, p in got.items()} == want


@settings(max_examples=300, deadline=None)
@given(values=st.lists(numbers, max_size=30))
def test_arrow_floats_are_repr(values: list[float]) -> None:
    """Every float as ``repr`` writes it, orjson's other notations and non-finite ones too."""
    got = arrow_text.floats(np.array(values, dtype=np.float64))
    assert got.type == arrow_text.TEXT
    assert got.to_pylist() == [repr(v).encode() for v in values]


def test_arrow_fixed_keeps_every_byte() -> None:
    """Rows of an ``S`` array as they are, NUL bytes included (``pa.array`` cuts at one)."""
    rows = np.array([b"a\x00b", b"\x00\x00c", b"xyz"], dtype="S3")
    assert arrow_text.fixed(rows).to_pylist() == [b"a\x00b", b"\x00\x00c", b"xyz"]


def test_arrow_spans_cut_joined_rows() -> None:
    """Consecutive rows are one slice of the column's data, also in a sliced column."""
    col = arrow_text.join(b"<", arrow_text.texts([b"", b"ab", b"c", b"def"]), b">")
    offsets, data = arrow_text.spans(col)
    assert bytes(data[offsets[1] : offsets[3]]) == b"<ab><c>"
    offsets, data = arrow_text.spans(col.slice(2))
    assert bytes(data[offsets[0] : offsets[2]]) == b"<c><def>"
    with pytest.raises(TypeError):
        arrow_text.spans(pa.array([b"x"], pa.binary()))
