-- Batch enqueue through COPY.
--
-- For a large batch without unique keys the client skips shoal.enqueue_many (the server parsing
-- seven arrays and running one INSERT) and writes the rows with binary COPY instead. COPY fills
-- no defaults the client cannot see, so the client first asks for them here, in the same
-- transaction as the COPY: the ids (reserved from the jobs' identity sequence, as INSERT would
-- draw them; COPY writes explicit ids into a GENERATED ALWAYS column), the run_at of a job
-- without one (now(), the transaction's time, as INSERT's default) and each queue's default
-- max_attempts. Unknown queues raise SHQ01 here, before any row is written.
--
-- The wake-up is sent here too, before the COPY: NOTIFY is delivered at commit, and not at all
-- if the transaction (or the savepoint around this batch) rolls back.

CREATE FUNCTION shoal.enqueue_reserve(queues text[], n integer)
RETURNS TABLE (ids bigint[], default_run_at timestamptz, queue_names text[], queue_max_attempts integer[])
LANGUAGE plpgsql AS $$
DECLARE
    distinct_queues text[] := ARRAY(SELECT DISTINCT x FROM unnest(queues) AS x);
BEGIN
    PERFORM shoal.check_queues(distinct_queues);
    SELECT array_agg(q.name), array_agg(q.max_attempts) INTO queue_names, queue_max_attempts
      FROM shoal.queues q WHERE q.name = ANY (distinct_queues);
    -- nextval is concurrency-safe (another batch may interleave its ids with ours, never share
    -- them) and, evaluated in generate_series order, gives ascending ids in input order.
    ids := ARRAY(SELECT nextval('shoal.jobs_id_seq') FROM generate_series(1, n));
    default_run_at := now();
    PERFORM pg_notify('shoal_jobs', x) FROM unnest(distinct_queues) AS x;
    RETURN NEXT;
END $$;
