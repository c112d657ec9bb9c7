-- Validation of jobs enqueued from SQL: the rules of core/names.py and core/validation.py.
--
-- Before this, shoal.enqueue(NULL, 't') returned NULL and wrote nothing, enqueue_many dropped
-- rows with a NULL queue and padded short arrays, and names that Python refuses went in. Now
-- every input row is checked and a bad one raises SQLSTATE SHV01 with the message
-- '<argument>: <problem>', the fix as HINT, and the argument (e.g. 'tasks[2]') as COLUMN.
-- tests/core/test_validation.py feeds the same inputs to Python and SQL and expects the same answers.
--
-- No CHECK constraints on shoal.jobs: PostgreSQL re-checks them on every UPDATE, so a job
-- written under the older, looser rules would break the claim that updates it, and a regex
-- would run at every claim and completion. The functions below are the way in; the COPY path
-- (sql/003_enqueue_copy.sql) is fed by the Python client, which applies the same rules.

-- The rules of core/names.py: QUEUE_NAME (also shoal.queues' CHECK and the Queue CRD's pattern),
-- TASK_NAME and TASK_NAME_MAX_LENGTH. The task length is not a bounded repeat in the pattern:
-- PostgreSQL's regex engine takes ~15 us per match of `{0,199}`, ~0.3 us without it.
CREATE FUNCTION shoal.queue_name_pattern() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT '^[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?$'::text $$;

CREATE FUNCTION shoal.task_name_pattern() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT '^[A-Za-z_][A-Za-z0-9_.:-]*$'::text $$;

CREATE FUNCTION shoal.task_name_max_length() RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT 200 $$;

-- Raise the validation error: the client turns SHV01 into shoal.errors.ValidationError(field).
CREATE FUNCTION shoal.invalid(field text, problem text, hint text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'SHV01', MESSAGE = field || ': ' || problem, HINT = hint, COLUMN = field;
END $$;

CREATE FUNCTION shoal.check_queue(queue text, field text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    hint constant text := 'use 1-128 lowercase letters, digits, ''.'', ''_'' or ''-'', starting and ending '
                          'with a letter or digit (e.g. ''emails'' or ''prod.emails'')';
BEGIN
    IF queue IS NULL THEN
        PERFORM shoal.invalid(field, 'no queue given', hint);
    ELSIF queue !~ shoal.queue_name_pattern() THEN
        PERFORM shoal.invalid(field, format('invalid queue name %L', queue), hint);
    END IF;
END $$;

-- One job's values, in the order the Python client checks them. `job` (1-based) names the
-- element of enqueue_many's arrays ('tasks[2]'); NULL names shoal.enqueue's arguments ('task').
CREATE FUNCTION shoal.check_job(queue text, task text, priority integer, run_at timestamptz,
                                max_attempts integer, unique_key text, job bigint DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    at text := CASE WHEN job IS NULL THEN '' ELSE format('s[%s]', job) END;
    task_hint constant text := 'give the name the handler was registered with';
BEGIN
    IF queue IS NULL OR queue !~ shoal.queue_name_pattern() THEN
        PERFORM shoal.check_queue(queue, 'queue' || at);
    END IF;
    IF task IS NULL THEN
        PERFORM shoal.invalid('task' || at, 'no task given', task_hint);
    ELSIF task = '' THEN
        PERFORM shoal.invalid('task' || at, 'task name is empty', task_hint);
    ELSIF task !~ shoal.task_name_pattern() OR length(task) > shoal.task_name_max_length() THEN
        PERFORM shoal.invalid('task' || at, format('invalid task name %L', task),
                              'start with a letter or ''_'', then up to 199 letters, digits, ''_'', ''.'', '':'' or ''-''');
    END IF;
    IF priority IS NULL OR priority NOT BETWEEN -32768 AND 32767 THEN
        PERFORM shoal.invalid('priority' || at,
                              CASE WHEN priority IS NULL THEN 'no priority given'
                                   ELSE format('priority %s is out of range', priority) END,
                              'use an integer from -32768 to 32767 (higher runs first; the default is 0)');
    END IF;
    IF max_attempts < 1 THEN
        PERFORM shoal.invalid('max_attempts' || at, format('max_attempts %s is out of range', max_attempts),
                              'use an integer from 1 to 2147483647, or leave it unset for the queue''s default');
    END IF;
    IF unique_key = '' THEN
        PERFORM shoal.invalid('unique_key' || at, 'unique_key is empty',
                              'use a non-empty string without NUL characters, or leave it unset for no key');
    END IF;
    -- Strictly inside Python's datetime range: its drivers read nothing else, and asyncpg writes its
    -- first and last microsecond as -infinity and infinity.
    IF NOT (run_at > timestamptz '0001-01-01 00:00:00+00' AND run_at < timestamptz '9999-12-31 23:59:59.999999+00') THEN
        PERFORM shoal.invalid('run_at' || at, format('run_at %s is out of range', run_at),
                              'use a timezone-aware time within years 1-9999 UTC, or leave it unset for now');
    END IF;
END $$;

-- enqueue_many's arguments: queues and tasks are required and set the number of jobs; the
-- optional arrays are NULL (all defaults) or have one element per job (NULL: the default).
-- The common case (all valid) costs a few array scans; a bad batch is walked row by row
-- (check_rows) to name the first bad value as Python would.
CREATE FUNCTION shoal.check_batch(queues text[], tasks text[], payloads jsonb[], priorities smallint[],
                                  run_ats timestamptz[], max_attemptss integer[], unique_keys text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n integer := cardinality(queues);
    arg text;
    len integer;
    dims integer;
    others text[];
BEGIN
    IF queues IS NULL OR tasks IS NULL
       OR greatest(array_ndims(queues), array_ndims(tasks), array_ndims(payloads), array_ndims(priorities),
                   array_ndims(run_ats), array_ndims(max_attemptss), array_ndims(unique_keys)) > 1
       OR cardinality(tasks) <> n OR cardinality(payloads) <> n OR cardinality(priorities) <> n
       OR cardinality(run_ats) <> n OR cardinality(max_attemptss) <> n OR cardinality(unique_keys) <> n THEN
        FOR arg, len, dims IN VALUES
            ('queues', cardinality(queues), array_ndims(queues)), ('tasks', cardinality(tasks), array_ndims(tasks)),
            ('payloads', cardinality(payloads), array_ndims(payloads)),
            ('priorities', cardinality(priorities), array_ndims(priorities)),
            ('run_ats', cardinality(run_ats), array_ndims(run_ats)),
            ('max_attemptss', cardinality(max_attemptss), array_ndims(max_attemptss)),
            ('unique_keys', cardinality(unique_keys), array_ndims(unique_keys))
        LOOP
            IF len IS NULL THEN
                IF arg IN ('queues', 'tasks') THEN
                    PERFORM shoal.invalid(arg, arg || ' is NULL', 'pass an array with one element per job');
                END IF;
            ELSIF dims > 1 THEN
                PERFORM shoal.invalid(arg, format('%s has %s dimensions', arg, dims), 'pass a one-dimensional array');
            ELSIF len <> n THEN
                PERFORM shoal.invalid(arg, format('%s has %s elements, queues has %s', arg, len, n),
                                      CASE WHEN arg = 'tasks' THEN 'pass one element per job'
                                           ELSE 'pass one element per job (NULL for the default), or NULL for all defaults' END);
            END IF;
        END LOOP;
    END IF;
    -- Queue names are not matched here: enqueue_many finds a bad one among the unknown queues.
    -- A batch has few task names: the first is matched once, and only the tasks that differ
    -- from it one by one (a regex per row was 7% of a 500-job call).
    -- (Expressions without a subquery: PL/pgSQL evaluates those without the executor.)
    others := array_remove(tasks, tasks[1]);
    IF array_position(queues, NULL) IS NULL AND array_position(tasks, NULL) IS NULL
       AND (n = 0 OR (tasks[1] ~ shoal.task_name_pattern() AND length(tasks[1]) <= shoal.task_name_max_length()))
       AND (0 >= ANY (max_attemptss)) IS NOT TRUE
       AND ('' = ANY (unique_keys)) IS NOT TRUE
       AND (timestamptz '0001-01-01 00:00:00+00' >= ANY (run_ats)) IS NOT TRUE
       AND (timestamptz '9999-12-31 23:59:59.999999+00' <= ANY (run_ats)) IS NOT TRUE THEN
        IF cardinality(others) = 0 THEN
            RETURN;
        END IF;
        IF NOT EXISTS (SELECT FROM unnest(others) AS t
                        WHERE t !~ shoal.task_name_pattern() OR length(t) > shoal.task_name_max_length()) THEN
            RETURN;
        END IF;
    END IF;
    PERFORM shoal.check_rows(queues, tasks, priorities, run_ats, max_attemptss, unique_keys);
END $$;

-- Every row of a batch in order, raising for the first bad one (the slow path of check_batch).
CREATE FUNCTION shoal.check_rows(queues text[], tasks text[], priorities smallint[], run_ats timestamptz[],
                                 max_attemptss integer[], unique_keys text[])
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT * FROM unnest(queues, tasks, priorities, run_ats, max_attemptss, unique_keys)
                      WITH ORDINALITY AS i(queue, task, priority, run_at, max_attempts, unique_key, ord)
         ORDER BY i.ord
    LOOP
        PERFORM shoal.check_job(r.queue, r.task, coalesce(r.priority, 0), r.run_at, r.max_attempts,
                                r.unique_key, r.ord);
    END LOOP;
END $$;

-------------------------------------------------------------------------------
-- The enqueue functions of 001 and 003, same signatures, checking their input first.
-------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION shoal.enqueue_many(
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

-- One job. A NULL payload, run_at, max_attempts or unique_key takes the default, as an omitted
-- one does; a NULL queue, task or priority is an error (it was a silently dropped job).
CREATE OR REPLACE FUNCTION shoal.enqueue(
    queue        text,
    task         text,
    payload      jsonb       DEFAULT '{}'::jsonb,
    priority     integer     DEFAULT 0,
    run_at       timestamptz DEFAULT NULL,
    max_attempts integer     DEFAULT NULL,
    unique_key   text        DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM shoal.check_job(queue, task, priority, run_at, max_attempts, unique_key);
    RETURN (SELECT e.id FROM shoal.enqueue_many(
        ARRAY[queue], ARRAY[task], ARRAY[payload], ARRAY[priority::smallint],
        ARRAY[run_at], ARRAY[max_attempts], ARRAY[unique_key]) AS e);
END $$;

-- Ids and defaults for a COPY batch (sql/003_enqueue_copy.sql): `queues` are the batch's
-- distinct queues, `n` the number of jobs.
CREATE OR REPLACE FUNCTION shoal.enqueue_reserve(queues text[], n integer)
RETURNS TABLE (ids bigint[], default_run_at timestamptz, queue_names text[], queue_max_attempts integer[])
LANGUAGE plpgsql AS $$
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
    PERFORM pg_notify('shoal_jobs', x) FROM unnest(distinct_queues) AS x;
    RETURN NEXT;
END $$;
