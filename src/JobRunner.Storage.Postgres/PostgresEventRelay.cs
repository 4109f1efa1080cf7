using Npgsql;
using NpgsqlTypes;

namespace JobRunner.Storage.Postgres;

/// <summary>
/// Carries state changes across hosts: while someone on this host watches <see cref="JobEventKind.StateChanged"/>,
/// reads the history rows other processes wrote (by <c>instance</c>) and publishes them on the local bus, so that
/// <see cref="IJobClient.WatchAsync(JobId, CancellationToken)"/> on an API host sees a job that runs on a worker host.
/// Reads each row once, by a cursor over (<c>xact_id</c>, <c>id</c>): the id of the transaction that wrote the row
/// (migration 0004), then the row's id. History ids are not committed in order, transaction ids neither, but a row whose
/// transaction id is below the oldest transaction still running (<c>pg_snapshot_xmin</c>) belongs to a finished
/// transaction, all of whose rows are visible; a row of a transaction still running has an id at or above it and is
/// read by a later poll, after the cursor. One poll reads at most <see cref="MaxRows"/> rows; the rest follow at the
/// next poll. One job's events keep their order (see <see cref="Publishable"/>). While nobody watches, each poll only
/// takes the server's snapshot (one short query) and then checks that still nobody watches: a watcher that subscribes
/// later reads its job's state later too, so when someone starts watching, the relay publishes every row that snapshot
/// could not see (committed after it), whatever the row's time, and nothing older (the watcher's own read covers it).
/// </summary>
/// <remarks>
/// A transaction that keeps an id for long, on any database of the server (a long write, one left idle in
/// transaction, a prepared transaction), holds <c>pg_snapshot_xmin</c> back: events are delayed until it ends, not lost.
/// </remarks>
internal sealed class PostgresEventRelay
{
    /// <summary>
    /// How far back the first poll looks when someone watched before this relay's first poll (no snapshot taken while
    /// nobody watched): rows committed before that poll are published only when their time is at most this old.
    /// </summary>
    public static readonly TimeSpan StartLookback = TimeSpan.FromSeconds(5);

    /// <summary>The most rows one poll reads; the rest follow at the next poll.</summary>
    internal const int MaxRows = 10_000;

    // What Snapshot.Read reads, from the current snapshot c.
    private const string SnapshotColumns = "pg_snapshot_xmin(c), pg_snapshot_xmax(c), ARRAY(SELECT pg_snapshot_xip(c))";
    private const string SnapshotSql = $"SELECT {SnapshotColumns} FROM pg_current_snapshot() c";

    private static readonly Comparer<Row> s_byId = Comparer<Row>.Create(static (a, b) => a.Id.CompareTo(b.Id));
    private readonly PostgresDatabase _db;
    private readonly IJobEventBus _events;
    private readonly string _startSql;
    private readonly string _sql;
    private bool _watching;

    // The server's snapshot taken by the last poll that found nobody watching (taken before it looked): a watcher who
    // came later cannot have seen what this snapshot did not.
    private Snapshot? _unwatched;

    // The last row read: the next poll reads after it.
    private Position _position;

    // What the watchers that started this watch have seen already: rows of transactions this snapshot saw, written before
    // _coveredBefore (the end of time when the snapshot was taken while nobody watched; otherwise the start lookback's
    // beginning, since the snapshot was taken after someone started watching).
    private Snapshot _covered = Snapshot.Empty;
    private DateTimeOffset _coveredBefore;

    public PostgresEventRelay(PostgresDatabase db, IJobEventBus events)
    {
        _db = db;
        _events = events;
        var s = db.Schema;
        // Where to start: below every row written since @since, and below every transaction still running. The rows since
        // then are found by time (OFFSET 0 keeps min() from walking the xact_id index from its oldest row instead).
        _startSql = $"""
            SELECT {SnapshotColumns},
                   (SELECT min(xact_id) FROM (SELECT xact_id FROM {s}.job_history WHERE at >= @since OFFSET 0) r)
            FROM pg_current_snapshot() c
            """;
        // The statement's own snapshot gives xmin, for the rows' bound and for the caller: it is the same snapshot.
        // Rows are limited before the joins (a job deleted by retention leaves its rows with a NULL tenant).
        _sql = $"""
            SELECT x.xmin, h.xact_id, h.id, h.job_id, h.at, h.state, h.attempt, h.message, j.tenant, j.workload,
                   p.state, p.xact_id, p.id, p.instance IS DISTINCT FROM @me
            FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin) x
            LEFT JOIN LATERAL (
                SELECT * FROM {s}.job_history h
                WHERE h.xact_id < x.xmin AND (h.xact_id, h.id) > (@xact_id, @id) AND h.instance IS DISTINCT FROM @me
                ORDER BY h.xact_id, h.id
                LIMIT @max) h ON true
            LEFT JOIN {s}.jobs j ON j.id = h.job_id
            LEFT JOIN LATERAL (
                SELECT p.state, p.xact_id, p.id, p.instance FROM {s}.job_history p
                WHERE p.job_id = h.job_id AND p.id < h.id
                ORDER BY p.id DESC
                LIMIT 1) p ON true
            ORDER BY h.xact_id, h.id
            """;
    }

    /// <summary>Publishes what other hosts changed since the last call; returns how many events it published.</summary>
    public async Task<int> PollOnceAsync(CancellationToken cancellationToken)
    {
        if (!_events.IsWatched(JobEventKind.StateChanged))
        {
            // Nobody watches. Take the snapshot first and look again after it, so that whoever starts watching after this
            // poll subscribed after the snapshot was taken; only then forget the cursor. (Someone who came meanwhile finds
            // the cursor still going, or, if it had stopped, the snapshot of the poll before.)
            var snapshot = await TakeSnapshotAsync(cancellationToken).ConfigureAwait(false);
            AfterSnapshot?.Invoke();
            if (!_events.IsWatched(JobEventKind.StateChanged))
            {
                _watching = false;
                _unwatched = snapshot;
                return 0;
            }
        }

        if (!_watching)
        {
            await StartAsync(cancellationToken).ConfigureAwait(false);
            _watching = true;
        }

        var (xmin, rows) = await _db.RunAsync(_db.Client, (Sql: _sql, Position: _position, Me: _db.InstanceId), static async (c, s, token) =>
        {
            using var batch = new NpgsqlBatch(c) { BatchCommands = { JobRows.IndexPathsOnly(), new(s.Sql) } };
            var p = batch.BatchCommands[1].Parameters;
            p.Add(new("xact_id", NpgsqlDbType.Xid8) { Value = s.Position.XactId });
            p.Add(new("id", NpgsqlDbType.Bigint) { Value = s.Position.Id });
            p.Add(new("me", NpgsqlDbType.Text) { Value = s.Me });
            p.Add(new("max", NpgsqlDbType.Integer) { Value = MaxRows });
            var read = new List<Row>();
            var xmin = 0UL;
            var reader = await batch.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            await reader.NextResultAsync(token).ConfigureAwait(false);
            while (await reader.ReadAsync(token).ConfigureAwait(false))
            {
                xmin = reader.GetFieldValue<ulong>(0);
                if (!reader.IsDBNull(1))
                {
                    read.Add(Row.Read(reader));
                }
            }

            return (xmin, read);
        }, cancellationToken).ConfigureAwait(false);

        var count = Publishable(rows, full: rows.Count == MaxRows);
        // After a read that was not full, every row below xmin has been read: the next starts there (rows of this process
        // included, which would otherwise be read again).
        var next = count < rows.Count ? (count == 0 ? _position : rows[count - 1].Position)
            : rows.Count == MaxRows ? rows[^1].Position
            : new Position(xmin, 0);
        if (next.CompareTo(_position) > 0)
        {
            _position = next;
        }

        // In the order of the rows' ids, which is the order of one job's transitions.
        rows.Sort(0, count, s_byId);
        var published = 0;
        for (var i = 0; i < count; i++)
        {
            var row = rows[i];
            if (row.Event is not { } jobEvent || (jobEvent.Timestamp < _coveredBefore && _covered.Saw(row.Position.XactId)))
            {
                // The job is gone, or the watchers' own reads cover the row.
                continue;
            }

            _events.Publish(jobEvent);
            published++;
        }

        return published;
    }

    /// <summary>Called after an unwatched poll took its snapshot, before it looks again; for tests.</summary>
    internal Action? AfterSnapshot { get; set; }

    /// <summary>
    /// How many of <paramref name="rows"/> (in cursor order) can be published now: the longest prefix that holds, for each
    /// row whose job's previous transition sorts after it, that transition too. A transaction takes its id at its first
    /// write or row lock, so a batch can take its id, wait for a job's row lock held by a later transaction (a
    /// cancellation), then write that job's next transition with the lower transaction id; published in cursor order, the
    /// job would go back to its earlier state. Such a row waits for its predecessor, and both go out by id. A full read
    /// whose first row waits would wait forever (the predecessor lies beyond the limit): it is published whole.
    /// </summary>
    /// <param name="rows">The rows read, in cursor order.</param>
    /// <param name="full">Whether the read stopped at its limit.</param>
    internal static int Publishable(List<Row> rows, bool full)
    {
        Position? needed = null;
        var count = 0;
        for (var i = 0; i < rows.Count; i++)
        {
            var row = rows[i];
            if (row.Previous is { } previous && previous.CompareTo(row.Position) > 0 && (needed is not { } n || previous.CompareTo(n) > 0))
            {
                needed = previous;
            }

            if (needed is not { } required || required.CompareTo(row.Position) <= 0)
            {
                count = i + 1;
            }
        }

        return count == 0 && full ? rows.Count : count;
    }

    private async Task StartAsync(CancellationToken cancellationToken)
    {
        if (_unwatched is { } unwatched)
        {
            // Every row that snapshot did not see: its transaction was running then, or began later. Used once: the
            // next unwatched poll takes a fresh one.
            _unwatched = null;
            _covered = unwatched;
            _coveredBefore = DateTimeOffset.MaxValue;
            _position = new Position(unwatched.Xmin, 0);
            return;
        }

        // Someone watched before the first poll: no snapshot from before them. Publish what committed from now on, and what
        // committed before with a time within the lookback (rows since then are found by time; a row stamped earlier but
        // committed between the watcher's read and now is missed, as the relay cannot tell it from an older one).
        var since = _db.Time.GetUtcNow() - StartLookback;
        var (snapshot, oldest) = await _db.RunAsync(_db.Client, (Sql: _startSql, Since: since), static async (c, s, token) =>
        {
            using var batch = new NpgsqlBatch(c) { BatchCommands = { JobRows.IndexPathsOnly(), new(s.Sql) } };
            batch.BatchCommands[1].Parameters.Add(new("since", NpgsqlDbType.TimestampTz) { Value = s.Since });
            var reader = await batch.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            await reader.NextResultAsync(token).ConfigureAwait(false);
            await reader.ReadAsync(token).ConfigureAwait(false);
            return (Snapshot.Read(reader), reader.IsDBNull(3) ? (ulong?)null : reader.GetFieldValue<ulong>(3));
        }, cancellationToken).ConfigureAwait(false);

        // Transaction ids start at 3, so (x, 0) is just before every row of transaction x.
        _position = new Position(oldest is { } o && o < snapshot.Xmin ? o : snapshot.Xmin, 0);
        _covered = snapshot;
        _coveredBefore = since;
    }

    private Task<Snapshot> TakeSnapshotAsync(CancellationToken cancellationToken)
        => _db.RunAsync(_db.Client, SnapshotSql, static async (c, sql, token) =>
        {
            using var command = new NpgsqlCommand(sql, c);
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            await reader.ReadAsync(token).ConfigureAwait(false);
            return Snapshot.Read(reader);
        }, cancellationToken);

    /// <summary>A server snapshot: which transactions it saw as finished.</summary>
    /// <param name="Xmin">Every transaction below it had finished.</param>
    /// <param name="Xmax">Every transaction at or above it had not begun.</param>
    /// <param name="Running">The transactions between the two still running, sorted.</param>
    private sealed record Snapshot(ulong Xmin, ulong Xmax, ulong[] Running)
    {
        public static readonly Snapshot Empty = new(0, 0, []);

        /// <summary>Reads the first three columns: <c>pg_snapshot_xmin</c>, <c>pg_snapshot_xmax</c>, <c>ARRAY(pg_snapshot_xip)</c>.</summary>
        public static Snapshot Read(NpgsqlDataReader reader)
        {
            var running = reader.GetFieldValue<ulong[]>(2);
            Array.Sort(running);
            return new(reader.GetFieldValue<ulong>(0), reader.GetFieldValue<ulong>(1), running);
        }

        /// <summary>Whether the snapshot saw the transaction's rows (it had committed, or ended, when it was taken).</summary>
        public bool Saw(ulong xactId) => xactId < Xmax && Array.BinarySearch(Running, xactId) < 0;
    }

    /// <summary>A place in the cursor's order.</summary>
    internal readonly record struct Position(ulong XactId, long Id) : IComparable<Position>
    {
        public int CompareTo(Position other) => XactId != other.XactId ? XactId.CompareTo(other.XactId) : Id.CompareTo(other.Id);
    }

    /// <summary>A history row read; <see cref="Event"/> is <see langword="null"/> when its job is gone.</summary>
    /// <param name="Position">The row's place in the cursor's order.</param>
    /// <param name="Event">The event to publish.</param>
    /// <param name="Previous">The place of the job's previous transition, when another process wrote it since migration 0004.</param>
    internal readonly record struct Row(Position Position, JobEvent? Event, Position? Previous)
    {
        public long Id => Position.Id;

        public static Row Read(NpgsqlDataReader reader) => new(
            new Position(reader.GetFieldValue<ulong>(1), reader.GetInt64(2)),
            reader.IsDBNull(8) ? null : new JobEvent
            {
                Kind = JobEventKind.StateChanged,
                JobId = new JobId(reader.GetGuid(3)),
                Timestamp = reader.GetFieldValue<DateTimeOffset>(4),
                State = (JobState)reader.GetInt16(5),
                Attempt = reader.GetInt32(6),
                Message = reader.IsDBNull(7) ? null : reader.GetString(7),
                Tenant = reader.GetString(8),
                Workload = reader.GetString(9),
                PreviousState = reader.IsDBNull(10) ? null : (JobState)reader.GetInt16(10),
            },
            reader.IsDBNull(11) || !reader.GetBoolean(13) ? null : new Position(reader.GetFieldValue<ulong>(11), reader.GetInt64(12)));
    }
}
