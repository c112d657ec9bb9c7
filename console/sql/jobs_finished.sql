-- Finished jobs of one queue and state, newest first (finished_at DESC, id DESC), through
-- jobs_finished; the time range is an index range on finished_at.
-- $1 queue, $2 state, $3 cursor finished_at, $4 cursor id (infinity and the largest bigint on the
-- first page), $5 task or NULL, $6 since, $7 until (-infinity, infinity for none), $8 rows scanned
-- at most, $9 page size + 1. No `$n IS NULL OR` around what the index applies: a generic plan
-- could not use it as an index condition.
SELECT * FROM (
    SELECT s.*, ($5::text IS NULL OR s.task = $5) AS matched, row_number() OVER () AS rn
      FROM (
        SELECT id, queue, task, state::text AS state, priority, run_at, attempts, max_attempts,
               left(last_error, 300) AS last_error, created_at, finished_at
          FROM shoal.jobs
         WHERE queue = $1 AND state IN ('succeeded', 'failed', 'cancelled') AND state = $2::shoal.job_state
           AND (finished_at, id) < ($3::timestamptz, $4::bigint)
           AND finished_at >= $6::timestamptz AND finished_at < $7::timestamptz
         ORDER BY finished_at DESC, id DESC LIMIT $8
      ) s
) w
WHERE w.matched OR w.rn = $8
LIMIT $9
