-- Held claims that pass over other workers' held batches without trying to lock them.
--
-- A held batch keeps its jobs row-locked while they run (004_held_claims.sql), and those jobs
-- are the first rows of the queue's order, so every claim's index scan meets every batch other
-- workers hold. FOR UPDATE SKIP LOCKED steps over each with a heavyweight-lock attempt; with 8
-- worker processes that was ~10 locked rows per claimed job and most of the growth of
-- PostgreSQL's CPU per job from 1 to 8 processes (bench/workers_scaling.py).
--
-- A row locked by a transaction still in progress has that transaction's id in xmax, and such a
-- transaction is never older than the claim's snapshot xmin. So a claim first takes only rows
-- whose xmax is older than its snapshot xmin, or none (age() of 0 is the largest): the rows it
-- passes cost a heap read and no lock attempt. Rows it passes that are free (their locker ended
-- after the oldest running transaction began: a stopping worker's released jobs, a crashed
-- batch) are anyone's again once that transaction ends, normally within milliseconds. Because
-- one long transaction elsewhere in the database would keep them back, the claim does the full
-- scan, as before, whenever the first found nothing, and when the worker asks for it (p_full),
-- which workers do once a second: no ready job waits longer than that for a full scan.
-- p_full defaults to true, so a caller of the two-argument form claims exactly as before.

DROP FUNCTION shoal.claim_held(text, integer);

CREATE FUNCTION shoal.claim_held(p_queue text, p_limit integer, p_full boolean DEFAULT true)
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz, xact xid8, trace_context text)
LANGUAGE plpgsql
SET enable_sort = off
AS $$
DECLARE
    q shoal.queues%ROWTYPE;
    me xid8;
    horizon integer;
BEGIN
    SELECT * INTO q FROM shoal.queues WHERE name = p_queue;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'queue: unknown queue "%"', p_queue
            USING ERRCODE = 'SHQ01',
                  HINT = format('declare it first with `shoal queue create %s` or a Queue resource', p_queue);
    END IF;
    IF q.paused OR q.concurrency_limit IS NOT NULL OR q.rate_limit IS NOT NULL THEN
        RETURN QUERY SELECT NULL::bigint, 'limited'::text, NULL::jsonb, 0, 0, NULL::timestamptz, NULL::xid8,
                            NULL::text;
        RETURN;
    END IF;
    me := pg_current_xact_id();
    IF NOT p_full THEN
        -- Any transaction that holds a row now is at least as young as this snapshot's xmin.
        horizon := age(xid(pg_snapshot_xmin(pg_current_snapshot())));
        RETURN QUERY
        SELECT c.id, c.task, c.payload, c.attempts + 1, c.max_attempts, c.run_at, me, c.trace_context
          FROM shoal.jobs c
         WHERE c.queue = p_queue AND c.state = 'pending' AND NOT c.suspect AND c.run_at <= clock_timestamp()
           AND age(c.xmax) > horizon
         ORDER BY c.priority DESC, c.run_at, c.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED;
        IF FOUND THEN
            RETURN;
        END IF;
    END IF;
    RETURN QUERY
    SELECT c.id, c.task, c.payload, c.attempts + 1, c.max_attempts, c.run_at, me, c.trace_context
      FROM shoal.jobs c
     WHERE c.queue = p_queue AND c.state = 'pending' AND NOT c.suspect AND c.run_at <= clock_timestamp()
     ORDER BY c.priority DESC, c.run_at, c.id
     LIMIT p_limit
       FOR UPDATE SKIP LOCKED;
END $$;
