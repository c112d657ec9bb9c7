"""Every SQL statement the runtime sends, in one place (River's rule).

The heavy lifting lives in SQL functions created by the migrations in `sql/`;
these are the calls to them plus a few reads. All values travel as parameters.
"""

from __future__ import annotations

# --- enqueue ------------------------------------------------------------------
# $8: the trace context of the batch (sql/009_trace_context.sql, shoal.tracing), NULL when untraced.
ENQUEUE_MANY = "SELECT id, created FROM shoal.enqueue_many($1, $2, $3, $4, $5, $6, $7, $8)"
# One job without a unique key (sql/012_enqueue_one.sql), for both drivers (hence the casts): $1 queue,
# $2 task, $3 payload (JSON text), $4 priority, $5 run_at (NULL: now), $6 max_attempts (NULL: the
# queue's), $7 trace context. No row back means the queue does not exist. RETURNING runs once the
# row is written, so the transaction has its id when shoal.wake_waiters asks whether anyone waits
# (sql/015_waiter_locks.sql).
ENQUEUE_ONE = """
INSERT INTO shoal.jobs (queue, task, payload, priority, run_at, max_attempts, trace_context)
SELECT qq.name, $2::text, $3::jsonb, $4::smallint, coalesce($5::timestamptz, now()),
       coalesce($6::integer, qq.max_attempts), $7::text
  FROM shoal.queues qq WHERE qq.name = $1::text
RETURNING id, shoal.wake_waiters(queue)
"""
# Large batches (sql/003_enqueue_copy.sql): reserve ids and read defaults, then COPY the rows in
# with these columns, in this order.
ENQUEUE_RESERVE = """
SELECT ids, default_run_at, queue_names, queue_max_attempts FROM shoal.enqueue_reserve($1, $2)
"""
ENQUEUE_COPY_TABLE = ("shoal", "jobs")
ENQUEUE_COPY_COLUMNS = ("id", "payload", "queue", "task", "priority", "run_at", "max_attempts", "trace_context")
# The same three through psycopg (shoal.sync), whose COPY takes a statement rather than a table, and
# which sends a list of ints as whatever array type fits its values and JSON texts as text[]: the
# casts give the functions the types they take.
ENQUEUE_MANY_TYPED = ("SELECT id, created FROM shoal.enqueue_many($1::text[], $2::text[], $3::jsonb[], "
                      "$4::smallint[], $5::timestamptz[], $6::integer[], $7::text[], $8::text)")
ENQUEUE_RESERVE_TYPED = ("SELECT ids, default_run_at, queue_names, queue_max_attempts "
                         "FROM shoal.enqueue_reserve($1::text[], $2::integer)")
ENQUEUE_COPY = (f"COPY {ENQUEUE_COPY_TABLE[0]}.{ENQUEUE_COPY_TABLE[1]} ({', '.join(ENQUEUE_COPY_COLUMNS)}) "
                "FROM STDIN (FORMAT binary)")

# --- worker -------------------------------------------------------------------
# run_at comes back as epoch seconds: asyncpg builds a float far faster than a datetime, per job.
# $5: claim one suspect job to run alone; $6: how soon the worker starts what it claimed (rate
# limits count starts at the end of that window). See sql/008_resilience.sql. trace_context (7th,
# sql/009_trace_context.sql): the producer's W3C trace context, NULL when it had none.
CLAIM = ("SELECT id, task, payload, attempts, max_attempts, date_part('epoch', run_at) AS run_at, trace_context "
         "FROM shoal.claim_leased($1, $2, $3, $4, $5, $6)")
SUSPECT_READY = "SELECT shoal.suspect_ready($1)"
# Outcomes of held batches lost with their connection while this worker lived on.
RECORD_ORPHANED = "SELECT shoal.record_orphaned($1, $2, $3, $4, $5, $6, $7, $8, $9)"
# Outcomes of leased jobs (the completer, worker/completer.py).
RECORD = "SELECT shoal.record($1, $2, false, $3, $4, $5, $6, $7)"
# With the failures' tracebacks ($8), kept in shoal.job_errors (sql/006_failure_history.sql).
# RECORD and FINISH_HELD are the previous version's calls, still served during a rolling upgrade.
# The ids that succeeded ($3) arrive as text (shoal.worker.known_types.id_array): one per job.
RECORD_TRACED = "SELECT shoal.record($1, $2, false, $3::text::bigint[], $4, $5, $6, $7, $8)"
# Held claims (sql/004_held_claims.sql, worker/holder.py): CLAIM_HELD and FINISH_HELD run inside the
# batch's own transaction, HOLD_BATCH on another connection so that it commits before the jobs run.
CLAIM_HELD = ("SELECT id, task, payload, attempts, max_attempts, date_part('epoch', run_at) AS run_at, "
              "trace_context, xact "
              "FROM shoal.claim_held($1, $2, $3)")
HOLD_BATCH = "SELECT shoal.hold_batch($1, $2, $3, $4::text::bigint[])"  # $4: id_array(ids), as RECORD_TRACED's
HELD_CRASHED = "SELECT shoal.held_crashed($1, $2, $3)"
FINISH_HELD = "SELECT shoal.finish_held($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
FINISH_HELD_TRACED = "SELECT shoal.finish_held($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
# A batch whose every job succeeded, none left to lease: its ids are read from its announcement
# (sql/017_finish_held_ok.sql); false if there is none, and FINISH_HELD_TRACED is sent instead.
FINISH_HELD_OK = "SELECT shoal.finish_held_ok($1, $2, $3)"
# The beat also reports the worker's handler runs and their seconds so far (sql/010_worker_throughput.sql).
HEARTBEAT = "SELECT id, cancel_requested FROM shoal.heartbeat($1, $2, $3, $4, $5, $6)"
# A listener waiting for a queue's jobs, on its LISTEN session, and whether it may sleep yet
# (sql/015_waiter_locks.sql): WAIT_FOR_JOBS returns the transaction id WAKE_BARRIER takes.
WAIT_FOR_JOBS = "SELECT shoal.wait_for_jobs($1)::text"
STOP_WAITING = "SELECT shoal.stop_waiting($1)"
WAKE_BARRIER = "SELECT shoal.wake_barrier($1::text::xid8)"
# rescue_held forgets dead held batches whose jobs were claimed and finished by others since.
RESCUE = "SELECT shoal.rescue($1) + shoal.rescue_held()"
RELEASE = "SELECT shoal.release($1, $2, $3)"
PRUNE = "SELECT shoal.prune($1)"
TRY_MAINTENANCE_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
SCHEMA_READY = "SELECT to_regclass('shoal.jobs') IS NOT NULL"

# --- queues -------------------------------------------------------------------
_QUEUE_COLUMNS = """
SELECT name, paused, concurrency_limit, rate_limit,
       extract(epoch FROM rate_period)::integer AS rate_period_seconds,
       max_attempts,
       extract(epoch FROM keep_succeeded)::integer AS keep_succeeded_seconds,
       extract(epoch FROM keep_failed)::integer AS keep_failed_seconds
  FROM shoal.queues"""
QUEUE_GET = _QUEUE_COLUMNS + " WHERE name = $1"
QUEUE_LIST = _QUEUE_COLUMNS + " ORDER BY name"
QUEUE_UPSERT = """
INSERT INTO shoal.queues AS q (name, paused, concurrency_limit, rate_limit, rate_period, max_attempts,
                               keep_succeeded, keep_failed)
VALUES ($1, $2, $3, $4, make_interval(secs => $5), $6, make_interval(secs => $7), make_interval(secs => $8))
ON CONFLICT (name) DO UPDATE SET
    paused = EXCLUDED.paused,
    concurrency_limit = EXCLUDED.concurrency_limit,
    rate_limit = EXCLUDED.rate_limit,
    rate_period = EXCLUDED.rate_period,
    max_attempts = EXCLUDED.max_attempts,
    keep_succeeded = EXCLUDED.keep_succeeded,
    keep_failed = EXCLUDED.keep_failed,
    updated_at = now()
"""
QUEUE_SET_PAUSED = "UPDATE shoal.queues SET paused = $2, updated_at = now() WHERE name = $1 RETURNING name"
QUEUE_NOTIFY = "SELECT pg_notify('shoal_jobs', $1)"
# The jobs' failure history goes with them (shoal.job_errors has no foreign key: sql/006).
QUEUE_DELETE_JOBS = """
WITH d AS (DELETE FROM shoal.jobs WHERE queue = $1 RETURNING id, last_error)
DELETE FROM shoal.job_errors e USING d WHERE e.job_id = d.id AND d.last_error IS NOT NULL
"""
QUEUE_DELETE = "DELETE FROM shoal.queues WHERE name = $1"

# --- counts -------------------------------------------------------------------
READY_AND_RUNNING = "SELECT shoal.ready_count($1, $2) AS ready, shoal.running_count($1, $2) AS running"
# The age in seconds of the queue's oldest ready job (NULL when none is ready) and its live
# workers. jobs_ready leads with priority and orders run_at within a priority only, so min(run_at)
# over ready jobs would read every ready row: instead a loose index scan takes the first entry of
# each priority present (one index descent each), and the oldest of those that are due is the
# oldest ready job, exactly. At most 256 priorities are visited, highest first: with more distinct
# priorities among pending jobs the lower ones are not looked at (the age is then a lower bound).
# Like shoal_queue_pending, a job a held claim is running (sql/004, for at most its short budget)
# is still a pending row and counts. Live workers: a heartbeat within $2 seconds. Their handler runs
# per second between their last two heartbeats and the mean seconds per run come from
# shoal.queue_throughput (sql/010_worker_throughput.sql). One round trip for the autoscaler's tick
# and the console's overview alike.
QUEUE_HEALTH = """
WITH RECURSIVE heads (priority, run_at, n) AS (
    (SELECT j.priority, j.run_at, 1 FROM shoal.jobs j
      WHERE j.queue = $1 AND j.state = 'pending'
      ORDER BY j.priority DESC, j.run_at LIMIT 1)
    UNION ALL
    SELECT nxt.priority, nxt.run_at, h.n + 1
      FROM heads h
     CROSS JOIN LATERAL (SELECT j.priority, j.run_at FROM shoal.jobs j
                          WHERE j.queue = $1 AND j.state = 'pending' AND j.priority < h.priority
                          ORDER BY j.priority DESC, j.run_at LIMIT 1) nxt
     WHERE h.n < 256
)
SELECT (SELECT extract(epoch FROM now() - min(h.run_at))::float8 FROM heads h WHERE h.run_at <= now())
           AS oldest_ready_age,
       (SELECT count(*)::integer FROM shoal.workers w
         WHERE w.queue = $1 AND w.heartbeat_at > now() - make_interval(secs => $2::float8)) AS live_workers,
       t.reporting, t.runs_per_second, t.seconds_per_run
  FROM shoal.queue_throughput($1, $2::float8) t
"""
STATE_COUNTS = """
SELECT q.name AS queue,
       count(j.id) FILTER (WHERE j.state = 'pending' AND j.run_at <= now()) AS ready,
       count(j.id) FILTER (WHERE j.state = 'pending' AND j.run_at > now()) AS scheduled,
       count(j.id) FILTER (WHERE j.state = 'running') AS running,
       count(j.id) FILTER (WHERE j.state = 'succeeded') AS succeeded,
       count(j.id) FILTER (WHERE j.state = 'failed') AS failed,
       count(j.id) FILTER (WHERE j.state = 'cancelled') AS cancelled
  FROM shoal.queues q LEFT JOIN shoal.jobs j ON j.queue = q.name
 WHERE ($1::text IS NULL OR q.name = $1)
 GROUP BY q.name ORDER BY q.name
"""

# --- jobs ---------------------------------------------------------------------
JOB_GET = """
SELECT id, queue, task, payload, state::text AS state, priority, run_at, attempts, max_attempts,
       last_error, worker_id, unique_key, created_at, started_at, finished_at
  FROM shoal.jobs WHERE id = $1
"""
JOBS_FINAL = """
SELECT id, state::text AS state, attempts, last_error, finished_at
  FROM shoal.jobs WHERE id = ANY($1) AND state IN ('succeeded', 'failed', 'cancelled')
"""
JOBS_EXISTING = "SELECT id FROM shoal.jobs WHERE id = ANY($1)"
JOBS_LAST_ID = "SELECT coalesce((SELECT last_value FROM shoal.jobs_id_seq WHERE is_called), 0)"
# A waiter is listed (committed), then passes the barrier, before it reads states: completions
# notify `shoal_done` only while one is listed (sql/014_done_gate.sql).
WAIT_BEGIN = "SELECT shoal.wait_begin()"
DONE_BARRIER = "SELECT shoal.done_barrier()"
WAIT_END = "SELECT shoal.wait_end($1)"
JOBS_LIST = """
SELECT id, queue, task, state::text AS state, priority, run_at, attempts, max_attempts, last_error,
       created_at, finished_at
  FROM shoal.jobs
 WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR state = $2::shoal.job_state)
 ORDER BY id DESC LIMIT $3
"""
JOBS_ALL_FAILED = "SELECT id FROM shoal.jobs WHERE state = 'failed' AND ($1::text IS NULL OR queue = $1)"
# Every failed attempt of a job, oldest first (attempts restart at 1 after a retry).
JOB_ERRORS = """
SELECT attempt, at, worker_id, error, traceback
  FROM shoal.job_errors WHERE job_id = $1 ORDER BY at, attempt
"""
JOBS_CANCEL = "SELECT id, state::text AS state FROM shoal.cancel($1)"
JOBS_RETRY = "SELECT r AS id FROM shoal.retry($1) AS r"

# --- cron ---------------------------------------------------------------------
CRON_TICK_CLAIM = """
INSERT INTO shoal.cron_ticks (cron_name, tick) VALUES ($1, $2)
ON CONFLICT DO NOTHING RETURNING tick
"""
CRON_TICK_SET_JOB = "UPDATE shoal.cron_ticks SET job_id = $3 WHERE cron_name = $1 AND tick = $2"
CRON_LAST_JOB_LIVE = """
SELECT j.id FROM shoal.cron_ticks t JOIN shoal.jobs j ON j.id = t.job_id
 WHERE t.cron_name = $1 AND j.state IN ('pending', 'running')
 ORDER BY t.tick DESC LIMIT 1
"""

# --- operator (CronJob ticks, Queue status) -------------------------------------
# Serialises one CronJob's firing across operator replicas for the rest of the transaction,
# so concurrencyPolicy Forbid sees the previous tick's job before deciding.
CRON_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
# The newest tick handled (fired or skipped) and the newest one that enqueued a job.
CRON_LAST_TICKS = """
SELECT (SELECT max(tick) FROM shoal.cron_ticks WHERE cron_name = $1) AS last_tick,
       t.tick AS last_job_tick, t.job_id AS last_job_id
  FROM (SELECT 1) one
  LEFT JOIN LATERAL (SELECT tick, job_id FROM shoal.cron_ticks
                      WHERE cron_name = $1 AND job_id IS NOT NULL
                      ORDER BY tick DESC LIMIT 1) t ON true
"""

