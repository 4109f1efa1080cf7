-- JobRunner schema, version 6: the dequeue function of version 5, walking and taking in fewer statements. Version 5 ran
-- two statements per tenant it visited (the descent that finds the tenant, then the take), each with its own executor
-- start and end; a batch spread over many tenants, each giving a job or two, paid them per job. Now one recursive
-- statement finds the next stretch of tenants, one statement takes what a group of them is asked for (a LATERAL take per
-- tenant), and the wants are looked up in an object built once per call instead of by array_position over p_tenants.
-- The walk, the wants, the passes, the cap and the rows returned are those of version 5. Replacing a function changes
-- only the catalog.

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
-- Costs per call: one index descent per band and per tenant visited (in stretches of 8, 16, 32, ... tenants, one statement
-- each), one take statement per group of tenants in the first pass, and one per tenant and pass in the further ones.
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
-- And no merge join: the take's update drives from the rows picked, by primary key, in the order they were picked.
SET enable_mergejoin = off
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
    n integer;
    band_tenants text[];
    quanta integer[];
    active boolean[];
    any_active boolean;
    members integer := 0;
    left_unvisited boolean;
    mark_band integer;
    to_mark integer;
    -- p_tenants and p_wants as one object, for a lookup by name (a worker passes every tenant it knows).
    wants_by_tenant jsonb := jsonb_object(coalesce(p_tenants, '{}'), coalesce(p_wants::text[], '{}'));
    walk_done boolean;
    group_full boolean;
    pending integer;
    takers integer;
    stretch integer;
    fetch_count integer;
    fetched text[];
    fetched_ready timestamptz[];
    pos integer;
    group_tenants text[];
    group_wants integer[];
    group_asks integer[];
    group_got integer[];
    r record;
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
        -- First pass: walk the band's tenants from p_after. The next tenants of the walk are found in one statement (an
        -- index descent per tenant), and what they are asked for is taken in one statement per group of tenants: a group
        -- closes when its asks fill the batch or its tenants reach the cap; if some gave less than asked, the walk goes on.
        next_tenant := p_after;
        wrapped := p_after IS NULL;
        walk_done := false;
        stretch := 8;
        WHILE NOT walk_done LOOP
            -- A stretch of 8 tenants, then twice as many each time the walk needs more, up to what the batch and the cap
            -- can still use (and a few more, for tenants with nothing due or asked for nothing).
            fetch_count := least(stretch, least(p_max_tenants - members, p_limit - taken) + 8);
            stretch := least(stretch * 2, 1024);
            -- Two forms, so that each bound is an index condition (the generic plan cannot drop a bound that is absent).
            IF wrapped AND p_after IS NOT NULL THEN
                WITH RECURSIVE walk(tenant, first_ready, n) AS (
                    (SELECT j.tenant, j.ready_at, 1 FROM {schema}.jobs j
                     WHERE (j.state = 0 OR (j.state = 1 AND j.due)) AND j.priority = band
                       AND j.tenant > coalesce(next_tenant, '') AND j.tenant <= p_after
                     ORDER BY j.priority DESC, j.tenant, j.ready_at LIMIT 1)
                    UNION ALL
                    SELECT x.tenant, x.ready_at, walk.n + 1 FROM walk CROSS JOIN LATERAL (
                        SELECT j.tenant, j.ready_at FROM {schema}.jobs j
                        WHERE (j.state = 0 OR (j.state = 1 AND j.due)) AND j.priority = band
                          AND j.tenant > walk.tenant AND j.tenant <= p_after
                        ORDER BY j.priority DESC, j.tenant, j.ready_at LIMIT 1) x
                    WHERE walk.n < fetch_count)
                SELECT array_agg(walk.tenant ORDER BY walk.n), array_agg(walk.first_ready ORDER BY walk.n) INTO fetched, fetched_ready FROM walk;
            ELSE
                WITH RECURSIVE walk(tenant, first_ready, n) AS (
                    (SELECT j.tenant, j.ready_at, 1 FROM {schema}.jobs j
                     WHERE (j.state = 0 OR (j.state = 1 AND j.due)) AND j.priority = band AND j.tenant > coalesce(next_tenant, '')
                     ORDER BY j.priority DESC, j.tenant, j.ready_at LIMIT 1)
                    UNION ALL
                    SELECT x.tenant, x.ready_at, walk.n + 1 FROM walk CROSS JOIN LATERAL (
                        SELECT j.tenant, j.ready_at FROM {schema}.jobs j
                        WHERE (j.state = 0 OR (j.state = 1 AND j.due)) AND j.priority = band AND j.tenant > walk.tenant
                        ORDER BY j.priority DESC, j.tenant, j.ready_at LIMIT 1) x
                    WHERE walk.n < fetch_count)
                SELECT array_agg(walk.tenant ORDER BY walk.n), array_agg(walk.first_ready ORDER BY walk.n) INTO fetched, fetched_ready FROM walk;
            END IF;

            n := coalesce(array_length(fetched, 1), 0);
            IF n = 0 THEN
                -- Past the end, the walk wraps round to the band's first tenants, up to p_after itself.
                IF wrapped THEN
                    walk_done := true;
                ELSE
                    wrapped := true;
                    next_tenant := NULL;
                END IF;

                CONTINUE;
            END IF;

            pos := 1;
            WHILE pos <= n AND NOT walk_done LOOP
                -- A group keeps the walk's order; a member asked for nothing (ask 0) is not taken from.
                group_tenants := '{}';
                group_wants := '{}';
                group_asks := '{}';
                takers := 0;
                pending := 0;
                group_full := false;
                WHILE pos <= n LOOP
                    IF taken + pending >= p_limit OR members + takers >= p_max_tenants THEN
                        group_full := true;
                        EXIT;
                    END IF;

                    -- The tenant's first entry is its earliest: if that is not due, nothing of it is.
                    IF fetched_ready[pos] > p_now THEN
                        next_tenant := fetched[pos];
                        cursor_tenant := next_tenant;
                        pos := pos + 1;
                        CONTINUE;
                    END IF;

                    want := least(greatest(CASE WHEN wants_by_tenant ? fetched[pos] THEN coalesce((wants_by_tenant ->> fetched[pos])::integer, 0) ELSE p_default_want END, 0), p_limit);
                    -- A tenant is asked for what the batch has room for after what the tenants before it actually gave:
                    -- one that wants more than the room left while the group's asks are still pending starts the next group.
                    IF pending > 0 AND want > p_limit - taken - pending THEN
                        group_full := true;
                        EXIT;
                    END IF;

                    next_tenant := fetched[pos];
                    cursor_tenant := next_tenant;
                    pos := pos + 1;
                    ask := least(want, p_limit - taken - pending);
                    group_tenants := group_tenants || next_tenant;
                    group_wants := group_wants || want;
                    group_asks := group_asks || ask;
                    pending := pending + ask;
                    IF ask > 0 THEN
                        takers := takers + 1;
                    END IF;
                END LOOP;

                group_got := array_fill(0, ARRAY[coalesce(array_length(group_tenants, 1), 0)]);
                IF pending > 0 THEN
                    FOR r IN
                        WITH asked AS (
                            SELECT a.tenant, a.ask FROM unnest(group_tenants, group_asks) AS a(tenant, ask) WHERE a.ask > 0),
                        picked AS (
                            SELECT x.id FROM asked CROSS JOIN LATERAL (
                                SELECT j.id FROM {schema}.jobs j
                                WHERE (j.state = 0 OR (j.state = 1 AND j.due)) AND j.priority = band AND j.tenant = asked.tenant AND j.ready_at <= p_now
                                  AND (j.taken_until IS NULL OR j.taken_until <= p_now)
                                ORDER BY j.priority DESC, j.tenant, j.ready_at, j.id
                                LIMIT asked.ask
                                FOR UPDATE SKIP LOCKED) x),
                        u AS (
                            UPDATE {schema}.jobs j SET taken_until = p_until FROM picked WHERE j.id = picked.id
                            RETURNING j.id, j.priority, j.tenant, j.workload, j.concurrency_key, j.enqueued_at, j.affinity)
                        SELECT * FROM u
                    LOOP
                        id := r.id;
                        priority := r.priority;
                        tenant := r.tenant;
                        workload := r.workload;
                        concurrency_key := r.concurrency_key;
                        enqueued_at := r.enqueued_at;
                        affinity := r.affinity;
                        RETURN NEXT;
                        i := array_position(group_tenants, r.tenant);
                        group_got[i] := group_got[i] + 1;
                        taken := taken + 1;
                    END LOOP;
                END IF;

                -- Into the further passes in the walk's order, as one statement per tenant would have put them.
                FOR k IN 1 .. coalesce(array_length(group_tenants, 1), 0) LOOP
                    IF group_asks[k] = 0 THEN
                        -- Asked for nothing (this worker holds its share): it does not count against the cap, and takes
                        -- in the further passes only if the batch still has room.
                        band_tenants := band_tenants || group_tenants[k];
                        quanta := quanta || group_wants[k];
                        active := active || true;
                        CONTINUE;
                    END IF;

                    -- Nothing to take (all held by other workers): the tenant does not count against the cap.
                    CONTINUE WHEN group_got[k] = 0;
                    members := members + 1;
                    band_tenants := band_tenants || group_tenants[k];
                    quanta := quanta || group_wants[k];
                    active := active || (group_got[k] = group_wants[k]);
                END LOOP;

                -- Strict priority needs to know whether the walk stopped short of the band's last tenant.
                IF group_full AND (taken >= p_limit OR members >= p_max_tenants) THEN
                    left_unvisited := true;
                    walk_done := true;
                END IF;
            END LOOP;
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
