"""The Celery side of gridfleet: the app, its settings and the shard task."""
