"""What a failed attempt leaves behind: its error line and traceback, bounded.

Both go to the database with every failure (shoal.job_errors, sql/006_failure_history.sql), so
a runaway message or a deep recursion must not turn one failure into megabytes per attempt.
The head (where it started) and the tail (where it broke) are what one reads, so the middle
is what goes. shoal.clip() in SQL applies the same bounds to writers that do not.
The presentation helpers at the end are how `shoal jobs list/show` print that history.
"""

from __future__ import annotations

import json
import traceback
from datetime import datetime
from typing import Any

ERROR_LIMIT = 2048
TRACEBACK_LIMIT = 8192
_MARK_ROOM = 40  # the mark's length, at most (as in shoal.clip)


def clip(text: str, limit: int) -> str:
    """`text` in at most `limit` characters: head and tail kept, the middle replaced by
    "… N characters cut …"."""
    if len(text) <= limit:
        return text
    keep = limit - _MARK_ROOM
    head = keep // 2
    return f"{text[:head]} … {len(text) - keep} characters cut … {text[len(text) - (keep - head):]}"


def describe(exc: BaseException) -> tuple[str, str | None]:
    """The error line and the formatted traceback (None when the exception was never raised:
    there are no frames to show), both bounded."""
    error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    tb = None
    if exc.__traceback__ is not None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        tb = clip(tb, TRACEBACK_LIMIT)
    return clip(error, ERROR_LIMIT), tb


# -- presentation (`shoal jobs list` / `shoal jobs show`) --------------------------------------
def summary(error: str | None, width: int = 80) -> str:
    """An error's first line in `width` characters for a table cell, ending in "…" whenever
    something was left out (more characters or more lines), so a cut is never mistaken for
    the whole message."""
    lines = (error or "").replace("\t", " ").splitlines()
    first = lines[0] if lines else ""
    if len(first) > width or len(lines) > 1:
        return first[:width - 1] + "…"
    return first


def job_json(job: dict[str, Any], errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A job and its failed attempts as plain JSON values (payload parsed, times in ISO 8601)."""
    out = {k: _plain(k, v) for k, v in job.items()}
    out["errors"] = [{k: _plain(k, v) for k, v in e.items()} for e in errors]
    return out


def format_job(job: dict[str, Any], errors: list[dict[str, Any]]) -> str:
    """A job for a human: its fields, its payload, then each failed attempt, oldest first."""
    j = job_json(job, errors)
    rows = [("queue", j["queue"]), ("task", j["task"]), ("state", j["state"]), ("priority", j["priority"]),
            ("attempts", f"{j['attempts']}/{j['max_attempts']}"), ("run_at", j["run_at"]),
            ("created", j["created_at"]), ("started", j["started_at"]), ("finished", j["finished_at"]),
            ("worker", j["worker_id"]), ("unique key", j["unique_key"])]
    lines = [f"job {j['id']}"] + [f"  {name + ':':<12}{'-' if value is None else value}" for name, value in rows]
    lines += ["payload:", _indent(json.dumps(j["payload"], indent=2, sort_keys=True))]
    if not errors:
        lines.append("errors: none" if j["last_error"] is None else f"last error: {j['last_error']}")
    for e in j["errors"]:
        lines.append(f"error of attempt {e['attempt']} at {e['at']}"
                     + (f" on {e['worker_id']}" if e["worker_id"] else "") + ":")
        tb = (e["traceback"] or "").rstrip("\n")
        if not tb.endswith(e["error"]):  # a traceback ends with its error line: not twice
            lines.append(_indent(e["error"]))
        if tb:
            lines.append(_indent(tb))
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def _plain(key: str, value: Any) -> Any:
    if key == "payload" and isinstance(value, str):  # jsonb arrives as text without a codec
        return json.loads(value)
    return value.isoformat() if isinstance(value, datetime) else value
