"""The observer interface: the fan-out, the broker's counters hash through an outage, Prometheus."""

from __future__ import annotations

import logging

import fakeredis
import pytest
from prometheus_client import generate_latest

from gridfleet.platform import observers as obs
from gridfleet.platform.collector import CollectorStats
from gridfleet.platform.observers import (
    BrokerCounters,
    Observer,
    Observers,
    PrometheusObserver,
    RoundLoss,
    RoundOutcome,
    RoundSkip,
    Tally,
)
from gridfleet.report.model import COUNTER_KEYS
from gridfleet.runtime.metrics import Metrics


def outcome(**changes: object) -> RoundOutcome:
    fields: dict[str, object] = {
        "round_id": "run:r1",
        "aggregators": 3,
        "shards": 2,
        "hedged": 1,
        "commands": 12,
        "refusals": 2,
        "errors": 1,
        "unusable": 0,
        "latency_s": 0.2,
        "budget_s": 0.8,
        "on_time": True,
        "shard_seconds": [0.05, 0.07],
    }
    return RoundOutcome(**{**fields, **changes})  # type: ignore[arg-type]


class Broken(Observer):
    def round_lost(self, reason: RoundLoss) -> None:
        raise RuntimeError("this observer is broken")


def test_a_failing_observer_is_logged_and_the_others_still_hear_every_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tally = Tally()
    fan_out = Observers([Broken(), tally])
    with caplog.at_level(logging.DEBUG, logger="gridfleet.platform.observers"):
        fan_out.round_lost(RoundLoss.BROKER)
        fan_out.round_lost(RoundLoss.BROKER)
    assert tally.lost_rounds == 2 and fan_out.failures == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "Broken" in errors[0].getMessage()  # once, then at debug level


def test_broker_counters_keep_what_the_broker_missed_and_write_it_when_it_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(obs, "RETRY_AFTER_S", 0.0)
    server = fakeredis.FakeServer()
    r = fakeredis.FakeRedis(server=server)
    counters = BrokerCounters(r, "gf:counters")
    counters.round_published(outcome())
    assert r.hget("gf:counters", "rounds") == b"1"

    server.connected = False  # the broker goes away: nothing raises, everything is kept
    counters.broker_outage()
    counters.round_lost(RoundLoss.BROKER)
    counters.round_lost(RoundLoss.BROKER)
    counters.trades_recorded(4, 1.25)
    counters.flush()
    assert counters.unwritten == 1 + 2 + 4

    server.connected = True
    counters.flush()
    assert counters.unwritten == 0
    got = {k.decode(): v.decode() for k, v in r.hgetall("gf:counters").items()}
    assert got["broker_outages"] == "1" and got["lost_rounds"] == "2"
    assert got["trades"] == "4" and float(got["energy_traded_kwh"]) == 1.25
    assert got["rounds"] == "1" and got["batches"] == "3" and got["deadline_hit"] == "1"


def test_broker_counters_write_every_field_the_report_reads_and_add_up_across_writers() -> None:
    r = fakeredis.FakeRedis()
    ingress, coordinator = BrokerCounters(r, "c"), BrokerCounters(r, "c")
    ingress.event_unusable("agg")
    ingress.trades_recorded(2, 0.5)
    ingress.settlement_trades_recorded(1, 0.25)
    ingress.round_skipped(RoundSkip.SUPERSEDED)
    ingress.round_lost(RoundLoss.BROKER)
    ingress.ingress_stopped(CollectorStats(events=40, rounds=4, skipped_empty=1, late_events=2))
    coordinator.round_published(outcome(on_time=False, unusable=1))
    coordinator.round_published(outcome())
    coordinator.round_skipped(RoundSkip.PAST_DEADLINE)
    coordinator.round_lost(RoundLoss.COORDINATOR)
    coordinator.commands_rejected(5)
    got = {k.decode(): v.decode() for k, v in r.hgetall("c").items()}
    assert set(COUNTER_KEYS) <= set(got)
    assert got["lost_rounds"] == "2"  # one each: they add up instead of overwriting
    assert got["trades"] == "2" and got["settlement_trades"] == "1"
    assert float(got["settlement_energy_kwh"]) == 0.25
    assert got["rounds"] == "2" and got["deadline_miss"] == "1" and got["deadline_hit"] == "1"
    assert got["commands_sent"] == "24" and got["commands_refused"] == "4"
    assert got["commands_rejected"] == "5" and got["unusable_trees"] == "1"
    assert got["stale_rounds"] == "1" and got["stale_rounds_coordinator"] == "1"
    assert got["ingress_events"] == "40" and got["late_events"] == "2"


def test_prometheus_observer_uses_bounded_labels_and_one_latency_sample_per_round() -> None:
    m = Metrics()
    p = PrometheusObserver(m)
    p.round_published(outcome())
    p.round_skipped(RoundSkip.PAST_DEADLINE)
    p.event_received("tick")
    text = generate_latest(m.registry).decode()
    assert "gridfleet_event_to_batch_duration_seconds_count 1.0" in text
    assert "gridfleet_shard_duration_seconds_count 2.0" in text
    assert 'gridfleet_skipped_rounds_total{reason="past_deadline"} 1.0' in text
    assert 'gridfleet_skipped_rounds_total{reason="superseded"} 0.0' in text  # there from the start
    assert 'gridfleet_deadline_total{outcome="miss"} 0.0' in text
    assert "aggregator=" not in text
    assert "process_cpu_seconds_total" in text and "python_gc_collections_total" in text
    with pytest.raises(ValueError):  # a reason outside the enum is a bug, not a new series
        p.round_skipped("because")  # type: ignore[arg-type]
