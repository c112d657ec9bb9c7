"""A tiny container program for the process kubelet's own tests (its "image" is a Dockerfile
in test_kubelet.py). It serves /healthz and /readyz on ``--port``, records what it was
started with in $TMPDIR/start-<n>.json, and, on SIGTERM, records it and exits (or, with
IGNORE_TERM=1, keeps running until SIGKILL). /healthz fails while $TMPDIR/sick exists;
/readyz fails for READY_AFTER seconds after the start."""

from __future__ import annotations

import argparse
import http.server
import json
import os
import signal
import sys
import time
from pathlib import Path

started = time.monotonic()
tmp = Path(os.environ.get("TMPDIR", "/nonexistent"))


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's spelling)
        if self.path == "/healthz":
            ok = not (tmp / "sick").exists()
        elif self.path == "/readyz":
            ok = time.monotonic() - started >= float(os.environ.get("READY_AFTER", "0"))
        else:
            ok = self.path == "/"
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(b"ok\n" if ok else b"no\n")

    def log_message(self, *args: object) -> None:
        pass


def on_term(signum: int, frame: object) -> None:
    (tmp / "terminated").write_text(str(os.getpid()))
    if os.environ.get("IGNORE_TERM") != "1":
        sys.exit(0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--say", default="")
    args = parser.parse_args()
    starts = len(list(tmp.glob("start-*.json")))
    (tmp / f"start-{starts + 1}.json").write_text(json.dumps(
        {"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd(), "say": args.say}))
    (tmp / "sick").unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, on_term)
    server = http.server.HTTPServer(("127.0.0.1", args.port), Handler)
    server.timeout = 0.2
    while True:
        server.handle_request()


if __name__ == "__main__":
    main()
