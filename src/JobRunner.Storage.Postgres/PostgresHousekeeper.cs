using Microsoft.Extensions.Logging;
using Npgsql;
using NpgsqlTypes;

namespace JobRunner.Storage.Postgres;

/// <summary>
/// Deletes expired history and finished jobs with their logs, on one host at a time: a session-level advisory lock held
/// across the run, given back at its end. Every statement deletes a bounded number of rows and commits on its own, so a
/// large backlog is worked off under the statement timeout, a few rows locked at a time: history
/// <see cref="Chunk"/> rows at a time; finished jobs in groups whose logs hold at most <see cref="Chunk"/> lines
/// together (from <c>job_log_heads</c>), a job with a longer log first losing its lines <see cref="Chunk"/> at a time.
/// </summary>
internal sealed partial class PostgresHousekeeper
{
    private readonly PostgresDatabase _db;
    private readonly string _lockKey;
    private readonly string _historySql;
    private readonly string _candidatesSql;
    private readonly string _trimSql;
    private readonly string _jobsSql;

    public PostgresHousekeeper(PostgresDatabase db)
    {
        _db = db;
        var s = db.Schema;
        _lockKey = "jobrunner.housekeeping." + db.Options.Schema;
        _historySql = $"WITH d AS (DELETE FROM {s}.job_history WHERE id IN (SELECT id FROM {s}.job_history WHERE at < @before LIMIT @limit) RETURNING 1) SELECT count(*) FROM d";
        _candidatesSql = $"""
            SELECT j.id, coalesce(h.next_offset, 0) FROM {s}.jobs j LEFT JOIN {s}.job_log_heads h ON h.job_id = j.id
            WHERE j.state >= 3 AND j.updated_at < @before LIMIT @limit
            """;
        // A long log's oldest lines, while its job is still finished and expired (the row lock keeps a manual retry out
        // for the statement; one that comes between two statements keeps what is left of the log).
        _trimSql = $"""
            WITH j AS (SELECT id FROM {s}.jobs WHERE id = @id AND state >= 3 AND updated_at < @before FOR UPDATE),
            d AS (DELETE FROM {s}.job_logs WHERE job_id = @id AND "offset" IN (
                SELECT "offset" FROM {s}.job_logs WHERE job_id = @id AND EXISTS (SELECT FROM j) ORDER BY "offset" LIMIT @limit) RETURNING 1)
            SELECT count(*) FROM d
            """;
        // The state and time are checked again on the rows deleted: a manual retry may have queued a job again since.
        _jobsSql = $"""
            WITH d AS (DELETE FROM {s}.jobs WHERE id = ANY(@ids) AND state >= 3 AND updated_at < @before RETURNING id),
            l AS (DELETE FROM {s}.job_logs WHERE job_id IN (SELECT id FROM d)),
            h AS (DELETE FROM {s}.job_log_heads WHERE job_id IN (SELECT id FROM d))
            SELECT count(*) FROM d
            """;
    }

    /// <summary>Gets or sets the most rows (history rows, log lines) one statement deletes; jobs are read a tenth as many at a time.</summary>
    internal int Chunk { get; set; } = 10_000;

    /// <summary>Called after each delete committed, with what it deleted (history, logs, jobs) and how many rows; for tests.</summary>
    internal Action<string, long>? AfterStatement { get; set; }

    /// <summary>Runs once, if no other host is running now.</summary>
    /// <returns>The rows deleted (history, jobs), or <see langword="null"/> when another host holds the lock.</returns>
    public async Task<(long History, long Jobs)?> RunOnceAsync(CancellationToken cancellationToken)
    {
        var run = new Run(this, _db.Time.GetUtcNow());
        var held = await _db.RunAsync(_db.Client, run, static async (c, run, token) =>
        {
            var self = run.Keeper;
            bool? held = null; // unknown until the try-lock answers
            try
            {
                held = await ScalarAsync<bool>(c, "SELECT pg_try_advisory_lock(hashtext(@key))", token, ("key", self._lockKey)).ConfigureAwait(false);
                if (held == false)
                {
                    return false;
                }

                var options = self._db.Options;
                await self.DeleteHistoryAsync(c, run, run.Now - options.HistoryRetention, token).ConfigureAwait(false);
                if (options.FinishedJobRetention is { } retention)
                {
                    await self.DeleteJobsAsync(c, run, run.Now - retention, token).ConfigureAwait(false);
                }
            }
            finally
            {
                if (held != false)
                {
                    await self.ReleaseLockAsync(c).ConfigureAwait(false);
                }
            }

            return true;
        }, cancellationToken).ConfigureAwait(false);
        return held ? (run.History, run.Jobs) : null;
    }

    /// <summary>
    /// Gives the session-level lock back (also when the try-lock's answer was lost: not holding it only draws a server
    /// warning). Pooled connections are not reset on close (see <see cref="PostgresDatabase"/>), so when that fails the
    /// data source's pool is cleared: the connection is closed when it is returned, and the lock with it.
    /// </summary>
    private async Task ReleaseLockAsync(NpgsqlConnection c)
    {
        // A broken connection has released the lock already.
        if (c.FullState != System.Data.ConnectionState.Open)
        {
            return;
        }

        try
        {
            await ScalarAsync<bool>(c, "SELECT pg_advisory_unlock(hashtext(@key))", CancellationToken.None, ("key", _lockKey)).ConfigureAwait(false);
        }
        catch (Exception e) when (e is NpgsqlException or InvalidOperationException or TimeoutException)
        {
            _db.Client.Clear();
            Log.UnlockFailed(_db.Logger, e);
        }
    }

    private async Task DeleteHistoryAsync(NpgsqlConnection c, Run run, DateTimeOffset before, CancellationToken token)
    {
        long deleted;
        do
        {
            deleted = await ScalarAsync<long>(c, _historySql, token, ("before", before), ("limit", Chunk)).ConfigureAwait(false);
            run.History += deleted;
            AfterStatement?.Invoke("history", deleted);
        }
        while (deleted == Chunk);
    }

    private async Task DeleteJobsAsync(NpgsqlConnection c, Run run, DateTimeOffset before, CancellationToken token)
    {
        var read = Math.Max(1, Chunk / 10);
        while (true)
        {
            var candidates = new List<(Guid Id, long Lines)>();
            using (var command = Command(c, _candidatesSql, ("before", before), ("limit", read)))
            {
                var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
                await using (reader.ConfigureAwait(false))
                {
                    while (await reader.ReadAsync(token).ConfigureAwait(false))
                    {
                        candidates.Add((reader.GetGuid(0), reader.GetInt64(1)));
                    }
                }
            }

            var group = new List<Guid>();
            var lines = 0L;
            foreach (var (id, count) in candidates)
            {
                var left = count;
                if (left > Chunk)
                {
                    // A long log goes a chunk at a time, while its job stays.
                    long trimmed;
                    do
                    {
                        trimmed = await ScalarAsync<long>(c, _trimSql, token, ("id", id), ("before", before), ("limit", Chunk)).ConfigureAwait(false);
                        left -= trimmed;
                        AfterStatement?.Invoke("logs", trimmed);
                    }
                    while (trimmed == Chunk);
                }

                if (group.Count > 0 && lines + left > Chunk)
                {
                    run.Jobs += await DeleteGroupAsync(c, group, before, token).ConfigureAwait(false);
                    (group, lines) = ([], 0);
                }

                group.Add(id);
                lines += Math.Max(0, left);
            }

            if (group.Count > 0)
            {
                run.Jobs += await DeleteGroupAsync(c, group, before, token).ConfigureAwait(false);
            }

            if (candidates.Count < read)
            {
                return;
            }
        }
    }

    private async Task<long> DeleteGroupAsync(NpgsqlConnection c, List<Guid> ids, DateTimeOffset before, CancellationToken token)
    {
        var deleted = await ScalarAsync<long>(c, _jobsSql, token, ("ids", ids.ToArray()), ("before", before)).ConfigureAwait(false);
        AfterStatement?.Invoke("jobs", deleted);
        return deleted;
    }

    private static NpgsqlCommand Command(NpgsqlConnection c, string sql, params (string Name, object Value)[] parameters)
    {
        var command = new NpgsqlCommand(sql, c);
        foreach (var (name, value) in parameters)
        {
            command.Parameters.Add(value is Guid[] ? new NpgsqlParameter(name, NpgsqlDbType.Array | NpgsqlDbType.Uuid) { Value = value } : new NpgsqlParameter(name, value));
        }

        return command;
    }

    private static async Task<T> ScalarAsync<T>(NpgsqlConnection c, string sql, CancellationToken token, params (string Name, object Value)[] parameters)
    {
        using var command = Command(c, sql, parameters);
        return (T)(await command.ExecuteScalarAsync(token).ConfigureAwait(false))!;
    }

    /// <summary>One run: when it started, and what it deleted so far (kept across retries).</summary>
    private sealed class Run(PostgresHousekeeper keeper, DateTimeOffset now)
    {
        public PostgresHousekeeper Keeper { get; } = keeper;

        public DateTimeOffset Now { get; } = now;

        public long History { get; set; }

        public long Jobs { get; set; }
    }

    private static partial class Log
    {
        [LoggerMessage(30, LogLevel.Warning, "PostgreSQL: housekeeping could not give its lock back; the connection pool is cleared so that the lock goes with its connection.")]
        public static partial void UnlockFailed(ILogger logger, Exception exception);
    }
}
