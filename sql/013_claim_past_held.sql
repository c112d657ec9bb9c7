-- Held claims that pass over other workers' held batches without trying to lock them.
--
-- A held batch keeps its jobs row-locked while they run (004_held_claims.sql), and those jobs
-- are the first rows of the queue's order, so every claim's index scan meets every batch other
-- workers hold. FOR UPDATE SKIP LOCKED steps over each with a heavyweight-lock attempt (0.6 µs
-- a row); with 8 worker processes that was ~10 locked rows per claimed job and most of the growth
-- of PostgreSQL's CPU per job from 1 to 8 processes (bench/workers_scaling.py).
--
-- A row locked by a transaction still in progress has that transaction's id in xmax, and such a
-- transaction is never older than the claim's snapshot xmin. So a claim first takes only rows
-- whose xmax is older than its snapshot xmin, or none (age() of 0 is the largest): the rows it
-- passes cost a heap read and no lock attempt (0.14 µs a row). Rows it passes that are free
-- (their locker ended after the oldest running transaction began: a stopping worker's released
-- jobs, a crashed batch) are anyone's again once that transaction ends, normally within
-- milliseconds. Because one long transaction elsewhere in the database would keep them back, a
-- claim scans fully, as before, when the quick scan found nothing, and one claim of the queue
-- does every p_full_every seconds (workers pass 1): shoal.full_scans elects it, so with any
-- number of workers a queue pays for about one full scan a second, and no ready job waits much
-- longer than that for one. The two-argument form scans fully every time, as before.

CREATE UNLOGGED TABLE shoal.full_scans (
    queue text        PRIMARY KEY,
    at    timestamptz NOT NULL  -- the queue's last full-scan claim
);

DROP FUNCTION shoal.claim_held(text, integer);

CREATE FUNCTION shoal.claim_held(p_queue text, p_limit integer, p_full_every double precision DEFAULT 0)
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz, xact xid8, trace_context text)
LANGUAGE plpgsql
SET enable_sort = off
AS $$
DECLARE
    q shoal.queues%ROWTYPE;
    me xid8;
    horizon integer;
    scan_all boolean := p_full_every <= 0;
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
    IF NOT scan_all THEN
        -- The first claim of the queue after the interval is elected (it keeps the row locked
        -- until its batch commits; the others skip it) ...
        PERFORM FROM shoal.full_scans f
         WHERE f.queue = p_queue AND f.at <= clock_timestamp() - make_interval(secs => p_full_every)
           FOR UPDATE SKIP LOCKED;
        scan_all := FOUND;
        IF scan_all THEN
            UPDATE shoal.full_scans f SET at = clock_timestamp() WHERE f.queue = p_queue;
        ELSIF NOT EXISTS (SELECT FROM shoal.full_scans f WHERE f.queue = p_queue)
              AND pg_try_advisory_xact_lock(hashtextextended('shoal.full_scans:' || p_queue, 0)) THEN
            -- ... and the queue's first claim (the lock: a second one would wait on this insert).
            INSERT INTO shoal.full_scans (queue, at) VALUES (p_queue, clock_timestamp()) ON CONFLICT DO NOTHING;
            scan_all := true;
        END IF;
    END IF;
    IF NOT scan_all THEN
        -- Any transaction that holds a row now is at least as young as this snapshot's xmin.
        horizon := age(xid(pg_snapshot_xmin(pg_current_snapshot())));
    END IF;
    LOOP
        RETURN QUERY
        SELECT c.id, c.task, c.payload, c.attempts + 1, c.max_attempts, c.run_at, me, c.trace_context
          FROM shoal.jobs c
         WHERE c.queue = p_queue AND c.state = 'pending' AND NOT c.suspect AND c.run_at <= clock_timestamp()
           AND (scan_all OR age(c.xmax) > horizon)
         ORDER BY c.priority DESC, c.run_at, c.id
         LIMIT p_limit
           FOR UPDATE SKIP LOCKED;
        EXIT WHEN FOUND OR scan_all;
        scan_all := true;  -- the quick scan found nothing: try every row
    END LOOP;
END $$;
