"""A fleet over REST: globs resolved from the exchange's registry (no grid file), and the CLI's
start-up check (wrong credentials: exit 3, the domain named, the password not)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from gridfleet.config import ConfigError, parse_config
from gridfleet.exchange.rest import RestLink
from gridfleet.platform.fleet import connect_fleet, plan_fleet
from tests.cli.helpers import assert_one_clear_error, gridfleet
from tests.exchange.rest_server import RestExchangeServer
from tests.exchange.test_rest_link import PASSWORD, nodes, target_for

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[RestExchangeServer]:
    srv = RestExchangeServer(nodes()).start()
    yield srv
    srv.stop()


def rest_fleet(srv: RestExchangeServer, aggregators: list[dict[str, object]]) -> dict[str, object]:
    rest = {"domain": srv.domain, "websocket": srv.websocket, "simulation_id": srv.sim}
    return {"exchange": {"rest": rest}, "aggregators": aggregators}


def test_globs_resolve_against_the_registry_without_a_grid_file(server: RestExchangeServer) -> None:
    config = parse_config(
        rest_fleet(
            server,
            [
                {"name": "loads", "assets": ["Load *"]},
                {
                    "name": "rest",
                    "assets": ["PV*", "Batt*"],
                    "markets": ["Comm*"],
                    "market_strategy": {
                        "name": "grid_fee_tou",
                        "params": {
                            "path": str(Path(__file__).parents[2] / "examples" / "data" / "ToU.csv")
                        },
                    },
                },
            ],
        )
    )
    plan = plan_fleet(config)
    assert plan.awaits_catalog  # the names come from the exchange
    with RestLink(target_for(server)) as link:
        fleet = connect_fleet(link, plan, timeout=5)
    assert [a.assets for a in plan.aggregators] == [["Load 1", "Load 2"], ["PV 1", "Battery"]]
    assert plan.aggregators[1].markets == ["Community"]
    assert fleet.failures == {}
    assert set(fleet.asset_uuid) == {"Load 1", "Load 2", "PV 1", "Battery"}


def test_a_glob_that_matches_nothing_in_the_registry_is_named(server: RestExchangeServer) -> None:
    plan = plan_fleet(parse_config(rest_fleet(server, [{"name": "n", "assets": ["Wind*"]}])))
    with (
        RestLink(target_for(server)) as link,
        pytest.raises(ConfigError, match="matches no asset in the exchange's registry"),
    ):
        connect_fleet(link, plan, timeout=5)


def test_wrong_credentials_exit_3_naming_the_domain_not_the_password(
    server: RestExchangeServer, tmp_path: Path
) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"exchange: {{rest: {{domain: '{server.domain}', websocket: '{server.websocket}',"
        f" simulation_id: {server.sim}}}}}\n"
        "broker: {url: redis://127.0.0.1:1/0}\n"
        "aggregators: [{name: north, assets: ['*']}]\n"
    )
    env = {"API_CLIENT_USERNAME": "user@example.com", "API_CLIENT_PASSWORD": "not-" + PASSWORD}
    for args in (["run", "-c", str(fleet)], ["run", "--single-process", "-c", str(fleet)]):
        message = assert_one_clear_error(gridfleet(*args, env=env), 3)
        assert server.domain in message and "API_CLIENT_PASSWORD" in message
        assert PASSWORD not in message
    assert server.aggregators == {}  # nothing was created: it stopped at the login
    # and nothing is left running: no ingress, coordinator or worker of this fleet file
    left = [
        proc.info["pid"]
        for proc in psutil.process_iter(["pid", "cmdline"])
        if str(fleet) in " ".join(proc.info["cmdline"] or [])
    ]
    assert left == []


def test_missing_credentials_are_bad_input(server: RestExchangeServer, tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"exchange: {{rest: {{domain: '{server.domain}', websocket: '{server.websocket}',"
        f" simulation_id: {server.sim}, password_env: MY_PASS}}}}\n"
        "aggregators: [{name: north, assets: ['*']}]\n"
    )
    message = assert_one_clear_error(
        gridfleet("run", "--single-process", "-c", str(fleet), env={"API_CLIENT_USERNAME": "u"}), 2
    )
    assert "MY_PASS is not set" in message
