using System.Text.Json;
using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace JobRunner.Storage.Postgres;

/// <summary>
/// Applies the migrations when the host starts (so a wrong connection string, missing permissions or a newer schema
/// stop the start with a clear error), then keeps one LISTEN connection open (wake-ups and cancellations from other
/// hosts; reconnects after the database restarts) and runs housekeeping on one host at a time (an advisory lock).
/// </summary>
internal sealed partial class PostgresBackgroundService : BackgroundService
{
    private readonly PostgresDatabase _db;
    private readonly PostgresJobStore _store;
    private readonly ILogger _logger;
    private readonly PostgresLogStore _logs;

    // Log lines other hosts appended to jobs someone here watches, to read back and publish. Bounded: a host that cannot
    // keep up drops the oldest notices (counted and logged), and its watchers miss those lines as events (ReadLogsAsync
    // still has them).
    private readonly Channel<LogNotice> _logNotices;
    private int _droppedLogNotices;

    public PostgresBackgroundService(PostgresDatabase db, PostgresJobStore store)
    {
        _db = db;
        _store = store;
        _logger = db.Logger;
        _logs = new PostgresLogStore(db);
        _logNotices = Channel.CreateBounded<LogNotice>(
            new BoundedChannelOptions(1024) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true },
            _ => Interlocked.Increment(ref _droppedLogNotices));
    }

    /// <summary>Gets a task that completes each time the listener (re)connects; for tests.</summary>
    internal WakeSignal Listening { get; } = new();

    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        await _db.EnsureMigratedAsync(cancellationToken).ConfigureAwait(false);
        await base.StartAsync(cancellationToken).ConfigureAwait(false);
    }

    protected override Task ExecuteAsync(CancellationToken stoppingToken)
        => Task.WhenAll(ListenAsync(stoppingToken), HousekeepAsync(stoppingToken), RelayEventsAsync(stoppingToken), RelayLogsAsync(stoppingToken));

    /// <summary>
    /// Publishes the log lines other hosts appended (see <see cref="PostgresLogStore"/>) to jobs someone here watches:
    /// what waits is taken at once, and one job's adjacent appends are read back in one query.
    /// </summary>
    private async Task RelayLogsAsync(CancellationToken stoppingToken)
    {
        var batch = new List<LogNotice>();
        try
        {
            while (await _logNotices.Reader.WaitToReadAsync(stoppingToken).ConfigureAwait(false))
            {
                batch.Clear();
                while (batch.Count < 1024 && _logNotices.Reader.TryRead(out var notice))
                {
                    batch.Add(notice);
                }

                if (Interlocked.Exchange(ref _droppedLogNotices, 0) is var dropped and > 0)
                {
                    Log.LogNoticesDropped(_logger, dropped);
                }

                try
                {
                    await PublishLinesAsync(batch, stoppingToken).ConfigureAwait(false);
                }
                catch (Exception e) when (e is not OperationCanceledException || !stoppingToken.IsCancellationRequested)
                {
                    Log.LogRelayFailed(_logger, e);
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    private async Task PublishLinesAsync(List<LogNotice> notices, CancellationToken cancellationToken)
    {
        var events = _store.Events;
        for (var i = 0; i < notices.Count; i++)
        {
            // Merged only with the appends right after it: lines in between may be this host's own, already published.
            var notice = notices[i];
            if (notice.Count == 0)
            {
                continue; // merged into an earlier one
            }

            var end = notice.Offset + notice.Count;
            for (var j = i + 1; j < notices.Count; j++)
            {
                if (notices[j].Job == notice.Job && notices[j].Offset == end)
                {
                    end += notices[j].Count;
                    notices[j] = notices[j] with { Count = 0 };
                }
            }

            if (!events.IsWatched(JobEvent.ForAttempt(JobEventKind.Log, notice.Job, notice.Tenant, notice.Workload, default, 0)))
            {
                continue;
            }

            foreach (var entry in await _logs.ReadRangeAsync(notice.Job, notice.Offset, end, cancellationToken).ConfigureAwait(false))
            {
                events.Publish(JobEvent.ForAttempt(JobEventKind.Log, notice.Job, notice.Tenant, notice.Workload, entry.Timestamp, entry.Attempt, entry.Message, log: entry));
            }
        }
    }

    private Task RelayEventsAsync(CancellationToken stoppingToken)
    {
        if (_db.Options.EventRelayInterval is not { } interval)
        {
            return Task.CompletedTask;
        }

        var relay = new PostgresEventRelay(_db, _store.Events);
        return EveryAsync(interval, relay.PollOnceAsync, static (logger, e) => Log.RelayFailed(logger, e), stoppingToken);
    }

    /// <summary>Runs <paramref name="step"/> every <paramref name="interval"/> until stopped; a failed step is logged and the next tick tries again.</summary>
    private async Task EveryAsync<T>(TimeSpan interval, Func<CancellationToken, Task<T>> step, Action<ILogger, Exception> failed, CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(interval, _db.Time);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
            {
                try
                {
                    await step(stoppingToken).ConfigureAwait(false);
                }
                catch (Exception e) when (!stoppingToken.IsCancellationRequested)
                {
                    failed(_logger, e);
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
    }

    private async Task ListenAsync(CancellationToken stoppingToken)
    {
        var delay = TimeSpan.FromMilliseconds(100);
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                var connection = new NpgsqlConnection(_db.BuildListenerConnectionString());
                await using (connection.ConfigureAwait(false))
                {
                    connection.Notification += OnNotification;
                    await connection.OpenAsync(stoppingToken).ConfigureAwait(false);
                    using (var listen = new NpgsqlCommand($"LISTEN \"{_db.ReadyChannel}\"; LISTEN \"{_db.CancelChannel}\"; LISTEN \"{_db.AttemptEventsChannel}\"", connection))
                    {
                        await listen.ExecuteNonQueryAsync(stoppingToken).ConfigureAwait(false);
                    }

                    // Whatever was announced while not listening: look for ready jobs, and for cancellations of running ones.
                    delay = TimeSpan.FromMilliseconds(100);
                    _db.Ready.Set();
                    await RelayPendingCancellationsAsync(stoppingToken).ConfigureAwait(false);
                    Listening.Set();
                    while (!stoppingToken.IsCancellationRequested)
                    {
                        await connection.WaitAsync(stoppingToken).ConfigureAwait(false);
                    }
                }
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                Log.ListenerFailed(_logger, delay, e);
                try
                {
                    await Task.Delay(delay, _db.Time, stoppingToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(5).Ticks));
            }
        }
    }

    private void OnNotification(object sender, NpgsqlNotificationEventArgs e)
    {
        if (e.Channel == _db.ReadyChannel)
        {
            // Another host queued these jobs (an offer), or something may be ready (a plain wake-up).
            switch (_db.ReadOffers(e.Payload))
            {
                case null:
                    _db.Ready.Set();
                    break;
                case { Count: > 0 } offers:
                    _db.Ready.Offer(offers);
                    break;
                default:
                    break; // this process offered them to its own workers already
            }

            return;
        }

        try
        {
            using var document = JsonDocument.Parse(e.Payload);
            var root = document.RootElement;
            if (root.GetProperty("i").GetString() == _db.InstanceId)
            {
                return; // this process already told its workers
            }

            if (e.Channel == _db.AttemptEventsChannel)
            {
                // A running attempt's progress or checkpoint, written on another host.
                var eventKind = (JobEventKind)root.GetProperty("k").GetInt32();
                if (eventKind == JobEventKind.Log)
                {
                    // Lines appended on another host: read back (not on this callback's thread) only for jobs someone watches.
                    if (_store.Events.IsWatched(JobEventKind.Log))
                    {
                        var notice = new LogNotice(
                            new JobId(root.GetProperty("j").GetGuid()),
                            root.GetProperty("t").GetString() ?? "",
                            root.GetProperty("w").GetString() ?? "",
                            root.GetProperty("o").GetInt64(),
                            root.GetProperty("c").GetInt64());
                        if (_store.Events.IsWatched(JobEvent.ForAttempt(JobEventKind.Log, notice.Job, notice.Tenant, notice.Workload, default, 0)))
                        {
                            _logNotices.Writer.TryWrite(notice);
                        }
                    }

                    return;
                }

                if (eventKind is not (JobEventKind.Progress or JobEventKind.Checkpointed))
                {
                    return; // a kind this version does not relay
                }

                var message = root.TryGetProperty("r", out var m) && m.ValueKind == JsonValueKind.String ? m.GetString() : null;
                double? fraction = root.TryGetProperty("f", out var f) && f.ValueKind == JsonValueKind.Number ? f.GetDouble() : null;
                _store.PublishRemote(
                    eventKind,
                    new JobId(root.GetProperty("j").GetGuid()),
                    root.GetProperty("t").GetString() ?? "",
                    root.GetProperty("w").GetString() ?? "",
                    root.GetProperty("a").GetInt32(),
                    JobRows.FromMicros(root.GetProperty("s").GetInt64()),
                    eventKind == JobEventKind.Progress ? new JobProgress(fraction, message) : null,
                    message);
                return;
            }

            _store.PublishCancellation(
                new JobId(root.GetProperty("j").GetGuid()),
                root.GetProperty("t").GetString() ?? "",
                root.GetProperty("w").GetString() ?? "",
                root.GetProperty("a").GetInt32(),
                root.TryGetProperty("r", out var r) ? r.GetString() : null,
                _db.Time.GetUtcNow());
        }
        catch (Exception ex) when (ex is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            Log.BadNotification(_logger, e.Payload, ex);
        }
    }

    private async Task RelayPendingCancellationsAsync(CancellationToken cancellationToken)
    {
        var pending = await _db.RunAsync(_db.Client, $"SELECT id, tenant, workload, attempt_count, cancel_reason FROM {_db.Schema}.jobs WHERE state = 2 AND cancel_requested", static async (c, sql, token) =>
        {
            using var command = new NpgsqlCommand(sql, c);
            var rows = new List<(Guid, string, string, int, string?)>();
            var reader = await command.ExecuteReaderAsync(token).ConfigureAwait(false);
            await using var readerScope = reader.ConfigureAwait(false);
            while (await reader.ReadAsync(token).ConfigureAwait(false))
            {
                rows.Add((reader.GetGuid(0), reader.GetString(1), reader.GetString(2), reader.GetInt32(3), reader.IsDBNull(4) ? null : reader.GetString(4)));
            }

            return rows;
        }, cancellationToken).ConfigureAwait(false);
        var now = _db.Time.GetUtcNow();
        foreach (var (id, tenant, workload, attempt, reason) in pending)
        {
            _store.PublishCancellation(new JobId(id), tenant, workload, attempt, reason, now);
        }
    }

    private Task HousekeepAsync(CancellationToken stoppingToken)
    {
        var keeper = new PostgresHousekeeper(_db);
        return EveryAsync(_db.Options.HousekeepingInterval, keeper.RunOnceAsync, static (logger, e) => Log.HousekeepingFailed(logger, e), stoppingToken);
    }

    private static partial class Log
    {
        [LoggerMessage(20, LogLevel.Warning, "PostgreSQL: the LISTEN connection failed; reconnecting in {Delay} (workers poll meanwhile).")]
        public static partial void ListenerFailed(ILogger logger, TimeSpan delay, Exception exception);

        [LoggerMessage(21, LogLevel.Warning, "PostgreSQL: ignored a malformed cancellation notification: {Payload}")]
        public static partial void BadNotification(ILogger logger, string payload, Exception exception);

        [LoggerMessage(22, LogLevel.Warning, "PostgreSQL: housekeeping failed; it runs again at the next interval.")]
        public static partial void HousekeepingFailed(ILogger logger, Exception exception);

        [LoggerMessage(23, LogLevel.Warning, "PostgreSQL: relaying other hosts' state changes to this host's watchers failed; it tries again at the next interval.")]
        public static partial void RelayFailed(ILogger logger, Exception exception);

        [LoggerMessage(24, LogLevel.Warning, "PostgreSQL: reading back log lines other hosts appended, for this host's log watchers, failed; those lines are not published as events (ReadLogsAsync still has them).")]
        public static partial void LogRelayFailed(ILogger logger, Exception exception);

        [LoggerMessage(25, LogLevel.Warning, "PostgreSQL: this host fell behind other hosts' log appends and dropped {Count} notices; its log watchers miss those lines as events (ReadLogsAsync still has them).")]
        public static partial void LogNoticesDropped(ILogger logger, int count);
    }
}

/// <summary>Log lines another host appended: <paramref name="Count"/> lines of job <paramref name="Job"/> from <paramref name="Offset"/>.</summary>
internal readonly record struct LogNotice(JobId Job, string Tenant, string Workload, long Offset, long Count);
