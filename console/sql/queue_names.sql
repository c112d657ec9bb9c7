-- The declared queues, for the job browser's queue filter.
SELECT name FROM shoal.queues ORDER BY name
