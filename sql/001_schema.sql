-- Shoal schema, version 1. Every object lives in the `shoal` schema.
-- Forward-only: never edit a released migration, add the next number instead.

CREATE TABLE shoal.queues (
    name               text PRIMARY KEY
                       CHECK (name ~ '^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$'),
    paused             boolean     NOT NULL DEFAULT false,
    -- Global flow control, enforced in shoal.claim() under a lock on this row.
    concurrency_limit  integer     CHECK (concurrency_limit IS NULL OR concurrency_limit > 0),
    rate_limit         integer     CHECK (rate_limit IS NULL OR rate_limit > 0),
    rate_period        interval    CHECK (rate_period IS NULL OR rate_period > interval '0'),
    -- Defaults for jobs that do not say otherwise.
    max_attempts       integer     NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    -- Retention: succeeded jobs are deleted at once when 0; failed/cancelled kept forever when NULL.
    keep_succeeded     interval    NOT NULL DEFAULT interval '0',
    keep_failed        interval,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((rate_limit IS NULL) = (rate_period IS NULL))
);

CREATE TYPE shoal.job_state AS ENUM ('pending', 'running', 'succeeded', 'failed', 'cancelled');

-- Workers announce themselves and beat here, once per worker rather than once per job:
-- a job's owner is alive while its row here is fresh.
CREATE TABLE shoal.workers (
    id            text PRIMARY KEY,
    queue         text        NOT NULL,
    hostname      text        NOT NULL DEFAULT '',
    pid           integer     NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);

CREATE TABLE shoal.jobs (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue             text            NOT NULL,
    task              text            NOT NULL CHECK (task <> ''),
    payload           jsonb           NOT NULL DEFAULT '{}'::jsonb,
    state             shoal.job_state NOT NULL DEFAULT 'pending',
    priority          smallint        NOT NULL DEFAULT 0,
    run_at            timestamptz     NOT NULL DEFAULT now(),
    attempts          integer         NOT NULL DEFAULT 0,
    max_attempts      integer         NOT NULL CHECK (max_attempts > 0),
    last_error        text,
    worker_id         text,
    unique_key        text,
    cancel_requested  boolean         NOT NULL DEFAULT false,
    created_at        timestamptz     NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz
) WITH (
    -- A queue table churns: rows are inserted, updated twice and deleted within seconds.
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);

-- Claiming and counting ready jobs walk this index in claim order and stop at LIMIT:
-- the cost is independent of how many jobs are scheduled, running or finished.
CREATE INDEX jobs_ready ON shoal.jobs (queue, priority DESC, run_at, id) WHERE state = 'pending';
-- Running jobs per queue (concurrency cap, autoscaler) and per worker (rescue, release).
CREATE INDEX jobs_running ON shoal.jobs (queue, worker_id) WHERE state = 'running';
-- Unique jobs: one live job per (queue, key).
CREATE UNIQUE INDEX jobs_unique_live ON shoal.jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('pending', 'running');
-- Retention pruning and `shoal jobs list --state failed`.
CREATE INDEX jobs_finished ON shoal.jobs (queue, state, finished_at)
    WHERE state IN ('succeeded', 'failed', 'cancelled');

-- Sliding-window log for rate-limited queues: one row per claim (not per job), pruned as it ages out.
CREATE TABLE shoal.rate_log (
    queue       text        NOT NULL,
    started_at  timestamptz NOT NULL,
    n           integer     NOT NULL
);
CREATE INDEX rate_log_queue ON shoal.rate_log (queue, started_at);

-- Cron ticks already enqueued: the primary key makes each (cron, tick) fire exactly once,
-- whichever operator replica gets there first, across restarts.
CREATE TABLE shoal.cron_ticks (
    cron_name  text        NOT NULL,
    tick       timestamptz NOT NULL,
    job_id     bigint,
    fired_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (cron_name, tick)
);

-------------------------------------------------------------------------------
-- Enqueue. One statement for one job or many; raises on an unknown queue.
-------------------------------------------------------------------------------
CREATE FUNCTION shoal.check_queues(queues text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    missing text;
BEGIN
    SELECT q INTO missing
      FROM unnest(queues) AS q
     WHERE NOT EXISTS (SELECT 1 FROM shoal.queues WHERE name = q)
     LIMIT 1;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'queue: unknown queue "%"', missing
            USING ERRCODE = 'SHQ01',
                  HINT = format('declare it first with `shoal queue create %s` or a Queue resource', missing);
    END IF;
END $$;

-- Batch enqueue: parallel arrays, one row per index; NULL entries take the defaults.
-- Returns one row per input, in input order. A unique key already live in the queue
-- returns the existing job's id (created = false) instead of adding a duplicate.
CREATE FUNCTION shoal.enqueue_many(
    queues        text[],
    tasks         text[],
    payloads      jsonb[],
    priorities    smallint[],
    run_ats       timestamptz[],
    max_attemptss integer[],
    unique_keys   text[]
) RETURNS TABLE (id bigint, created boolean)
LANGUAGE plpgsql AS $$
DECLARE
    distinct_queues text[] := ARRAY(SELECT DISTINCT x FROM unnest(queues) AS x);
    q text;
    r record;
    new_id bigint;
BEGIN
    PERFORM shoal.check_queues(distinct_queues);
    IF unique_keys IS NULL OR cardinality(array_remove(unique_keys, NULL)) = 0 THEN
        -- Fast path, no unique keys: one set-based INSERT, ids in input order.
        RETURN QUERY
        INSERT INTO shoal.jobs AS j (queue, task, payload, priority, run_at, max_attempts)
        SELECT i.queue, i.task, coalesce(i.payload, '{}'::jsonb), coalesce(i.priority, 0),
               coalesce(i.run_at, now()), coalesce(i.max_attempts, qq.max_attempts)
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
                INSERT INTO shoal.jobs AS j (queue, task, payload, priority, run_at, max_attempts, unique_key)
                VALUES (r.queue, r.task, coalesce(r.payload, '{}'::jsonb), coalesce(r.priority, 0),
                        coalesce(r.run_at, now()), coalesce(r.max_attempts, r.default_attempts), r.unique_key)
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

-- One job, for producers in any language: SELECT shoal.enqueue('emails', 'send', '{"to": "a@b.c"}');
CREATE FUNCTION shoal.enqueue(
    queue        text,
    task         text,
    payload      jsonb       DEFAULT '{}'::jsonb,
    priority     integer     DEFAULT 0,
    run_at       timestamptz DEFAULT NULL,
    max_attempts integer     DEFAULT NULL,
    unique_key   text        DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    SELECT id FROM shoal.enqueue_many(
        ARRAY[queue], ARRAY[task], ARRAY[payload], ARRAY[priority::smallint],
        ARRAY[run_at], ARRAY[max_attempts], ARRAY[unique_key]) LIMIT 1
$$;
