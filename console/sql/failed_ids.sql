-- The failed jobs a bulk retry takes: of one queue (or all), one task (or all), finished in a
-- range (or any), newest first, at most $5.
SELECT id FROM shoal.jobs
 WHERE state = 'failed'
   AND ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR task = $2)
   AND ($3::timestamptz IS NULL OR finished_at >= $3) AND ($4::timestamptz IS NULL OR finished_at < $4)
 ORDER BY id DESC LIMIT $5
