"""The REST + websocket link against a real HTTP + websocket server on loopback (rest_server.py).

No mocks of httpx or websockets: every request and frame crosses a real socket.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from gridfleet.exchange.link import (
    AggregatorRequest,
    ExchangeUnreachable,
    OutgoingBatch,
    RestTarget,
    check_target,
    link_catalog,
    new_transaction_id,
    open_link,
)
from gridfleet.exchange.rest import RestLink, RestRequestError
from gridfleet.exchange.rest_auth import AuthError
from tests.exchange.rest_server import Node, RestExchangeServer

PASSWORD = "s3cret-pw"

pytestmark = pytest.mark.integration


def nodes() -> list[Node]:
    return [
        Node("Load 1", "Load"),
        Node("Load 2", "Load"),
        Node("PV 1", "PV"),
        Node("Battery", "Storage"),
        Node("Community", "Area"),
        Node("Not mine", "Load", registered=False),
        Node("Bus", "InfiniteBus"),
    ]


@pytest.fixture
def server() -> Iterator[RestExchangeServer]:
    srv = RestExchangeServer(nodes()).start()
    yield srv
    srv.stop()


def target_for(srv: RestExchangeServer, **kw: Any) -> RestTarget:
    opts: dict[str, Any] = {"request_timeout_s": 2.0, "retry_budget_s": 5.0, "max_retries": 3}
    opts.update(kw)
    return RestTarget(
        domain=srv.domain,
        websocket=srv.websocket,
        simulation_id=srv.sim,
        username=SecretStr("user@example.com"),
        password=SecretStr(opts.pop("password", PASSWORD)),
        **opts,
    )


@pytest.fixture
def link(server: RestExchangeServer) -> Iterator[RestLink]:
    lk = RestLink(target_for(server))
    yield lk
    lk.close()


def uuid_of(srv: RestExchangeServer, name: str) -> str:
    return next(n.uuid for n in srv.nodes if n.name == name)


def wait_for(cond: Any, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


# ------------------------------------------------------------------------------ bring-up


def test_bring_up_creates_the_aggregator_and_selects_everything(
    server: RestExchangeServer, link: RestLink
) -> None:
    up = link.bring_up([AggregatorRequest("north", ["Load 1", "PV 1"], ["Community"])], timeout=5)
    agg = up.aggregator_uuid["north"]
    assert server.aggregators == {"north": agg}
    assert up.asset_uuid == {"Load 1": uuid_of(server, "Load 1"), "PV 1": uuid_of(server, "PV 1")}
    assert up.market_uuid == {"Community": uuid_of(server, "Community")}
    assert server.selected[agg] == {uuid_of(server, n) for n in ("Load 1", "PV 1", "Community")}
    assert up.failures() == {}
    assert up.reused == []
    assert link.tokens.logins == 1  # one login for the whole bring-up


def test_a_second_run_reuses_the_aggregator_by_name(server: RestExchangeServer) -> None:
    with RestLink(target_for(server)) as first:
        made = first.bring_up([AggregatorRequest("north", ["Load 1"])], timeout=5)
    creates = server.requests[
        f"/external-connection/aggregator-api/{server.sim}/create-aggregator/"
    ]
    with RestLink(target_for(server)) as second:
        again = second.bring_up([AggregatorRequest("north", ["Load 1"])], timeout=5)
    assert again.reused == ["north"]
    assert again.aggregator_uuid == made.aggregator_uuid
    assert (
        server.requests[f"/external-connection/aggregator-api/{server.sim}/create-aggregator/"]
        == creates
        == 1
    )


def test_what_could_not_be_selected_is_named_with_its_reason(
    server: RestExchangeServer, link: RestLink
) -> None:
    server.no_confirm.add(uuid_of(server, "Load 2"))
    up = link.bring_up(
        [AggregatorRequest("north", ["Load 1", "Load 2", "Not mine", "Nowhere", "Bus"])],
        timeout=1.0,
    )
    failures = up.failures()
    assert set(failures) == {"Load 2", "Not mine", "Nowhere", "Bus"}
    assert "selected_by_device" in failures["Load 2"]
    assert "not registered to this user" in failures["Not mine"]
    assert "not in the exchange's registry" in failures["Nowhere"]
    assert "does not trade" in failures["Bus"]
    assert "Load 1" not in failures


def test_the_catalogue_lists_registered_assets_and_markets(link: RestLink) -> None:
    cat = link_catalog(link)
    assert cat is not None
    assert cat.assets == ["Load 1", "Load 2", "PV 1", "Battery"]
    assert cat.markets == ["Community"]
    assert cat.kinds == {"Load 1": "load", "Load 2": "load", "PV 1": "pv", "Battery": "storage"}


# ------------------------------------------------------------------------------ auth


def test_wrong_credentials_name_the_domain_and_not_the_password(server: RestExchangeServer) -> None:
    wrong = "wrong-pass-123"
    with pytest.raises(AuthError) as err:
        check_target(target_for(server, password=wrong))
    text = str(err.value)
    assert server.domain in text and "API_CLIENT_PASSWORD" in text
    assert wrong not in text and PASSWORD not in text


def test_an_unreachable_exchange_is_named(server: RestExchangeServer) -> None:
    target = target_for(server, retry_budget_s=0.5, max_retries=1)
    dead = RestTarget(**{**target.__dict__, "domain": "http://127.0.0.1:1"})
    with pytest.raises(ExchangeUnreachable, match=r"127\.0\.0\.1:1"):
        check_target(dead)


def test_the_token_is_renewed_before_it_expires(server: RestExchangeServer) -> None:
    # Its `exp` says 3 s: renewed after 2.4 s. Long enough that one catalog() on a loaded
    # machine stays within one token (1 s lifetimes renewed mid-catalog under CI load).
    server.token_lifetime_s = 3.0
    with RestLink(target_for(server)) as link:
        link.catalog()
        time.sleep(3.0)
        link.catalog()
        assert link.tokens.logins == 2
    assert server.requests["/api-token-auth/"] == 2


def test_a_401_logs_in_again_once_and_the_request_goes_through(
    server: RestExchangeServer, link: RestLink
) -> None:
    link.catalog()
    server.revoked_before = time.time() + 0.001  # every token issued so far is refused
    time.sleep(0.01)
    assert link.catalog().assets  # 401 -> new login -> retried
    assert link.tokens.logins == 2


def test_a_token_refused_again_after_a_new_login_is_a_clear_error(
    server: RestExchangeServer, link: RestLink
) -> None:
    link.catalog()
    server.revoked_before = time.time() + 3600  # even fresh tokens are refused
    with pytest.raises(AuthError, match="refused a freshly issued token"):
        link.catalog()


# ------------------------------------------------------------------------------ retries, timeouts


def test_500_and_429_are_retried(server: RestExchangeServer, link: RestLink) -> None:
    server.inject["/registry"] = [500, 429, 503]
    assert link.catalog().assets
    assert server.requests[f"/external-connection/configurations/{server.sim}/registry"] == 4


def test_a_400_is_never_retried(server: RestExchangeServer, link: RestLink) -> None:
    server.inject["/registry"] = [400]
    with pytest.raises(RestRequestError, match="HTTP 400"):
        link.catalog()
    assert server.requests[f"/external-connection/configurations/{server.sim}/registry"] == 1


def test_retries_stop_after_their_bound(server: RestExchangeServer) -> None:
    server.inject["/registry"] = [500] * 50
    with (
        RestLink(target_for(server, max_retries=2)) as link,
        pytest.raises(RestRequestError, match="HTTP 500"),
    ):
        link.catalog()
    assert server.requests[f"/external-connection/configurations/{server.sim}/registry"] == 3


def test_a_server_that_never_answers_times_out(server: RestExchangeServer) -> None:
    server.hang.add("/registry")
    with RestLink(target_for(server, request_timeout_s=0.3, max_retries=1)) as link:
        start = time.monotonic()
        with pytest.raises(RestRequestError, match="no answer"):
            link.catalog()
        assert time.monotonic() - start < 5  # bounded: 2 attempts of 0.3 s plus a backoff


# ------------------------------------------------------------------------------ events, answers


def brought_up(link: RestLink) -> str:
    return link.bring_up(
        [AggregatorRequest("north", ["Load 1", "PV 1"])], timeout=5
    ).aggregator_uuid["north"]


@pytest.mark.parametrize("text", [False, True], ids=["binary", "text"])
def test_events_and_answers_reach_their_handlers(
    server: RestExchangeServer, link: RestLink, text: bool
) -> None:
    server.text_frames = text
    agg = brought_up(link)
    events: queue.SimpleQueue[tuple[str, bytes, float]] = queue.SimpleQueue()
    answers: queue.SimpleQueue[tuple[str, bytes, float]] = queue.SimpleQueue()
    link.subscribe_events([agg], lambda a, raw, t: events.put((a, raw, t)))
    link.subscribe_answers([agg], lambda a, raw, t: answers.put((a, raw, t)))
    tick = {
        "event": "tick",
        "slot_completion": "10%",
        "market_slot": "2024-01-01T00:00",
        "grid_tree": {},
    }
    server.send(agg, tick)
    a, raw, t = events.get(timeout=5)
    assert (a, orjson.loads(raw)) == (agg, tick)
    assert t <= time.monotonic()
    device = uuid_of(server, "Load 1")
    tid = new_transaction_id()
    commands = orjson.dumps({device: [{"type": "bid", "energy": 0.1, "price": 3.0}]})
    assert link.send_batches([OutgoingBatch(agg, tid, commands)]) == 1
    a, raw, _ = answers.get(timeout=5)
    answer = orjson.loads(raw)
    assert (a, answer["command"], answer["transaction_id"]) == (agg, "batch_commands", tid)
    assert server.applied[tid]["batch_commands"] == orjson.loads(commands)
    assert events.empty()  # the answer went to the answers handler only


def test_a_big_tree_is_not_cut_off(server: RestExchangeServer, link: RestLink) -> None:
    agg = brought_up(link)
    events: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    link.subscribe_events([agg], lambda _a, raw, _t: events.put(raw))
    tree = {
        f"node-{i}": {"area_name": f"House {i}", "asset_info": {"energy_requirement_kWh": 0.5}}
        for i in range(40_000)
    }
    big = orjson.dumps(
        {"event": "market", "slot_completion": "0%", "market_slot": "x", "grid_tree": tree}
    )
    assert len(big) > 2 * 1024 * 1024  # over the library's 1 MiB default
    server.send(agg, big)
    assert events.get(timeout=10) == big


def test_malformed_frames_and_unknown_events_are_skipped(
    server: RestExchangeServer, link: RestLink, caplog: pytest.LogCaptureFixture
) -> None:
    agg = brought_up(link)
    events: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    link.subscribe_events([agg], lambda _a, raw, _t: events.put(raw))
    with caplog.at_level(logging.WARNING):
        server.send(agg, b"{not json")
        server.send(agg, b"[1, 2]")
        server.send(agg, {"event": "weather", "grid_tree": {}})
        server.send(agg, {"event": "finish", "simulation_id": server.sim})
        assert orjson.loads(events.get(timeout=5))["event"] == "finish"
    assert link.bad_frames == 2
    assert "unknown event kind 'weather'" in caplog.text


ONE_COMMAND = b'{"asset-1":[{"type":"device_info"}]}'
"""A batch with a command: an empty one is never sent."""


def test_an_empty_batch_is_not_sent(server: RestExchangeServer, link: RestLink) -> None:
    agg = brought_up(link)
    assert link.send_batches([OutgoingBatch(agg, new_transaction_id(), b"{}")]) == 0
    link.flush(10)
    assert not server.applied


def test_a_batch_retried_after_a_lost_answer_is_applied_once(
    server: RestExchangeServer, link: RestLink
) -> None:
    agg = brought_up(link)
    server.inject_after_apply["batch-commands/"] = [500, 502]  # applied, but the answer lost
    tid = new_transaction_id()
    link.send_batches([OutgoingBatch(agg, tid, ONE_COMMAND)])
    link.flush(10)
    assert server.requests[f"/external-connection/aggregator-api/{server.sim}/batch-commands/"] == 3
    assert list(server.applied) == [tid]
    assert (link.sent_batches, link.lost_batches) == (1, 0)


def test_a_batch_that_keeps_failing_is_counted_lost_and_the_link_goes_on(
    server: RestExchangeServer, caplog: pytest.LogCaptureFixture
) -> None:
    with RestLink(target_for(server, batch_retry_budget_s=0.3)) as link:
        agg = brought_up(link)
        server.inject["batch-commands/"] = [500] * 100
        with caplog.at_level(logging.ERROR):
            link.send_batches([OutgoingBatch(agg, new_transaction_id(), ONE_COMMAND)])
            link.flush(10)
        assert link.lost_batches == 1
        assert "not delivered" in caplog.text
        server.inject["batch-commands/"] = []
        link.send_batches([OutgoingBatch(agg, new_transaction_id(), ONE_COMMAND)])
        link.flush(10)
        assert link.sent_batches == 1


def test_many_aggregators_send_their_batches_concurrently(
    server: RestExchangeServer, link: RestLink
) -> None:
    names = [f"agg-{i}" for i in range(20)]
    up = link.bring_up([AggregatorRequest(n, []) for n in names], timeout=5)
    batches = [
        OutgoingBatch(up.aggregator_uuid[n], new_transaction_id(), ONE_COMMAND) for n in names
    ]
    assert link.send_batches(batches) == 20
    link.flush(10)
    assert {b.transaction_id for b in batches} == set(server.applied)
    assert all(server.open_sockets(u) == 1 for u in up.aggregator_uuid.values())  # one socket each


# ------------------------------------------------------------------------------ reconnects


def test_a_dropped_socket_comes_back_and_its_selections_are_rechecked_not_resent(
    server: RestExchangeServer, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []
    select_path = f"/external-connection/aggregator-api/{server.sim}/select-aggregator/"
    registry_path = f"/external-connection/configurations/{server.sim}/registry"
    with RestLink(target_for(server), on_reconnect=seen.append) as link:
        agg = brought_up(link)
        events: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        link.subscribe_events([agg], lambda _a, raw, _t: events.put(raw))
        selects, reads = server.requests[select_path], server.requests[registry_path]
        with caplog.at_level(logging.INFO):
            server.drop_sockets()
            wait_for(lambda: link.reconnects == 1 and server.open_sockets(agg) == 1)
            wait_for(lambda: server.requests[registry_path] == reads + 1)
            wait_for(lambda: "still held" in caplog.text)
        assert "s down" in caplog.text  # how long the link was down
        assert seen == [f"websocket {agg}"]
        # The registry says both devices are still this aggregator's: nothing is sent again.
        assert server.requests[select_path] == selects
        server.send(agg, {"event": "finish"})
        assert orjson.loads(events.get(timeout=5)) == {"event": "finish"}


def test_a_selection_the_exchange_dropped_meanwhile_is_selected_again(
    server: RestExchangeServer, caplog: pytest.LogCaptureFixture
) -> None:
    select_path = f"/external-connection/aggregator-api/{server.sim}/select-aggregator/"
    with RestLink(target_for(server)) as link:
        agg = brought_up(link)
        selects = server.requests[select_path]
        gone = sorted(server.selected[agg])[0]
        server.selected[agg].discard(gone)  # the exchange forgot it while the socket was down
        with caplog.at_level(logging.WARNING):
            server.drop_sockets()
            wait_for(lambda: server.requests[select_path] == selects + 1)
            wait_for(lambda: "were gone and selected again" in caplog.text)
        assert gone in server.selected[agg]
        assert "1 of 2 selections were gone" in caplog.text


def test_open_link_takes_a_rest_target(server: RestExchangeServer) -> None:
    link = open_link(target_for(server))
    try:
        assert isinstance(link, RestLink)
        assert link.reconnects == 0
    finally:
        link.close()


def test_no_secret_in_a_repr_or_the_log(
    server: RestExchangeServer, caplog: pytest.LogCaptureFixture
) -> None:
    target = target_for(server)
    assert PASSWORD not in repr(target) and "user@example.com" not in repr(target)
    with caplog.at_level(logging.DEBUG):
        with RestLink(target) as link:
            brought_up(link)
        with pytest.raises(AuthError):
            check_target(target_for(server, password="another-secret"))
    assert PASSWORD not in caplog.text and "another-secret" not in caplog.text
    assert "JWT " not in caplog.text  # no token either
