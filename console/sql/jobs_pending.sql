-- Pending jobs of one queue in claim order (priority DESC, run_at, id), through jobs_ready.
-- A mixed-direction key cannot be one row comparison, so the page after (p, r, i) is two index
-- ranges read one after the other: the rest of priority p after (r, i), then lower priorities.
-- $1 queue, $2 cursor priority (32768 on the first page), $3 cursor run_at, $4 cursor id,
-- $5 task or NULL, $6 since, $7 until (created_at) or NULL, $8 rows scanned at most, $9 page size + 1.
SELECT * FROM (
    SELECT s.*, (($5::text IS NULL OR s.task = $5)
                 AND ($6::timestamptz IS NULL OR s.created_at >= $6)
                 AND ($7::timestamptz IS NULL OR s.created_at < $7)) AS matched,
           row_number() OVER () AS rn
      FROM (
        (SELECT id, queue, task, state::text AS state, priority, run_at, attempts, max_attempts,
                left(last_error, 300) AS last_error, created_at, finished_at
           FROM shoal.jobs
          WHERE queue = $1 AND state = 'pending' AND priority = $2::integer AND (run_at, id) > ($3, $4)
          ORDER BY run_at, id LIMIT $8)
        UNION ALL
        (SELECT id, queue, task, state::text AS state, priority, run_at, attempts, max_attempts,
                left(last_error, 300) AS last_error, created_at, finished_at
           FROM shoal.jobs
          WHERE queue = $1 AND state = 'pending' AND priority < $2::integer
          ORDER BY priority DESC, run_at, id LIMIT $8)
        LIMIT $8
      ) s
) w
WHERE w.matched OR w.rn = $8
LIMIT $9
