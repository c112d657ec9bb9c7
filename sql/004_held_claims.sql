-- Held claims: the fast path for short jobs on queues without flow limits.
--
-- A leased claim (shoal.claim) writes every job twice: `running` at the claim, then the outcome.
-- A held claim writes it once: the worker locks a batch with FOR UPDATE SKIP LOCKED inside a
-- transaction it keeps open while the jobs run, then records every outcome and commits. If the
-- worker dies, PostgreSQL ends the transaction, the locks go, and the jobs are ready again —
-- at-least-once without a lease. Jobs still running after a short budget are converted to
-- leases in that same transaction, so no transaction stays open for a slow job.
--
-- What a transaction cannot remember is that a job killed its worker. So each held batch is
-- announced in shoal.held_batches with its transaction id, committed on its own before its jobs
-- start. A listed transaction that is no longer in progress died without recording its jobs
-- (finishing deletes the row in the same transaction): whoever next locks one of its jobs
-- counts the attempt (shoal.hold_batch returns those ids), and rescue_held counts the rest.
-- A job that kills its worker every time still ends `failed` after max_attempts, as with leases.

CREATE TABLE shoal.held_batches (
    worker_id  text        NOT NULL,
    batch      bigint      NOT NULL,
    xact       xid8        NOT NULL,  -- the held transaction: alive while 'in progress'
    ids        bigint[]    NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (worker_id, batch)
) WITH (fillfactor = 50, autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 200,
        autovacuum_vacuum_cost_delay = 0);
-- Stored uncompressed: compressing a thousand ids cost more than the rest of hold_batch.
ALTER TABLE shoal.held_batches ALTER COLUMN ids SET STORAGE EXTERNAL;

-- Lock up to p_limit ready jobs for the caller's open transaction. `attempts` is the attempt
-- this run will be; `xact` (the same on every row) identifies the transaction. A single row
-- with id NULL means "claim leased" (shoal.claim_leased): the queue is paused or has a limit,
-- which only the serialised leased claim enforces.
CREATE FUNCTION shoal.claim_held(p_queue text, p_limit integer)
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz, xact xid8)
LANGUAGE plpgsql AS $$
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
     WHERE c.queue = p_queue AND c.state = 'pending' AND c.run_at <= clock_timestamp()
     ORDER BY c.priority DESC, c.run_at, c.id
     LIMIT p_limit
       FOR UPDATE SKIP LOCKED;
END $$;

-- Announce a held batch (called on a second connection, committed before the jobs run) and
-- return the ids of it that a dead batch listed: that batch's transaction ended without
-- recording them, so its worker died (or lost its connection) with them in hand. Only dead
-- batches are compared (the overlap test is quadratic), and there are normally none.
-- Asynchronous commit is enough: after a database crash the held transaction is gone too.
CREATE FUNCTION shoal.hold_batch(p_worker text, p_batch bigint, p_xact xid8, p_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO shoal.held_batches (worker_id, batch, xact, ids) VALUES (p_worker, p_batch, p_xact, p_ids);
    FOR r IN
        SELECT b.worker_id, b.batch, b.ids FROM shoal.held_batches b
         WHERE pg_xact_status(b.xact) IS DISTINCT FROM 'in progress' AND b.ids && p_ids
         ORDER BY b.worker_id, b.batch  -- one lock order, so two claimers never deadlock
           FOR UPDATE
    LOOP
        RETURN QUERY SELECT x FROM unnest(r.ids) AS x WHERE x = ANY(p_ids);
        IF r.ids <@ p_ids THEN
            DELETE FROM shoal.held_batches b WHERE (b.worker_id, b.batch) = (r.worker_id, r.batch);
        ELSE
            UPDATE shoal.held_batches b SET ids = ARRAY(SELECT unnest(r.ids) EXCEPT SELECT unnest(p_ids))
             WHERE (b.worker_id, b.batch) = (r.worker_id, r.batch);
        END IF;
    END LOOP;
END $$;

-- Count the attempt that a dead batch used up, in the caller's held transaction (which holds
-- the locks on p_ids), and forget the caller's batch: its jobs go back untouched otherwise.
CREATE FUNCTION shoal.held_crashed(p_worker text, p_batch bigint, p_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    failed bigint[];
BEGIN
    WITH r AS (
        UPDATE shoal.jobs j
           SET attempts = j.attempts + 1,
               state = CASE WHEN j.attempts + 1 >= j.max_attempts
                            THEN 'failed'::shoal.job_state ELSE 'pending'::shoal.job_state END,
               finished_at = CASE WHEN j.attempts + 1 >= j.max_attempts THEN now() END,
               last_error = format('its worker died or lost its database connection while running '
                                   'this job (attempt %s)', j.attempts + 1)
         WHERE j.id = ANY(p_ids) AND j.state = 'pending'
        RETURNING j.id, j.state
    )
    SELECT array_agg(r.id) FILTER (WHERE r.state = 'failed') INTO failed FROM r;
    DELETE FROM shoal.held_batches b WHERE b.worker_id = p_worker AND b.batch = p_batch;
    PERFORM shoal.notify_done(failed);
END $$;

-------------------------------------------------------------------------------
-- Outcomes, for leased jobs (p_held false: rows `running` and owned by p_worker) and held
-- jobs (p_held true: rows still `pending`, locked by the caller's transaction, whose attempt
-- is counted now). One function, so retention, retries and notifications have one rule.
-- Every id belongs to p_queue (a worker serves one queue): its retention is read once, and
-- successes are deleted or kept in one statement.
-------------------------------------------------------------------------------
CREATE FUNCTION shoal.record(p_worker text, p_queue text, p_held boolean, ok_ids bigint[], fail_ids bigint[],
                             fail_errors text[], fail_delays double precision[], cancel_ids bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    done bigint[];
    keep boolean;
    held_state shoal.job_state := CASE WHEN p_held THEN 'pending' ELSE 'running' END;
    bump integer := p_held::integer;
BEGIN
    IF cardinality(ok_ids) > 0 THEN
        SELECT q.keep_succeeded > interval '0' INTO keep FROM shoal.queues q WHERE q.name = p_queue;
        IF keep THEN
            UPDATE shoal.jobs j
               SET state = 'succeeded', finished_at = now(), attempts = j.attempts + bump,
                   worker_id = p_worker, started_at = coalesce(j.started_at, now())  -- who ran it
             WHERE j.id = ANY(ok_ids) AND j.queue = p_queue AND j.state = held_state
               AND (p_held OR j.worker_id = p_worker);
        ELSE
            DELETE FROM shoal.jobs j
             WHERE j.id = ANY(ok_ids) AND j.queue = p_queue AND j.state = held_state
               AND (p_held OR j.worker_id = p_worker);
        END IF;
        done := ok_ids;  -- an id not matched above was not ours to finish: a spurious wake-up at most
    END IF;

    IF cardinality(fail_ids) > 0 THEN
        WITH f AS (
            UPDATE shoal.jobs j
               SET attempts = j.attempts + bump,
                   state = CASE WHEN f.delay IS NULL OR j.attempts + bump >= j.max_attempts
                                THEN 'failed'::shoal.job_state ELSE 'pending'::shoal.job_state END,
                   run_at = CASE WHEN f.delay IS NULL OR j.attempts + bump >= j.max_attempts
                                 THEN j.run_at ELSE now() + make_interval(secs => f.delay) END,
                   finished_at = CASE WHEN f.delay IS NULL OR j.attempts + bump >= j.max_attempts
                                      THEN now() END,
                   last_error = f.error,
                   worker_id = CASE WHEN f.delay IS NULL OR j.attempts + bump >= j.max_attempts
                                    THEN p_worker END
              FROM unnest(fail_ids, fail_errors, fail_delays) AS f(id, error, delay)
             WHERE j.id = f.id AND j.state = held_state AND (p_held OR j.worker_id = p_worker)
            RETURNING j.id, j.state
        )
        SELECT coalesce(done, '{}') || coalesce((SELECT array_agg(f.id) FROM f WHERE f.state = 'failed'), '{}')
          INTO done;
    END IF;

    IF cardinality(cancel_ids) > 0 THEN
        WITH c AS (
            UPDATE shoal.jobs j
               SET state = 'cancelled', finished_at = now(), attempts = j.attempts + bump,
                   last_error = coalesce(j.last_error, 'cancelled')
             WHERE j.id = ANY(cancel_ids) AND j.state = held_state AND (p_held OR j.worker_id = p_worker)
            RETURNING j.id
        )
        SELECT coalesce(done, '{}') || coalesce((SELECT array_agg(c.id) FROM c), '{}') INTO done;
    END IF;

    PERFORM shoal.notify_done(done);
END $$;

-- The leased form keeps its signature for workers of the previous version during a rollout.
CREATE OR REPLACE FUNCTION shoal.complete(p_worker text, ok_ids bigint[], fail_ids bigint[], fail_errors text[],
                                          fail_delays double precision[], cancel_ids bigint[])
RETURNS void
LANGUAGE sql AS $$
    SELECT shoal.record(p_worker, w.queue, false, ok_ids, fail_ids, fail_errors, fail_delays, cancel_ids)
      FROM shoal.workers w WHERE w.id = p_worker
$$;

-- Finished jobs, for waiters (client.wait): one notification per call, the range of the ids
-- ("lo-hi", or one id). A waiter whose job lies in the range re-reads its jobs' states, so a
-- job in the range that did not finish costs a spurious read, never a missed wake-up; and
-- building one short payload instead of listing every id halves the cost of recording a batch.
CREATE OR REPLACE FUNCTION shoal.notify_done(ids bigint[]) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('shoal_done', CASE WHEN min(x) = max(x) THEN min(x)::text
                                        ELSE min(x)::text || '-' || max(x)::text END)
      FROM unnest(ids) AS x
    HAVING count(*) > 0;
$$;

-- Close a held batch: turn the jobs still running into ordinary leases (their attempt counted,
-- `running`, owned by p_worker, so heartbeats and rescue cover them from now on), record the
-- finished ones and forget the batch. The caller commits right after.
CREATE FUNCTION shoal.finish_held(p_worker text, p_queue text, p_batch bigint, p_started timestamptz, lease_ids bigint[],
                                  ok_ids bigint[], fail_ids bigint[], fail_errors text[],
                                  fail_delays double precision[], cancel_ids bigint[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(lease_ids) > 0 THEN
        UPDATE shoal.jobs j
           SET state = 'running', attempts = j.attempts + 1, worker_id = p_worker, started_at = p_started
         WHERE j.id = ANY(lease_ids) AND j.state = 'pending';
    END IF;
    PERFORM shoal.record(p_worker, p_queue, true, ok_ids, fail_ids, fail_errors, fail_delays, cancel_ids);
    DELETE FROM shoal.held_batches b WHERE b.worker_id = p_worker AND b.batch = p_batch;
END $$;

-- Dead batches (their transaction ended without finishing them): count the attempt of their
-- jobs that nobody has locked since, and forget the batches.
CREATE FUNCTION shoal.rescue_held() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    ids bigint[];
    n integer := 0;
BEGIN
    FOR r IN
        SELECT b.worker_id, b.batch, b.ids FROM shoal.held_batches b
         WHERE pg_xact_status(b.xact) IS DISTINCT FROM 'in progress'
           FOR UPDATE SKIP LOCKED
    LOOP
        ids := ARRAY(SELECT j.id FROM shoal.jobs j WHERE j.id = ANY(r.ids) AND j.state = 'pending'
                        FOR UPDATE SKIP LOCKED);
        PERFORM shoal.held_crashed(r.worker_id, r.batch, ids);
        n := n + cardinality(ids);
    END LOOP;
    RETURN n;
END $$;

-- The leased claim as workers call it. First it counts the attempts of dead held batches, so a
-- job that killed its worker in a held batch has that attempt counted before it runs again,
-- whichever way it is claimed next (there are normally no dead batches: a scan of a few rows).
-- It commits asynchronously: losing a claim to a database crash cannot lose a job (the job is
-- simply ready again), and a claim the worker acted on is made durable by the worker's next
-- synchronous commit (its outcome), since WAL is flushed in order. Not waiting for the claim's
-- WAL flush takes a disk flush off the pickup path.
CREATE FUNCTION shoal.claim_leased(p_queue text, p_worker text, p_limit integer,
                                   p_stale interval DEFAULT interval '30 seconds')
RETURNS TABLE (id bigint, task text, payload jsonb, attempts integer, max_attempts integer,
               run_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM shoal.rescue_held();
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY SELECT * FROM shoal.claim(p_queue, p_worker, p_limit, p_stale);
END $$;
