"""Secrets stay secret: a password in a Redis URL never reaches the terminal or a file.

The real ``gridfleet sim`` runs on a password-protected Redis with the password in
``--redis-url``; neither its output nor any file it writes may contain it.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gridfleet.runtime.redact import redact, redact_argv
from gridfleet.runtime.redis_server import RedisServer, free_port
from tests.cli.helpers import assert_one_clear_error, gridfleet

PASSWORD = "s3cret-Pw-0417"


def _files_with(tmp: Path, secret: str) -> list[Path]:
    return [p for p in tmp.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.mark.integration
def test_sim_with_a_password_url_redacts_it_everywhere(tmp_path: Path) -> None:
    with RedisServer(password=PASSWORD) as server:
        url = server.url
        assert PASSWORD in url
        report = tmp_path / "report.json"
        fleet = tmp_path / "fleet.json"
        out = gridfleet(
            "sim",
            "--redis-url",
            url,
            "--assets",
            "20",
            "--aggregators",
            "2",
            "--fleet-out",
            str(fleet),
            "--slots",
            "1",
            "--tick-interval",
            "0.02",
            "--report",
            str(report),
            cwd=tmp_path,
            timeout=60,
        )
    assert out.code == 0, out.stderr
    assert PASSWORD not in out.stdout and PASSWORD not in out.stderr
    assert "redis://:***@127.0.0.1" in out.stderr  # the URL is still named, without its secret
    assert "done:" in out.stderr
    assert _files_with(tmp_path, PASSWORD) == []
    meta = orjson.loads(report.read_bytes())["meta"]
    assert "--redis-url redis://:***@127.0.0.1" in meta["command"]


@pytest.mark.integration
def test_sim_on_an_unreachable_password_url_redacts_it(tmp_path: Path) -> None:
    url = f"redis://user:{PASSWORD}@127.0.0.1:{free_port()}/0"
    out = gridfleet("sim", "--redis-url", url, "--assets", "20", cwd=tmp_path)
    message = assert_one_clear_error(out, 3)
    assert PASSWORD not in out.stdout + out.stderr
    assert "redis://user:***@127.0.0.1" in message
    assert _files_with(tmp_path, PASSWORD) == []


def test_redact_hides_passwords_in_any_text() -> None:
    assert redact("redis://:pw@h:1/0") == "redis://:***@h:1/0"
    assert (
        redact("rediss://u:p%40ss@h/0?ssl_ca_certs=/c.pem")
        == "rediss://u:***@h/0?ssl_ca_certs=/c.pem"
    )
    assert redact("redis://h:6379/0") == "redis://h:6379/0"  # a port is not a password
    assert redact("redis://h/0?password=pw&db=1") == "redis://h/0?password=***&db=1"
    assert (
        redact_argv(["gridfleet", "sim", "--redis-url", "redis://:pw@h/0"])
        == "gridfleet sim --redis-url redis://:***@h/0"
    )
    assert redact("cannot reach redis://a:b@x and rediss://:c@y") == (
        "cannot reach redis://a:***@x and rediss://:***@y"
    )
