-- JobRunner schema, version 5: the dequeue shares each priority band among its tenants instead of taking the band's
-- oldest jobs whoever they belong to (one tenant's flood of a million jobs no longer keeps every other tenant's jobs out
-- of the workers' hands until it drains).
-- The ready index gains the tenant after the priority, so that a band's tenants can be walked one index descent each
-- (a loose index scan) and each tenant's oldest rows read in order. It holds Queued rows and the Scheduled rows that
-- are due, not those that wait for later (a retry's backoff, a not-before time): the walk would pay a descent per
-- tenant that has only those. A Scheduled row is marked due (the "due" column; its state stays Scheduled until it is
-- leased) by the dequeue, which finds such rows oldest first through jobs_scheduled; every write that makes a row
-- Scheduled clears the mark. jobs_ready, whose order only the old dequeue used, is dropped: a Queued row is written
-- into one ready index, as before.
-- The indexes are built while the migration's transaction holds the jobs table (CREATE INDEX blocks writes until it
-- commits; ADD COLUMN with a constant default only changes the catalog). On a large jobs table, add the column and
-- build the indexes beforehand without blocking; then this script only drops the old index and creates the function:
--   ALTER TABLE <schema>.jobs ADD COLUMN IF NOT EXISTS due boolean NOT NULL DEFAULT false;
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_ready_tenant ON <schema>.jobs (priority DESC, tenant, ready_at, id) WHERE state = 0 OR (state = 1 AND due);
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_scheduled ON <schema>.jobs (priority, ready_at) WHERE state = 1 AND NOT due;
-- (A build that fails leaves an INVALID index behind: this script drops and builds it again.)
ALTER TABLE {schema}.jobs ADD COLUMN IF NOT EXISTS due boolean NOT NULL DEFAULT false;
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.oid = '{schema}'::regnamespace AND c.relname = 'jobs_ready_tenant' AND NOT i.indisvalid) THEN
        DROP INDEX {schema}.jobs_ready_tenant;
    END IF;

    IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.oid = '{schema}'::regnamespace AND c.relname = 'jobs_scheduled' AND NOT i.indisvalid) THEN
        DROP INDEX {schema}.jobs_scheduled;
    END IF;
END
$$;
CREATE INDEX IF NOT EXISTS jobs_ready_tenant ON {schema}.jobs (priority DESC, tenant, ready_at, id) WHERE state = 0 OR (state = 1 AND due);
CREATE INDEX IF NOT EXISTS jobs_scheduled ON {schema}.jobs (priority, ready_at) WHERE state = 1 AND NOT due;
DROP INDEX IF EXISTS {schema}.jobs_ready;

-- Takes up to p_limit ready jobs and hides them until p_until, sharing them among tenants:
-- * First marks Scheduled rows that are due, so that the walk below sees them: highest priority band first (priorities
--   are 1 to 10), oldest first within a band, four times the batch (64 to 1,000), more than the call takes, so that
--   marking keeps ahead of taking when many come due at once. A high-priority retry is marked at the next call, however
--   many lower-priority ones came due before it.
-- * Priority bands are taken highest first; a lower band only once every tenant the call visited in the higher one has
--   nothing more to give.
-- * In a band, tenants are visited in name order starting after p_after and wrapping round. A tenant takes up to its
--   want: its entry in p_tenants/p_wants, else p_default_want; the caller computes wants from the tenants' weights and
--   what it already holds, so that what it takes follows the weights. A tenant whose want is 0 takes nothing in the
--   first pass.
-- * While the batch is not full, further passes visit the same tenants again: those that gave all they were asked for
--   (and those asked for nothing) take again, twice as much as in their previous pass (at least 1). A single tenant
--   fills the whole batch in a few passes, and tenants that keep giving keep the ratio of their wants.
-- * At most p_max_tenants tenants take part per call (tenants with nothing due, whose due rows other workers hold, or
--   asked for nothing in the first pass, do not count): a band with many tenants is covered over successive calls, each starting after the last tenant the
--   previous one visited. The call does not go down to a lower band while it left tenants of this band unvisited.
-- Rows are the jobs taken (what JobRows.QueueColumns reads), in the order taken, then one row with a NULL id whose tenant
-- is where the next call should start (p_after), or NULL when the call visited no tenant.
-- Rows are locked with SKIP LOCKED, so concurrent calls never wait for each other, whatever order they lock rows in.
-- Costs per call: one index descent per band and per tenant visited, and one statement per tenant and pass that takes.
CREATE OR REPLACE FUNCTION {schema}.dequeue(
    p_now timestamptz, p_until timestamptz, p_limit integer, p_after text,
    p_tenants text[], p_wants integer[], p_default_want integer, p_max_tenants integer)
RETURNS TABLE (id uuid, priority smallint, tenant text, workload text, concurrency_key text, enqueued_at timestamptz, affinity text)
LANGUAGE plpgsql
-- Each statement is planned once per connection, not at every call: with the parameters known, the planner would plan
-- each statement again at each call, several times the cost of running it. The caller runs it with bitmap scans, hash
-- joins and sequential scans off (JobRows.IndexPathsOnly), so the plans are index scans whatever the statistics.
SET plan_cache_mode = force_generic_plan
-- The plans are made under these, whoever calls first: index scans whatever the statistics.
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
AS $$
#variable_conflict use_column
DECLARE
    band smallint;
    next_tenant text;
    first_ready timestamptz;
    wrapped boolean;
    cursor_tenant text := NULL;
    taken integer := 0;
    got integer;
    ask integer;
    want integer;
    i integer;
    band_tenants text[];
    quanta integer[];
    active boolean[];
    any_active boolean;
    members integer := 0;
    left_unvisited boolean;
    mark_band integer;
    to_mark integer;
BEGIN
    IF p_until <= p_now THEN
        RAISE EXCEPTION 'dequeue: p_until (%) must be later than p_now (%)', p_until, p_now;
    END IF;

    to_mark := least(greatest(4 * p_limit, 64), 1000);
    FOR mark_band IN REVERSE 10 .. 1 LOOP
        EXIT WHEN to_mark <= 0;
        UPDATE {schema}.jobs j SET due = true
        FROM (SELECT x.id FROM {schema}.jobs x WHERE x.state = 1 AND NOT x.due AND x.priority = mark_band AND x.ready_at <= p_now
              ORDER BY x.ready_at LIMIT to_mark FOR UPDATE SKIP LOCKED) d
        WHERE j.id = d.id;
        GET DIAGNOSTICS got = ROW_COUNT;
        to_mark := to_mark - got;
    END LOOP;

    SELECT max(j.priority) INTO band FROM {schema}.jobs j WHERE (j.state = 0 OR (j.state = 1 AND j.due));
    WHILE band IS NOT NULL AND taken < p_limit AND members < p_max_tenants LOOP
        band_tenants := '{}';
        quanta := '{}';
        active := '{}';
        left_unvisited := false;
        -- First pass: walk the band's tenants from p_after, one index descent each.
        next_tenant := p_after;
        wrapped := p_after IS NULL;
        LOOP
            IF taken >= p_limit OR members >= p_max_tenants THEN
                left_unvisited := true;
                EXIT;
            END IF;

            -- Past the end, the walk wraps round to the band's first tenants, up to p_after itself.
            IF next_tenant IS NULL AND p_after IS NULL THEN
                SELECT j.tenant, j.ready_at INTO next_tenant, first_ready FROM {schema}.jobs j
                WHERE (j.state = 0 OR (j.state = 1 AND j.due)) AND j.priority = band
                ORDER BY j.priority DESC, j.tenant, j.ready_at LIMIT 1;
            ELSIF next_tenant IS NULL THEN
                SELECT j.tenant, j.ready_at INTO next_tenant, first_ready FROM {schema}.jobs j
                WHERE (j.state = 0 OR (j.state = 1 AND j.due)) AND j.priority = band AND j.tenant <= p_after
                ORDER BY j.priority DESC, j.tenant, j.ready_at LIMIT 1;
            ELSIF wrapped AND p_after IS NOT NULL THEN
                SELECT j.tenant, j.ready_at INTO next_tenant, first_ready FROM {schema}.jobs j
                WHERE (j.state = 0 OR (j.state = 1 AND j.due)) AND j.priority = band AND j.tenant > next_tenant AND j.tenant <= p_after
                ORDER BY j.priority DESC, j.tenant, j.ready_at LIMIT 1;
            ELSE
                SELECT j.tenant, j.ready_at INTO next_tenant, first_ready FROM {schema}.jobs j
                WHERE (j.state = 0 OR (j.state = 1 AND j.due)) AND j.priority = band AND j.tenant > next_tenant
                ORDER BY j.priority DESC, j.tenant, j.ready_at LIMIT 1;
            END IF;

            IF NOT FOUND THEN
                IF wrapped THEN
                    EXIT;
                END IF;

                wrapped := true;
                next_tenant := NULL;
                CONTINUE;
            END IF;

            cursor_tenant := next_tenant;
            -- The tenant's first entry is its earliest: if that is not due, nothing of it is.
            CONTINUE WHEN first_ready > p_now;

            i := array_position(p_tenants, next_tenant);
            want := least(greatest(coalesce(CASE WHEN i IS NULL THEN p_default_want ELSE p_wants[i] END, 0), 0), p_limit);
            got := 0;
            ask := least(want, p_limit - taken);
            IF ask > 0 THEN
                RETURN QUERY
                WITH picked AS (
                    SELECT j.id FROM {schema}.jobs j
                    WHERE (j.state = 0 OR (j.state = 1 AND j.due)) AND j.priority = band AND j.tenant = next_tenant AND j.ready_at <= p_now
                      AND (j.taken_until IS NULL OR j.taken_until <= p_now)
                    ORDER BY j.priority DESC, j.tenant, j.ready_at, j.id
                    LIMIT ask
                    FOR UPDATE SKIP LOCKED),
                u AS (
                    UPDATE {schema}.jobs j SET taken_until = p_until FROM picked WHERE j.id = picked.id
                    RETURNING j.id, j.priority, j.tenant, j.workload, j.concurrency_key, j.enqueued_at, j.affinity)
                SELECT * FROM u;
                GET DIAGNOSTICS got = ROW_COUNT;
                taken := taken + got;
                -- Nothing to take (all held by other workers): the tenant does not count against the cap.
                CONTINUE WHEN got = 0;
                members := members + 1;
            END IF;

            -- A tenant asked for nothing (this worker holds its share) does not count against the cap either; it takes
            -- in the further passes only if the batch still has room.
            band_tenants := band_tenants || next_tenant;
            quanta := quanta || want;
            active := active || (got = want);
        END LOOP;

        -- Further passes while the batch has room: those that gave all they were asked for take again, twice as much.
        LOOP
            any_active := false;
            EXIT WHEN taken >= p_limit;
            FOR k IN 1 .. coalesce(array_length(band_tenants, 1), 0) LOOP
                EXIT WHEN taken >= p_limit;
                CONTINUE WHEN NOT active[k];
                quanta[k] := greatest(least(quanta[k] * 2, p_limit), 1);
                ask := least(quanta[k], p_limit - taken);
                RETURN QUERY
                WITH picked AS (
                    SELECT j.id FROM {schema}.jobs j
                    WHERE (j.state = 0 OR (j.state = 1 AND j.due)) AND j.priority = band AND j.tenant = band_tenants[k] AND j.ready_at <= p_now
                      AND (j.taken_until IS NULL OR j.taken_until <= p_now)
                    ORDER BY j.priority DESC, j.tenant, j.ready_at, j.id
                    LIMIT ask
                    FOR UPDATE SKIP LOCKED),
                u AS (
                    UPDATE {schema}.jobs j SET taken_until = p_until FROM picked WHERE j.id = picked.id
                    RETURNING j.id, j.priority, j.tenant, j.workload, j.concurrency_key, j.enqueued_at, j.affinity)
                SELECT * FROM u;
                GET DIAGNOSTICS got = ROW_COUNT;
                taken := taken + got;
                active[k] := got = quanta[k];
                any_active := any_active OR active[k];
            END LOOP;

            EXIT WHEN NOT any_active;
        END LOOP;

        -- Strict priority: with tenants of this band left unvisited, a lower band waits for the next call.
        EXIT WHEN left_unvisited;
        SELECT max(j.priority) INTO band FROM {schema}.jobs j WHERE (j.state = 0 OR (j.state = 1 AND j.due)) AND j.priority < band;
    END LOOP;

    RETURN QUERY SELECT NULL::uuid, NULL::smallint, cursor_tenant, NULL::text, NULL::text, NULL::timestamptz, NULL::text;
END
$$;
