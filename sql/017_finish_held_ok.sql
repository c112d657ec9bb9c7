-- A held batch whose every job succeeded is finished from its announcement.
--
-- shoal.finish_held takes the batch's outcomes as arrays, and the worker sent the ids of its
-- successes: for a fast queue's batch, 1,500 ids it had already sent once, in shoal.hold_batch.
-- asyncpg checks each element of an array parameter with an isinstance() against an abstract
-- base class before encoding it: 1,500 ids cost the worker ~0.26 ms of CPU per call, about
-- 0.2 us per job, a twentieth of what the worker spends on a no-op job. When every job of the
-- batch succeeded (the common case) and none stays to be leased, the batch's own row in
-- shoal.held_batches lists exactly those ids, and finishing deletes that row anyway.
--
-- Runs in the batch's transaction, as shoal.finish_held does. The row is the one the worker's
-- hold_batch committed before the jobs ran; nothing else changes or deletes the row of a
-- batch whose transaction is alive (hold_batch and rescue_held touch dead batches only). False,
-- with nothing written, if there is no such row: the caller then sends the outcomes.

CREATE FUNCTION shoal.finish_held_ok(p_worker text, p_queue text, p_batch bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    ok_ids bigint[];
BEGIN
    DELETE FROM shoal.held_batches b WHERE b.worker_id = p_worker AND b.batch = p_batch RETURNING b.ids INTO ok_ids;
    IF ok_ids IS NULL THEN
        RETURN false;
    END IF;
    PERFORM shoal.record(p_worker, p_queue, true, ok_ids, '{}', '{}', '{}', '{}', '{}');
    RETURN true;
END $$;
