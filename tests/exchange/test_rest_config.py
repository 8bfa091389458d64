"""The fleet file's REST forms: ``exchange.rest``, ``exchange.simulation_config``, credentials
from the environment only, and every missing piece named."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gridfleet.config import ConfigError, load_config, parse_config
from gridfleet.exchange.link import RestTarget

AGGS = [{"name": "north", "assets": ["*"]}]
REST = {
    "domain": "https://gsy.example",
    "websocket": "wss://gsy.example/external-ws",
    "simulation_id": "sim-9",
}


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_CLIENT_USERNAME", "me@example.com")
    monkeypatch.setenv("API_CLIENT_PASSWORD", "pa55-word")


def sim_config(tmp_path: Path, **fields: object) -> Path:
    data = {
        "username": "me@example.com",
        "name": "collab",
        "uuid": "from-file",
        "domain_name": "https://file.example",
        "web_socket_domain_name": "wss://file.example/external-ws",
        "global_settings": {},
        "registry": {"name": "Grid", "type": "Area", "children": []},
    }
    data.update(fields)
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "collab.json"
    path.write_text(json.dumps(data))
    return path


def test_the_rest_form_gives_a_rest_target_with_env_credentials() -> None:
    cfg = parse_config({"exchange": {"rest": REST}, "aggregators": AGGS})
    target = cfg.exchange.target()
    assert isinstance(target, RestTarget)
    assert (target.domain, target.websocket, target.simulation_id) == (
        "https://gsy.example",
        "wss://gsy.example/external-ws",
        "sim-9",
    )
    assert target.username.get_secret_value() == "me@example.com"
    assert target.password.get_secret_value() == "pa55-word"
    assert "pa55-word" not in repr(target) and "pa55-word" not in repr(cfg)


def test_the_credential_variables_can_be_renamed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORTH_USER", "north@example.com")
    monkeypatch.setenv("NORTH_PASS", "other")
    rest = {**REST, "username_env": "NORTH_USER", "password_env": "NORTH_PASS"}
    target = parse_config({"exchange": {"rest": rest}, "aggregators": AGGS}).exchange.target()
    assert isinstance(target, RestTarget)
    assert target.password.get_secret_value() == "other"


def test_a_missing_credential_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("API_CLIENT_PASSWORD")
    cfg = parse_config({"exchange": {"rest": REST}, "aggregators": AGGS})
    with pytest.raises(ConfigError, match="API_CLIENT_PASSWORD is not set"):
        cfg.exchange.target()


@pytest.mark.parametrize("key", ["password", "username"])
def test_credentials_in_the_file_are_refused_without_echoing_them(key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"exchange": {"rest": {**REST, key: "leaked-value"}}, "aggregators": AGGS})
    assert "exchange.rest" in str(err.value) and "environment" in str(err.value)
    assert "leaked-value" not in str(err.value)


def test_urls_need_their_scheme() -> None:
    with pytest.raises(ConfigError, match=r"exchange\.rest\.domain.*https://"):
        parse_config({"exchange": {"rest": {**REST, "domain": "gsy.example"}}, "aggregators": AGGS})
    with pytest.raises(ConfigError, match=r"exchange\.rest\.websocket.*wss://"):
        parse_config(
            {"exchange": {"rest": {**REST, "websocket": "https://x"}}, "aggregators": AGGS}
        )


def test_redis_and_rest_forms_do_not_mix() -> None:
    with pytest.raises(ConfigError, match="not both"):
        parse_config({"exchange": {"url": "redis://h:6379/0", "rest": REST}, "aggregators": AGGS})


def test_the_simulation_config_file_fills_the_target(tmp_path: Path) -> None:
    path = sim_config(tmp_path)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        f"exchange: {{simulation_config: {path.name}}}\naggregators: [{{name: n, assets: ['*']}}]\n"
    )
    target = load_config(fleet).exchange.target()  # relative to the fleet file
    assert isinstance(target, RestTarget)
    assert (target.domain, target.websocket, target.simulation_id) == (
        "https://file.example",
        "wss://file.example/external-ws",
        "from-file",
    )


def test_explicit_rest_keys_win_over_the_file(tmp_path: Path) -> None:
    path = sim_config(tmp_path)
    cfg = parse_config(
        {
            "exchange": {"simulation_config": str(path), "rest": {"simulation_id": "mine"}},
            "aggregators": AGGS,
        }
    )
    target = cfg.exchange.target()
    assert isinstance(target, RestTarget)
    assert (target.domain, target.simulation_id) == ("https://file.example", "mine")


def test_a_field_missing_from_the_file_is_named(tmp_path: Path) -> None:
    path = sim_config(tmp_path, web_socket_domain_name=None)
    cfg = parse_config({"exchange": {"simulation_config": str(path)}, "aggregators": AGGS})
    with pytest.raises(ConfigError) as err:
        cfg.exchange.target()
    assert "web_socket_domain_name" in str(err.value) and str(path) in str(err.value)


def test_a_scheme_less_domain_in_the_file_is_named(tmp_path: Path) -> None:
    path = sim_config(tmp_path, domain_name="localhost")  # as the SDK's own fixture has it
    cfg = parse_config({"exchange": {"simulation_config": str(path)}, "aggregators": AGGS})
    with pytest.raises(ConfigError, match=r"domain_name.*https://"):
        cfg.exchange.target()


def test_an_unreadable_simulation_config_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "collab.json"
    bad.write_text("{not json")
    cfg = parse_config({"exchange": {"simulation_config": str(bad)}, "aggregators": AGGS})
    with pytest.raises(ConfigError, match="not JSON"):
        cfg.exchange.target()
    cfg = parse_config(
        {"exchange": {"simulation_config": str(tmp_path / "nope.json")}, "aggregators": AGGS}
    )
    with pytest.raises(ConfigError, match="cannot read"):
        cfg.exchange.target()


def test_an_explicit_redis_url_wins_over_the_rest_form() -> None:
    cfg = parse_config({"exchange": {"rest": REST}, "aggregators": AGGS})
    assert cfg.exchange.target("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_the_redis_forms_are_unchanged() -> None:
    cfg = parse_config({"exchange": {"url": "redis://h:6379/0"}, "aggregators": AGGS})
    assert cfg.exchange.target() == "redis://h:6379/0" == cfg.exchange.resolve()
    assert not cfg.exchange.is_rest


def test_resolving_logs_no_secret(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        target = parse_config({"exchange": {"rest": REST}, "aggregators": AGGS}).exchange.target()
        logging.getLogger("test").info("target %s", target)
    assert "pa55-word" not in caplog.text and "me@example.com" not in caplog.text
