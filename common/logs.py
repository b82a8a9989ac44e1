"""`--log-format json`: one JSON object per line for log shippers (Loki, Elasticsearch, Cloud Logging...),
with the request's id, model and worker instance when the line is written while serving a request."""
from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

from . import tracing

# what a record may carry as `extra=` and is copied into the object
EXTRA_FIELDS = ("status", "duration")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        trace = tracing.current()
        if trace is not None:  # written while serving a request
            line["request_id"] = trace.request_id
            line["trace_id"] = trace.trace_id
            if trace.model is not None:
                line["model"] = trace.model
            if trace.instance is not None:
                line["instance"] = trace.instance
        for name in EXTRA_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()
