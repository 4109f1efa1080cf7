-- JobRunner schema, version 7: the first line of each log append carries the append's key, so that an append retried
-- after its commit's reply was lost finds the lines its first try wrote instead of writing them again. The key is unique
-- per job: a retry that runs while its first try is still in flight on the server waits for it, and fails on the key if
-- it committed (the retry then reads what it wrote). The other lines keep NULL, out of the index. Adding a nullable
-- column without a default changes only the catalog, but CREATE INDEX reads the whole table while the migration's
-- transaction keeps job_logs locked; on a large job_logs, build the index beforehand without blocking:
--   ALTER TABLE <schema>.job_logs ADD COLUMN IF NOT EXISTS batch uuid;
--   CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS job_logs_batch ON <schema>.job_logs (job_id, batch) WHERE batch IS NOT NULL;
ALTER TABLE {schema}.job_logs ADD COLUMN IF NOT EXISTS batch uuid;
CREATE UNIQUE INDEX IF NOT EXISTS job_logs_batch ON {schema}.job_logs (job_id, batch) WHERE batch IS NOT NULL;
