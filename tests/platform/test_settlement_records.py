"""Settlement bookkeeping on the fleet's side, unit by unit (fakeredis): the ids of accepted
settlement orders are taken from the exchange's answers, and trade events are summed with the
trades of those orders apart from spot trades."""

from __future__ import annotations

import fakeredis
import orjson

from gridfleet.exchange.messages import TradeEvent, decode
from gridfleet.platform.keys import Keys
from gridfleet.platform.observers import Tally
from gridfleet.platform.records import RecordWriter, trade_record
from gridfleet.platform.responses import ResponseRecorder
from tests.conftest import PROTOCOL_DIR

EXAMPLES = PROTOCOL_DIR / "settlement" / "examples"


def example(name: str) -> bytes:
    return orjson.dumps(orjson.loads((EXAMPLES / f"{name}.json").read_bytes())["data"])


def test_settlement_orders_in_the_captured_answers_are_recorded_by_id() -> None:
    broker = fakeredis.FakeRedis()
    keys = Keys("gf").for_run("r1")
    recorder = ResponseRecorder(broker, keys, {}, {}, Tally())
    recorder.asset_names.update(
        {u: u for u in orjson.loads(example("05_template_batch_0015_response"))["responses"]}
    )
    recorder.record(example("05_template_batch_0015_response"))
    orders = {k.decode(): v.decode() for k, v in broker.hgetall(keys.settlement_orders).items()}
    # the captured batch: a settlement bid per load and a settlement offer per PV, for 00:00;
    # its spot orders are not settlement orders
    assert orders == {
        "1344f266-667e-442f-8d06-212d9e1c5c28": "2026-12-02T00:00",
        "a82c6dfd-4543-4495-a8f6-94e8cbda6447": "2026-12-02T00:00",
        "5d03befa-64d6-4dc6-ac34-10368156d6bd": "2026-12-02T00:00",
        "ef4f0ba6-9152-4682-9154-860fc1694ed8": "2026-12-02T00:00",
    }


def test_a_trade_event_is_summed_with_settlement_trades_apart() -> None:
    event = decode(example("06_event_trade_template_settlement_offer_sold"), TradeEvent)
    (trade,) = event.trade_list
    own = trade.offer_id if trade.buyer == "anonymous" else trade.bid_id
    assert isinstance(own, str)
    spot_only = trade_record("agg", event, "2026-12-02T00:15")
    assert spot_only["trades"] == 1 and "settlement_trades" not in spot_only
    split = trade_record("agg", event, "2026-12-02T00:15", {own})
    assert split["trades"] == 0 and split["energy_kwh"] == 0
    assert split["settlement_trades"] == 1
    assert split["settlement_energy_kwh"] == trade.traded_energy
    assert split["settlement_price_ct"] == trade.trade_price


def test_the_record_writer_looks_the_ids_up_once_per_flush() -> None:
    broker = fakeredis.FakeRedis()
    keys = Keys("gf").for_run("r1")
    tally = Tally()
    writer = RecordWriter(broker, keys.events, tally)
    writer.settlement_orders = keys.settlement_orders
    event = decode(example("06_event_trade_probe_settlement_bid_bought"), TradeEvent)
    writer.trade("agg", event, None)
    writer.flush()  # no settlement order known yet: a spot trade
    (trade,) = event.trade_list
    assert isinstance(trade.bid_id, str)
    broker.hset(keys.settlement_orders, trade.bid_id, "2026-12-02T00:00")
    writer.trade("agg", event, None)
    writer.flush()
    first, second = (orjson.loads(f[b"data"]) for _, f in broker.xrange(keys.events))
    assert (first["trades"], first.get("settlement_trades")) == (1, None)
    assert (second["trades"], second["settlement_trades"]) == (0, 1)
    assert (tally.trades, tally.settlement_trades) == (1, 1)
