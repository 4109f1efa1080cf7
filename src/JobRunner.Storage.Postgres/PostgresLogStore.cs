using Npgsql;
using NpgsqlTypes;

namespace JobRunner.Storage.Postgres;

/// <summary>
/// Job logs in PostgreSQL, readable from every host: one row per line, keyed by job and job-wide offset. An append takes
/// its offsets from the job's row in <c>job_log_heads</c> in the same statement, so concurrent writers (a stale attempt
/// and its successor) never collide and offsets continue across attempts; its first line carries the append's key, so that
/// a retry after a lost commit reply returns what the first try wrote instead of writing the lines again. Lines are kept
/// until housekeeping deletes their finished job (<see cref="PostgresOptions.FinishedJobRetention"/>). After each append
/// a NOTIFY goes out on the attempt-events channel (job, attempt, first offset, line count, not the lines), in its own
/// transaction with others (<see cref="PostgresDatabase.NotifyAttemptEvent"/>), so that watchers on other hosts get the
/// lines as log events: each host's listener reads back the lines of the jobs its watchers take
/// (<see cref="PostgresOptions.LogEventsAcrossHosts"/> turns this off).
/// </summary>
internal sealed class PostgresLogStore : ILogStore
{
    private const int MaxLimit = 10_000;
    private readonly PostgresDatabase _db;
    private readonly string _appendSql;
    private readonly string _appendRetrySql;
    private readonly string _readSql;
    private readonly string _rangeSql;

    public PostgresLogStore(PostgresDatabase db)
    {
        _db = db;
        var s = db.Schema;
        // With LogEventsAcrossHosts, the append also returns the job's tenant and workload for the notification.
        var tenant = db.Options.LogEventsAcrossHosts;
        _appendSql = AppendSql(s, tenant, retry: false);
        _appendRetrySql = AppendSql(s, tenant, retry: true);
        _rangeSql = $"""
            SELECT "offset", attempt, at, stream, message FROM {s}.job_logs
            WHERE job_id = @job AND "offset" >= @from AND "offset" < @to
            ORDER BY "offset"
            """;
        _readSql = $"""
            SELECT "offset", attempt, at, stream, message FROM {s}.job_logs
            WHERE job_id = @job AND "offset" >= @offset AND (@attempt::integer IS NULL OR attempt = @attempt) AND (@since::timestamptz IS NULL OR at >= @since)
            ORDER BY "offset"
            LIMIT @limit
            """;
    }

    /// <summary>
    /// The append: takes the offsets from the job's head and writes the lines, the first with the append's key. A retry
    /// (<paramref name="retry"/>) first looks for that key among the job's lines: its first try may have committed before
    /// the reply was lost, and then it returns the offset found and writes nothing.
    /// </summary>
    private static string AppendSql(string s, bool tenant, bool retry)
    {
        var (prior, none, first) = retry
            ? ($"prior AS (SELECT \"offset\" AS first FROM {s}.job_logs WHERE job_id = @job AND batch = @key LIMIT 1),",
               " WHERE NOT EXISTS (SELECT FROM prior)",
               "(SELECT first FROM head UNION ALL SELECT first FROM prior) f")
            : ("", "", "head f");
        var values = retry ? "SELECT @job, @count" : "VALUES (@job, @count)";
        var tail = tenant ? $" SELECT f.first, j.tenant, j.workload FROM {first} LEFT JOIN {s}.jobs j ON j.id = @job" : $" SELECT f.first FROM {first}";
        return $"""
            WITH {prior}
            head AS (
                INSERT INTO {s}.job_log_heads AS h (job_id, next_offset) {values}{none}
                ON CONFLICT (job_id) DO UPDATE SET next_offset = h.next_offset + @count
                RETURNING next_offset - @count AS first),
            lines AS (
                INSERT INTO {s}.job_logs (job_id, "offset", attempt, at, stream, message, batch)
                SELECT @job, head.first + l.n - 1, @attempt, l.at, l.stream, l.message, CASE WHEN l.n = 1 THEN @key END
                FROM head, unnest(@ats, @streams, @messages) WITH ORDINALITY AS l(at, stream, message, n)){tail}
            """;
    }

    public async ValueTask<IReadOnlyList<LogEntry>> AppendAsync(JobLease lease, IReadOnlyList<LogLine> lines, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(lease);
        ArgumentNullException.ThrowIfNull(lines);
        if (lines.Count == 0)
        {
            return [];
        }

        var ats = new DateTimeOffset[lines.Count];
        var streams = new short[lines.Count];
        var messages = new string[lines.Count];
        for (var i = 0; i < lines.Count; i++)
        {
            ats[i] = lines[i].Timestamp;
            streams[i] = (short)lines[i].Stream;

            // A process may still print NUL or broken UTF-16.
            messages[i] = JobRows.Text(lines[i].Message);
        }

        var state = (Store: this, Lease: lease, Ats: ats, Streams: streams, Messages: messages, Key: AppendKey?.Invoke() ?? Guid.NewGuid());
        var (first, tenant, workload) = await _db.RunAsync(_db.Worker, state, static async (c, s, tries, token) =>
        {
            tries += s.Store.TriesBefore;
            while (true)
            {
                try
                {
                    return await AppendOnceAsync(c, s, tries, token).ConfigureAwait(false);
                }
                catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation && e.ConstraintName == "job_logs_batch")
                {
                    // The first try committed while this retry ran: the next round, a retry too, finds its lines.
                    tries++;
                }
            }
        }, cancellationToken).ConfigureAwait(false);

        if (tenant is not null)
        {
            // For other hosts' log watchers (see PostgresBackgroundService): which lines, not the lines.
            _db.NotifyAttemptEvent(JobEventKind.Log, lease, tenant, workload!, static (json, range) =>
            {
                json.WriteNumber("o", range.First);
                json.WriteNumber("c", range.Count);
            }, (First: first, lines.Count));
        }

        var entries = new LogEntry[lines.Count];
        for (var i = 0; i < lines.Count; i++)
        {
            entries[i] = new LogEntry(first + i, lease.Attempt, lines[i].Timestamp, lines[i].Stream, messages[i]);
        }

        return entries;

        static async Task<(long, string?, string?)> AppendOnceAsync(NpgsqlConnection c, (PostgresLogStore Store, JobLease Lease, DateTimeOffset[] Ats, short[] Streams, string[] Messages, Guid Key) s, int tries, CancellationToken token)
        {
            using var command = new NpgsqlCommand(tries == 1 ? s.Store._appendSql : s.Store._appendRetrySql, c);
            command.Parameters.Add(new("job", NpgsqlDbType.Uuid) { Value = s.Lease.JobId.Value });
            command.Parameters.Add(new("count", NpgsqlDbType.Bigint) { Value = (long)s.Messages.Length });
            command.Parameters.Add(new("attempt", NpgsqlDbType.Integer) { Value = s.Lease.Attempt });
            command.Parameters.Add(new("ats", NpgsqlDbType.Array | NpgsqlDbType.TimestampTz) { Value = s.Ats });
            command.Parameters.Add(new("streams", NpgsqlDbType.Array | NpgsqlDbType.Smallint) { Value = s.Streams });
            command.Parameters.Add(new("messages", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = s.Messages });
            command.Parameters.Add(new("key", NpgsqlDbType.Uuid) { Value = s.Key });
            (long, string?, string?) appended;
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using (reader.ConfigureAwait(false))
            {
                await reader.ReadAsync(token).ConfigureAwait(false);
                appended = reader.FieldCount > 1 && !reader.IsDBNull(1)
                    ? (reader.GetInt64(0), reader.GetString(1), reader.GetString(2))
                    : (reader.GetInt64(0), null, null);
            }

            s.Store.AfterAppend?.Invoke(tries);
            return appended;
        }
    }

    /// <summary>Called after each try of an append wrote its lines, with the try's number (1 for the first); for tests.</summary>
    internal Action<int>? AfterAppend { get; set; }

    /// <summary>Gives each append its key (a new one when <see langword="null"/>); for tests.</summary>
    internal Func<Guid>? AppendKey { get; set; }

    /// <summary>How many tries each append counts as made already (1: its first try runs as a retry); for tests.</summary>
    internal int TriesBefore { get; set; }

    /// <summary>Reads the lines of <paramref name="jobId"/> with offsets from <paramref name="from"/> up to (not including) <paramref name="to"/>.</summary>
    internal Task<List<LogEntry>> ReadRangeAsync(JobId jobId, long from, long to, CancellationToken cancellationToken)
        => _db.RunAsync(_db.Client, (Sql: _rangeSql, Job: jobId, From: from, To: to), static async (c, s, token) =>
        {
            var entries = new List<LogEntry>((int)Math.Min(s.To - s.From, 1024));
            using var command = new NpgsqlCommand(s.Sql, c);
            command.Parameters.Add(new("job", NpgsqlDbType.Uuid) { Value = s.Job.Value });
            command.Parameters.Add(new("from", NpgsqlDbType.Bigint) { Value = s.From });
            command.Parameters.Add(new("to", NpgsqlDbType.Bigint) { Value = s.To });
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            while (await reader.ReadAsync(token).ConfigureAwait(false))
            {
                entries.Add(ReadEntry(reader));
            }

            return entries;
        }, cancellationToken);

    private static LogEntry ReadEntry(NpgsqlDataReader reader)
        => new(reader.GetInt64(0), reader.GetInt32(1), reader.GetFieldValue<DateTimeOffset>(2), (LogStream)reader.GetInt16(3), reader.GetString(4));

    public async ValueTask<LogPage> ReadAsync(JobId jobId, LogQuery query, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(query);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.Offset, 0);
        ArgumentOutOfRangeException.ThrowIfLessThan(query.Limit, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(query.Limit, MaxLimit);
        return await _db.RunAsync(_db.Client, (Sql: _readSql, Heads: $"SELECT next_offset FROM {_db.Schema}.job_log_heads WHERE job_id = @job", Job: jobId, Query: query, Store: this), static async (c, s, token) =>
        {
            // The end of the log first, then the lines (each statement sees what was committed when it started): a line
            // appended between the two is then read now or at the next offset, never skipped by an end read after it.
            long head;
            using (var heads = new NpgsqlCommand(s.Heads, c))
            {
                heads.Parameters.Add(new("job", NpgsqlDbType.Uuid) { Value = s.Job.Value });
                head = await heads.ExecuteScalarAsync(token).ConfigureAwait(false) is long h ? h : 0;
            }

            s.Store.BetweenReadStatements?.Invoke();
            var entries = new List<LogEntry>(Math.Min(s.Query.Limit, 256));
            using (var command = new NpgsqlCommand(s.Sql, c))
            {
                command.Parameters.Add(new("job", NpgsqlDbType.Uuid) { Value = s.Job.Value });
                command.Parameters.Add(new("offset", NpgsqlDbType.Bigint) { Value = s.Query.Offset });
                command.Parameters.Add(new("attempt", NpgsqlDbType.Integer) { Value = (object?)s.Query.Attempt ?? DBNull.Value });
                command.Parameters.Add(new("since", NpgsqlDbType.TimestampTz) { Value = (object?)s.Query.Since ?? DBNull.Value });

                // One more than asked: its offset is where the next page starts.
                command.Parameters.Add(new("limit", NpgsqlDbType.Integer) { Value = s.Query.Limit + 1 });
                var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
                await using var readerScope = reader.ConfigureAwait(false);
                while (await reader.ReadAsync(token).ConfigureAwait(false))
                {
                    entries.Add(ReadEntry(reader));
                }
            }

            if (entries.Count > s.Query.Limit)
            {
                var next = entries[^1].Offset;
                entries.RemoveAt(entries.Count - 1);
                return new LogPage(entries, next, DroppedLines: 0);
            }

            var end = Math.Max(head, entries.Count > 0 ? entries[^1].Offset + 1 : 0);
            return new LogPage(entries, Math.Max(s.Query.Offset, end), DroppedLines: 0);
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Called between a read's two statements; for tests.</summary>
    internal Action? BetweenReadStatements { get; set; }
}
