-- Any filter without a queue and a state: newest first by the primary key, at most $7 rows
-- scanned per page (the filters are checked on those rows; the page may come back short).
-- $1 cursor id (the largest bigint on the first page), $2 queue, $3 state, $4 task, $5 since, $6 until
-- (created_at), each NULL for any, $7 rows scanned at most, $8 page size + 1.
SELECT * FROM (
    SELECT s.*, (($2::text IS NULL OR s.queue = $2)
                 AND ($3::text IS NULL OR s.state = $3)
                 AND ($4::text IS NULL OR s.task = $4)
                 AND ($5::timestamptz IS NULL OR s.created_at >= $5)
                 AND ($6::timestamptz IS NULL OR s.created_at < $6)) AS matched,
           row_number() OVER () AS rn
      FROM (
        SELECT id, queue, task, state::text AS state, priority, run_at, attempts, max_attempts,
               left(last_error, 300) AS last_error, created_at, finished_at
          FROM shoal.jobs
         WHERE id < $1::bigint
         ORDER BY id DESC LIMIT $7
      ) s
) w
WHERE w.matched OR w.rn = $7
LIMIT $8
