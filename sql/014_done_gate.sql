-- Completion notifications only while someone waits for one.
--
-- Every recorded batch sent NOTIFY shoal_done for `wait` (002_execution.sql). PostgreSQL
-- serialises notifying transactions: each takes one database-wide lock just before its commit
-- and keeps it until the commit is flushed, so workers' commits queued behind one another
-- (bench/workers_scaling.py sampled 0.8 backends waiting on it at 8 worker processes), and each
-- notification woke every listening session of the database. Most of the time nobody waits.
--
-- A waiter now lists itself (shoal.wait_begin, committed), passes the done barrier, and only
-- then reads the jobs' states; it unlists itself when done (shoal.wait_end). A completion
-- notifies only while a waiter is listed. The race is closed as the wake gate's is
-- (011_wake_gate.sql): a completion takes the done lock shared and reads the list after it, in
-- a fresh snapshot; the barrier takes it exclusively, so a completion either committed before
-- the barrier (the waiter reads its outcome) or reads the waiter's row (and notifies). A waiter
-- whose session died unlisted is dropped by shoal.prune; until then completions notify, as
-- they all did before.

CREATE UNLOGGED TABLE shoal.done_waiters (
    id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pid   integer     NOT NULL DEFAULT pg_backend_pid(),  -- the waiting session, for shoal.prune
    since timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION shoal.done_key() RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT hashtextextended('shoal.done', 0) $$;

-- List the calling session as a waiter. It must commit before shoal.done_barrier is called.
CREATE FUNCTION shoal.wait_begin() RETURNS bigint
LANGUAGE sql AS $$ INSERT INTO shoal.done_waiters DEFAULT VALUES RETURNING id $$;

-- Return once every completion that did not see the caller listed has committed. A session
-- lock, released at once: called inside a transaction it still holds nothing afterwards.
CREATE FUNCTION shoal.done_barrier() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_lock(shoal.done_key());
    PERFORM pg_advisory_unlock(shoal.done_key());
END $$;

CREATE FUNCTION shoal.wait_end(p_id bigint) RETURNS void
LANGUAGE sql AS $$ DELETE FROM shoal.done_waiters WHERE id = p_id $$;

-- Notify `shoal_done` of these finished jobs if a waiter is listed (payload: "id" or "lo-hi").
-- In REPEATABLE READ or SERIALIZABLE the list would be read in a snapshot older than the lock:
-- such a completion always notifies.
CREATE OR REPLACE FUNCTION shoal.notify_done(ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(cardinality(ids), 0) = 0 THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(shoal.done_key());
    IF current_setting('transaction_isolation') = 'read committed'
       AND NOT EXISTS (SELECT FROM shoal.done_waiters) THEN
        RETURN;
    END IF;
    PERFORM pg_notify('shoal_done', CASE WHEN min(x) = max(x) THEN min(x)::text
                                         ELSE min(x)::text || '-' || max(x)::text END)
       FROM unnest(ids) AS x;
END $$;

-- shoal.prune (workers call it every --prune-interval) also unlists waiters whose session is gone.
CREATE OR REPLACE FUNCTION shoal.prune(p_batch integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    deleted integer;
    noted bigint[];
BEGIN
    WITH d AS (
        DELETE FROM shoal.jobs d
         WHERE d.id IN (
            SELECT j.id FROM shoal.jobs j JOIN shoal.queues q ON q.name = j.queue
             WHERE (j.state = 'succeeded' AND j.finished_at < now() - q.keep_succeeded)
                OR (j.state IN ('failed', 'cancelled') AND q.keep_failed IS NOT NULL
                    AND j.finished_at < now() - q.keep_failed)
             LIMIT p_batch
               FOR UPDATE SKIP LOCKED)
        RETURNING d.id, d.last_error
    )
    SELECT count(*), array_agg(d.id) FILTER (WHERE d.last_error IS NOT NULL) INTO deleted, noted FROM d;
    IF noted IS NOT NULL THEN
        DELETE FROM shoal.job_errors e WHERE e.job_id = ANY(noted);
    END IF;
    DELETE FROM shoal.cron_ticks WHERE fired_at < now() - interval '7 days';
    DELETE FROM shoal.done_waiters w WHERE NOT EXISTS (SELECT FROM pg_stat_activity a WHERE a.pid = w.pid);
    RETURN deleted;
END $$;
