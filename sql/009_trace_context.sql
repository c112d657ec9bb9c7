-- Tracing (the optional `shoal[otel]` extra, docs/tracing.md): a job carries the W3C trace
-- context of the code that enqueued it, and the worker runs it in a span that continues it.
--
-- shoal.jobs.trace_context is the W3C `traceparent` header, followed by a space and the
-- `tracestate` header when there is one (a traceparent never holds a space); NULL when the
-- producer had no trace (the common case, and the whole cost: a NULL costs no bytes in a row).
-- The database never parses it: a malformed value is ignored by the worker, with a warning.
--
-- Producers: shoal.enqueue and shoal.enqueue_many take it as a new last argument, DEFAULT NULL,
-- so that every existing call (plain SQL, producers of the previous version) means what it did.
-- A function's arguments cannot change in place, so both are dropped and created again.
--
-- Workers: the claims return it as a new last column (a NULL column: no per-job round trip, and
-- the same plans). A function's result columns cannot change in place either: the claims are
-- dropped and created again, unchanged but for the column, and the previous version's wrappers
-- (4 arguments) list their columns. Workers of the previous version name the columns they read.

ALTER TABLE shoal.jobs ADD COLUMN trace_context text;

-------------------------------------------------------------------------------
-- Enqueue: one trace context per call (the batch was enqueued in one place).
-------------------------------------------------------------------------------
DROP FUNCTION shoal.enqueue_many(text[], text[], jsonb[], smallint[], timestamptz[], integer[], text[]);

CREATE FUNCTION shoal.enqueue_many(
    queues        text[],
    tasks         text[],
    payloads      jsonb[],
    priorities    smallint[],
    run_ats       timestamptz[],
    max_attemptss integer[],
    unique_keys   text[],
    trace_context text DEFAULT NULL
) RETURNS TABLE (id bigint, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    distinct_queues text[];
    q text;
    r record;
    new_id bigint;
BEGIN
    PERFORM shoal.check_batch(queues, tasks, payloads, priorities, run_ats, max_attemptss, unique_keys);
    distinct_queues := ARRAY(SELECT DISTINCT x FROM unnest(queues) AS x);
    IF EXISTS (SELECT FROM unnest(distinct_queues) AS x WHERE NOT EXISTS (SELECT FROM shoal.queues WHERE name = x)) THEN
        -- An unknown queue may be an invalid name: name the first bad row, as the Python client
        -- does, before the unknown queue (check_batch left queue names to this test).
        PERFORM shoal.check_rows(queues, tasks, priorities, run_ats, max_attemptss, unique_keys);
        PERFORM shoal.check_queues(distinct_queues);
    END IF;
    IF unique_keys IS NULL OR cardinality(array_remove(unique_keys, NULL)) = 0 THEN
        -- Fast path, no unique keys: one set-based INSERT, ids in input order.
        RETURN QUERY
        INSERT INTO shoal.jobs AS j (queue, task, payload, priority, run_at, max_attempts, trace_context)
        SELECT i.queue, i.task, coalesce(i.payload, '{}'::jsonb), coalesce(i.priority, 0),
               coalesce(i.run_at, now()), coalesce(i.max_attempts, qq.max_attempts), enqueue_many.trace_context
          FROM unnest(queues, tasks, payloads, priorities, run_ats, max_attemptss)
               WITH ORDINALITY AS i(queue, task, payload, priority, run_at, max_attempts, ord)
          JOIN shoal.queues qq ON qq.name = i.queue
         ORDER BY i.ord
        RETURNING j.id, true;
    ELSE
        -- Unique keys: row by row, so concurrent adders of one key wait on each other
        -- (ON CONFLICT) and the loser gets the winner's id.
        FOR r IN
            SELECT i.*, qq.max_attempts AS default_attempts
              FROM unnest(queues, tasks, payloads, priorities, run_ats, max_attemptss, unique_keys)
                   WITH ORDINALITY AS i(queue, task, payload, priority, run_at, max_attempts, unique_key, ord)
              JOIN shoal.queues qq ON qq.name = i.queue
             ORDER BY i.ord
        LOOP
            LOOP
                INSERT INTO shoal.jobs AS j (queue, task, payload, priority, run_at, max_attempts, unique_key,
                                             trace_context)
                VALUES (r.queue, r.task, coalesce(r.payload, '{}'::jsonb), coalesce(r.priority, 0),
                        coalesce(r.run_at, now()), coalesce(r.max_attempts, r.default_attempts), r.unique_key,
                        enqueue_many.trace_context)
                ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'running')
                DO NOTHING
                RETURNING j.id INTO new_id;
                IF new_id IS NOT NULL THEN
                    id := new_id; created := true;
                    EXIT;
                END IF;
                SELECT e.id INTO new_id FROM shoal.jobs e
                 WHERE e.queue = r.queue AND e.unique_key = r.unique_key AND e.state IN ('pending', 'running');
                IF new_id IS NOT NULL THEN
                    id := new_id; created := false;
                    EXIT;
                END IF;
                -- The live job finished between our INSERT and SELECT: try again.
            END LOOP;
            RETURN NEXT;
        END LOOP;
    END IF;
    FOREACH q IN ARRAY distinct_queues LOOP
        PERFORM pg_notify('shoal_jobs', q);
    END LOOP;
END $$;

DROP FUNCTION shoal.enqueue(text, text, jsonb, integer, timestamptz, integer, text);

-- A plain-SQL producer passes its own traceparent (and tracestate after a space):
--   SELECT shoal.enqueue('emails', 'send', '{}', trace_context => '00-<trace id>-<span id>-01');
CREATE FUNCTION shoal.enqueue(
    queue         text,
    task          text,
    payload       jsonb       DEFAULT '{}'::jsonb,
    priority      integer     DEFAULT 0,
    run_at        timestamptz DEFAULT NULL,
    max_attempts  integer     DEFAULT NULL,
    unique_key    text        DEFAULT NULL,
    trace_context text        DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM shoal.check_job(queue, task, priority, run_at, max_attempts, unique_key);
    RETURN (SELECT e.id FROM shoal.enqueue_many(
        ARRAY[queue], ARRAY[task], ARRAY[payload], ARRAY[priority::smallint],
        ARRAY[run_at], ARRAY[max_attempts], ARRAY[unique_key], trace_context) AS e);
END $$;

-------------------------------------------------------------------------------
-- The leased claim: as in sql/008_resilience.sql, plus the trace context.
-------------------------------------------------------------------------------
DROP FUNCTION shoal.claim(text, text, integer, interval, boolean, interval);

CREATE FUNCTION shoal.claim(p_queue text, p_worker text, p_limit integer, p_stale interval,
                            p_suspect boolean, p_start_within interval)
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz, trace_context text)
LANGUAGE plpgsql
SET enable_sort = off  -- as in sql/008_resilience.sql: walk jobs_ready in claim order, never sort
AS $$
DECLARE
    q        shoal.queues%ROWTYPE;
    t0       timestamptz;
    allowed  integer := CASE WHEN p_suspect THEN least(p_limit, 1) ELSE p_limit END;
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
        RETURN QUERY SELECT NULL::bigint, 'paused'::text, NULL::jsonb, 0, 0, NULL::timestamptz, NULL::text;
        RETURN;
    END IF;

    IF q.concurrency_limit IS NOT NULL OR q.rate_limit IS NOT NULL THEN
        -- Serialise the claimers of a limited queue so the limits hold across every pod.
        PERFORM 1 FROM shoal.queues WHERE name = p_queue FOR UPDATE;
        t0 := clock_timestamp();
        IF q.concurrency_limit IS NOT NULL THEN
            -- Jobs of workers whose heartbeat is older than p_stale do not occupy slots.
            SELECT count(*) INTO busy
              FROM shoal.jobs j JOIN shoal.workers w ON w.id = j.worker_id
             WHERE j.queue = p_queue AND j.state = 'running' AND w.heartbeat_at > t0 - p_stale;
            allowed := least(allowed, q.concurrency_limit - busy);
            IF allowed <= 0 THEN
                RETURN QUERY SELECT NULL::bigint, 'concurrency_limited'::text, NULL::jsonb, 0, 0,
                                    NULL::timestamptz, NULL::text;
                RETURN;
            END IF;
        END IF;
        IF q.rate_limit IS NOT NULL THEN
            -- Sliding-window log of starts; an entry may lie up to p_start_within in the future.
            DELETE FROM shoal.rate_log r WHERE r.queue = p_queue AND r.started_at <= t0 - q.rate_period;
            SELECT coalesce(sum(r.n), 0) INTO used FROM shoal.rate_log r WHERE r.queue = p_queue;
            allowed := least(allowed, q.rate_limit - used);
            IF allowed <= 0 THEN
                RETURN QUERY SELECT NULL::bigint, 'rate_limited'::text, NULL::jsonb, 0, 0,
                                    (SELECT min(r.started_at) + q.rate_period FROM shoal.rate_log r
                                      WHERE r.queue = p_queue), NULL::text;
                RETURN;
            END IF;
        END IF;
    ELSE
        t0 := clock_timestamp();
    END IF;

    -- Two statements rather than `suspect = p_suspect`: each is planned on its own partial index.
    IF p_suspect THEN
        RETURN QUERY
        UPDATE shoal.jobs j
           SET state = 'running', attempts = j.attempts + 1, worker_id = p_worker, started_at = t0
         WHERE j.id = ANY(ARRAY(
            SELECT c.id FROM shoal.jobs c
             WHERE c.queue = p_queue AND c.state = 'pending' AND c.suspect AND c.run_at <= t0
             ORDER BY c.priority DESC, c.run_at, c.id
             LIMIT allowed
               FOR UPDATE SKIP LOCKED))
        RETURNING j.id, j.task, j.payload, j.attempts, j.max_attempts, j.run_at, j.trace_context;
    ELSE
        RETURN QUERY
        UPDATE shoal.jobs j
           SET state = 'running', attempts = j.attempts + 1, worker_id = p_worker, started_at = t0
         WHERE j.id = ANY(ARRAY(
            SELECT c.id FROM shoal.jobs c
             WHERE c.queue = p_queue AND c.state = 'pending' AND NOT c.suspect AND c.run_at <= t0
             ORDER BY c.priority DESC, c.run_at, c.id
             LIMIT allowed
               FOR UPDATE SKIP LOCKED))
        RETURNING j.id, j.task, j.payload, j.attempts, j.max_attempts, j.run_at, j.trace_context;
    END IF;
    GET DIAGNOSTICS claimed = ROW_COUNT;

    IF q.rate_limit IS NOT NULL AND claimed > 0 THEN
        INSERT INTO shoal.rate_log (queue, started_at, n) VALUES (p_queue, t0 + p_start_within, claimed);
    END IF;
END $$;

-- Workers of the version before 008: ordinary jobs, starts assumed immediate, no trace context.
CREATE OR REPLACE FUNCTION shoal.claim(p_queue text, p_worker text, p_limit integer,
                                       p_stale interval DEFAULT interval '30 seconds')
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz)
LANGUAGE sql AS $$
    SELECT c.id, c.task, c.payload, c.attempts, c.max_attempts, c.run_at
      FROM shoal.claim(p_queue, p_worker, p_limit, p_stale, false, interval '0') c
$$;

DROP FUNCTION shoal.claim_leased(text, text, integer, interval, boolean, interval);

CREATE FUNCTION shoal.claim_leased(p_queue text, p_worker text, p_limit integer, p_stale interval,
                                   p_suspect boolean, p_start_within interval)
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz, trace_context text)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM shoal.rescue_held();
    PERFORM set_config('synchronous_commit', 'off', true);  -- see sql/004_held_claims.sql
    RETURN QUERY SELECT * FROM shoal.claim(p_queue, p_worker, p_limit, p_stale, p_suspect, p_start_within);
END $$;

CREATE OR REPLACE FUNCTION shoal.claim_leased(p_queue text, p_worker text, p_limit integer,
                                              p_stale interval DEFAULT interval '30 seconds')
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz)
LANGUAGE sql AS $$
    SELECT c.id, c.task, c.payload, c.attempts, c.max_attempts, c.run_at
      FROM shoal.claim_leased(p_queue, p_worker, p_limit, p_stale, false, interval '0') c
$$;

-------------------------------------------------------------------------------
-- The held claim: as in sql/008_resilience.sql, plus the trace context (after xact).
-------------------------------------------------------------------------------
DROP FUNCTION shoal.claim_held(text, integer);

CREATE FUNCTION shoal.claim_held(p_queue text, p_limit integer)
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz, xact xid8, trace_context text)
LANGUAGE plpgsql
SET enable_sort = off  -- without statistics the planner sorted every pending row per claim
AS $$
DECLARE
    q shoal.queues%ROWTYPE;
    me xid8;
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
    RETURN QUERY
    SELECT c.id, c.task, c.payload, c.attempts + 1, c.max_attempts, c.run_at, me, c.trace_context
      FROM shoal.jobs c
     WHERE c.queue = p_queue AND c.state = 'pending' AND NOT c.suspect AND c.run_at <= clock_timestamp()
     ORDER BY c.priority DESC, c.run_at, c.id
     LIMIT p_limit
       FOR UPDATE SKIP LOCKED;
END $$;
