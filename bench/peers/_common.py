"""The command-line protocol every benchmark adapter speaks (Python side).

An adapter is a script run in the interpreter of the system it measures. The runner
(`bench/run.py`) calls it with one sub-command and `--url` (a fresh database):

    setup             install the system's schema; print one JSON line:
                      {"version": str, "remaining_sql": str, "config": {...}}
                      `remaining_sql` returns one integer, the jobs not yet finished, and
                      has the form `SELECT count(*) FROM …`: the drain polls the
                      derived `SELECT EXISTS (SELECT 1 FROM …)`, which costs the server less.
    enqueue --jobs N  insert N no-op jobs with the fastest batch API, timed around the
                      inserts only; print {"jobs": N, "seconds": float}
    worker [--latency]
                      run one worker until SIGTERM. Print "READY <epoch s>" just before the
                      worker starts consuming; with --latency the handler prints
                      "RUN <job no> <epoch s>" when it starts (job no from the payload).
    produce           for each stdin line "<job no>": note the time, enqueue one job
                      carrying that number, print "SENT <job no> <epoch s before enqueue>".
                      Print "READY <epoch s>" once connected.

Times are wall-clock epoch seconds (time.time() / performance.timeOrigin + now()),
so the runner can compare clocks across processes and languages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["setup", "enqueue", "worker", "produce"])
    p.add_argument("--url", required=True)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--latency", action="store_true")
    return p.parse_args(argv)


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def say(*parts: object) -> None:
    sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
    sys.stdout.flush()


def ready() -> None:
    say("READY", repr(time.time()))


def ran(job_no: object) -> None:
    """Called first thing in a latency handler."""
    say("RUN", job_no, repr(time.time()))


async def produce_loop(enqueue_one: Callable[[int], Awaitable[object]]) -> None:
    """Read job numbers from stdin, enqueue one job each, report the send time."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    ready()
    while line := await reader.readline():
        text = line.decode().strip()
        if not text:
            continue
        no = int(text)
        t0 = time.time()
        await enqueue_one(no)
        say("SENT", no, repr(t0))


async def until_terminated() -> None:
    """Block until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def timed() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


def dispatch(setup: Callable[[str], Awaitable[None]], enqueue: Callable[[str, int], Awaitable[None]],
             worker: Callable[[str, bool], Awaitable[None]], produce: Callable[[str], Awaitable[None]]) -> None:
    """Run the adapter command named on the command line (the protocol above)."""
    args = parse_args()
    if args.command == "setup":
        asyncio.run(setup(args.url))
    elif args.command == "enqueue":
        asyncio.run(enqueue(args.url, args.jobs))
    elif args.command == "worker":
        asyncio.run(worker(args.url, args.latency))
    else:
        asyncio.run(produce(args.url))
