-- Operations: `shoal stats` in constant time.
--
-- Counting every row took 0.8-1.6 s at 1M jobs and 10 s+ at 10M, long enough for `shoal up`'s
-- status query to hit the autoscaler pool's statement_timeout. Each count is now exact up to a
-- cap, walked on an index with LIMIT cap + 1 (like shoal.ready_count); past the cap it is the
-- planner's estimate, which extended statistics on (queue, state) make per-queue accurate.
-- Each count says which it is: 'exact', 'estimated', or 'more_than' (more than the number given,
-- when the statistics lag behind, e.g. before the first ANALYZE). The walks share a time budget,
-- so the call stays within tens of milliseconds however many queues and jobs there are.
-- Known weakness: the planner takes run_at as independent of state, so past the cap the split of
-- pending jobs into ready and scheduled is rough (3x off in bench/stats_latency.py's mix).

-- Per-(queue, state) frequencies for the estimates; without them the planner multiplies the
-- queue's and the state's frequencies as if they were independent.
CREATE STATISTICS shoal.jobs_queue_state (mcv) ON queue, state FROM shoal.jobs;

-- The planner's row estimate for a query: reltuples scaled to the table's current size and
-- the statistics' selectivity. Plans, never runs, the query: microseconds at any table size.
CREATE FUNCTION shoal.estimate_rows(p_query text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    plan json;
BEGIN
    EXECUTE 'EXPLAIN (FORMAT JSON) ' || p_query INTO plan;
    RETURN (plan -> 0 -> 'Plan' ->> 'Plan Rows')::numeric::bigint;
END $$;

-- Jobs of one queue in one state (ready, scheduled, running, succeeded, failed, cancelled),
-- counted on an index up to p_cap + 1. Ready and scheduled are counted per priority: jobs_ready
-- orders run_at within a priority only, so one scan for "ready" would step over every scheduled
-- job (and the other way round) before its LIMIT stopped it. Sequential and bitmap scans are off:
-- both read every matching row before the LIMIT applies.
CREATE FUNCTION shoal.state_count(p_queue text, p_state text, p_cap integer) RETURNS bigint
LANGUAGE plpgsql STABLE
SET enable_seqscan = off
SET enable_bitmapscan = off
AS $$
DECLARE
    t timestamptz := now();
    p smallint;
    priorities integer := 0;
    got bigint;
    total bigint := 0;
BEGIN
    -- Each state spelled out: a partial index is only chosen for a literal state, not a parameter.
    CASE p_state
    WHEN 'ready', 'scheduled' THEN
        NULL;
    WHEN 'running' THEN
        RETURN (SELECT count(*) FROM (SELECT 1 FROM shoal.jobs j
                 WHERE j.queue = p_queue AND j.state = 'running' LIMIT p_cap + 1) x);
    WHEN 'succeeded' THEN
        RETURN (SELECT count(*) FROM (SELECT 1 FROM shoal.jobs j
                 WHERE j.queue = p_queue AND j.state = 'succeeded' LIMIT p_cap + 1) x);
    WHEN 'failed' THEN
        RETURN (SELECT count(*) FROM (SELECT 1 FROM shoal.jobs j
                 WHERE j.queue = p_queue AND j.state = 'failed' LIMIT p_cap + 1) x);
    WHEN 'cancelled' THEN
        RETURN (SELECT count(*) FROM (SELECT 1 FROM shoal.jobs j
                 WHERE j.queue = p_queue AND j.state = 'cancelled' LIMIT p_cap + 1) x);
    END CASE;  -- any other state: CASE_NOT_FOUND
    SELECT j.priority INTO p FROM shoal.jobs j
     WHERE j.queue = p_queue AND j.state = 'pending' ORDER BY j.priority DESC LIMIT 1;
    WHILE p IS NOT NULL AND total <= p_cap LOOP
        priorities := priorities + 1;
        IF priorities > 64 THEN  -- many distinct priorities (rare): the rest in one scan
            IF p_state = 'ready' THEN
                SELECT count(*) INTO got FROM (SELECT 1 FROM shoal.jobs j WHERE j.queue = p_queue
                   AND j.state = 'pending' AND j.priority <= p AND j.run_at <= t LIMIT p_cap + 1 - total) x;
            ELSE
                SELECT count(*) INTO got FROM (SELECT 1 FROM shoal.jobs j WHERE j.queue = p_queue
                   AND j.state = 'pending' AND j.priority <= p AND j.run_at > t LIMIT p_cap + 1 - total) x;
            END IF;
            RETURN total + got;
        END IF;
        IF p_state = 'ready' THEN
            SELECT count(*) INTO got FROM (SELECT 1 FROM shoal.jobs j WHERE j.queue = p_queue
               AND j.state = 'pending' AND j.priority = p AND j.run_at <= t LIMIT p_cap + 1 - total) x;
        ELSE
            SELECT count(*) INTO got FROM (SELECT 1 FROM shoal.jobs j WHERE j.queue = p_queue
               AND j.state = 'pending' AND j.priority = p AND j.run_at > t LIMIT p_cap + 1 - total) x;
        END IF;
        total := total + got;
        SELECT j.priority INTO p FROM shoal.jobs j
         WHERE j.queue = p_queue AND j.state = 'pending' AND j.priority < p ORDER BY j.priority DESC LIMIT 1;
    END LOOP;
    RETURN total;
END $$;

-- Jobs by queue and state, one row per (queue, state), in bounded time. First every count is
-- walked on its index up to 1,000, then each one past that is compared with the planner's
-- estimate: far beyond p_cap, the estimate is the answer, else the walk goes on to p_cap. Walks
-- visit the heap where the visibility map is not yet set (a backlog inserted since the last
-- VACUUM), about 1 us a row: a walk to p_cap starts only if, at the speed the first walks went,
-- it ends within p_budget_ms, and once the budget is spent the remaining counts are estimates,
-- so many queues or a fresh backlog cannot make the call slow. Every count says which it is.
CREATE FUNCTION shoal.queue_stats(p_queue text DEFAULT NULL, p_cap integer DEFAULT 10000,
                                  p_budget_ms integer DEFAULT 30)
RETURNS TABLE (queue text, state text, n bigint, kind text)
LANGUAGE plpgsql AS $$
DECLARE
    states constant text[] := ARRAY['ready', 'scheduled', 'running', 'succeeded', 'failed', 'cancelled'];
    first_cap integer := least(p_cap, 1000);
    started timestamptz := clock_timestamp();
    deadline timestamptz := clock_timestamp() + make_interval(secs => p_budget_ms / 1000.0);
    per_row interval;
    qs text[];
    walked bigint[] := '{}';
    i integer;
    c bigint;
    est bigint;
    filter text;
BEGIN
    IF p_cap IS NULL OR p_cap < 1 THEN
        RAISE EXCEPTION 'cap: must be >= 1, got %', p_cap USING ERRCODE = '22023';
    END IF;
    qs := ARRAY(SELECT x.name FROM shoal.queues x WHERE p_queue IS NULL OR x.name = p_queue ORDER BY x.name);
    FOR i IN 0 .. 6 * coalesce(array_length(qs, 1), 0) - 1 LOOP  -- every count, cheaply
        walked := walked || CASE WHEN clock_timestamp() < deadline
                                 THEN shoal.state_count(qs[i / 6 + 1], states[i % 6 + 1], first_cap) END;
    END LOOP;
    per_row := (clock_timestamp() - started) / greatest((SELECT sum(x) FROM unnest(walked) x), 1);
    FOR i IN 0 .. 6 * coalesce(array_length(qs, 1), 0) - 1 LOOP
        queue := qs[i / 6 + 1];
        state := states[i % 6 + 1];
        n := walked[i + 1];
        kind := 'exact';
        IF n IS NULL OR n > first_cap THEN
            filter := CASE state WHEN 'ready' THEN 'state = ''pending'' AND run_at <= now()'
                                 WHEN 'scheduled' THEN 'state = ''pending'' AND run_at > now()'
                                 ELSE format('state = %L', state) END;
            est := shoal.estimate_rows(format('SELECT 1 FROM shoal.jobs WHERE queue = %L AND %s', queue, filter));
            c := CASE WHEN n IS NOT NULL AND est <= 2 * p_cap AND clock_timestamp() + per_row * p_cap < deadline
                      THEN shoal.state_count(queue, state, p_cap) END;
            IF c <= p_cap THEN
                n := c;
            ELSIF n IS NULL OR est > greatest(c, n) THEN  -- an estimate is all we have, or the best
                n := greatest(est, 0);
                kind := 'estimated';
            ELSE
                n := greatest(c, n) - 1;  -- a walk stops one past its cap
                kind := 'more_than';
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
