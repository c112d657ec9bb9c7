"""`shoal console`: its flags, registered through the `shoal.commands` entry point.

The admin token is read from $SHOAL_CONSOLE_ADMIN_TOKEN only, never a flag: a process's argv is
visible to every user of the machine (ps, /proc). aiohttp is imported when the command runs, so
other commands work without the `console` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Any

from shoal.config import database_url
from shoal.extras import require_extra

log = logging.getLogger("shoal.console")


def register(sub: Any) -> None:
    p = sub.add_parser("console", help="serve the web console (admin token: $SHOAL_CONSOLE_ADMIN_TOKEN)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a pod)")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--database-url", dest="console_database_url", metavar="URL",
                   help="PostgreSQL URL (default: $SHOAL_DATABASE_URL)")
    p.set_defaults(handler=run_console)


async def run_console(args: argparse.Namespace) -> int:
    require_extra("console", "shoal console")  # a worker image has no aiohttp: say what to install
    from aiohttp import web

    from shoal.console.app import make_app
    from shoal.console.auth import Auth

    # Where `shoal`'s error messages (shoal.config.explain) look for the flag the URL came from.
    args.database_url = getattr(args, "console_database_url", None) or args.database_url
    url = database_url(args.database_url) or ""
    auth = Auth.from_env()
    runner = web.AppRunner(make_app(url, auth), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    log.info("console listening", extra={"url": f"http://{args.host}:{args.port}/",
                                         "mode": "admin" if auth.enabled else "read-only"})
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
    return 0
