"""Producing and following jobs from synchronous code, on psycopg 3 (`pip install 'shoal[sync]'`).

The same API as the async one (shoal.client), for the services that are not asyncio: Django,
Flask, SQLAlchemy. `enqueue(conn, ...)` and `enqueue_many(conn, ...)` take the caller's psycopg
connection, so the jobs commit or roll back with the caller's transaction; `Client` keeps its own
connections. Validation, SQL, COPY encoding and trace context are the async path's own (see
shoal.sync.producer), so both paths accept, refuse and store jobs alike.
"""

from shoal.extras import require_module_extra

require_module_extra("sync", "shoal.sync")

from shoal.jobs import FINAL_STATES, JobResult, NewJob  # noqa: E402
from shoal.producer import COPY_MIN_BATCH  # noqa: E402
from shoal.sync.client import Client  # noqa: E402
from shoal.sync.migrate import migrate  # noqa: E402
from shoal.sync.producer import enqueue, enqueue_many  # noqa: E402
from shoal.sync.waiting import cancel, get_job, retry, wait  # noqa: E402

__all__ = ["COPY_MIN_BATCH", "FINAL_STATES", "Client", "JobResult", "NewJob", "cancel", "enqueue", "enqueue_many",
           "get_job", "migrate", "retry", "wait"]
