-- Resilience: what the chaos suite (bench/chaos.py) found.
--
-- 1. Poison jobs fail alone. A worker that dies while running several jobs cannot tell us which
--    one killed it, so charging all of them an attempt made innocent neighbours fail. Now its
--    jobs go back *suspect*, their attempt not counted; a suspect job is claimed one at a time
--    and run by a worker with nothing else in hand. A worker that dies with exactly one job
--    leased was killed by that job (or with it): only then is the attempt counted, so a poison
--    job still ends `failed` after max_attempts and no innocent job pays for it.
-- 2. "The database was away" is not "the worker died": nobody is declared dead until the server
--    has been up for the staleness window, so a restart longer than --stale-after no longer
--    rescues (and re-runs) the jobs of live workers that were merely cut off.
-- 3. A fresh table (never analysed) made the held claim sort every pending row per call: the
--    claims are now planned without a sort, so they walk jobs_ready in claim order whatever the
--    statistics say.
-- 4. Rate limits count starts, not claims: a claim's starts are logged at the end of the window
--    in which the worker promises to start them (p_start_within), so late starts of one claim can
--    never share a window with the next claim's starts.

ALTER TABLE shoal.jobs ADD COLUMN suspect boolean NOT NULL DEFAULT false;

-- Suspect jobs waiting to run alone: normally none, so this index is tiny.
CREATE INDEX jobs_suspect ON shoal.jobs (queue, priority DESC, run_at, id) WHERE state = 'pending' AND suspect;

-------------------------------------------------------------------------------
-- The leased claim. p_suspect: claim one suspect job (the caller runs it alone) instead of
-- ordinary ones. p_start_within: how soon after the claim the caller starts what it claimed.
-------------------------------------------------------------------------------
CREATE FUNCTION shoal.claim(p_queue text, p_worker text, p_limit integer, p_stale interval,
                            p_suspect boolean, p_start_within interval)
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz)
LANGUAGE plpgsql
SET enable_sort = off  -- walk jobs_ready in claim order even before the first ANALYZE
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
        RETURN QUERY SELECT NULL::bigint, 'paused'::text, NULL::jsonb, 0, 0, NULL::timestamptz;
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
                                    NULL::timestamptz;
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
                                      WHERE r.queue = p_queue);
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
        RETURNING j.id, j.task, j.payload, j.attempts, j.max_attempts, j.run_at;
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
        RETURNING j.id, j.task, j.payload, j.attempts, j.max_attempts, j.run_at;
    END IF;
    GET DIAGNOSTICS claimed = ROW_COUNT;

    IF q.rate_limit IS NOT NULL AND claimed > 0 THEN
        INSERT INTO shoal.rate_log (queue, started_at, n) VALUES (p_queue, t0 + p_start_within, claimed);
    END IF;
END $$;

-- Workers of the previous version: ordinary jobs, starts assumed immediate.
CREATE OR REPLACE FUNCTION shoal.claim(p_queue text, p_worker text, p_limit integer,
                                       p_stale interval DEFAULT interval '30 seconds')
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz)
LANGUAGE sql AS $$
    SELECT * FROM shoal.claim(p_queue, p_worker, p_limit, p_stale, false, interval '0')
$$;

CREATE FUNCTION shoal.claim_leased(p_queue text, p_worker text, p_limit integer, p_stale interval,
                                   p_suspect boolean, p_start_within interval)
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz)
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
    SELECT * FROM shoal.claim_leased(p_queue, p_worker, p_limit, p_stale, false, interval '0')
$$;

-- Is a suspect job waiting to run alone? (The keeper asks once per heartbeat.)
CREATE FUNCTION shoal.suspect_ready(p_queue text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM shoal.jobs j
                    WHERE j.queue = p_queue AND j.state = 'pending' AND j.suspect AND j.run_at <= now())
$$;

-------------------------------------------------------------------------------
-- The held claim: never suspect jobs (they run alone, leased), and no sort.
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION shoal.claim_held(p_queue text, p_limit integer)
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz, xact xid8)
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
        RETURN QUERY SELECT NULL::bigint, 'limited'::text, NULL::jsonb, 0, 0, NULL::timestamptz, NULL::xid8;
        RETURN;
    END IF;
    me := pg_current_xact_id();
    RETURN QUERY
    SELECT c.id, c.task, c.payload, c.attempts + 1, c.max_attempts, c.run_at, me
      FROM shoal.jobs c
     WHERE c.queue = p_queue AND c.state = 'pending' AND NOT c.suspect AND c.run_at <= clock_timestamp()
     ORDER BY c.priority DESC, c.run_at, c.id
     LIMIT p_limit
       FOR UPDATE SKIP LOCKED;
END $$;

-------------------------------------------------------------------------------
-- Rescue of dead workers' leased jobs.
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION shoal.rescue(p_stale interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    rescued integer;
    failed bigint[];
    queues text[];
    ids bigint[];
    deads text[];
BEGIN
    -- Heartbeats missed while the server was down (or starting) say nothing about the workers.
    IF pg_postmaster_start_time() > now() - p_stale THEN
        RETURN 0;
    END IF;
    DELETE FROM shoal.workers w WHERE w.heartbeat_at < now() - p_stale;
    WITH orphan AS (
        SELECT j.id, j.worker_id FROM shoal.jobs j
         WHERE j.state = 'running'
           AND NOT EXISTS (SELECT 1 FROM shoal.workers w WHERE w.id = j.worker_id)
           FOR UPDATE OF j
    ), alone AS (  -- the dead worker had only this job leased: it is the one that ran out of luck
        SELECT o.worker_id FROM orphan o GROUP BY o.worker_id HAVING count(*) = 1
    ), r AS (
        UPDATE shoal.jobs j
           SET state = CASE WHEN a.worker_id IS NOT NULL AND j.attempts >= j.max_attempts
                            THEN 'failed'::shoal.job_state ELSE 'pending'::shoal.job_state END,
               attempts = CASE WHEN a.worker_id IS NOT NULL THEN j.attempts ELSE greatest(j.attempts - 1, 0) END,
               suspect = true,
               finished_at = CASE WHEN a.worker_id IS NOT NULL AND j.attempts >= j.max_attempts THEN now() END,
               last_error = CASE WHEN a.worker_id IS NOT NULL
                    THEN format('worker %s died while running this job alone (attempt %s)', j.worker_id, j.attempts)
                    ELSE format('worker %s died while running this job among others; the attempt is not '
                                'counted and the job runs alone next', j.worker_id) END,
               worker_id = NULL,
               run_at = now()
          FROM orphan o LEFT JOIN alone a ON a.worker_id = o.worker_id
         WHERE j.id = o.id
        RETURNING j.id, j.state, j.queue, o.worker_id AS dead
    ), n AS (
        SELECT count(*) AS c, array_agg(r.id) FILTER (WHERE r.state = 'failed') AS f,
               array_agg(DISTINCT r.queue) FILTER (WHERE r.state = 'pending') AS qs,
               array_agg(r.id) AS ids, array_agg(r.dead) AS deads
          FROM r
    )
    SELECT n.c, n.f, n.qs, n.ids, n.deads INTO rescued, failed, queues, ids, deads FROM n;
    IF rescued > 0 THEN
        PERFORM shoal.note_errors(ids, NULL, deads, NULL);  -- the failure history (sql/006)
    END IF;
    PERFORM shoal.notify_done(failed);
    PERFORM pg_notify('shoal_jobs', x) FROM unnest(coalesce(queues, '{}')) AS x;
    RETURN rescued;
END $$;

-- A dead held batch: its jobs go back suspect, their attempt not counted (a held batch holds
-- many jobs, so the culprit is unknown). Called in the caller's transaction, which holds the
-- locks on p_ids; forgets the caller's batch.
CREATE OR REPLACE FUNCTION shoal.held_crashed(p_worker text, p_batch bigint, p_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE shoal.jobs j
       SET suspect = true,
           last_error = 'its worker died or lost its database connection while running this job in a '
                        'batch; the attempt is not counted and the job runs alone next'
     WHERE j.id = ANY(p_ids) AND j.state IS NOT DISTINCT FROM 'pending';
    PERFORM shoal.note_errors(p_ids);
    DELETE FROM shoal.held_batches b WHERE b.worker_id = p_worker AND b.batch = p_batch;
END $$;

-------------------------------------------------------------------------------
-- Outcomes of held batches whose transaction was lost (connection cut, database restart) while
-- the worker lived on. Their jobs are ready again; each one nobody has taken since is recorded
-- now with the held rule (attempt counted), so a job that finished is not run a second time.
-- The worker knows what became of every job of those batches, so it forgets them (p_batches):
-- none is left for rescue to mark suspect.
-------------------------------------------------------------------------------
CREATE FUNCTION shoal.record_orphaned(p_worker text, p_queue text, p_batches bigint[], ok_ids bigint[],
                                      fail_ids bigint[], fail_errors text[], fail_delays double precision[],
                                      cancel_ids bigint[], fail_tracebacks text[])
RETURNS bigint[]  -- the ids recorded
LANGUAGE plpgsql AS $$
DECLARE
    mine bigint[];
    f_ids bigint[];
    f_errors text[];
    f_delays double precision[];
    f_tracebacks text[];
BEGIN
    DELETE FROM shoal.held_batches b WHERE b.worker_id = p_worker AND b.batch = ANY(p_batches);
    mine := ARRAY(SELECT j.id FROM shoal.jobs j
                   WHERE j.id = ANY(ok_ids || fail_ids || cancel_ids) AND j.queue = p_queue AND j.state IS NOT DISTINCT FROM 'pending'
                     FOR UPDATE SKIP LOCKED);
    IF cardinality(mine) = 0 THEN
        RETURN mine;
    END IF;
    SELECT coalesce(array_agg(f.id ORDER BY f.i), '{}'), coalesce(array_agg(f.e ORDER BY f.i), '{}'),
           coalesce(array_agg(f.d ORDER BY f.i), '{}'), coalesce(array_agg(f.t ORDER BY f.i), '{}')
      INTO f_ids, f_errors, f_delays, f_tracebacks
      FROM unnest(fail_ids, fail_errors, fail_delays, fail_tracebacks) WITH ORDINALITY AS f(id, e, d, t, i)
     WHERE f.id = ANY(mine);
    PERFORM shoal.record(p_worker, p_queue, true, ARRAY(SELECT x FROM unnest(ok_ids) x WHERE x = ANY(mine)),
                         f_ids, f_errors, f_delays, ARRAY(SELECT x FROM unnest(cancel_ids) x WHERE x = ANY(mine)),
                         f_tracebacks);
    RETURN mine;
END $$;
