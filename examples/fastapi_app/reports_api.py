"""A FastAPI service enqueueing Shoal jobs with the async client, and waiting for them.

    DATABASE_URL=postgresql://... uvicorn reports_api:app            (from this folder)
    shoal worker --queue reports --tasks reports_tasks                (the same folder on PYTHONPATH)

One `shoal.Client` (an asyncpg pool) per process, opened and closed with the app. POST /reports
enqueues on the pool; POST /orders writes a row and its job in one transaction on a connection of
that pool; GET /jobs/{id} waits for the job's outcome.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

import shoal


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with await shoal.Client.connect(os.environ["DATABASE_URL"]) as client:
        app.state.shoal = client
        yield


app = FastAPI(lifespan=lifespan)


def client(request: Request) -> shoal.Client:
    return request.app.state.shoal  # type: ignore[no-any-return]


class Report(BaseModel):
    name: str
    rows: int = 100


class Order(BaseModel):
    item: str


@app.post("/reports", status_code=201)
async def create_report(report: Report, request: Request) -> dict[str, int]:
    job_id = await client(request).enqueue("reports", "reports.build", report.model_dump(), priority=1)
    return {"job": job_id}


@app.post("/orders", status_code=201)
async def create_order(order: Order, request: Request) -> dict[str, int]:
    """The order row and its job commit together (the table: CREATE TABLE orders (id serial, item text))."""
    async with client(request).pool.acquire() as conn, conn.transaction():
        order_id = await conn.fetchval("INSERT INTO orders (item) VALUES ($1) RETURNING id", order.item)
        job_id = await shoal.enqueue(conn, "reports", "reports.build", {"name": f"order-{order_id}", "rows": 1})
    return {"order": order_id, "job": job_id}


@app.get("/jobs/{job_id}")
async def job_result(job_id: int, request: Request, response: Response, timeout: float = 10.0) -> dict[str, object]:
    """The job's outcome once final (waiting at most `timeout` seconds); 202 while it is not."""
    try:
        result = await client(request).wait_for(job_id, timeout=timeout)
    except TimeoutError:
        response.status_code = 202
        return {"job": job_id, "state": "pending"}
    # pruned: it succeeded and retention (the queue's keep_succeeded) has already deleted its row.
    return {"job": job_id, "state": result.state, "attempts": result.attempts, "error": result.error,
            "pruned": result.pruned}
