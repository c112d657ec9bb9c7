-- Running jobs of one queue, newest first, through jobs_running: at most the queue's workers
-- times their concurrency, so sorting them is cheap.
-- $1 queue, $2 cursor id (the largest bigint on the first page), $3 task, $4 since, $5 until (created_at) or NULL,
-- $6 rows scanned at most, $7 page size + 1.
SELECT * FROM (
    SELECT s.*, (($3::text IS NULL OR s.task = $3)
                 AND ($4::timestamptz IS NULL OR s.created_at >= $4)
                 AND ($5::timestamptz IS NULL OR s.created_at < $5)) AS matched,
           row_number() OVER () AS rn
      FROM (
        SELECT id, queue, task, state::text AS state, priority, run_at, attempts, max_attempts,
               left(last_error, 300) AS last_error, created_at, finished_at
          FROM shoal.jobs
         WHERE queue = $1 AND state = 'running' AND id < $2::bigint
         ORDER BY id DESC LIMIT $6
      ) s
) w
WHERE w.matched OR w.rn = $6
LIMIT $7
