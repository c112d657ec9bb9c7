"""The console's HTML: server-rendered pages that console.js keeps live.

Every value from the database (payloads, errors, tracebacks, task and queue names, unique keys)
goes through `e()` (html.escape, quotes included) and nothing else reaches the page: a payload
holding `<script>` shows as text. console.js likewise writes data with textContent only.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import urlencode

from shoal.console import queries
from shoal.console.filters import STATES, JobFilter
from shoal.console.queries import Page

COUNT_STATES = ("ready", "scheduled", "running", "failed")


def e(value: Any) -> str:
    """Text as HTML: the one way data enters a page."""
    return escape("-" if value is None else str(value), quote=True)


def layout(title: str, body: str, *, page: str, csrf: str, admin: bool, can_admin: bool) -> str:
    if admin:
        who = (f'<span class="badge admin">admin</span><form method="post" action="/logout" class="inline">'
               f'<input type="hidden" name="csrf_token" value="{e(csrf)}"><button>log out</button></form>')
    elif can_admin:
        who = '<a href="/login">log in as admin</a>'
    else:
        who = '<span class="badge">read-only</span>'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)} · Shoal</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{e(csrf)}"><meta name="admin" content="{'1' if admin else ''}">
<link rel="stylesheet" href="/static/console.css"></head>
<body data-page="{e(page)}">
<header><a class="brand" href="/">Shoal</a><nav><a href="/">Queues</a><a href="/jobs">Jobs</a></nav>
<form class="lookup" method="get" action="/jobs"><input name="lookup" placeholder="job id or unique key"
 aria-label="job id or unique key"><button>Find</button></form><div class="who">{who}</div></header>
<div id="flash" role="status"></div>
<main>{body}</main>
<script src="/static/console.js"></script></body></html>"""


def _action(label: str, url: str, confirm: str, *, admin: bool, body: dict[str, Any] | None = None,
            hidden: bool = False) -> str:
    """A button console.js posts from after a confirm(); absent for a non-admin."""
    if not admin:
        return ""
    data = f' data-body="{e(json.dumps(body))}"' if body else ""
    return (f'<button class="action" data-url="{e(url)}" data-confirm="{e(confirm)}"{data}'
            f'{" hidden" if hidden else ""}>{e(label)}</button>')


def overview(rows: list[dict[str, Any]], *, admin: bool) -> str:
    head = "".join(f"<th>{s}</th>" for s in COUNT_STATES)
    body = []
    for q in rows:
        n = q["name"]
        cells = "".join(f'<td class="num" data-q="{e(n)}" data-f="{s}">'
                        f'<a href="/jobs?{e(urlencode(_state_link(n, s)))}">{e(q["counts"][s]["shown"])}</a></td>'
                        for s in COUNT_STATES)
        limits = " · ".join(x for x in (f"concurrency {q['concurrency_limit']}" if q["concurrency_limit"] else "",
                                        f"rate {q['rate_limit']}" if q["rate_limit"] else "") if x) or "none"
        paused = q["paused"]
        body.append(
            f'<tr><td><a href="/jobs?{e(urlencode({"queue": n}))}">{e(n)}</a></td>{cells}'
            f'<td class="num" data-q="{e(n)}" data-f="throughput">{e(_rate(q))}</td>'
            f'<td data-q="{e(n)}" data-f="limits">{e(limits)}</td>'
            f'<td class="num" data-q="{e(n)}" data-f="live_workers">{e(q["live_workers"])}</td>'
            f'<td class="num" data-q="{e(n)}" data-f="oldest_ready_age">{e(age(q["oldest_ready_age"]))}</td>'
            f'<td data-q="{e(n)}" data-f="paused" class="{"paused" if paused else "active"}">'
            f'{"paused" if paused else "active"}</td><td>'
            + _action("Pause", f"/api/queues/{n}/pause", f"Pause queue {n}? Workers will claim nothing until resumed.",
                      admin=admin, hidden=paused)
            + _action("Resume", f"/api/queues/{n}/resume", f"Resume queue {n}?", admin=admin, hidden=not paused)
            + "</td></tr>")
    table = (f'<table id="queues"><thead><tr><th>queue</th>{head}<th>runs/min</th><th>limits</th>'
             f'<th>live workers</th><th>oldest ready</th><th>status</th><th></th></tr></thead>'
             f'<tbody>{"".join(body) or "<tr><td colspan=12>no queues declared</td></tr>"}</tbody></table>')
    return ("<h1>Queues</h1>" + table + '<p class="note">Counts are exact up to 10,000 per state; '
            "~N is the planner's estimate and &gt;N a lower bound past that (as in <code>shoal stats</code>). "
            "Finished/min counts the last minute's finished jobs; * marks a queue that deletes succeeded jobs at once "
            "(keep_succeeded 0), where it counts failed and cancelled ones only. Updated every 2 s.</p>")


def _state_link(queue: str, state: str) -> dict[str, str]:
    return {"queue": queue, "state": "pending" if state in ("ready", "scheduled") else state}


def _rate(q: dict[str, Any]) -> str:
    return f"{q['throughput_per_minute']:.0f}" if q["throughput_reporting"] else "-"


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def jobs(f: JobFilter, page: Page, *, admin: bool, queue_names: list[str]) -> str:
    opts = "".join(f'<option value="{e(s)}"{" selected" if f.state == s else ""}>{e(s)}</option>' for s in STATES)
    qopts = "".join(f'<option{" selected" if f.queue == n else ""}>{e(n)}</option>' for n in queue_names)
    since = f.since.isoformat() if f.since else ""
    until = f.until.isoformat() if f.until else ""
    form = f"""<form class="filters" method="get" action="/jobs">
<label>queue <select name="queue"><option value="">any</option>{qopts}</select></label>
<label>state <select name="state"><option value="">any</option>{opts}</select></label>
<label>task <input name="task" value="{e(f.task or '')}" size="14"></label>
<label>since <input name="since" value="{e(since)}" placeholder="2026-12-06T10:00Z" size="18"></label>
<label>until <input name="until" value="{e(until)}" size="18"></label><button>Filter</button></form>"""
    rows = "".join(job_row(j) for j in page.jobs)
    table = (f'<table id="jobs"><thead><tr><th>id</th><th>queue</th><th>task</th><th>state</th>'
             f'<th>attempts</th><th>created</th><th>finished</th><th>last error</th></tr></thead>'
             f'<tbody>{rows or ""}</tbody></table>')
    empty = "" if page.jobs else '<p class="note">No jobs on this page.</p>'
    more = ""
    if page.next_cursor:
        more = f'<a class="next" href="/jobs?{e(urlencode(f.query(cursor=page.next_cursor)))}">Next page →</a>'
    note = (f'<p class="note">This page stopped after scanning {queries.SCAN_LIMIT:,} jobs without filling up: '
            "more may exist, Next goes on from there. A task or time filter is checked on the rows the index "
            "gives; pick a queue and a state to narrow those.</p>") if page.partial else ""
    bulk = ""
    if f.state == "failed":
        body = {k: v for k, v in f.query().items() if k in ("queue", "task", "since", "until")}
        bulk = _action("Retry all failed jobs matching these filters", "/api/jobs/retry-failed",
                       "Retry every failed job matching these filters (up to 10,000)?", admin=admin, body=body)
    first = "" if not f.cursor else f'<a href="/jobs?{e(urlencode(f.query(cursor=None)))}">← first page</a> '
    return f"<h1>Jobs</h1>{form}{bulk}{table}{empty}{note}<p>{first}{more}</p>"


def job_row(j: dict[str, Any]) -> str:
    return (f'<tr data-id="{e(j["id"])}"><td><a href="/jobs/{e(j["id"])}">{e(j["id"])}</a></td>'
            f'<td>{e(j["queue"])}</td><td>{e(j["task"])}</td><td class="state {e(j["state"])}">{e(j["state"])}</td>'
            f'<td class="num">{e(j["attempts"])}/{e(j["max_attempts"])}</td><td>{e(_short(j["created_at"]))}</td>'
            f'<td>{e(_short(j["finished_at"]))}</td><td class="err">{e(j["last_error"])}</td></tr>')


def _short(iso: str | None) -> str | None:
    return iso[:19].replace("T", " ") if iso else None


FIELDS = ("task", "queue", "state", "attempts", "priority", "run_at", "created_at", "started_at", "finished_at",
          "worker_id", "unique_key", "last_error")


def job(j: dict[str, Any], *, admin: bool) -> str:
    values = {**j, "attempts": f"{j['attempts']}/{j['max_attempts']}"}
    dl = "".join(f'<dt>{e(k)}</dt><dd data-f="{k}">{e(values[k])}</dd>' for k in FIELDS)
    jid = j["id"]
    actions = (_action("Retry", f"/api/jobs/{jid}/retry", f"Retry job {jid} from attempt 0?", admin=admin,
                       hidden=j["state"] not in ("failed", "cancelled"))
               + _action("Cancel", f"/api/jobs/{jid}/cancel", f"Cancel job {jid}?", admin=admin,
                         hidden=j["state"] not in ("pending", "running")))
    return (f'<h1>Job {e(jid)}</h1><div class="actions" data-job="{e(jid)}">{actions}</div>'
            f'<dl class="job">{dl}</dl><h2>Payload</h2>'
            f'<pre class="payload">{e(json.dumps(j["payload"], indent=2, sort_keys=True))}</pre>'
            f'<h2>Failed attempts</h2><div id="errors">{errors(j["errors"])}</div>')


def errors(items: list[dict[str, Any]]) -> str:
    if not items:
        return '<p class="note">No failed attempt recorded.</p>'
    out = []
    for x in items:
        where = f" on {x['worker_id']}" if x["worker_id"] else ""
        out.append(f'<section class="attempt"><h3>Attempt {e(x["attempt"])} at {e(x["at"])}{e(where)}</h3>'
                   f'<p class="err">{e(x["error"])}</p><pre class="traceback">{e(x["traceback"] or "")}</pre>'
                   "</section>")
    return "".join(out)


def login(csrf: str, *, error: str | None, next_url: str) -> str:
    msg = f'<p class="error">{e(error)}</p>' if error else ""
    return (f'<h1>Log in as admin</h1>{msg}<form method="post" action="/login" class="login">'
            f'<input type="hidden" name="csrf_token" value="{e(csrf)}">'
            f'<input type="hidden" name="next" value="{e(next_url)}">'
            f'<label>admin token <input type="password" name="token" autocomplete="current-password" autofocus>'
            f'</label><button>Log in</button></form><p class="note">The token is the value of '
            f"SHOAL_CONSOLE_ADMIN_TOKEN where the console runs.</p>")


def message(title: str, text: str) -> str:
    return f"<h1>{e(title)}</h1><p>{e(text)}</p>"
