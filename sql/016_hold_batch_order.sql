-- Announcing a held batch compares it only with dead batches, as 004_held_claims.sql meant to.
--
-- shoal.hold_batch looks for listed batches whose transaction is no longer in progress and
-- that share jobs with the new one. Its filter was `pg_xact_status(xact) IS DISTINCT FROM
-- 'in progress' AND ids && p_ids`, and the planner evaluates the cheaper-looking qual first:
-- the overlap test, which compares every id with every id (1,500 x 1,500 for a fast queue's
-- batch). So each announcement compared its ids with every other open batch's, alive ones
-- included: 5.4 ms of PostgreSQL CPU per announcement beside one other open batch, against
-- 0.2 ms alone. A CASE fixes the order: only a batch whose transaction has ended is compared.

CREATE OR REPLACE FUNCTION shoal.hold_batch(p_worker text, p_batch bigint, p_xact xid8, p_ids bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO shoal.held_batches (worker_id, batch, xact, ids) VALUES (p_worker, p_batch, p_xact, p_ids);
    FOR r IN
        SELECT b.worker_id, b.batch, b.ids FROM shoal.held_batches b
         WHERE CASE WHEN pg_xact_status(b.xact) IS DISTINCT FROM 'in progress' THEN b.ids && p_ids END
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
