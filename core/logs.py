"""Structured logs: one JSON object per line, with the `extra=` fields as keys.

A line written inside a span (a job's, under the `otel` extra: docs/tracing.md) carries its
trace_id and span_id, so that logs and traces join.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from shoal import tracing

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        ids = tracing.log_ids()
        if ids is not None:
            out.setdefault("trace_id", ids[0])
            out.setdefault("span_id", ids[1])
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


class TextFormatter(logging.Formatter):
    """For humans at a terminal: the message, then key=value pairs."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_"))
        line = f"{datetime.now().strftime('%H:%M:%S')} {record.levelname.lower():7} {record.getMessage()}"
        return f"{line}  {extras}" if extras else line


def setup(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("asyncio", "kubernetes", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
