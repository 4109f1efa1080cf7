using System.Globalization;
using Npgsql;
using NpgsqlTypes;

namespace JobRunner.Storage.Postgres;

/// <summary>
/// The queue side of the jobs table: a ready job is a row in state Queued (or Scheduled and due) that no worker has
/// taken. Dequeue (the <c>dequeue</c> function of migration 0005, replaced by 0006 with one that runs fewer statements) takes a batch with <c>FOR UPDATE SKIP LOCKED</c>,
/// highest priority band first, and within a band from each tenant in turn its oldest jobs, as many as the tenant's
/// want; it hides them for the visibility time; the Core scheduler then orders the batch and the store leases each job.
/// Wants follow the tenants' weights: this queue counts per tenant the jobs it handed out and that were not yet
/// acknowledged or returned (running or held in this worker's lookahead), and asks each tenant for its weighted share of
/// that count plus the batch, less what it already holds. The store's transitions make a job ready again, so
/// <see cref="EnqueueAsync"/> only wakes the workers (a coalesced NOTIFY).
/// Idle workers wait for that NOTIFY, for the next due time, or at most <see cref="PostgresOptions.PollInterval"/>.
/// </summary>
internal sealed class PostgresJobQueue : IJobQueue
{
    /// <summary>How many dequeues a tenant with nothing in flight here still counts in the shares after it was last taken.</summary>
    private const int RememberedDequeues = 16;

    private readonly PostgresDatabase _db;
    private readonly ISchedulerControl? _weights;
    private readonly Lock _lock = new();
    // Every delivery not yet acknowledged or returned, by reference (a job delivered twice is two deliveries), with its
    // visibility: a delivery whose visibility lapsed without an extension was dropped by its consumer.
    private readonly Dictionary<QueuedJob, DateTimeOffset> _inFlight = new(ReferenceEqualityComparer.Instance);
    private readonly Dictionary<string, TenantFlow> _tenants = new(StringComparer.Ordinal);
    private readonly TimeProvider _time;
    private readonly string _dequeueSql;
    private readonly string _nextDueSql;
    private readonly string _returnSql;
    private readonly string _extendSql;
    private DateTimeOffset _nextLapse = DateTimeOffset.MaxValue;
    private string? _rotation;
    private long _dequeues;
    // The wake-up captured before a look that took every ready row it saw (fewer than asked, under the tenant cap), or
    // before taking offers.
    private Exhausted? _exhausted;
    private int _looks;
    private int _offersTaken;
    // When this queue last asked for the next due time (UTC ticks), that due time (MaxValue for none), and the count of
    // plain wake-ups then: offers replace a look only for a short while after, and never once something is due.
    private long _lastCheck = long.MinValue;
    private long _knownDue = long.MaxValue;
    private long _plainAtCheck = -1;

    /// <summary>How long after a next-due query offers may replace a look (see <see cref="TakeOffers"/>).</summary>
    internal static readonly TimeSpan OfferWindow = TimeSpan.FromMilliseconds(100);

    /// <summary>Creates the queue.</summary>
    /// <param name="db">The database.</param>
    /// <param name="weights">Where the tenants' weights come from (the worker's scheduler); without it every tenant weighs 1.</param>
    public PostgresJobQueue(PostgresDatabase db, ISchedulerControl? weights = null)
    {
        _db = db;
        _weights = weights;
        _time = db.Time;
        var s = db.Schema;
        _dequeueSql = $"SELECT {JobRows.QueueColumns} FROM {s}.dequeue(@now, @until, @limit, @after, @tenants, @wants, 1, @max_tenants)";
        // The Scheduled rows that wait for later, oldest first per band in their own index (one probe per priority);
        // then the ready ones (the rows taken are due again when their visibility lapses).
        _nextDueSql = $"""
            SELECT least(
                (SELECT min(w.ready_at) FROM generate_series(1, 10) AS b(priority)
                 CROSS JOIN LATERAL (SELECT ready_at FROM {s}.jobs WHERE state = 1 AND NOT due AND priority = b.priority ORDER BY ready_at LIMIT 1) w),
                (SELECT min(greatest(ready_at, coalesce(taken_until, ready_at))) FROM {s}.jobs WHERE state = 0 OR (state = 1 AND due)))
            """;
        // Rows are locked in id order, like every multi-row write, so that concurrent batches cannot deadlock.
        const string Locked = "(SELECT id FROM {0}.jobs WHERE id = ANY(@ids) AND state IN (0, 1) ORDER BY id FOR UPDATE) l";
        _returnSql = $"UPDATE {s}.jobs j SET taken_until = NULL FROM {string.Format(CultureInfo.InvariantCulture, Locked, s)} WHERE j.id = l.id";
        _extendSql = $"UPDATE {s}.jobs j SET taken_until = @until FROM {string.Format(CultureInfo.InvariantCulture, Locked, s)} WHERE j.id = l.id";
    }

    public ValueTask EnqueueAsync(QueuedJob job, CancellationToken cancellationToken)
    {
        // The row is already ready (the store wrote it so): wake the workers, offering them the job.
        _db.NotifyReady(job);
        return ValueTask.CompletedTask;
    }

    public async ValueTask<int> DequeueAsync(Memory<QueuedJob> buffer, TimeSpan visibility, CancellationToken cancellationToken)
    {
        if (buffer.Length == 0)
        {
            throw new ArgumentException("The buffer must hold at least one job.", nameof(buffer));
        }

        while (true)
        {
            // The last look took every ready row it saw: until a wake-up since (a new or returned job), or a due time,
            // another look now would find nothing (and would compete with the lease of what it took).
            if (Interlocked.Exchange(ref _exhausted, null) is { } exhausted)
            {
                if (!exhausted.Wake.IsCompleted)
                {
                    if (exhausted.Offered && KnowsNextDue(_time.GetUtcNow()) is { } trusted)
                    {
                        // Offers were taken, and only offers came since the last next-due query: what it said holds, and
                        // asking again now would find the offered jobs due until their leases are written (and look).
                        await WaitForWakeAsync(exhausted.Wake, trusted, cancellationToken).ConfigureAwait(false);
                        if (!exhausted.Wake.IsCompleted)
                        {
                            Volatile.Write(ref _exhausted, exhausted with { Offered = false });
                            continue; // ask again
                        }
                    }
                    else
                    {
                        await WaitAsync(exhausted.Wake, dueNow: TimeSpan.Zero, cancellationToken).ConfigureAwait(false);
                        if (!exhausted.Wake.IsCompleted)
                        {
                            continue; // a due time or the poll interval: look
                        }
                    }
                }

                var offered = TakeOffers(buffer, visibility, exhausted);
                if (offered > 0)
                {
                    return offered;
                }
            }

            // Captured before looking, so that a wake-up that arrives while it looks is not lost. The look finds what
            // was offered so far.
            var wake = _db.Ready.Current;
            var plain = _db.Ready.PlainCount;
            _db.Ready.TakeOffers();

            var now = _time.GetUtcNow();
            var until = now + visibility;
            var request = Plan(now, until, buffer.Length);
            Interlocked.Increment(ref _looks);
            var (jobs, rotation) = await _db.RunAsync(_db.Worker, request, static async (c, s, token) =>
            {
                using var batch = new NpgsqlBatch(c) { BatchCommands = { JobRows.IndexPathsOnly(CommitMode.Relaxed) } };
                var command = new NpgsqlBatchCommand(s.Sql);
                batch.BatchCommands.Add(command);
                command.Parameters.Add(new("now", NpgsqlDbType.TimestampTz) { Value = s.Now });
                command.Parameters.Add(new("until", NpgsqlDbType.TimestampTz) { Value = s.Until });
                command.Parameters.Add(new("limit", NpgsqlDbType.Integer) { Value = s.Limit });
                command.Parameters.Add(new("after", NpgsqlDbType.Text) { Value = (object?)s.After ?? DBNull.Value });
                command.Parameters.Add(new("tenants", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = s.Tenants });
                command.Parameters.Add(new("wants", NpgsqlDbType.Array | NpgsqlDbType.Integer) { Value = s.Wants });
                command.Parameters.Add(new("max_tenants", NpgsqlDbType.Integer) { Value = s.MaxTenants });
                var result = new List<QueuedJob>(s.Limit);
                string? rotation = null;
                var reader = await batch.ExecuteReaderAsync(token).ConfigureAwait(false);
                await using var readerScope = reader.ConfigureAwait(false);
                await reader.NextResultAsync(token).ConfigureAwait(false);
                while (await reader.ReadAsync(token).ConfigureAwait(false))
                {
                    // The last row carries no job, only where the next call's walk over the tenants starts.
                    if (reader.IsDBNull(0))
                    {
                        rotation = reader.IsDBNull(2) ? null : reader.GetString(2);
                    }
                    else
                    {
                        result.Add(JobRows.ReadQueued(reader));
                    }
                }

                return (result, rotation);
            }, cancellationToken).ConfigureAwait(false);

            Taken(jobs, rotation, until);
            if (jobs.Count > 0)
            {
                // Fewer than asked, and not stopped by the tenant cap: the look found every ready row it could take.
                if (jobs.Count < request.Limit && !ReachedTenantCap(jobs, request.MaxTenants))
                {
                    Volatile.Write(ref _exhausted, new Exhausted(wake, plain, Offered: false));
                }

                jobs.CopyTo(buffer.Span);
                return jobs.Count;
            }

            // Something due now that this look did not take is locked by another transaction: look again soon.
            await WaitAsync(wake, dueNow: TimeSpan.FromMilliseconds(1), cancellationToken).ConfigureAwait(false);
            if (wake.IsCompleted && TakeOffers(buffer, visibility, new Exhausted(wake, plain, Offered: false)) is var offeredNow and > 0)
            {
                return offeredNow;
            }
        }
    }

    /// <summary>
    /// After <paramref name="last"/>'s wake-up came: when only offers (see <see cref="WakeSignal"/>) came since, the jobs
    /// offered are every ready job that look did not see (a job made ready otherwise sends a plain wake-up, and one that
    /// falls due is known from the next-due query), so they are taken into <paramref name="buffer"/> (highest priority
    /// first) without looking again: one round trip less from submit to start. Only while the last next-due query holds
    /// (see <see cref="KnowsNextDue"/>), so that due rows are not put off by a stream of offers, and a worker that was
    /// busy for a while looks rather than take stale offers. Offered jobs are not hidden from other workers (nor from this
    /// one's looks): the lease decides which delivery runs a job, the others find it taken.
    /// </summary>
    /// <returns>How many jobs were taken; 0 when a look must decide (a plain wake-up, no offers, more than the buffer holds, a due time or the window passed).</returns>
    private int TakeOffers(Memory<QueuedJob> buffer, TimeSpan visibility, Exhausted last)
    {
        // Captured before taking, like a look's.
        var wake = _db.Ready.Current;
        var plain = _db.Ready.PlainCount;
        var now = _time.GetUtcNow();
        if (plain != last.Plain || KnowsNextDue(now) is null)
        {
            return 0;
        }

        var offers = _db.Ready.TakeOffers();
        if (offers is null || offers.Count > buffer.Length)
        {
            return 0;
        }

        string? rotation;
        lock (_lock)
        {
            _dequeues++;
            rotation = _rotation;
        }

        offers.Sort(static (a, b) => b.Priority != a.Priority ? b.Priority.CompareTo(a.Priority) : a.EnqueuedAt.CompareTo(b.EnqueuedAt));
        Taken(offers, rotation, now + visibility);
        Interlocked.Increment(ref _offersTaken);
        Volatile.Write(ref _exhausted, new Exhausted(wake, plain, Offered: true));
        offers.CopyTo(buffer.Span);
        return offers.Count;
    }

    /// <summary>
    /// Whether the last next-due query still holds at <paramref name="now"/>: within <see cref="OfferWindow"/> of it, no
    /// plain wake-up since, and the due time it found not reached.
    /// </summary>
    /// <returns>How long it holds, or <see langword="null"/>.</returns>
    private TimeSpan? KnowsNextDue(DateTimeOffset now)
    {
        var left = Math.Min(Volatile.Read(ref _knownDue), Volatile.Read(ref _lastCheck) + OfferWindow.Ticks) - now.UtcTicks;
        return left > 0 && _db.Ready.PlainCount == Volatile.Read(ref _plainAtCheck) ? TimeSpan.FromTicks(left) : null;
    }

    /// <summary>Gets how many times this queue took offered jobs instead of looking (for tests).</summary>
    internal int OffersTaken => Volatile.Read(ref _offersTaken);

    /// <summary>Whether the jobs of one dequeue come from as many tenants as one dequeue visits at most.</summary>
    private static bool ReachedTenantCap(List<QueuedJob> jobs, int maxTenants)
    {
        if (jobs.Count < maxTenants)
        {
            return false;
        }

        var tenants = new HashSet<string>(StringComparer.Ordinal);
        foreach (var job in jobs)
        {
            if (tenants.Add(job.Tenant) && tenants.Count >= maxTenants)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Waits for <paramref name="wake"/>, the next due time (Scheduled rows, lapsing visibilities), or the poll interval;
    /// <paramref name="dueNow"/> when something is due already.
    /// </summary>
    private async Task WaitAsync(Task wake, TimeSpan dueNow, CancellationToken cancellationToken)
    {
        var wait = _db.Options.PollInterval;
        var asked = _time.GetUtcNow();
        var plain = _db.Ready.PlainCount;
        var nextDue = await _db.RunAsync(_db.Client, _nextDueSql, static async (c, sql, token) =>
        {
            using var command = new NpgsqlCommand(sql, c);
            var value = await command.ExecuteScalarAsync(token).ConfigureAwait(false);
            return value is DateTime due ? new DateTimeOffset(due, TimeSpan.Zero) : (DateTimeOffset?)null;
        }, cancellationToken).ConfigureAwait(false);
        Volatile.Write(ref _knownDue, nextDue?.UtcTicks ?? long.MaxValue);
        Volatile.Write(ref _plainAtCheck, plain);
        Volatile.Write(ref _lastCheck, asked.UtcTicks);
        if (nextDue is { } due)
        {
            var untilDue = due - _time.GetUtcNow();
            if (untilDue < wait)
            {
                wait = untilDue > TimeSpan.Zero ? untilDue : dueNow;
            }
        }

        await WaitForWakeAsync(wake, wait, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Waits for <paramref name="wake"/> at most <paramref name="limit"/>.</summary>
    private async Task WaitForWakeAsync(Task wake, TimeSpan limit, CancellationToken cancellationToken)
    {
        if (limit <= TimeSpan.Zero)
        {
            return;
        }

        try
        {
            await wake.WaitAsync(limit, _time, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
    }

    /// <summary>Gets how many dequeue statements this queue ran (for tests).</summary>
    internal int Looks => Volatile.Read(ref _looks);

    /// <summary>Gets how many of the jobs this queue handed out are neither acknowledged nor returned, per tenant (for tests).</summary>
    internal int InFlight(string tenant)
    {
        lock (_lock)
        {
            return _tenants.TryGetValue(tenant, out var flow) ? flow.InFlight : 0;
        }
    }

    /// <summary>Gets or sets how many tenants take part in one dequeue at most (tenants with nothing to give do not count).</summary>
    internal int MaxTenantsPerDequeue { get; set; } = 128;

    public ValueTask AcknowledgeAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken)
    {
        // The store's transition already took the job out of the ready set (leased, finished or made ready again).
        ArgumentNullException.ThrowIfNull(jobs);
        Settled(jobs);
        return ValueTask.CompletedTask;
    }

    public async ValueTask ReturnAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        if (jobs.Count > 0)
        {
            Settled(jobs);
            await UpdateAsync(_returnSql, jobs, null, cancellationToken).ConfigureAwait(false);
            _db.NotifyReady();
        }
    }

    public async ValueTask ExtendAsync(IReadOnlyList<QueuedJob> jobs, TimeSpan visibility, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        if (jobs.Count > 0)
        {
            var until = _time.GetUtcNow() + visibility;
            lock (_lock)
            {
                foreach (var job in jobs)
                {
                    if (_inFlight.ContainsKey(job))
                    {
                        _inFlight[job] = until;
                    }
                }
            }

            await UpdateAsync(_extendSql, jobs, until, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Computes each known tenant's want for a dequeue of <paramref name="limit"/> jobs: its weighted share of what this
    /// worker will hold (the jobs in flight plus the batch), less what it holds already; at least 1 while it holds none.
    /// Known tenants are those in flight here and those taken in the last few dequeues; others are asked for 1 at first
    /// (the dequeue doubles that while they keep giving).
    /// </summary>
    private DequeueRequest Plan(DateTimeOffset now, DateTimeOffset until, int limit)
    {
        lock (_lock)
        {
            if (now >= _nextLapse)
            {
                DropLapsed(now);
            }

            _dequeues++;
            var count = 0;
            long inFlight = 0;
            long totalWeight = 0;
            foreach (var (name, flow) in _tenants)
            {
                if (flow.InFlight == 0 && flow.LastTaken + RememberedDequeues < _dequeues)
                {
                    // Removing during enumeration is allowed for Dictionary.
                    _tenants.Remove(name);
                    continue;
                }

                flow.Weight = Math.Max(_weights?.GetTenantWeight(name) ?? 1, 1);
                totalWeight += flow.Weight;
                inFlight += flow.InFlight;
                count++;
            }

            var tenants = new string[count];
            var wants = new int[count];
            var capacity = inFlight + limit;
            var i = 0;
            foreach (var (name, flow) in _tenants)
            {
                var share = (long)Math.Ceiling((double)capacity * flow.Weight / totalWeight);
                var want = Math.Clamp(share - flow.InFlight, flow.InFlight == 0 ? 1 : 0, limit);
                tenants[i] = name;
                wants[i] = (int)want;
                i++;
            }

            return new DequeueRequest(_dequeueSql, now, until, limit, _rotation, tenants, wants, MaxTenantsPerDequeue);
        }
    }

    /// <summary>Counts the jobs a dequeue handed out, and keeps where the next one starts.</summary>
    private void Taken(List<QueuedJob> jobs, string? rotation, DateTimeOffset until)
    {
        lock (_lock)
        {
            _rotation = rotation;
            foreach (var job in jobs)
            {
                _inFlight[job] = until;
                if (!_tenants.TryGetValue(job.Tenant, out var flow))
                {
                    flow = new TenantFlow();
                    _tenants.Add(job.Tenant, flow);
                }

                flow.InFlight++;
                flow.LastTaken = _dequeues;
            }

            if (jobs.Count > 0 && until < _nextLapse)
            {
                _nextLapse = until;
            }
        }
    }

    /// <summary>Stops counting deliveries that were acknowledged or returned (each once, however often it is settled).</summary>
    private void Settled(IReadOnlyList<QueuedJob> jobs)
    {
        lock (_lock)
        {
            foreach (var job in jobs)
            {
                if (job is not null && _inFlight.Remove(job))
                {
                    Release(job.Tenant);
                }
            }
        }
    }

    /// <summary>Stops counting deliveries whose visibility lapsed without an extension: their consumer dropped them.</summary>
    private void DropLapsed(DateTimeOffset now)
    {
        var next = DateTimeOffset.MaxValue;
        foreach (var (job, until) in _inFlight)
        {
            if (until <= now)
            {
                _inFlight.Remove(job);
                Release(job.Tenant);
            }
            else if (until < next)
            {
                next = until;
            }
        }

        _nextLapse = next;
    }

    private void Release(string tenant)
    {
        if (_tenants.TryGetValue(tenant, out var flow))
        {
            flow.InFlight--;
        }
    }

    private Task<int> UpdateAsync(string sql, IReadOnlyList<QueuedJob> jobs, DateTimeOffset? until, CancellationToken cancellationToken)
    {
        var ids = new Guid[jobs.Count];
        for (var i = 0; i < ids.Length; i++)
        {
            ids[i] = jobs[i].Id.Value;
        }

        return _db.RunAsync(_db.Worker, (Sql: sql, Ids: ids, Until: until), static async (c, s, token) =>
        {
            using var command = new NpgsqlCommand(s.Sql, c);
            command.Parameters.Add(new("ids", NpgsqlDbType.Array | NpgsqlDbType.Uuid) { Value = s.Ids });
            if (s.Until is { } until)
            {
                command.Parameters.Add(new("until", NpgsqlDbType.TimestampTz) { Value = until });
            }

            return await command.ExecuteNonQueryAsync(token).ConfigureAwait(false);
        }, cancellationToken);
    }

    /// <summary>
    /// A wake-up captured before a look that found every ready row, or before taking offers (<paramref name="Offered"/>),
    /// with the count of plain wake-ups then.
    /// </summary>
    private sealed record Exhausted(Task Wake, long Plain, bool Offered);

    private sealed record DequeueRequest(
        string Sql, DateTimeOffset Now, DateTimeOffset Until, int Limit, string? After, string[] Tenants, int[] Wants, int MaxTenants);

    /// <summary>One tenant's deliveries on this worker.</summary>
    private sealed class TenantFlow
    {
        public int InFlight { get; set; }

        /// <summary>Gets or sets the dequeue that last took one of the tenant's jobs.</summary>
        public long LastTaken { get; set; }

        /// <summary>Gets or sets the tenant's weight, read at each dequeue.</summary>
        public int Weight { get; set; }
    }
}
