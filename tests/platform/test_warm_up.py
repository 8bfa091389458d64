"""What the first round with trees would open, opened before it: the ingress's task producer and
the coordinator's publishing connection (real Redis servers)."""

from __future__ import annotations

import time

import redis

from gridfleet.exchange.redis_pubsub import RedisPubSubLink
from gridfleet.platform.dispatch import QUEUE, ShardDispatcher


def _clients(url: str) -> int:
    r = redis.Redis.from_url(url)
    try:
        return len(r.client_list()) - 1  # not this one
    finally:
        r.close()


def test_dispatcher_warm_up_declares_the_queue_and_keeps_its_connection(redis_url: str) -> None:
    """After warm_up the queue's binding is declared (the first send declared it before) and the
    producer's connection stays open for that send, which then opens nothing new."""
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


def test_link_warm_up_opens_the_publishing_connection(redis_url: str) -> None:
    """The coordinator's first batches go out on a connection opened before the round."""
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
