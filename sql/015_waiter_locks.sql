-- Who waits for jobs is held in the lock manager, not in a table: an enqueue asks it without
-- a snapshot, a lock of its own or a function call.
--
-- 011_wake_gate.sql made enqueues notify only when a worker waits. Its test cost an enqueue a
-- shared advisory lock held until commit and a PL/pgSQL call reading shoal.workers in a fresh
-- snapshot: with 16 producers of single jobs, 30 us of PostgreSQL CPU per job on this 2-core
-- machine, against 100 us for the bare INSERT (bench/enqueue_concurrency.py).
--
-- Now a listener that waits for jobs of a queue (an idle worker; the autoscaler while the queue
-- has no ready job) holds the queue's waiter lock in shared mode on its LISTEN session. An
-- enqueue, once its transaction has an id, tries that lock in exclusive mode and lets it go at
-- once: taken means nobody waits, refused means somebody does (or, for an instant, another
-- producer trying it too: a notification too many, never one too few), and it notifies.
--
-- The race this must not lose: a producer tests before a worker takes the lock and commits
-- after the worker's last look at the queue. The producer's transaction had its id before the
-- test, so before the id the worker's transaction gets right after taking the lock
-- (shoal.wait_for_jobs): the worker sleeps only once every transaction with a smaller id has
-- ended (shoal.wake_barrier; never waits: false means "look again shortly") and it looked at
-- the queue once more, which then sees the producer's job. A producer that tests after the
-- lock is taken notifies. A transaction that stays open keeps the worker looking every
-- 10-250 ms until it ends; that is the price of any writer open at that moment, not only of
-- producers, and it is paid only by a worker that is going idle.
--
-- No snapshot is involved in the test, so an enqueue in a REPEATABLE READ or SERIALIZABLE
-- transaction follows the same rule. A waiter that dies releases its lock with its session.

CREATE FUNCTION shoal.waiter_key(p_queue text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtextextended('shoal.waiters:' || p_queue, 0)
$$;

-- True if it notified p_queue. Call it once the transaction has an id (queries.ENQUEUE_ONE calls
-- it in RETURNING, after its row is written). SQL and one expression, so that the planner inlines it.
CREATE FUNCTION shoal.wake_waiters(p_queue text) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN pg_try_advisory_lock(shoal.waiter_key(p_queue))
                THEN NOT pg_advisory_unlock(shoal.waiter_key(p_queue))
                ELSE pg_notify('shoal_jobs', p_queue) IS NOT NULL  -- void is not NULL: true
           END
$$;

-- In an enqueue's transaction (shoal.enqueue_many, shoal.enqueue_reserve): notify each queue
-- someone waits for. pg_current_xact_id gives the transaction its id first, wherever it is called.
CREATE OR REPLACE FUNCTION shoal.wake(p_queues text[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    q text;
BEGIN
    PERFORM pg_current_xact_id();
    FOREACH q IN ARRAY p_queues LOOP
        PERFORM shoal.wake_waiters(q);
    END LOOP;
END $$;

-- A listener starts waiting for jobs of p_queue: its session holds the lock (once per call: the
-- caller keeps count, and closes the session when it lost count). Returns the id this call's
-- transaction gets after taking the lock, for shoal.wake_barrier: every producer that tested
-- before the lock had its own id before, so a smaller one. (A snapshot's list of running
-- transactions would not do: it leaves out those whose id is at or past its xmax.)
CREATE FUNCTION shoal.wait_for_jobs(p_queue text) RETURNS xid8
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_lock_shared(shoal.waiter_key(p_queue));
    RETURN pg_current_xact_id();
END $$;

-- The listener no longer waits for jobs of p_queue: enqueues stop notifying for it.
CREATE FUNCTION shoal.stop_waiting(p_queue text) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_unlock_shared(shoal.waiter_key(p_queue))
$$;

-- True once every transaction whose id is smaller than p_since has ended: the oldest one still
-- running, if any, is newer.
DROP FUNCTION shoal.wake_barrier(text);
CREATE FUNCTION shoal.wake_barrier(p_since xid8) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT pg_snapshot_xmin(pg_current_snapshot()) > p_since
$$;

DROP FUNCTION shoal.wake_locked(text);
DROP FUNCTION shoal.worker_waiting(text, boolean);
DROP FUNCTION shoal.wake_key(text);
ALTER TABLE shoal.workers DROP COLUMN waiting;
