-- Failure history: the error and traceback of every failed attempt, so that "why did it fail?"
-- has an answer after the fact (shoal.jobs.last_error keeps only the latest error's one line).
--
-- No foreign key to shoal.jobs: an ON DELETE CASCADE fires a trigger and probes this table for
-- every deleted job, and deleting succeeded jobs is the hot path of a queue, while those jobs
-- almost never have a history (measured: shoal.record deleting 50k successes took 3.8x the
-- server CPU with the cascade). Instead, whoever deletes jobs deletes their history
-- (shoal.record, shoal.prune, queue deletion), and only for jobs whose last_error is set. The
-- rule that makes this enough: a history row is only ever written for a job whose last_error is
-- set too (every writer does both), so a job with last_error NULL has no history, and deleting
-- it costs what it did before. Jobs deleted by hand leave their history behind.

CREATE TABLE shoal.job_errors (
    job_id     bigint      NOT NULL,
    attempt    integer     NOT NULL,  -- shoal.jobs.attempts when it failed (from 1; restarts after a retry)
    at         timestamptz NOT NULL DEFAULT now(),
    worker_id  text,
    error      text        NOT NULL,  -- the exception's line, at most 2048 characters
    traceback  text                   -- at most 8192 characters; NULL when there was none
);
CREATE INDEX job_errors_job ON shoal.job_errors (job_id, attempt);

-- The head and the tail of a long text, the middle replaced by a mark, in at most n characters.
-- Workers bound their texts the same way (shoal.failures); this bounds the other writers
-- (workers of the previous version, producers in other languages).
CREATE FUNCTION shoal.clip(t text, n integer) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN length(t) <= n THEN t
                ELSE left(t, (n - 40) / 2)
                     || format(' … %s characters cut … ', length(t) - (n - 40))
                     || right(t, (n - 40) - (n - 40) / 2) END
$$;

-- History for jobs failed by someone other than a worker's outcome (rescue of a dead worker's
-- jobs, held_crashed): one row per id, in the caller's transaction, after the statement that set
-- the jobs' last_error (a history row needs it: see above). Parallel arrays; a NULL array or
-- entry takes the default: errors, the job's last_error; workers, none (who was running it, if
-- known); attempts, the job's current attempts. Ids of jobs that no longer exist are skipped.
-- Returns the rows written.
CREATE FUNCTION shoal.note_errors(ids bigint[], errors text[] DEFAULT NULL, workers text[] DEFAULT NULL,
                                  attempts integer[] DEFAULT NULL)
RETURNS integer
LANGUAGE sql AS $$
    WITH n AS (
        INSERT INTO shoal.job_errors (job_id, attempt, worker_id, error)
        SELECT j.id, coalesce(e.attempt, j.attempts), e.worker,
               shoal.clip(coalesce(e.error, j.last_error, 'failed'), 2048)
          FROM unnest(ids, errors, workers, attempts) AS e(id, error, worker, attempt)
          JOIN shoal.jobs j ON j.id = e.id
        RETURNING 1
    )
    SELECT count(*)::integer FROM n
$$;

-------------------------------------------------------------------------------
-- Statements that find jobs by id say `state IS NOT DISTINCT FROM x` (state is NOT NULL, so
-- it means `state = x`): the planner cannot match it to the partial indexes `WHERE state =
-- 'pending'`, and so always takes the primary key. On a table never analysed it took
-- jobs_ready instead, estimating a few rows and reading every pending one: 27 ms instead of
-- 0.5 ms per 50 outcomes at 200,000 pending jobs (the chaos suite's h-backlog).
-------------------------------------------------------------------------------
-- Outcomes with tracebacks: shoal.record (sql/004_held_claims.sql) plus fail_tracebacks,
-- parallel to fail_ids. Each failure adds a history row; a success deleted at once takes
-- the history of its earlier attempts along.
-------------------------------------------------------------------------------
CREATE FUNCTION shoal.record(p_worker text, p_queue text, p_held boolean, ok_ids bigint[], fail_ids bigint[],
                             fail_errors text[], fail_delays double precision[], cancel_ids bigint[],
                             fail_tracebacks text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    done bigint[];
    noted bigint[];
    n integer;
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
             WHERE j.id = ANY(ok_ids) AND j.queue = p_queue AND j.state IS NOT DISTINCT FROM held_state
               AND (p_held OR j.worker_id = p_worker);
        ELSE
            -- Jobs without history first, in a statement as cheap as before history existed;
            -- only when some id is left (a success after failed attempts, or not ours) a second
            -- statement deletes the others with their history.
            DELETE FROM shoal.jobs j
             WHERE j.id = ANY(ok_ids) AND j.queue = p_queue AND j.state IS NOT DISTINCT FROM held_state
               AND (p_held OR j.worker_id = p_worker) AND j.last_error IS NULL;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n < cardinality(ok_ids) THEN
                WITH d AS (
                    DELETE FROM shoal.jobs j
                     WHERE j.id = ANY(ok_ids) AND j.queue = p_queue AND j.state IS NOT DISTINCT FROM held_state
                       AND (p_held OR j.worker_id = p_worker) AND j.last_error IS NOT NULL
                    RETURNING j.id
                )
                SELECT array_agg(d.id) INTO noted FROM d;
                IF noted IS NOT NULL THEN
                    DELETE FROM shoal.job_errors e WHERE e.job_id = ANY(noted);
                END IF;
            END IF;
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
                   last_error = shoal.clip(coalesce(f.error, 'failed'), 2048),
                   worker_id = CASE WHEN f.delay IS NULL OR j.attempts + bump >= j.max_attempts
                                    THEN p_worker END
              FROM unnest(fail_ids, fail_errors, fail_delays, fail_tracebacks) AS f(id, error, delay, tb)
             WHERE j.id = f.id AND j.state IS NOT DISTINCT FROM held_state AND (p_held OR j.worker_id = p_worker)
            RETURNING j.id, j.state, j.attempts, j.last_error, f.tb
        ), h AS (
            -- statement_timestamp(): a held batch's transaction began before its jobs ran
            INSERT INTO shoal.job_errors (job_id, attempt, at, worker_id, error, traceback)
            SELECT f.id, f.attempts, statement_timestamp(), p_worker, f.last_error, shoal.clip(f.tb, 8192) FROM f
        )
        SELECT coalesce(done, '{}') || coalesce((SELECT array_agg(f.id) FROM f WHERE f.state = 'failed'), '{}')
          INTO done;
    END IF;

    IF cardinality(cancel_ids) > 0 THEN
        WITH c AS (
            UPDATE shoal.jobs j
               SET state = 'cancelled', finished_at = now(), attempts = j.attempts + bump,
                   last_error = coalesce(j.last_error, 'cancelled')
             WHERE j.id = ANY(cancel_ids) AND j.state IS NOT DISTINCT FROM held_state AND (p_held OR j.worker_id = p_worker)
            RETURNING j.id
        )
        SELECT coalesce(done, '{}') || coalesce((SELECT array_agg(c.id) FROM c), '{}') INTO done;
    END IF;

    PERFORM shoal.notify_done(done);
END $$;

-- The previous signatures stay for workers of the previous version during a rolling upgrade:
-- their failures get a history row without a traceback, and their successes clean up as above.
CREATE OR REPLACE FUNCTION shoal.record(p_worker text, p_queue text, p_held boolean, ok_ids bigint[],
                                        fail_ids bigint[], fail_errors text[], fail_delays double precision[],
                                        cancel_ids bigint[])
RETURNS void
LANGUAGE sql AS $$
    SELECT shoal.record(p_worker, p_queue, p_held, ok_ids, fail_ids, fail_errors, fail_delays, cancel_ids,
                        NULL::text[])
$$;

CREATE FUNCTION shoal.finish_held(p_worker text, p_queue text, p_batch bigint, p_started timestamptz,
                                  lease_ids bigint[], ok_ids bigint[], fail_ids bigint[], fail_errors text[],
                                  fail_delays double precision[], cancel_ids bigint[], fail_tracebacks text[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(lease_ids) > 0 THEN
        UPDATE shoal.jobs j
           SET state = 'running', attempts = j.attempts + 1, worker_id = p_worker, started_at = p_started
         WHERE j.id = ANY(lease_ids) AND j.state IS NOT DISTINCT FROM 'pending';
    END IF;
    PERFORM shoal.record(p_worker, p_queue, true, ok_ids, fail_ids, fail_errors, fail_delays, cancel_ids,
                         fail_tracebacks);
    DELETE FROM shoal.held_batches b WHERE b.worker_id = p_worker AND b.batch = p_batch;
END $$;

CREATE OR REPLACE FUNCTION shoal.finish_held(p_worker text, p_queue text, p_batch bigint, p_started timestamptz,
                                             lease_ids bigint[], ok_ids bigint[], fail_ids bigint[],
                                             fail_errors text[], fail_delays double precision[],
                                             cancel_ids bigint[])
RETURNS void
LANGUAGE sql AS $$
    SELECT shoal.finish_held(p_worker, p_queue, p_batch, p_started, lease_ids, ok_ids, fail_ids, fail_errors,
                             fail_delays, cancel_ids, NULL::text[])
$$;

-- Retention (sql/002_execution.sql) deletes the history of the jobs it deletes.
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
    RETURN deleted;
END $$;
