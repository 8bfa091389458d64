"""Sending shard tasks to the workers by name, without importing the worker code.

The platform sends; ``gridfleet.workers`` defines the task under the same name and queue. Task
messages carry keys only (namespace, round id, shard number); the payloads stay in Redis.
"""

from __future__ import annotations

from celery import Celery

TASK_NAME = "gridfleet.evaluate_shard"
QUEUE = "gridfleet.shards"


class ShardDispatcher:
    def __init__(self, broker_url: str) -> None:
        self.app = Celery("gridfleet-producer", broker=broker_url, set_as_current=False)
        self.app.conf.update(
            task_serializer="msgpack",
            accept_content=["msgpack"],
            task_default_queue=QUEUE,
            broker_connection_retry_on_startup=True,
            broker_transport_options={"visibility_timeout": 30},
        )

    def warm_up(self) -> None:
        """Open the broker connection now rather than on the first round."""
        with self.app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=3)

    def send(self, namespace: str, round_id: str, shards: int | range, expires_at: float) -> None:
        """One task per shard (``shards``: how many, or which numbers); a task still queued at
        ``expires_at`` (wall clock) is dropped."""
        from datetime import UTC, datetime

        expires = datetime.fromtimestamp(expires_at, tz=UTC)
        numbers = range(shards) if isinstance(shards, int) else shards
        with self.app.producer_or_acquire() as producer:
            for shard in numbers:
                self.app.send_task(
                    TASK_NAME,
                    args=(namespace, round_id, shard),
                    queue=QUEUE,
                    expires=expires,
                    producer=producer,
                    ignore_result=True,
                )

    def queue_depth(self) -> int:
        with self.app.connection_for_write() as conn:
            return int(conn.default_channel.client.llen(QUEUE))

    def close(self) -> None:
        self.app.close()
