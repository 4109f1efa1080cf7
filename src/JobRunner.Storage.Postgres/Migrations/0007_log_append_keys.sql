-- JobRunner schema, version 7: the first line of each log append carries the append's key, so that an append retried
-- after its commit's reply was lost finds the lines its first try wrote instead of writing them again. Only retries look
-- the key up (by the job's lines), and the other lines keep NULL. Adding a nullable column without a default changes only
-- the catalog.
ALTER TABLE {schema}.job_logs ADD COLUMN IF NOT EXISTS batch uuid;
