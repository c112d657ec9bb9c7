-- Throughput from what workers already know: each heartbeat carries the worker's running totals
-- of handler runs finished and the seconds they took, and keeps the previous beat's, so any
-- reader gets every live worker's recent rate (runs between its last two beats) from one row per
-- worker, with no write per job and no state of its own. The console's overview shows it (deleted
-- succeeded jobs leave no other trace), and the autoscaler can learn from it how fast a replica
-- drains.

ALTER TABLE shoal.workers
    ADD COLUMN runs bigint NOT NULL DEFAULT 0,                    -- handler runs finished (any outcome)
    ADD COLUMN busy_seconds double precision NOT NULL DEFAULT 0,  -- and their summed duration
    ADD COLUMN prev_runs bigint NOT NULL DEFAULT 0,               -- the same at the previous beat
    ADD COLUMN prev_busy_seconds double precision NOT NULL DEFAULT 0,
    ADD COLUMN prev_heartbeat_at timestamptz;

-- The beat of a worker that reports its totals. (The 4-argument beat stays for workers of an
-- older release during a rolling upgrade: it moves heartbeat_at only, so their rows report no rate.)
CREATE FUNCTION shoal.heartbeat(p_worker text, p_queue text, p_hostname text, p_pid integer,
                                p_runs bigint, p_busy_seconds double precision)
RETURNS TABLE (id bigint, cancel_requested boolean)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shoal.workers AS w (id, queue, hostname, pid, runs, busy_seconds)
    VALUES (p_worker, p_queue, p_hostname, p_pid, p_runs, p_busy_seconds)
    ON CONFLICT ON CONSTRAINT workers_pkey DO UPDATE
       SET prev_runs = w.runs, prev_busy_seconds = w.busy_seconds, prev_heartbeat_at = w.heartbeat_at,
           runs = excluded.runs, busy_seconds = excluded.busy_seconds, heartbeat_at = now();
    RETURN QUERY
    SELECT j.id, j.cancel_requested FROM shoal.jobs j
     WHERE j.queue = p_queue AND j.state = 'running' AND j.worker_id = p_worker;
END $$;

-- A queue's recent throughput: live workers (a beat within p_live_seconds) that have beaten
-- twice, their summed runs per second between their last two beats, and the mean seconds per run
-- over those intervals (NULL when no run finished). `reporting` counts those workers.
CREATE FUNCTION shoal.queue_throughput(p_queue text, p_live_seconds double precision)
RETURNS TABLE (reporting integer, runs_per_second double precision, seconds_per_run double precision)
LANGUAGE sql STABLE AS $$
    SELECT count(*)::integer,
           coalesce(sum((w.runs - w.prev_runs) / extract(epoch FROM w.heartbeat_at - w.prev_heartbeat_at)), 0),
           sum(w.busy_seconds - w.prev_busy_seconds) / nullif(sum(w.runs - w.prev_runs), 0)
      FROM shoal.workers w
     WHERE w.queue = p_queue AND w.heartbeat_at > now() - make_interval(secs => p_live_seconds)
       AND w.heartbeat_at > w.prev_heartbeat_at AND w.runs >= w.prev_runs
$$;
