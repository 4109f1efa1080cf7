using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text;
using Microsoft.Extensions.Logging;
using Npgsql;
using NpgsqlTypes;

namespace JobRunner.Storage.Postgres;

/// <summary>
/// The durable store: one row per job in the jobs table, which is also the queue (see <see cref="PostgresJobQueue"/>).
/// Inserts, leases and completions from concurrent callers are written in batches (group commit, one round trip per
/// batch). Every write of an attempt is fenced in its WHERE clause: a stale token changes no row. Every state
/// transition is also appended to the history table in the same statement.
/// </summary>
internal sealed partial class PostgresJobStore : IJobStore
{
    private const string QuarantineMessage =
        "Quarantined: the job's lease expired {0} times without a heartbeat (its worker died during each attempt). " +
        "Find why the job kills its worker, then submit it again; PostgresOptions.MaxLeaseExpirations sets the limit.";

    /// <summary>What a completion reads back: the columns it may have changed (see <see cref="Completed"/>).</summary>
    private const string CompletedColumns = "id, state, updated_at, attempt_count, tenant, workload, fence";

    private const string LeaseExpiredMessage = "The lease expired without a heartbeat: the worker stopped or crashed. The job was taken back.";

    private readonly PostgresDatabase _db;
    private readonly IJobEventBus _events;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly Batcher<JobRecord, SubmitResult> _inserts;
    private readonly Batcher<LeaseRequest, LeaseResult> _leases;
    private readonly Batcher<Completion, Completed> _completions;
    private readonly string _insertSql;
    private readonly string _leaseSql;
    private readonly string _leaseReplaySql;
    private readonly string _completeSql;
    private readonly string _completeReplaySql;
    private readonly string _renewSql;
    private readonly string _reclaimSql;
    private readonly string _cancelSql;
    private readonly string _requeueSql;

    public PostgresJobStore(PostgresDatabase db, IJobEventBus events)
    {
        _db = db;
        _events = events;
        _time = db.Time;
        _logger = db.Logger;
        var max = db.Options.MaxBatchSize;
        _inserts = new(InsertBatchAsync, max, db.Options.InsertBatchesInFlight, static job => job.Request.Input.Length, MaxInsertBatchInputBytes);
        _leases = new(LeaseBatchAsync, max, db.Options.MaxBatchesInFlight);
        _completions = new(CompleteBatchAsync, max, db.Options.MaxBatchesInFlight);

        var s = db.Schema;
        // "state + 0" in the lease and the completion: both find their rows by id, and the planner must not pick a partial
        // index by its state predicate instead (it would read every ready or running job); see JobRows.IndexPathsOnly.
        // Each CTE carries the batch's values on to the next, so that no step joins two CTEs (without a hash join, that
        // would compare every pair of rows).
        // Each row names the process that wrote it, so that the event relay of other hosts publishes it and this one does not.
        var history = $", h AS (INSERT INTO {s}.job_history (job_id, at, state, attempt, fence, worker_id, message, instance) SELECT id, updated_at, state, attempt_count, fence, worker_id, {{0}}, '{db.InstanceId}' FROM u)";
        _insertSql = $"""
            WITH u AS (
                INSERT INTO {s}.jobs (id, tenant, workload, priority, concurrency_key, dedupe_key, correlation_id, parent_id, labels, input,
                                      not_before, timeout_ms, retry, state, ready_at, enqueued_at, created_at, updated_at, affinity)
                SELECT id, tenant, workload, priority, concurrency_key, dedupe_key, correlation_id, parent_id, labels::jsonb, input,
                       not_before, timeout_ms, retry::jsonb, state, ready_at, created_at, created_at, created_at, affinity
                FROM unnest(@ids, @tenants, @workloads, @priorities, @concurrency_keys, @dedupe_keys, @correlation_ids, @parent_ids,
                            @labels, @inputs, @not_befores, @timeouts, @retries, @states, @ready_ats, @created_ats, @affinities)
                     WITH ORDINALITY AS r(id, tenant, workload, priority, concurrency_key, dedupe_key, correlation_id, parent_id, labels, input,
                          not_before, timeout_ms, retry, state, ready_at, created_at, affinity, n)
                ORDER BY n
                ON CONFLICT DO NOTHING
                RETURNING *){History("NULL::text")}
            SELECT id FROM u
            """;
        _leaseSql = $"""
            WITH r AS (SELECT * FROM unnest(@ids, @workers, @expires) AS r(id, worker, expires)),
            locked AS (
                SELECT j.id, j.state AS previous, r.worker, r.expires FROM {s}.jobs j JOIN r USING (id)
                WHERE j.state + 0 = 0 OR (j.state + 0 = 1 AND j.ready_at <= @now)
                ORDER BY j.id FOR UPDATE OF j),
            granted AS (SELECT id, previous, worker, expires, nextval('{s}.fence_tokens') AS fence FROM locked),
            u AS (
                UPDATE {s}.jobs j SET state = 2, fence = g.fence, worker_id = g.worker, lease_expires_at = g.expires, updated_at = @now,
                    taken_until = NULL, attempt_count = j.attempt_count + 1,
                    attempts = j.attempts || jsonb_build_array(jsonb_build_object('n', j.attempt_count + 1, 'w', g.worker, 'f', g.fence, 's', @now_us::bigint, 'k', @batch))
                FROM granted g
                WHERE j.id = g.id
                RETURNING j.*, g.previous){History("NULL::text")}
            SELECT {JobRows.Columns}, previous FROM u
            """;
        // A retried lease batch whose first try committed (its reply was lost) finds what that try granted by the
        // batch's key in the new attempt. The previous state is not kept: Queued stands for it.
        _leaseReplaySql = $"SELECT {JobRows.Columns}, 0::smallint AS previous FROM {s}.jobs WHERE id = ANY(@ids) AND state = 2 AND attempts -> -1 ->> 'k' = @batch";
        _completeSql = $"""
            WITH c AS (SELECT * FROM unnest(@ids, @fences, @outcomes, @next_states, @due_ats, @errors, @error_types, @exit_codes)
                                 AS c(id, fence, outcome, next_state, due_at, error, error_type, exit_code)),
            locked AS (SELECT c.* FROM {s}.jobs j JOIN c USING (id) ORDER BY j.id FOR UPDATE OF j),
            u AS (
                UPDATE {s}.jobs j SET
                    state = CASE WHEN j.cancel_requested AND c.next_state < 3 THEN 5 ELSE c.next_state END,
                    attempts = jsonb_set(j.attempts, ARRAY[(jsonb_array_length(j.attempts) - 1)::text],
                        (j.attempts -> -1) || jsonb_strip_nulls(jsonb_build_object('e', @now_us::bigint, 'o', c.outcome, 'err', c.error, 'et', c.error_type, 'x', c.exit_code))),
                    updated_at = @now, enqueued_at = @now, ready_at = CASE WHEN c.next_state = 1 THEN coalesce(c.due_at, @now) ELSE @now END, due = false,
                    taken_until = NULL, lease_expires_at = NULL, last_error = coalesce(c.error, j.last_error)
                FROM locked c
                WHERE j.id = c.id AND j.fence = c.fence AND j.state + 0 = 2
                RETURNING j.id, j.state, j.updated_at, j.attempt_count, j.tenant, j.workload, j.fence, j.worker_id, j.last_error){History("u.last_error")}
            SELECT {CompletedColumns} FROM u
            """;
        // Renewal by job and fence, by id like the lease (see "state + 0" above).
        _renewSql = $"WITH r AS (SELECT * FROM unnest(@ids, @fences) AS r(id, fence)), locked AS (SELECT j.id FROM {s}.jobs j JOIN r USING (id) ORDER BY j.id FOR UPDATE OF j) UPDATE {s}.jobs j SET lease_expires_at = @expires FROM r JOIN locked USING (id) WHERE j.id = r.id AND j.fence = r.fence AND j.state + 0 = 2 RETURNING j.id, j.fence";
        // A retried completion batch whose first try committed finds what that try wrote: the attempt's fence, ended at
        // the batch's time.
        _completeReplaySql = $"""
            SELECT {CompletedColumns} FROM {s}.jobs
            WHERE (id, fence) IN (SELECT * FROM unnest(@ids, @fences)) AND state <> 2 AND updated_at = @now AND attempts -> -1 ->> 'e' = @now_us
            """;
        _reclaimSql = $"""
            WITH expired AS (
                SELECT id FROM {s}.jobs WHERE state = 2 AND lease_expires_at <= @now
                ORDER BY id LIMIT @limit FOR UPDATE SKIP LOCKED),
            u AS (
                UPDATE {s}.jobs j SET
                    state = CASE WHEN j.cancel_requested THEN 5 WHEN j.lease_losses + 1 >= @max_losses THEN 4 ELSE 0 END,
                    lease_losses = j.lease_losses + 1,
                    attempts = jsonb_set(j.attempts, ARRAY[(jsonb_array_length(j.attempts) - 1)::text],
                        (j.attempts -> -1) || jsonb_build_object('e', @now_us::bigint, 'o', 5, 'err', @expired_message::text)),
                    last_error = CASE WHEN NOT j.cancel_requested AND j.lease_losses + 1 >= @max_losses
                        THEN format(@quarantine_message::text, j.lease_losses + 1) ELSE @expired_message::text END,
                    updated_at = @now, enqueued_at = @now, ready_at = @now, taken_until = NULL, lease_expires_at = NULL
                FROM expired
                WHERE j.id = expired.id
                RETURNING j.*){History("u.last_error")}
            SELECT {JobRows.Columns} FROM u
            """;
        _cancelSql = $"""
            WITH old AS (SELECT id, state AS previous FROM {s}.jobs WHERE id = @id AND state < 3 AND NOT (state = 2 AND cancel_requested) FOR UPDATE),
            u AS (
                UPDATE {s}.jobs j SET cancel_requested = true, cancel_reason = @reason, updated_at = @now,
                    state = CASE WHEN j.state IN (0, 1) THEN 5 ELSE j.state END,
                    last_error = CASE WHEN j.state IN (0, 1) THEN coalesce(@reason, j.last_error) ELSE j.last_error END
                FROM old
                WHERE j.id = old.id
                RETURNING j.*, old.previous),
            n AS (
                SELECT pg_notify(@channel, json_build_object('i', @instance::text, 'j', id, 'a', attempt_count, 't', tenant, 'w', workload, 'r', left(@reason, 1000))::text)
                FROM u WHERE state = 2){History("@reason")}
            SELECT {JobRows.Columns}, (SELECT count(*) FROM n), previous FROM u
            """;

        _requeueSql = $"""
            WITH old AS (SELECT id, state AS previous FROM {s}.jobs WHERE id = @id AND state IN (4, 5) FOR UPDATE),
            u AS (
                UPDATE {s}.jobs j SET state = CASE WHEN j.not_before > @now THEN 1 ELSE 0 END, due = false, cancel_requested = false, cancel_reason = NULL, lease_losses = 0,
                    updated_at = @now, enqueued_at = @now, ready_at = greatest(j.not_before, @now), taken_until = NULL, lease_expires_at = NULL
                FROM old
                WHERE j.id = old.id
                RETURNING j.*, old.previous){History("@message")}
            SELECT {JobRows.Columns}, previous FROM u
            """;

        string History(string message) => db.Options.WriteHistory ? string.Format(CultureInfo.InvariantCulture, history, message) : "";
    }

    public async ValueTask<SubmitResult> InsertAsync(JobRecord job, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(job);
        if (job.State is not (JobState.Queued or JobState.Scheduled))
        {
            throw new ArgumentException($"A new job must be Queued or Scheduled, not {job.State}.", nameof(job));
        }

        // The caller's token only stops the wait: once batched, the insert is written with its batch.
        var result = await _inserts.Enqueue(job).WaitAsync(cancellationToken).ConfigureAwait(false);
        if (!result.Attached)
        {
            PublishState(result.Job, previous: null, message: null);
        }

        return result;
    }

    /// <summary>Inserts many jobs in batched statements (the bulk path). Dedupe keys and ids behave as in <see cref="InsertAsync"/>.</summary>
    public async ValueTask<IReadOnlyList<SubmitResult>> InsertManyAsync(IReadOnlyList<JobRecord> jobs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        var tasks = _inserts.EnqueueMany(jobs);
        var results = await Task.WhenAll(tasks).WaitAsync(cancellationToken).ConfigureAwait(false);
        foreach (var result in results)
        {
            if (!result.Attached)
            {
                PublishState(result.Job, previous: null, message: null);
            }
        }

        return results;
    }

    /// <summary>
    /// The most input bytes one insert statement carries (a heavier job goes alone): PostgreSQL refuses a message over
    /// 1 GB, and under load a batch of large inputs would otherwise fail every submit in it.
    /// </summary>
    internal const long MaxInsertBatchInputBytes = 64L << 20;

    private async Task InsertBatchAsync(IReadOnlyList<Batcher<JobRecord, SubmitResult>.Item> batch)
    {
        var inserted = await _db.RunAsync(_db.Client, batch, InsertRowsAsync, CancellationToken.None).ConfigureAwait(false);
        List<Batcher<JobRecord, SubmitResult>.Item>? conflicts = null;
        foreach (var item in batch)
        {
            if (inserted.Contains(item.Request.Id.Value))
            {
                item.TrySetResult(new SubmitResult(item.Request, Attached: false));
            }
            else
            {
                (conflicts ??= []).Add(item);
            }
        }

        AfterInsertStatement?.Invoke();
        foreach (var item in conflicts ?? [])
        {
            try
            {
                item.TrySetResult(await ResolveConflictAsync(item).ConfigureAwait(false));
            }
            catch (Exception e)
            {
                item.TrySetException(e);
            }
        }
    }

    /// <summary>Called after an insert batch's statement, before its conflicts are resolved; for tests.</summary>
    internal Action? AfterInsertStatement { get; set; }

    /// <summary>
    /// A job the batch did not insert: the same id exists (a retry of a commit whose reply was lost), or its dedupe key
    /// is held. If the holder finished in between, the job is inserted again, on its own, in this flush (the batch must
    /// settle it), as often as that keeps happening.
    /// </summary>
    private async Task<SubmitResult> ResolveConflictAsync(Batcher<JobRecord, SubmitResult>.Item item)
    {
        var request = item.Request;
        for (var tries = 1; ; tries++)
        {
            if (await GetAsync(request.Id, CancellationToken.None).ConfigureAwait(false) is { } existing)
            {
                return new SubmitResult(existing, Attached: false);
            }

            if (request.Request.DedupeKey is { } key && await FindLiveByDedupeKeyAsync(request.Request.Tenant, key).ConfigureAwait(false) is { } holder)
            {
                return new SubmitResult(holder, Attached: true);
            }

            if ((await _db.RunAsync(_db.Client, (IReadOnlyList<Batcher<JobRecord, SubmitResult>.Item>)[item], InsertRowsAsync, CancellationToken.None).ConfigureAwait(false)).Count == 1)
            {
                return new SubmitResult(request, Attached: false);
            }

            if (tries == 10)
            {
                throw new PostgresStorageException($"Job {request.Id} was neither inserted nor found, ten times: its dedupe key '{request.Request.DedupeKey}' is taken and released again faster than it can be read. Submit it again.");
            }
        }
    }

    private async Task<HashSet<Guid>> InsertRowsAsync(NpgsqlConnection connection, IReadOnlyList<Batcher<JobRecord, SubmitResult>.Item> batch, CancellationToken token)
    {
        var n = batch.Count;
        var ids = new Guid[n];
        var tenants = new string[n];
        var workloads = new string[n];
        var priorities = new short[n];
        var concurrencyKeys = new string?[n];
        var dedupeKeys = new string?[n];
        var correlationIds = new string?[n];
        var parentIds = new Guid?[n];
        var labels = new string?[n];
        var inputs = new byte[n][];
        var notBefores = new DateTimeOffset?[n];
        var timeouts = new long?[n];
        var retries = new string?[n];
        var states = new short[n];
        var readyAts = new DateTimeOffset[n];
        var createdAts = new DateTimeOffset[n];
        var affinities = new string?[n];

        // Rows go in in one order for every batch (dedupe key, then id), so that two batches that share keys or ids wait
        // for each other instead of deadlocking (each holding one and wanting the other's).
        var order = new int[n];
        for (var i = 0; i < n; i++)
        {
            order[i] = i;
        }

        Array.Sort(order, (a, b) => CompareForInsert(batch, a, b));
        for (var i = 0; i < n; i++)
        {
            var job = batch[order[i]].Request;
            var request = job.Request;
            ids[i] = job.Id.Value;
            tenants[i] = request.Tenant;
            workloads[i] = request.Workload;
            priorities[i] = (short)request.Priority;
            concurrencyKeys[i] = request.ConcurrencyKey;
            dedupeKeys[i] = request.DedupeKey;
            correlationIds[i] = request.CorrelationId;
            parentIds[i] = request.ParentId?.Value;
            labels[i] = JobRows.WriteLabels(request.Labels);
            inputs[i] = request.Input.ToArray();
            notBefores[i] = request.NotBefore?.ToUniversalTime();
            timeouts[i] = request.Timeout is { } t ? (long)t.TotalMilliseconds : null;
            retries[i] = JobRows.WriteRetry(request.Retry);
            affinities[i] = request.Affinity;
            states[i] = (short)job.State;
            createdAts[i] = job.CreatedAt.ToUniversalTime();
            readyAts[i] = (job.State == JobState.Scheduled ? job.DueAt ?? job.CreatedAt : job.CreatedAt).ToUniversalTime();
        }

        using var command = new NpgsqlCommand(_insertSql, connection);
        var p = command.Parameters;
        p.Add(new("ids", NpgsqlDbType.Array | NpgsqlDbType.Uuid) { Value = ids });
        p.Add(new("tenants", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = tenants });
        p.Add(new("workloads", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = workloads });
        p.Add(new("priorities", NpgsqlDbType.Array | NpgsqlDbType.Smallint) { Value = priorities });
        p.Add(new("concurrency_keys", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = concurrencyKeys });
        p.Add(new("dedupe_keys", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = dedupeKeys });
        p.Add(new("correlation_ids", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = correlationIds });
        p.Add(new("parent_ids", NpgsqlDbType.Array | NpgsqlDbType.Uuid) { Value = parentIds });
        p.Add(new("labels", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = labels });
        p.Add(new("inputs", NpgsqlDbType.Array | NpgsqlDbType.Bytea) { Value = inputs });
        p.Add(new("not_befores", NpgsqlDbType.Array | NpgsqlDbType.TimestampTz) { Value = notBefores });
        p.Add(new("timeouts", NpgsqlDbType.Array | NpgsqlDbType.Bigint) { Value = timeouts });
        p.Add(new("retries", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = retries });
        p.Add(new("states", NpgsqlDbType.Array | NpgsqlDbType.Smallint) { Value = states });
        p.Add(new("affinities", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = affinities });
        p.Add(new("ready_ats", NpgsqlDbType.Array | NpgsqlDbType.TimestampTz) { Value = readyAts });
        p.Add(new("created_ats", NpgsqlDbType.Array | NpgsqlDbType.TimestampTz) { Value = createdAts });
        var inserted = new HashSet<Guid>(n);
        var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
        while (await reader.ReadAsync(token).ConfigureAwait(false))
        {
            inserted.Add(reader.GetGuid(0));
        }

        return inserted;
    }

    /// <summary>
    /// The insert order of two rows of a batch: rows with a dedupe key first, by tenant and key, and within one key in
    /// submission order (the first submitted holds the key, the others attach to it); rows without a key by id.
    /// </summary>
    private static int CompareForInsert(IReadOnlyList<Batcher<JobRecord, SubmitResult>.Item> batch, int i, int j)
    {
        var (a, b) = (batch[i].Request, batch[j].Request);
        return (a.Request.DedupeKey, b.Request.DedupeKey) switch
        {
            (null, null) => a.Id.CompareTo(b.Id),
            (null, _) => 1,
            (_, null) => -1,
            var (x, y) => string.CompareOrdinal(a.Request.Tenant, b.Request.Tenant) is var t and not 0 ? t
                : string.CompareOrdinal(x, y) is var k and not 0 ? k
                : i.CompareTo(j),
        };
    }

    public async ValueTask<JobRecord?> GetAsync(JobId id, CancellationToken cancellationToken)
    {
        return await _db.RunAsync(_db.Client, (Sql: $"SELECT {JobRows.Columns} FROM {_db.Schema}.jobs WHERE id = $1", Id: id.Value), static async (c, s, token) =>
        {
            using var command = new NpgsqlCommand(s.Sql, c);
            command.Parameters.Add(new NpgsqlParameter { Value = s.Id });
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            return await reader.ReadAsync(token).ConfigureAwait(false) ? JobRows.Read(reader) : null;
        }, cancellationToken).ConfigureAwait(false);
    }

    private async Task<JobRecord?> FindLiveByDedupeKeyAsync(string tenant, string key)
    {
        return await _db.RunAsync(_db.Client, (Sql: $"SELECT {JobRows.Columns} FROM {_db.Schema}.jobs WHERE tenant = $1 AND dedupe_key = $2 AND state < 3", Tenant: tenant, Key: key), static async (c, s, token) =>
        {
            using var command = new NpgsqlCommand(s.Sql, c);
            command.Parameters.Add(new NpgsqlParameter { Value = s.Tenant });
            command.Parameters.Add(new NpgsqlParameter { Value = s.Key });
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            return await reader.ReadAsync(token).ConfigureAwait(false) ? JobRows.Read(reader) : null;
        }, CancellationToken.None).ConfigureAwait(false);
    }

    public async ValueTask<JobPage> ListAsync(JobQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.PageSize, 1);
        long after = 0;
        if (query.ContinuationToken is { } token && !long.TryParse(token, NumberStyles.None, CultureInfo.InvariantCulture, out after))
        {
            throw new ArgumentException($"The continuation token '{token}' was not issued by this store. Pass the JobPage.ContinuationToken of the previous page.", nameof(query));
        }

        var sql = new StringBuilder($"SELECT {JobRows.Columns} FROM {_db.Schema}.jobs WHERE seq > @after");
        if (query.State is not null)
        {
            sql.Append(" AND state = @state");
        }

        if (query.Tenant is not null)
        {
            sql.Append(" AND tenant = @tenant");
        }

        if (query.Workload is not null)
        {
            sql.Append(" AND workload = @workload");
        }

        var labels = query.Labels is { Count: > 0 } l ? JobRows.WriteLabels(l) : null;
        if (labels is not null)
        {
            sql.Append(" AND labels @> @labels::jsonb");
        }

        sql.Append(" ORDER BY seq LIMIT @limit");
        return await _db.RunAsync(_db.Client, (Sql: sql.ToString(), Query: query, After: after, Labels: labels), static async (c, s, token) =>
        {
            using var command = new NpgsqlCommand(s.Sql, c);
            command.Parameters.AddWithValue("after", s.After);
            command.Parameters.AddWithValue("limit", s.Query.PageSize + 1);
            if (s.Query.State is { } state)
            {
                command.Parameters.AddWithValue("state", (short)state);
            }

            if (s.Query.Tenant is { } tenant)
            {
                command.Parameters.AddWithValue("tenant", tenant);
            }

            if (s.Query.Workload is { } workload)
            {
                command.Parameters.AddWithValue("workload", workload);
            }

            if (s.Labels is { } labels)
            {
                command.Parameters.AddWithValue("labels", labels);
            }

            var items = new List<JobRecord>();
            long last = 0;
            var more = false;
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            while (await reader.ReadAsync(token).ConfigureAwait(false))
            {
                if (items.Count == s.Query.PageSize)
                {
                    more = true;
                    break;
                }

                items.Add(JobRows.Read(reader));
                last = JobRows.ReadSequence(reader);
            }

            return new JobPage(items, more ? last.ToString(CultureInfo.InvariantCulture) : null);
        }, cancellationToken).ConfigureAwait(false);
    }

    public async ValueTask<LeasedJob?> TryAcquireLeaseAsync(JobId id, string workerId, TimeSpan duration, CancellationToken cancellationToken)
    {
        ArgumentException.ThrowIfNullOrEmpty(workerId);
        var request = new LeaseRequest(id, workerId, duration);
        var (leased, job, previous, malformed) = await _leases.Enqueue(request).WaitAsync(cancellationToken).ConfigureAwait(false);
        if (malformed is not null)
        {
            // A row this version cannot read fails alone; the rest of the batch runs.
            Log.MalformedRow(_logger, id, malformed.Value.Error);
            await FailMalformedAsync(request, malformed.Value.Fence, malformed.Value.Error).ConfigureAwait(false);
            return null;
        }

        if (job is not null)
        {
            PublishState(job, previous, message: null);
        }

        return leased;
    }

    private async Task LeaseBatchAsync(IReadOnlyList<Batcher<LeaseRequest, LeaseResult>.Item> batch)
    {
        // Two requests for one job in a batch (a second delivery reached another slot) would both read the one row the
        // statement returns, and both run under one fence: the first gets the lease, the others nothing.
        var (rows, now) = await _db.RunAsync(_db.Worker, (Store: this, Batch: batch, Key: Random.Shared.NextInt64().ToString("x", CultureInfo.InvariantCulture)), static async (c, s, tries, token) =>
        {
            // Taken in each try: a retry after a long outage must not write an expiry that has already passed.
            var now = s.Store._time.GetUtcNow();
            var n = s.Batch.Count;
            var ids = new List<Guid>(n);
            var workers = new List<string>(n);
            var expires = new List<DateTimeOffset>(n);
            var seen = new HashSet<Guid>(n);
            foreach (var item in s.Batch)
            {
                var request = item.Request;
                if (seen.Add(request.Id.Value))
                {
                    ids.Add(request.Id.Value);
                    workers.Add(request.WorkerId);
                    expires.Add(now + request.Duration);
                }
            }

            var granted = new Dictionary<Guid, (JobRecord? Job, JobState Previous, long Fence, Exception? Error)>();
            if (tries > 1)
            {
                // A retry: the first try may have committed before its reply was lost.
                using var replay = new NpgsqlCommand(s.Store._leaseReplaySql, c);
                replay.Parameters.Add(new("ids", NpgsqlDbType.Array | NpgsqlDbType.Uuid) { Value = ids.ToArray() });
                replay.Parameters.Add(new("batch", NpgsqlDbType.Text) { Value = s.Key });
                await ReadGrantsAsync(await replay.ExecuteReaderAsync(token).ConfigureAwait(false), granted, token).ConfigureAwait(false);
            }

            using (var batch = new NpgsqlBatch(c) { BatchCommands = { JobRows.IndexPathsOnly(CommitMode.Durable) } })
            {
                var command = new NpgsqlBatchCommand(s.Store._leaseSql);
                batch.BatchCommands.Add(command);
                command.Parameters.Add(new("ids", NpgsqlDbType.Array | NpgsqlDbType.Uuid) { Value = ids.ToArray() });
                command.Parameters.Add(new("workers", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = workers.ToArray() });
                command.Parameters.Add(new("expires", NpgsqlDbType.Array | NpgsqlDbType.TimestampTz) { Value = expires.ToArray() });
                command.Parameters.Add(new("now", NpgsqlDbType.TimestampTz) { Value = now });
                command.Parameters.Add(new("now_us", NpgsqlDbType.Bigint) { Value = JobRows.ToMicros(now) });
                command.Parameters.Add(new("batch", NpgsqlDbType.Text) { Value = s.Key });
                var reader = await batch.ExecuteReaderAsync(token).ConfigureAwait(false);
                await reader.NextResultAsync(token).ConfigureAwait(false);
                await ReadGrantsAsync(reader, granted, token).ConfigureAwait(false);
            }

            s.Store.AfterLeaseBatch?.Invoke(tries);
            return (granted, now);
        }, CancellationToken.None).ConfigureAwait(false);

        var given = new HashSet<Guid>();
        foreach (var item in batch)
        {
            var request = item.Request;
            if (!rows.TryGetValue(request.Id.Value, out var row) || !given.Add(request.Id.Value))
            {
                item.TrySetResult(default);
            }
            else if (row.Job is not { } job)
            {
                item.TrySetResult(new LeaseResult(null, null, JobState.Queued, (row.Fence, row.Error!)));
            }
            else
            {
                var lease = new JobLease(job.Id, request.WorkerId, job.FenceToken, job.Attempts.Count, now + request.Duration);
                item.TrySetResult(new LeaseResult(LeasedJob.For(lease, job), job, row.Previous, null));
            }
        }

        static async Task ReadGrantsAsync(NpgsqlDataReader reader, Dictionary<Guid, (JobRecord? Job, JobState Previous, long Fence, Exception? Error)> granted, CancellationToken token)
        {
            await using var readerScope = reader.ConfigureAwait(false);
            while (await reader.ReadAsync(token).ConfigureAwait(false))
            {
                var id = reader.GetGuid(0);
                try
                {
                    var job = JobRows.Read(reader);
                    granted[id] = (job, (JobState)reader.GetInt16(JobRows.ColumnCount), job.FenceToken, null);
                }
                catch (InvalidDataException e)
                {
                    granted[id] = (null, JobState.Queued, reader.GetInt64(17), e);
                }
            }
        }
    }

    /// <summary>Called after each try of a lease batch wrote its rows, with the try's number (1 for the first); for tests.</summary>
    internal Action<int>? AfterLeaseBatch { get; set; }

    private async Task FailMalformedAsync(LeaseRequest request, long fence, Exception error)
    {
        try
        {
            // The attempt number is only used for events; the row's own count is kept by the SQL.
            var lease = new JobLease(request.Id, request.WorkerId, fence, 0, DateTimeOffset.MaxValue);
            await CompleteAttemptAsync(lease, new AttemptCompletion
            {
                Outcome = AttemptOutcome.Failed,
                NextState = JobState.Failed,
                Error = $"The stored job could not be read ({error.Message}). It was written by another version or changed by hand; submit it again.",
                ErrorType = error.GetType().FullName,
            }, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is JobRunnerException or NpgsqlException or InvalidDataException or System.Text.Json.JsonException)
        {
            Log.MalformedRow(_logger, request.Id, e);
        }
    }

    public async ValueTask<IReadOnlyList<JobId>> RenewLeasesAsync(IReadOnlyList<JobLease> leases, TimeSpan duration, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(leases);
        if (leases.Count == 0)
        {
            return [];
        }

        // By job and fence: one worker may send two leases of one job (a stale attempt and the one leased since), and
        // only the stale one is lost.
        var renewed = await _db.RunAsync(_db.Worker, (Sql: _renewSql, Leases: leases, Duration: duration, Time: _time), static async (c, s, token) =>
        {
            // Taken in each try: a retry after a long outage must not write an expiry that has already passed.
            var expires = s.Time.GetUtcNow() + s.Duration;
            var ids = new Guid[s.Leases.Count];
            var fences = new long[s.Leases.Count];
            for (var i = 0; i < ids.Length; i++)
            {
                ids[i] = s.Leases[i].JobId.Value;
                fences[i] = s.Leases[i].FenceToken;
            }

            using var batch = new NpgsqlBatch(c) { BatchCommands = { JobRows.IndexPathsOnly() } };
            var command = new NpgsqlBatchCommand(s.Sql);
            batch.BatchCommands.Add(command);
            command.Parameters.Add(new("ids", NpgsqlDbType.Array | NpgsqlDbType.Uuid) { Value = ids });
            command.Parameters.Add(new("fences", NpgsqlDbType.Array | NpgsqlDbType.Bigint) { Value = fences });
            command.Parameters.Add(new("expires", NpgsqlDbType.TimestampTz) { Value = expires });
            var result = new HashSet<(Guid, long)>();
            var reader = await batch.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            await reader.NextResultAsync(token).ConfigureAwait(false);
            while (await reader.ReadAsync(token).ConfigureAwait(false))
            {
                result.Add((reader.GetGuid(0), reader.GetInt64(1)));
            }

            return result;
        }, cancellationToken).ConfigureAwait(false);

        List<JobId>? lost = null;
        foreach (var lease in leases)
        {
            if (!renewed.Contains((lease.JobId.Value, lease.FenceToken)))
            {
                (lost ??= []).Add(lease.JobId);
            }
        }

        return lost is null ? [] : lost;
    }

    public async ValueTask SaveCheckpointAsync(JobLease lease, ReadOnlyMemory<byte> checkpoint, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        var now = _time.GetUtcNow();
        var owner = await FencedUpdateAsync(lease, "checkpoint = @value", checkpoint.ToArray(), null, now, JobEventKind.Checkpointed, null, cancellationToken).ConfigureAwait(false);
        Publish(lease, owner, JobEventKind.Checkpointed, now, progress: null, message: null);
    }

    public async ValueTask ReportProgressAsync(JobLease lease, JobProgress progress, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        var now = _time.GetUtcNow();
        var owner = await FencedUpdateAsync(lease, "progress_fraction = @value, progress_message = @message", progress.Fraction is { } f ? f : DBNull.Value, JobRows.Text(progress.Message), now, JobEventKind.Progress, progress.Fraction, cancellationToken).ConfigureAwait(false);
        Publish(lease, owner, JobEventKind.Progress, now, progress, progress.Message);
    }

    /// <summary>
    /// Writes a fenced change of a running job, then tells the other hosts with a NOTIFY on the attempt-events channel
    /// (its own channel: hosts of an older version do not listen to it; sent after the write, in a transaction of its
    /// own, see <see cref="PostgresDatabase.NotifyAttemptEvent"/>), so that their watchers see the attempt's progress and
    /// checkpoints too; each listener skips its own process's notifications.
    /// </summary>
    private async Task<(string Tenant, string Workload)> FencedUpdateAsync(JobLease lease, string set, object value, string? message, DateTimeOffset now, JobEventKind kind, double? fraction, CancellationToken cancellationToken)
    {
        var sql = $"UPDATE {_db.Schema}.jobs SET {set}, updated_at = @now WHERE id = @id AND fence = @fence AND state = 2 RETURNING tenant, workload";
        var row = await _db.RunAsync(_db.Worker, (Sql: sql, Lease: lease, Value: value, Message: message, Now: now), static async (c, s, token) =>
        {
            using var command = new NpgsqlCommand(s.Sql, c);
            command.Parameters.AddWithValue("id", s.Lease.JobId.Value);
            command.Parameters.AddWithValue("fence", s.Lease.FenceToken);
            command.Parameters.AddWithValue("now", s.Now);
            command.Parameters.AddWithValue("value", s.Value);
            command.Parameters.Add(new("message", NpgsqlDbType.Text) { Value = (object?)s.Message ?? DBNull.Value });
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            return await reader.ReadAsync(token).ConfigureAwait(false) ? (reader.GetString(0), reader.GetString(1)) : default((string, string)?);
        }, cancellationToken).ConfigureAwait(false);
        var (tenant, workload) = row ?? throw await StaleAsync(lease).ConfigureAwait(false);
        _db.NotifyAttemptEvent(kind, lease, tenant, workload, static (json, e) =>
        {
            json.WriteNumber("s", JobRows.ToMicros(e.Now));
            if (e.Fraction is { } f)
            {
                json.WriteNumber("f", f);
            }

            if (e.Message is { } m)
            {
                // At most 2,000 characters, not splitting a surrogate pair.
                json.WriteString("r", m.Length <= 2000 ? m : m[..(char.IsHighSurrogate(m[1999]) ? 1999 : 2000)]);
            }
        }, (Now: now, Fraction: fraction, Message: message));
        return (tenant, workload);
    }

    public async ValueTask<JobState> CompleteAttemptAsync(JobLease lease, AttemptCompletion completion, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentNullException.ThrowIfNull(completion);
        if (completion.NextState == JobState.Running)
        {
            throw new ArgumentException("An attempt cannot complete into Running. Use Queued to run the job again.", nameof(completion));
        }

        var done = await _completions.Enqueue(new Completion(lease, completion)).WaitAsync(cancellationToken).ConfigureAwait(false);
        if (_events.IsWatched(JobEventKind.StateChanged))
        {
            _events.Publish(JobEvent.StateChanged(lease.JobId, done.Tenant, done.Workload, done.UpdatedAt, done.State, done.AttemptCount, JobState.Running, completion.Error));
        }

        return done.State;
    }

    private async Task CompleteBatchAsync(IReadOnlyList<Batcher<Completion, Completed>.Item> batch)
    {
        var now = _time.GetUtcNow();
        var rows = await _db.RunAsync(_db.Worker, (Store: this, Batch: batch, Now: now), static async (c, s, tries, token) =>
        {
            var n = s.Batch.Count;
            var ids = new Guid[n];
            var fences = new long[n];
            var outcomes = new int[n];
            var nextStates = new short[n];
            var dueAts = new DateTimeOffset?[n];
            var errors = new string?[n];
            var errorTypes = new string?[n];
            var exitCodes = new int?[n];
            for (var i = 0; i < n; i++)
            {
                var (lease, completion) = s.Batch[i].Request;
                ids[i] = lease.JobId.Value;
                fences[i] = lease.FenceToken;
                outcomes[i] = (int)completion.Outcome;
                nextStates[i] = (short)completion.NextState;
                dueAts[i] = completion.DueAt?.ToUniversalTime();
                errors[i] = JobRows.Text(completion.Error);
                errorTypes[i] = JobRows.Text(completion.ErrorType);
                exitCodes[i] = completion.ExitCode;
            }

            using var batch = new NpgsqlBatch(c) { BatchCommands = { JobRows.IndexPathsOnly() } };
            var command = new NpgsqlBatchCommand(s.Store._completeSql);
            batch.BatchCommands.Add(command);
            var p = command.Parameters;
            p.Add(new("ids", NpgsqlDbType.Array | NpgsqlDbType.Uuid) { Value = ids });
            p.Add(new("fences", NpgsqlDbType.Array | NpgsqlDbType.Bigint) { Value = fences });
            p.Add(new("outcomes", NpgsqlDbType.Array | NpgsqlDbType.Integer) { Value = outcomes });
            p.Add(new("next_states", NpgsqlDbType.Array | NpgsqlDbType.Smallint) { Value = nextStates });
            p.Add(new("due_ats", NpgsqlDbType.Array | NpgsqlDbType.TimestampTz) { Value = dueAts });
            p.Add(new("errors", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = errors });
            p.Add(new("error_types", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = errorTypes });
            p.Add(new("exit_codes", NpgsqlDbType.Array | NpgsqlDbType.Integer) { Value = exitCodes });
            p.Add(new("now", NpgsqlDbType.TimestampTz) { Value = s.Now });
            p.Add(new("now_us", NpgsqlDbType.Bigint) { Value = JobRows.ToMicros(s.Now) });
            // By job and fence: a stale attempt and the one leased since may complete in one batch, and only the
            // current one's row comes back.
            var done = new Dictionary<(Guid, long), Completed>(n);
            var reader = await batch.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using (reader.ConfigureAwait(false))
            {
                await reader.NextResultAsync(token).ConfigureAwait(false);
                await ReadCompletedAsync(reader, done, token).ConfigureAwait(false);
            }

            if (tries > 1 && done.Count < n)
            {
                // A retry: the first try may have committed before its reply was lost. What it wrote carries this
                // batch's fence and time; the statement above found those rows no longer running and left them alone.
                using var replay = new NpgsqlCommand(s.Store._completeReplaySql, c);
                replay.Parameters.Add(new("ids", NpgsqlDbType.Array | NpgsqlDbType.Uuid) { Value = ids });
                replay.Parameters.Add(new("fences", NpgsqlDbType.Array | NpgsqlDbType.Bigint) { Value = fences });
                replay.Parameters.Add(new("now", NpgsqlDbType.TimestampTz) { Value = s.Now });
                replay.Parameters.Add(new("now_us", NpgsqlDbType.Text) { Value = JobRows.ToMicros(s.Now).ToString(CultureInfo.InvariantCulture) });
                var replayed = await replay.ExecuteReaderAsync(token).ConfigureAwait(false);
                await using (replayed.ConfigureAwait(false))
                {
                    await ReadCompletedAsync(replayed, done, token).ConfigureAwait(false);
                }
            }

            s.Store.AfterCompleteBatch?.Invoke(tries);
            return done;
        }, CancellationToken.None).ConfigureAwait(false);

        foreach (var item in batch)
        {
            var lease = item.Request.Lease;
            if (rows.TryGetValue((lease.JobId.Value, lease.FenceToken), out var row))
            {
                item.TrySetResult(row);
            }
            else
            {
                item.TrySetException(await StaleAsync(lease).ConfigureAwait(false));
            }
        }
    }

    private static async Task ReadCompletedAsync(NpgsqlDataReader reader, Dictionary<(Guid, long), Completed> done, CancellationToken token)
    {
        while (await reader.ReadAsync(token).ConfigureAwait(false))
        {
            done[(reader.GetGuid(0), reader.GetInt64(6))] = Completed.Read(reader);
        }
    }

    /// <summary>Called after each try of a completion batch, with the try's number (1 for the first); for tests.</summary>
    internal Action<int>? AfterCompleteBatch { get; set; }

    public async ValueTask<JobRecord> RequestCancellationAsync(JobId id, string? reason, CancellationToken cancellationToken)
    {
        var now = _time.GetUtcNow();
        var (changed, notified, previous) = await _db.RunAsync(_db.Client, (Store: this, Id: id, Reason: reason, Now: now), static async (c, s, token) =>
        {
            using var command = new NpgsqlCommand(s.Store._cancelSql, c);
            command.Parameters.AddWithValue("id", s.Id.Value);
            command.Parameters.Add(new("reason", NpgsqlDbType.Text) { Value = (object?)JobRows.Text(s.Reason) ?? DBNull.Value });
            command.Parameters.AddWithValue("now", s.Now);
            command.Parameters.AddWithValue("channel", s.Store._db.CancelChannel);
            command.Parameters.AddWithValue("instance", s.Store._db.InstanceId);
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            return await reader.ReadAsync(token).ConfigureAwait(false)
                ? (JobRows.Read(reader), reader.GetInt64(JobRows.ColumnCount) > 0, (JobState)reader.GetInt16(JobRows.ColumnCount + 1))
                : (null, false, default);
        }, cancellationToken).ConfigureAwait(false);

        if (changed is null)
        {
            // Unchanged: finished, already being cancelled, or no such job. Already being cancelled may also be this very
            // request, retried after its commit's reply was lost: this process's workers hear it again (stopping an
            // attempt twice does nothing), as its listener ignores the NOTIFY this process sent.
            var job = await GetAsync(id, cancellationToken).ConfigureAwait(false) ?? throw new JobNotFoundException(id);
            if (job is { State: JobState.Running, CancelRequested: true })
            {
                PublishCancellation(job.Id, job.Request.Tenant, job.Request.Workload, job.Attempts.Count, job.CancelReason, now);
            }

            return job;
        }

        if (changed.State == JobState.Running)
        {
            // This process's workers hear it here; other hosts by the NOTIFY sent with the commit.
            PublishCancellation(changed.Id, changed.Request.Tenant, changed.Request.Workload, changed.Attempts.Count, reason, now);
        }
        else
        {
            PublishState(changed, previous, reason);

            // Cancelled before it ran: also told as a cancellation (state Cancelled, after the state change), so that
            // this process's worker, if its scheduler holds the job, drops it now rather than when its turn comes. Other
            // hosts are not told: theirs leaves at its turn (its lease refused).
            if (changed.State == JobState.Cancelled && _events.IsWatched(JobEventKind.CancellationRequested))
            {
                _events.Publish(CancelledBeforeRun.Event(changed, previous, reason));
            }
        }

        return changed;
    }

    public async ValueTask<JobRecord> RequeueAsync(JobId id, CancellationToken cancellationToken)
    {
        const string Message = "Retried by request.";
        var now = _time.GetUtcNow();
        (JobRecord Job, JobState Previous)? changed;
        var committedBefore = new StrongBox<bool>();
        try
        {
            changed = await _db.RunAsync(_db.Client, (Store: this, Id: id, Now: now, CommittedBefore: committedBefore), static async (c, s, tries, token) =>
            {
                if (tries > 1 && s.Store._db.Options.WriteHistory)
                {
                    // A retry: the first try may have committed before its reply was lost, and the job may have run and
                    // finished again since. Its history row (this call's time and message) says so: requeue once only.
                    using var done = new NpgsqlCommand($"SELECT EXISTS (SELECT FROM {s.Store._db.Schema}.job_history WHERE job_id = @id AND at = @now AND message = @message)", c);
                    done.Parameters.AddWithValue("id", s.Id.Value);
                    done.Parameters.AddWithValue("now", s.Now);
                    done.Parameters.Add(new("message", NpgsqlDbType.Text) { Value = Message });
                    if ((bool)(await done.ExecuteScalarAsync(token).ConfigureAwait(false))!)
                    {
                        s.CommittedBefore.Value = true;
                        return default((JobRecord, JobState)?);
                    }
                }

                (JobRecord, JobState)? requeued;
                using (var command = new NpgsqlCommand(s.Store._requeueSql, c))
                {
                    command.Parameters.AddWithValue("id", s.Id.Value);
                    command.Parameters.AddWithValue("now", s.Now);
                    command.Parameters.Add(new("message", NpgsqlDbType.Text) { Value = Message });
                    var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
                    await using var readerScope = reader.ConfigureAwait(false);
                    requeued = await reader.ReadAsync(token).ConfigureAwait(false)
                        ? (JobRows.Read(reader), (JobState)reader.GetInt16(JobRows.ColumnCount))
                        : null;
                }

                s.Store.AfterRequeue?.Invoke(tries);
                return requeued;
            }, cancellationToken).ConfigureAwait(false);
        }
        catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation && e.ConstraintName == "jobs_dedupe")
        {
            // Another live job took the dedupe key while this one was finished.
            var job = await GetAsync(id, cancellationToken).ConfigureAwait(false) ?? throw new JobNotFoundException(id);
            var holder = await FindLiveByDedupeKeyAsync(job.Request.Tenant, job.Request.DedupeKey!).ConfigureAwait(false);
            throw new JobStateException(id, job.State, $"its dedupe key '{job.Request.DedupeKey}' is held by live job {holder?.Id.ToString() ?? "(finished since: try again)"}; wait for that job, or submit a new job.");
        }

        if (changed is not { } done)
        {
            var job = await GetAsync(id, cancellationToken).ConfigureAwait(false) ?? throw new JobNotFoundException(id);
            if (committedBefore.Value || (job.State is JobState.Queued or JobState.Scheduled && JobRows.ToMicros(job.UpdatedAt) == JobRows.ToMicros(now)))
            {
                // Our own write: it committed, but its reply was lost and the statement was run again (without history,
                // only recognised while the job has not moved on).
                return job;
            }

            throw new JobStateException(id, job.State, "only a Failed or Cancelled job can be retried; cancel it first, or submit a new job.");
        }

        PublishState(done.Job, done.Previous, Message);
        return done.Job;
    }

    /// <summary>Called after each try of a manual retry's statement, with the try's number (1 for the first); for tests.</summary>
    internal Action<int>? AfterRequeue { get; set; }

    internal IJobEventBus Events => _events;

    internal void PublishCancellation(JobId id, string tenant, string workload, int attempt, string? reason, DateTimeOffset now)
    {
        _events.Publish(JobEvent.ForAttempt(JobEventKind.CancellationRequested, id, tenant, workload, now, attempt, reason));
    }

    /// <summary>Publishes an attempt's progress or checkpoint that another host wrote (from its NOTIFY).</summary>
    internal void PublishRemote(JobEventKind kind, JobId id, string tenant, string workload, int attempt, DateTimeOffset at, JobProgress? progress, string? message)
    {
        if (_events.IsWatched(kind))
        {
            _events.Publish(JobEvent.ForAttempt(kind, id, tenant, workload, at, attempt, message, progress));
        }
    }

    public async ValueTask<IReadOnlyList<JobRecord>> ReclaimExpiredLeasesAsync(CancellationToken cancellationToken)
    {
        var now = _time.GetUtcNow();
        var rows = await _db.RunAsync(_db.Worker, (Store: this, Now: now), static async (c, s, token) =>
        {
            using var command = new NpgsqlCommand(s.Store._reclaimSql, c);
            command.Parameters.AddWithValue("now", s.Now);
            command.Parameters.AddWithValue("now_us", JobRows.ToMicros(s.Now));
            command.Parameters.AddWithValue("limit", s.Store._db.Options.MaxBatchSize);
            command.Parameters.AddWithValue("max_losses", s.Store._db.Options.MaxLeaseExpirations);
            command.Parameters.AddWithValue("expired_message", LeaseExpiredMessage);
            command.Parameters.AddWithValue("quarantine_message", QuarantineMessage.Replace("{0}", "%s", StringComparison.Ordinal));
            var jobs = new List<JobRecord>();
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            while (await reader.ReadAsync(token).ConfigureAwait(false))
            {
                try
                {
                    jobs.Add(JobRows.Read(reader));
                }
                catch (InvalidDataException e)
                {
                    // Reclaimed with the others (the statement has committed); its next lease fails it.
                    Log.MalformedRow(s.Store._logger, new JobId(reader.GetGuid(0)), e);
                }
            }

            return jobs;
        }, cancellationToken).ConfigureAwait(false);

        var ready = new List<JobRecord>();
        foreach (var job in rows)
        {
            PublishState(job, JobState.Running, job.LastError);
            if (job.State == JobState.Queued)
            {
                ready.Add(job);
            }
        }

        return ready;
    }

    /// <summary>Builds the error for a fenced write that changed no row: no such job, or a stale token.</summary>
    private async Task<Exception> StaleAsync(JobLease lease)
    {
        var current = await _db.RunAsync(_db.Client, (Sql: $"SELECT fence, state FROM {_db.Schema}.jobs WHERE id = $1", Id: lease.JobId.Value), static async (c, s, token) =>
        {
            using var command = new NpgsqlCommand(s.Sql, c);
            command.Parameters.Add(new NpgsqlParameter { Value = s.Id });
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            return await reader.ReadAsync(token).ConfigureAwait(false) ? (reader.GetInt64(0), (JobState)reader.GetInt16(1)) : default((long, JobState)?);
        }, CancellationToken.None).ConfigureAwait(false);
        if (current is not { } row)
        {
            return new JobNotFoundException(lease.JobId);
        }

        var reason = row.Item1 != lease.FenceToken ? "a newer lease was granted" : $"the attempt already ended (the job is {row.Item2})";
        return new StaleFenceTokenException(lease.JobId, lease.FenceToken, row.Item1, reason);
    }

    private void Publish(JobLease lease, (string Tenant, string Workload) owner, JobEventKind kind, DateTimeOffset now, JobProgress? progress, string? message)
    {
        if (_events.IsWatched(kind))
        {
            _events.Publish(JobEvent.ForAttempt(kind, lease.JobId, owner.Tenant, owner.Workload, now, lease.Attempt, message, progress));
        }
    }

    private void PublishState(JobRecord job, JobState? previous, string? message)
    {
        if (_events.IsWatched(JobEventKind.StateChanged))
        {
            _events.Publish(JobEvent.StateChanged(job, previous, message));
        }
    }

    private readonly record struct LeaseRequest(JobId Id, string WorkerId, TimeSpan Duration);

    private readonly record struct LeaseResult(LeasedJob? Leased, JobRecord? Job, JobState Previous, (long Fence, Exception Error)? Malformed);

    private readonly record struct Completion(JobLease Lease, AttemptCompletion Value);

    /// <summary>A completed row as the statement returned it (<see cref="CompletedColumns"/>): what its event needs.</summary>
    private readonly record struct Completed(JobState State, DateTimeOffset UpdatedAt, int AttemptCount, string Tenant, string Workload)
    {
        public static Completed Read(NpgsqlDataReader row)
            => new((JobState)row.GetInt16(1), row.GetFieldValue<DateTimeOffset>(2), row.GetInt32(3), row.GetString(4), row.GetString(5));
    }

    private static partial class Log
    {
        [LoggerMessage(10, LogLevel.Error, "Job {JobId}: its row could not be read; the job is failed alone.")]
        public static partial void MalformedRow(ILogger logger, JobId jobId, Exception exception);
    }
}
