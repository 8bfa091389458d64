"""The exchange's REST door against real clients: a real aiohttp server on loopback, httpx for
REST, the ``websockets`` library for the sockets, a real Redis for the other door.

What rest.md §8 demands of a server the official client's templates run against: the exact
paths (no redirects), JWT auth everywhere (401 otherwise), binary frames, ``selected_by_device``
kept for a socket that is not connected yet, batches answered on the aggregator's socket with
their transaction id and counted by the exchange's deadline report, one market for both doors.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import orjson
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from gridfleet.exchange import channels
from gridfleet.simulator import SimConfig, Simulator
from gridfleet.simulator.grid import Grid, grid_from_dict
from gridfleet.simulator.rest_auth import UsersError, load_users_file, parse_user_flag
from gridfleet.simulator.rest_door import RestOptions
from tests.simulator.conftest import WireClient

pytestmark = pytest.mark.integration

USER, PASSWORD = "trader@example.com", "s3cret-for-tests"
SIM_ID = "5b1f0c4e-7d1a-4d52-9d43-1f2f0e6a9c01"


def small_grid() -> Grid:
    """Two houses with a load, a PV and a storage each; the root named as the template wants."""
    house = lambda n: {  # noqa: E731
        "name": f"House {n}",
        "children": [
            {"name": f"H{n} Load", "type": "load", "energy_kWh": 0.5},
            {"name": f"H{n} PV", "type": "pv", "energy_kWh": 0.4},
            {
                "name": f"H{n} Storage",
                "type": "storage",
                "capacity_kWh": 10,
                "initial_soc": 50,
                "min_soc": 10,
                "max_power_kW": 3,
            },
        ],
    }
    return grid_from_dict(
        {"grid": {"name": "Grid Market", "children": [house(1), house(2)]}}, seed=7
    )


class Rest:
    """An httpx client speaking to the door as the official client does (JWT header, JSON
    bodies on GETs too, a fresh transaction id per request)."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.http = httpx.Client(base_url=sim.rest_url, timeout=10)
        self.token = self.login(USER, PASSWORD).json()["access"]
        self.agg_prefix = f"/external-connection/aggregator-api/{sim.simulation_id}/"
        self.api_prefix = f"/external-connection/api/{sim.simulation_id}/"

    def login(self, user: str, password: str) -> httpx.Response:
        return self.http.post("/api-token-auth/", json={"username": user, "password": password})

    def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None
    ) -> httpx.Response:
        payload = {**(body or {}), "transaction_id": str(uuid.uuid4())}
        return self.http.request(
            method,
            path,
            content=json.dumps(payload),
            headers={
                "Authorization": f"JWT {token or self.token}",
                "Content-Type": "application/json",
            },
        )

    def agg(self, endpoint: str, body: dict[str, Any] | None = None) -> httpx.Response:
        method = "GET" if endpoint == "list-aggregators/" else "POST"
        return self.call(method, self.agg_prefix + endpoint, body)

    def create(self, name: str) -> str:
        r = self.agg("create-aggregator/", {"name": name})
        assert r.status_code == 200, r.text
        return str(r.json()["uuid"])

    def select(self, agg: str, device: str) -> httpx.Response:
        return self.agg("select-aggregator/", {"aggregator_uuid": agg, "device_uuid": device})

    def socket(self, path: str) -> ClientConnection:
        return connect(
            f"{self.sim.rest_ws_url}/{self.sim.simulation_id}/{path}",
            additional_headers={"Authorization": f"JWT {self.token}"},
            max_size=16 << 20,
            open_timeout=5,
        )

    def close(self) -> None:
        self.http.close()


def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    """The next message, which must be a binary frame holding one JSON object."""
    frame = ws.recv(timeout=timeout)
    assert isinstance(frame, bytes), f"a text frame: {frame!r:.80}"
    data = json.loads(frame.decode("utf-8"))
    assert isinstance(data, dict)
    return data


def recv_until(
    ws: ClientConnection, pred: Callable[[dict[str, Any]], bool], timeout: float = 5.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        msg = recv_json(ws, max(0.01, deadline - time.monotonic()))
        if pred(msg):
            return msg


def uuid_of(grid: Grid, name: str) -> str:
    return grid.asset_uuid[grid.asset_name.index(name)]


def market_uuid(grid: Grid, name: str) -> str:
    return next(m.uuid for m in grid.markets if m.name == name)


@pytest.fixture
def make_sim(redis_url: str) -> Iterator[Callable[..., Simulator]]:
    started: list[Simulator] = []

    def make(grid: Grid | None = None, config: SimConfig | None = None, **rest: Any) -> Simulator:
        options = RestOptions(users={USER: PASSWORD, "other": "pw-2"}, simulation_id=SIM_ID, **rest)
        sim = Simulator(
            grid or small_grid(),
            redis_url,
            config or SimConfig(slots=3, tick_interval=None),
            rest=options,
        )
        started.append(sim.start())
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[..., Simulator]) -> Simulator:
    return make_sim()


@pytest.fixture
def rest(sim: Simulator) -> Iterator[Rest]:
    client = Rest(sim)
    yield client
    client.close()


# ---------------------------------------------------------------------- auth


def test_login_gives_an_expiring_jwt_and_bad_credentials_get_401(rest: Rest) -> None:
    claims = jwt.decode(rest.token, options={"verify_signature": False})
    assert claims["sub"] == USER and claims["exp"] > time.time() + 3600
    bad = rest.login(USER, "wrong")
    assert bad.status_code == 401 and bad.json()["error"]
    assert PASSWORD not in bad.text
    assert rest.login("nobody", PASSWORD).status_code == 401
    ok = rest.agg("list-aggregators/")
    assert ok.status_code == 200 and ok.json() == []


@pytest.mark.parametrize(
    "header",
    [None, "JWT", "Bearer {token}", "JWT not-a-token", "JWT {forged}"],
    ids=["none", "empty", "wrong-scheme", "garbage", "forged"],
)
def test_every_path_needs_a_valid_jwt(rest: Rest, header: str | None) -> None:
    forged = jwt.encode(
        {"sub": USER, "exp": time.time() + 60},
        "not-the-secret-of-this-run-but-32-bytes-long",
        algorithm="HS256",
    )
    headers = (
        {} if header is None else {"Authorization": header.format(token=rest.token, forged=forged)}
    )
    for method, path in [
        ("GET", rest.agg_prefix + "list-aggregators/"),
        ("POST", rest.agg_prefix + "batch-commands/"),
        ("GET", f"/external-connection/configurations/{SIM_ID}/registry"),
        ("POST", "/graphql/"),
    ]:
        r = rest.http.request(method, path, content=b"{}", headers=headers)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["content-type"].startswith("application/json") and r.json()["error"]
    with pytest.raises(InvalidStatus) as refused:
        connect(
            f"{rest.sim.rest_ws_url}/{SIM_ID}/{uuid_of(rest.sim.grid, 'H1 Load')}/",
            additional_headers=headers,
            open_timeout=5,
        )
    assert refused.value.response.status_code == 401


def test_an_expired_token_gets_401_and_a_new_login_works(
    make_sim: Callable[..., Simulator],
) -> None:
    sim = make_sim(token_lifetime_s=2.0)
    rest = Rest(sim)
    try:
        fresh = rest.agg("list-aggregators/")
        assert fresh.status_code == 200, fresh.text
        time.sleep(3.1)  # 2 s, and `exp` is a whole second rounded up: gone by now + 3 s
        expired = rest.agg("list-aggregators/")
        assert expired.status_code == 401 and "expired" in expired.json()["error"]
        rest.token = rest.login(USER, PASSWORD).json()["access"]
        assert rest.agg("list-aggregators/").status_code == 200
    finally:
        rest.close()


def test_users_from_flags_and_files(tmp_path: Any) -> None:
    assert parse_user_flag("ops:pa:ss") == ("ops", "pa:ss")
    with pytest.raises(UsersError, match="NAME:PASSWORD"):
        parse_user_flag("ops")
    (tmp_path / "u.yaml").write_text("alice: one\nbob: two\n")
    assert load_users_file(tmp_path / "u.yaml") == {"alice": "one", "bob": "two"}
    (tmp_path / "u.json").write_text('{"alice": 987654}')
    with pytest.raises(UsersError, match="alice: the password must be a non-empty string") as e:
        load_users_file(tmp_path / "u.json")
    assert "987654" not in str(e.value)
    with pytest.raises(UsersError, match="cannot read"):
        load_users_file(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------- endpoints


def test_aggregators_are_listed_created_and_deleted_per_user(rest: Rest) -> None:
    a = rest.create("oracle")
    assert rest.agg("list-aggregators/").json() == [{"name": "oracle", "uuid": a}]
    other = Rest.__new__(Rest)
    other.__dict__.update(rest.__dict__)
    other.token = rest.login("other", "pw-2").json()["access"]
    assert other.agg("list-aggregators/").json() == []  # not another user's aggregators
    assert rest.agg("create-aggregator/", {"name": ""}).status_code == 400
    gone = rest.agg("delete-aggregator/", {"aggregator_uuid": a})
    assert gone.status_code == 200 and gone.json()["aggregator_uuid"] == a
    assert rest.agg("list-aggregators/").json() == []
    assert rest.sim.registry.aggregators == {}


def test_registry_and_graphql_describe_the_simulated_grid(rest: Rest) -> None:
    grid = rest.sim.grid
    a = rest.create("oracle")
    assert rest.select(a, uuid_of(grid, "H1 PV")).status_code == 200
    r = rest.call("GET", f"/external-connection/configurations/{SIM_ID}/registry")
    assert r.status_code == 200
    nodes: list[dict[str, Any]] = []

    def walk(n: dict[str, Any]) -> None:
        nodes.append(n)
        for c in n.get("children", []):
            walk(c)

    walk(r.json())
    by_name = {n["name"]: n for n in nodes}
    assert by_name["Grid Market"]["type"] == "Area" and by_name["House 2"]["type"] == "Area"
    assert {by_name[f"H1 {k}"]["type"] for k in ("Load", "PV", "Storage")} == {
        "Load",
        "PV",
        "Storage",
    }
    registered = [n for n in nodes if n["registered"] is True]
    assert {n["type"] for n in registered} == {"Area", "Load", "PV", "Storage"}
    assert len(registered) == len(grid.markets) + grid.n_assets
    assert by_name["Market Maker"]["registered"] is False
    assert by_name["H1 PV"]["aggregator_name"] == "oracle"
    assert by_name["H1 Load"]["aggregator_name"] is None
    for n in nodes:
        assert {"name", "type", "uuid", "registered", "aggregator_name", "attributes"} <= set(n)

    query = f'query {{ readConfiguration(uuid: "{SIM_ID}") {{ scenarioData {{ latest {{ serialized }} }} }} }}'
    g = rest.http.post(
        "/graphql/",
        json={"query": query, "variables": None, "operationName": None},
        headers={"Authorization": f"JWT {rest.token}"},
    )
    assert g.status_code == 200
    tree = json.loads(g.json()["data"]["readConfiguration"]["scenarioData"]["latest"]["serialized"])
    names: dict[str, str] = {}

    def collect(n: dict[str, Any]) -> None:
        names.setdefault(n["name"], n["uuid"])
        for c in n.get("children", []):
            collect(c)

    collect(tree)
    assert tree["name"] == "Grid Market" and isinstance(tree["children"], list)
    assert {names[n] for n in grid.asset_name} == set(grid.asset_uuid)
    assert names["House 1"] == market_uuid(grid, "House 1")
    unknown = rest.http.post(
        "/graphql/",
        json={"query": query.replace(SIM_ID, "nope")},
        headers={"Authorization": f"JWT {rest.token}"},
    )
    assert unknown.json()["errors"] and unknown.json()["data"]["readConfiguration"] is None
    listed = rest.http.post(
        "/graphql/",
        json={"query": "query { aggregatorsList { configUuid name devicesList { deviceUuid } } }"},
        headers={"Authorization": f"JWT {rest.token}"},
    )
    assert listed.json()["data"]["aggregatorsList"] == [
        {
            "configUuid": SIM_ID,
            "name": "oracle",
            "devicesList": [{"deviceUuid": uuid_of(grid, "H1 PV")}],
        }
    ]


def test_exact_paths_no_redirects_json_errors(rest: Rest) -> None:
    for method, path in [
        ("GET", f"/external-connection/configurations/{SIM_ID}/registry/"),  # no slash there
        ("GET", rest.agg_prefix + "list-aggregators"),  # a slash there
        ("POST", rest.agg_prefix + "batch-commands"),
        ("GET", "/external-connection/aggregator-api/other-sim/list-aggregators/"),
        ("POST", "/nothing-here/"),
    ]:
        r = rest.call(method, path)
        assert r.status_code == 404, (path, r.status_code)
        assert r.json()["error"]
    assert rest.call("POST", rest.agg_prefix + "list-aggregators/").status_code == 405
    bad = rest.http.post(
        rest.agg_prefix + "create-aggregator/",
        content=b"{not json",
        headers={"Authorization": f"JWT {rest.token}"},
    )
    assert bad.status_code == 400 and "JSON" in bad.json()["error"]


def test_selected_by_device_is_kept_until_the_socket_connects(rest: Rest) -> None:
    grid = rest.sim.grid
    a = rest.create("oracle")
    load, pv = uuid_of(grid, "H1 Load"), uuid_of(grid, "H1 PV")
    r = rest.select(a, load)  # before the socket is open (the template's race, rest.md §7.8)
    assert r.status_code == 200 and r.json()["aggregator_uuid"] == a
    with rest.socket(f"aggregator/{a}/") as ws:
        assert recv_json(ws) == {"event": "selected_by_device", "device_uuid": load}
        assert rest.select(a, pv).status_code == 200
        assert recv_json(ws) == {"event": "selected_by_device", "device_uuid": pv}
        again = rest.select(a, pv)  # a reused aggregator selects again: answered and told again
        assert again.status_code == 200
        assert recv_json(ws) == {"event": "selected_by_device", "device_uuid": pv}
        off = rest.agg("unselect-aggregator/", {"aggregator_uuid": a, "device_uuid": pv})
        assert off.status_code == 200 and off.json()
        assert recv_json(ws) == {"event": "unselected_by_device", "device_uuid": pv}
    assert rest.sim.registry.selected[a] == {load}
    b = rest.create("rival")
    taken = rest.select(b, load)
    assert taken.status_code == 409 and "another aggregator" in taken.json()["error"]
    missing = rest.select(a, "no-such-device")
    assert missing.status_code == 404


def test_a_rest_batch_is_applied_answered_on_the_socket_and_counted(rest: Rest) -> None:
    sim, grid = rest.sim, rest.sim.grid
    a = rest.create("oracle")
    load = uuid_of(grid, "H1 Load")
    assert rest.select(a, load).status_code == 200
    with rest.socket(f"aggregator/{a}/") as ws:
        recv_until(ws, lambda m: m.get("event") == "selected_by_device")
        for _ in range(10):  # the first slot: empty trees, no market event
            sim.advance()
        sim.advance()  # slot 2 opens: market event + 0 % tick
        market = recv_until(ws, lambda m: m.get("event") == "market")
        assert market["simulation_id"] == SIM_ID and market["slot_completion"] == "0%"
        own = [n for n in market["grid_tree"].values()]
        assert own and "area_name" in own[0]
        tick = recv_until(ws, lambda m: m.get("event") == "tick")
        tid = str(uuid.uuid4())
        body = {
            "aggregator_uuid": a,
            "batch_commands": {
                load: [
                    {
                        "type": "bid",
                        "energy": 0.2,
                        "price": 4.0,
                        "replace_existing": True,
                        "time_slot": None,
                    }
                ]
            },
            "transaction_id": tid,
        }
        r = rest.http.post(
            rest.agg_prefix + "batch-commands/",
            content=json.dumps(body),
            headers={"Authorization": f"JWT {rest.token}"},
        )
        assert r.status_code == 200 and r.json()  # truthy JSON: the SDK counts it as posted
        answer = recv_until(ws, lambda m: m.get("command") == "batch_commands")
        assert answer["transaction_id"] == tid and answer["aggregator_uuid"] == a
        (item,) = answer["responses"][load]
        assert item["status"] == "ready" and item["command"] == "bid"
        assert json.loads(item["bid"])["energy"] == pytest.approx(0.2)
        assert tick["market_slot"] == market["market_slot"]
        sim.advance()
        recv_until(ws, lambda m: m.get("event") == "tick" and m["slot_completion"] == "10%")
    report = sim.report()
    assert sim.counts.batches_answered == 1
    assert report["summary"]["on_time"] == 1, report["summary"]
    assert report["aggregators"][a]["on_time"] == 1
    assert report["aggregators"][a]["name"] == "oracle"


def test_bad_batches_get_clear_400s(rest: Rest) -> None:
    a = rest.create("oracle")
    for body, needle in [
        ({"batch_commands": {}}, "aggregator_uuid"),
        ({"aggregator_uuid": a, "batch_commands": []}, "batch_commands"),
        ({"aggregator_uuid": "someone-else", "batch_commands": {}}, "not found"),
    ]:
        r = rest.agg("batch-commands/", body)
        assert r.status_code in (400, 404) and needle in r.json()["error"], r.text


def test_per_asset_and_per_market_endpoints_answer_on_their_sockets(rest: Rest) -> None:
    sim, grid = rest.sim, rest.sim.grid
    load, house = uuid_of(grid, "H2 Load"), market_uuid(grid, "House 2")
    slot = sim.state.market_slot
    with rest.socket(f"{load}/") as asset_ws, rest.socket(f"{house}/") as market_ws:
        r = rest.call(
            "POST",
            rest.api_prefix + f"{load}/set-energy-forecast/",
            {"energy_forecast": {slot: 0.9}},
        )
        assert r.status_code == 200 and r.json()
        tid = json.loads(r.request.content)["transaction_id"]
        answer = recv_json(asset_ws)
        assert answer["command"] == "set_energy_forecast" and answer["status"] == "ready"
        assert answer["transaction_id"] == tid
        index = grid.asset_name.index("H2 Load")
        assert sim.state.asset_info(index)["energy_requirement_kWh"] == pytest.approx(0.9)
        m = rest.call(
            "POST",
            rest.api_prefix + f"{load}/set-energy-measurement/",
            {"energy_measurement": {slot: 0.3}},
        )
        assert m.status_code == 200
        assert recv_json(asset_ws)["command"] == "set_energy_measurement"
        wrong = rest.call(
            "POST", rest.api_prefix + f"{load}/set-energy-forecast/", {"energy_Wh": 5}
        )
        assert wrong.status_code == 400 and "energy_Wh" in wrong.json()["error"]
        reg = rest.call("POST", rest.api_prefix + f"{load}/register/")
        assert reg.status_code == 200
        registered = recv_json(asset_ws)
        assert registered["command"] == "register" and registered["registered"] is True
        assert load in sim.registry.registered
        fee = rest.call("POST", rest.api_prefix + f"{house}/grid-fee/", {"fee_const": 2.5})
        assert fee.status_code == 200
        fee_answer = recv_json(market_ws)
        assert fee_answer["command"] == "grid_fees" and fee_answer["status"] == "ready"
        assert fee_answer["market_fee_const"] == "2.5"
        stats = rest.call("GET", rest.api_prefix + f"{house}/dso-market-stats")
        assert stats.status_code == 200
        stats_answer = recv_json(market_ws)
        assert stats_answer["command"] == "dso_market_stats" and "market_stats" in stats_answer
        assert (
            rest.call(
                "POST", rest.api_prefix + f"{house}/set-energy-forecast/", {"energy_forecast": {}}
            ).status_code
            == 400
        )
        scm = rest.call("POST", rest.api_prefix + "set-scm-global-data/", {"x": 1})
        assert scm.status_code == 200 and scm.json()["status"] == "ignored"


# ---------------------------------------------------------------------- both doors, one market


def test_one_market_serves_a_redis_and_a_rest_aggregator(rest: Rest, redis_url: str) -> None:
    sim, grid = rest.sim, rest.sim.grid
    wire = WireClient(redis_url)
    try:
        redis_agg = wire.create("over-redis")
        pv = uuid_of(grid, "H1 PV")
        assert wire.select(redis_agg, pv)[0]["status"] == "SELECTED"
        rest_agg = rest.create("over-rest")
        load = uuid_of(grid, "H1 Load")
        assert rest.select(rest_agg, load).status_code == 200
        with rest.socket(f"aggregator/{rest_agg}/") as ws:
            recv_until(ws, lambda m: m.get("event") == "selected_by_device")
            for _ in range(11):
                sim.advance()
            rest_market = recv_until(ws, lambda m: m.get("event") == "market")
            _, redis_market = wire.wait_for(
                lambda c, d: (
                    c == channels.aggregator_events(redis_agg) and d.get("event") == "market"
                )
            )
            assert rest_market["market_slot"] == redis_market["market_slot"]
            assert redis_market["simulation_id"] is None  # the Redis door stays gsy-e's local mode
            offer = wire.batch(
                redis_agg,
                {
                    pv: [
                        {
                            "type": "offer",
                            "energy": 0.3,
                            "price": 3.0,
                            "replace_existing": True,
                            "time_slot": None,
                        }
                    ]
                },
            )
            assert offer is not None and offer["responses"][pv][0]["status"] == "ready"
            r = rest.agg(
                "batch-commands/",
                {
                    "aggregator_uuid": rest_agg,
                    "batch_commands": {
                        load: [
                            {
                                "type": "bid",
                                "energy": 0.3,
                                "price": 6.0,
                                "replace_existing": True,
                                "time_slot": None,
                            }
                        ]
                    },
                },
            )
            assert r.status_code == 200
            recv_until(ws, lambda m: m.get("command") == "batch_commands")
            sim.advance()  # matching at the next tick: the REST bid meets the Redis offer
            rest_trade = recv_until(ws, lambda m: m.get("event") == "trade")
            _, redis_trade = wire.wait_for(
                lambda c, d: (
                    c == channels.aggregator_events(redis_agg) and d.get("event") == "trade"
                )
            )
        (bought,) = rest_trade["trade_list"]
        (sold,) = redis_trade["trade_list"]
        assert bought["traded_energy"] == pytest.approx(0.3) and sold[
            "traded_energy"
        ] == pytest.approx(0.3)
        assert rest_trade["simulation_id"] == SIM_ID
    finally:
        wire.close()


# ---------------------------------------------------------------------- the template's flow


def template_client(sim: Simulator, name: str, slots_out: list[dict[str, Any]]) -> dict[str, Any]:
    """What ``rest_basic_strategies`` does (rest.md §8.1-§8.2), with httpx and websockets:
    login, list/create, socket, registry, GraphQL name -> uuid, select, then a batch per market
    and tick event, every answer waited for by transaction id, until ``finish``."""
    rest = Rest(sim)
    with contextlib.ExitStack() as stack:
        stack.callback(rest.close)
        listed = {a["name"]: a["uuid"] for a in rest.agg("list-aggregators/").json()}
        agg = listed.get(name) or rest.create(name)
        ws = stack.enter_context(rest.socket(f"aggregator/{agg}/"))
        reg = rest.call(
            "GET", f"/external-connection/configurations/{sim.simulation_id}/registry"
        ).json()
        kinds: dict[str, list[str]] = {"Area": [], "Load": [], "PV": [], "Storage": []}

        def walk(n: dict[str, Any]) -> None:
            if n.get("registered") is True:
                kinds[n["type"]].append(n["name"])
            for c in n.get("children") or []:
                walk(c)

        walk(reg)
        query = f'query {{ readConfiguration(uuid: "{sim.simulation_id}") {{ scenarioData {{ latest {{ serialized }} }} }} }}'
        serialized = rest.http.post(
            "/graphql/", json={"query": query}, headers={"Authorization": f"JWT {rest.token}"}
        ).json()["data"]["readConfiguration"]["scenarioData"]["latest"]["serialized"]
        names: dict[str, str] = {}

        def collect(n: dict[str, Any]) -> None:
            names.setdefault(n["name"], n["uuid"])
            for c in n.get("children", []):
                collect(c)

        collect(json.loads(serialized))
        assets = [names[n] for n in kinds["Load"] + kinds["PV"] + kinds["Storage"]]
        for u in assets:
            assert rest.select(agg, u).json()["aggregator_uuid"] == agg
        selected: set[str] = set()
        batches = answered = 0
        seen_ticks: list[str] = []
        while True:
            msg = recv_json(ws, timeout=10)
            event = msg.get("event")
            if event == "selected_by_device":
                selected.add(msg["device_uuid"])
            elif event == "finish":
                break
            elif event == "trade":
                assert all(t["traded_energy"] > 0 for t in msg["trade_list"])
                slots_out.append({"trade": len(msg["trade_list"])})
            elif event in ("market", "tick"):
                pct = int(msg["slot_completion"].rstrip("%"))
                if event == "tick":
                    seen_ticks.append(msg["slot_completion"])
                if not msg["grid_tree"] or (event == "tick" and pct < 10):
                    continue  # the first slot's empty trees, the 0 % tick: ignored
                tree = msg["grid_tree"]
                assert sum(1 for n in _nodes(tree) if n["area_name"] == "Grid Market") == 1
                commands: dict[str, list[dict[str, Any]]] = {}
                for node_uuid, node in _flat(tree).items():
                    info = node.get("asset_info")
                    if node_uuid not in selected or info is None:
                        continue
                    rate = (
                        msg["market_maker_rate"] - 2
                        if "energy_requirement_kWh" in info
                        else msg["feed_in_tariff_rate"] + 2
                    )
                    energy = (
                        info.get("energy_requirement_kWh") or info.get("available_energy_kWh") or 0
                    )
                    if energy > 1e-3:
                        kind = "bid" if "energy_requirement_kWh" in info else "offer"
                        commands[node_uuid] = [
                            {
                                "type": kind,
                                "energy": energy / 2,
                                "price": rate * energy / 2,
                                "replace_existing": True,
                                "time_slot": None,
                            }
                        ]
                assert selected.issuperset(commands), "a batch names an unselected asset"
                if not commands:
                    continue
                r = rest.agg(
                    "batch-commands/", {"aggregator_uuid": agg, "batch_commands": commands}
                )
                assert r.status_code == 200 and r.json()
                tid = json.loads(r.request.content)["transaction_id"]
                batches += 1
                answer = recv_until(
                    ws,
                    lambda m, tid=tid: (
                        m.get("command") == "batch_commands" and m["transaction_id"] == tid
                    ),
                    10,
                )
                answered += 1
                assert all(
                    i["status"] == "ready" for items in answer["responses"].values() for i in items
                )
        return {
            "batches": batches,
            "answered": answered,
            "selected": selected,
            "assets": assets,
            "ticks": seen_ticks,
            "agg": agg,
        }


def _nodes(tree: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for node in tree.values():
        yield node
        yield from _nodes(node.get("children") or {})


def _flat(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, node in tree.items():
        out[key] = node
        out.update(_flat(node.get("children") or {}))
    return out


def test_the_rest_template_flow_runs_to_finish(make_sim: Callable[..., Simulator]) -> None:
    """Paused until the selections are done and the socket is open (§8.1.8), then real ticks."""
    sim = make_sim(
        config=SimConfig(slots=3, tick_interval=0.15, paused=True), autostart_after_s=0.3
    )
    trades: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.update(template_client(sim, "oracle", trades))
        except BaseException as exc:
            errors.append(exc)

    client = threading.Thread(target=run)
    client.start()
    client.join(timeout=60)
    assert not client.is_alive() and not errors, errors
    assert sim.wait(timeout=5)
    assert out["selected"] == set(out["assets"]) == set(sim.grid.asset_uuid)
    assert out["batches"] >= 2 * 10 and out["answered"] == out["batches"]
    assert {f"{p}%" for p in range(10, 100, 10)} <= set(out["ticks"]) and "100%" not in out["ticks"]
    assert trades, "the fleet's own bids and offers should have traded"
    summary = sim.report()["summary"]
    assert summary["on_time"] == out["batches"] and summary["late"] == 0, summary
    assert orjson.loads(orjson.dumps(summary))  # the report stays JSON


# ---------------------------------------------------------------------- the command line


def _sim_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "gridfleet.cli", "sim", *args]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--rest-port", "0"], "--rest-port needs users"),
        (["--rest-port", "0", "--rest-user", "nocolon"], "NAME:PASSWORD"),
        (["--rest-user", "a:b"], "need --rest-port"),
        (["--rest-port", "0", "--rest-users", "/nonexistent/users.yaml"], "cannot read"),
    ],
)
def test_sim_rest_flags_refuse_bad_usage_with_one_line(args: list[str], needle: str) -> None:
    done = subprocess.run(
        _sim_command("--assets", "20", *args), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert needle in done.stderr and "Traceback" not in done.stderr


def test_sim_serves_rest_and_starts_the_slots_once_selected(redis_url: str, tmp_path: Any) -> None:
    """`gridfleet sim --rest-port 0 --paused --rest-autostart`: a REST client logs in, selects,
    opens its socket; the slots start by themselves and the run ends with exit 0."""
    users = tmp_path / "users.yaml"
    users.write_text(f"{USER}: {PASSWORD}\n")
    report = tmp_path / "deadline.json"
    proc = subprocess.Popen(
        _sim_command(
            "--redis-url",
            redis_url,
            "--assets",
            "20",
            "--slots",
            "2",
            "--tick-interval",
            "0.05",
            "--rest-port",
            "0",
            "--rest-users",
            str(users),
            "--paused",
            "--rest-autostart",
            "0.2",
            "--config-id",
            SIM_ID,
            "--report",
            str(report),
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = ""
        while "REST on " not in line:
            line = proc.stderr.readline()
            assert line, "the command ended before serving REST"
        url = re.search(r"REST on (\S+),", line).group(1)  # type: ignore[union-attr]
        ws_url = re.search(r"websockets on (\S+),", line).group(1)  # type: ignore[union-attr]
        assert SIM_ID in line
        with httpx.Client(base_url=url, timeout=10) as http:
            token = http.post(
                "/api-token-auth/", json={"username": USER, "password": PASSWORD}
            ).json()["access"]
            auth = {"Authorization": f"JWT {token}"}
            prefix = f"/external-connection/aggregator-api/{SIM_ID}/"
            agg = http.post(
                prefix + "create-aggregator/", json={"name": "cli"}, headers=auth
            ).json()["uuid"]
            reg = http.request(
                "GET",
                f"/external-connection/configurations/{SIM_ID}/registry",
                content=b"{}",
                headers=auth,
            ).json()
            load = next(n for n in _registry_nodes(reg) if n["type"] == "Load")["uuid"]
            with connect(f"{ws_url}/{SIM_ID}/aggregator/{agg}/", additional_headers=auth) as ws:
                sel = http.post(
                    prefix + "select-aggregator/",
                    json={"aggregator_uuid": agg, "device_uuid": load},
                    headers=auth,
                )
                assert sel.status_code == 200
                finish = recv_until(ws, lambda m: m.get("event") == "finish", timeout=30)
                assert finish["simulation_id"] == SIM_ID
        rest_of_stderr = proc.stderr.read()
        assert proc.wait(timeout=30) == 0, rest_of_stderr
        assert PASSWORD not in line + rest_of_stderr
        assert json.loads(report.read_text())["aggregators"][agg]["name"] == "cli"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _registry_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("children") or []:
        yield from _registry_nodes(child)
