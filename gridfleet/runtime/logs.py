"""Logging set-up: structured JSON lines (containers) or plain text (a terminal).

Round-level log records carry ``slot``, ``tick`` and ``aggregator`` as extra fields; the JSON
formatter puts every extra field into the line.
"""

from __future__ import annotations

import logging
import sys

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def setup_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Log to stderr as ``fmt`` (``json`` or ``text``); by default ``GRIDFLEET_LOG_FORMAT``, else
    text on a terminal and JSON lines otherwise."""
    from gridfleet.settings import get_settings

    fmt = fmt or get_settings().log_format or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
