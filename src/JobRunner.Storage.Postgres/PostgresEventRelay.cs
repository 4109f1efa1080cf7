using Npgsql;
using NpgsqlTypes;

namespace JobRunner.Storage.Postgres;

/// <summary>
/// Carries state changes across hosts: while someone on this host watches <see cref="JobEventKind.StateChanged"/>,
/// reads the history rows other processes wrote (by <c>instance</c>) and publishes them on the local bus, so that
/// <see cref="IJobClient.WatchAsync(JobId, CancellationToken)"/> on an API host sees a job that runs on a worker host.
/// Reads a sliding window of <see cref="Window"/> by the rows' time and remembers the row ids it published, because
/// history ids are not committed in order. Each poll reads only the ids of the window's rows, then the details (job,
/// previous state) of those not yet published, so a row is read in full once, and a window holding more than
/// <see cref="MaxRows"/> rows drains over the next polls; costs nothing while nobody watches.
/// </summary>
internal sealed class PostgresEventRelay
{
    /// <summary>How far back each read looks: covers transactions that commit out of id order, and clock skew.</summary>
    public static readonly TimeSpan Window = TimeSpan.FromSeconds(5);

    /// <summary>The most rows one poll publishes; the rest follow at the next poll.</summary>
    internal const int MaxRows = 10_000;
    private readonly PostgresDatabase _db;
    private readonly IJobEventBus _events;
    private readonly string _idsSql;
    private readonly string _sql;
    private readonly Dictionary<long, DateTimeOffset> _published = [];
    private DateTimeOffset? _watchingSince;
    private DateTimeOffset? _lastUnwatched;

    public PostgresEventRelay(PostgresDatabase db, IJobEventBus events)
    {
        _db = db;
        _events = events;
        var s = db.Schema;
        _idsSql = $"SELECT id FROM {s}.job_history WHERE at >= @since AND instance IS DISTINCT FROM @me";
        _sql = $"""
            SELECT h.id, h.job_id, h.at, h.state, h.attempt, h.message, j.tenant, j.workload,
                   (SELECT p.state FROM {s}.job_history p WHERE p.job_id = h.job_id AND p.id < h.id ORDER BY p.id DESC LIMIT 1)
            FROM {s}.job_history h JOIN {s}.jobs j ON j.id = h.job_id
            WHERE h.id = ANY(@ids)
            ORDER BY h.id
            """;
    }

    /// <summary>Publishes what other hosts changed since the last call; returns how many events it published.</summary>
    public async Task<int> PollOnceAsync(CancellationToken cancellationToken)
    {
        var now = _db.Time.GetUtcNow();
        if (!_events.IsWatched(JobEventKind.StateChanged))
        {
            // Nobody watches: forget, and start afresh when someone does, from the last moment nobody watched (not from
            // old history, which their snapshot covers).
            _watchingSince = null;
            _lastUnwatched = now;
            _published.Clear();
            return 0;
        }

        _watchingSince ??= _lastUnwatched ?? now - Window;
        var since = now - Window;
        // The window is read again at every poll: first only the ids, then the details of the rows not yet published
        // (at most MaxRows, oldest first; the rest at the next poll).
        var fresh = await _db.RunAsync(_db.Client, (Sql: _idsSql, Since: since, Me: _db.InstanceId, Published: _published), static async (c, s, token) =>
        {
            using var command = new NpgsqlCommand(s.Sql, c);
            command.Parameters.Add(new("since", NpgsqlDbType.TimestampTz) { Value = s.Since });
            command.Parameters.Add(new("me", NpgsqlDbType.Text) { Value = s.Me });
            var ids = new List<long>();
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            while (await reader.ReadAsync(token).ConfigureAwait(false))
            {
                var id = reader.GetInt64(0);
                if (!s.Published.ContainsKey(id))
                {
                    ids.Add(id);
                }
            }

            return ids;
        }, cancellationToken).ConfigureAwait(false);
        if (fresh.Count > MaxRows)
        {
            fresh.Sort();
            fresh.RemoveRange(MaxRows, fresh.Count - MaxRows);
        }

        List<(long Id, JobEvent Event)> rows = fresh.Count == 0 ? [] : await _db.RunAsync(_db.Client, (Sql: _sql, Ids: fresh.ToArray()), static async (c, s, token) =>
        {
            using var command = new NpgsqlCommand(s.Sql, c);
            command.Parameters.Add(new("ids", NpgsqlDbType.Array | NpgsqlDbType.Bigint) { Value = s.Ids });
            var result = new List<(long Id, JobEvent Event)>(s.Ids.Length);
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            while (await reader.ReadAsync(token).ConfigureAwait(false))
            {
                result.Add((reader.GetInt64(0), new JobEvent
                {
                    Kind = JobEventKind.StateChanged,
                    JobId = new JobId(reader.GetGuid(1)),
                    Timestamp = reader.GetFieldValue<DateTimeOffset>(2),
                    State = (JobState)reader.GetInt16(3),
                    Attempt = reader.GetInt32(4),
                    Message = reader.IsDBNull(5) ? null : reader.GetString(5),
                    Tenant = reader.GetString(6),
                    Workload = reader.GetString(7),
                    PreviousState = reader.IsDBNull(8) ? null : (JobState)reader.GetInt16(8),
                }));
            }

            return result;
        }, cancellationToken).ConfigureAwait(false);

        var published = 0;
        foreach (var (id, jobEvent) in rows)
        {
            if (!_published.TryAdd(id, jobEvent.Timestamp) || jobEvent.Timestamp < _watchingSince)
            {
                // Already published, or older than the moment someone started watching (their snapshot covers it).
                continue;
            }

            _events.Publish(jobEvent);
            published++;
        }

        // Rows that left the window are never read again.
        List<long>? expired = null;
        foreach (var (id, at) in _published)
        {
            if (at < since)
            {
                (expired ??= []).Add(id);
            }
        }

        foreach (var id in expired ?? [])
        {
            _published.Remove(id);
        }

        return published;
    }
}
