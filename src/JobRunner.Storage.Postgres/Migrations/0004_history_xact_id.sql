-- JobRunner schema, version 4: the transaction that wrote each history row, so that the event relay reads each row once,
-- by a cursor over (xact_id, id), instead of reading a window of recent history at every poll. A row is read once its
-- transaction id is below the oldest transaction still running (pg_snapshot_xmin), when its transaction has finished and
-- all its rows are visible.
-- Rows written before this version keep NULL: the relay publishes only what is written after someone starts watching,
-- and the index leaves them out. The default is set after the column is added, not in ADD COLUMN: pg_current_xact_id()
-- is stable, so a default there would be stored once as the value of every existing row (the id of this migration's
-- transaction). Both ALTERs change only the catalog, but CREATE INDEX reads the whole table, and the migration's
-- transaction keeps job_history locked (ALTER TABLE's exclusive lock) until it commits. On a large job_history, add the
-- column and build the index beforehand, without blocking; then this script only sets the default:
--   ALTER TABLE <schema>.job_history ADD COLUMN IF NOT EXISTS xact_id xid8;
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS job_history_xact ON <schema>.job_history (xact_id, id) WHERE xact_id IS NOT NULL;
-- Transaction ids belong to the server: history copied into another server (pg_dump and restore, logical replication)
-- keeps the old server's ids; set xact_id to NULL on the copied rows.
ALTER TABLE {schema}.job_history ADD COLUMN IF NOT EXISTS xact_id xid8;
ALTER TABLE {schema}.job_history ALTER COLUMN xact_id SET DEFAULT pg_current_xact_id();
CREATE INDEX IF NOT EXISTS job_history_xact ON {schema}.job_history (xact_id, id) WHERE xact_id IS NOT NULL;
