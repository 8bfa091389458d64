"""Every ``GRIDFLEET_*`` environment variable gridfleet reads, in one place.

:func:`get_settings` reads the environment once per process; nothing else in gridfleet reads a
``GRIDFLEET_*`` variable (the fleet file's ``url_env`` names a variable of the user's choice,
read by :func:`gridfleet.config.read_url_env`). URLs and the Flower password are
:class:`~pydantic.SecretStr`: they never appear in a repr, a log line or an error message.
docs/settings.md holds the table of every setting; a test keeps the two in step.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "GRIDFLEET_"

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
"""Where ``worker``, ``flower`` and ``health worker`` look for the broker when none is given."""


ShardInputsMode = Literal["auto", "redis", "shared-memory"]
"""Where the ingress leaves shard inputs (``gridfleet.platform.shard_inputs``)."""


class SettingsError(ValueError):
    """A ``GRIDFLEET_*`` variable holds a value that does not fit; the message names it."""


class Settings(BaseSettings):
    """gridfleet's deployment settings, from ``GRIDFLEET_<FIELD>`` environment variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, case_sensitive=False
    )

    exchange_url: SecretStr | None = Field(
        default=None, description="Redis URL of the exchange (overrides the fleet file's)."
    )
    broker_url: SecretStr | None = Field(
        default=None, description="Redis URL of the Celery broker and shard state."
    )
    config: Path | None = Field(default=None, description="Path of the fleet file (YAML).")
    metrics_port: int = Field(
        default=9100, ge=0, le=65535, description="Prometheus /metrics and /healthz port."
    )
    flower_basic_auth: SecretStr | None = Field(
        default=None, description="user:password for Flower's basic auth."
    )
    task_events: bool = Field(default=False, description="Workers send task events (Flower).")
    worker_concurrency: int | None = Field(
        default=None, ge=1, le=256, description="Worker processes per `gridfleet worker`."
    )
    worker_soft_shutdown_timeout: float = Field(
        default=10.0, ge=0, description="Seconds a worker finishes its shard after SIGTERM."
    )
    shard_inputs: ShardInputsMode = Field(
        default="auto",
        description="Where ingress leaves shard inputs: auto, redis or shared-memory.",
    )
    log_format: Literal["json", "text"] | None = Field(
        default=None, description="Log line format; unset: text on a terminal, JSON otherwise."
    )
    redis_server: Path | None = Field(
        default=None, description="redis-server binary for private Redis servers."
    )
    ledger_url: SecretStr | None = Field(
        default=None,
        description="Database of the ledger (sqlite:///PATH or postgresql://...); unset: the "
        "fleet file's ledger, else sqlite:///runs/ledger.sqlite.",
    )


def secret(value: SecretStr | None) -> str | None:
    """The plain text of a secret setting, for the one place that connects with it."""
    return value.get_secret_value() if value is not None else None


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(p) for p in err["loc"])
        problems.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}")
    return "; ".join(problems)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, read from the environment on first use.

    Raises :class:`SettingsError` naming every variable that does not fit (never its value).
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
