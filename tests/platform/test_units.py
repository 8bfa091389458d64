"""Pipeline pieces one at a time: collector, rounds, shard evaluation, idempotent shard runs,
configuration errors, and what happens with bad input from outside."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

import fakeredis
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridfleet.config import ConfigError, load_config, parse_config, resolve_names
from gridfleet.exchange.messages import (
    MarketEvent,
    TickEvent,
    decode_event,
    decode_event_for_ingress,
)
from gridfleet.platform.codec import packb, unpackb
from gridfleet.platform.collector import RoundCollector
from gridfleet.platform.evaluate import evaluate_shard, merge_fragments
from gridfleet.platform.keys import Keys
from gridfleet.platform.rounds import RoundError, TreePart, build_round, flatten_parts
from gridfleet.platform.shard import (
    FleetSpec,
    Manifest,
    ShardInput,
    publish_spec,
    run_shard,
    write_round,
)
from gridfleet.platform.shard_plan import cut_shards
from gridfleet.strategies import registry
from gridfleet.strategies.base import AssetStrategy, PerAssetStrategy
from gridfleet.strategies.commands import Bid, OrderArrays, StrategyResult
from gridfleet.strategies.context import AssetBatch, AssetView, State, TickContext
from gridfleet.strategies.fees import GridTopology, fees_to_market_maker
from tests.conftest import load_example

MARKET = load_example("05_event_market")["data"]
TICK = load_example("05_event_tick")["data"]
TREE = orjson.dumps(MARKET["grid_tree"])


def event(data: dict, **changes: object) -> MarketEvent | TickEvent:
    ev = decode_event(orjson.dumps({**data, **changes}))
    assert isinstance(ev, MarketEvent | TickEvent)
    return ev


# -- collector -------------------------------------------------------------------------------


def test_market_event_and_zero_tick_make_one_round() -> None:
    c = RoundCollector(["a", "b"], window_s=10)
    c.add("a", event(MARKET), now=0.0)
    c.add("a", event(TICK), now=0.001)
    c.add("b", event(TICK), now=0.002)
    c.add("b", event(MARKET), now=0.003)
    (rnd,) = c.ready(now=0.004)
    assert rnd.market_event and set(rnd.events) == {"a", "b"}
    assert all(isinstance(e, MarketEvent) for e in rnd.events.values())
    assert c.stats.twin_events == 2 and c.stats.rounds == 1


def test_first_slot_ticks_without_tree_are_skipped_and_counted() -> None:
    c = RoundCollector(["a"])
    c.add(
        "a",
        decode_event(
            orjson.dumps(load_example("05_event_tick_first_slot_empty_grid_tree")["data"])
        ),
    )
    assert c.ready(now=1e9) == [] and c.stats.skipped_empty == 1


def test_incomplete_round_goes_out_after_the_quiet_gap_and_a_late_aggregator_gets_a_follow_up() -> (
    None
):
    c = RoundCollector(["a", "b"], window_s=0.05, max_wait_s=0.3)
    c.add("a", event(TICK, slot_completion="30%"), now=0.0)
    assert c.ready(now=0.02) == []
    (first,) = c.ready(now=0.06)
    assert set(first.events) == {"a"} and c.stats.incomplete_rounds == 1
    c.add("b", event(TICK, slot_completion="30%"), now=0.2)
    (follow_up,) = c.ready(now=0.3)
    assert set(follow_up.events) == {"b"} and follow_up.seq == 1 and follow_up.id.endswith(".1")
    c.add("a", event(TICK, slot_completion="30%"), now=0.31)  # a's duplicate: dropped
    assert c.ready(now=1.0) == []


def test_trade_and_finish_events_are_passed_through_not_evaluated() -> None:
    c = RoundCollector(["a"])
    out = c.add("a", decode_event(orjson.dumps(load_example("05_event_trade")["data"])))
    assert len(out.trades) == 1 and c.ready(now=1e9) == []
    out = c.add("a", decode_event(b'{"event": "finish", "simulation_id": null, "num_ticks": 10}'))
    assert out.finished == ["a"] and c.all_finished


# -- rounds ------------------------------------------------------------------------------------


def test_round_fees_match_the_strategy_library_fee_paths() -> None:
    rnd = build_round([("agg", event(MARKET))])
    topo = GridTopology.from_grid_tree(MARKET["grid_tree"])
    fees = fees_to_market_maker(topo)
    by_uuid = dict(zip(topo.uuid, fees, strict=True))
    assert len(rnd.assets) == 6
    for i, uuid in enumerate(rnd.assets.uuid):
        assert rnd.assets.grid_fee[i] == pytest.approx(by_uuid[uuid]), rnd.assets.name[i]


def test_round_context_and_kinds() -> None:
    rnd = build_round([("agg", event(MARKET))])
    assert rnd.ctx.is_market_event and rnd.ctx.tick_index == 0
    assert (rnd.ctx.feed_in_tariff_rate, rnd.ctx.market_maker_rate) == (21.0, 22.0)
    assert rnd.ctx.next_market_slot == "2024-06-01T00:30"
    kinds = {rnd.assets.name[i]: int(rnd.assets.kind[i]) for i in range(len(rnd.assets))}
    assert kinds["Tesla Powerwall 3"] == 2 and kinds["PV 1 (4kW)"] == 1 and kinds["Load 1 L13"] == 0


def test_round_without_tree_is_refused() -> None:
    with pytest.raises(RoundError, match="first slot"):
        build_round(
            [("a", event(load_example("05_event_tick_first_slot_empty_grid_tree")["data"]))]
        )


# -- shard evaluation and bad strategies -----------------------------------------------------


class Exploding(AssetStrategy):
    name = "exploding"

    def on_market(
        self, ctx: TickContext, assets: AssetBatch, state: Mapping[str, State]
    ) -> StrategyResult:
        if any(a == "bad-agg" for a in assets.aggregator):
            raise RuntimeError("boom")
        return StrategyResult(
            orders=OrderArrays(
                np.arange(len(assets)),
                np.ones(len(assets), bool),
                assets.energy_requirement_kwh.copy(),
                np.full(len(assets), 10.0),
            )
        )


class Greedy(PerAssetStrategy):
    """Bids twice the requirement: every command must be refused before it is sent."""

    name = "greedy"

    def decide(self, ctx: TickContext, asset: AssetView, state: State) -> tuple[list, State | None]:
        return [Bid(energy_kwh=asset.energy_requirement_kwh * 2 + 1, rate=5.0)], None


def two_aggregator_round():  # type: ignore[no-untyped-def]
    return build_round([("good-agg", event(MARKET)), ("bad-agg", event(MARKET))])


def test_a_strategy_that_raises_skips_only_its_aggregator() -> None:
    rnd = two_aggregator_round()
    loads = np.flatnonzero(rnd.assets.kind == 0)
    batch = rnd.assets.take(loads)
    out = evaluate_shard(rnd.ctx, batch, np.zeros(len(batch), np.int64), [Exploding()], {})
    assert set(out.fragments) == {"good-agg"}
    assert out.errors and out.errors[0].aggregator == "bad-agg" and "boom" in out.errors[0].reason
    assert out.commands == 3


def test_a_strategy_returning_invalid_commands_gets_them_refused_and_the_rest_go_out() -> None:
    rnd = build_round([("agg", event(MARKET))])
    loads = rnd.assets.kind == 0
    idx = np.where(loads, 1, 0).astype(np.int64)  # loads: greedy; the rest: linear ramp
    out = evaluate_shard(
        rnd.ctx, rnd.assets, idx, [registry.build("linear_ramp", {}), Greedy()], {}
    )
    assert len(out.refusals) == int(loads.sum()) == 3
    assert all("above the requirement" in r.reason for r in out.refusals)
    sent = orjson.loads(merge_fragments([out.fragments["agg"]]))
    assert not set(sent) & {rnd.assets.uuid[i] for i in np.flatnonzero(loads)}
    assert len(sent) == 1  # the storage's bid (the PVs have nothing to offer at night)


# -- idempotent shard runs -------------------------------------------------------------------


class Counting(PerAssetStrategy):
    """Counts its evaluations in state: a rerun of the same round must not count twice."""

    name = "counting"

    def decide(self, ctx: TickContext, asset: AssetView, state: State) -> tuple[list, State | None]:
        n = int(state.get("n", 0)) + 1
        return [], {"n": n}


def test_running_a_shard_twice_gives_the_same_state_and_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry.register("counting", Counting)
    r = fakeredis.FakeRedis()
    keys = Keys("t")
    version = publish_spec(
        r,
        keys,
        FleetSpec(strategies=[{"name": "counting", "params": {}}], by_kind={"agg": [0, 0, 0, 0]}),
    )
    rnd = build_round([("agg", event(MARKET))])

    def store(round_id: str) -> None:
        manifest = Manifest(round_id, rnd.ctx, version, 1, ["agg"], 0.0, 1.0)
        write_round(r, keys, manifest, [ShardInput([TreePart("agg", TREE)])])

    store("r1")
    first = run_shard(r, keys, "r1", 0)
    again = run_shard(r, keys, "r1", 0)  # the worker's retry, or the hedge
    assert first.output.fragments == again.output.fragments
    states = {k.decode(): unpackb(v) for k, v in r.hgetall(keys.state).items()}
    assert all(after == {"n": 1} for _, _, after in states.values())
    store("r2")
    run_shard(r, keys, "r2", 0)
    states = {k.decode(): unpackb(v) for k, v in r.hgetall(keys.state).items()}
    assert all(after == {"n": 2} for _, _, after in states.values())
    assert r.lrange(keys.done("r1"), 0, -1) == [
        b"0",
        b"0",
    ]  # reported twice; the coordinator counts a set


# -- configuration -----------------------------------------------------------------------------


def test_config_errors_name_the_path_of_the_bad_field() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "aggregators": [
                    {"name": "a", "assets": ["x"], "by_kind": {"battery": {"name": "fixed_rate"}}}
                ],
                "shard_size": 0,
            }
        )
    text = str(info.value)
    assert "aggregators.0.by_kind.battery" in text and "shard_size" in text


def test_config_refuses_duplicates_and_empty_aggregators() -> None:
    with pytest.raises(ConfigError, match="repeated"):
        parse_config(
            {"aggregators": [{"name": "a", "assets": ["x"]}, {"name": "a", "assets": ["y"]}]}
        )
    with pytest.raises(ConfigError, match="needs `assets` or `markets`"):
        parse_config({"aggregators": [{"name": "a"}]})


def test_config_file_yaml_error_names_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "fleet.yaml"
    bad.write_text("aggregators:\n  - name: a\n   assets: [x]\n")
    with pytest.raises(ConfigError, match="line 3"):
        load_config(bad)


def test_globs_resolve_against_the_grid_file_and_unknown_names_are_refused() -> None:
    known = ["H1 Load0", "H1 PV1", "H2 Load2"]
    assert resolve_names(["H1 *"], known, "asset", "a") == ["H1 Load0", "H1 PV1"]
    with pytest.raises(ConfigError, match="matches no asset"):
        resolve_names(["H9 *"], known, "asset", "a")
    with pytest.raises(ConfigError, match="not in the grid file"):
        resolve_names(["Nope"], known, "asset", "a")
    with pytest.raises(ConfigError, match="needs `grid_file`"):
        resolve_names(["H1 *"], None, "asset", "a")


def test_redis_urls_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_config({"aggregators": [{"name": "a", "assets": ["x"]}]})
    monkeypatch.setenv("GRIDFLEET_EXCHANGE_URL", "rediss://:secret@example:6380/0")
    assert cfg.exchange.resolve() == "rediss://:secret@example:6380/0"
    monkeypatch.delenv("GRIDFLEET_BROKER_URL", raising=False)
    with pytest.raises(ConfigError, match="GRIDFLEET_BROKER_URL is not set"):
        cfg.broker.resolve()


def test_msgpack_codec_round_trips_state() -> None:
    state = {"n": 1, "hist": [1.5, 2.5], "nested": {"a": None}}
    assert unpackb(packb(state)) == state
    assert json.loads(orjson.dumps(state)) == state


def test_metrics_and_healthz_are_served() -> None:
    import urllib.error
    import urllib.request

    from gridfleet.runtime.metrics import Metrics
    from gridfleet.runtime.redis_server import free_port

    m = Metrics()
    port = free_port()
    server = m.serve(port, host="127.0.0.1", stale_after_s=0.2)
    try:
        m.deadline.labels("hit").inc()
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
        assert 'gridfleet_deadline_total{outcome="hit"} 1.0' in body
        m.beat()
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3).status == 200
        import time

        time.sleep(0.3)  # the main loop stopped beating: unhealthy
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3)
        assert info.value.code == 503
    finally:
        server.shutdown()


def test_a_tree_that_does_not_parse_skips_only_its_aggregator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    r = fakeredis.FakeRedis()
    keys = Keys("t")
    spec = FleetSpec(
        strategies=[{"name": "linear_ramp", "params": {}}],
        by_kind={"good-agg": [0, 0, 0, 0], "bad-agg": [0, 0, 0, 0]},
    )
    version = publish_spec(r, keys, spec)
    rnd = build_round([("good-agg", event(MARKET))])
    manifest = Manifest("r1", rnd.ctx, version, 1, ["bad-agg", "good-agg"], 0.0, 1.0)
    bad = TreePart("bad-agg", b'{"x": {"children": 3}}')
    write_round(r, keys, manifest, [ShardInput([bad, TreePart("good-agg", TREE)])])
    with caplog.at_level(logging.ERROR):
        run = run_shard(r, keys, "r1", 0)
    assert set(run.output.fragments) == {"good-agg"}
    out = unpackb(r.get(keys.shard_output("r1", 0)))
    assert set(out["unusable"]) == {"bad-agg"} and "grid_tree" in out["unusable"]["bad-agg"]
    assert any("bad-agg" in rec.getMessage() for rec in caplog.records)


def _rows(batch: AssetBatch) -> list[tuple]:
    return list(
        zip(
            batch.uuid,
            batch.aggregator,
            batch.kind.tolist(),
            batch.energy_requirement_kwh.tolist(),
            batch.grid_fee.tolist(),
            strict=True,
        )
    )


@given(
    sizes=st.lists(st.integers(0, 12), min_size=1, max_size=5),
    shard_size=st.integers(1, 20),
)
@settings(max_examples=60, deadline=None)
def test_shards_of_raw_trees_flatten_to_the_same_round_as_one_process(
    sizes: list[int], shard_size: int
) -> None:
    """However the aggregators are packed or split, the shards' assets are the round's assets."""
    aggs = [f"agg-{i}" for i in range(len(sizes))]
    heads = [(a, decode_event_for_ingress(orjson.dumps(MARKET))) for a in aggs]
    whole = build_round([(a, event(MARKET)) for a in aggs])
    # sizes are the fleet plan's guess of each aggregator's assets: right or wrong, nothing is
    # lost or doubled (a wrong guess only makes shards uneven)
    shards = cut_shards(heads, dict(zip(aggs, sizes, strict=True)), shard_size)
    flat = [flatten_parts(s.parts, {}) for s in shards]
    assert sorted(r for f in flat for r in _rows(f.assets)) == sorted(_rows(whole.assets))


def test_a_strategy_naming_rows_outside_its_batch_is_refused_not_wrapped() -> None:
    """numpy would raise past the end and wrap -1 onto the batch's last asset: refused whole."""
    from gridfleet.platform.evaluate import evaluate_shard
    from gridfleet.strategies.base import AssetStrategy, StrategyConfig
    from gridfleet.testing import asset_batch, tick_context

    class Stray(AssetStrategy):
        name = "stray"

        class Config(StrategyConfig):
            row: int = -1

        def on_market(self, ctx, batch, state):  # type: ignore[no-untyped-def]
            orders = OrderArrays(
                np.array([self.config.row]), np.array([True]), np.array([0.1]), np.array([20.0])
            )
            return StrategyResult(orders=orders)

    batch = asset_batch([{"name": "L1", "kind": "load"}, {"name": "L2", "kind": "load"}])
    kinds = np.zeros(len(batch), dtype=np.int64)
    for row in (-1, 2):
        out = evaluate_shard(tick_context(), batch, kinds, [Stray(Stray.Config(row=row))], {})
        assert not out.fragments or all(f in (b"", b"{}") for f in out.fragments.values())
        assert out.errors and out.errors[0].reason == "rows outside the batch"
