-- Live (pending or running) jobs with this unique key, in every queue, through jobs_unique_live:
-- the key is unique among those per queue. Finished jobs keep their key but no index covers them.
SELECT j.id, j.queue
  FROM shoal.queues q
 CROSS JOIN LATERAL (SELECT id, queue FROM shoal.jobs j
                      WHERE j.queue = q.name AND j.unique_key = $1
                        AND j.state IN ('pending', 'running')
                      LIMIT 50) j  -- the LIMIT keeps the lateral: one (queue, unique_key) probe per queue
 ORDER BY j.id DESC
 LIMIT 50
