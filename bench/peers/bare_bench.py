"""The bare reference: a hand-written asyncpg queue with no features at all.

One table; batch INSERT via unnest; a claim-and-delete loop
`DELETE ... WHERE id IN (SELECT id ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING`.
No retries, heartbeats or metrics: the bound a real queue on the same PostgreSQL aims at.
Runs in the project's venv (it needs only asyncpg). Protocol: see _common.py.
"""

from __future__ import annotations

import asyncio
import json

import _common as c
import asyncpg

ENQUEUE_CHUNK = 5000  # rows per INSERT ... SELECT unnest($1)
CLAIM_BATCH = 100  # rows per claim-and-delete
LOOPS = 2  # concurrent claim loops (one connection each) in the worker process
CHANNEL = "bare_jobs"

SCHEMA = """
CREATE TABLE IF NOT EXISTS bare_jobs (
    id bigserial PRIMARY KEY,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
"""
INSERT = """
WITH ins AS (INSERT INTO bare_jobs (payload) SELECT unnest($1::jsonb[]) RETURNING 1)
SELECT count(*), pg_notify('bare_jobs', '') FROM ins
"""
INSERT_ONE = "INSERT INTO bare_jobs (payload) VALUES ($1::jsonb)"
CLAIM = """
DELETE FROM bare_jobs WHERE id IN (
    SELECT id FROM bare_jobs ORDER BY id FOR UPDATE SKIP LOCKED LIMIT $1
) RETURNING id, payload
"""


async def setup(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(SCHEMA)
    finally:
        await conn.close()
    c.emit_json({
        "version": f"asyncpg {asyncpg.__version__}",
        "remaining_sql": "SELECT count(*) FROM bare_jobs",
        "config": {"enqueue_chunk": ENQUEUE_CHUNK, "claim_batch": CLAIM_BATCH, "claim_loops": LOOPS,
                   "wakeup": "LISTEN/NOTIFY + 1 s poll"},
    })


async def enqueue(url: str, jobs: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        elapsed = c.timed()
        for start in range(0, jobs, ENQUEUE_CHUNK):
            payloads = [json.dumps({"n": i}) for i in range(start, min(jobs, start + ENQUEUE_CHUNK))]
            await conn.fetchval(INSERT, payloads)
        seconds = elapsed()
    finally:
        await conn.close()
    c.emit_json({"jobs": jobs, "seconds": seconds})


async def noop(payload: dict[str, object]) -> None:
    return None


async def worker(url: str, latency: bool) -> None:
    # READY before connecting, as every other adapter prints it before its library's start call
    # (which connects): the drain's clock includes each system's own start-up.
    c.ready()
    wake = asyncio.Event()
    listener = await asyncpg.connect(url)
    await listener.add_listener(CHANNEL, lambda *_: wake.set())
    conns = [await asyncpg.connect(url) for _ in range(LOOPS)]
    claim = [await conn.prepare(CLAIM) for conn in conns]

    async def handle(payload: dict[str, object]) -> None:
        if latency:
            c.ran(payload["n"])
        await noop(payload)

    async def loop(i: int) -> None:
        while True:
            wake.clear()
            rows = await claim[i].fetch(CLAIM_BATCH)
            for row in rows:
                await handle(json.loads(row["payload"]))
            if not rows:
                try:
                    await asyncio.wait_for(wake.wait(), 1.0)
                except TimeoutError:
                    pass

    tasks = [asyncio.create_task(loop(i)) for i in range(LOOPS)]
    await c.until_terminated()
    for t in tasks:
        t.cancel()


async def produce(url: str) -> None:
    conn = await asyncpg.connect(url)

    async def one(no: int) -> None:
        async with conn.transaction():
            await conn.execute(INSERT_ONE, json.dumps({"n": no}))
            await conn.execute(f"NOTIFY {CHANNEL}")

    await c.produce_loop(one)


def main() -> None:
    c.dispatch(setup, enqueue, worker, produce)


if __name__ == "__main__":
    main()
