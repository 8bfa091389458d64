"""What the first round with trees would open, opened before it: the ingress's task producer and
the coordinator's publishing connection (real Redis servers)."""

from __future__ import annotations

import time

import redis

from gridfleet.exchange.redis_pubsub import RedisPubSubLink
from gridfleet.platform.dispatch import QUEUE, ShardDispatcher
from gridfleet.runtime.redis_server import RedisServer


def _clients(url: str) -> int:
    r = redis.Redis.from_url(url)
    try:
        return len(r.client_list()) - 1  # not this one
    finally:
        r.close()


def test_dispatcher_warm_up_declares_the_queue_and_keeps_its_connection(
    private_redis: RedisServer,
) -> None:
    """After warm_up the queue's binding is declared (the first send declared it before) and the
    producer's connection stays open for that send, which then opens nothing new. A Redis of
    its own: kombu shares producers (and what they declared) between apps of one broker URL in
    a process, so on a flushed shared server the binding would not be declared again."""
    redis_url = private_redis.url
    dispatcher = ShardDispatcher(redis_url)
    r = redis.Redis.from_url(redis_url)
    try:
        dispatcher.warm_up()
        assert r.exists(f"_kombu.binding.{QUEUE}")
        opened = _clients(redis_url)
        assert opened >= 1
        dispatcher.send("gf", "round-1", 2, time.time() + 30)
        assert r.llen(QUEUE) == 2
        assert _clients(redis_url) == opened
    finally:
        r.close()
        dispatcher.close()


def test_link_warm_up_opens_the_publishing_connection(private_redis: RedisServer) -> None:
    """The coordinator's first batches go out on a connection opened before the round (a Redis
    of its own: no other test's connection comes or goes while the clients are counted)."""
    redis_url = private_redis.url
    link = RedisPubSubLink(redis_url)
    try:
        before = _clients(redis_url)
        link.warm_up()
        after = _clients(redis_url)
        assert after == before + 1
        link.publish_batches([b'{"type":"BATCHED"}'])
        assert _clients(redis_url) == after
    finally:
        link.close()
