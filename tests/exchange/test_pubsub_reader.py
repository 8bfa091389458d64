"""One thread reads many pub/sub connections; a lost connection comes back on its own."""

from __future__ import annotations

import queue
import threading
import time

import pytest
import redis

from gridfleet.exchange.pubsub_reader import ReaderLoop, Subscriber

pytestmark = pytest.mark.integration


def start_loop(url: str, n: int, got: queue.SimpleQueue, reconnected: list[str]) -> ReaderLoop:
    client = redis.Redis.from_url(url)
    subs = [
        Subscriber(
            client,
            lambda ch, raw, t: got.put((ch, raw)),
            name=f"sub-{i}",
            on_reconnect=reconnected.append,
        )
        for i in range(n)
    ]
    for i, sub in enumerate(subs):
        sub.subscribe(f"ch-{2 * i}", f"ch-{2 * i + 1}")
    loop = ReaderLoop(subs, name="test-loop")
    loop.start()
    loop.wait_ready()
    return loop


def receive(got: queue.SimpleQueue, n: int, timeout: float = 10) -> list[tuple[str, bytes]]:
    end = time.monotonic() + timeout
    out: list[tuple[str, bytes]] = []
    while len(out) < n:
        out.append(got.get(timeout=max(0.01, end - time.monotonic())))
    return out


def test_one_thread_reads_every_connection_in_order(redis_url: str) -> None:
    got: queue.SimpleQueue = queue.SimpleQueue()
    threads_before = threading.active_count()
    loop = start_loop(redis_url, 8, got, [])
    try:
        assert threading.active_count() == threads_before + 1
        pub = redis.Redis.from_url(redis_url)
        pipe = pub.pipeline(transaction=False)
        for k in range(20):
            for ch in range(16):  # 40 KB each: several socket reads per message
                pipe.publish(f"ch-{ch}", f"{k:03d}".encode() + b"x" * 40_000)
        pipe.execute()
        messages = receive(got, 320)
        for ch in range(16):
            seq = [raw[:3] for c, raw in messages if c == f"ch-{ch}"]
            assert seq == [f"{k:03d}".encode() for k in range(20)], ch
        assert got.empty()
    finally:
        loop.stop()
        loop.join(2)


def test_killed_connections_are_opened_again_and_read_on(redis_url: str) -> None:
    got: queue.SimpleQueue = queue.SimpleQueue()
    reconnected: list[str] = []
    loop = start_loop(redis_url, 4, got, reconnected)
    try:
        admin = redis.Redis.from_url(redis_url)
        assert admin.client_kill_filter(_type="pubsub") == 4
        deadline = time.monotonic() + 10
        while len(reconnected) < 4:
            assert time.monotonic() < deadline, reconnected
            time.sleep(0.02)
        loop.wait_ready()
        assert sorted(reconnected) == [f"sub-{i}" for i in range(4)]
        assert [s.reconnects for s in loop.subscribers] == [1, 1, 1, 1]
        for ch in range(8):
            admin.publish(f"ch-{ch}", b"after")
        assert sorted(c for c, _ in receive(got, 8)) == sorted(f"ch-{ch}" for ch in range(8))
    finally:
        loop.stop()
        loop.join(2)
    assert not loop.is_alive()
