using System.Runtime.CompilerServices;
using System.Data.Common;
using System.Globalization;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Npgsql;
using Polly;
using Polly.Retry;

namespace JobRunner.Storage.Postgres;

/// <summary>
/// The connection side shared by the store, the queue and the background service: two data sources (client writes are
/// always durable; worker writes follow <see cref="PostgresOptions.SynchronousCommitForWorkers"/>), the retry pipeline
/// for transient errors, the migrations, and the coalesced wake-up NOTIFY.
/// </summary>
internal sealed partial class PostgresDatabase : IAsyncDisposable
{
    private readonly SharedStart _migration;
    private int _notifyState; // 0 idle, 1 a NOTIFY in flight, 2 in flight and another requested

    // What the next wake-up NOTIFY offers: the jobs queued since the last one, unless it must be plain.
    private readonly Lock _outgoingLock = new();
    private List<QueuedJob>? _outgoing;
    private bool _outgoingPlain;

    // Attempt-event notifications waiting to be sent, and whether a sender runs (0 no, 1 yes).
    private readonly System.Collections.Concurrent.ConcurrentQueue<string> _attemptNotices = new();
    private int _sendingAttemptNotices;

    public PostgresDatabase(IOptions<PostgresOptions> options, TimeProvider time, ILoggerFactory? loggers = null)
    {
        Options = options.Value;
        Time = time;
        Logger = (ILogger?)loggers?.CreateLogger("JobRunner.Storage.Postgres") ?? NullLogger.Instance;
        Schema = "\"" + Options.Schema + "\"";
        ReadyChannel = Options.Schema + "_ready";
        CancelChannel = Options.Schema + "_cancel";
        AttemptEventsChannel = Options.Schema + "_attempts";
        Client = Build(synchronousCommit: true, applicationName: "jobrunner");
        Worker = Options.SynchronousCommitForWorkers ? Client : Build(synchronousCommit: false, applicationName: "jobrunner-worker");
        Pipeline = Options.MaxRetries == 0 ? ResiliencePipeline.Empty : BuildRetryPipeline(time);
        _migration = new SharedStart(() => Migrator.RunAsync(this, CancellationToken.None));
    }

    public PostgresOptions Options { get; }

    /// <summary>Gets the package's logger, shared by the store, the queue and the background service.</summary>
    public ILogger Logger { get; }

    public TimeProvider Time { get; }

    /// <summary>Gets the quoted schema name, for SQL text.</summary>
    public string Schema { get; }

    public string ReadyChannel { get; }

    public string CancelChannel { get; }

    /// <summary>Gets the channel of running attempts' progress, checkpoints and log lines, for watchers on other hosts.</summary>
    public string AttemptEventsChannel { get; }

    /// <summary>Gets an id of this process's store, so that it can ignore its own cancellation notifications.</summary>
    public string InstanceId { get; } = Guid.NewGuid().ToString("N");

    /// <summary>Gets the data source for submissions, cancellations and reads: commits wait for the WAL flush.</summary>
    public NpgsqlDataSource Client { get; }

    /// <summary>Gets the data source for worker writes.</summary>
    public NpgsqlDataSource Worker { get; }

    public ResiliencePipeline Pipeline { get; }

    /// <summary>Gets the signal that ready jobs may be waiting (set by NOTIFY and by local enqueues).</summary>
    public WakeSignal Ready { get; } = new();

    public string BuildListenerConnectionString()
    {
        var builder = new NpgsqlConnectionStringBuilder(Options.ConnectionString)
        {
            Pooling = false,
            KeepAlive = 5,
            ApplicationName = "jobrunner-listener",
        };
        return builder.ConnectionString;
    }

    /// <summary>Runs <paramref name="operation"/> on a connection from <paramref name="source"/>, retrying transient errors.</summary>
    public async Task<T> RunAsync<T, TState>(NpgsqlDataSource source, TState state, Func<NpgsqlConnection, TState, CancellationToken, Task<T>> operation, CancellationToken cancellationToken)
    {
        await EnsureMigratedAsync(cancellationToken).ConfigureAwait(false);
        return await Pipeline.ExecuteAsync(
            static async (s, token) =>
            {
                var connection = await s.Source.OpenConnectionAsync(token).ConfigureAwait(false);
                await using (connection.ConfigureAwait(false))
                {
                    return await s.Operation(connection, s.State, token).ConfigureAwait(false);
                }
            },
            (Source: source, State: state, Operation: operation),
            cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// As <see cref="RunAsync{T, TState}(NpgsqlDataSource, TState, Func{NpgsqlConnection, TState, CancellationToken, Task{T}}, CancellationToken)"/>,
    /// telling <paramref name="operation"/> which try it is (1 for the first): a retry of a write may follow a first try
    /// that committed before its reply was lost, and must find what that try wrote instead of writing it again.
    /// </summary>
    public Task<T> RunAsync<T, TState>(NpgsqlDataSource source, TState state, Func<NpgsqlConnection, TState, int, CancellationToken, Task<T>> operation, CancellationToken cancellationToken)
        => RunAsync(
            source,
            (State: state, Operation: operation, Tries: new StrongBox<int>()),
            static (c, s, token) => s.Operation(c, s.State, ++s.Tries.Value, token),
            cancellationToken);

    /// <summary>
    /// Tells every worker (this process at once, others by a coalesced NOTIFY) that jobs may be ready: with
    /// <paramref name="job"/>, that this job was just queued (an offer, see <see cref="WakeSignal"/>), which a NOTIFY
    /// carries to the other hosts when it has at most <see cref="MaxOffersPerNotify"/> such jobs and nothing else.
    /// </summary>
    /// <param name="job">The job just queued, or <see langword="null"/> for a plain wake-up.</param>
    public void NotifyReady(QueuedJob? job = null)
    {
        lock (_outgoingLock)
        {
            if (job is null || !WakeSignal.IsOfferable(job) || _outgoing?.Count >= MaxOffersPerNotify)
            {
                _outgoingPlain = true;
            }
            else
            {
                (_outgoing ??= []).Add(job);
            }
        }

        if (job is null)
        {
            Ready.Set();
        }
        else
        {
            Ready.Offer([job]);
        }

        while (true)
        {
            var state = Volatile.Read(ref _notifyState);
            if (state == 2)
            {
                return;
            }

            if (Interlocked.CompareExchange(ref _notifyState, state + 1, state) == state)
            {
                if (state == 0)
                {
                    _ = Task.Run(SendNotificationsAsync);
                }

                return;
            }
        }
    }

    /// <summary>How many offered jobs one wake-up NOTIFY carries at most; more make it a plain one.</summary>
    internal const int MaxOffersPerNotify = 8;

    private async Task SendNotificationsAsync()
    {
        // One NOTIFY in flight at a time; requests that arrive meanwhile are folded into the next one.
        do
        {
            Volatile.Write(ref _notifyState, 1);
            List<QueuedJob>? offers;
            bool plain;
            lock (_outgoingLock)
            {
                (offers, plain) = (_outgoing, _outgoingPlain);
                _outgoing = null;
                _outgoingPlain = false;
            }

            if (offers is null && !plain)
            {
                continue; // sent with the last one
            }

            try
            {
                var payload = plain ? "" : WriteOffers(offers!);
                await RunAsync(Client, (Channel: ReadyChannel, Payload: payload), static async (c, s, token) =>
                {
                    using var command = new NpgsqlCommand("SELECT pg_notify($1, $2)", c);
                    command.Parameters.Add(new NpgsqlParameter { Value = s.Channel });
                    command.Parameters.Add(new NpgsqlParameter { Value = s.Payload });
                    await command.ExecuteNonQueryAsync(token).ConfigureAwait(false);
                    return 0;
                }, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception e)
            {
                // Peers fall back to polling.
                Log.NotifyFailed(Logger, e);
            }
        }
        while (Interlocked.CompareExchange(ref _notifyState, 0, 1) != 1);
    }

    /// <summary>The payload of a wake-up NOTIFY that offers <paramref name="jobs"/>; empty (a plain wake-up) when too large.</summary>
    internal string WriteOffers(List<QueuedJob> jobs)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(256);
        using (var json = new System.Text.Json.Utf8JsonWriter(buffer, new System.Text.Json.JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteString("i", InstanceId);
            json.WriteStartArray("o");
            foreach (var job in jobs)
            {
                json.WriteStartObject();
                json.WriteString("j", job.Id.Value);
                json.WriteNumber("p", job.Priority);
                json.WriteString("t", job.Tenant);
                json.WriteString("w", job.Workload);
                if (job.ConcurrencyKey is { } key)
                {
                    json.WriteString("k", key);
                }

                if (job.Affinity is { } affinity)
                {
                    json.WriteString("a", affinity);
                }

                json.WriteNumber("e", job.EnqueuedAt.UtcTicks);
                json.WriteEndObject();
            }

            json.WriteEndArray();
            json.WriteEndObject();
        }

        return buffer.WrittenCount > MaxNotifyPayloadBytes ? "" : System.Text.Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    /// <summary>
    /// Reads the jobs a wake-up NOTIFY of another host offers (see <see cref="NotifyReady"/>).
    /// </summary>
    /// <param name="payload">The payload.</param>
    /// <returns>The jobs; empty when the NOTIFY came from this process; <see langword="null"/> for a plain wake-up.</returns>
    public List<QueuedJob>? ReadOffers(string payload)
    {
        if (string.IsNullOrEmpty(payload))
        {
            return null;
        }

        try
        {
            using var document = System.Text.Json.JsonDocument.Parse(payload);
            var root = document.RootElement;
            if (root.GetProperty("i").GetString() == InstanceId)
            {
                return [];
            }

            var jobs = new List<QueuedJob>();
            foreach (var offer in root.GetProperty("o").EnumerateArray())
            {
                var priority = offer.GetProperty("p").GetInt32();
                jobs.Add(new QueuedJob
                {
                    Id = new JobId(offer.GetProperty("j").GetGuid()),
                    Priority = priority is >= 1 and <= 10 ? priority : throw new FormatException("An offer's priority is out of range."),
                    Tenant = offer.GetProperty("t").GetString() ?? throw new FormatException("An offer without a tenant."),
                    Workload = offer.GetProperty("w").GetString() ?? throw new FormatException("An offer without a workload."),
                    ConcurrencyKey = offer.TryGetProperty("k", out var key) ? key.GetString() : null,
                    Affinity = offer.TryGetProperty("a", out var affinity) ? affinity.GetString() : null,
                    EnqueuedAt = new DateTimeOffset(offer.GetProperty("e").GetInt64(), TimeSpan.Zero),
                });
            }

            return jobs.Count > 0 ? jobs : null;
        }
        catch (Exception e) when (e is System.Text.Json.JsonException or KeyNotFoundException or InvalidOperationException or FormatException or ArgumentException)
        {
            // Not a payload this version writes: look.
            return null;
        }
    }

    /// <summary>
    /// Sends a running attempt's event (progress, checkpoint, log lines) on <see cref="AttemptEventsChannel"/> soon, in a
    /// transaction of its own with whatever else waits (one statement for many), for watchers on other hosts. Not in the writer's transaction: PostgreSQL serialises the commits of
    /// notifying transactions across the server, which would take group commit away from the writes. Best effort: a
    /// failed send is logged and dropped.
    /// </summary>
    /// <param name="kind">The event's kind.</param>
    /// <param name="lease">The writer's lease: job and attempt.</param>
    /// <param name="tenant">The job's tenant.</param>
    /// <param name="workload">The job's workload.</param>
    /// <param name="fields">Writes the kind's own fields.</param>
    /// <param name="state">What <paramref name="fields"/> writes.</param>
    public void NotifyAttemptEvent<TState>(JobEventKind kind, JobLease lease, string tenant, string workload, Action<System.Text.Json.Utf8JsonWriter, TState> fields, TState state)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(256);
        // Unescaped UTF-8 (at most 3 bytes per UTF-16 unit): the default encoder writes \uXXXX, 6 bytes, for every
        // non-ASCII character, and a payload over 8,000 bytes fails the NOTIFY of every notice sent with it.
        using (var json = new System.Text.Json.Utf8JsonWriter(buffer, new System.Text.Json.JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteString("i", InstanceId);
            json.WriteNumber("k", (int)kind);
            json.WriteString("j", lease.JobId.Value);
            json.WriteNumber("a", lease.Attempt);
            json.WriteString("t", tenant);
            json.WriteString("w", workload);
            fields(json, state);
            json.WriteEndObject();
        }

        if (buffer.WrittenCount > MaxNotifyPayloadBytes)
        {
            // Cannot happen with the fields written today (a message of at most 2,000 characters); never sent, as it
            // would fail the whole statement.
            Log.AttemptNoticeTooLarge(Logger, lease.JobId, buffer.WrittenCount);
            return;
        }

        _attemptNotices.Enqueue(System.Text.Encoding.UTF8.GetString(buffer.WrittenSpan));
        if (Interlocked.CompareExchange(ref _sendingAttemptNotices, 1, 0) == 0)
        {
            _ = Task.Run(SendAttemptNoticesAsync);
        }
    }

    /// <summary>The largest NOTIFY payload PostgreSQL takes is 7,999 bytes.</summary>
    internal const int MaxNotifyPayloadBytes = 7_999;

    private async Task SendAttemptNoticesAsync()
    {
        do
        {
            var batch = new List<string>();
            while (batch.Count < 1000 && _attemptNotices.TryDequeue(out var payload))
            {
                batch.Add(payload);
            }

            if (batch.Count > 0)
            {
                try
                {
                    await RunAsync(Client, (Channel: AttemptEventsChannel, Payloads: batch.ToArray()), static async (c, s, token) =>
                    {
                        using var command = new NpgsqlCommand("SELECT count(pg_notify($1, p)) FROM unnest($2::text[]) AS p", c);
                        command.Parameters.Add(new NpgsqlParameter { Value = s.Channel });
                        command.Parameters.Add(new NpgsqlParameter { Value = s.Payloads });
                        return await command.ExecuteScalarAsync(token).ConfigureAwait(false);
                    }, CancellationToken.None).ConfigureAwait(false);
                }
                catch (Exception e)
                {
                    Log.AttemptNoticeFailed(Logger, batch.Count, e);
                }
            }

            Volatile.Write(ref _sendingAttemptNotices, 0);
        }
        while (!_attemptNotices.IsEmpty && Interlocked.CompareExchange(ref _sendingAttemptNotices, 1, 0) == 0);
    }

    /// <summary>Applies the migrations once for every caller (again after a failure: see <see cref="SharedStart"/>).</summary>
    public Task EnsureMigratedAsync(CancellationToken cancellationToken) => _migration.WaitAsync(cancellationToken);

    /// <summary>Turns a failure to reach or use the database at start into an error that names the fix.</summary>
    public PostgresStorageException Explain(Exception e)
    {
        var builder = new NpgsqlConnectionStringBuilder(Options.ConnectionString);
        var where = $"{builder.Host}:{builder.Port.ToString(CultureInfo.InvariantCulture)}, database '{builder.Database ?? builder.Username}', user '{builder.Username}'";
        return e switch
        {
            PostgresStorageException known => known,
            PostgresException { SqlState: "28P01" or "28000" } p => new($"PostgreSQL at {where} refused the login: {p.MessageText}. Check Username and Password in PostgresOptions.ConnectionString.", e),
            PostgresException { SqlState: "3D000" } p => new($"PostgreSQL at {where}: {p.MessageText}. Create the database, or fix Database in PostgresOptions.ConnectionString.", e),
            PostgresException { SqlState: "42501" } p => new($"PostgreSQL at {where}: permission denied ({p.MessageText}). Grant the user CREATE on the database and on schema '{Options.Schema}' (or run the migrations once as the owner and set ApplyMigrations = false, with SELECT, INSERT, UPDATE, DELETE and USAGE granted, and EXECUTE on its dequeue function).", e),
            PostgresException p => new($"PostgreSQL at {where} refused a statement at start ({p.SqlState}: {p.MessageText}). The schema '{Options.Schema}' may have been changed by hand: restore it from the package's Migrations scripts, or use another schema.", e),
            NpgsqlException { InnerException: SocketException or TimeoutException } or NpgsqlException { InnerException: IOException } => new($"Cannot connect to PostgreSQL at {where}: {e.InnerException!.Message}. Check Host and Port in PostgresOptions.ConnectionString and that the server is running and reachable.", e),
            NpgsqlException => new($"PostgreSQL at {where} failed: {e.Message}. Check PostgresOptions.ConnectionString.", e),
            _ => new($"PostgreSQL at {where} failed at start: {e.Message}", e),
        };
    }

    public async ValueTask DisposeAsync()
    {
        await Client.DisposeAsync().ConfigureAwait(false);
        if (!ReferenceEquals(Worker, Client))
        {
            await Worker.DisposeAsync().ConfigureAwait(false);
        }
    }

    private ResiliencePipeline BuildRetryPipeline(TimeProvider time) => new ResiliencePipelineBuilder
    {
        TimeProvider = time,
    }.AddRetry(new RetryStrategyOptions
    {
        ShouldHandle = new PredicateBuilder().Handle<NpgsqlException>(static e => e.IsTransient),
        MaxRetryAttempts = Options.MaxRetries,
        BackoffType = DelayBackoffType.Exponential,
        Delay = TimeSpan.FromMilliseconds(200),
        MaxDelay = TimeSpan.FromSeconds(5),
        UseJitter = true,
        OnRetry = args =>
        {
            Log.Retrying(Logger, args.AttemptNumber + 1, args.RetryDelay, args.Outcome.Exception);
            return ValueTask.CompletedTask;
        },
    }).Build();

    /// <summary>How many statements each connection prepares automatically, unless the connection string says.</summary>
    internal const int DefaultMaxAutoPrepare = 32;

    /// <summary>How much longer than <see cref="PostgresOptions.StatementTimeout"/> a command waits for the server.</summary>
    private static readonly TimeSpan CommandTimeoutMargin = TimeSpan.FromSeconds(10);

    private NpgsqlDataSource Build(bool synchronousCommit, string applicationName)
    {
        var builder = new NpgsqlDataSourceBuilder(Options.ConnectionString);
        var csb = builder.ConnectionStringBuilder;
        csb.ApplicationName ??= applicationName;
        // Npgsql's own builder reports every keyword it knows as present: ask the plain parser what the string sets.
        var given = new DbConnectionStringBuilder { ConnectionString = Options.ConnectionString };
        if (!given.ContainsKey("Max Auto Prepare") && !given.ContainsKey("MaxAutoPrepare"))
        {
            // The same few statements run thousands of times a second: prepared once per connection, the server skips
            // parsing and planning them (single enqueue and drain ~20 % faster). A connection string that sets it wins,
            // e.g. "Max Auto Prepare=0" behind a pooler that cannot keep prepared statements.
            csb.MaxAutoPrepare = DefaultMaxAutoPrepare;
        }

        if (!given.ContainsKey("No Reset On Close") && !given.ContainsKey("NoResetOnClose"))
        {
            // Npgsql resets a pooled connection's session when it is opened again (its reset statements go ahead of the
            // first command): about 1 ms per batch on the idle path from submit to start. Nothing here leaves session
            // state behind: planner and commit settings are transaction-local (set_config(..., true)), locks are
            // transaction-level except housekeeping's, which gives its lock back or clears the pool, and LISTEN runs on
            // a connection of its own. Prepared statements survive either way. An open transaction is still rolled back.
            csb.NoResetOnClose = true;
        }

        if (!given.ContainsKey("Command Timeout") && !given.ContainsKey("CommandTimeout"))
        {
            // The client waits a little longer than the server's statement timeout, so that the server's error (which
            // names the timeout) comes first; Npgsql's default (30 s) would cut a longer StatementTimeout short.
            csb.CommandTimeout = (int)Math.Min((Options.StatementTimeout + CommandTimeoutMargin).TotalSeconds + 1, int.MaxValue / 1000);
        }

        var settings = string.Create(
            CultureInfo.InvariantCulture,
            $"-c statement_timeout={(long)Options.StatementTimeout.TotalMilliseconds} -c idle_in_transaction_session_timeout={(long)Options.IdleInTransactionTimeout.TotalMilliseconds}");
        if (!synchronousCommit)
        {
            settings += " -c synchronous_commit=off";
        }

        csb.Options = string.IsNullOrEmpty(csb.Options) ? settings : csb.Options + " " + settings;
        return builder.Build();
    }

    private static partial class Log
    {
        [LoggerMessage(1, LogLevel.Warning, "PostgreSQL: transient error, retry {Attempt} in {Delay}.")]
        public static partial void Retrying(ILogger logger, int attempt, TimeSpan delay, Exception? exception);

        [LoggerMessage(2, LogLevel.Debug, "PostgreSQL: the wake-up NOTIFY failed; peers will poll.")]
        public static partial void NotifyFailed(ILogger logger, Exception exception);

        [LoggerMessage(3, LogLevel.Warning, "PostgreSQL: {Count} notifications for other hosts' watchers (progress, checkpoints and log lines written here) could not be sent; those watchers miss them as events.")]
        public static partial void AttemptNoticeFailed(ILogger logger, int count, Exception exception);

        [LoggerMessage(4, LogLevel.Warning, "PostgreSQL: an event of job {JobId} for other hosts' watchers is {Bytes} bytes, over NOTIFY's limit; it is not sent.")]
        public static partial void AttemptNoticeTooLarge(ILogger logger, JobId jobId, int bytes);
    }
}
