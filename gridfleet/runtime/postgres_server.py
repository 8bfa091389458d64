"""Start and stop a private PostgreSQL server on a free loopback port (tests, benchmarks).

Uses the server binaries of Debian's ``postgresql`` package (``make test`` installs it): a
fresh cluster in a temporary folder, trust authentication on 127.0.0.1 only, no fsync (nothing
in it outlives the process). PostgreSQL refuses to run as root, so as root the cluster belongs
to the ``postgres`` user the package creates and the server runs as that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from gridfleet.runtime.redis_server import free_port


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries (``initdb``, ``pg_ctl``) on this machine."""


def find_bin_dir() -> Path:
    """The folder of ``initdb`` and ``pg_ctl``: PATH first, then Debian's versioned folders."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    raise PostgresNotFound(
        "no PostgreSQL server binaries: apt-get install postgresql (make test does it)"
    )


class PostgresServer:
    """A throwaway cluster; :attr:`url` is ``postgresql://gridfleet@127.0.0.1:<port>/postgres``."""

    USER = "gridfleet"

    def __init__(self) -> None:
        self.bin = find_bin_dir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="gridfleet-pg-"))
        self.data = self.dir / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgresNotFound("running as root needs the `postgres` user") from exc
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/postgres"

    def new_database(self, prefix: str = "db") -> str:
        """A new, empty database on this server; its URL."""
        import uuid

        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self._as, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def start(self) -> PostgresServer:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.USER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        )
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.dir / "server.log"),
            "-w",
            "start",
        )
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
