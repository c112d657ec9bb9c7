-- Enqueues notify only the workers that are waiting for jobs.
--
-- Every transaction that sends a NOTIFY takes one database-wide lock at commit and keeps it
-- through its WAL flush, so notifying enqueues commit one at a time: 16 producers of single
-- jobs reached 28% of a bare INSERT's rate, most of them waiting on that lock
-- (bench/enqueue_concurrency.py). A notification only matters to a worker that sleeps until
-- one comes, so each worker now says whether it is one (shoal.workers.waiting: true while idle
-- with free slots, false while it has a backlog to work through; NULL, a worker of an older
-- release or a row the heartbeat just made, counts as waiting), and enqueues notify a queue
-- only when one of its workers is, or when the queue had no pending job (for the autoscaler).
-- shoal.enqueue_many also gains a path for a single job, which skips its set operations.
--
-- The race this must not lose: a producer reads `waiting` before a worker sets it and commits
-- after that worker's last look at the queue, and the worker sleeps on a job nobody told it of.
-- So a producer takes a shared advisory lock on the queue (shoal.wake_key) before it reads, held
-- until its commit, and a worker, once its `waiting` is committed, sleeps only after it could
-- take that lock exclusively (shoal.wake_barrier: it never waits and holds the lock only for
-- the instant of the test, so a worker never holds up a producer) and looked at the queue once
-- more; while a producer's transaction stays open the worker keeps looking every 10-250 ms. Any producer that read before the worker's
-- commit held the lock then, so the barrier passes only after it committed, and the worker's
-- last look sees its job; any producer that read after it sees `waiting` and notifies.

ALTER TABLE shoal.workers ADD COLUMN waiting boolean;

CREATE FUNCTION shoal.wake_key(p_queue text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended('shoal.wake:' || p_queue, 0)
$$;

-- In an enqueue's transaction, before its rows are written: notify each queue that has a
-- waiting worker, or no pending job yet (the autoscaler listens too: a queue scaled to zero
-- has no worker, and its first job should tick the autoscaler at once, not at its next poll).
CREATE FUNCTION shoal.wake(p_queues text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    -- One queue at a time, so that each test is an index probe with a parameter: a join
    -- against unnest() was planned as a scan of every pending job.
    FOREACH q IN ARRAY p_queues LOOP
        PERFORM pg_advisory_xact_lock_shared(shoal.wake_key(q));
        IF EXISTS (SELECT FROM shoal.workers w WHERE w.queue = q AND w.waiting IS NOT FALSE)
           OR NOT EXISTS (SELECT FROM shoal.jobs j WHERE j.queue = q AND j.state = 'pending') THEN
            PERFORM pg_notify('shoal_jobs', q);
        END IF;
    END LOOP;
END $$;

-- A worker says whether it waits for notifications (autocommit: it must be committed before
-- the worker's barrier).
CREATE FUNCTION shoal.worker_waiting(p_worker text, p_waiting boolean) RETURNS void
LANGUAGE sql AS $$
    UPDATE shoal.workers w SET waiting = p_waiting WHERE w.id = p_worker
$$;

-- True when no enqueue into p_queue is between its read of `waiting` and its commit. Never
-- waits (a producer in a long transaction would otherwise hold up every other producer queued
-- behind the worker's exclusive request): false means "look again shortly".
CREATE FUNCTION shoal.wake_barrier(p_queue text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_lock(shoal.wake_key(p_queue)) THEN
        PERFORM pg_advisory_unlock(shoal.wake_key(p_queue));
        RETURN true;
    END IF;
    RETURN false;
END $$;

CREATE OR REPLACE FUNCTION shoal.enqueue_many(queues text[], tasks text[], payloads jsonb[], priorities smallint[], run_ats timestamp with time zone[], max_attemptss integer[], unique_keys text[], trace_context text DEFAULT NULL::text)
 RETURNS TABLE(id bigint, created boolean)
 LANGUAGE plpgsql
AS $function$
DECLARE
    distinct_queues text[];
    single boolean;
    unknown boolean;
    r record;
    new_id bigint;
BEGIN
    PERFORM shoal.check_batch(queues, tasks, payloads, priorities, run_ats, max_attemptss, unique_keys);
    -- One job (the web request's case) skips the set operations: each costs an executor start.
    single := cardinality(queues) = 1 AND (unique_keys IS NULL OR unique_keys[1] IS NULL);
    distinct_queues := CASE WHEN single THEN queues ELSE ARRAY(SELECT DISTINCT x FROM unnest(queues) AS x) END;
    IF single THEN
        unknown := NOT EXISTS (SELECT FROM shoal.queues qq WHERE qq.name = enqueue_many.queues[1]);
    ELSE
        unknown := EXISTS (SELECT FROM unnest(distinct_queues) AS x WHERE NOT EXISTS (SELECT FROM shoal.queues WHERE name = x));
    END IF;
    IF unknown THEN
        -- An unknown queue may be an invalid name: name the first bad row, as the Python client
        -- does, before the unknown queue (check_batch left queue names to this test).
        PERFORM shoal.check_rows(queues, tasks, priorities, run_ats, max_attemptss, unique_keys);
        PERFORM shoal.check_queues(distinct_queues);
    END IF;
    PERFORM shoal.wake(distinct_queues);  -- before the INSERT: it reads whether the queue had a pending job
    IF single THEN
        RETURN QUERY
        INSERT INTO shoal.jobs AS j (queue, task, payload, priority, run_at, max_attempts, trace_context)
        VALUES (queues[1], tasks[1], coalesce(payloads[1], '{}'::jsonb), coalesce(priorities[1], 0),
                coalesce(run_ats[1], now()),
                coalesce(max_attemptss[1], (SELECT qq.max_attempts FROM shoal.queues qq WHERE qq.name = enqueue_many.queues[1])),
                enqueue_many.trace_context)
        RETURNING j.id, true;
    ELSIF unique_keys IS NULL OR cardinality(array_remove(unique_keys, NULL)) = 0 THEN
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
END $function$;

CREATE OR REPLACE FUNCTION shoal.enqueue_reserve(queues text[], n integer)
 RETURNS TABLE(ids bigint[], default_run_at timestamp with time zone, queue_names text[], queue_max_attempts integer[])
 LANGUAGE plpgsql
AS $function$
DECLARE
    distinct_queues text[];
    q text;
    i bigint;
BEGIN
    IF queues IS NULL THEN
        PERFORM shoal.invalid('queues', 'queues is NULL', 'pass the batch''s queues as an array');
    END IF;
    FOR q, i IN SELECT x, o FROM unnest(queues) WITH ORDINALITY AS u(x, o) LOOP
        PERFORM shoal.check_queue(q, format('queues[%s]', i));
    END LOOP;
    IF n IS NULL OR n < 0 THEN
        PERFORM shoal.invalid('n', CASE WHEN n IS NULL THEN 'n is NULL' ELSE format('n %s is out of range', n) END,
                              'pass the number of jobs to reserve ids for (0 or more)');
    END IF;
    distinct_queues := ARRAY(SELECT DISTINCT x FROM unnest(queues) AS x);
    PERFORM shoal.check_queues(distinct_queues);
    SELECT array_agg(qq.name), array_agg(qq.max_attempts) INTO queue_names, queue_max_attempts
      FROM shoal.queues qq WHERE qq.name = ANY (distinct_queues);
    -- nextval is concurrency-safe (another batch may interleave its ids with ours, never share
    -- them) and, evaluated in generate_series order, gives ascending ids in input order.
    ids := ARRAY(SELECT nextval('shoal.jobs_id_seq') FROM generate_series(1, n));
    default_run_at := now();
    PERFORM shoal.wake(distinct_queues);
    RETURN NEXT;
END $function$;
