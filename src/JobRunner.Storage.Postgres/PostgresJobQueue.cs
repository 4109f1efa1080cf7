using System.Globalization;
using Npgsql;
using NpgsqlTypes;

namespace JobRunner.Storage.Postgres;

/// <summary>
/// The queue side of the jobs table: a ready job is a row in state Queued (or Scheduled and due) that no worker has
/// taken. Dequeue takes a batch with <c>FOR UPDATE SKIP LOCKED</c> in priority then age order and hides it for the
/// visibility time; the Core scheduler then orders the batch and the store leases each job. The store's transitions
/// make a job ready again, so <see cref="EnqueueAsync"/> only wakes the workers (a coalesced NOTIFY).
/// Idle workers wait for that NOTIFY, for the next due time, or at most <see cref="PostgresOptions.PollInterval"/>.
/// </summary>
internal sealed class PostgresJobQueue : IJobQueue
{
    private readonly PostgresDatabase _db;
    private readonly TimeProvider _time;
    private readonly string _dequeueSql;
    private readonly string _nextDueSql;
    private readonly string _returnSql;
    private readonly string _extendSql;

    public PostgresJobQueue(PostgresDatabase db)
    {
        _db = db;
        _time = db.Time;
        var s = db.Schema;
        _dequeueSql = $"""
            WITH picked AS (
                SELECT id FROM {s}.jobs
                WHERE state IN (0, 1) AND ready_at <= @now AND (taken_until IS NULL OR taken_until <= @now)
                ORDER BY priority DESC, ready_at, id
                LIMIT @limit
                FOR UPDATE SKIP LOCKED)
            UPDATE {s}.jobs j SET taken_until = @until FROM picked WHERE j.id = picked.id
            RETURNING {Prefixed("j.", JobRows.QueueColumns)}
            """;
        _nextDueSql = $"SELECT min(greatest(ready_at, coalesce(taken_until, ready_at))) FROM {s}.jobs WHERE state IN (0, 1)";
        // Rows are locked in id order, like every multi-row write, so that concurrent batches cannot deadlock.
        const string Locked = "(SELECT id FROM {0}.jobs WHERE id = ANY(@ids) AND state IN (0, 1) ORDER BY id FOR UPDATE) l";
        _returnSql = $"UPDATE {s}.jobs j SET taken_until = NULL FROM {string.Format(CultureInfo.InvariantCulture, Locked, s)} WHERE j.id = l.id";
        _extendSql = $"UPDATE {s}.jobs j SET taken_until = @until FROM {string.Format(CultureInfo.InvariantCulture, Locked, s)} WHERE j.id = l.id";
    }

    public ValueTask EnqueueAsync(QueuedJob job, CancellationToken cancellationToken)
    {
        // The row is already ready (the store wrote it so): wake the workers.
        _db.NotifyReady();
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
            // Captured before looking, so that a wake-up that arrives while we look is not lost.
            var wake = _db.Ready.Current;
            var now = _time.GetUtcNow();
            var jobs = await _db.RunAsync(_db.Worker, (Sql: _dequeueSql, Now: now, Until: now + visibility, Limit: buffer.Length), static async (c, s, token) =>
            {
                using var batch = new NpgsqlBatch(c) { BatchCommands = { JobRows.IndexPathsOnly(CommitMode.Relaxed) } };
                var command = new NpgsqlBatchCommand(s.Sql);
                batch.BatchCommands.Add(command);
                command.Parameters.Add(new("now", NpgsqlDbType.TimestampTz) { Value = s.Now });
                command.Parameters.Add(new("until", NpgsqlDbType.TimestampTz) { Value = s.Until });
                command.Parameters.Add(new("limit", NpgsqlDbType.Integer) { Value = s.Limit });
                var result = new List<QueuedJob>(s.Limit);
                var reader = await batch.ExecuteReaderAsync(token).ConfigureAwait(false);
                await using var readerScope = reader.ConfigureAwait(false);
                await reader.NextResultAsync(token).ConfigureAwait(false);
                while (await reader.ReadAsync(token).ConfigureAwait(false))
                {
                    result.Add(JobRows.ReadQueued(reader));
                }

                return result;
            }, cancellationToken).ConfigureAwait(false);

            if (jobs.Count > 0)
            {
                jobs.CopyTo(buffer.Span);
                return jobs.Count;
            }

            var wait = _db.Options.PollInterval;
            var nextDue = await _db.RunAsync(_db.Client, _nextDueSql, static async (c, sql, token) =>
            {
                using var command = new NpgsqlCommand(sql, c);
                var value = await command.ExecuteScalarAsync(token).ConfigureAwait(false);
                return value is DateTime due ? new DateTimeOffset(due, TimeSpan.Zero) : (DateTimeOffset?)null;
            }, cancellationToken).ConfigureAwait(false);
            if (nextDue is { } due)
            {
                var until = due - _time.GetUtcNow();
                if (until < wait)
                {
                    wait = until > TimeSpan.Zero ? until : TimeSpan.FromMilliseconds(1);
                }
            }

            try
            {
                await wake.WaitAsync(wait, _time, cancellationToken).ConfigureAwait(false);
            }
            catch (TimeoutException)
            {
            }
        }
    }

    public ValueTask AcknowledgeAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken)
    {
        // The store's transition already took the job out of the ready set (leased, finished or made ready again).
        return ValueTask.CompletedTask;
    }

    public async ValueTask ReturnAsync(IReadOnlyList<QueuedJob> jobs, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        if (jobs.Count > 0)
        {
            await UpdateAsync(_returnSql, jobs, null, cancellationToken).ConfigureAwait(false);
            _db.NotifyReady();
        }
    }

    public async ValueTask ExtendAsync(IReadOnlyList<QueuedJob> jobs, TimeSpan visibility, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(jobs);
        if (jobs.Count > 0)
        {
            await UpdateAsync(_extendSql, jobs, _time.GetUtcNow() + visibility, cancellationToken).ConfigureAwait(false);
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

    private static string Prefixed(string prefix, string columns) => prefix + columns.Replace(", ", ", " + prefix, StringComparison.Ordinal);
}
