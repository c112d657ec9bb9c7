"""Who may act: the admin token, and the CSRF check every action also passes.

The token comes only from $SHOAL_CONSOLE_ADMIN_TOKEN (never a flag: argv is visible to every
user of the machine). Without it the console is read-only. A browser logs in once at /login:
its cookie then holds an HMAC of the token, never the token itself; a script sends
`Authorization: Bearer <token>`. Either way an action also needs the CSRF token (double
submit: a random per-browser value in a cookie, repeated in a form field or X-CSRF-Token), so
a page of another site cannot make an admin's browser act. Tokens are compared with
hmac.compare_digest, which takes the same time wherever two strings differ.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from contextvars import ContextVar

from aiohttp import web

TOKEN_ENV = "SHOAL_CONSOLE_ADMIN_TOKEN"
ADMIN_COOKIE = "shoal_console_admin"
CSRF_COOKIE = "shoal_console_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 12 * 3600
_NEW_CSRF: ContextVar[str | None] = ContextVar("shoal_console_new_csrf", default=None)
READ_ONLY = ("read-only console: set SHOAL_CONSOLE_ADMIN_TOKEN where `shoal console` runs to allow "
             "actions")
NOT_ADMIN = "not logged in as admin: log in at /login with the admin token, or send Authorization: Bearer"
BAD_CSRF = (f"missing or wrong CSRF token: send the {CSRF_COOKIE} cookie's value in the {CSRF_HEADER} "
            f"header or the {CSRF_FIELD} form field (reload the page to get one)")


class Auth:
    """The admin token (None: read-only) and the checks made with it."""

    def __init__(self, token: str | None) -> None:
        self.token = token or None
        self._session = (hmac.new(self.token.encode(), b"shoal-console-session", hashlib.sha256).hexdigest()
                         if self.token else None)

    @classmethod
    def from_env(cls) -> Auth:
        return cls(os.environ.get(TOKEN_ENV, "").strip() or None)

    @property
    def enabled(self) -> bool:
        return self.token is not None

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def is_admin(self, request: web.Request) -> bool:
        """An admin's request: a valid session cookie or bearer token."""
        if self.token is None or self._session is None:
            return False
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and self.token_matches(header[7:].strip()):
            return True
        cookie = request.cookies.get(ADMIN_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._session.encode())

    def login(self, response: web.StreamResponse, request: web.Request) -> None:
        assert self._session is not None
        set_cookie(response, request, ADMIN_COOKIE, self._session, SESSION_SECONDS)

    def require(self, request: web.Request, form_csrf: str | None = None) -> None:
        """Raise 403 unless the request may act (admin and CSRF both)."""
        if not self.enabled:
            raise forbidden(READ_ONLY)
        if not self.is_admin(request):
            raise forbidden(NOT_ADMIN)
        if not csrf_ok(request, form_csrf):
            raise forbidden(BAD_CSRF)


def forbidden(message: str) -> web.HTTPForbidden:
    return web.HTTPForbidden(text=json.dumps({"error": message}), content_type="application/json")


def csrf_token(request: web.Request) -> str:
    """This browser's CSRF token: the cookie's, or a new one the response will set (`new_csrf`)."""
    token = request.cookies.get(CSRF_COOKIE) or _NEW_CSRF.get()
    if not token:
        token = secrets.token_urlsafe(32)
        _NEW_CSRF.set(token)
    return token


def new_csrf(reset: bool = False) -> str | None:
    """The CSRF token made during this request, for the middleware to set as a cookie; `reset`
    at the start of a request. A context variable: each request runs in its own task."""
    if reset:
        _NEW_CSRF.set(None)
    return _NEW_CSRF.get()


def csrf_ok(request: web.Request, form_value: str | None = None) -> bool:
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = request.headers.get(CSRF_HEADER) or form_value or ""
    return bool(cookie) and hmac.compare_digest(cookie.encode(), given.encode())


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str,
               max_age: int | None = None) -> None:
    """HttpOnly (no script reads it) and SameSite=Strict (no other site's request carries it);
    Secure when the request came over HTTPS, directly or through a proxy."""
    secure = request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="Strict", secure=secure,
                        path="/")
