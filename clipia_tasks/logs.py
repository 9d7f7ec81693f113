"""Log records with structured fields, and a JSON format for production.

The package's records carry ``request_id``, ``task_id``, ``attempt`` and
``next_delay_s`` as ``extra`` fields where they apply: one line per poll at DEBUG,
one per outcome at INFO. ``CLIPIA_LOG_FORMAT=json`` switches the
worker's handlers to one JSON object per line, with those fields at the top
level, for log pipelines. Nothing logged here is ever given the API key.

httpx logs every request at INFO (``HTTP Request: GET …/status "HTTP/1.1 200 OK"``),
which would be one more line per poll: :func:`quiet_http_client_logs` sets its
loggers to WARNING in workers that log at INFO or above (docs/monitoring.md).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

__all__ = ["FIELDS", "HTTP_CLIENT_LOGGERS", "JsonFormatter", "install_json_logging",
           "quiet_http_client_logs"]

#: The structured fields every record of this package carries.
FIELDS = ("request_id", "task_id", "attempt", "next_delay_s")
#: The HTTP client's loggers: httpx logs each request at INFO, httpcore its steps at DEBUG.
HTTP_CLIENT_LOGGERS = ("httpx", "httpcore")


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



def quiet_http_client_logs(loglevel: int) -> None:
    """Set httpx's and httpcore's loggers to WARNING unless ``loglevel`` is DEBUG.

    A logger you gave a level yourself (before the worker set up logging) keeps it.
    At DEBUG they are left alone: every HTTP request and connection step is logged.
    """
    if loglevel <= logging.DEBUG:
        return
    for name in HTTP_CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
