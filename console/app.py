"""The console's routes: HTML pages, the JSON API they poll, and the admin actions.

Reads are open (put the console behind the cluster's auth proxy, docs/console.md); actions need
the admin token and the CSRF token (console/auth.py). Every response carries
`Server-Timing: db;dur=<ms>, total;dur=<ms>`. Bad input is a 400 naming the field.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from shoal import names
from shoal.console import actions, filters, pages, queries, timing
from shoal.console.auth import ADMIN_COOKIE, CSRF_COOKIE, Auth, csrf_ok, csrf_token, new_csrf, set_cookie
from shoal.errors import UnknownQueueError, ValidationError

POOL: web.AppKey[asyncpg.Pool] = web.AppKey("pool", asyncpg.Pool)
AUTH: web.AppKey[Auth] = web.AppKey("auth", Auth)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: int, message: str, field: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    return web.json_response(body, status=status)


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Server-Timing on every response, errors as JSON for the API, the CSRF cookie when new."""
    started = time.perf_counter()
    tally = timing.start()
    new_csrf(reset=True)
    api = request.path.startswith("/api/")
    try:
        response = await handler(request)
    except ValidationError as exc:
        response = _json_error(400, str(exc), exc.field) if api else _page(request, "Bad request", str(exc), 400)
    except UnknownQueueError as exc:
        response = _json_error(404, str(exc), "queue") if api else _page(request, "Not found", str(exc), 404)
    except web.HTTPException as exc:
        if exc.status < 400 or api or exc.content_type == "application/json":
            exc.headers["Server-Timing"] = timing.header(tally[0], time.perf_counter() - started)
            raise
        response = _page(request, exc.reason, exc.text or exc.reason, exc.status)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        text = f"database: {type(exc).__name__}: {exc}"
        response = _json_error(503, text) if api else _page(request, "Database unavailable", text, 503)
    made = new_csrf()
    if made:
        set_cookie(response, request, CSRF_COOKIE, made)
    response.headers["Server-Timing"] = timing.header(tally[0], time.perf_counter() - started)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    return response


def _page(request: web.Request, title: str, body_html: str, status: int = 200, *, page: str = "",
          raw: bool = False) -> web.Response:
    auth = request.app[AUTH]
    body = body_html if raw else pages.message(title, body_html)
    html = pages.layout(title, body, page=page, csrf=csrf_token(request), admin=auth.is_admin(request),
                        can_admin=auth.enabled)
    return web.Response(text=html, status=status, content_type="text/html")


def _job_id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not text.isdigit() or int(text) >= 2**63:
        raise ValidationError("id", f"{text!r} is not a job id (a positive integer)")
    return int(text)


def _queue(request: web.Request) -> str:
    return names.queue_name(request.match_info["name"], "name")


# -- pages -------------------------------------------------------------------------------------
async def overview_page(request: web.Request) -> web.Response:
    rows = await queries.overview(request.app[POOL])
    admin = request.app[AUTH].is_admin(request)
    return _page(request, "Queues", pages.overview(rows, admin=admin), page="overview", raw=True)


async def jobs_page(request: web.Request) -> web.Response:
    pool = request.app[POOL]
    lookup = request.query.get("lookup", "").strip()
    if lookup:
        found = await queries.lookup(pool, lookup)
        if len(found) == 1:
            raise web.HTTPFound(f"/jobs/{found[0]['id']}")
        if not found:
            return _page(request, "Not found", f"No job has the id or live unique key {lookup!r}.", 404)
        links = "".join(f'<li><a href="/jobs/{x["id"]}">job {x["id"]}</a> in {pages.e(x["queue"])}</li>'
                        for x in found)
        return _page(request, "Jobs found", f"<h1>Jobs found</h1><ul>{links}</ul>", raw=True)
    f = filters.parse(request.query)
    page = await queries.list_jobs(pool, f)
    with timing.db():
        queue_names = [r["name"] for r in await pool.fetch(queries.sql("queue_names"))]
    body = pages.jobs(f, page, admin=request.app[AUTH].is_admin(request), queue_names=queue_names)
    return _page(request, "Jobs", body, page="jobs", raw=True)


async def job_page(request: web.Request) -> web.Response:
    job = await queries.job(request.app[POOL], _job_id(request))
    if job is None:
        raise web.HTTPNotFound(text="No such job: it never existed, or retention deleted it.")
    body = pages.job(job, admin=request.app[AUTH].is_admin(request))
    return _page(request, f"Job {job['id']}", body, page="job", raw=True)


async def login_page(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    if not auth.enabled:
        return _page(request, "Read-only", "This console is read-only: SHOAL_CONSOLE_ADMIN_TOKEN is not set "
                     "where it runs.", 403)
    error = None
    next_url = request.query.get("next", "/")
    if request.method == "POST":
        form = await request.post()
        next_url = str(form.get("next") or "/")
        if not csrf_ok(request, str(form.get("csrf_token") or "")):
            error = "The form expired (missing CSRF cookie): try again."
        elif not auth.token_matches(str(form.get("token") or "")):
            error = "Wrong token."
        else:
            response = web.HTTPFound(next_url if next_url.startswith("/") and not next_url.startswith("//") else "/")
            auth.login(response, request)
            raise response
    body = pages.login(csrf_token(request), error=error, next_url=next_url)
    return _page(request, "Log in", body, 403 if error else 200, raw=True)


async def logout(request: web.Request) -> web.Response:
    form = await request.post()
    if not csrf_ok(request, str(form.get("csrf_token") or "")):
        raise web.HTTPForbidden(text="missing or wrong CSRF token")
    response = web.HTTPFound("/")
    response.del_cookie(ADMIN_COOKIE, path="/")
    raise response


async def healthz(request: web.Request) -> web.Response:
    try:
        await queries.ping(request.app[POOL])
    except (OSError, asyncpg.PostgresError, TimeoutError, asyncpg.InterfaceError) as exc:
        return web.Response(text=f"database: {type(exc).__name__}", status=503)
    return web.Response(text="ok")


# -- JSON --------------------------------------------------------------------------------------
async def api_queues(request: web.Request) -> web.Response:
    return web.json_response({"queues": await queries.overview(request.app[POOL])})


async def api_jobs(request: web.Request) -> web.Response:
    f = filters.parse(request.query)
    page = await queries.list_jobs(request.app[POOL], f)
    return web.json_response({"jobs": page.jobs, "next_cursor": page.next_cursor, "partial": page.partial,
                              "ordering": page.kind}, dumps=_dumps)


async def api_job(request: web.Request) -> web.Response:
    job = await queries.job(request.app[POOL], _job_id(request))
    if job is None:
        return _json_error(404, "no such job: it never existed, or retention deleted it", "id")
    return web.json_response(job, dumps=_dumps)


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise ValidationError("body", "not JSON: send a JSON object") from None
    if not isinstance(data, dict):
        raise ValidationError("body", "must be a JSON object")
    return data


async def api_retry(request: web.Request) -> web.Response:
    request.app[AUTH].require(request)
    job_id = _job_id(request)
    if not await actions.retry(request.app[POOL], job_id):
        return _json_error(409, f"job {job_id} is not failed or cancelled (or does not exist): nothing to retry")
    return web.json_response({"id": job_id, "state": "pending"})


async def api_cancel(request: web.Request) -> web.Response:
    request.app[AUTH].require(request)
    job_id = _job_id(request)
    state = await actions.cancel(request.app[POOL], job_id)
    if state is None:
        return _json_error(409, f"job {job_id} is not pending or running (or does not exist): nothing to cancel")
    return web.json_response({"id": job_id, "state": state})


async def api_pause(request: web.Request) -> web.Response:
    request.app[AUTH].require(request)
    name = _queue(request)
    paused = request.path.endswith("/pause")
    await actions.set_paused(request.app[POOL], name, paused)
    return web.json_response({"queue": name, "paused": paused})


async def api_retry_failed(request: web.Request) -> web.Response:
    request.app[AUTH].require(request)
    body = await _body(request)
    f = filters.parse({k: v for k, v in body.items() if k in ("queue", "task", "since", "until")})
    count, more = await actions.retry_failed(request.app[POOL], f)
    return web.json_response({"count": count, "more": more})


def static_dir() -> Path:
    return Path(str(resources.files("shoal.console").joinpath("static")))


def make_app(database_url: str, auth: Auth, *, pool_size: int = 10) -> web.Application:
    """The console as an aiohttp application; its pool opens with the app and closes with it."""
    app = web.Application(middlewares=[middleware], client_max_size=64 * 1024)
    app[AUTH] = auth

    async def pool_ctx(app: web.Application) -> Any:
        app[POOL] = await asyncpg.create_pool(database_url, min_size=1, max_size=pool_size,
                                              command_timeout=30, server_settings={
                                                  "application_name": "shoal-console",
                                                  "statement_timeout": "10000",
                                                  # Plan each page for its own values (cursor, filters):
                                                  # a cached generic plan cannot prune `$n IS NULL OR`.
                                                  "plan_cache_mode": "force_custom_plan"})
        yield
        await app[POOL].close()

    app.cleanup_ctx.append(pool_ctx)
    r = app.router
    r.add_get("/", overview_page)
    r.add_get("/jobs", jobs_page)
    r.add_get("/jobs/{id}", job_page)
    r.add_route("*", "/login", login_page)
    r.add_post("/logout", logout)
    r.add_get("/healthz", healthz)
    r.add_get("/api/queues", api_queues)
    r.add_get("/api/jobs", api_jobs)
    r.add_post("/api/jobs/retry-failed", api_retry_failed)
    r.add_get("/api/jobs/{id}", api_job)
    r.add_post("/api/jobs/{id}/retry", api_retry)
    r.add_post("/api/jobs/{id}/cancel", api_cancel)
    r.add_post("/api/queues/{name}/pause", api_pause)
    r.add_post("/api/queues/{name}/resume", api_pause)
    r.add_static("/static/", static_dir(), append_version=False)
    return app

