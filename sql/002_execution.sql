-- Execution: claim, complete, heartbeat, rescue, release, cancel, retry, prune, counts.
-- Workers call these functions so that each step is one round trip and the rules
-- (flow control, ownership, retention) live in one place, next to the data.

-------------------------------------------------------------------------------
-- Claim up to p_limit ready jobs for p_worker.
-- A row with id NULL means "nothing may start now": task says why
-- ('paused', 'rate_limited', 'concurrency_limited') and run_at, when known,
-- says when a slot frees, so workers sleep instead of spinning.
-------------------------------------------------------------------------------
CREATE FUNCTION shoal.claim(p_queue text, p_worker text, p_limit integer,
                            p_stale interval DEFAULT interval '30 seconds')
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    q        shoal.queues%ROWTYPE;
    t0       timestamptz;
    allowed  integer := p_limit;
    busy     integer;
    used     integer;
    claimed  integer;
BEGIN
    SELECT * INTO q FROM shoal.queues WHERE name = p_queue;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'queue: unknown queue "%"', p_queue
            USING ERRCODE = 'SHQ01',
                  HINT = format('declare it first with `shoal queue create %s` or a Queue resource', p_queue);
    END IF;
    IF q.paused THEN
        RETURN QUERY SELECT NULL::bigint, 'paused'::text, NULL::jsonb, 0, 0, NULL::timestamptz;
        RETURN;
    END IF;

    IF q.concurrency_limit IS NOT NULL OR q.rate_limit IS NOT NULL THEN
        -- Serialise the claimers of a limited queue so the limits hold across every pod.
        PERFORM 1 FROM shoal.queues WHERE name = p_queue FOR UPDATE;
        t0 := clock_timestamp();
        IF q.concurrency_limit IS NOT NULL THEN
            -- Only jobs held by live workers occupy slots: rows leaked by dead pods never do.
            SELECT count(*) INTO busy
              FROM shoal.jobs j JOIN shoal.workers w ON w.id = j.worker_id
             WHERE j.queue = p_queue AND j.state = 'running' AND w.heartbeat_at > t0 - p_stale;
            allowed := least(allowed, q.concurrency_limit - busy);
            IF allowed <= 0 THEN
                RETURN QUERY SELECT NULL::bigint, 'concurrency_limited'::text, NULL::jsonb, 0, 0,
                                    NULL::timestamptz;
                RETURN;
            END IF;
        END IF;
        IF q.rate_limit IS NOT NULL THEN
            -- Sliding-window log: starts in (t0 - period, t0] never exceed the limit.
            DELETE FROM shoal.rate_log r WHERE r.queue = p_queue AND r.started_at <= t0 - q.rate_period;
            SELECT coalesce(sum(r.n), 0) INTO used FROM shoal.rate_log r WHERE r.queue = p_queue;
            allowed := least(allowed, q.rate_limit - used);
            IF allowed <= 0 THEN
                RETURN QUERY SELECT NULL::bigint, 'rate_limited'::text, NULL::jsonb, 0, 0,
                                    (SELECT min(r.started_at) + q.rate_period FROM shoal.rate_log r
                                      WHERE r.queue = p_queue);
                RETURN;
            END IF;
        END IF;
    ELSE
        t0 := clock_timestamp();
    END IF;

    -- `id = ANY(ARRAY(...))` keeps the update on the primary key: joining a CTE instead let
    -- the planner hash-join against a scan of the whole table.
    RETURN QUERY
    UPDATE shoal.jobs j
       SET state = 'running', attempts = j.attempts + 1, worker_id = p_worker, started_at = t0
     WHERE j.id = ANY(ARRAY(
        SELECT c.id FROM shoal.jobs c
         WHERE c.queue = p_queue AND c.state = 'pending' AND c.run_at <= t0
         ORDER BY c.priority DESC, c.run_at, c.id
         LIMIT allowed
           FOR UPDATE SKIP LOCKED))
    RETURNING j.id, j.task, j.payload, j.attempts, j.max_attempts, j.run_at;
    GET DIAGNOSTICS claimed = ROW_COUNT;

    IF q.rate_limit IS NOT NULL AND claimed > 0 THEN
        INSERT INTO shoal.rate_log (queue, started_at, n) VALUES (p_queue, t0, claimed);
    END IF;
END $$;

-------------------------------------------------------------------------------
-- Record outcomes of a batch of jobs owned by p_worker, in one round trip.
-- fail_delays: seconds until the retry, or NULL for a final failure.
-- Jobs the worker no longer owns (rescued meanwhile) are left alone.
-------------------------------------------------------------------------------
CREATE FUNCTION shoal.complete(p_worker text, ok_ids bigint[], fail_ids bigint[], fail_errors text[],
                               fail_delays double precision[], cancel_ids bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    done bigint[];
BEGIN
    WITH deleted AS (
        DELETE FROM shoal.jobs j
         USING shoal.queues q
         WHERE j.id = ANY(ok_ids) AND j.worker_id = p_worker AND j.state = 'running'
           AND q.name = j.queue AND q.keep_succeeded = interval '0'
        RETURNING j.id
    ), kept AS (
        UPDATE shoal.jobs j
           SET state = 'succeeded', finished_at = now()  -- worker_id kept: who ran it
          FROM shoal.queues q
         WHERE j.id = ANY(ok_ids) AND j.worker_id = p_worker AND j.state = 'running'
           AND q.name = j.queue AND q.keep_succeeded > interval '0'
        RETURNING j.id
    )
    SELECT array_agg(x.id) INTO done FROM (SELECT d.id FROM deleted d UNION ALL SELECT k.id FROM kept k) x;

    IF cardinality(fail_ids) > 0 THEN
        WITH f AS (
            UPDATE shoal.jobs j
               SET state = CASE WHEN f.delay IS NULL OR j.attempts >= j.max_attempts
                                THEN 'failed'::shoal.job_state ELSE 'pending'::shoal.job_state END,
                   run_at = CASE WHEN f.delay IS NULL OR j.attempts >= j.max_attempts
                                 THEN j.run_at ELSE now() + make_interval(secs => f.delay) END,
                   finished_at = CASE WHEN f.delay IS NULL OR j.attempts >= j.max_attempts
                                      THEN now() END,
                   last_error = f.error,
                   worker_id = CASE WHEN f.delay IS NULL OR j.attempts >= j.max_attempts
                                    THEN j.worker_id END
              FROM unnest(fail_ids, fail_errors, fail_delays) AS f(id, error, delay)
             WHERE j.id = f.id AND j.worker_id = p_worker AND j.state = 'running'
            RETURNING j.id, j.state
        )
        SELECT coalesce(done, '{}') || coalesce((SELECT array_agg(f.id) FROM f WHERE f.state = 'failed'), '{}')
          INTO done;
    END IF;

    IF cardinality(cancel_ids) > 0 THEN
        WITH c AS (
            UPDATE shoal.jobs j
               SET state = 'cancelled', finished_at = now(),
                   last_error = coalesce(j.last_error, 'cancelled')
             WHERE j.id = ANY(cancel_ids) AND j.worker_id = p_worker AND j.state = 'running'
            RETURNING j.id
        )
        SELECT coalesce(done, '{}') || coalesce((SELECT array_agg(c.id) FROM c), '{}') INTO done;
    END IF;

    PERFORM shoal.notify_done(done);
END $$;

-- Tell waiters (wait_for) which jobs reached a final state; payloads stay under NOTIFY's 8000 bytes.
CREATE FUNCTION shoal.notify_done(ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    SELECT count(pg_notify('shoal_done', chunk))::integer
      FROM (SELECT string_agg(x::text, ',') AS chunk
              FROM unnest(ids) WITH ORDINALITY AS t(x, i)
             GROUP BY (i - 1) / 350) s;  -- 350 ids of up to 20 characters stay under 8000 bytes
$$;

-------------------------------------------------------------------------------
-- Liveness: one row per worker, not per job. Returns the jobs the database thinks this
-- worker holds, so the worker can act on cancellation requests (a safety net for a missed
-- NOTIFY) and give back jobs it does not know of (a claim whose answer a crash swallowed).
-------------------------------------------------------------------------------
CREATE FUNCTION shoal.heartbeat(p_worker text, p_queue text, p_hostname text, p_pid integer)
RETURNS TABLE (id bigint, cancel_requested boolean)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shoal.workers AS w (id, queue, hostname, pid)
    VALUES (p_worker, p_queue, p_hostname, p_pid)
    ON CONFLICT ON CONSTRAINT workers_pkey DO UPDATE SET heartbeat_at = now();
    RETURN QUERY
    SELECT j.id, j.cancel_requested FROM shoal.jobs j
     WHERE j.queue = p_queue AND j.state = 'running' AND j.worker_id = p_worker;
END $$;

-- Return jobs of dead workers to the queue. The attempt they used stays counted, so a
-- job that kills its worker every time ends `failed` after max_attempts instead of looping.
CREATE FUNCTION shoal.rescue(p_stale interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    rescued integer;
    failed bigint[];
    queues text[];
BEGIN
    DELETE FROM shoal.workers w WHERE w.heartbeat_at < now() - p_stale;
    WITH r AS (
        UPDATE shoal.jobs j
           SET state = CASE WHEN j.attempts >= j.max_attempts
                            THEN 'failed'::shoal.job_state ELSE 'pending'::shoal.job_state END,
               finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END,
               last_error = format('worker %s stopped heartbeating while running this job (attempt %s)',
                                   j.worker_id, j.attempts),
               worker_id = NULL,
               run_at = now()
         WHERE j.state = 'running'
           AND NOT EXISTS (SELECT 1 FROM shoal.workers w WHERE w.id = j.worker_id)
        RETURNING j.id, j.state, j.queue
    ), n AS (
        SELECT count(*) AS c, array_agg(r.id) FILTER (WHERE r.state = 'failed') AS f,
               array_agg(DISTINCT r.queue) FILTER (WHERE r.state = 'pending') AS qs
          FROM r
    )
    SELECT n.c, n.f, n.qs INTO rescued, failed, queues FROM n;
    PERFORM shoal.notify_done(failed);
    PERFORM pg_notify('shoal_jobs', x) FROM unnest(coalesce(queues, '{}')) AS x;
    RETURN rescued;
END $$;

-- Give jobs back without using up an attempt: unfinished ones at graceful shutdown
-- (p_final: the worker leaves, too), or ones a worker finds it holds without knowing.
CREATE FUNCTION shoal.release(p_worker text, ids bigint[], p_final boolean DEFAULT true) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    released integer;
    q text;
BEGIN
    UPDATE shoal.jobs j
       SET state = 'pending', attempts = greatest(j.attempts - 1, 0), worker_id = NULL, run_at = now()
     WHERE j.id = ANY(ids) AND j.worker_id = p_worker AND j.state = 'running';
    GET DIAGNOSTICS released = ROW_COUNT;
    SELECT w.queue INTO q FROM shoal.workers w WHERE w.id = p_worker;
    IF p_final THEN
        DELETE FROM shoal.workers w WHERE w.id = p_worker;
    END IF;
    IF released > 0 AND q IS NOT NULL THEN
        PERFORM pg_notify('shoal_jobs', q);
    END IF;
    RETURN released;
END $$;

-------------------------------------------------------------------------------
-- Operations on jobs by id.
-------------------------------------------------------------------------------
-- Pending jobs are cancelled at once; running ones are flagged and their worker told.
CREATE FUNCTION shoal.cancel(ids bigint[]) RETURNS TABLE (id bigint, state shoal.job_state)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    cancelled bigint[] := '{}';
BEGIN
    FOR r IN
        UPDATE shoal.jobs j
           SET state = CASE WHEN j.state = 'pending' THEN 'cancelled'::shoal.job_state ELSE j.state END,
               finished_at = CASE WHEN j.state = 'pending' THEN now() ELSE j.finished_at END,
               last_error = CASE WHEN j.state = 'pending' THEN 'cancelled' ELSE j.last_error END,
               cancel_requested = (j.state = 'running')
         WHERE j.id = ANY(ids) AND j.state IN ('pending', 'running')
        RETURNING j.id, j.state
    LOOP
        IF r.state = 'running' THEN
            PERFORM pg_notify('shoal_cancel', r.id::text);
        ELSE
            cancelled := cancelled || r.id;
        END IF;
        id := r.id; state := r.state;
        RETURN NEXT;
    END LOOP;
    PERFORM shoal.notify_done(cancelled);
END $$;

-- Failed or cancelled jobs run again from attempt zero.
CREATE FUNCTION shoal.retry(ids bigint[]) RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    RETURN QUERY
    UPDATE shoal.jobs j
       SET state = 'pending', attempts = 0, run_at = now(), finished_at = NULL, cancel_requested = false
     WHERE j.id = ANY(ids) AND j.state IN ('failed', 'cancelled')
    RETURNING j.id;
    FOR q IN SELECT DISTINCT j.queue FROM shoal.jobs j WHERE j.id = ANY(ids) LOOP
        PERFORM pg_notify('shoal_jobs', q);
    END LOOP;
END $$;

-- Retention: delete at most p_batch expired rows per call, so no lock is held for long.
CREATE FUNCTION shoal.prune(p_batch integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    deleted integer;
BEGIN
    DELETE FROM shoal.jobs d
     WHERE d.id IN (
        SELECT j.id FROM shoal.jobs j JOIN shoal.queues q ON q.name = j.queue
         WHERE (j.state = 'succeeded' AND j.finished_at < now() - q.keep_succeeded)
            OR (j.state IN ('failed', 'cancelled') AND q.keep_failed IS NOT NULL
                AND j.finished_at < now() - q.keep_failed)
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS deleted = ROW_COUNT;
    DELETE FROM shoal.cron_ticks WHERE fired_at < now() - interval '7 days';
    RETURN deleted;
END $$;

-------------------------------------------------------------------------------
-- Counts for the autoscaler (and KEDA): index-driven and capped, so their cost
-- stays flat however many jobs the table holds.
-------------------------------------------------------------------------------
CREATE FUNCTION shoal.ready_count(p_queue text, p_cap integer DEFAULT 10000) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT count(*)::integer FROM (
        SELECT 1 FROM shoal.jobs j
         WHERE j.queue = p_queue AND j.state = 'pending' AND j.run_at <= now()
         LIMIT p_cap) s
$$;

CREATE FUNCTION shoal.running_count(p_queue text, p_cap integer DEFAULT 10000) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT count(*)::integer FROM (
        SELECT 1 FROM shoal.jobs j WHERE j.queue = p_queue AND j.state = 'running' LIMIT p_cap) s
$$;
