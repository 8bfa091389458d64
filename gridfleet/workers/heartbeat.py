"""The worker's liveness heartbeat: a Redis key with a TTL, refreshed by a thread.

Kept free of Celery imports so that ``gridfleet health worker`` (a Kubernetes probe that runs
every few seconds) starts fast.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import redis

HEARTBEAT_EVERY_S = 5
HEARTBEAT_TTL_S = 30


def this_host() -> str:
    """The name a worker's heartbeat carries: ``$HOSTNAME`` (the pod's name in Kubernetes),
    else the machine's host name."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


def heartbeat_key(namespace: str, hostname: str) -> str:
    return f"{namespace}:alive:worker:{hostname}"


class Heartbeat(threading.Thread):
    def __init__(self, url: str, key: str) -> None:
        super().__init__(daemon=True, name="gridfleet-heartbeat")
        self.url = url
        self.key = key
        self.halt = threading.Event()

    def run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
        while not self.halt.is_set():
            # The broker may be away; liveness says so when the key expires.
            with contextlib.suppress(redis.RedisError):
                client.set(self.key, "1", ex=HEARTBEAT_TTL_S)
            self.halt.wait(HEARTBEAT_EVERY_S)
        with contextlib.suppress(redis.RedisError):
            client.delete(self.key)
