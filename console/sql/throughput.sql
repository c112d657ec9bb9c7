-- Jobs of each queue finished within the last $1 seconds, counted up to $2 per state: one range
-- of jobs_finished per state (the state spelled out, so that each is an index range on
-- (queue, state, finished_at) rather than a walk of all the queue's finished jobs).
-- Succeeded jobs of a queue with keep_succeeded 0 are deleted as they finish and are not there:
-- for such queues this counts failed and cancelled jobs only (keeps_succeeded says which).
SELECT q.name AS queue,
       (SELECT count(*) FROM (SELECT 1 FROM shoal.jobs j WHERE j.queue = q.name AND j.state = 'succeeded'
                                AND j.finished_at > now() - make_interval(secs => $1::float8) LIMIT $2) x)
     + (SELECT count(*) FROM (SELECT 1 FROM shoal.jobs j WHERE j.queue = q.name AND j.state = 'failed'
                                AND j.finished_at > now() - make_interval(secs => $1::float8) LIMIT $2) x)
     + (SELECT count(*) FROM (SELECT 1 FROM shoal.jobs j WHERE j.queue = q.name AND j.state = 'cancelled'
                                AND j.finished_at > now() - make_interval(secs => $1::float8) LIMIT $2) x)
       AS finished,
       q.keep_succeeded > interval '0' AS keeps_succeeded
  FROM shoal.queues q
