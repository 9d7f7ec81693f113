"""Log records with structured fields, and a JSON format for production.

The package's records carry ``request_id``, ``task_id``, ``attempt`` and
``next_delay_s`` as ``extra`` fields where they apply: one line per poll at DEBUG,
one per outcome at INFO. ``CLIPIA_LOG_FORMAT=json`` switches the
worker's handlers to one JSON object per line, with those fields at the top
level, for log pipelines. Nothing logged here is ever given the API key.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["FIELDS", "JsonFormatter", "install_json_logging"]

#: The structured fields every record of this package carries.
FIELDS = ("request_id", "task_id", "attempt", "next_delay_s")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, process, the fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        # Celery's task logger puts these on its records.
        for name in ("task_name",):
            value = getattr(record, name, None)
            if value is not None and value != "???":
                out[name] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def install_json_logging(logger: logging.Logger) -> None:
    """Give every handler of ``logger`` (and the root) the JSON formatter."""
    formatter = JsonFormatter()
    for target in {logger, logging.getLogger()}:
        for handler in target.handlers:
            handler.setFormatter(formatter)

