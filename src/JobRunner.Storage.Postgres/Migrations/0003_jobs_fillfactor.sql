-- JobRunner schema, version 3: free space in every page of the jobs table. A job's row is updated three to four times
-- (dequeue, lease, completion); with room on its own page the new version stays there, and the dequeue's update (which
-- changes no indexed column) can be a heap-only tuple update that writes no index entry. Applies to pages written from
-- now on; existing pages are rewritten by VACUUM FULL or pg_repack if wanted.
ALTER TABLE {schema}.jobs SET (fillfactor = 70);
