-- One job, one statement: the Python producers' single-job path (the web request's case).
--
-- shoal.enqueue_many re-checked in PL/pgSQL what the client had just checked and ran each step
-- as a statement of its own; 16 producers of single jobs reached 57% of a bare INSERT's rate,
-- PostgreSQL spending twice the bare INSERT's CPU per job (bench/enqueue_concurrency.py). The
-- clients (shoal.producer, shoal.sync) now send queries.ENQUEUE_ONE for a job without a unique
-- key: one INSERT ... SELECT that reads the queue's default, takes the queue's wake lock and
-- calls shoal.wake_locked below. No row back means an unknown queue. Plain-SQL producers keep
-- shoal.enqueue and its checks.
--
-- The wake gate's rule (011_wake_gate.sql) is unchanged: the lock is taken before `waiting` is
-- read. In one statement the statement's snapshot predates the lock, so the read is in a
-- VOLATILE function, which takes a fresh snapshot for each of its queries.

-- The caller holds p_queue's wake lock (shared): notify the queue if one of its workers waits
-- for jobs or it has no pending job. True if it notified. In a REPEATABLE READ or SERIALIZABLE
-- transaction every query reads the transaction's snapshot, taken at its first statement, perhaps
-- long before the lock: such an enqueue always notifies.
CREATE FUNCTION shoal.wake_locked(p_queue text) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed'
       OR EXISTS (SELECT FROM shoal.workers w WHERE w.queue = p_queue AND w.waiting IS NOT FALSE)
       OR NOT EXISTS (SELECT FROM shoal.jobs j WHERE j.queue = p_queue AND j.state = 'pending') THEN
        PERFORM pg_notify('shoal_jobs', p_queue);
        RETURN true;
    END IF;
    RETURN false;
END $$;

CREATE OR REPLACE FUNCTION shoal.wake(p_queues text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    -- One queue at a time, so that each test is an index probe with a parameter: a join
    -- against unnest() was planned as a scan of every pending job.
    FOREACH q IN ARRAY p_queues LOOP
        PERFORM pg_advisory_xact_lock_shared(shoal.wake_key(q));
        PERFORM shoal.wake_locked(q);
    END LOOP;
END $$;
